"""The query API over HTTP: a real uvicorn process on real PostgreSQL, Redis and chDB.

One server per module, seeded once by the real engine (processor + projections), then
probed like a client would: every endpoint, pagination walks, auth, tenancy, bad input.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
import redis as redis_sync
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from adapters import tenancy
from adapters.settings import Settings
from projections import changes
from streams.bootstrap import bootstrap
from tests.support.api import (
    ORG_A,
    ORG_B,
    ORG_EMPTY,
    SHARED,
    Api,
    create_tenants,
    live_api,
    request,
    start_api,
    stop_api,
    wait_for,
)
from tests.support.factories import FixedScorer, created
from tests.support.net import free_port
from tests.support.pipeline import encoded

pytestmark = pytest.mark.integration


def org_leads(api: Api, org: str) -> dict[str, dict[str, Any]]:
    return {lid: v for (o, lid), v in api.expected["leads"].items() if o == org}


def current_scores(api: Api, org: str) -> dict[str, dict[str, Any]]:
    return {lid: h[-1] for (o, lid), h in api.expected["scores"].items() if o == org}


@pytest.fixture(scope="module")
def api(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    # These tests send hundreds of requests a second from one key and IP: the limits'
    # own tests (tests/integration/test_api_limits.py) run an API with low ones.
    unlimited = dataclasses.replace(services, api_key_rate=0, api_ip_rate=0)
    with live_api(unlimited, tmp_path_factory.mktemp("api")) as running:
        yield running


# -- operations -----------------------------------------------------------------------


def test_health_checks_every_dependency_without_auth(api: Api) -> None:
    reply = api.get("/health", org=None)
    assert reply.status == 200
    body = reply.body
    assert body["status"] == "ok"
    assert {name: c["status"] for name, c in body["checks"].items()} == {
        "postgresql": "up",
        "redis": "up",
        "clickhouse": "up",
    }
    # With embedded chDB this process runs the ClickHouse projection itself.
    assert body["projection"]["name"] == "clickhouse" and body["projection"]["running"]
    assert body["projection"]["lag"] == 0 and body["projection"]["position"] > 0


def test_metrics_count_requests_by_route_template(api: Api) -> None:
    lead_id = next(iter(org_leads(api, ORG_A)))
    assert api.get(f"/leads/{lead_id}").status == 200
    reply = api.get("/metrics", org=None)
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.raw.decode()
    assert 'route="/leads/{id}",status="200"' in text
    assert lead_id not in text  # ids never become label values


def test_openapi_documents_every_route_and_the_bearer_scheme(api: Api) -> None:
    doc = api.get("/openapi.json", org=None).body
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/leads",
        "/leads/{id}",
        "/leads/{id}/scores",
        "/leads/{id}/export",
        "/leads/{id}/as-of",
        "/leads/{id}/timeline",
        "/leads/{id}/diff",
        "/leaderboard",
        "/analytics/score-distribution",
        "/analytics/funnel",
        "/analytics/conversion-by-source",
        "/analytics/conversion-by-score-band",
        "/analytics/models",
        "/models",
        "/models/{version}/drift",
        "/webhooks/deliveries",
        "/dead-letters",
        "/webhooks/deliveries/{id}",
        "/health",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/openapi.json",
    }
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, item in doc["paths"].items():
        responses = item["get"]["responses"]
        if item["get"].get("security") == []:
            continue
        assert {"200", "401", "422", "429"} <= set(responses), path
        if "{id}" in path:
            assert "404" in responses


def test_models_names_the_newest_version_active_with_its_metrics(api: Api) -> None:
    body = api.get("/models").body
    versions = [m["version"] for m in body["items"]]
    assert versions and body["active_version"] == versions[-1]
    assert body["active"]["version"] == versions[-1] and body["active"]["active"]
    assert 0.5 < body["active"]["metrics"]["auc"] <= 1.0
    assert sum(m["active"] for m in body["items"]) == 1


# -- leads ----------------------------------------------------------------------------


def test_get_lead_returns_profile_status_and_current_score(api: Api) -> None:
    scores = current_scores(api, ORG_A)
    explained = 0
    for lead_id, want in list(org_leads(api, ORG_A).items())[:25]:
        reply = api.get(f"/leads/{quote(lead_id, safe='')}")
        assert reply.status == 200, reply.body
        got = reply.body
        assert (got["org_id"], got["lead_id"], got["status"]) == (ORG_A, lead_id, want["status"])
        for field, value in want["profile"].items():
            assert got[field] == value, field
        score = scores[lead_id]
        assert got["score"] is not None
        assert {
            k: got["score"][k]
            for k in ("score", "grade", "fit", "engagement", "position", "factors")
        } == {k: score[k] for k in ("score", "grade", "fit", "engagement", "position", "factors")}
        explained += bool(got["score"]["factors"])
    # The test model moves only with demo requests; leads with none score as the reference.
    assert explained > 0


def test_current_score_comes_from_redis_when_it_is_newer(api: Api) -> None:
    lead_id = SHARED
    key = f"{api.settings.redis_prefix}:{ORG_A}:lead:{lead_id}"
    r = redis_sync.Redis.from_url(api.settings.redis_url, decode_responses=True)
    saved = r.hgetall(key)

    def write(mapping: dict[str, str]) -> None:
        # As the projection's script does: the write, then its change notice.
        r.hset(key, mapping=mapping)
        r.publish(changes.redis_channel(api.settings.redis_prefix), f'["{ORG_A}","{lead_id}"]')

    def score() -> float:
        return float(api.get(f"/leads/{lead_id}").body["score"]["score"])

    try:
        write({"score": "12.5", "position": str(int(saved["position"]) + 1)})
        wait_for(lambda: score() == 12.5, "the newer Redis score")
        # A stale hash (older position than PostgreSQL's row) loses to the record.
        write({"score": "13.5", "position": "1"})
        wait_for(lambda: score() == float(saved["score"]), "the PostgreSQL score")
    finally:
        write(saved)
        r.close()


def test_shared_lead_id_answers_each_org_its_own_lead(api: Api) -> None:
    a = api.get(f"/leads/{SHARED}", ORG_A).body
    b = api.get(f"/leads/{SHARED}", ORG_B).body
    assert (a["org_id"], a["company"]) == (ORG_A, "Alpha Corp")
    assert (b["org_id"], b["company"]) == (ORG_B, "Beta Ltd")
    assert a["score"]["score"] != b["score"]["score"]  # A's demo requests raised its score


def test_other_orgs_lead_is_404_exactly_like_a_missing_one(api: Api) -> None:
    other = api.get("/leads/only-b", ORG_A)
    missing = api.get("/leads/no-such-lead", ORG_A)
    assert other.status == missing.status == 404
    assert other.body == missing.body
    assert api.get("/leads/only-b/scores", ORG_A).body == api.get("/leads/nope/scores").body
    assert api.get("/leads/only-b", ORG_B).status == 200
    # An org with no data sees nothing of anyone's.
    assert api.get("/leads", ORG_EMPTY).body == {"items": [], "next_cursor": None}
    assert api.get("/leaderboard", ORG_EMPTY).body == {"items": []}


def test_score_history_walks_every_change_newest_first(api: Api) -> None:
    histories = {lid: h for (o, lid), h in api.expected["scores"].items() if o == ORG_A}
    lead_id = max(histories, key=lambda k: len(histories[k]))
    want = [h["position"] for h in reversed(histories[lead_id])]
    assert len(want) >= 3
    got: list[int] = []
    cursor = ""  # ?cursor=&limit= is the first page
    pages = 0
    while cursor is not None:
        body = api.get(f"/leads/{lead_id}/scores", cursor=cursor, limit=2).body
        assert len(body["items"]) <= 2
        got += [item["position"] for item in body["items"]]
        cursor = body["next_cursor"]
        pages += 1
    assert got == want  # newest first, nothing missing, nothing twice
    assert pages == -(-len(want) // 2)
    first = api.get(f"/leads/{lead_id}/scores", limit=1).body["items"][0]
    newest = histories[lead_id][-1]
    assert (first["score"], first["grade"], first["version"]) == (
        newest["score"],
        newest["grade"],
        newest["version"],
    )
    assert set(first["components"]) == {"fit", "engagement"}
    assert isinstance(first["factors"], list)


def walk(api: Api, org: str, limit: int, **filters: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        reply = api.get("/leads", org, cursor=cursor, limit=limit, **filters)
        assert reply.status == 200, reply.body
        body = reply.body
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


@pytest.mark.parametrize("limit", [1, 7, 500])
def test_list_leads_walks_all_pages_in_score_order(api: Api, limit: int) -> None:
    items = walk(api, ORG_A, limit)
    ids = [i["lead_id"] for i in items]
    assert len(ids) == len(set(ids))  # nothing twice
    assert set(ids) == set(current_scores(api, ORG_A))  # nothing missing, nothing foreign
    keys = [(-i["score"]["score"], i["lead_id"]) for i in items]
    assert keys == sorted(keys)  # score desc, then lead id
    assert all(i["org_id"] == ORG_A for i in items)


def test_list_leads_filters(api: Api) -> None:
    scores = current_scores(api, ORG_A)
    leads = org_leads(api, ORG_A)
    median = sorted(s["score"] for s in scores.values())[len(scores) // 2]
    got = {i["lead_id"] for i in walk(api, ORG_A, 5, min_score=median)}
    assert got == {lid for lid, s in scores.items() if s["score"] >= median}
    grade = max(
        {s["grade"] for s in scores.values()},
        key=lambda g: sum(s["grade"] == g for s in scores.values()),
    )
    got = {i["lead_id"] for i in walk(api, ORG_A, 5, grade=grade)}
    assert got == {lid for lid, s in scores.items() if s["grade"] == grade}
    source = next(v["profile"]["source"] for v in leads.values() if v["profile"].get("source"))
    got = {i["lead_id"] for i in walk(api, ORG_A, 5, source=source, grade=None)}
    assert got == {lid for lid in scores if leads[lid]["profile"].get("source") == source}
    assert walk(api, ORG_A, 5, source="no-such-source") == []


def test_leaderboard_is_the_top_current_scores(api: Api) -> None:
    scores = current_scores(api, ORG_A)
    body = api.get("/leaderboard", limit=10).body
    items = body["items"]
    assert [i["rank"] for i in items] == list(range(1, len(items) + 1))
    want = sorted((s["score"] for s in scores.values()), reverse=True)[:10]
    assert [i["score"] for i in items] == want
    for i in items:
        assert scores[i["lead_id"]]["score"] == i["score"]
        assert scores[i["lead_id"]]["grade"] == i["grade"]
    everyone = api.get("/leaderboard", limit=1000).body["items"]
    assert {i["lead_id"] for i in everyone} == set(scores)


# -- analytics ------------------------------------------------------------------------


def test_analytics_cover_the_orgs_leads(api: Api) -> None:
    scores = current_scores(api, ORG_A)
    leads = org_leads(api, ORG_A)
    dist = api.get("/analytics/score-distribution", bucket=25).body
    assert dist["org_id"] == ORG_A and dist["bucket"] == 25
    assert dist["leads"] == len(scores) == sum(b["count"] for b in dist["buckets"])
    assert [b["from"] for b in dist["buckets"]] == [0, 25, 50, 75]
    assert {g["grade"]: g["count"] for g in dist["grades"]} == {
        g: sum(s["grade"] == g for s in scores.values())
        for g in {s["grade"] for s in scores.values()}
    }
    funnel = api.get("/analytics/funnel").body["items"]
    assert [s["step"] for s in funnel] == ["created", "engaged", "high_score", "converted"]
    assert funnel[0]["leads"] == len(leads)
    assert all(a["leads"] >= b["leads"] for a, b in zip(funnel, funnel[1:], strict=False))
    by_source = api.get("/analytics/conversion-by-source").body["items"]
    assert sum(s["leads"] for s in by_source) == len(leads)
    converted = sum(v["status"] == "converted" for v in leads.values())
    assert sum(s["converted"] for s in by_source) == converted
    bands = api.get("/analytics/conversion-by-score-band", band=50).body
    assert bands["band"] == 50 and [b["from"] for b in bands["items"]] == [0, 50]
    models = api.get("/analytics/models").body["items"]
    assert [m["model_version"] for m in models] == ["test-1"]
    assert models[0]["scores"] == sum(
        len(h) for (o, _), h in api.expected["scores"].items() if o == ORG_A
    )


def test_analytics_are_per_org(api: Api) -> None:
    a = api.get("/analytics/funnel", ORG_A).body
    b = api.get("/analytics/funnel", ORG_B).body
    empty = api.get("/analytics/funnel", ORG_EMPTY).body
    assert a["items"][0]["leads"] == len(org_leads(api, ORG_A))
    assert b["items"][0]["leads"] == len(org_leads(api, ORG_B))
    assert [s["leads"] for s in empty["items"]] == [0, 0, 0, 0]
    assert api.get("/analytics/models", ORG_EMPTY).body == {"org_id": ORG_EMPTY, "items": []}


# -- auth and errors ------------------------------------------------------------------

PROTECTED = [
    "/leads",
    "/leads/x",
    "/leads/x/scores",
    "/leaderboard",
    "/analytics/score-distribution",
    "/analytics/funnel",
    "/analytics/conversion-by-source",
    "/analytics/conversion-by-score-band",
    "/analytics/models",
    "/models",
]


@pytest.mark.parametrize("path", PROTECTED)
def test_missing_or_invalid_key_is_401(api: Api, path: str) -> None:
    forged = tenancy.generate_key()
    for auth in (
        None,
        "",
        "Bearer",
        f"Bearer {forged}",
        "Bearer not-a-key",
        f"Basic {api.keys[ORG_A]}",
        api.keys[ORG_A],
    ):
        reply = request(api.port, "GET", path, {} if auth is None else {"Authorization": auth})
        assert reply.status == 401, (path, auth)
        assert reply.body["error"] == "unauthorized"
        assert reply.headers["www-authenticate"].startswith("Bearer")


def test_revoked_key_is_401(api: Api) -> None:
    async def revoked_key() -> str:
        conn = await asyncpg.connect(api.settings.pg_dsn)
        try:
            key_id, key = await tenancy.create_api_key(conn, ORG_A)
            assert await tenancy.revoke_api_key(conn, key_id)
            return key
        finally:
            await conn.close()

    key = asyncio.run(revoked_key())
    assert api.get("/leads", auth=f"Bearer {key}").status == 401
    assert api.get("/leads", auth=f"bearer {api.keys[ORG_A]}").status == 200  # scheme: any case


@pytest.mark.parametrize(
    ("path", "query", "parameter"),
    [
        ("/leads", {"limit": "0"}, "limit"),
        ("/leads", {"limit": "501"}, "limit"),
        ("/leads", {"limit": "ten"}, "limit"),
        ("/leads", {"limit": "1_0"}, "limit"),
        ("/leads", {"min_score": "-1"}, "min_score"),
        ("/leads", {"min_score": "nan"}, "min_score"),
        ("/leads", {"min_score": "1e999"}, "min_score"),
        ("/leads", {"grade": "D4"}, "grade"),
        ("/leads", {"source": ""}, "source"),
        ("/leads", {"source": "x" * 129}, "source"),
        ("/leads", {"cursor": "!!"}, "cursor"),
        ("/leads", {"cursor": "bm90IGpzb24"}, "cursor"),  # base64 of "not json"
        ("/leads", {"cursor": "WyJoaXN0b3J5IiwzXQ"}, "cursor"),  # a history cursor
        ("/leads", {"cursor": "WyJsZWFkcyIsdHJ1ZSwieCJd"}, "cursor"),  # ["leads",true,"x"]
        ("/leads/x/scores", {"cursor": "WyJsZWFkcyIsMSwieCJd"}, "cursor"),
        ("/leads/x/scores", {"limit": "-5"}, "limit"),
        ("/leaderboard", {"limit": "1001"}, "limit"),
        ("/analytics/score-distribution", {"bucket": "0"}, "bucket"),
        ("/analytics/conversion-by-score-band", {"band": "101"}, "band"),
    ],
)
def test_invalid_parameters_are_422_with_details(
    api: Api, path: str, query: dict[str, str], parameter: str
) -> None:
    reply = api.get(path, **query)
    assert reply.status == 422, reply.raw
    body = reply.body
    assert body["error"] == "invalid_parameters"
    assert [d["parameter"] for d in body["details"]] == [parameter]


def test_every_problem_is_reported_at_once(api: Api) -> None:
    body = api.get("/leads", limit="0", grade="Z", min_score="x").body
    assert {d["parameter"] for d in body["details"]} == {"limit", "grade", "min_score"}


def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    auth = {"Authorization": f"Bearer {api.keys[ORG_A]}"}
    missing = request(api.port, "GET", "/nope", auth)
    assert missing.status == 404 and missing.body["error"] == "not_found"
    post = request(api.port, "POST", "/leads", auth)
    assert post.status == 405 and "GET" in post.headers["allow"]
    assert post.body["error"] == "method_not_allowed"


@pytest.mark.parametrize("lead_id", ["%00", "%20", "a" * 129, "%E2%80%8B", "..", "%FF%FE", "%2F"])
def test_impossible_lead_ids_are_404_not_500(api: Api, lead_id: str) -> None:
    assert api.get(f"/leads/{lead_id}").status == 404
    assert api.get(f"/leads/{lead_id}/scores").status == 404


# -- tenancy, by property -------------------------------------------------------------


@hsettings(max_examples=60, deadline=None)
@given(data=st.data())
def test_no_key_or_id_leaks_across_orgs(api: Api, data: st.DataObject) -> None:
    known = sorted({lid for (_org, lid) in api.expected["leads"]})
    lead_id = data.draw(st.one_of(st.sampled_from(known), st.text(min_size=1, max_size=40)))
    org = data.draw(st.sampled_from([ORG_A, ORG_B, ORG_EMPTY]))
    path = f"/leads/{quote(lead_id, safe='')}"
    reply = api.get(path, org)
    exists = (org, lead_id) in api.expected["leads"]
    if exists:
        assert reply.status == 200 and reply.body["org_id"] == org
        assert reply.body["lead_id"] == lead_id
    else:
        assert reply.status == 404, (org, lead_id, reply.raw)
    history = api.get(path + "/scores", org)
    assert history.status == (200 if exists else 404)
    # A random key, or a real key altered, never authenticates as anyone.
    real = api.keys[org]
    forged = data.draw(
        st.one_of(
            st.text(max_size=60),
            st.builds(
                lambda k: tenancy.KEY_PREFIX + k, st.text("abcXYZ019_-", min_size=43, max_size=43)
            ),
            st.integers(0, len(real) - 1).map(
                lambda i: real[:i] + ("A" if real[i] != "A" else "B") + real[i + 1 :]
            ),
        )
    )
    token = forged.encode("latin-1", "ignore").decode("latin-1").strip()
    if token == real:
        return
    header = "Bearer " + "".join(c for c in token if c.isprintable() and c not in "\r\n")
    assert api.get(path, auth=header).status == 401


# -- outages --------------------------------------------------------------------------


def test_a_store_that_is_down_is_503_and_reported_by_health(
    settings: Settings, tmp_path: Path
) -> None:
    dead = free_port()  # nothing listens there
    s = dataclasses.replace(
        settings,
        redis_url=f"redis://127.0.0.1:{dead}/0",
        clickhouse_dsn=f"http://127.0.0.1:{dead}",  # a server DSN: the API starts without it
        api_port=free_port(),
    )
    keys = asyncio.run(create_tenants(s))
    log = tmp_path / "api.log"
    process = start_api(s, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                health = request(s.api_port, "GET", "/health")
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert health.status == 503
        checks = health.body["checks"]
        assert {k: c["status"] for k, c in checks.items()} == {
            "postgresql": "up",
            "redis": "down",
            "clickhouse": "down",
        }
        assert checks["redis"]["error"] and health.body["projection"] is None
        down = Api(s.api_port, s, keys, {}, process)
        for path in ("/leaderboard", "/analytics/funnel", "/analytics/models"):
            reply = down.get(path)
            assert reply.status == 503, (path, reply.raw)
            assert reply.body["error"] == "unavailable" and reply.headers["retry-after"]
        # What PostgreSQL alone can answer, it still does.
        assert down.get("/leads").status == 200
        assert down.get("/leads/nobody").status == 404
        assert down.get("/models").status == 200
    finally:
        stop_api(process)


def test_analytics_follow_the_log_while_serving(api: Api) -> None:
    org = "org-late"

    async def tenant() -> str:
        conn = await asyncpg.connect(api.settings.pg_dsn)
        try:
            await tenancy.create_org(conn, org, "Late")
            return (await tenancy.create_api_key(conn, org))[1]
        finally:
            await conn.close()

    api.keys[org] = asyncio.run(tenant())
    assert api.get("/analytics/funnel", org).body["items"][0]["leads"] == 0  # now cached
    engine = bootstrap(api.settings, scorer=FixedScorer())
    try:
        engine.processor.process(
            encoded(engine, [created(lead=f"late-lead-{i}", org=org) for i in range(3)])
        )
    finally:
        engine.close()
    # The API's own ClickHouse projection picks the new events up; the cached answer goes.
    deadline = time.monotonic() + 30
    while api.get("/analytics/funnel", org).body["items"][0]["leads"] != 3:
        assert time.monotonic() < deadline, "analytics never saw the new leads"
        time.sleep(0.2)
    assert api.get("/analytics/score-distribution", org).body["leads"] == 3
