"""Where a webhook may point, and the one POST that reaches it.

A tenant chooses the URL, so the URL is untrusted: it must not reach the engine's own
network (PostgreSQL on 10.x, the cloud metadata service at 169.254.169.254, a Redis on
127.0.0.1). ``check_url`` refuses a URL whose host resolves to any non-public address;
it runs when a webhook is added and again before every attempt, and ``post`` connects
to the very address that was checked (the host name goes only into ``Host`` and TLS
SNI/verification), so a DNS answer that changes between check and connect (rebinding)
changes nothing.

``post`` has one wall-clock deadline for the whole exchange (connect, TLS, send, read):
a receiver that drips a byte every few seconds is cut off at the deadline. What the
tenant sees of a failure is a category (``delivery failed (timeout)``); the detail
(addresses, errno text) is returned separately for the operator's log only.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
MAX_RESPONSE_HEAD = 65_536  # the status line is all we need; headers past this are cut

Resolve = Callable[[str, int], list[str]]

# Ranges ``ipaddress``'s is_global lets through that a webhook must not reach anyway.
_EXTRA_DENIED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "100.64.0.0/10",  # CGNAT (is_global is already False; kept explicit)
        "192.0.0.0/24",  # IETF protocol assignments
        "64:ff9b::/96",  # NAT64: embeds an IPv4 address
        "64:ff9b:1::/48",
        "2002::/16",  # 6to4: embeds an IPv4 address
        "2001::/32",  # Teredo
    )
)


# Name lookups for deliveries run here, so a resolver that hangs holds one of these,
# not a delivery slot past its deadline.
_resolvers = ThreadPoolExecutor(4, thread_name_prefix="webhook-dns")


class UrlRefusedError(ValueError):
    """A webhook URL the engine will not send to; the message is safe to show the tenant."""


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    allow_http: bool = False  # dev only: production requires https
    allow_private: bool = False  # dev only: receivers on loopback / private networks


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: where to connect (``address``) and what to call it (``host``)."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    address: str  # the resolved, checked IP the connection goes to

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"


def is_public(address: str) -> bool:
    """True only for a globally routable unicast address (IPv4 or IPv6)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not is_public(str(embedded)):
            return False
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
        return False
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return False
    return not any(ip.version == n.version and ip in n for n in _EXTRA_DENIED)


def resolve(host: str, port: int) -> list[str]:
    """Every address the name resolves to (an IP literal resolves to itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_url(url: str, policy: UrlPolicy) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an acceptable URL's shape; no DNS yet."""
    if len(url) > MAX_URL_LENGTH or any(c in url for c in "\r\n\t ") or not url.isprintable():
        raise UrlRefusedError("not an http(s) URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefusedError("not an http(s) URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefusedError("not an http(s) URL")
    if parts.scheme == "http" and not policy.allow_http:
        raise UrlRefusedError("webhook URLs must use https")
    if parts.username is not None or parts.password is not None:
        raise UrlRefusedError("webhook URLs may not carry credentials")
    port = port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def check_url(url: str, policy: UrlPolicy, resolver: Resolve = resolve) -> Target:
    """The URL's target, pinned to a checked address; UrlRefusedError when refused.

    Every address the name resolves to must be public, not just the first: a name with
    one public and one private answer could otherwise be steered to the private one.
    """
    scheme, host, port, path = parse_url(url, policy)
    try:
        addresses = resolver(host, port)
    except TimeoutError:
        raise  # the caller's deadline, not an answer about the name
    except (OSError, UnicodeError) as exc:
        raise UrlRefusedError("the webhook's host name does not resolve") from exc
    if not addresses:
        raise UrlRefusedError("the webhook's host name does not resolve")
    if not policy.allow_private and not all(is_public(a) for a in addresses):
        raise UrlRefusedError(
            "webhook URLs must resolve to public addresses "
            "(not loopback, private, link-local, CGNAT, multicast or reserved)"
        )
    return Target(scheme, host, port, path, addresses[0])


@dataclass(frozen=True, slots=True)
class Attempt:
    status: int | None  # the HTTP status, None when no answer came
    error: str | None  # None when delivered; otherwise what the tenant may read
    detail: str | None = None  # the operator's detail (addresses, errno): logs only


def _failed(category: str, detail: str, status: int | None = None) -> Attempt:
    return Attempt(status, f"delivery failed ({category})", detail)


class _DeadlineError(TimeoutError):
    pass


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
    policy: UrlPolicy,
    resolver: Resolve = resolve,
    tls: ssl.SSLContext | None = None,
) -> Attempt:
    """One POST to ``url`` within ``timeout_s`` in all. Any 2xx delivers; a redirect is
    an answer we do not follow (a signed POST is not re-sent elsewhere). ``tls``: the
    system's trust store and hostname checking unless given (tests bring their own CA)."""
    deadline = time.monotonic() + timeout_s
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n\0"):
            return _failed("bad request", f"header {name!r} holds a line break")

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _DeadlineError("total deadline passed")
        return left

    def resolve_in_time(host: str, port: int) -> list[str]:
        # The system resolver has no deadline of its own, and the tenant runs the DNS
        # server: wait for it only as long as the delivery's deadline allows.
        return _resolvers.submit(resolver, host, port).result(timeout=remaining())

    try:
        target = check_url(url, policy, resolve_in_time)
    except UrlRefusedError as exc:
        return _failed("address not allowed", f"{url}: {exc}")
    except TimeoutError as exc:
        return _failed("timeout", f"{url}: resolving: {exc or 'timed out'}")

    where = f"{target.address}:{target.port}"
    sock: socket.socket | None = None
    try:
        sock = socket.create_connection((target.address, target.port), timeout=remaining())
        if target.scheme == "https":
            context = tls or ssl.create_default_context()
            sock.settimeout(remaining())
            sock = context.wrap_socket(sock, server_hostname=target.host)
        head = [
            f"POST {target.path} HTTP/1.1",
            f"Host: {target.host_header}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        sock.settimeout(remaining())
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        got = b""
        while b"\r\n" not in got and len(got) < MAX_RESPONSE_HEAD:
            sock.settimeout(remaining())  # the whole read shares one deadline
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
        line = got.split(b"\r\n", 1)[0].decode("latin-1")
        version, _, rest = line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            return _failed("bad response", f"{where}: status line {line[:100]!r}")
        status = int(code)
        if 200 <= status < 300:
            return Attempt(status, None)
        return _failed(f"HTTP {status}", f"{where}: {line[:200]}", status)
    except TimeoutError as exc:  # the deadline (_DeadlineError) or a socket timeout
        return _failed("timeout", f"{where}: {exc or 'timed out'} after {timeout_s}s")
    except ConnectionRefusedError as exc:
        return _failed("connection refused", f"{where}: {exc}")
    except ssl.SSLError as exc:
        return _failed("TLS error", f"{where}: {exc}")
    except OSError as exc:
        return _failed("connection failed", f"{where}: {type(exc).__name__}: {exc}")
    finally:
        if sock is not None:
            sock.close()
