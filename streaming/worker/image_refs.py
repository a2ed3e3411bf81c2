"""Image references -> bytes, with every limit enforced (blocking: callers run this in an executor).

- b64: strict base64 (an optional ``data:...;base64,`` prefix and ASCII whitespace are tolerated).
- path: only under ``settings.limits.image_root`` after resolving symlinks; regular files only.
- url: http(s) only; the host is resolved once and every address must be public (no private,
  loopback, link-local, multicast, reserved, unspecified, CGNAT, nor IPv6 forms embedding those)
  unless ``settings.limits.allow_private_urls``. The connection goes to the vetted address (no second DNS
  lookup, so no DNS rebinding); at most 3 redirects, each re-checked; byte cap; total timeout, host name
  lookups included.

Every failure is ``InvalidPost(reason)``.
"""
from __future__ import annotations

import contextlib
import base64
import binascii
import concurrent.futures
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin, urlsplit

from affectstream.streaming.worker.schemas import ImageRef, InvalidPost
from affectstream.streaming.worker.settings import Settings

MAX_REDIRECTS = 3
DNS_TIMEOUT_S = 5.0
MAX_LOOKUPS = 128           # lookup threads alive at once, stuck ones included
MAX_STUCK_PER_DOMAIN = 4    # lookups still running under one domain before its names are refused
_CHUNK = 64 * 1024
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]


def load_image_bytes(ref: ImageRef, settings: Settings) -> bytes:
    if ref.kind == "b64":
        return decode_b64(ref.value, settings.limits.image_max_bytes)
    if ref.kind == "path":
        return read_path(ref.value, settings.limits.image_root, settings.limits.image_max_bytes)
    if ref.kind == "url":
        policy = (lambda ip: True) if settings.limits.allow_private_urls else is_public_address
        return fetch_url(ref.value, settings.limits.image_max_bytes, settings.limits.fetch_timeout_s, policy)
    raise InvalidPost("bad_image_ref", f"unknown image kind {ref.kind!r}")


# --- b64 -------------------------------------------------------------------------------------------

