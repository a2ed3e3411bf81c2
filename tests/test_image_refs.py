"""Image references: SSRF guard, limits, timeouts. Only ever connects to 127.0.0.1."""
import contextlib
import base64
import ipaddress
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from affectstream.streaming.worker.image_refs import check_url, fetch_url, is_public_address, load_image_bytes
from affectstream.streaming.worker.schemas import ImageRef, InvalidPost
from affectstream.streaming.worker.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        """Keep test output quiet."""

    def do_GET(self):
        path = self.path
        if path == "/img":
            self._send(200, PNG)
        elif path == "/big":
            self._send(200, b"x" * 5000)
        elif path == "/big-nolength":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"x" * 1000)
        elif path == "/stall":
            time.sleep(3)
            self._send(200, PNG)
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.01)
        elif path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", path.split("/redirect/", 1)[1].replace("_", "/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/empty":
            self._send(200, b"")
        else:
            self._send(404, b"nope")

    def _send(self, status, body):
        with contextlib.suppress(OSError):  # the client under test may hang up early
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@pytest.fixture(scope="module")
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def reason(fn, *args) -> str:
    with pytest.raises(InvalidPost) as info:
        fn(*args)
    return info.value.reason


def url_ref(url: str, **settings) -> str:
    return reason(load_image_bytes, ImageRef("url", url), Settings().replace(fetch_timeout_s=1.0, **settings))


LOCAL = Settings().replace(allow_private_urls=True, fetch_timeout_s=1.0, image_max_bytes=2000)


# --- SSRF -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost:8080/x", "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/", "http://172.16.0.1/", "http://192.168.1.1/", "http://[::1]/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:a9fe:a9fe]/", "http://0.0.0.0/", "http://2130706433/",
    "http://0177.0.0.1/", "http://0x7f.1/", "http://100.64.0.1/", "http://224.0.0.1/", "http://[fe80::1]/",
    "http://[fc00::1]/", "http://[2002:7f00:1::]/", "http://[64:ff9b::7f00:1]/", "http://127.1/",
])
def test_private_addresses_are_refused(url):
    assert url_ref(url) == "url_not_allowed"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a", "gopher://127.0.0.1:70/",
                                 "javascript:alert(1)", "//example.com/a", "data:image/png;base64,AAAA"])
def test_non_http_schemes_are_refused(url):
    assert url_ref(url) == "url_scheme_not_allowed"


@pytest.mark.parametrize("url", ["http:///nohost", "http://user:pw@93.184.216.34/", "http://[::1/"])
def test_malformed_or_credentialed_urls_are_refused(url):
    assert url_ref(url) == "url_not_allowed"


def test_public_address_policy():
    assert is_public_address(ipaddress.ip_address("93.184.216.34"))
    assert is_public_address(ipaddress.ip_address("2606:4700::1111"))
    for private in ("127.0.0.1", "10.0.0.1", "100.100.1.1", "::ffff:10.0.0.1", "::", "255.255.255.255"):
        assert not is_public_address(ipaddress.ip_address(private))


def test_check_url_vets_without_connecting():
    target = check_url("http://93.184.216.34:8080/a?b=1")
    assert (target.host, target.port, target.path, target.addresses) == ("93.184.216.34", 8080, "/a?b=1",
                                                                          ("93.184.216.34",))


def test_redirect_to_private_address_is_refused(http_server):
    only_test_server = lambda ip: str(ip) == "127.0.0.1"  # noqa: E731 - the first hop is allowed, nothing else
    for target in ("http:__169.254.169.254_latest", "http:__10.0.0.1_", "http:__[::1]_x", "file:___etc_passwd"):
        with pytest.raises(InvalidPost) as info:
            fetch_url(f"{http_server}/redirect/{target}", 2000, 1.0, only_test_server)
        assert info.value.reason in ("url_not_allowed", "url_scheme_not_allowed")


def test_redirects_are_followed_and_capped(http_server):
    assert fetch_url(f"{http_server}/redirect/_img", 2000, 1.0, lambda ip: True) == PNG
    assert reason(fetch_url, f"{http_server}/loop", 2000, 1.0, lambda ip: True) == "fetch_failed"


# --- fetch limits -----------------------------------------------------------------------------------

def test_allowed_fetch_returns_bytes(http_server):
    assert load_image_bytes(ImageRef("url", f"{http_server}/img"), LOCAL) == PNG


def test_byte_cap_by_content_length_and_by_stream(http_server):
    assert reason(load_image_bytes, ImageRef("url", f"{http_server}/big"), LOCAL) == "image_too_large"
    assert reason(load_image_bytes, ImageRef("url", f"{http_server}/big-nolength"), LOCAL) == "image_too_large"


def test_stalled_server_times_out(http_server):
    start = time.monotonic()
    assert reason(load_image_bytes, ImageRef("url", f"{http_server}/stall"), LOCAL) == "fetch_timeout"
    assert time.monotonic() - start < 2.0


def test_trickling_server_meets_total_timeout(http_server):
    start = time.monotonic()
    assert reason(load_image_bytes, ImageRef("url", f"{http_server}/trickle"), LOCAL) == "fetch_timeout"
    assert time.monotonic() - start < 2.0


def test_http_errors(http_server):
    assert reason(load_image_bytes, ImageRef("url", f"{http_server}/missing"), LOCAL) == "image_not_found"
    assert reason(load_image_bytes, ImageRef("url", f"{http_server}/empty"), LOCAL) == "image_empty"


def test_connection_refused_is_fetch_failed():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert reason(load_image_bytes, ImageRef("url", f"http://127.0.0.1:{port}/"), LOCAL) == "fetch_failed"


