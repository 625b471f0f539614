"""Webhook signatures and the retry schedule (pure parts of streams/webhooks.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.transitions import TYPED_EVENTS
from streams.webhooks import WebhookError, backoff_s, parse_event_types, sign, verify

SECRET = "whsec_test"
NOW = 1_767_600_000


def test_signature_is_hmac_sha256_of_timestamp_dot_exact_body() -> None:
    body = b'{"event_type":"lead.qualified","new_score":57.5}'
    expected = hmac.new(SECRET.encode(), b"1767600000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, body) == "sha256=" + expected


def test_signature_covers_the_exact_bytes() -> None:
    # The same JSON value written differently is a different body: receivers must
    # verify the raw bytes they received, not a re-serialisation of the parsed body.
    a = sign(SECRET, NOW, b'{"a":1,"b":2}')
    assert sign(SECRET, NOW, b'{"b":2,"a":1}') != a
    assert sign(SECRET, NOW, b'{"a": 1, "b": 2}') != a
    assert sign(SECRET, NOW + 1, b'{"a":1,"b":2}') != a
    assert sign(SECRET + "x", NOW, b'{"a":1,"b":2}') != a


def test_verify_accepts_a_fresh_signature_and_refuses_tampering_and_replays() -> None:
    body = b'{"x":1}'
    sig = sign(SECRET, NOW, body)
    assert verify(SECRET, str(NOW), body, sig, now=NOW + 10)
    assert not verify(SECRET, str(NOW), body + b" ", sig, now=NOW)
    assert not verify("other", str(NOW), body, sig, now=NOW)
    assert not verify(SECRET, str(NOW + 1), body, sig, now=NOW)  # timestamp is signed
    assert not verify(SECRET, str(NOW), body, sig, now=NOW + 301)  # too old: a replay
    assert not verify(SECRET, "not-a-time", body, sig, now=NOW)


@given(
    attempts=st.integers(min_value=1, max_value=200),
    base=st.floats(min_value=0.001, max_value=60),
    cap=st.floats(min_value=0.001, max_value=86_400),
    r=st.floats(min_value=0, max_value=1),
)
def test_backoff_is_bounded_by_the_cap_and_never_below_half_its_step(
    attempts: int, base: float, cap: float, r: float
) -> None:
    delay = backoff_s(attempts, base, cap, rand=lambda: r)
    step = min(cap, base * 2 ** (attempts - 1))
    assert step / 2 <= delay <= step <= cap


def test_backoff_doubles_until_the_cap() -> None:
    top = [backoff_s(n, 1.0, 60.0, rand=lambda: 1.0) for n in range(1, 10)]
    assert top == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    low = [backoff_s(n, 1.0, 60.0, rand=lambda: 0.0) for n in range(1, 4)]
    assert low == [0.5, 1, 2]


def test_event_types_default_to_every_typed_event_and_refuse_others() -> None:
    assert parse_event_types(None) == list(TYPED_EVENTS)
    assert parse_event_types("lead.qualified, lead.qualified") == ["lead.qualified"]
    with pytest.raises(WebhookError):
        parse_event_types("lead.score.updated")
    with pytest.raises(WebhookError):
        parse_event_types(" , ")
