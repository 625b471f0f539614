"""The query API as a real process: its HTTP client, starting and stopping it, and
``live_api``: a database, Redis prefix and chDB of its own, seeded by the real engine and
projections, with the API serving them."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import orjson
import redis as redis_sync

from adapters import tenancy
from adapters.eventstore import SCORED_TOPIC, open_store
from adapters.settings import Settings, settings_env
from devtools.workload import generate
from domain.events import ActivityKind
from tests.support.factories import FixedScorer, activity, created
from tests.support.net import free_port
from tests.support.pipeline import store_history
from tests.support.readmodels import project

ORG_A, ORG_B, ORG_EMPTY = "org-001", "org-002", "org-empty"
SHARED = "shared-lead"  # one lead id that exists in both orgs, with different profiles


# -- the running API ----------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        return orjson.loads(self.raw)


@dataclass
class Api:
    port: int
    settings: Settings
    keys: dict[str, str]  # org -> a valid key
    expected: dict[str, Any]
    process: subprocess.Popen[bytes]

    def get(
        self, path: str, org: str | None = ORG_A, *, auth: str | None = None, **query: Any
    ) -> Reply:
        headers = {}
        if auth is not None:
            headers["Authorization"] = auth
        elif org is not None:
            headers["Authorization"] = f"Bearer {self.keys[org]}"
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        return request(self.port, "GET", path, headers)


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def start_api(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(settings)}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "query_api"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    """Until /health is 200, the in-process ClickHouse projection has caught up and the
    read cache hears both read models' change notices."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"API exited with {process.returncode}:\n{log.read_text()}")
        try:
            reply = request(port, "GET", "/health")
            last = reply.body
            projection = last.get("projection")
            listening = last.get("read_cache", {}).get("listening")
            if (
                reply.status == 200
                and projection
                and projection["lag"] == 0
                and listening
                == [
                    "postgres",
                    "redis",
                ]
            ):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"API not ready: {last}\n{log.read_text()}")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Change notices reach the API asynchronously: allow them a moment."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def stop_api(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- seeding: the real engine, the real projections -----------------------------------


def seed_events(settings: Settings, scorer: Any = None) -> None:
    """The seeded history, scored by ``scorer`` (a FixedScorer unless given: the committed
    model then scores when ``scorer`` is "model")."""
    events = list(generate(2, 60, 900, seed=11))
    # The same lead id in both orgs, and leads that exist only in one org.
    events += [
        created(lead=SHARED, org=ORG_A, company="Alpha Corp", source="referral"),
        created(lead=SHARED, org=ORG_B, company="Beta Ltd", source="webinar"),
        created(lead="only-b", org=ORG_B, company="Beta Ltd", source="event"),
        activity(ActivityKind.DEMO_REQUEST, lead=SHARED, org=ORG_A),
        activity(ActivityKind.DEMO_REQUEST, lead=SHARED, org=ORG_A),
    ]
    chosen = None if scorer == "model" else scorer or FixedScorer()
    store_history(settings, events, chosen, batch=150)


def expected_state(settings: Settings) -> dict[str, Any]:
    """What the API must answer, from the event store itself (not from the read models)."""
    store = open_store(settings.pg_dsn, cache_size=0)
    try:
        notes = []
        while batch := store.notifications(notes[-1].id if notes else 0, 5000):
            notes.extend(batch)
        scored: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for note in notes:
            if note.topic != SCORED_TOPIC:
                continue
            ev = store.to_event(note)
            scored.setdefault((ev.org_id, ev.lead_id), []).append(
                {
                    "position": note.id,
                    "version": ev.originator_version,
                    "score": ev.score,
                    "grade": ev.grade,
                    "fit": ev.components["fit"],
                    "engagement": ev.components["engagement"],
                    "model_version": ev.model_version,
                    "factors": ev.factors,
                }
            )
        leads = {}
        for lead in store.load({n.originator_id for n in notes}).values():
            assert lead is not None
            leads[(lead.org_id, lead.lead_id)] = {
                "profile": dict(lead.profile),
                "status": {"converted": "converted", "disqualified": "disqualified"}.get(
                    lead.outcome or "", "open"
                ),
            }
    finally:
        store.close()
    return {"leads": leads, "scores": scored}


@contextmanager
def live_api(services: Settings, tmp: Path, scorer: Any = None) -> Iterator[Api]:
    """A seeded database, Redis prefix and chDB directory of its own, and the API serving them."""
    from devtools import services as stack

    tag = secrets.token_hex(4)
    dbname = f"leadscore_api_{tag}"
    port = free_port()
    settings = dataclasses.replace(
        services,
        pg_dsn=stack.ensure_database(services, dbname),
        redis_prefix=f"leadscore-api-test-{tag}",
        clickhouse_dsn=f"chdb://{tmp / 'chdb'}",
        api_port=port,
        aggregate_cache_size=10_000,
    )
    try:
        # Tenants first: the engine dead-letters lead-events of unregistered orgs.
        keys = asyncio.run(create_tenants(settings))
        seed_events(settings, scorer)
        asyncio.run(project(settings))
        log = tmp / "api.log"
        process = start_api(settings, log)
        try:
            wait_ready(port, process, log)
            yield Api(port, settings, keys, expected_state(settings), process)
        finally:
            stop_api(process)
    finally:
        r = redis_sync.Redis.from_url(settings.redis_url)
        # Only our keys: the Redis server is shared with other tests and engineers.
        for key in r.scan_iter(match=f"{settings.redis_prefix}:*", count=1000):
            r.delete(key)
        r.close()
        stack.drop_database(services, dbname)


async def create_tenants(settings: Settings) -> dict[str, str]:
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        await tenancy.ensure_schema(conn)
        keys = {}
        for org in (ORG_A, ORG_B, ORG_EMPTY):
            await tenancy.create_org(conn, org, f"Org {org}")
            keys[org] = (await tenancy.create_api_key(conn, org, "tests"))[1]
        return keys
    finally:
        await conn.close()
