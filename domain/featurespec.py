"""Which of an org's own fields and activity properties become model features.

A feature spec (``config/features/<org>.yaml``, or ``default.yaml``; README "Training on
your own data") names the features a model of that org reads:

* ``builtin``: the engine's fixed features of B2B leads (domain/features.py) by name, or
  ``all`` of them. The default spec is exactly these, so models trained before specs
  existed keep their meaning.
* ``fields``: profile fields (``field: source``) and custom attributes
  (``attribute: occupation``) as ``categorical`` or ``numeric``.
* ``activities``: per activity kind (or ``any``): counts over all time and over recent
  windows, days since the last one; per activity property: ``sum``, ``mean``, ``max``,
  ``last`` over all time and sums over windows, or a categorical ``last`` value.

Categorical values are coded against a vocabulary learned from the org's own history at
training (``learn_vocabularies``): frequent values kept, ordered by their conversion rate
in the training rows; the rest, and values never seen in training, are "other". The spec
with its vocabularies is stored in each model version's metadata (``to_dict``), so a
worker scores every org with the spec of the model that scores it.

Pure: a Lead and a clock in, a row of floats out. Codes: 0 = missing, 1 = other, 2.. =
the vocabulary in order. A missing numeric is ``MISSING_NUMBER``, far below any value: a
tree splits it off like any other; NaN would not do, as LightGBM and its ONNX export
route NaN differently for a feature that had none in training (a parity failure of 0.03).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from domain import lead as L
from domain.events import PROFILE_FIELDS, ActivityKind
from domain.features import FEATURE_NAMES, NO_ACTIVITY_DAYS, features
from domain.lead import Lead

MISSING, OTHER = 0, 1
MISSING_NUMBER = -1e9
ANY = "any"
STATS = ("sum", "mean", "max", "last")
MAX_WINDOW = L.WINDOW_DAYS
_KINDS = frozenset(str(k) for k in ActivityKind)


class FeatureSpecError(ValueError):
    """A feature spec that cannot be used, with where and why."""


@dataclass(frozen=True, slots=True)
class Feature:
    """One column of the model's input.

    ``source``: builtin | field | attribute | count | days_since_last | stat | last_text.
    ``key``: the builtin's or field's name, or the activity kind (or ``any``).
    ``prop``: the activity property, for stat and last_text. ``stat``: sum/mean/max/last.
    ``window``: days, for windowed counts and sums (None = all time).
    """

    name: str
    source: str
    key: str
    categorical: bool = False
    prop: str | None = None
    stat: str | None = None
    window: int | None = None
    max_categories: int = 30
    min_count: int = 10


@dataclass(frozen=True)
class FeatureSpec:
    version: str
    features: tuple[Feature, ...]
    vocabularies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.categorical)

    @property
    def is_builtin_only(self) -> bool:
        return all(f.source == "builtin" for f in self.features)

    # -- rows ---------------------------------------------------------------------------

    def observe(self, lead: Lead, now: datetime) -> list[float | str | None]:
        """The raw values: numbers, or the text of a categorical (None when missing)."""
        legacy: list[float] | None = None
        out: list[float | str | None] = []
        for f in self.features:
            if f.source == "builtin":
                if legacy is None:
                    legacy = features(lead, now)
                out.append(legacy[_LEGACY_INDEX[f.key]])
            else:
                out.append(_observe(f, lead, now))
        return out

    def encode(self, observed: Sequence[float | str | None]) -> list[float]:
        """Raw values to the model's floats, categoricals through the vocabularies."""
        row = []
        for f, value in zip(self.features, observed, strict=True):
            if f.categorical:
                row.append(float(code(value, self.vocabularies.get(f.name, ()))))
            elif value is None or isinstance(value, str) or math.isnan(value):
                row.append(MISSING_NUMBER)
            elif f.source == "builtin":
                row.append(float(value))  # as the default spec's row: exactly features()
            else:
                row.append(_six_digits(float(value)))
        return row

    def row(self, lead: Lead, now: datetime) -> list[float]:
        if self.is_builtin_only and self.names == FEATURE_NAMES:
            return features(lead, now)  # the default spec: the engine's fixed row, as is
        return self.encode(self.observe(lead, now))

    # -- explanations -------------------------------------------------------------------

    def reference(self, row: Sequence[float]) -> list[float]:
        """A lead of the same age we know nothing about: what explanations compare with."""
        return [_reference(f, v) for f, v in zip(self.features, row, strict=True)]

    def label(self, name: str, value: float) -> str | None:
        """A spec feature's value in a salesperson's words; None for builtins (explain.py)."""
        f = self._by_name().get(name)
        if f is None or f.source == "builtin":
            return None
        return _label(f, value, self.vocabularies.get(f.name, ()))

    def _by_name(self) -> dict[str, Feature]:
        return {f.name: f for f in self.features}

    # -- learning and storing -------------------------------------------------------------

    def with_vocabularies(self, vocabularies: Mapping[str, Sequence[str]]) -> FeatureSpec:
        return replace(self, vocabularies={k: tuple(v) for k, v in vocabularies.items()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "features": [_feature_dict(f) for f in self.features],
            "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> FeatureSpec:
        feats = tuple(Feature(**f) for f in doc["features"])
        vocab = {str(k): tuple(str(x) for x in v) for k, v in doc.get("vocabularies", {}).items()}
        return cls(version=str(doc["version"]), features=feats, vocabularies=vocab)


def _six_digits(value: float) -> float:
    """``value`` to 6 significant digits. The model reads float32 (about 7 digits) while
    LightGBM splits at float64 midpoints of the training values: a mean such as 383.3333…
    sat within float32 rounding of a split, and the ONNX export sent it the other way
    (a parity failure of 0.017). Values 6 digits apart leave room for the rounding."""
    return float(f"{value:.6g}") if value else 0.0


def code(value: float | str | None, vocabulary: Sequence[str]) -> int:
    if value is None or value == "":
        return MISSING
    text = str(value).strip().lower()
    for i, item in enumerate(vocabulary):
        if item == text:
            return i + 2
    return OTHER


def learn_vocabularies(
    spec: FeatureSpec,
    observed: Sequence[Sequence[float | str | None]],
    labels: Sequence[int],
) -> dict[str, tuple[str, ...]]:
    """Per categorical feature: its frequent values, ordered by smoothed conversion rate.

    Ordering by the training rows' conversion rate makes the codes meaningful to a tree
    (what LightGBM's own categorical splits do); ``labels`` must be the training rows'
    only, so the holdout never shapes its own codes.
    """
    out: dict[str, tuple[str, ...]] = {}
    prior = (sum(labels) + 1.0) / (len(labels) + 2.0)
    for j, f in enumerate(spec.features):
        if not f.categorical:
            continue
        counts: Counter[str] = Counter()
        positives: Counter[str] = Counter()
        for row, y in zip(observed, labels, strict=True):
            value = row[j]
            if value is None or value == "":
                continue
            text = str(value).strip().lower()
            counts[text] += 1
            positives[text] += int(y)
        kept = [v for v, n in counts.most_common(f.max_categories) if n >= f.min_count]
        rate = {v: (positives[v] + 10 * prior) / (counts[v] + 10) for v in kept}
        out[f.name] = tuple(sorted(kept, key=lambda v: (rate[v], v)))
    return out


# -- the default spec and parsing -----------------------------------------------------------

_LEGACY_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}

DEFAULT_SPEC = FeatureSpec(
    version="builtin",
    features=tuple(Feature(name=n, source="builtin", key=n) for n in FEATURE_NAMES),
)


def parse(doc: Any, source: str = "config") -> FeatureSpec:
    """Validate a loaded YAML/JSON feature spec; FeatureSpecError names the first problem."""
    if not isinstance(doc, dict):
        raise FeatureSpecError(f"{source}: expected a mapping at the top level")
    unknown = set(doc) - {"version", "builtin", "fields", "activities"}
    if unknown:
        raise FeatureSpecError(f"{source}: unknown keys {sorted(unknown)}")
    version = doc.get("version")
    if not isinstance(version, (str, int)) or isinstance(version, bool):
        raise FeatureSpecError(f"{source}: 'version' (a string or number) is required")
    feats: list[Feature] = []
    builtin = doc.get("builtin", [])
    if builtin == "all":
        builtin = list(FEATURE_NAMES)
    for name in _list(builtin, f"{source}: builtin"):
        if name not in _LEGACY_INDEX:
            raise FeatureSpecError(
                f"{source}: unknown builtin feature {name!r}; known: {list(FEATURE_NAMES)}"
            )
        feats.append(Feature(name=name, source="builtin", key=name))
    for i, item in enumerate(_list(doc.get("fields", []), f"{source}: fields")):
        feats.append(_field(item, f"{source}: fields[{i}]"))
    for i, item in enumerate(_list(doc.get("activities", []), f"{source}: activities")):
        feats.extend(_activity(item, f"{source}: activities[{i}]"))
    if not feats:
        raise FeatureSpecError(f"{source}: names no features")
    names = [f.name for f in feats]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FeatureSpecError(f"{source}: features named twice: {dupes} (give one a 'name')")
    return FeatureSpec(version=str(version), features=tuple(feats))


def _field(item: Any, where: str) -> Feature:
    if not isinstance(item, dict):
        raise FeatureSpecError(f"{where}: expected a mapping")
    unknown = set(item) - {"field", "attribute", "type", "name", "max_categories", "min_count"}
    if unknown:
        raise FeatureSpecError(f"{where}: unknown keys {sorted(unknown)}")
    if ("field" in item) == ("attribute" in item):
        raise FeatureSpecError(f"{where}: give exactly one of 'field' or 'attribute'")
    kind = item.get("type", "categorical")
    if kind not in ("categorical", "numeric"):
        raise FeatureSpecError(f"{where}: 'type' is categorical or numeric, not {kind!r}")
    if "field" in item:
        key, src = item["field"], "field"
        if key not in PROFILE_FIELDS:
            raise FeatureSpecError(f"{where}: {key!r} is not a profile field {PROFILE_FIELDS}")
    else:
        key, src = item["attribute"], "attribute"
        if not isinstance(key, str) or not key:
            raise FeatureSpecError(f"{where}: 'attribute' must be a name")
    return Feature(
        name=str(item.get("name", key)),
        source=src,
        key=key,
        categorical=kind == "categorical",
        max_categories=_positive(item.get("max_categories", 30), f"{where}: max_categories"),
        min_count=_positive(item.get("min_count", 10), f"{where}: min_count"),
    )


def _activity(item: Any, where: str) -> list[Feature]:
    if not isinstance(item, dict):
        raise FeatureSpecError(f"{where}: expected a mapping")
    allowed = {"kind", "property", "count", "days_since_last", "stats", "windows", "type"}
    unknown = set(item) - allowed
    if unknown:
        raise FeatureSpecError(f"{where}: unknown keys {sorted(unknown)}")
    kind = item.get("kind")
    if kind != ANY and kind not in _KINDS:
        raise FeatureSpecError(f"{where}: 'kind' is {ANY!r} or one of {sorted(_KINDS)}")
    prop = item.get("property")
    out: list[Feature] = []
    if prop is None:
        for w in _windows(item.get("count", []), f"{where}: count"):
            suffix = "count" if w is None else f"count_{w}d"
            out.append(Feature(name=f"{kind}.{suffix}", source="count", key=kind, window=w))
        if item.get("days_since_last", False):
            out.append(Feature(name=f"{kind}.days_since_last", source="days_since_last", key=kind))
        if set(item) & {"stats", "windows", "type"}:
            raise FeatureSpecError(f"{where}: stats, windows and type need a 'property'")
        if not out:
            raise FeatureSpecError(f"{where}: asks for nothing (count or days_since_last)")
        return out
    if not isinstance(prop, str) or not prop:
        raise FeatureSpecError(f"{where}: 'property' must be a name")
    if item.get("type", "numeric") == "categorical":
        if set(item) & {"stats", "windows", "count"}:
            raise FeatureSpecError(f"{where}: a categorical property has only its last value")
        name = f"{kind}.{prop}.last"
        return [Feature(name=name, source="last_text", key=kind, prop=prop, categorical=True)]
    stats = _list(item.get("stats", []), f"{where}: stats")
    bad = [s for s in stats if s not in STATS]
    if bad:
        raise FeatureSpecError(f"{where}: unknown stats {bad}; known: {list(STATS)}")
    for s in stats:
        out.append(Feature(name=f"{kind}.{prop}.{s}", source="stat", key=kind, prop=prop, stat=s))
    for w in _windows(item.get("windows", []), f"{where}: windows"):
        if w is None:
            raise FeatureSpecError(f"{where}: windows are days (1-{MAX_WINDOW})")
        out.append(
            Feature(
                name=f"{kind}.{prop}.sum_{w}d",
                source="stat",
                key=kind,
                prop=prop,
                stat="sum",
                window=w,
            )
        )
    if not out:
        raise FeatureSpecError(f"{where}: asks for nothing (stats or windows)")
    return out


def _windows(value: Any, where: str) -> list[int | None]:
    out: list[int | None] = []
    for w in _list(value, where):
        if w == "all":
            out.append(None)
        elif isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_WINDOW:
            out.append(w)
        else:
            raise FeatureSpecError(f"{where}: 'all' or a number of days 1-{MAX_WINDOW}, not {w!r}")
    return out


def _positive(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FeatureSpecError(f"{where}: a positive integer")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise FeatureSpecError(f"{where}: expected a list")
    return value


def _feature_dict(f: Feature) -> dict[str, Any]:
    return {k: getattr(f, k) for k in Feature.__slots__}  # type: ignore[attr-defined]


# -- observing one feature --------------------------------------------------------------------


def _observe(f: Feature, lead: Lead, now: datetime) -> float | str | None:
    if f.source in ("field", "attribute"):
        raw = (lead.profile if f.source == "field" else lead.attributes).get(f.key)
        if raw is None or raw == "":
            return None
        if f.categorical:
            return str(raw)
        number = L.as_number(str(raw)) if not isinstance(raw, (int, float)) else float(raw)
        return number
    if f.source == "count":
        if f.window is None:
            return float(_all_counts(lead, f.key))
        return sum(
            L.window_sums(e, L.KIND_BUCKETS, now, f.window)[0] for e in _kind_entries(lead, f.key)
        )
    if f.source == "days_since_last":
        times = [e[0] for e in _kind_entries(lead, f.key)]
        if not times:
            return NO_ACTIVITY_DAYS
        days = (now.timestamp() - max(times)) / 86_400.0
        return min(NO_ACTIVITY_DAYS, max(0.0, days))
    if f.source == "last_text":
        return _last_text(lead, f.key, f.prop or "")
    return _stat(f, _prop_stats(lead, f.key, f.prop or ""), now)


def _last_text(lead: Lead, kind: str, prop: str) -> str | None:
    if kind != ANY:
        return lead.property_text.get(f"{kind}\x1f{prop}")
    # Of every kind with this property, the one whose latest activity is the most recent.
    suffix, best, when = f"\x1f{prop}", None, -1.0
    for key, text in lead.property_text.items():
        if key.endswith(suffix):
            at = lead.kind_activity.get(key[: -len(suffix)], [0.0])[0]
            if at > when:
                best, when = text, at
    return best


def _stat(f: Feature, stats: list[list[Any]], now: datetime) -> float | None:
    if f.window is not None:
        return sum(L.window_sums(s, L.PROPERTY_BUCKETS, now, f.window)[1] for s in stats)
    n = sum(s[L.N] for s in stats)
    if f.stat == "sum":
        return float(sum(s[L.SUM] for s in stats))
    if n == 0:
        return None
    if f.stat == "mean":
        return sum(s[L.SUM] for s in stats) / n
    if f.stat == "max":
        return float(max(s[L.MAX] for s in stats if s[L.MAX] is not None))
    return float(max(stats, key=_last_at)[L.LAST])


def _last_at(stats: list[Any]) -> float:
    return float(stats[L.LAST_AT] or 0.0)


def _all_counts(lead: Lead, kind: str) -> int:
    if kind == ANY:
        return sum(lead.activity_counts.values())
    return lead.activity_counts.get(kind, 0)


def _kind_entries(lead: Lead, kind: str) -> Iterable[list[Any]]:
    if kind == ANY:
        return lead.kind_activity.values()
    entry = lead.kind_activity.get(kind)
    return [] if entry is None else [entry]


def _prop_stats(lead: Lead, kind: str, prop: str) -> list[list[Any]]:
    if kind == ANY:
        suffix = f"\x1f{prop}"
        return [s for k, s in lead.property_stats.items() if k.endswith(suffix)]
    s = lead.property_stats.get(f"{kind}\x1f{prop}")
    return [] if s is None else [s]


# -- references and labels ------------------------------------------------------------------


def _reference(f: Feature, value: float) -> float:
    if f.source == "builtin":
        from domain.explain import reference_value  # explain imports this module

        return reference_value(f.key, value)
    if f.categorical:
        return float(MISSING)
    if f.source in ("count",) or (f.source == "stat" and f.stat == "sum"):
        return 0.0
    if f.source == "days_since_last":
        return NO_ACTIVITY_DAYS
    return MISSING_NUMBER


def _words(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").strip()


def _label(f: Feature, value: float, vocabulary: Sequence[str]) -> str:
    window = "" if f.window is None else f" in the last {f.window} days"
    if f.categorical:
        c = int(value)
        text = (
            "unknown"
            if c == MISSING
            else "other"
            if c == OTHER or c - 2 >= len(vocabulary)
            else vocabulary[c - 2]
        )
        what = _words(f.key if f.source != "last_text" else f.prop or f.key)
        return f"{what}: {text}"
    if f.source in ("field", "attribute"):
        missing = value <= MISSING_NUMBER
        return f"{_words(f.key)}: unknown" if missing else f"{_words(f.key)}: {value:g}"
    kind = "activity" if f.key == ANY else _words(f.key)
    if f.source == "count":
        n = int(value)
        return f"{n} × {kind}{window}"
    if f.source == "days_since_last":
        if value >= NO_ACTIVITY_DAYS:
            return f"no {kind} yet"
        days = math.floor(value)
        return f"{kind} today" if days == 0 else f"last {kind} {days} days ago"
    prop = _words(f.prop or "")
    stat = {"sum": "total", "mean": "average", "max": "most", "last": "last"}[f.stat or "sum"]
    if value <= MISSING_NUMBER:
        return f"no {prop} yet"
    return f"{prop} ({stat}{window}): {_quantity(f.prop or '', value)}"


def _quantity(prop: str, value: float) -> str:
    """Durations in seconds read as minutes or hours; other numbers as they are."""
    if "second" in prop or prop.endswith("_s") or "time" in prop:
        if value >= 3600:
            return f"{value / 3600:.1f} h"
        if value >= 60:
            return f"{value / 60:.0f} min"
        return f"{value:.0f} s"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:g}"
