"""Fuzzing decode + validate: no exception escapes, every message is accounted for."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from domain.events import ActivityKind, EventType, LeadEvent
from streams.dlq import DeadLetter, RawMessage, Reason
from streams.processor import decode_message
from tests.support.wire import NOW, SCHEMA_ID, LocalCatalog, Orgs, encode

CATALOG = LocalCatalog()
ORGS = Orgs("org-1", "org-2")
# The project's own error types only: anything else would be a decoder bug the
# processor's catch-all hid (still a dead letter, but worth knowing about).
EXPECTED = {"SerializationError", "UnknownSchemaError", "ValidationError", "UnknownOrgError"}
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def account(value: bytes | None) -> LeadEvent | DeadLetter:
    result = decode_message(RawMessage(value), CATALOG, now=NOW, orgs=ORGS)  # type: ignore[arg-type]
    if isinstance(result, DeadLetter):
        assert result.reason in set(Reason) and result.reason is not Reason.FAILED
        assert result.error_class in EXPECTED, (result.error_class, result.detail)
        assert result.detail and result.message.value == value
    else:
        assert isinstance(result, LeadEvent) and result.org_id in ORGS.orgs
    return result


texts = st.text(max_size=40)
# Mostly plausible values, so a fair share of records is valid and reaches the domain.
ids = st.from_regex(r"[A-Za-z0-9._-]{1,24}", fullmatch=True) | texts
plausible = st.datetimes(
    min_value=NOW.replace(year=2015, tzinfo=None), max_value=NOW.replace(tzinfo=None)
)
anytime = st.datetimes(
    min_value=NOW.replace(year=1990, tzinfo=None), max_value=NOW.replace(year=2030, tzinfo=None)
)
records = st.fixed_dictionaries(
    {
        "event_id": ids,
        "event_type": st.sampled_from([str(t) for t in EventType]),
        "org_id": st.sampled_from(["org-1", "org-2", "org-1", "org-3", ""]),
        "lead_id": ids,
        "occurred_at": (plausible | anytime).map(
            lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=NOW.tzinfo)
        ),
        "email": st.none() | texts,
        "first_name": st.none() | texts,
        "last_name": st.none() | texts,
        "company": st.none() | st.text(max_size=1_200),
        "title": st.none() | texts,
        "industry": st.none() | texts,
        "employees": st.none() | st.integers(-(2**31), 2**31 - 1),
        "country": st.none() | texts,
        "source": st.none() | texts,
        "activity": st.none()
        | st.fixed_dictionaries(
            {
                "kind": st.sampled_from([str(k) for k in ActivityKind]),
                "properties": st.dictionaries(texts, texts, max_size=60),
            }
        ),
        "reason": st.none() | texts,
    }
)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(value: bytes) -> None:
    account(value)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bodies_behind_a_valid_header(body: bytes) -> None:
    account(b"\x00" + SCHEMA_ID.to_bytes(4, "big") + body)


@FUZZ
@given(records)
def test_generated_records_are_events_or_dead_letters(record: dict[str, Any]) -> None:
    result = account(encode(record))
    event(f"{type(result).__name__}")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    value = bytearray(encode(draw(records)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "schema", "splice"]))
        if op == "flip" and value:
            i = draw(st.integers(0, len(value) - 1))
            value[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del value[draw(st.integers(0, len(value))) :]
        elif op == "extend":
            value += draw(st.binary(min_size=1, max_size=40))
        elif op == "schema" and len(value) >= 5:
            value[1:5] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
        elif op == "splice" and len(value) > 5:
            # Corrupt a field: overwrite a run of body bytes (lengths, enum indexes, varints).
            i = draw(st.integers(5, len(value) - 1))
            chunk = draw(st.binary(min_size=1, max_size=8))
            value[i : i + len(chunk)] = chunk
    return bytes(value)


@FUZZ
@given(mutated())
def test_mutated_valid_messages(value: bytes) -> None:
    account(value)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=80), mutated()), max_size=30))
def test_every_message_of_a_batch_is_accounted_for(values: list[bytes | None]) -> None:
    results = [account(v) for v in values]
    events = [r for r in results if isinstance(r, LeadEvent)]
    letters = [r for r in results if isinstance(r, DeadLetter)]
    assert len(events) + len(letters) == len(values)
