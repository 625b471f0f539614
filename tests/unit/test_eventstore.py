"""The event store port, proven in memory here; tests/integration runs it on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.eventstore import LeadStore, cache_env
from domain.events import ActivityKind
from domain.lead import Lead
from domain.processing import apply_batch, event_time
from tests.support.factories import T0, FixedScorer, activity, created
from tests.support.store_contract import LeadStoreContract


class TestInMemoryLeadStore(LeadStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[LeadStore]:
        s = LeadStore(env={"PERSISTENCE_MODULE": "eventsourcing.popo", **cache_env(100)})
        yield s
        s.close()


def test_orjson_transcoding_is_interchangeable_with_the_librarys_json_transcoder() -> None:
    from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex

    from adapters.eventstore import OrjsonTranscoder
    from domain.events import EventType, LeadEvent
    from tests.support.factories import next_id

    fast, plain = OrjsonTranscoder(), JSONTranscoder()
    for transcoder in (fast, plain):
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
            transcoder.register(transcoding)
    lead = Lead.open(created(lead="é-ü", title="Directrice générale"))
    lead.handle(activity(ActivityKind.WEBINAR, lead="é-ü"))
    lead.handle(LeadEvent(next_id(), EventType.LEAD_UPDATED, "org-1", "é-ü", T0, {"employees": 9}))
    lead.handle(LeadEvent(next_id(), EventType.LEAD_CONVERTED, "org-1", "é-ü", T0, reason="won"))
    apply_batch([], {lead.id: lead}, FixedScorer(), event_time, T0)
    lead.record_score(
        score=12.5, components={"fit": 1.0, "engagement": 2.0}, grade="C3", model_version="v",
        factors=[{"feature": "x", "label": "y", "contribution": -0.1}],
        caused_by_event_id="e", scored_at=T0, stage="lead", rules_version="3",
    )  # fmt: skip
    events = lead.collect_events()
    assert {type(e).__name__ for e in events} >= {
        "LeadCreated", "LeadUpdated", "ActivityRecorded", "LeadConverted", "LeadScored"
    }  # fmt: skip
    for event in events:
        state = {k: v for k, v in vars(event).items() if k not in ("originator_id",)}
        assert plain.decode(fast.encode(state)) == plain.decode(plain.encode(state)) == state
        assert fast.decode(plain.encode(state)) == fast.decode(fast.encode(state)) == state


def _transcoders() -> tuple[Any, Any]:
    from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex

    from adapters.eventstore import OrjsonTranscoder

    fast, plain = OrjsonTranscoder(), JSONTranscoder()
    for transcoder in (fast, plain):
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
            transcoder.register(transcoding)
    return fast, plain


_text = st.text(
    st.characters(exclude_categories=("Cs",)), max_size=12
)  # orjson: no lone surrogates
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    _text,
    st.sampled_from(['"_type_"', "_type_", '{"_type_": 1}']),  # look-alikes in strings
    st.datetimes(timezones=st.just(UTC)),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
)
_keys = st.one_of(_text, st.sampled_from(["_type_", "_data_"]))
_documents = st.dictionaries(
    _keys,
    st.recursive(
        _leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
        max_leaves=12,
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(_documents)
def test_orjson_decode_fast_path_equals_the_librarys_decode(doc: dict[str, Any]) -> None:
    """Datetimes and decimals at any depth, "_type_" keys and look-alike strings: our
    decode (with its top-level fast path) reads exactly what the library's reads."""
    fast, plain = _transcoders()
    data = plain.encode(doc)
    expected = _outcome(lambda: plain.decode(data))
    assert _outcome(lambda: fast.decode(data)) == expected
    assert _outcome(lambda: fast.decode(fast.encode(doc))) == expected


def _outcome(decode: Callable[[], Any]) -> tuple[str, Any]:
    """The decoded value, or that it was refused (a "_type_" the library does not know;
    which of several bad ones is met first, and so the error, may differ)."""
    try:
        return "ok", decode()
    except (TypeError, ValueError, KeyError):
        return "refused", None
