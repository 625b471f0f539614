"""Which typed score-events a score change is (domain/transitions.py)."""

from __future__ import annotations

from uuid import uuid4

import pytest

from domain.transitions import (
    DISQUALIFIED,
    GRADE_CHANGED,
    QUALIFIED,
    transitions,
    typed_event_id,
)


@pytest.mark.parametrize(
    ("previous_grade", "grade", "previous_stage", "stage", "expected"),
    [
        (None, "B2", None, None, []),  # a first score is only a score
        (None, "B2", None, "mql", [QUALIFIED]),  # a first score can qualify
        ("B2", "B2", "lead", "mql", [QUALIFIED]),
        ("B2", "A1", "mql", "sql", [QUALIFIED, GRADE_CHANGED]),
        ("B2", "B2", "sql", "mql", []),  # falling back is in the score-event's stage
        ("B2", "B2", "mql", "lead", []),
        ("B2", "B2", "mql", "mql", []),
        ("B2", "B2", "sql", "disqualified", [DISQUALIFIED]),
        ("B2", "B2", "disqualified", "disqualified", []),
        ("B2", "B2", "disqualified", "mql", [QUALIFIED]),
        ("B2", "B3", None, None, [GRADE_CHANGED]),  # grades move without thresholds too
    ],
)
def test_transitions(
    previous_grade: str | None,
    grade: str,
    previous_stage: str | None,
    stage: str | None,
    expected: list[str],
) -> None:
    assert transitions(previous_grade, grade, previous_stage, stage) == expected


def test_typed_event_ids_are_stable_and_distinct() -> None:
    score = uuid4()
    assert typed_event_id(score, QUALIFIED) == typed_event_id(score, QUALIFIED)
    ids = {typed_event_id(score, kind) for kind in (QUALIFIED, DISQUALIFIED, GRADE_CHANGED)}
    assert len(ids | {score}) == 4
