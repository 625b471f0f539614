"""A second workload world: an education company's CRM, not the demo's B2B funnel.

Conversion depends on the org's own fields (occupation, specialization, lead origin,
do-not-email) and on time spent on the site; the B2B profile fields (title, industry,
country, source, employees) are present but are pure noise. Each lead converts at a
hazard that falls with its age and rises with its cumulative seconds on site, so times
to conversion run from hours to months; a competing hazard disqualifies some; the rest
are open at ``end``, censored at ages from zero to ``days``.

``leaky=True`` adds one LeadUpdated a few hours after creation whose ``tags`` attribute
reveals the eventual outcome (as CRM exports fill such columns in after the fact): the
leakage guard's test case. Every other event is the same as without it.

Pure: no I/O, no clock. The same arguments always yield the same events.
"""

from __future__ import annotations

import bisect
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from domain.events import ActivityKind, EventType, LeadEvent

DEFAULT_END = datetime(2026, 11, 30, tzinfo=UTC)
LEAK_ATTRIBUTE = "tags"
LEAK_VALUE = "Will revert after reading the email"
_NAMESPACE = uuid.UUID("0c6f5a53-4d1e-4d5e-9a57-2f1f0b0f7c11")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000

# (value, share of leads, log-hazard effect). "" = the export leaves the field blank.
OCCUPATIONS = (
    ("unemployed", 0.55, 0.0),
    ("working professional", 0.08, 2.2),
    ("student", 0.03, -1.0),
    ("businessman", 0.01, 0.8),
    ("housewife", 0.01, 1.8),
    ("other", 0.02, 0.2),
    ("", 0.30, -1.4),
)
SPECIALIZATIONS = (
    ("select", 0.21, -0.7),
    ("", 0.15, -0.7),
    ("finance management", 0.11, 0.3),
    ("human resource management", 0.09, 0.3),
    ("marketing management", 0.09, 0.35),
    ("operations management", 0.06, 0.2),
    ("business administration", 0.05, 0.1),
    ("it projects management", 0.04, 0.1),
    ("supply chain management", 0.04, 0.15),
    ("banking, investment and insurance", 0.04, 0.4),
    ("travel and tourism", 0.03, -0.2),
    ("media and advertising", 0.03, 0.0),
    ("healthcare management", 0.03, 0.45),
    ("e-business", 0.03, -0.1),
)
LEAD_ORIGINS = (
    ("landing page submission", 0.53, 0.0),
    ("api", 0.39, -0.3),
    ("lead add form", 0.07, 1.8),
    ("lead import", 0.01, -1.2),
)
DO_NOT_EMAIL = (("no", 0.92, 0.0), ("yes", 0.08, -1.1))
CITIES = ("mumbai", "thane & outskirts", "other metro cities", "other cities", "tier ii cities")
CAMPAIGNS = ("spring-intake", "alumni-referral", "webinar-series", "scholarship-2026")
OTHER_TAGS = (
    "Ringing",
    "Interested in other courses",
    "Already a student",
    "Closed by Horizzon",
    "switched off",
    "Busy",
)
# B2B noise: drawn independently of everything that drives conversion.
_TITLES = ("Manager", "Engineer", "Analyst", "Director", "Teacher", "Consultant", "Founder")
_INDUSTRIES = ("education", "software", "retail", "healthcare", "finance", "manufacturing")
_COUNTRIES = ("IN", "US", "GB", "AE", "SG", "CA")
_SOURCES = ("google", "direct_traffic", "olark_chat", "organic", "referral", "reference")
_FIRST = ("Asha", "Ravi", "Meera", "Arjun", "Kiran", "Neha", "Vikram", "Pooja", "Sanjay", "Leela")
_LAST = ("Rao", "Shah", "Iyer", "Patel", "Das", "Nair", "Gupta", "Menon", "Singh", "Kulkarni")

TRUTH_NAMES = (
    "occupation",
    "specialization",
    "lead_origin",
    "do_not_email",
    "visits",
    "seconds_on_site",
)
TRUTH_CATEGORICAL = ("occupation", "specialization", "lead_origin", "do_not_email")

