"""What a recorded score means for sales: the typed score-events it gives rise to.

Every LeadScored is published as ``lead.score.updated``. A score that also moves the
lead up a stage (to mql or sql), disqualifies it, or changes its grade is published a
second time under that type, so a subscriber (a webhook, a CRM task) hears only about
the moments it acts on. A lead falling back (sql to mql, mql to lead) as it decays gets
no typed event: its score-event carries the new stage.
"""

from __future__ import annotations

from uuid import UUID, uuid5

SCORE_UPDATED = "lead.score.updated"
QUALIFIED = "lead.qualified"
DISQUALIFIED = "lead.disqualified"
GRADE_CHANGED = "lead.grade_changed"
TYPED_EVENTS = (QUALIFIED, DISQUALIFIED, GRADE_CHANGED)

_RANK = {"mql": 1, "sql": 2}


def transitions(
    previous_grade: str | None,
    grade: str,
    previous_stage: str | None,
    stage: str | None,
) -> list[str]:
    """The typed events of one score change, beside its ``lead.score.updated``."""
    out = []
    if _RANK.get(stage or "", 0) > _RANK.get(previous_stage or "", 0):
        out.append(QUALIFIED)
    if stage == "disqualified" and previous_stage != "disqualified":
        out.append(DISQUALIFIED)
    if previous_grade is not None and grade != previous_grade:
        out.append(GRADE_CHANGED)
    return out


def typed_event_id(score_event_id: UUID, event_type: str) -> UUID:
    """Stable id of a typed event: one per stored score and type, across redeliveries."""
    return uuid5(score_event_id, event_type)
