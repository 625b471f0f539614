"""Console sessions: signed, expiring, tamper-evident; and its vendored assets are as fetched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from query_api.console import pages
from query_api.console.session import COOKIE, SessionError, Signer, cookie_header, csrf_ok

VENDOR = Path(pages.HERE) / "static" / "vendor"


def test_a_session_round_trips_and_keeps_no_key() -> None:
    signer = Signer("secret", 60)
    digest = hashlib.sha256(b"lsk_example").digest()
    session = signer.new("org-001", "key_1", digest, admin=True)
    cookie = signer.dumps(session)
    assert "lsk_" not in cookie
    assert signer.loads(cookie) == session


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),  # the MAC
        lambda c: "e30" + c[3:],  # the payload
        lambda c: c.replace(".", ""),
        lambda c: "",
    ],
)
def test_a_tampered_cookie_is_refused(tamper: object) -> None:
    signer = Signer("secret", 60)
    cookie = signer.dumps(signer.new("org-001", "key_1", b"\x00" * 32, admin=False))
    with pytest.raises(SessionError):
        signer.loads(tamper(cookie))  # type: ignore[operator]


def test_another_secret_or_an_expired_session_is_refused() -> None:
    cookie = Signer("one", 60).dumps(Signer("one", 60).new("o", "k", b"h", admin=False))
    with pytest.raises(SessionError, match="signature"):
        Signer("two", 60).loads(cookie)
    old = Signer("one", -1)
    with pytest.raises(SessionError, match="expired"):
        old.loads(old.dumps(old.new("o", "k", b"h", admin=False)))


def test_csrf_and_cookie_attributes() -> None:
    signer = Signer("secret", 60)
    session = signer.new("o", "k", b"h", admin=False)
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None) and not csrf_ok(session, session.csrf + "x")
    header = cookie_header("v", 60, secure=True)
    assert header.startswith(f"{COOKIE}=v;")
    for part in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/console"):
        assert part in header


def test_the_vendored_chart_library_is_the_one_fetched_from_npm() -> None:
    # `make console-vendor` fetches it and writes SHA256SUMS; a hand edit fails here.
    want, name = (VENDOR / "SHA256SUMS").read_text().split()
    assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == want
    assert (VENDOR / "VERSION").read_text().startswith("chart.js ")