# Hazards per day: exp(linear predictor) / (1 + age / tau); the falling baseline gives
# times to an outcome from hours to months. Intercepts set the rates (about 30%
# converted, 10% disqualified at the default size).
_CONVERT_INTERCEPT = -4.0
_CONVERT_TAU_DAYS = 2.0
_SECONDS_EFFECT = 0.6  # per log1p(minutes on site so far)
_DISQUALIFY_INTERCEPT = -5.6
_DISQUALIFY_TAU_DAYS = 20.0


@dataclass(frozen=True)
class _Trace:
    """What ``truth`` needs of one lead: attribute changes and cumulative visits."""

    attribute_at: list[int]  # ms, ascending
    attribute_sets: list[dict[str, str]]
    visit_at: list[int]  # ms, ascending
    seconds_cum: list[float]


@dataclass(frozen=True)
class CustomWorld:
    org_id: str
    events: list[LeadEvent]
    start: datetime
    end: datetime
    truth_names: tuple[str, ...]
    truth_categorical: tuple[str, ...]
    _traces: dict[str, _Trace] = field(repr=False, compare=False)

    def truth(self, lead_id: str, at: datetime) -> dict[str, float | str]:
        """The lead's ground-truth drivers as of ``at``: attributes set by then (""
        when unset), visits and seconds on site from page views at or before ``at``."""
        trace = self._traces[lead_id]
        at_ms = _ms(at)
        values: dict[str, float | str] = dict.fromkeys(self.truth_categorical, "")
        for t, attrs in zip(trace.attribute_at, trace.attribute_sets, strict=True):
            if t > at_ms:
                break
            values.update((k, v) for k, v in attrs.items() if k in values)
        n = bisect.bisect_right(trace.visit_at, at_ms)
        values["visits"] = float(n)
        values["seconds_on_site"] = trace.seconds_cum[n - 1] if n else 0.0
        return values


def custom_world(
    *,
    org_id: str = "org-custom",
    leads: int = 4000,
    seed: int = 7,
    leaky: bool = False,
    days: int = 360,
    end: datetime | None = None,
) -> CustomWorld:
    """Generate the world; see the module docstring.

    Leads are created uniformly over the ``days`` before ``end`` (default DEFAULT_END,
    fixed so runs repeat); an ``end`` later than now + 1 day makes events the engine
    refuses. ``truth_names`` are the drivers of conversion, ``tags`` (leaky) is not one.
    """
    end_ms = _ms(end or DEFAULT_END)
    start_ms = end_ms - days * _DAY_MS
    rng = np.random.default_rng(seed)
    leak_rng = np.random.default_rng([seed, 1])  # its own stream: leaky changes nothing else
    created = np.sort(rng.integers(start_ms, end_ms, size=leads))
    occupation = _pick(rng, OCCUPATIONS, leads)
    specialization = _pick(rng, SPECIALIZATIONS, leads)
    origin = _pick(rng, LEAD_ORIGINS, leads)
    dne = _pick(rng, DO_NOT_EMAIL, leads)
    interest = rng.normal(size=leads)
    effect = (
        _effects(OCCUPATIONS, occupation)
        + _effects(SPECIALIZATIONS, specialization)
        + _effects(LEAD_ORIGINS, origin)
        + _effects(DO_NOT_EMAIL, dne)
    )
    events: list[LeadEvent] = []
    traces: dict[str, _Trace] = {}
    for i in range(leads):
        lead_id = f"lead-{i:06d}"
        lead = _Lead(org_id, lead_id, int(created[i]), end_ms, rng)
        attrs = {
            "occupation": OCCUPATIONS[occupation[i]][0],
            "specialization": SPECIALIZATIONS[specialization[i]][0],
            "lead_origin": LEAD_ORIGINS[origin[i]][0],
            "do_not_email": DO_NOT_EMAIL[dne[i]][0],
            "city": CITIES[int(rng.integers(len(CITIES)))],
        }
        attrs = {k: v for k, v in attrs.items() if v}  # blank in the export: not sent
        trace = lead.generate(attrs, float(interest[i]), float(effect[i]))
        if leaky:
            lead.leak(leak_rng)
        events += lead.events
        traces[lead_id] = trace
    events.sort(key=lambda ev: ev.occurred_at)
    last = events[-1].occurred_at if events else _dt(end_ms)
    return CustomWorld(
        org_id=org_id,
        events=events,
        start=_dt(start_ms),
        end=max(last, _dt(end_ms)),
        truth_names=TRUTH_NAMES,
        truth_categorical=TRUTH_CATEGORICAL,
        _traces=traces,
    )


