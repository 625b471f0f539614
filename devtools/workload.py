"""A realistic, seeded lead-event workload: for tests, benchmarks, demos and training.

Each org has an ideal customer profile (ICP). Every lead gets a hidden conversion
propensity from its fit to its org's ICP, its seniority, its e-mail and its source;
that propensity drives how much the lead does, how much of it is intent (demo
requests, pricing pages) and, finally, whether it converts. A model can therefore
learn it from the events, but not perfectly: the propensity carries noise the
events never reveal.

Pure: no I/O, no clock. The same arguments always yield the same events.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate

import numpy as np

from devtools.workload_vocabulary import (
    BASE_MIX,
    C_LEVEL,
    COMPANY_A,
    COMPANY_B,
    COMPANY_SUFFIX,
    CONVERT_REASONS,
    COUNTRY_WEIGHTS,
    DEPT_WEIGHTS,
    DISQUALIFY_REASONS,
    FIRST_NAMES,
    FREE_MAIL,
    FUNCTIONS,
    INDIVIDUAL,
    INDUSTRY_SYNONYMS,
    JUNIOR,
    KINDS,
    LAST_NAMES,
    LEVEL_EFFECT,
    LEVEL_TEMPLATES,
    LEVEL_WEIGHTS,
    ODD_TITLES,
    PROPERTIES,
    SIZE_BANDS,
    SOURCE_EFFECT,
    SOURCE_WEIGHTS,
    STUDENT,
    STUDENT_BY_DEPT,
    TLDS,
)
from domain.events import ActivityKind, EventType, LeadEvent
from domain.firmographics import COUNTRIES, INDUSTRIES

# A fixed default start (a Monday) keeps runs reproducible; pass ``start`` for "now".
DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)
DAY_MS = 86_400_000
# The hidden propensity's log-odds: _BASE + _SPREAD * fit + noise(_NOISE). Tuned so a
# small LightGBM reaches a holdout AUC of ~0.85: learnable, not trivially perfect.
_BASE, _SPREAD, _NOISE = -3.4, 1.6, 0.7

# ---------------------------------------------------------------------------
# Vocabularies: what people actually type into forms.
# ---------------------------------------------------------------------------


def org_ids(orgs: int) -> list[str]:
    """The org ids a workload of ``orgs`` orgs uses: org-001, org-002, ..."""
    return [f"org-{i:03d}" for i in range(1, orgs + 1)]


@dataclass(frozen=True, slots=True)
class _Company:
    name: str
    domain: str


def _companies(r: random.Random, n: int) -> list[_Company]:
    out = []
    for _ in range(n):
        name = r.choice(COMPANY_A) + r.choice(COMPANY_B)
        if r.random() < 0.3:
            name = f"{r.choice(COMPANY_A)} {r.choice(COMPANY_B)}"
        full = name + r.choice(COMPANY_SUFFIX)
        slug = "".join(ch for ch in name.lower() if ch.isalnum())
        out.append(_Company(full, slug + r.choice(TLDS)))
    return out


def _industry_label(r: random.Random, code: int) -> str:
    word = INDUSTRIES[code]
    x = r.random()
    if x < 0.08 and word in INDUSTRY_SYNONYMS:
        return r.choice(INDUSTRY_SYNONYMS[word])
    if x < 0.55:
        return word.capitalize()
    return word


def _title(r: random.Random, level: int, dept: int) -> str:
    if level == 6:
        title = r.choice(C_LEVEL[dept])
    elif level in LEVEL_TEMPLATES:
        title = r.choice(LEVEL_TEMPLATES[level]).format(f=r.choice(FUNCTIONS[dept]))
    elif level == 2:
        title = r.choice(INDIVIDUAL[dept])
    elif level == 1:
        title = r.choice(JUNIOR[dept]) if r.random() < 0.92 else r.choice(ODD_TITLES)
    else:
        title = r.choice(STUDENT_BY_DEPT.get(dept, STUDENT) + STUDENT)
    x = r.random()
    if x < 0.04:
        return title.lower()
    if x < 0.06:
        return title.upper()
    return title


def _email(r: random.Random, first: str, last: str, domain: str | None) -> str:
    f = first.lower()
    la = "".join(ch for ch in last.lower() if ch.isalpha())
    if domain is None:
        user = r.choice(
            (
                f"{f}.{la}",
                f"{f}{la}{r.randint(1, 99)}",
                f"{f[0]}{la}",
                f"{f}_{la}{r.randint(70, 99)}",
            )
        )
        return f"{user}@{r.choice(FREE_MAIL)}"
    user = r.choice((f"{f}.{la}", f"{f[0]}{la}", f, f"{f}_{la}", f"{f}.{la[0]}"))
    return f"{user}@{domain}"


# Version-4 UUID bits, as uuid.UUID(int=..., version=4) sets them.
_UUID_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID_SET = (0x8000 << 48) | (0x4000 << 64)


def _uuid4_str(bits: int) -> str:
    """str(uuid.UUID(int=bits, version=4)), without building the object (hot path)."""
    h = "%032x" % ((bits & _UUID_CLEAR) | _UUID_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _ms_aligned(start: datetime | None) -> datetime:
    if start is None:
        return DEFAULT_START
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    # Avro carries milliseconds: align so events survive an encode/decode round trip.
    return start.replace(microsecond=start.microsecond // 1000 * 1000)


def generate(
    orgs: int,
    leads: int,
    events: int,
    *,
    seed: int = 7,
    start: datetime | None = None,
    span_days: int = 60,
) -> Iterator[LeadEvent]:
    """Yield exactly ``events`` lead-events for up to ``leads`` leads over ``orgs`` orgs.

    Events come in ``occurred_at`` order (ties in a fixed order), all within
    ``[start, start + span_days)``; ``start`` defaults to a fixed date so runs are
    reproducible. Every lead starts with a LeadCreated, so when ``events < leads`` only
    the first ``events`` leads appear (each with only its LeadCreated). What a lead does
    after that comes from the budget left: outcomes first, then updates, then
    activities, shared out by each lead's intensity.
    """
    if orgs < 1:
        raise ValueError("orgs must be >= 1")
    if leads < 0 or events < 0 or span_days < 1:
        raise ValueError("leads and events must be >= 0, span_days >= 1")
    n = min(leads, events)
    if n == 0:
        return
    begin = _ms_aligned(start)
    span_ms = span_days * DAY_MS
    r = random.Random(seed)
    g = np.random.default_rng(seed)

    # -- orgs and their ideal customer profiles ---------------------------
    org_names = org_ids(orgs)
    n_ind, n_cty = len(INDUSTRIES), len(COUNTRIES)
    icp_industry = np.zeros((orgs, n_ind), dtype=bool)
    icp_country = np.zeros((orgs, n_cty), dtype=bool)
    icp_dept = np.zeros((orgs, 9), dtype=bool)
    band = np.zeros((orgs, 2))
    for o in range(orgs):
        icp_industry[o, g.choice(np.arange(1, n_ind), size=g.integers(2, 4), replace=False)] = True
        icp_country[o, g.choice(np.arange(1, n_cty), size=g.integers(2, 5), replace=False)] = True
        icp_dept[o, g.choice(np.arange(1, 8), size=g.integers(1, 3), replace=False)] = True
        band[o] = SIZE_BANDS[g.integers(len(SIZE_BANDS))]
    # Orgs differ in size: a few big tenants, a long tail.
    org_w = 1.0 / np.arange(1, orgs + 1) ** 0.7
    g.shuffle(org_w)

    # -- the market: companies shared by all orgs ---------------------------
    n_comp = max(50, min(n // 3, 30_000))
    companies = _companies(r, n_comp)
    comp_industry = g.integers(1, n_ind, size=n_comp)
    comp_employees = np.maximum(1, np.round(g.lognormal(math.log(150), 1.7, size=n_comp)))
    comp_employees = np.minimum(comp_employees, 400_000).astype(np.int64)
    cty_names = list(COUNTRY_WEIGHTS)
    cty_p = np.array(list(COUNTRY_WEIGHTS.values()), dtype=float)
    comp_country = g.choice(len(cty_names), size=n_comp, p=cty_p / cty_p.sum())
    cty_code = np.array([COUNTRIES.index(c) if c in COUNTRIES else 0 for c in cty_names])

    # -- leads: who they are -----------------------------------------------
    lead_org = g.choice(orgs, size=n, p=org_w / org_w.sum())
    # Marketing aims at the ICP, so about half the leads come from ICP industries.
    company = g.integers(0, n_comp, size=n)
    aim = g.random(n) < 0.45
    for o in range(orgs):
        pool = np.flatnonzero(icp_industry[o, comp_industry])
        rows = np.flatnonzero(aim & (lead_org == o))
        if len(pool) and len(rows):
            company[rows] = pool[g.integers(0, len(pool), size=len(rows))]
    dept = g.choice(9, size=n, p=np.array(DEPT_WEIGHTS) / sum(DEPT_WEIGHTS))
    level = g.choice(7, size=n, p=np.array(LEVEL_WEIGHTS) / sum(LEVEL_WEIGHTS))
    level[dept == 8] = np.where(g.random(int((dept == 8).sum())) < 0.8, 6, 0)
    free_mail = g.random(n) < np.where(level == 0, 0.6, 0.14)
    src_names = list(SOURCE_WEIGHTS)
    src_p = np.array(list(SOURCE_WEIGHTS.values()), dtype=float)
    source = g.choice(len(src_names), size=n, p=src_p / src_p.sum())
    industry = comp_industry[company]
    employees = comp_employees[company]
    country = cty_code[comp_country[company]]

    # -- the hidden propensity (log-odds) ----------------------------------
    log_emp = np.log10(employees)
    in_band = (log_emp >= band[lead_org, 0]) & (log_emp <= band[lead_org, 1])
    fit = (
        1.1 * icp_industry[lead_org, industry]
        + 0.9 * in_band
        + 0.5 * icp_country[lead_org, country]
        + 0.7 * icp_dept[lead_org, dept]
        + np.array(LEVEL_EFFECT)[level]
        - 0.9 * free_mail
        + np.array([SOURCE_EFFECT[s] for s in src_names])[source]
    )
    # What no event reveals (budget, timing, luck) keeps the outcome uncertain.
    logit = _BASE + _SPREAD * fit + g.normal(0.0, _NOISE, size=n)
    q = _sigmoid(logit)

    # -- when: creation time, outcome and its delay --------------------------
    day = g.integers(0, span_days, size=n)
    busy = g.random(n) < 0.75  # most form fills happen in (someone's) office hours
    tod = np.where(busy, g.normal(14.5, 3.0, size=n), g.uniform(0, 24, size=n))
    created = day * DAY_MS + (np.clip(tod, 0, 23.99) * 3_600_000).astype(np.int64)
    created = np.minimum(created, span_ms - 60_000)
    order = np.argsort(created, kind="stable")
    (
        created,
        lead_org,
        company,
        dept,
        level,
        free_mail,
        source,
        industry,
        employees,
        country,
        logit,
        q,
    ) = (
        a[order]
        for a in (
            created,
            lead_org,
            company,
            dept,
            level,
            free_mail,
            source,
            industry,
            employees,
            country,
            logit,
            q,
        )
    )

    u = g.random(n)
    converted = u < q
    disqualified = ~converted & (g.random(n) < 0.7)
    delay_days = np.where(
        converted,
        g.lognormal(math.log(11), 0.6, size=n),
        np.where(
            disqualified,
            g.lognormal(math.log(14), 0.7, size=n),
            g.lognormal(math.log(18), 0.6, size=n),
        ),
    )
    delay = (np.clip(delay_days, 0.3, 80.0) * DAY_MS).astype(np.int64)
    room = span_ms - 1 - created  # an outcome past the end of the span has not happened yet
    censored = delay > room
    has_outcome = (converted | disqualified) & ~censored
    horizon = np.maximum(np.minimum(delay, room), 2)

    # -- the budget: created > outcomes > updates > activities ---------------
    budget = events - n
    outcome_idx = np.flatnonzero(has_outcome)
    if len(outcome_idx) > budget:
        has_outcome[outcome_idx[budget:]] = False
    budget -= int(has_outcome.sum())
    wants_update = g.random(n) < 0.08
    upd_idx = np.flatnonzero(wants_update)
    if len(upd_idx) > budget:
        wants_update[upd_idx[budget:]] = False
    budget -= int(wants_update.sum())
    # Keen leads do more, over longer windows; the log-normal gives a realistic long tail.
    weight = np.exp(1.0 * logit + g.normal(0.0, 0.6, size=n)) * np.sqrt(horizon / DAY_MS + 0.3)
    n_act = g.multinomial(budget, weight / weight.sum()) if budget > 0 else np.zeros(n, int)
    # Intent share grows with propensity: demo requests and pricing visits are rare
    # from poor fits, common from good ones.
    demo_share = 0.004 + 0.05 * q
    pricing_share = 0.01 + 0.07 * q

    outcome_kind = np.where(converted, 1, 2) * has_outcome
    cols = (
        created.tolist(),
        lead_org.tolist(),
        company.tolist(),
        dept.tolist(),
        level.tolist(),
        free_mail.tolist(),
        source.tolist(),
        industry.tolist(),
        employees.tolist(),
        country.tolist(),
        horizon.tolist(),
        delay.tolist(),
        outcome_kind.tolist(),
        wants_update.tolist(),
        n_act.tolist(),
        demo_share.tolist(),
        pricing_share.tolist(),
    )
    del order, u, weight

    yield from _stream(
        r,
        begin,
        org_names,
        companies,
        src_names,
        n_comp,
        comp_industry.tolist(),
        cols,
    )


def _stream(
    r: random.Random,
    begin: datetime,
    org_names: list[str],
    companies: list[_Company],
    src_names: list[str],
    n_comp: int,
    comp_industry: list[int],
    cols: tuple[list, ...],
) -> Iterator[LeadEvent]:
    """Merge the leads' schedules into one time-ordered stream (a heap of cursors)."""
    (
        created,
        lead_org,
        company,
        dept,
        level,
        free_mail,
        source,
        industry,
        employees,
        country,
        horizon,
        delay,
        outcome_kind,
        wants_update,
        n_act,
        demo_share,
        pricing_share,
    ) = cols
    n = len(created)
    getbits = r.getrandbits
    ms = timedelta(milliseconds=1)
    activity = EventType.ACTIVITY_RECORDED
    heap: list[tuple[int, int, int, list[tuple[int, object, object]], str, str]] = []
    push, replace, pop = heapq.heappush, heapq.heapreplace, heapq.heappop
    nxt = 0
    while True:
        if nxt < n and (
            not heap
            or created[nxt] < heap[0][0]
            or (created[nxt] == heap[0][0] and nxt < heap[0][1])
        ):
            i = nxt
            nxt += 1
            org = org_names[lead_org[i]]
            lid = f"lead-{i + 1:06d}"
            profile = _profile(
                r,
                i,
                companies,
                src_names,
                industry,
                employees,
                country,
                company,
                dept,
                level,
                free_mail,
                source,
            )
            yield LeadEvent(
                event_id=_uuid4_str(getbits(128)),
                event_type=EventType.LEAD_CREATED,
                org_id=org,
                lead_id=lid,
                occurred_at=begin + created[i] * ms,
                profile=profile,
            )
            sched = _schedule(
                r,
                i,
                created,
                horizon,
                delay,
                outcome_kind,
                wants_update,
                n_act,
                demo_share,
                pricing_share,
                profile,
                companies,
                n_comp,
                comp_industry,
                level,
                dept,
            )
            if sched:
                push(heap, (sched[0][0], i, 0, sched, org, lid))
            continue
        if not heap:
            return
        t, i, k, sched, org, lid = heap[0]
        _, what, payload = sched[k]
        eid = _uuid4_str(getbits(128))
        if what is activity:
            kind, props = payload  # type: ignore[misc]
            yield LeadEvent(eid, activity, org, lid, begin + t * ms, {}, kind, dict(props))
        elif what is EventType.LEAD_UPDATED:
            yield LeadEvent(eid, what, org, lid, begin + t * ms, payload)  # type: ignore[arg-type]
        else:
            yield LeadEvent(eid, what, org, lid, begin + t * ms, reason=payload)  # type: ignore[arg-type]
        if k + 1 < len(sched):
            replace(heap, (sched[k + 1][0], i, k + 1, sched, org, lid))
        else:
            pop(heap)


