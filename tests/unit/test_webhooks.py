"""Webhook signatures and the retry schedule (the pure parts of adapters/webhooks.py
and streams/webhook_dispatcher.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import time

import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st

from adapters.webhook_http import UrlPolicy, UrlRefusedError, check_url, is_public
from adapters.webhook_secrets import DEV_KEY, SecretBox, SecretKeyError, new_secret, sign, verify
from adapters.webhooks import WebhookError, parse_event_types
from domain.transitions import TYPED_EVENTS
from streams.webhook_dispatcher import backoff_s

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
NOW = 1_767_600_000


def test_signature_is_standard_webhooks_v1_over_id_dot_timestamp_dot_exact_body() -> None:
    body = b'{"event_type":"lead.qualified","new_score":57.5}'
    mac = hmac.new(b"k" * 32, b"evt_1.1767600000." + body, hashlib.sha256).digest()
    assert sign(SECRET, "evt_1", NOW, body) == "v1," + base64.b64encode(mac).decode()


def test_the_reference_library_verifies_our_signature_and_refuses_tampering() -> None:
    secret = new_secret()
    body = b'{"a":1}'
    hook = standardwebhooks.Webhook(secret)
    # The library checks the timestamp against its own clock: sign with "now".
    now = int(time.time())
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, "evt_1", now, body),
    }
    assert hook.verify(body, headers) == {"a": 1}
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        hook.verify(body + b" ", headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(body, headers)


def test_verify_accepts_a_fresh_signature_and_refuses_tampering_and_replays() -> None:
    body = b'{"x":1}'
    h = {"webhook-id": "m", "webhook-timestamp": str(NOW),
         "webhook-signature": sign(SECRET, "m", NOW, body)}  # fmt: skip
    assert verify(SECRET, h, body, now=NOW + 10)
    assert not verify(SECRET, h, body + b" ", now=NOW)
    assert not verify(new_secret(), h, body, now=NOW)
    assert not verify(SECRET, h | {"webhook-id": "n"}, body, now=NOW)  # the id is signed
    assert not verify(SECRET, h | {"webhook-timestamp": str(NOW + 1)}, body, now=NOW)
    assert not verify(SECRET, h, body, now=NOW + 301)  # too old: a replay
    assert not verify(SECRET, h | {"webhook-timestamp": "soon"}, body, now=NOW)


def test_secrets_are_sealed_at_rest_and_open_only_with_the_key() -> None:
    box = SecretBox([DEV_KEY])
    sealed = box.seal(SECRET)
    assert sealed.startswith("fernet:") and SECRET not in sealed
    assert box.open(sealed) == SECRET
    assert box.open(SECRET) == SECRET  # a row from before encryption reads as it is
    other = SecretBox([base64.urlsafe_b64encode(b"o" * 32)])
    with pytest.raises(SecretKeyError):
        other.open(sealed)
    # Rotation: the new key first, the old one after it; reseal moves a row over.
    rotated = SecretBox([base64.urlsafe_b64encode(b"o" * 32), DEV_KEY])
    moved = rotated.reseal(sealed)
    assert other.open(moved) == SECRET
    with pytest.raises(SecretKeyError):
        SecretBox([b"not a fernet key"])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.1.2.3", "10.0.0.5", "172.16.0.1", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "100.127.255.254", "0.0.0.0", "224.0.0.1", "239.255.255.250",
        "255.255.255.255", "198.18.0.1", "192.0.0.170", "240.0.0.1",
        "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1", "::ffff:127.0.0.1",
        "::ffff:10.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a00:1", "2002:a00:1::1",
        "2001:db8::1",
    ],
)  # fmt: skip
def test_inward_addresses_are_not_public(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are(address: str) -> None:
    assert is_public(address)
    assert ipaddress.ip_address(address)


def fixed(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:5432/", "https"),
        ("https://127.0.0.1:5432/", "public"),
        ("https://169.254.169.254/latest/meta-data/", "public"),
        ("https://[::1]/", "public"),
        ("https://[::ffff:10.0.0.1]/", "public"),
        ("https://user:pw@93.184.216.34/", "credentials"),
        ("ftp://93.184.216.34/", "http(s)"),
        ("https:///nohost", "http(s)"),
        ("https://93.184.216.34:99999/", "http(s)"),
        ("https://93.184.216.34/a b", "http(s)"),
        ("https://x" + "a" * 2100 + ".com/", "http(s)"),
    ],
)
def test_the_production_policy_refuses(url: str, why: str) -> None:
    with pytest.raises(UrlRefusedError, match=re.escape(why)):
        check_url(url, UrlPolicy())


def test_a_name_with_any_private_answer_is_refused_and_the_checked_address_pinned() -> None:
    with pytest.raises(UrlRefusedError):
        check_url("https://hooks.example.com/", UrlPolicy(), fixed("93.184.216.34", "10.0.0.1"))
    target = check_url("https://hooks.example.com:8443/x?y=1", UrlPolicy(), fixed("93.184.216.34"))
    assert (target.address, target.host_header, target.path) == (
        "93.184.216.34", "hooks.example.com:8443", "/x?y=1")  # fmt: skip
    dev = check_url("http://127.0.0.1:9/", UrlPolicy(allow_http=True, allow_private=True))
    assert dev.address == "127.0.0.1"


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