def decode_b64(value: str, max_bytes: int) -> bytes:
    if value.startswith("data:") and ";base64," in value[:200]:
        value = value.split(";base64,", 1)[1]
    if len(value) > (max_bytes // 3 + 2) * 4 + len(value) // 76 * 2 + 64:  # cheap pre-check before decoding
        raise InvalidPost("image_too_large", f"base64 of {len(value)} chars exceeds {max_bytes} bytes")
    try:
        compact = "".join(value.split()).encode("ascii")
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as e:
        raise InvalidPost("bad_base64", str(e)[:200]) from None
    return _checked_size(data, max_bytes)


def _checked_size(data: bytes, max_bytes: int) -> bytes:
    if not data:
        raise InvalidPost("image_empty", "no image bytes")
    if len(data) > max_bytes:
        raise InvalidPost("image_too_large", f"{len(data)} bytes > limit {max_bytes}")
    return data


# --- path ------------------------------------------------------------------------------------------

def read_path(value: str, image_root: str, max_bytes: int) -> bytes:
    if not image_root:
        raise InvalidPost("path_not_allowed", "path images are disabled (no image_root)")
    try:
        root = Path(image_root).resolve(strict=True)
        target = (root / value).resolve(strict=False)  # an absolute value replaces root, then is checked
    except (OSError, ValueError, RuntimeError) as e:
        raise InvalidPost("path_not_allowed", f"{type(e).__name__}") from None
    if not target.is_relative_to(root) or target == root:
        raise InvalidPost("path_not_allowed", "path is outside the image root")
    return _read_regular_file(target, max_bytes)


def _read_regular_file(target: Path, max_bytes: int) -> bytes:
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InvalidPost("image_not_found", "no such file") from None
    except OSError as e:
        raise InvalidPost("path_not_allowed", type(e).__name__) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidPost("image_not_found", "not a regular file")
        if st.st_size > max_bytes:
            raise InvalidPost("image_too_large", f"{st.st_size} bytes > limit {max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise InvalidPost("image_not_found", type(e).__name__) from None
    finally:
        os.close(fd)
    return _checked_size(data, max_bytes)


# --- url -------------------------------------------------------------------------------------------

def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses, looking inside IPv6 forms that embed IPv4."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return False
    bad = (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
           or ip.is_reserved or ip.is_unspecified)
    return ip.is_global and not bad


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str          # path + query, never empty
    addresses: tuple[str, ...]


def check_url(url: str, policy: AddressPolicy = is_public_address, timeout_s: float = DNS_TIMEOUT_S) -> Target:
    """Parse and vet one URL: scheme, host, and every address the host resolves to (within timeout_s)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InvalidPost("url_not_allowed", f"unparseable url: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidPost("url_scheme_not_allowed", f"scheme {scheme or '(none)'!r} is not http(s)")
    host = parts.hostname
    if not host or parts.username is not None or parts.password is not None:
        raise InvalidPost("url_not_allowed", "url needs a host and must not carry credentials")
    port = port or (443 if scheme == "https" else 80)
    addresses = _resolve(host, port, timeout_s)
    for addr in addresses:
        if not policy(ipaddress.ip_address(addr.split("%", 1)[0])):
            raise InvalidPost("url_not_allowed", f"{host} resolves to a non-public address")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port, path, addresses)


def _domain(host: str) -> str:
    """The circuit key: a hostile zone answers slowly for every name under it, so a1.evil.test and
    a2.evil.test share one budget of stuck lookups."""
    labels = host.lower().rstrip(".").split(".")
    return ".".join(labels[-2:])


class Resolver:
    """getaddrinfo (or an injected ``lookup`` with its signature) bounded by a deadline, in a thread per
    lookup, with the per-domain and total caps of the module docstring."""

    def __init__(self, lookup: Callable | None = None, max_lookups: int = MAX_LOOKUPS,
                 max_stuck_per_domain: int = MAX_STUCK_PER_DOMAIN):
        self._lookup = lookup
        self.max_lookups = max_lookups
        self.max_stuck_per_domain = max_stuck_per_domain
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}  # domain -> lookups not finished yet

    def running(self) -> int:
        with self._lock:
            return sum(self._running.values())

    def resolve(self, host: str, port: int, timeout_s: float = DNS_TIMEOUT_S) -> tuple[str, ...]:
        domain = _domain(host)
        with self._lock:
            if self._running.get(domain, 0) >= self.max_stuck_per_domain:
                raise InvalidPost("fetch_timeout", f"earlier lookups under {domain!r} have not finished")
            if sum(self._running.values()) >= self.max_lookups:
                raise InvalidPost("fetch_timeout", "too many host name lookups still running")
            self._running[domain] = self._running.get(domain, 0) + 1
        future: concurrent.futures.Future = concurrent.futures.Future()
        lookup = self._lookup or socket.getaddrinfo  # read at call time: tests may replace socket's
        threading.Thread(target=self._run, args=(future, domain, lookup, host, port),
                         name=f"dns-{domain}"[:40], daemon=True).start()
        try:
            infos = future.result(timeout=max(timeout_s, 0.0))
        except concurrent.futures.TimeoutError:
            raise InvalidPost("fetch_timeout", "host name lookup exceeded the time limit") from None
        except (socket.gaierror, UnicodeError, OSError) as e:
            raise InvalidPost("fetch_failed", f"cannot resolve host: {e}") from None
        addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
        if not addresses:
            raise InvalidPost("fetch_failed", "host has no addresses")
        return addresses

    def _run(self, future: concurrent.futures.Future, domain: str, lookup: Callable, host: str, port: int) -> None:
        try:
            future.set_result(lookup(host, port, type=socket.SOCK_STREAM))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller (or dropped if it gave up)
            future.set_exception(e)
        finally:
            with self._lock:
                left = self._running[domain] - 1
                if left:
                    self._running[domain] = left
                else:
                    del self._running[domain]


resolver = Resolver()


def _resolve(host: str, port: int, timeout_s: float = DNS_TIMEOUT_S) -> tuple[str, ...]:
    return resolver.resolve(host, port, timeout_s)


def fetch_url(url: str, max_bytes: int, timeout_s: float, policy: AddressPolicy = is_public_address) -> bytes:
    """GET an image over http(s), re-vetting every redirect hop against `policy`."""
    deadline = time.monotonic() + timeout_s
    for _ in range(MAX_REDIRECTS + 1):
        target = check_url(url, policy, deadline - time.monotonic())
        status, location, body = _get(target, max_bytes, deadline)
        if status in (301, 302, 303, 307, 308):
            if not location:
                raise InvalidPost("fetch_failed", f"redirect {status} without Location")
            try:
                url = urljoin(url, location)
            except ValueError as e:  # e.g. "http://[::1/x": a hostile Location must not escape as ValueError
                raise InvalidPost("url_not_allowed", f"unparseable redirect: {e}") from None
            continue
        if status == 404 or status == 410:
            raise InvalidPost("image_not_found", f"HTTP {status}")
        if status != 200:
            raise InvalidPost("fetch_failed", f"HTTP {status}")
        return _checked_size(body, max_bytes)
    raise InvalidPost("fetch_failed", f"more than {MAX_REDIRECTS} redirects")


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP connection to a vetted address; Host header keeps the original name."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedTLSConnection(http.client.HTTPSConnection):
    """HTTPS to a vetted address; certificate and SNI checked against the original name."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _get(target: Target, max_bytes: int, deadline: float) -> tuple[int, str | None, bytes]:
    last_error: Exception | None = None
    for address in target.addresses:
        try:
            return _get_from(target, address, max_bytes, deadline)
        except (OSError, http.client.HTTPException, ssl.SSLError) as e:
            if isinstance(e, TimeoutError) or time.monotonic() >= deadline:
                raise InvalidPost("fetch_timeout", "image fetch exceeded the time limit") from None
            last_error = e
    raise InvalidPost("fetch_failed", f"{type(last_error).__name__}: {last_error}"[:200])


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline")
    return left


def _get_from(target: Target, address: str, max_bytes: int, deadline: float) -> tuple[int, str | None, bytes]:
    cls = _PinnedTLSConnection if target.scheme == "https" else _PinnedConnection
    conn = cls(target.host, target.port, address, _remaining(deadline))
    try:
        conn.request("GET", target.path, headers={"Accept": "image/*", "User-Agent": "affectstream"})
        sock = conn.sock  # getresponse() may drop conn.sock (Connection: close); the socket lives on
        watchdog = threading.Timer(_remaining(deadline), _shutdown, args=(sock,))
        watchdog.daemon = True
        watchdog.start()  # a server trickling headers byte by byte still meets the total deadline
        try:
            sock.settimeout(_remaining(deadline))
            resp = conn.getresponse()
            return _response(sock, resp, max_bytes, deadline)
        finally:
            watchdog.cancel()
    finally:
        conn.close()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer
        sock.shutdown(socket.SHUT_RDWR)


def _response(sock: socket.socket, resp: http.client.HTTPResponse, max_bytes: int,
              deadline: float) -> tuple[int, str | None, bytes]:
    try:
        if resp.status != 200:
            return resp.status, resp.getheader("Location"), b""
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise InvalidPost("image_too_large", f"Content-Length {length} > limit {max_bytes}")
        return 200, None, _read_capped(sock, resp, max_bytes, deadline)
    finally:
        resp.close()


def _read_capped(sock: socket.socket, resp: http.client.HTTPResponse, max_bytes: int,
                 deadline: float) -> bytes:
    """Read at most max_bytes; read1 does one socket read, so a trickling server meets the deadline."""
    chunks: list[bytes] = []
    total = 0
    while True:
        sock.settimeout(_remaining(deadline))
        chunk = resp.read1(_CHUNK)
        _remaining(deadline)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise InvalidPost("image_too_large", f"body exceeds limit {max_bytes}")
        chunks.append(chunk)
