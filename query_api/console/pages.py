"""The console's pages: server-rendered Jinja2, each read filtered by the session's org.

Pages read the same read models and the same time-travel code as the API. A page's
query parameters are declared with ``@query`` like the API's. Charts get their data in
``<script type="application/json">`` blocks (no inline script runs: the CSP forbids it).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode

import jinja2
import psycopg
import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from adapters import dead_letter_log, tenancy, webhooks
from adapters.drift import NoReferenceError, drift_report
from adapters.model_registry import (
    GLOBAL,
    ModelRegistry,
    ModelRegistryError,
    assignments,
    scope_of,
)
from adapters.modelstore import list_models
from adapters.settings import DEV, Settings
from domain import timeline
from domain.rules import STAGES
from projections.analytics import EARLIEST, LATEST, Cohort
from query_api.console import data
from query_api.console.session import (
    COOKIE,
    Session,
    SessionError,
    Signer,
    cookie_header,
    csrf_ok,
)
from query_api.errors import ApiError, InvalidParametersError
from query_api.params import (
    Choice,
    Day,
    Instant,
    Integer,
    Number,
    Query,
    Text,
    WallClock,
    lead_id,
    query,
)
from query_api.resources import Resources
from query_api.responses import JSON
from query_api.routes_history import lead_as_of, lead_events
from query_api.routes_leads import GRADES

log = structlog.get_logger(__name__)

HERE = Path(__file__).parent
PRE_COOKIE = "leadscore_console_signin"  # the sign-in form's CSRF token, before a session
KEY_CHECK_TTL = 30.0  # a revoked key's sessions end within this long
DEV_SECRET = "leadscore-dev-console"

GRADE = Choice("grade", "Only leads of this grade.", tuple(sorted(GRADES)))
STATUS = Choice("status", "Only leads with this status.", data.STATUSES)
STAGE = Choice("stage", "Only leads at this lifecycle stage.", STAGES)
AS_OF = WallClock("as_of", "The ranking as it was at this UTC moment.")
MIN_SCORE = Number("min_score", "Only leads scoring at least this.", 0, 100)
SOURCE = Text("source", "Only leads from this source.", 128)
ACTIVE = Choice(
    "active_days",
    "Only leads active within this many days.",
    tuple(map(str, data.ACTIVE_WITHIN_DAYS)),
)
SEARCH = Text("q", "Name, email, company or lead id contains this.", 200)
PAGE = Integer("page", "Page number.", 1, 1, 10_000)
VIEW = Choice("view", "ranked (default) or moved (moved most today).", ("ranked", "moved"))
AT = Instant("at", "The instant to show the lead as of.", required=True)
PROMOTED = Text("promoted", "The version just promoted (a notice).", 128)
SINCE_DAY = Day("from", "Leads created on or after this day (UTC).")
UNTIL_DAY = Day("until", "Leads created on or before this day (UTC).")
DL_DAYS = Choice("dl_days", "Dead letters of the last 1, 7 or 30 days.", ("1", "7", "30"))

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    # Factor and PSI bars set their width in a style attribute; no <style> runs inline.
    "style-src-attr 'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Console:
    """What the console keeps for the app's lifetime: templates, the cookie signer, and
    recent key checks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        secret = settings.console_secret or (DEV_SECRET if settings.environment == DEV else "")
        # Outside dev without a secret of its own, the console is off (every page 404s).
        self.enabled = bool(secret)
        self.signer = Signer(secret, settings.console_session_hours * 3600)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["when"] = _when
        self.templates.filters["num"] = lambda v, d=1: "" if v is None else f"{v:.{d}f}"
        self._checked: dict[bytes, tuple[tenancy.KeyRecord | None, float]] = {}

    async def key(self, res: Resources, digest: bytes) -> tenancy.KeyRecord | None:
        hit = self._checked.get(digest)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        record = await tenancy.lookup_key_hash(res.pool, digest)
        if len(self._checked) > 10_000:
            self._checked.clear()
        self._checked[digest] = (record, time.monotonic() + KEY_CHECK_TTL)
        return record


