"""Query API benchmark: GET /leads/{id} and GET /leaderboard under wrk, beside a peer.

The peer is a Starlette endpoint returning a constant JSON body, served by the same
server (uvicorn, same loop and HTTP parser) in the same run. Target: >= 60% of the
peer's requests/s, and p99 < 10 ms at half our peak rate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rich.console import Console

from bench.harness import RUNS, Spread, ratio, write_results
from leadscore import services, tenancy
from leadscore.bootstrap import bootstrap
from leadscore.settings import Settings
from leadscore.workload import generate
from projections.base import ProjectionRunner
from projections.runner import opened
from streams.codec import event_to_record
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic

console = Console()
DURATION = os.environ.get("LEADSCORE_BENCH_DURATION", "8s")
CONNECTIONS = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(s: Settings) -> tuple[str, list[str]]:
    """A scored history (2,000 leads, 20,000 events) projected into PostgreSQL and Redis."""

    asyncio.run(tenancy.with_connection(s.pg_dsn, lambda db: tenancy.ensure_orgs(db, ["org-001"])))
    engine = bootstrap(s)
    try:
        enc = AvroTopic(engine.catalog, s.topic_lead_events, LEAD_EVENT_SCHEMA)
        events = list(generate(1, 2_000, 20_000, seed=3))
        values = [enc.encode(event_to_record(e)) for e in events]
        for i in range(0, len(values), 1000):
            engine.processor.process(values[i : i + 1000])
    finally:
        engine.close()

    async def project_and_key() -> str:
        async with opened(s, ["postgres", "redis"]) as (pool, projections):
            runner = ProjectionRunner(pool, projections)
            for p in projections:
                await p.setup()
                await runner.catch_up(p)
        return (
            await tenancy.with_connection(
                s.pg_dsn, lambda db: tenancy.create_api_key(db, "org-001")
            )
        )[1]

    return asyncio.run(project_and_key()), sorted({e.lead_id for e in events})


def start(which: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.serve", which, str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    url = f"http://127.0.0.1:{port}/{'health' if which == 'api' else 'constant'}"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{which} server did not start")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(
    url: str, key: str | None, script: Path | None, connections: int = CONNECTIONS
) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{DURATION}", "--latency"]
    if key:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {
        p: float(v) * _UNITS[u] for p, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)", out)
    }
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx responses under load")
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"]}


def lua_random_path(lead_ids: list[str], prefix: str, delay_ms: float | None = None) -> Path:
    """A wrk script requesting ``prefix + random id``, optionally pausing between requests."""
    ids = ",".join(f'"{i}"' for i in lead_ids)
    body = (
        f"local ids = {{{ids}}}\n"
        "request = function()\n"
        f'  return wrk.format(nil, "{prefix}" .. ids[math.random(#ids)])\n'
        "end\n"
    )
    if delay_ms is not None:
        body += f"delay = function() return {delay_ms:.3f} end\n"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(body)
    return Path(f.name)


def main() -> None:
    base = Settings.from_env()
    services.up(base)
    tag = f"{os.getpid()}"
    dsn = services.ensure_database(base, f"leadscore_bench_api_{tag}")
    s = dataclasses.replace(
        base, pg_dsn=dsn, redis_prefix=f"leadscore-bench-{tag}",
        clickhouse_dsn=f"chdb://{base.run_path}/bench-chdb-{tag}",
    )  # fmt: skip
    env = {
        **os.environ,
        **{f"LEADSCORE_{f.name.upper()}": str(getattr(s, f.name)) for f in dataclasses.fields(s)},
    }
    with console.status("seeding 20,000 events over 2,000 leads"):
        key, lead_ids = seed(s)
    api_port, peer_port = free_port(), free_port()
    api, peer = start("api", api_port, env), start("peer", peer_port, env)
    results: dict[str, list[dict[str, float]]] = {"leads": [], "leaderboard": [], "peer": []}
    leads_script = lua_random_path(lead_ids, "/leads/")
    try:
        for run in range(RUNS):
            console.print(f"run {run + 1}/{RUNS}")
            results["peer"].append(wrk(f"http://127.0.0.1:{peer_port}/constant", None, None))
            results["leads"].append(wrk(f"http://127.0.0.1:{api_port}", key, leads_script))
            results["leaderboard"].append(
                wrk(f"http://127.0.0.1:{api_port}/leaderboard?limit=10", key, None)
            )
        # p99 at half our peak: each connection waits so that together they offer ~half.
        peak = Spread.of([r["rps"] for r in results["leads"]]).median
        conns = 8
        delay = max(0.0, 1000.0 * conns / (peak / 2))
        half = wrk(
            f"http://127.0.0.1:{api_port}", key, lua_random_path(lead_ids, "/leads/", delay), conns
        )
    finally:
        for p in (api, peer):
            p.terminate()
            p.wait(10)
        services.drop_database(base, f"leadscore_bench_api_{tag}")

    peer_rps = Spread.of([r["rps"] for r in results["peer"]])
    lines = [
        "| endpoint | requests/s | p50 ms | p99 ms | ratio to peer |",
        "|---|---|---|---|---|",
    ]
    for name, label in (
        ("peer", "peer: constant JSON"),
        ("leads", "GET /leads/{id}"),
        ("leaderboard", "GET /leaderboard"),
    ):
        rps = Spread.of([r["rps"] for r in results[name]])
        p50 = Spread.of([r["p50"] for r in results[name]])
        p99 = Spread.of([r["p99"] for r in results[name]])
        cells = [label, str(rps), f"{p50.median:.2f}", f"{p99.median:.2f}"]
        lines.append("| " + " | ".join([*cells, f"{ratio(rps, peer_rps):.2f}"]) + " |")
    lines.append(
        f"\nAt about half the peak of GET /leads/{{id}} ({half['rps']:,.0f} requests/s "
        f"offered by {conns} connections pacing themselves): p50 {half['p50']:.2f} ms, "
        f"p99 {half['p99']:.2f} ms. (wrk paces per connection, closed-loop: a slow "
        "response delays the next request.)"
    )
    lines.append(
        f"\nwrk -t1 -c{CONNECTIONS} -d{DURATION}; server: uvicorn, one process, "
        "the same loop and HTTP parser for both."
    )
    body = "\n".join(lines)
    path = write_results("api", body)
    console.print(body)
    console.print(f"written to {path}")


if __name__ == "__main__":
    main()
