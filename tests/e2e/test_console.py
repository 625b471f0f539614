"""The console in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium).

One seeded API process (tests/support/api.py, scored by the committed model, plus an
org-scoped copy of it to promote); each test signs in with a real key. Screenshots of
the pages go to docs/console/ (the README shows them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import asyncpg
import psycopg
import pytest
from playwright.sync_api import Browser as PlaywrightBrowser
from playwright.sync_api import expect

from adapters import tenancy, webhooks
from adapters.dead_letter_log import DeadLetterLog, Entry
from adapters.settings import ROOT, Settings
from tests.support.api import ORG_A, ORG_B, ORG_EMPTY, Api, live_api, request
from tests.support.browser import Browser, chromium, fresh

pytestmark = pytest.mark.e2e

# The pages as the tests saw them. `LEADSCORE_CONSOLE_SHOTS=docs/console` refreshes the
# README's pictures; by default they go under the run dir, so a test run leaves the
# checkout as it found it.
SHOTS = ROOT / os.environ.get("LEADSCORE_CONSOLE_SHOTS", ".run/console-shots")
SHOTS.mkdir(parents=True, exist_ok=True)
ORG_MODEL = "v1-org-001"  # a copy of the committed model, scoped to org A: promotable


@pytest.fixture(scope="module")
def api(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("console")
    models = tmp / "models"
    shutil.copytree(Path(services.model_dir) / "v1", models / "v1")
    shutil.copytree(models / "v1", models / ORG_MODEL)
    meta_path = models / ORG_MODEL / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = ORG_MODEL
    meta["provenance"] = {**meta.get("provenance", {}), "org": ORG_A}
    meta_path.write_text(json.dumps(meta))
    # Thresholds alone (no points): org A's leads get lifecycle stages, scores unchanged.
    rules = tmp / "rules"
    rules.mkdir()
    (rules / f"{ORG_A}.yaml").write_text("version: 1\nthresholds:\n  mql: 20\n  sql: 40\n")
    settings = dataclasses.replace(
        services,
        api_key_rate=0,
        api_ip_rate=0,
        model_dir=str(models),
        model_version="v1",
        scoring_config_dir=str(rules),
    )
    with live_api(settings, tmp, "model") as running:
        running.keys["admin"] = asyncio.run(admin_key(running.settings))
        yield running


async def admin_key(settings: Settings) -> str:
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        return (await tenancy.create_api_key(conn, ORG_A, "console admin", admin=True))[1]
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def chrome(api: Api) -> Iterator[PlaywrightBrowser]:
    # After the API: Playwright's sync API runs an event loop in this thread, so the
    # seeding's asyncio.run must come first.
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as b:
        yield b


@pytest.fixture
def browser(chrome: PlaywrightBrowser) -> Iterator[Browser]:
    """A context of its own per test: no cookie carries over."""
    with fresh(chrome) as b:
        yield b


@contextmanager
def fresh_context(browser: Browser) -> Iterator[Browser]:
    """Another user in the same browser: a context of its own."""
    chrome = browser.context.browser
    assert chrome is not None
    with fresh(chrome) as other:
        yield other


def base(api: Api) -> str:
    return f"http://127.0.0.1:{api.port}"


def sign_in(browser: Browser, api: Api, key: str) -> None:
    page = browser.page
    page.goto(f"{base(api)}/console")
    assert page.url.endswith("/console/sign-in")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/leaderboard")


def session_cookie(browser: Browser) -> dict[str, object] | None:
    return next((c for c in browser.context.cookies() if c["name"] == "leadscore_console"), None)


def test_sign_in_shows_the_leaderboard_ranked_and_sign_out_clears_the_cookie(
    browser: Browser, api: Api
) -> None:
    sign_in(browser, api, api.keys[ORG_A])
    cookie = session_cookie(browser)
    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert api.keys[ORG_A] not in str(cookie["value"])  # the key itself is never in it
    page = browser.page
    rows = page.locator("[data-testid=board] tbody tr")
    want = [i["lead_id"] for i in api.get("/leads", ORG_A, limit=25).body["items"]]
    assert len(want) > 10 and rows.count() == len(want)
    links = page.locator("[data-testid=board] tbody tr td:nth-child(2) a")
    hrefs = links.evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert hrefs == [f"/console/leads/{lead}" for lead in want]  # the API's ranking
    scores = [float(s) for s in rows.evaluate_all("rs => rs.map(r => r.dataset.score)")]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    ranks = page.locator("[data-testid=board] tbody tr td:first-child").all_inner_texts()
    assert ranks == [str(n) for n in range(1, len(want) + 1)]
    page.screenshot(path=str(SHOTS / "leaderboard.png"), full_page=False)
    # Filters: grade, then paging keeps the filter.
    grade = page.locator("[data-testid=board] tbody tr .grade").first.inner_text()
    page.get_by_label("Grade").select_option(grade)
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(f"**grade={grade}**")
    grades = set(page.locator("[data-testid=board] tbody tr .grade").all_inner_texts())
    assert grades == {grade}
    # Sign out: the cookie is gone and pages send you to sign in.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console/sign-in")
    assert session_cookie(browser) is None
    page.goto(f"{base(api)}/console/leaderboard")
    assert page.url.endswith("/console/sign-in")


def test_search_and_moved_most_today(browser: Browser, api: Api) -> None:
    sign_in(browser, api, api.keys[ORG_A])
    page = browser.page
    page.get_by_label("Search").fill("Alpha Corp")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**q=Alpha**")
    companies = page.locator("[data-testid=board] tbody tr td:nth-child(3)").all_inner_texts()
    assert companies and set(companies) == {"Alpha Corp"}
    page.get_by_role("link", name="Moved most today").click()
    page.wait_for_url("**view=moved")
    moved = page.get_by_role("table", name="Leads whose score moved most today")
    assert moved.locator("tbody tr a").count() == 10  # all seeded scores were stored today


def best_lead(api: Api) -> str:
    reply = api.get("/leads", ORG_A, limit=1)
    return str(reply.body["items"][0]["lead_id"])


def test_lead_page_chart_and_slider_show_the_as_of_score(browser: Browser, api: Api) -> None:
    sign_in(browser, api, api.keys[ORG_A])
    lead = best_lead(api)
    timeline = api.get(f"/leads/{lead}/timeline", ORG_A).body["items"]
    assert len(timeline) >= 2
    page = browser.page
    page.goto(f"{base(api)}/console/leads/{lead}")
    chart = page.locator("#score-chart")
    chart.wait_for()
    expect(chart).to_have_attribute("data-rendered", "true")
    assert chart.get_attribute("data-points") == str(len(timeline))
    assert page.locator("[data-testid=trail] li").count() >= len(timeline)
    assert (
        page.get_by_role("list", name="Factors of the current score, in points")
        .locator("li")
        .count()
        >= 1
    )
    # The slider at its end: the current score.
    box = page.locator("#time-travel")
    expect(box).to_have_attribute("data-ready", "true")
    now = api.get(f"/leads/{lead}", ORG_A).body["score"]["score"]
    assert page.get_by_test_id("as-of-score").inner_text() == f"{now:.1f}"
    page.screenshot(path=str(SHOTS / "lead.png"), full_page=True)
    # Moved with the keyboard to its start: the lead as first stored, before its first
    # score or at it; the page shows what the API says of that instant.
    slider = page.get_by_label("Moment between the lead's creation and its latest change")
    slider.focus()
    page.keyboard.press("Home")
    # (Locator assertions, not wait_for_function: the page's CSP forbids eval.)
    expect(box).not_to_have_attribute("data-at", box.get_attribute("data-at") or "")
    expect(box).to_have_attribute("data-ready", "true")
    at = box.get_attribute("data-at")
    assert at is not None
    body = api.get(f"/leads/{lead}/as-of", ORG_A, at=at).body
    shown = page.get_by_test_id("as-of-score").inner_text()
    want = "not scored yet" if body["score"] is None else f"{body['score']['score']:.1f}"
    assert shown == want
    assert (
        datetime.fromisoformat(at.replace("Z", "+00:00"))
        <= datetime.fromisoformat(timeline[0]["recorded_at"])
        or shown == f"{timeline[0]['score']:.1f}"
    )


def test_another_orgs_lead_is_never_shown(browser: Browser, api: Api) -> None:
    lead = best_lead(api)  # org A's
    sign_in(browser, api, api.keys[ORG_B])
    page = browser.page
    reply = page.goto(f"{base(api)}/console/leads/{lead}")
    assert reply is not None and reply.status == 404
    now = quote(datetime.now(UTC).isoformat())
    fragment = page.request.get(f"{base(api)}/console/leads/{lead}/as-of?at={now}")
    assert fragment.status == 404
    page.goto(f"{base(api)}/console/leaderboard?q=Alpha")
    assert "Alpha Corp" not in page.content()
    assert page.get_by_test_id("org").inner_text().startswith(ORG_B)


def test_charts_render_on_the_funnel_and_models_pages(browser: Browser, api: Api) -> None:
    sign_in(browser, api, api.keys[ORG_A])
    page = browser.page
    page.goto(f"{base(api)}/console/analytics")
    expect(page.locator("#funnel-chart")).to_have_attribute("data-rendered", "true")
    expect(page.locator("#dist-chart")).to_have_attribute("data-rendered", "true")
    page.screenshot(path=str(SHOTS / "funnel.png"), full_page=False)
    page.goto(f"{base(api)}/console/models")
    assert page.locator("canvas.calibration[data-rendered=true]").count() >= 1
    page.goto(f"{base(api)}/console/operations")
    assert page.get_by_role("heading", name="Projection lag").is_visible()


def test_non_admin_cannot_promote_and_admin_can_after_confirming(
    browser: Browser, api: Api
) -> None:
    sign_in(browser, api, api.keys[ORG_A])
    page = browser.page
    page.goto(f"{base(api)}/console/models")
    assert page.get_by_role("button", name=f"Promote {ORG_MODEL}").count() == 0
    csrf = page.locator("form.signout input[name=csrf]").get_attribute("value")
    denied = page.request.post(
        f"{base(api)}/console/models/{ORG_MODEL}/promote",
        form={"csrf": csrf or "", "confirm": "yes"},
    )
    assert denied.status == 403 and "admin" in denied.json()["message"]
    page.get_by_role("button", name="Sign out").click()

    sign_in(browser, api, api.keys["admin"])
    page.goto(f"{base(api)}/console/models")
    button = page.get_by_role("button", name=f"Promote {ORG_MODEL}")
    assert button.count() == 1
    # The confirmation is required: the browser will not submit without it.
    button.click()
    assert page.url.endswith("/console/models")
    page.get_by_label(f"I want {ORG_MODEL} to score {ORG_A}'s leads from now on").check()
    button.click()
    page.wait_for_url(f"**promoted={ORG_MODEL}")
    models = api.get("/models", ORG_A).body
    assert models["active_version"] == ORG_MODEL
    # Org B still sees the global model, and never org A's.
    assert api.get("/models", ORG_B).body["active_version"] == "v1"


def test_a_post_without_the_csrf_token_is_403(browser: Browser, api: Api) -> None:
    sign_in(browser, api, api.keys["admin"])
    page = browser.page
    for path, form in (
        (f"/console/models/{ORG_MODEL}/promote", {"confirm": "yes"}),
        ("/console/sign-out", {}),
        ("/console/sign-in", {"api_key": api.keys[ORG_A]}),
    ):
        reply = page.request.post(f"{base(api)}{path}", form=form, max_redirects=0)
        assert reply.status == 403, (path, reply.status)
        assert reply.headers["content-type"] == "application/json"
    # The session survived the refused sign-out.
    assert session_cookie(browser) is not None


# Resolves once the browser has recorded the page's first contentful paint.
FIRST_PAINT = """() => new Promise((resolve) => new PerformanceObserver((list) => {
  const entry = list.getEntriesByName("first-contentful-paint")[0];
  if (entry) resolve(entry.startTime);
}).observe({ type: "paint", buffered: true }))"""


def test_first_paint_on_the_seeded_data(browser: Browser, api: Api) -> None:
    """Measured, not asserted (speed is the benchmarks' business): printed with -s."""
    sign_in(browser, api, api.keys[ORG_A])
    page = browser.page
    lead = best_lead(api)
    figures = {}
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    pages = (
        ("leaderboard", "/console/leaderboard"),
        ("leaderboard as of", f"/console/leaderboard?as_of={at}"),
        ("lead", f"/console/leads/{lead}"),
        ("funnel", "/console/analytics"),
        ("funnel, a range", "/console/analytics?from=2000-01-01&until=2999-01-01"),
        ("operations", "/console/operations"),
    )
    for name, path in pages:
        paints = []
        for _ in range(5):
            page.goto(f"{base(api)}{path}")
            paints.append(page.evaluate(FIRST_PAINT))
        figures[name] = sorted(paints)[len(paints) // 2]
    print(f"\nfirst contentful paint, median of 5 (ms): {figures}")
    assert all(v > 0 for v in figures.values())


def test_the_console_needs_no_bearer_key_but_the_api_still_does(api: Api) -> None:
    assert request(api.port, "GET", "/console/sign-in").status == 200
    assert request(api.port, "GET", "/leaderboard").status == 401
    # The charting library is served by the app itself: nothing from the internet.
    reply = request(api.port, "GET", "/console/static/vendor/chart.umd.min.js")
    assert reply.status == 200 and len(reply.raw) > 100_000
    page = request(api.port, "GET", "/console/sign-in")
    assert "http" not in page.raw.decode().split("<body>")[0].replace("http-equiv", "")


def dead_delivery(settings: Settings, org: str) -> int:
    """A webhook of ``org`` and one dead delivery to it (as the dispatcher leaves them)."""
    webhooks.ensure_schema(settings.pg_dsn)
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        hook = conn.execute(
            "INSERT INTO webhooks (org_id, url, secret, event_types) "
            "VALUES (%s, 'https://example.invalid/hook', 'plain', %s) RETURNING id",
            (org, ["score.updated"]),
        ).fetchone()
        assert hook is not None
        row = conn.execute(
            "INSERT INTO webhook_deliveries (webhook_id, org_id, event_id, event_type, payload, "
            "status, attempts, last_status, last_error) "
            "VALUES (%s, %s, %s, 'score.updated', '{}', 'dead', 8, 500, 'server error') "
            "RETURNING id",
            (hook[0], org, f"ev-{time.time_ns()}"),
        ).fetchone()
        assert row is not None
        return int(row[0])


def delivery_status(settings: Settings, delivery: int) -> str:
    with psycopg.connect(settings.pg_dsn) as conn:
        row = conn.execute(
            "SELECT status FROM webhook_deliveries WHERE id = %s", (delivery,)
        ).fetchone()
        assert row is not None
        return str(row[0])


def test_a_dead_webhook_delivery_is_retried_from_operations(browser: Browser, api: Api) -> None:
    delivery = dead_delivery(api.settings, ORG_A)
    # Org B cannot retry it, even with a valid session and token.
    sign_in(browser, api, api.keys[ORG_B])
    page = browser.page
    page.goto(f"{base(api)}/console/operations")
    csrf = page.locator("form.signout input[name=csrf]").get_attribute("value")
    other = page.request.post(
        f"{base(api)}/console/webhooks/deliveries/{delivery}/retry",
        form={"csrf": csrf or ""},
        max_redirects=0,
    )
    assert other.status == 404 and delivery_status(api.settings, delivery) == "dead"
    assert page.get_by_role("button", name=f"Retry delivery {delivery}").count() == 0

    with fresh_context(browser) as mine:
        sign_in(mine, api, api.keys[ORG_A])
        mine.page.goto(f"{base(api)}/console/operations")
        mine.page.get_by_role("button", name=f"Retry delivery {delivery}").click()
        mine.page.wait_for_url("**/console/operations")
        assert delivery_status(api.settings, delivery) == "pending"


def median_instant(api: Api, sql: str) -> datetime:
    with psycopg.connect(api.settings.pg_dsn) as conn:
        row = conn.execute(sql, (ORG_A,)).fetchone()
    assert row is not None and row[0] is not None
    value: datetime = row[0]
    return value.astimezone(UTC)


def test_leaderboard_as_of_a_past_moment_from_the_keyboard(browser: Browser, api: Api) -> None:
    at = median_instant(
        api,
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY at) FROM score_history "
        "WHERE org_id = %s",
    ).replace(microsecond=0) + timedelta(seconds=1)  # the input's precision: seconds
    sign_in(browser, api, api.keys[ORG_A])
    page = browser.page
    field = page.get_by_label("As of (UTC)")
    field.focus()
    field.fill(at.strftime("%Y-%m-%dT%H:%M:%S"))
    # Keyboard only: Tab moves between the input's own fields; Enter submits its form.
    field.press("Enter")
    page.wait_for_url("**as_of=**")
    want = api.get("/leaderboard", ORG_A, as_of=at.isoformat().replace("+00:00", "Z"), limit=25)
    items = want.body["items"]
    assert items
    rows = page.locator("[data-testid=board-as-of] tbody tr")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.lead)") == [i["lead_id"] for i in items]
    shown = [float(s) for s in rows.evaluate_all("rs => rs.map(r => r.dataset.score)")]
    assert shown == [i["score"] for i in items]
    page.screenshot(path=str(SHOTS / "leaderboard-as-of.png"), full_page=False)
    # A moment in the future, or not a moment, is refused with a JSON body.
    for bad in ("2999-01-01T00:00", "yesterday"):
        reply = page.request.get(f"{base(api)}/console/leaderboard?as_of={bad}")
        assert reply.status == 422 and reply.json()["details"][0]["parameter"] == "as_of"