class _Lead:
    """One lead's events: created, a later update, visits, e-mails, then its outcome."""

    def __init__(self, org_id: str, lead_id: str, created: int, end: int, rng: np.random.Generator):
        self.org_id, self.lead_id = org_id, lead_id
        self.created, self.end, self.rng = created, end, rng
        self.events: list[LeadEvent] = []
        self.outcome_at: int | None = None
        self.converted = False

    def _event(self, role: str, event_type: EventType, at: int, **kw: object) -> None:
        name = f"{self.org_id}/{self.lead_id}/{role}"
        self.events.append(
            LeadEvent(
                event_id=str(uuid.uuid5(_NAMESPACE, name)),
                event_type=event_type,
                org_id=self.org_id,
                lead_id=self.lead_id,
                occurred_at=_dt(at),
                **kw,  # type: ignore[arg-type]
            )
        )

    def generate(self, attrs: dict[str, str], interest: float, effect: float) -> _Trace:
        r = self.rng
        first, last = _FIRST[int(r.integers(len(_FIRST)))], _LAST[int(r.integers(len(_LAST)))]
        profile: dict[str, str | int] = {
            "email": f"{first.lower()}.{last.lower()}.{self.lead_id}@example.org",
            "first_name": first,
            "last_name": last,
            "company": f"Company {int(r.integers(1, 900))}",
            "title": _TITLES[int(r.integers(len(_TITLES)))],
            "industry": _INDUSTRIES[int(r.integers(len(_INDUSTRIES)))],
            "country": _COUNTRIES[int(r.integers(len(_COUNTRIES)))],
            "source": _SOURCES[int(r.integers(len(_SOURCES)))],
            "employees": int(np.exp(r.uniform(1, 9))),
        }
        # Specialization and city often come from a later form step: a LeadUpdated.
        late_keys = [k for k in ("specialization", "city") if k in attrs and r.random() < 0.4]
        early = {k: v for k, v in attrs.items() if k not in late_keys}
        late = {k: attrs[k] for k in late_keys}
        update_at = self.created + int(r.exponential(2 * _DAY_MS)) + 60_000

        visit_at, seconds, pages = self._visits(interest)
        conv = self._first_hazard_time(visit_at, seconds, effect, convert=True)
        disq = self._first_hazard_time(visit_at, seconds, -0.4 * effect, convert=False)
        outcome = min(conv, disq)
        if outcome < self.end:
            self.outcome_at, self.converted = outcome, conv <= disq
        stop = self.outcome_at if self.outcome_at is not None else self.end

        self._event(
            "created", EventType.LEAD_CREATED, self.created, profile=profile, attributes=early
        )
        attribute_at, attribute_sets = [self.created], [early]
        if late and update_at < stop:
            self._event("update", EventType.LEAD_UPDATED, update_at, attributes=late)
            attribute_at.append(update_at)
            attribute_sets.append(late)
        kept = [k for k, t in enumerate(visit_at) if t < stop]
        for k in kept:
            props = {"seconds_on_site": str(seconds[k]), "pages": str(pages[k])}
            if r.random() < 0.3:
                props["campaign"] = CAMPAIGNS[int(r.integers(len(CAMPAIGNS)))]
            self._event(
                f"visit-{k}",
                EventType.ACTIVITY_RECORDED,
                visit_at[k],
                activity_kind=ActivityKind.PAGE_VIEW,
                activity_properties=props,
            )
        if attrs.get("do_not_email") != "yes":
            self._emails(interest, stop)
        if self.outcome_at is not None:
            kind = EventType.LEAD_CONVERTED if self.converted else EventType.LEAD_DISQUALIFIED
            reason = "enrolled" if self.converted else "not eligible"
            self._event("outcome", kind, self.outcome_at, reason=reason)
        self.events.sort(key=lambda ev: ev.occurred_at)
        cum = np.cumsum([float(seconds[k]) for k in kept]).tolist()
        return _Trace(attribute_at, attribute_sets, [visit_at[k] for k in kept], cum)

    def _visits(self, interest: float) -> tuple[list[int], list[int], list[int]]:
        r = self.rng
        n = int(r.poisson(3.0 * math.exp(0.6 * interest)))
        if n == 0:
            return [], [], []
        # The first visit is the sign-up session; later ones spread over weeks.
        gaps = np.concatenate(([r.exponential(0.5 * _HOUR_MS)], r.exponential(6 * _DAY_MS, n - 1)))
        at = (self.created + 60_000 + np.cumsum(gaps)).astype(np.int64).tolist()
        seconds = np.minimum(r.lognormal(math.log(150) + 0.8 * interest, 0.6, n), 3_600)
        pages = 1 + r.poisson(1.5 * math.exp(0.3 * interest), n)
        return at, [int(s) for s in seconds], [int(p) for p in pages]

    def _first_hazard_time(
        self, visit_at: list[int], seconds: list[int], effect: float, *, convert: bool
    ) -> int:
        """When the hazard first fires (ms), or past ``end``. The multiplier is constant
        between visits, the baseline 1 / (1 + age / tau): invert the cumulative hazard
        segment by segment."""
        tau = _CONVERT_TAU_DAYS if convert else _DISQUALIFY_TAU_DAYS
        intercept = _CONVERT_INTERCEPT if convert else _DISQUALIFY_INTERCEPT
        target = float(self.rng.exponential())
        bounds = [*visit_at, self.end]
        age0, minutes = 0.0, 0.0
        for k, bound in enumerate(bounds):
            age1 = (bound - self.created) / _DAY_MS
            if age1 > age0:
                rate = math.exp(intercept + effect + _SECONDS_EFFECT * math.log1p(minutes))
                mass = rate * tau * (math.log1p(age1 / tau) - math.log1p(age0 / tau))
                if mass >= target:
                    age = tau * (math.exp(target / (rate * tau) + math.log1p(age0 / tau)) - 1)
                    return self.created + max(int(age * _DAY_MS), 60_000) + 1
                target -= mass
                age0 = age1
            if k < len(seconds) and convert:
                minutes += seconds[k] / 60
        return self.end + 1

    def _emails(self, interest: float, stop: int) -> None:
        r = self.rng
        for k in range(int(r.poisson(2.0))):
            at = self.created + int(r.exponential(8 * _DAY_MS)) + 120_000
            if at >= stop or r.random() > 1 / (1 + math.exp(-interest)):
                continue
            props = {"campaign": CAMPAIGNS[int(r.integers(len(CAMPAIGNS)))]}
            self._event(
                f"email-open-{k}",
                EventType.ACTIVITY_RECORDED,
                at,
                activity_kind=ActivityKind.EMAIL_OPEN,
                activity_properties=props,
            )
            if r.random() < 0.3 and at + 30_000 < stop:
                self._event(
                    f"email-click-{k}",
                    EventType.ACTIVITY_RECORDED,
                    at + 30_000,
                    activity_kind=ActivityKind.EMAIL_CLICK,
                    activity_properties=props,
                )

    def leak(self, rng: np.random.Generator) -> None:
        """A ``tags`` update within hours of creation that encodes the final outcome."""
        revert = rng.random() < (0.98 if self.converted else 0.005)
        tag = LEAK_VALUE if revert else OTHER_TAGS[int(rng.integers(len(OTHER_TAGS)))]
        at = self.created + int(rng.uniform(0.5, 6) * _HOUR_MS)
        if self.outcome_at is not None:
            at = min(at, self.created + (self.outcome_at - self.created) // 2)
        if at >= self.end:
            return
        self._event("tags", EventType.LEAD_UPDATED, at, attributes={LEAK_ATTRIBUTE: tag})
        self.events.sort(key=lambda ev: ev.occurred_at)


def _pick(
    rng: np.random.Generator, table: tuple[tuple[str, float, float], ...], n: int
) -> np.ndarray:
    p = np.array([share for _, share, _ in table])
    return rng.choice(len(table), size=n, p=p / p.sum())


def _effects(table: tuple[tuple[str, float, float], ...], index: np.ndarray) -> np.ndarray:
    return np.array([effect for _, _, effect in table])[index]


def _ms(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(milliseconds=1)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
