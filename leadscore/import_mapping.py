"""The mapping file of `leadscore import`: which CSV column becomes which part of a lead.

A mistake in the mapping stops the import before any row is read (``MappingError``,
naming the key); a mistake in a row only refuses that row (see importer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from domain.events import PROFILE_FIELDS

LEAD_ID_DERIVATIONS = ("row_number", "row_hash")
ACTIVITY_MODES = ("per_visit", "summary", "none")


class MappingError(ValueError):
    """The mapping file is not usable; the message names the key."""


@dataclass(frozen=True)
class OutcomeMapping:
    column: str
    converted: frozenset[str]
    disqualified: frozenset[str]
    open: frozenset[str]
    after_days: float  # outcome = created + after_days, unless at_column has a time
    at_column: str | None

    def kind(self, cell: str) -> str | None:
        """converted, disqualified or open for a cell (case and spaces ignored); None if
        the cell is none of the listed values."""
        value = cell.strip().lower()
        for kind, values in (
            ("converted", self.converted),
            ("disqualified", self.disqualified),
            ("open", self.open),
        ):
            if value in values:
                return kind
        return None


@dataclass(frozen=True)
class ActivityMapping:
    mode: str  # per_visit: one page_view per visit; summary: one page_view; none
    visits: str | None
    seconds_on_site: str | None
    pages_per_visit: str | None
    spread_days: float  # visits are spread over the first spread_days after creation
    max_visits: int


@dataclass(frozen=True)
class Mapping:
    lead_id_column: str | None
    lead_id_derive: str | None
    profile: dict[str, str]  # profile field -> column
    attributes: dict[str, str]  # attribute name -> column
    blank: frozenset[str]  # cells that mean "not filled in" (lower case)
    created_column: str | None
    window_end: datetime | None
    window_days: float
    activities: ActivityMapping
    outcome: OutcomeMapping

    def columns(self) -> set[str]:
        """Every column the mapping reads: the CSV must have them all."""
        named = {
            self.lead_id_column,
            self.created_column,
            self.activities.visits,
            self.activities.seconds_on_site,
            self.activities.pages_per_visit,
            self.outcome.column,
            self.outcome.at_column,
            *self.profile.values(),
            *self.attributes.values(),
        }
        return {c for c in named if c is not None}


def load_mapping(path: Path) -> Mapping:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MappingError(f"{path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise MappingError(f"{path}: a mapping (YAML object) is expected")
    return parse_mapping(raw)


def parse_mapping(raw: dict[str, Any]) -> Mapping:
    lead = _section(raw, "lead_id")
    column, derive = _opt_str(lead, "column", "lead_id"), _opt_str(lead, "derive", "lead_id")
    if (column is None) == (derive is None):
        raise MappingError("lead_id: give either column or derive")
    if derive is not None and derive not in LEAD_ID_DERIVATIONS:
        raise MappingError(f"lead_id.derive: one of {', '.join(LEAD_ID_DERIVATIONS)}")
    profile = _str_map(raw.get("profile") or {}, "profile")
    unknown = set(profile) - set(PROFILE_FIELDS)
    if unknown:
        raise MappingError(
            f"profile: unknown field(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(PROFILE_FIELDS)}"
        )
    created = _section(raw, "created_at")
    created_column = _opt_str(created, "column", "created_at")
    end = created.get("window_end")
    window_end = _timestamp(end, "created_at.window_end") if end is not None else None
    if created_column is None and window_end is None:
        raise MappingError("created_at: give column, or window_end (and window_days)")
    return Mapping(
        lead_id_column=column,
        lead_id_derive=derive,
        profile=profile,
        attributes=_str_map(raw.get("attributes") or {}, "attributes"),
        blank=frozenset(v.strip().lower() for v in _str_list(raw, "blank_values", [""])),
        created_column=created_column,
        window_end=window_end,
        window_days=_positive(created.get("window_days", 365), "created_at.window_days"),
        activities=_activities(raw.get("activities") or {"mode": "none"}),
        outcome=_outcome(_section(raw, "outcome")),
    )


def _activities(raw: Any) -> ActivityMapping:
    if not isinstance(raw, dict):
        raise MappingError("activities: a YAML object is expected")
    mode = raw.get("mode", "per_visit")
    if mode not in ACTIVITY_MODES:
        raise MappingError(f"activities.mode: one of {', '.join(ACTIVITY_MODES)}")
    visits = _opt_str(raw, "visits", "activities")
    if mode != "none" and visits is None:
        raise MappingError("activities.visits: the column with the number of visits")
    max_visits = raw.get("max_visits", 100)
    if not isinstance(max_visits, int) or not 1 <= max_visits <= 10_000:
        raise MappingError("activities.max_visits: an integer from 1 to 10000")
    return ActivityMapping(
        mode=mode,
        visits=visits,
        seconds_on_site=_opt_str(raw, "seconds_on_site", "activities"),
        pages_per_visit=_opt_str(raw, "pages_per_visit", "activities"),
        spread_days=_positive(raw.get("spread_days", 14), "activities.spread_days"),
        max_visits=max_visits,
    )


def _outcome(raw: dict[str, Any]) -> OutcomeMapping:
    column = _opt_str(raw, "column", "outcome")
    if column is None:
        raise MappingError("outcome.column: the column with the outcome")
    values = {
        kind: frozenset(v.strip().lower() for v in _str_list(raw, kind, []))
        for kind in ("converted", "disqualified", "open")
    }
    if not values["converted"]:
        raise MappingError("outcome.converted: the cell values that mean converted")
    overlap = (values["converted"] & (values["disqualified"] | values["open"])) | (
        values["disqualified"] & values["open"]
    )
    if overlap:
        raise MappingError(f"outcome: {', '.join(sorted(overlap))} listed twice")
    return OutcomeMapping(
        column=column,
        converted=values["converted"],
        disqualified=values["disqualified"],
        open=values["open"],
        after_days=_positive(raw.get("after_days", 14), "outcome.after_days"),
        at_column=_opt_str(raw, "at_column", "outcome"),
    )


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise MappingError(f"{key}: a YAML object is expected")
    return value


def _opt_str(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"{where}.{key}: a non-empty string is expected")
    return value


def _str_map(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in raw.items()
    ):
        raise MappingError(f"{where}: name: column pairs (strings) are expected")
    return dict(raw)


def _str_list(raw: dict[str, Any], key: str, default: list[str]) -> list[str]:
    value = raw.get(key, default)
    if not isinstance(value, list):
        value = [value]
    # YAML reads 1 as a number: compare as the CSV's text.
    return [_yaml_text(v) for v in value]


def _yaml_text(value: Any) -> str:
    if isinstance(value, bool):
        # YAML reads yes/no/true/false unquoted as booleans: which text was meant is lost.
        raise MappingError("quote yes/no/true/false in the mapping's value lists")
    return str(value)


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise MappingError(f"{where}: a positive number is expected")
    return float(value)


def _timestamp(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        at = value
    elif isinstance(value, str):
        try:
            at = datetime.fromisoformat(value)
        except ValueError as exc:
            raise MappingError(f"{where}: an ISO 8601 time is expected") from exc
    else:
        raise MappingError(f"{where}: an ISO 8601 time is expected")
    return at if at.tzinfo else at.replace(tzinfo=UTC)