# --- b64 --------------------------------------------------------------------------------------------

def test_b64_decodes_strictly():
    s = Settings().replace(image_max_bytes=200)
    good = base64.b64encode(PNG).decode()
    assert load_image_bytes(ImageRef("b64", good), s) == PNG
    assert load_image_bytes(ImageRef("b64", "data:image/png;base64," + good), s) == PNG
    assert load_image_bytes(ImageRef("b64", good[:40] + "\n" + good[40:]), s) == PNG
    for bad in ("abc", "a$bc", "ab=c", "é=="):
        assert reason(load_image_bytes, ImageRef("b64", bad), s) == "bad_base64"
    assert reason(load_image_bytes, ImageRef("b64", "===="), s) in ("bad_base64", "image_empty")
    assert reason(load_image_bytes, ImageRef("b64", base64.b64encode(b"x" * 201).decode()), s) == "image_too_large"
    assert reason(load_image_bytes, ImageRef("b64", "A" * 10_000), s) == "image_too_large"


# --- path -------------------------------------------------------------------------------------------

@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.png", root / "escape.png")
    os.symlink(root / "sub" / "a.png", root / "inside.png")
    (root / "big.png").write_bytes(b"x" * 300)
    return root


def test_path_reads_only_under_root(image_root, tmp_path):
    s = Settings().replace(image_root=str(image_root), image_max_bytes=200)
    assert load_image_bytes(ImageRef("path", "sub/a.png"), s) == PNG
    assert load_image_bytes(ImageRef("path", str(image_root / "sub" / "a.png")), s) == PNG
    assert load_image_bytes(ImageRef("path", "inside.png"), s) == PNG  # symlink staying inside is fine
    for bad in ("../secret.png", "sub/../../secret.png", str(tmp_path / "secret.png"), "escape.png",
                "/etc/passwd", "a\0b", "."):
        assert reason(load_image_bytes, ImageRef("path", bad), s) == "path_not_allowed", bad
    assert reason(load_image_bytes, ImageRef("path", "nope.png"), s) == "image_not_found"
    assert reason(load_image_bytes, ImageRef("path", "sub"), s) == "image_not_found"
    assert reason(load_image_bytes, ImageRef("path", "big.png"), s) == "image_too_large"


def test_path_images_disabled_without_root():
    assert reason(load_image_bytes, ImageRef("path", "a.png"), Settings()) == "path_not_allowed"


# --- host name lookups: a hanging resolver (injected; no query leaves this machine) -----------------

def _hanging_resolver(release: threading.Event, calls: list[str]):
    def lookup(host, port, type=0):
        calls.append(host)
        if host.startswith("slow"):
            release.wait(30)
            raise OSError("no answer")
        return [(2, 1, 6, "", ("93.184.215.14", port))]
    return lookup


def test_eight_hanging_names_do_not_starve_a_good_name():
    from affectstream.streaming.worker.image_refs import Resolver

    release, calls = threading.Event(), []
    resolver = Resolver(_hanging_resolver(release, calls))
    try:
        slow = [f"slow{i}.example{i}.invalid" for i in range(12)]  # 12 distinct domains, more than 8 threads
        for host in slow:
            with pytest.raises(InvalidPost) as info:
                resolver.resolve(host, 80, 0.1)
            assert info.value.reason == "fetch_timeout"
        assert resolver.running() == 12  # each still holds its own thread
        t0 = time.monotonic()
        assert resolver.resolve("images.example.com", 443, 1.0) == ("93.184.215.14",)
        assert time.monotonic() - t0 < 0.3
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while resolver.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert resolver.running() == 0  # threads end once their lookups do


def test_a_domain_whose_lookups_hang_is_refused_without_new_threads():
    from affectstream.streaming.worker.image_refs import Resolver

    release, calls = threading.Event(), []
    resolver = Resolver(_hanging_resolver(release, calls), max_lookups=16, max_stuck_per_domain=2)
    try:
        reasons = [reason(resolver.resolve, f"slow{i}.evil.invalid", 80, 0.05) for i in range(50)]
        assert set(reasons) == {"fetch_timeout"}
        assert len(calls) == 2 and resolver.running() == 2  # refused at once while two still hang
        for i in range(20):  # other domains: the total cap holds the threads at 16
            reason(resolver.resolve, f"slow.d{i}.invalid", 80, 0.01)
        assert resolver.running() == 16
        assert reason(resolver.resolve, "fine.example.com", 80, 1.0) == "fetch_timeout"  # the total cap
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while resolver.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert resolver.resolve("fine.example.com", 80, 1.0) == ("93.184.215.14",)  # and then recovers


def test_fetch_url_resolves_a_good_name_while_many_hang(monkeypatch):
    """Through fetch_url and socket.getaddrinfo (replaced: the lookups hang, or answer a refused
    address), as the caption stage calls it."""
    import socket

    release, calls = threading.Event(), []
    monkeypatch.setattr(socket, "getaddrinfo", _hanging_resolver(release, calls))
    try:
        for i in range(10):
            assert reason(fetch_url, f"http://slow.h{i}.invalid/a.png", 1000, 0.1) == "fetch_timeout"
        t0 = time.monotonic()
        # answers promptly with a (public, unroutable in tests) address: policy refuses it, so no connection
        assert reason(fetch_url, "http://good.example.com/a.png", 1000, 1.0,
                      lambda ip: False) == "url_not_allowed"
        assert time.monotonic() - t0 < 0.3
    finally:
        release.set()