def _profile(
    r: random.Random,
    i: int,
    companies: list[_Company],
    src_names: list[str],
    industry: list[int],
    employees: list[int],
    country: list[int],
    company: list[int],
    dept: list[int],
    level: list[int],
    free_mail: list[bool],
    source: list[int],
) -> dict[str, str | int]:
    first, last = r.choice(FIRST_NAMES), r.choice(LAST_NAMES)
    comp = companies[company[i]]
    p: dict[str, str | int] = {
        "email": _email(r, first, last, None if free_mail[i] else comp.domain),
        "first_name": first,
        "last_name": last,
    }
    # Forms are filled in partially: each optional field is sometimes missing.
    x = r.random
    if x() < 0.96:
        p["company"] = comp.name
    if x() < 0.95:
        p["title"] = _title(r, level[i], dept[i])
    if x() < 0.85:
        p["industry"] = _industry_label(r, industry[i])
    if x() < 0.88:
        p["employees"] = employees[i]
    if x() < 0.93:
        p["country"] = COUNTRIES[country[i]] if country[i] else r.choice(("SE", "MX", "SG", "PL"))
    if x() < 0.97:
        p["source"] = src_names[source[i]]
    return p


def _schedule(
    r: random.Random,
    i: int,
    created: list[int],
    horizon: list[int],
    delay: list[int],
    outcome_kind: list[int],
    wants_update: list[bool],
    n_act: list[int],
    demo_share: list[float],
    pricing_share: list[float],
    profile: dict[str, str | int],
    companies: list[_Company],
    n_comp: int,
    comp_industry: list[int],
    level: list[int],
    dept: list[int],
) -> list[tuple[int, object, object]]:
    """A lead's events after its creation, as (time ms, type, payload), in time order."""
    c0 = created[i]
    h = horizon[i]
    n = n_act[i]
    out: list[tuple[int, object, object]] = []
    if n:
        mix = list(BASE_MIX)
        mix[4], mix[5] = demo_share[i], pricing_share[i]
        kinds = r.choices(KINDS, cum_weights=list(accumulate(mix)), k=n)
        if outcome_kind[i] == 1 and r.random() < 0.35:
            # A conversion is often preceded by a demo or pricing visit shortly before.
            kinds[-1] = ActivityKind.DEMO_REQUEST if r.random() < 0.6 else ActivityKind.PRICING_PAGE
        times = _session_times(r, c0, h, n)
        act = EventType.ACTIVITY_RECORDED
        props = PROPERTIES
        rand = r.random
        # Kinds are placed in time order so the forced intent really comes last.
        out = [
            (t, act, (k, props[k][int(rand() * len(props[k]))]))
            for t, k in zip(times, kinds, strict=True)
        ]
    if wants_update[i]:
        t = c0 + 1 + int(r.random() * (h - 1))
        out.append(
            (
                t,
                EventType.LEAD_UPDATED,
                _update(r, profile, companies, n_comp, comp_industry, level[i], dept[i]),
            )
        )
        out.sort(key=_first)
    if outcome_kind[i]:
        t = c0 + max(delay[i], out[-1][0] - c0 if out else 1)
        if outcome_kind[i] == 1:
            out.append((t, EventType.LEAD_CONVERTED, r.choice(CONVERT_REASONS)))
        else:
            out.append((t, EventType.LEAD_DISQUALIFIED, r.choice(DISQUALIFY_REASONS)))
    return out


