"""Query API benchmark: GET /leads/{id} and GET /leaderboard under wrk, beside a peer.

The peer is a Starlette endpoint returning a constant JSON body, served by the same
server (uvicorn, same loop and HTTP parser) in the same run. Target: >= 60% of the
peer's requests/s, and p99 < 10 ms at half our peak rate.

The API answers hot reads from its in-process cache (query_api/hotcache.py); a second
API process with the cache off shows what a read costs when it goes to PostgreSQL and
Redis, and the cache's hit ratio during the run is printed from the API's own metrics.
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

from adapters import tenancy
from adapters.settings import Settings
from bench.harness import RUNS, Spread, paired_ratio, write_results
from devtools import services
from devtools.workload import generate
from projections.base import ProjectionRunner
from projections.runner import opened
from streams.bootstrap import bootstrap
from streams.codec import event_to_record
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic

console = Console()
DURATION = os.environ.get("LEADSCORE_BENCH_DURATION", "6s")
# Interleaved runs: each endpoint is measured right after the peer, RUNS_API times.
RUNS_API = max(RUNS, 5)
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
    url: str,
    key: str | None,
    script: Path | None,
    connections: int = CONNECTIONS,
    duration: str = DURATION,
) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}", "--latency"]
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


def at_rate(
    url: str, key: str | None, lead_ids: list[str], rate: float, pause: float = 2.0
) -> dict[str, float]:
    """Latency at an offered ``rate``: connections that each pause ``pause`` ms between
    requests (2 ms: fewer, busier connections measured steadier tails here than 5 ms).

    wrk pauses after each response (closed loop) and in whole milliseconds, so the rate is
    set by the number of connections; a short probe measures one connection's cycle
    (pause + response) and the connection count is sized from it.
    """
    script = lua_random_path(lead_ids, "/leads/", pause)
    conns = max(1, round(rate * pause / 1000.0))
    probe = wrk(url, key, script, conns, "3s")
    cycle = conns / probe["rps"]  # seconds per request on one connection
    conns = max(1, min(512, round(rate * cycle)))
    return {**wrk(url, key, script, conns), "connections": conns}


def hit_ratio(port: int) -> float:
    """Hits / lookups of the lead cache, from the API's Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    counts = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'leadscore_api_cache_lookups_total\{read="lead",result="(hit|miss)"\} ([\d.e+]+)',
            text,
        )
    }
    total = counts.get("hit", 0.0) + counts.get("miss", 0.0)
    return counts.get("hit", 0.0) / total if total else 0.0