def _when(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def console_of(request: Request) -> Console:
    c: Console = request.app.state.console
    return c


def res_of(request: Request) -> Resources:
    r: Resources = request.app.state.resources
    return r


def render(
    request: Request,
    template: str,
    session: Session | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    html = (
        console_of(request)
        .templates.get_template(template)
        .render(session=session, path=request.url.path, **context)
    )
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


async def session_of(request: Request) -> Session | None:
    """The request's valid session, or None (no cookie, forged, expired, key revoked)."""
    console = console_of(request)
    if not console.enabled:
        return None
    try:
        session = console.signer.loads(request.cookies.get(COOKIE))
    except SessionError:
        return None
    record = await console.key(res_of(request), session.key_hash)
    if record is None or not record.active or record.org_id != session.org_id:
        return None
    return session


Page = Callable[[Request, Query, Session], Awaitable[Response]]


def signed_in(*params: Any) -> Callable[[Page], Callable[[Request], Awaitable[Response]]]:
    """A page for signed-in users, with its declared query parameters."""

    def wrap(page: Page) -> Callable[[Request], Awaitable[Response]]:
        @query(*params)
        async def parsed(request: Request, q: Query) -> Response:
            session = await session_of(request)
            if session is None:
                if request.method == "GET" and not request.url.path.endswith("/as-of"):
                    return RedirectResponse("/console/sign-in", status_code=303)
                raise ApiError(401, "sign in to the console first")
            return await page(request, q, session)

        @functools.wraps(page)
        async def endpoint(request: Request) -> Response:
            # A filter form sends its empty fields ("grade=&min_score="): "any", not errors.
            raw = request.scope.get("query_string", b"")
            if raw:
                pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
                request.scope["query_string"] = urlencode([(k, v) for k, v in pairs if v]).encode()
            return await parsed(request)

        endpoint.query_params = params
        return endpoint

    return wrap


async def form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (first value of each)."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


# -- sign-in and sign-out -----------------------------------------------------------


async def index(request: Request) -> Response:
    target = "/console/leaderboard" if await session_of(request) else "/console/sign-in"
    return RedirectResponse(target, status_code=303)


def _signin_page(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    if not console_of(request).enabled:
        raise ApiError(404, "the console is off: set LEADSCORE_CONSOLE_SECRET")
    token = request.cookies.get(PRE_COOKIE) or _token()
    response = render(
        request, "signin.html", None, status_code=status_code, csrf=token, error=error
    )
    response.headers.append(
        "set-cookie",
        cookie_header(token, 3600, request.url.scheme == "https").replace(
            f"{COOKIE}=", f"{PRE_COOKIE}="
        ),
    )
    return response


def _token() -> str:
    import secrets

    return secrets.token_urlsafe(24)


async def signin_form(request: Request) -> Response:
    return _signin_page(request)


async def signin(request: Request) -> Response:
    if not console_of(request).enabled:
        raise ApiError(404, "the console is off: set LEADSCORE_CONSOLE_SECRET")
    fields = await form(request)
    expected = request.cookies.get(PRE_COOKIE)
    if not expected or fields.get("csrf") != expected:
        return _forbidden(request, "the sign-in form expired; reload it")
    key = fields.get("api_key", "").strip()
    record = await tenancy.lookup_key(res_of(request).pool, key) if key else None
    if record is None or not record.active:
        log.info("audit: console sign-in refused", audit=True, key_id=getattr(record, "id", None))
        return _signin_page(request, "That key is not valid.", status_code=401)
    console = console_of(request)
    session = console.signer.new(record.org_id, record.id, tenancy.hash_key(key), record.admin)
    log.info("audit: console sign-in", audit=True, key_id=record.id, org_id=record.org_id)
    response = RedirectResponse("/console/leaderboard", status_code=303)
    response.headers.append(
        "set-cookie",
        cookie_header(
            console.signer.dumps(session),
            int(console.signer.lifetime_s),
            request.url.scheme == "https",
        ),
    )
    return response


def _forbidden(request: Request, message: str) -> Response:
    return JSON({"error": "forbidden", "message": message, "details": []}, status_code=403)


async def signout(request: Request) -> Response:
    session = await session_of(request)
    fields = await form(request)
    if session is not None and not csrf_ok(session, fields.get("csrf")):
        return _forbidden(request, "missing or wrong CSRF token")
    response = RedirectResponse("/console/sign-in", status_code=303)
    response.headers.append("set-cookie", cookie_header("", 0, request.url.scheme == "https"))
    return response


# -- pages ----------------------------------------------------------------------------


@signed_in(GRADE, STATUS, STAGE, MIN_SCORE, SOURCE, ACTIVE, SEARCH, PAGE, VIEW, AS_OF)
async def leaderboard(request: Request, q: Query, session: Session) -> Response:
    res, org = res_of(request), session.org_id
    if q[AS_OF] is not None:
        return await _leaderboard_as_of(request, session, q[AS_OF], q[PAGE])
    filters = data.BoardFilters(
        grade=q[GRADE],
        status=q[STATUS],
        stage=q[STAGE],
        min_score=q[MIN_SCORE],
        source=q[SOURCE],
        active_days=int(q[ACTIVE]) if q[ACTIVE] else None,
        search=q[SEARCH],
        page=q[PAGE],
    )
    view = q[VIEW] or "ranked"
    board, sources, moved = await asyncio.gather(
        data.board(res.pool, org, filters),
        data.sources(res.pool, org),
        data.moved_today(res.pool, org) if view == "moved" else _nothing(),
    )
    current = {
        k: v
        for k, v in {
            "grade": filters.grade,
            "status": filters.status,
            "stage": filters.stage,
            "min_score": q[MIN_SCORE],
            "source": filters.source,
            "active_days": q[ACTIVE],
            "q": filters.search,
        }.items()
        if v not in (None, "")
    }

    def page_url(n: int) -> str:
        return "/console/leaderboard?" + urlencode({**current, "page": n})

    return render(
        request,
        "leaderboard.html",
        session,
        board=board,
        moved=moved,
        view=view,
        filters=current,
        sources=sources,
        grades=sorted(GRADES),
        statuses=data.STATUSES,
        stages=STAGES,
        active_days=data.ACTIVE_WITHIN_DAYS,
        prev_url=page_url(filters.page - 1) if filters.page > 1 else None,
        next_url=page_url(filters.page + 1) if board["more"] else None,
        as_of=None,
        now=_wall_clock(datetime.now(UTC)),
    )


async def _leaderboard_as_of(
    request: Request, session: Session, at: datetime, page: int
) -> Response:
    """The ranking at ``at``: each lead's last score stored by then (score history)."""
    board = await data.board_as_of(res_of(request).pool, session.org_id, at, page)

    def page_url(n: int) -> str:
        return "/console/leaderboard?" + urlencode({"as_of": _wall_clock(at), "page": n})

    return render(
        request,
        "leaderboard.html",
        session,
        board=board,
        moved=[],
        view="as_of",
        filters={},
        sources=[],
        grades=sorted(GRADES),
        statuses=data.STATUSES,
        stages=STAGES,
        active_days=data.ACTIVE_WITHIN_DAYS,
        prev_url=page_url(page - 1) if page > 1 else None,
        next_url=page_url(page + 1) if board["more"] else None,
        as_of=_wall_clock(at),
        now=_wall_clock(datetime.now(UTC)),
    )


def _wall_clock(at: datetime) -> str:
    """What a datetime-local input shows: UTC, to the second."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


async def _nothing() -> list[Any]:
    return []


@signed_in()
async def lead_page(request: Request, q: Query, session: Session) -> Response:
    res, org = res_of(request), session.org_id
    name = lead_id(request)
    record = await data.lead(res.pool, org, name) if name else None
    if record is None or name is None:
        return render(request, "notfound.html", session, status_code=404)
    events = await lead_events(res, org, name)
    changes = timeline.timeline(events)
    trail = [timeline.lead_event(ev) for ev in events if isinstance(ev, timeline.LEAD_EVENTS)]
    # Plotted at when the causing lead-event happened (the upstream's clock, which is what
    # a person remembers); a rescore no lead-event caused (decay, replay) at when it was
    # stored. The slider below is in stored time: what the engine knew at that moment.
    points = [
        {
            "t": (c["cause"].get("occurred_at") or c["recorded_at"]).timestamp() * 1000,
            "score": c["score"],
            "grade": c["grade"],
            "cause": _cause(c),
        }
        for c in changes
    ]
    first, last = events[0].timestamp, max(ev.timestamp for ev in events)
    return render(
        request,
        "lead.html",
        session,
        lead=record,
        changes=list(reversed(changes)),
        trail=list(reversed(trail)),
        chart={"points": points},
        slider={"from": first.isoformat(), "to": last.isoformat(), "lead": name},
    )


def _cause(change: dict[str, Any]) -> str:
    cause = change["cause"]
    if cause["kind"] != "lead_event":
        return f"{cause['kind']} ({cause['event_id']})"
    what = cause["activity"] or cause["type"] or "event"
    n = len(change["events"])
    return what if n <= 1 else f"{what} (+{n - 1} more events)"


@signed_in(AT)
async def lead_as_of_json(request: Request, q: Query, session: Session) -> Response:
    name = lead_id(request)
    at = q[AT]
    if name is None or at is None:
        raise ApiError(404, "lead not found")
    return JSON(await lead_as_of(res_of(request), session.org_id, name, at))


def day_cohort(since: date | None, until: date | None) -> Cohort | None:
    """Leads created from the start of ``since`` to the end of ``until`` (UTC days, both
    included); 422 when ``until`` is before ``since``."""
    if since is None and until is None:
        return None
    if since is not None and until is not None and until < since:
        raise InvalidParametersError(
            [{"parameter": "until", "in": "query", "message": "must not be before from"}]
        )
    start = datetime.combine(since, clock(), UTC) if since else EARLIEST
    end = datetime.combine(until, clock(), UTC) + timedelta(days=1) if until else LATEST
    return Cohort(start, end)


@signed_in(SINCE_DAY, UNTIL_DAY)
async def analytics(request: Request, q: Query, session: Session) -> Response:
    res, org = res_of(request), session.org_id
    since = q[SINCE_DAY].isoformat() if q[SINCE_DAY] else ""
    until = q[UNTIL_DAY].isoformat() if q[UNTIL_DAY] else ""
    try:
        c = day_cohort(q[SINCE_DAY], q[UNTIL_DAY])
    except InvalidParametersError:
        # A person typed it: say so on the form, keep what they typed, show no figures.
        return render(
            request,
            "analytics.html",
            session,
            status_code=422,
            error="“Created until” must not be before “Created from”.",
            distribution={"leads": 0, "buckets": [], "grades": []},
            funnel=[],
            by_source=[],
            since=since,
            until=until,
            today=datetime.now(UTC).date().isoformat(),
        )
    distribution, funnel, by_source = await asyncio.gather(
        res.analytics(("distribution", org, 10, c), lambda a: a.score_distribution(org, 10, c)),
        res.analytics(("funnel", org, c), lambda a: a.funnel(org, c)),
        res.analytics(("by_source", org, c), lambda a: a.conversion_by_source(org, c)),
    )
    return render(
        request,
        "analytics.html",
        session,
        distribution=distribution,
        funnel=funnel,
        by_source=by_source,
        since=since,
        until=until,
        today=datetime.now(UTC).date().isoformat(),
    )


async def _visible_models(res: Resources, org: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    metas = await asyncio.to_thread(list_models, Path(res.settings.model_dir))
    registry = {r["version"]: r for r in await assignments(res.pool)}
    out = []
    for meta in metas:
        version = str(meta["version"])
        reg = registry.get(version, {})
        scope = str(reg.get("scope") or scope_of(meta))
        if scope not in (GLOBAL, org):  # another org's model is not this org's to see
            continue
        out.append(
            {
                "version": version,
                "scope": scope,
                "status": reg.get("status", "unregistered"),
                "meta": meta,
                "metrics": meta.get("metrics") or {},
            }
        )
    return out, registry


@signed_in(PROMOTED)
async def models(request: Request, q: Query, session: Session) -> Response:
    res, org = res_of(request), session.org_id
    visible, _ = await _visible_models(res, org)
    reports: dict[str, Any] = {}
    for m in visible:
        if m["status"] not in ("active", "shadow"):
            continue
        try:
            reports[m["version"]] = await drift_report(res.pool, m["meta"], org, 24 * 7)
        except NoReferenceError:
            reports[m["version"]] = None
    shadows = {
        m["version"]: await data.shadow_agreement(res.pool, org, m["version"])
        for m in visible
        if m["status"] == "shadow"
    }
    charts = {
        m["version"]: {
            "psi": [
                {"feature": f["feature"], "psi": f["psi"]}
                for f in (reports.get(m["version"]) or {}).get("features", [])
                if f["psi"] is not None
            ],
            "calibration": m["metrics"].get("calibration", []),
        }
        for m in visible
    }
    return render(
        request,
        "models.html",
        session,
        models=visible,
        reports=reports,
        shadows=shadows,
        charts=charts,
        promotable={m["version"] for m in visible if _promotable(session, m)},
        notice=q[PROMOTED],
    )


def _promotable(session: Session, model: dict[str, Any]) -> bool:
    # An org's admin changes only the org's own models: the global model scores every
    # tenant, which is the operator's call (`leadscore models promote`).
    return session.admin and model["scope"] == session.org_id and model["status"] != "active"


async def _signed_post(request: Request) -> tuple[Session, dict[str, str]] | Response:
    """A console POST's session and form, or the 403 when it has no session or CSRF token."""
    session = await session_of(request)
    fields = await form(request)
    if session is None:
        return _forbidden(request, "sign in to the console first")
    if not csrf_ok(session, fields.get("csrf")):
        return _forbidden(request, "missing or wrong CSRF token")
    return session, fields


async def promote(request: Request) -> Response:
    checked = await _signed_post(request)
    if isinstance(checked, Response):
        return checked
    session, fields = checked
    if not session.admin:
        return _forbidden(request, "only an admin key may promote models")
    if fields.get("confirm") != "yes":
        return JSON(
            {"error": "bad_request", "message": "confirm the promotion", "details": []},
            status_code=400,
        )
    res = res_of(request)
    version = str(request.path_params["version"])
    visible, _ = await _visible_models(res, session.org_id)
    model = next((m for m in visible if m["version"] == version), None)
    if model is None or not _promotable(session, model):
        return _forbidden(request, f"model {version!r} is not this org's to promote")

    def change() -> str:
        # The registry's one write path, as the tables' owner: the API's own role reads.
        return ModelRegistry(res.settings.pg_dsn, Path(res.settings.model_dir)).promote(version)

    try:
        await asyncio.to_thread(change)
    except ModelRegistryError as exc:
        return JSON({"error": "conflict", "message": str(exc), "details": []}, status_code=409)
    log.info(
        "audit: model promoted from the console",
        audit=True,
        key_id=session.key_id,
        org_id=session.org_id,
        version=version,
    )
    return RedirectResponse(f"/console/models?promoted={version}", status_code=303)


async def retry(request: Request) -> Response:
    """A dead webhook delivery of the session's org back to pending."""
    checked = await _signed_post(request)
    if isinstance(checked, Response):
        return checked
    session, fields = checked
    res = res_of(request)
    raw = str(request.path_params["id"])
    delivery = int(raw) if raw.isdigit() and len(raw) < 18 else 0
    owned = delivery and await res.pool.fetchval(
        "SELECT 1 FROM webhook_deliveries WHERE id = $1 AND org_id = $2", delivery, session.org_id
    )
    if not owned:
        raise ApiError(404, "no such delivery in your organization")

    def change() -> None:
        # The deliveries' one write path, as the tables' owner: the API's own role reads.
        with psycopg.connect(res.settings.pg_dsn, autocommit=True) as conn:
            webhooks.retry_delivery(conn, delivery)

    try:
        await asyncio.to_thread(change)
    except webhooks.WebhookError as exc:
        return JSON({"error": "conflict", "message": str(exc), "details": []}, status_code=409)
    log.info("audit: webhook delivery retried", audit=True, key_id=session.key_id, id=delivery)
    return RedirectResponse("/console/operations", status_code=303)


@signed_in(DL_DAYS)
async def operations(request: Request, q: Query, session: Session) -> Response:
    res, org = res_of(request), session.org_id
    days = int(q[DL_DAYS] or "7")
    now = datetime.now(UTC)
    lag, deliveries, letters = await asyncio.gather(
        data.projection_lag(res.pool),
        data.deliveries(res.pool, org),
        dead_letter_log.counts(
            res.pool, org, now - timedelta(days=days), now, "hour" if days == 1 else "day"
        ),
    )
    embedded = await res.projection.status() if res.projection is not None else None
    return render(
        request,
        "operations.html",
        session,
        lag=lag,
        embedded=embedded,
        deliveries=deliveries,
        letters=letters,
        letters_chart={
            "bucket": letters["bucket"],
            "total": letters["total"],
            "reasons": letters["reasons"],
            "items": [r | {"at": r["at"].isoformat()} for r in letters["items"]],
        },
        dl_days=days,
    )


def routes() -> list[BaseRoute]:
    """Everything under /console: pages, sign-in, static files (no route of the API)."""
    return [Route("/console", index, methods=["GET"], include_in_schema=False), _mount()]


def _mount() -> Mount:
    return Mount(
        "/console",
        name="console",
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/sign-in", signin_form, methods=["GET"]),
            Route("/sign-in", signin, methods=["POST"]),
            Route("/sign-out", signout, methods=["POST"]),
            Route("/leaderboard", leaderboard, methods=["GET"]),
            Route("/leads/{id}", lead_page, methods=["GET"]),
            Route("/leads/{id}/as-of", lead_as_of_json, methods=["GET"]),
            Route("/analytics", analytics, methods=["GET"]),
            Route("/models", models, methods=["GET"]),
            Route("/models/{version}/promote", promote, methods=["POST"]),
            Route("/operations", operations, methods=["GET"]),
            Route("/webhooks/deliveries/{id}/retry", retry, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ],
    )
