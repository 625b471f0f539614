"""The API's limits against a real API process: rate limits per key and per IP (429 +
Retry-After), the body limit (413), the negative key cache, key expiry and last use,
audit lines, liveness and readiness, the /metrics token, and other orgs' models."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from adapters import tenancy
from adapters.model_registry import ModelRegistry
from adapters.settings import Settings
from tests.support.api import Reply, request, start_api, stop_api, wait_ready
from tests.support.net import free_port

pytestmark = pytest.mark.integration

KEY_BURST = 5
NEGATIVE_TTL = 2.0
METRICS_TOKEN = "metrics-secret-token"


@dataclasses.dataclass
class Live:
    port: int
    settings: Settings
    keys: dict[str, tuple[str, str]]  # org -> (key id, key)
    log: Path

    def get(self, path: str, key: str | None = None, **headers: str) -> Reply:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return request(self.port, "GET", path, headers)


def run(s: Settings, action: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(s.pg_dsn)
        try:
            await tenancy.ensure_schema(conn)
            return await action(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def live(settings: Settings, tmp_path: Path) -> Iterator[Live]:
    # Two models: v1 for every org, and "vb", trained for org-b only.
    model_dir = tmp_path / "models"
    shutil.copytree(Path(settings.model_dir) / "v1", model_dir / "v1")
    shutil.copytree(Path(settings.model_dir) / "v1", model_dir / "vb")
    meta_path = model_dir / "vb" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = "vb"
    meta["provenance"] = {**meta.get("provenance", {}), "org": "org-b"}
    meta_path.write_text(json.dumps(meta))
    port = free_port()
    s = dataclasses.replace(
        settings,
        api_port=port,
        model_dir=str(model_dir),
        api_key_rate=1.0,
        api_key_burst=KEY_BURST,
        api_ip_rate=50.0,
        api_ip_burst=200,
        api_max_body_bytes=1024,
        api_negative_cache_ttl_s=NEGATIVE_TTL,
        api_metrics_token=METRICS_TOKEN,
        log_format="json",
    )

    async def tenants(conn: asyncpg.Connection) -> dict[str, tuple[str, str]]:
        keys = {}
        for org in ("org-a", "org-b", "org-c"):
            await tenancy.create_org(conn, org, org)
            keys[org] = await tenancy.create_api_key(conn, org, "tests")
        return keys

    keys = run(s, tenants)
    log = tmp_path / "api.log"
    process = start_api(s, log)
    try:
        wait_ready(port, process, log)
        yield Live(port, s, keys, log)
    finally:
        stop_api(process)


def log_lines(live: Live, event: str) -> list[dict[str, Any]]:
    out = []
    for line in live.log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                out.append(entry)
    return out


def test_a_key_past_its_burst_gets_429_with_retry_after_and_others_do_not(live: Live) -> None:
    _, key_a = live.keys["org-a"]
    _, key_b = live.keys["org-b"]
    statuses = [live.get("/leads", key_a).status for _ in range(KEY_BURST + 3)]
    assert statuses[:KEY_BURST] == [200] * KEY_BURST
    limited = live.get("/leads", key_a)
    assert limited.status == 429 and limited.body["error"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert live.get("/leads", key_b).status == 200  # another key has its own bucket
    time.sleep(1.1)  # a token a second comes back
    assert live.get("/leads", key_a).status == 200


def test_an_ip_past_its_burst_gets_429_even_unauthenticated(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    s = dataclasses.replace(settings, api_port=port, api_ip_rate=0.5, api_ip_burst=30)
    log = tmp_path / "api.log"
    process = start_api(s, log)
    try:
        wait_ready(port, process, log)  # spends some of the burst on /health
        replies = [request(port, "GET", "/leads") for _ in range(40)]
    finally:
        stop_api(process)
    assert {r.status for r in replies} == {401, 429}
    limited = [r for r in replies if r.status == 429]
    assert limited and all(int(r.headers["retry-after"]) >= 1 for r in limited)
    assert limited[0].body["error"] == "rate_limited"


def test_a_body_over_the_limit_is_413_before_any_work(live: Live) -> None:
    _, key = live.keys["org-a"]
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    try:
        conn.request("GET", "/leads", body=b"x" * 2048, headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 413 and body["error"] == "payload_too_large"
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    try:  # unauthenticated, too: the limit comes first
        conn.request("GET", "/leads", body=b"x" * 2048)
        assert conn.getresponse().status == 413
    finally:
        conn.close()


def test_an_unknown_key_is_remembered_so_repeating_it_costs_no_lookup(live: Live) -> None:
    made_up = tenancy.generate_key()
    assert live.get("/leads", made_up).status == 401
    # The same key now exists in the database: had the API asked PostgreSQL again, it
    # would be let in. Within the negative cache's TTL it is not.
    run(
        live.settings,
        lambda c: c.execute(
            "INSERT INTO api_keys (id, org_id, key_hash) VALUES ('key_late', 'org-a', $1)",
            tenancy.hash_key(made_up),
        ),
    )
    for _ in range(3):
        assert live.get("/leads", made_up).status == 401
    time.sleep(NEGATIVE_TTL + 0.2)
    assert live.get("/leads", made_up).status == 200  # looked up again after the TTL
    refused = log_lines(live, "audit: api key refused")
    assert len(refused) >= 4 and {e["reason"] for e in refused} == {"unknown"}
    assert all(e["key_fingerprint"] and made_up not in json.dumps(e) for e in refused)


def test_keys_expire_and_record_their_last_use(live: Live) -> None:
    key_id, key = run(
        live.settings,
        lambda c: tenancy.create_api_key(c, "org-c", "short", expires_in=timedelta(seconds=2)),
    )
    assert live.get("/leads", key).status == 200
    (info,) = [k for k in run(live.settings, lambda c: tenancy.list_api_keys(c, "org-c"))
               if k.id == key_id]  # fmt: skip
    assert info.expires_at is not None and info.last_used_at is not None
    time.sleep(2.2)  # the cache holds a key no longer than it lives
    assert live.get("/leads", key).status == 401
    refused = [e for e in log_lines(live, "audit: api key refused") if e["key_id"] == key_id]
    assert refused and refused[0]["reason"] == "expired"
    assert key not in live.log.read_text()
    with pytest.raises(tenancy.TenancyError):
        run(live.settings, lambda c: tenancy.create_api_key(c, "org-c", expires_in=timedelta()))


def test_creating_and_revoking_a_key_writes_audit_lines_without_the_key(live: Live) -> None:
    with structlog.testing.capture_logs() as logs:
        key_id, key = run(live.settings, lambda c: tenancy.create_api_key(c, "org-c", "audit"))
        assert run(live.settings, lambda c: tenancy.revoke_api_key(c, key_id))
    created = [e for e in logs if e["event"] == "audit: api key created"]
    revoked = [e for e in logs if e["event"] == "audit: api key revoked"]
    assert created[0]["key_id"] == key_id and revoked[0]["key_id"] == key_id
    assert all(e["org_id"] == "org-c" and e["audit"] for e in created + revoked)
    assert key not in repr(logs)
    assert live.get("/leads", key).status == 401
    refused = [e for e in log_lines(live, "audit: api key refused") if e["key_id"] == key_id]
    assert refused[0]["reason"] == "revoked"


def test_liveness_readiness_and_the_metrics_token(live: Live) -> None:
    assert live.get("/health/live").status == 200
    assert live.get("/health/live").body == {"status": "ok"}
    ready = live.get("/health/ready")
    assert ready.status == 200 and ready.body["checks"]["postgresql"]["status"] == "up"
    assert live.get("/health").status == 200  # kept for existing probes
    assert live.get("/metrics").status == 401
    assert live.get("/metrics", "wrong-token").status == 401
    _, key = live.keys["org-a"]
    assert live.get("/metrics", key).status == 401  # an API key is not the metrics token
    ok = live.get("/metrics", METRICS_TOKEN)
    assert ok.status == 200 and b"# HELP" in ok.raw


def test_another_orgs_model_is_not_listed_and_its_drift_is_404(live: Live) -> None:
    def check() -> None:
        _, key_a = live.keys["org-a"]
        _, key_b = live.keys["org-b"]
        listed_a = {m["version"] for m in live.get("/models", key_a).body["items"]}
        listed_b = {m["version"] for m in live.get("/models", key_b).body["items"]}
        assert listed_a == {"v1"} and listed_b == {"v1", "vb"}
        hidden = live.get("/models/vb/drift", key_a)
        missing = live.get("/models/nope/drift", key_a)
        assert hidden.status == missing.status == 404
        assert hidden.body["error"] == "not_found"
        assert live.get("/models/vb/drift", key_b).status in (200, 409)  # its own: found
        assert live.get("/models/v1/drift", key_a).status in (200, 409)  # global: found
        time.sleep(4.0)  # a token a second: let org-a's bucket refill between rounds

    check()  # no worker has registered them: the org in each model's provenance
    ModelRegistry(live.settings.pg_dsn, Path(live.settings.model_dir)).sync()
    check()  # registered: the registry's scope