def main() -> None:
    base = Settings.from_env()
    services.up(base)
    tag = f"{os.getpid()}"
    dsn = services.ensure_database(base, f"leadscore_bench_api_{tag}")
    s = dataclasses.replace(
        base, pg_dsn=dsn, redis_prefix=f"leadscore-bench-{tag}",
        clickhouse_dsn=f"chdb://{base.run_path}/bench-chdb-{tag}",
        api_key_rate=0, api_ip_rate=0,  # one key and IP at full speed: measure, not limit
    )  # fmt: skip
    env = {
        **os.environ,
        **{f"LEADSCORE_{f.name.upper()}": str(getattr(s, f.name)) for f in dataclasses.fields(s)},
    }
    with console.status("seeding 20,000 events over 2,000 leads"):
        key, lead_ids = seed(s)
    api_port, peer_port, cold_port = free_port(), free_port(), free_port()
    api, peer = start("api", api_port, env), start("peer", peer_port, env)
    # A second API process needs its own chDB directory: one process may open one.
    cold_env = {
        **env,
        "LEADSCORE_API_CACHE_SIZE": "0",
        "LEADSCORE_CLICKHOUSE_DSN": f"{s.clickhouse_dsn}-cold",
    }
    try:
        cold = start("api", cold_port, cold_env)
    except RuntimeError:
        for p in (api, peer):
            p.terminate()
        raise
    # Each of our runs follows a peer run sent the same requests by the same wrk
    # invocation (the random-id script costs wrk CPU on this 2-core machine too).
    leads_script = lua_random_path(lead_ids, "/leads/")
    cases = {
        "leads": ("GET /leads/{id}", api_port, "", leads_script),
        "leaderboard": ("GET /leaderboard", api_port, "/leaderboard?limit=10", None),
        "cold": ("GET /leads/{id}, cache off", cold_port, "", leads_script),
    }
    results: dict[str, list[dict[str, float]]] = {n: [] for n in cases}
    peers: dict[str, list[dict[str, float]]] = {n: [] for n in cases}
    try:
        for run in range(RUNS_API):
            console.print(f"run {run + 1}/{RUNS_API}")
            for name, (_label, port, path, script) in cases.items():
                peer_path = "/constant" if script is None else ""
                peers[name].append(wrk(f"http://127.0.0.1:{peer_port}{peer_path}", key, script))
                results[name].append(wrk(f"http://127.0.0.1:{port}{path}", key, script))
        hits = hit_ratio(api_port)
        peak = Spread.of([r["rps"] for r in results["leads"]]).median
        # The same paced load on the peer, run beside ours: on a shared machine the tail
        # is partly the machine's, and the peer shows how much.
        half: dict[str, list[dict[str, float]]] = {"ours": [], "peer": []}
        with console.status("latency at half the peak"):
            for _ in range(RUNS):
                half["ours"].append(
                    at_rate(f"http://127.0.0.1:{api_port}", key, lead_ids, peak / 2)
                )
                half["peer"].append(
                    at_rate(f"http://127.0.0.1:{peer_port}", key, lead_ids, peak / 2)
                )
    finally:
        for p in (api, peer, cold):
            p.terminate()
            p.wait(10)
        services.drop_database(base, f"leadscore_bench_api_{tag}")

    lines = [
        "| endpoint | requests/s | p50 ms | p99 ms | peer requests/s, same requests "
        "| ratio to peer (paired runs) |",
        "|---|---|---|---|---|---|",
    ]
    for name, (label, *_rest) in cases.items():
        rps = Spread.of([r["rps"] for r in results[name]])
        p50 = Spread.of([r["p50"] for r in results[name]])
        p99 = Spread.of([r["p99"] for r in results[name]])
        peer_rps = [r["rps"] for r in peers[name]]
        r = paired_ratio([x["rps"] for x in results[name]], peer_rps)
        cells = [
            label, str(rps), f"{p50.median:.2f}", f"{p99.median:.2f}",
            f"{Spread.of(peer_rps).median:,.0f}", f"**{r.median:.2f}** ({r.low:.2f}–{r.high:.2f})",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        f"\nAt half the peak of GET /leads/{{id}} ({peak / 2:,.0f} requests/s offered by "
        f"connections pausing 2 ms between requests; {RUNS} runs each, medians):\n",
        "| server | connections | achieved requests/s | p50 ms | p99 ms (min–max) |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("ours", "GET /leads/{id}"), ("peer", "peer, same requests")):
        runs = half[name]
        p99 = Spread.of([r["p99"] for r in runs])
        lines.append(
            f"| {label} | {Spread.of([r['connections'] for r in runs]).median:.0f} | "
            f"{Spread.of([r['rps'] for r in runs]).median:,.0f} | "
            f"{Spread.of([r['p50'] for r in runs]).median:.2f} | "
            f"{p99.median:.2f} ({p99.low:.2f}–{p99.high:.2f}) |"
        )
    lines.append(
        f"\nLead-cache hit ratio over the runs: {hits:.1%} (2,000 leads; the first read of "
        "each misses). Cache off: every read is a PostgreSQL query and a Redis call."
    )
    lines.append(
        f"\nwrk -t1 -c{CONNECTIONS} -d{DURATION}, {RUNS_API} interleaved runs; "
        "server: uvicorn, one process, the same loop and HTTP parser for both."
    )
    body = "\n".join(lines)
    path = write_results("api", body)
    console.print(body)
    console.print(f"written to {path}")


if __name__ == "__main__":
    main()
