"""The second world as a CRM export: one CSV row per lead, as a customer would hand it over.

``leadscore world-export --leads N`` writes what examples/crm-export.csv holds, at any
size: the lead's fields, its visits summed (count, seconds on site, pages per visit) and
a Converted flag, the shape of a common education-CRM export. It is the input of the
README's "Training on your own data" walk-through; no real person is in it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO

from domain.events import ActivityKind, EventType, LeadEvent

COLUMNS = (
    "Prospect ID",
    "Lead Origin",
    "Lead Source",
    "Do Not Email",
    "Converted",
    "TotalVisits",
    "Total Time Spent on Website",
    "Page Views Per Visit",
    "Country",
    "Specialization",
    "What is your current occupation",
    "City",
)
_ATTRIBUTE_COLUMNS = {
    "lead_origin": "Lead Origin",
    "do_not_email": "Do Not Email",
    "specialization": "Specialization",
    "occupation": "What is your current occupation",
    "city": "City",
}


def rows(events: Iterable[LeadEvent]) -> list[dict[str, str]]:
    """One row per lead, in creation order."""
    out: dict[str, dict[str, object]] = {}
    for ev in events:
        row = out.setdefault(
            ev.lead_id,
            {"Prospect ID": ev.lead_id, "Converted": "0", "visits": 0, "seconds": 0, "pages": 0},
        )
        if ev.event_type in (EventType.LEAD_CREATED, EventType.LEAD_UPDATED):
            if "source" in ev.profile:
                row["Lead Source"] = str(ev.profile["source"]).replace("_", " ").title()
            if "country" in ev.profile:
                row["Country"] = str(ev.profile["country"])
            for name, value in ev.attributes.items():
                if name in _ATTRIBUTE_COLUMNS:
                    row[_ATTRIBUTE_COLUMNS[name]] = value.title()
        elif ev.event_type is EventType.ACTIVITY_RECORDED:
            if ev.activity_kind is ActivityKind.PAGE_VIEW:
                props = ev.activity_properties
                row["visits"] = int(row["visits"]) + 1  # type: ignore[call-overload]
                row["seconds"] = int(row["seconds"]) + int(props.get("seconds_on_site", 0))  # type: ignore[call-overload]
                row["pages"] = int(row["pages"]) + int(props.get("pages", 0))  # type: ignore[call-overload]
        elif ev.event_type is EventType.LEAD_CONVERTED:
            row["Converted"] = "1"
    table = []
    for row in out.values():
        visits = int(row.pop("visits"))  # type: ignore[call-overload]
        seconds, pages = row.pop("seconds"), int(row.pop("pages"))  # type: ignore[call-overload]
        row["TotalVisits"] = str(visits)
        row["Total Time Spent on Website"] = str(seconds)
        row["Page Views Per Visit"] = f"{pages / visits:.2f}" if visits else "0"
        table.append(
            {c: str(row.get(c, "Select" if c == "Specialization" else "")) for c in COLUMNS}
        )
    return table


def write_csv(events: Iterable[LeadEvent], out: IO[str]) -> int:
    table = rows(events)
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    return len(table)