def test_the_stage_filter_shows_leads_at_that_stage(browser: Browser, api: Api) -> None:
    sign_in(browser, api, api.keys[ORG_A])
    page = browser.page
    rows = page.locator("[data-testid=board] tbody tr")
    # org-001's rules have thresholds (config/scoring/org-001.yaml): its leads have stages.
    stage = rows.first.get_attribute("data-stage")
    assert stage in ("lead", "mql", "sql", "disqualified")
    page.get_by_label("Stage", exact=True).select_option(stage)
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(f"**stage={stage}**")
    stages = rows.evaluate_all("rs => rs.map(r => r.dataset.stage)")
    assert stages and set(stages) == {stage}
    # The stage is the one the event store holds for the lead now.
    lead = page.locator("[data-testid=board] tbody tr td:nth-child(2) a").first.get_attribute(
        "href"
    )
    assert lead is not None
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    assert (
        api.get(f"/leads/{lead.rsplit('/', 1)[1]}/as-of", ORG_A, at=now).body["score"]["stage"]
        == stage
    )


def test_the_funnel_by_creation_dates(browser: Browser, api: Api) -> None:
    day = median_instant(
        api,
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY created_at) FROM leads "
        "WHERE org_id = %s",
    ).date()
    sign_in(browser, api, api.keys[ORG_A])
    page = browser.page
    page.goto(f"{base(api)}/console/analytics")
    everyone = int(page.locator("table.data tbody tr td:nth-child(2)").first.inner_text())
    page.get_by_label("Created from").fill(day.isoformat())
    page.get_by_label("Created until").fill(day.isoformat())
    page.get_by_role("button", name="Apply range").click()
    page.wait_for_url(f"**until={day.isoformat()}**")
    expect(page.locator("#funnel-chart")).to_have_attribute("data-rendered", "true")
    created = int(page.locator("table.data tbody tr td:nth-child(2)").first.inner_text())
    since = f"{day.isoformat()}T00:00:00Z"
    until = f"{(day + timedelta(days=1)).isoformat()}T00:00:00Z"
    want = api.get("/analytics/funnel", ORG_A, **{"from": since, "until": until}).body
    assert 0 < created == want["items"][0]["leads"] < everyone
    assert "Leads created from" in page.get_by_test_id("cohort").inner_text()
    # A backwards range typed into the form: the page says so, keeping what was typed.
    page.get_by_label("Created from").fill(day.isoformat())
    page.get_by_label("Created until").fill((day - timedelta(days=1)).isoformat())
    page.get_by_role("button", name="Apply range").click()
    expect(page.get_by_role("alert")).to_contain_text("must not be before")
    expect(page.get_by_label("Created from")).to_have_value(day.isoformat())
    back = page.request.get(
        f"{base(api)}/console/analytics?from={day.isoformat()}&until={day - timedelta(days=1)}"
    )
    assert back.status == 422 and "must not be before" in back.text()
    # Bad ranges in the API: 422 with a JSON body.
    for query in ({"from": until, "until": since}, {"from": since, "until": since}):
        reply = api.get("/analytics/funnel", ORG_A, **query)
        assert reply.status == 422 and reply.body["details"][0]["parameter"] == "from"
    assert api.get("/analytics/score-distribution", ORG_A, until="soon").status == 422