def _first(item: tuple[int, object, object]) -> int:
    return item[0]


def _session_times(r: random.Random, c0: int, h: int, n: int) -> list[int]:
    """``n`` activity times in ``(c0, c0 + h)``, in visits of a few clicks each."""
    times: list[int] = []
    lo, hi = c0 + 1, c0 + h - 1
    rand = r.random
    while len(times) < n:
        size = min(n - len(times), 1 + int(r.expovariate(0.6)))
        t = lo + int(rand() * (hi - lo))
        for _ in range(size):
            times.append(min(t, hi))
            t += 15_000 + int(rand() * 240_000)  # 15 s to ~4 min between clicks
    times.sort()
    return times


def _update(
    r: random.Random,
    profile: dict[str, str | int],
    companies: list[_Company],
    n_comp: int,
    comp_industry: list[int],
    level: int,
    dept: int,
) -> dict[str, str | int]:
    """A LeadUpdated's changes: enrichment, a promotion or a job change."""
    missing = [f for f in ("industry", "employees", "country", "title") if f not in profile]
    x = r.random()
    if missing and x < 0.5:
        f = r.choice(missing)
        # Enrichment fills a gap; the value is plausible, not necessarily the truth.
        if f == "industry":
            return {"industry": r.choice(INDUSTRIES[1:])}
        if f == "employees":
            return {"employees": int(10 ** r.uniform(0.7, 4.3))}
        if f == "country":
            return {"country": r.choice(COUNTRIES[1:])}
        return {"title": _title(r, level, dept)}
    if x < 0.8:
        return {"title": _title(r, min(6, level + 1), dept)}
    j = r.randrange(n_comp)
    comp = companies[j]
    first = str(profile.get("first_name", "alex"))
    last = str(profile.get("last_name", "doe"))
    return {
        "company": comp.name,
        "email": _email(r, first, last, comp.domain),
        "industry": _industry_label(r, comp_industry[j]),
        "title": _title(r, level, dept),
    }