def test_dead_letters_by_reason_per_org(browser: Browser, api: Api) -> None:
    now = datetime.now(UTC)
    entries = [
        *(Entry(ORG_A, "invalid", "ValidationError", now, "lead-events", 0, i) for i in range(3)),
        Entry(ORG_A, "failed", "ValueError", now - timedelta(days=2), "lead-events", 0, 3),
        *(Entry(ORG_B, "undecodable", "SerializationError", now, "lead-events", 1, i)
          for i in range(2)),
        *(Entry(None, "undecodable", "SerializationError", now, "lead-events", 2, i)
          for i in range(5)),
    ]  # fmt: skip
    log = DeadLetterLog(api.settings.pg_dsn)
    try:
        log.record(entries)
    finally:
        log.close()
    a = api.get("/dead-letters", ORG_A).body
    assert a["total"] == 4 and {r["reason"]: r["count"] for r in a["reasons"]} == {
        "invalid": 3,
        "failed": 1,
    }
    assert api.get("/dead-letters", ORG_B).body["total"] == 2
    assert api.get("/dead-letters", ORG_EMPTY).body["total"] == 0  # no org's letters shown
    hourly = api.get(
        "/dead-letters",
        ORG_A,
        bucket="hour",
        **{"from": (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z")},
    )
    assert hourly.body["total"] == 3 and len(hourly.body["items"]) == 1
    long = (now - timedelta(days=40)).isoformat().replace("+00:00", "Z")
    assert api.get("/dead-letters", ORG_A, bucket="hour", **{"from": long}).status == 422
    assert api.get("/dead-letters", ORG_A, bucket="week").status == 422

    sign_in(browser, api, api.keys[ORG_A])
    page = browser.page
    page.goto(f"{base(api)}/console/operations")
    chart = page.locator("#dl-chart")
    expect(chart).to_have_attribute("data-rendered", "true")
    assert chart.get_attribute("data-letters") == "4"
    reasons = page.get_by_test_id("dl-reasons").locator("tbody tr").all_inner_texts()
    assert [r.split("\t") for r in reasons] == [["invalid", "3"], ["failed", "1"]]
    page.screenshot(path=str(SHOTS / "operations.png"), full_page=False)
    page.get_by_label("Period").select_option("1")
    page.get_by_role("button", name="Show", exact=True).click()
    page.wait_for_url("**dl_days=1")
    assert page.locator("#dl-chart").get_attribute("data-letters") == "3"
    page.get_by_role("button", name="Sign out").click()
    sign_in(browser, api, api.keys[ORG_B])
    page.goto(f"{base(api)}/console/operations")
    reasons = page.get_by_test_id("dl-reasons").locator("tbody tr").all_inner_texts()
    assert [r.split("\t") for r in reasons] == [["undecodable", "2"]]
