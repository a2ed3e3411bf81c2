"""Hostile input at volume: nothing crashes the worker, nothing gets in through an image, nothing is lost.

Thousands of hostile messages (hypothesis-generated plus a hand-written corpus: invalid JSON and UTF-8,
wrong types, missing and huge ids, 10 MB texts, deep nesting, truncated / corrupt / polyglot images,
decompression bombs, animated GIF floods, SVG and other formats, URLs to loopback, link-local and
private ranges, redirects to them, ``file://``, path traversal) go through a real worker on the real
broker and Redis, interleaved with valid posts. Each hostile message ends in the dead-letter topic with
a reason, or as a text-only result flagged ``image_error``; every valid post gets its result; the
worker's memory stays bounded; and no request ever reaches a private address: every URL to a private or
loopback address must be refused with its reason (``url_not_allowed`` …, never a ``fetch_failed`` that a
connection attempt would give), and tripwire listeners on every IPv4 and IPv6 address of this machine, on
each port the corpus names, must see no connection at all.

CI runs about 2,000 messages; ``AFFECTSTREAM_FULL_FAULTS=1`` runs 10,000.

Every URL here is an IP literal (or refused before resolution): a host name would send a DNS query off
this machine, and the tests only ever talk to 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import io
import ipaddress
import os
import random
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings as hsettings, strategies as st
from PIL import Image

from affectstream.model.captioners.base import NoCaptioner
from affectstream.streaming.worker.caption import Captioning
from affectstream.streaming.worker.dlq import STAGES
from affectstream.streaming.worker.image_refs import fetch_url, is_public_address
from affectstream.streaming.tools.producer import produce_lines
from affectstream.bench.reliability import FULL_ENV, record
from affectstream.streaming.worker.schemas import REASONS, InvalidPost, parse_post
from tests.servers import local_http_server, settings_for
from tests.test_pipeline import (BRANDS, brand_counts, make_settings, read_topic, stored_ids,
                                 wait_for, workers)

FULL = os.environ.get(FULL_ENV, "") not in ("", "0")
N_MESSAGES = 10_000 if FULL else 2_000
VALID_EVERY = 10   # one valid post in ten messages


# --- a local web server: counts every request it gets (it must get none from the worker) ----------

class _Handler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args):
        """Keep test output quiet."""

    def do_GET(self):
        _Handler.hits.append(self.path)
        if self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to/"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            body = png_bytes(8)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


class Tripwire:
    """TCP listeners on 0.0.0.0 and [::] (so 127.0.0.0/8, ::1 and this machine's own addresses) on a free
    port and on the fixed ports the generated corpus names; records every connection they accept."""

    FIXED_PORTS = (1, 80, 8080)

    def __init__(self):
        self.connections: list[tuple[str, int]] = []
        self.sockets: list[socket.socket] = []
        first = self._listen(socket.AF_INET, "0.0.0.0", 0)
        self.port = first.getsockname()[1]
        self._listen(socket.AF_INET6, "::", self.port)
        for port in self.FIXED_PORTS:
            for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                try:
                    self._listen(family, host, port)
                except OSError:  # in use, or not root: that port stays unwatched (and is said so)
                    print(f"tripwire: cannot listen on [{host}]:{port}")
        self.ports = sorted({sock.getsockname()[1] for sock in self.sockets})

    def _listen(self, family: int, host: str, port: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(64)
        self.sockets.append(sock)
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        return sock

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, peer = sock.accept()
            except OSError:
                return
            self.connections.append((peer[0], sock.getsockname()[1]))
            conn.close()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture(scope="module")
def tripwire():
    wire = Tripwire()
    yield wire
    wire.close()


@pytest.fixture(scope="module")
def web():
    _Handler.hits.clear()
    with local_http_server(_Handler) as url:
        yield url


# --- image bytes -----------------------------------------------------------------------------------

def png_bytes(size: int = 16, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (a decompression bomb as far as headers go)."""
    raw = png_bytes(4)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


def real_png_bomb() -> bytes:
    """A genuinely compressed bomb: 12,000 x 12,000 black pixels (432 MB RGB) in a few hundred KB."""
    row = b"\0" + b"\0" * (12_000 * 3)
    data = zlib.compress(row * 12_000, 9)
    ihdr = struct.pack(">IIBBBBB", 12_000, 12_000, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    raw = encoded(Image.new("P", (4, 4)), "GIF")
    return raw[:6] + struct.pack("<HH", width, height) + raw[10:]


def animated_gif(frames: int) -> bytes:
    rng = random.Random(frames)
    images = [Image.new("P", (64, 64), rng.randrange(256)) for _ in range(frames)]
    return encoded(images[0], "GIF", save_all=True, append_images=images[1:], duration=10, loop=0)


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">' \
      b'<image href="file:///etc/passwd"/><script>alert(1)</script></svg>'


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the hand-written corpus -----------------------------------------------------------------------

# expected outcome: ("dlq", reason | None) or ("image_error", reason | None) or ("result", None);
# None accepts any reason from REASONS.
Expected = tuple[str, str | None]


def private_urls(base: str, trap: int) -> list[str]:
    """Private, loopback and link-local targets; the loopback ones (and 0.0.0.0, which reaches this
    machine) on the tripwire's port ``trap``, in every spelling getaddrinfo accepts."""
    return [
        f"{base}/img.png",                                   # our own server on loopback
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",  # cloud metadata
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/a.png", "http://10.255.255.53/a.png", "http://172.16.0.1/a.png",
        "http://192.168.1.1/a.png", "http://100.64.0.1/a.png", f"http://0.0.0.0:{trap}/a.png",
        f"http://127.0.0.2:{trap}/", f"http://127.0.0.53:{trap}/", f"http://127.255.255.254:{trap}/",
        f"http://[::1]:{trap}/a.png", f"http://[::ffff:127.0.0.1]:{trap}/a.png", "http://[::ffff:a9fe:a9fe]/",
        "http://[64:ff9b::a9fe:a9fe]/", "http://[2002:7f00:1::]/", "http://[fe80::1]/", "http://224.0.0.1/",
        f"http://2130706433:{trap}/a.png", f"http://0x7f000001:{trap}/a.png", f"http://127.1:{trap}/a.png",
        f"http://0177.0.0.1:{trap}/", "http://0251.0376.0251.0376/", "http://127.0.0.2:80/",
        "https://10.0.0.1/a.png",
    ]


def refused_before_any_lookup() -> list[tuple[str, str]]:
    return [
        ("file:///etc/passwd", "url_scheme_not_allowed"), ("file://localhost/etc/shadow", "url_scheme_not_allowed"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "url_scheme_not_allowed"), ("ftp://10.0.0.1/x", "url_scheme_not_allowed"),
        ("javascript:alert(1)", "url_scheme_not_allowed"), ("data:image/png;base64,AAAA", "url_scheme_not_allowed"),
        ("dict://127.0.0.1:11211/stats", "url_scheme_not_allowed"), ("//10.0.0.1/x", "url_scheme_not_allowed"),
        ("http://user:pw@1.2.3.4/x.png", "url_not_allowed"), ("http:///x.png", "url_not_allowed"),
        ("http://[::1/x", "url_not_allowed"), ("http://127.0.0.1:99999/x", "url_not_allowed"),
    ]


def hand_corpus(base: str, image_root: str, trap: int) -> list[tuple[bytes, Expected]]:
    """(message bytes, expected outcome). Ids are unique per message ("h<n>-...") where there is an id."""
    items: list[tuple[bytes, Expected]] = []
    n = [0]

    def post(expected: Expected, **fields) -> None:
        n[0] += 1
        body = {"id": f"h{n[0]}", "brands": ["acme"], **fields}
        items.append((orjson.dumps(body), expected))

    def raw(data: bytes, expected: Expected) -> None:
        items.append((data, expected))

    # not JSON, not UTF-8, not an object
    for data in (b"", b" ", b"{", b"}", b"not json", b"\x00\x01\x02", b"\xff\xfe\xfd", b"null", b"[]", b"42",
                 b'"a string"', b"true", b"[1,2,3]", b'{"id": "x", "text": "ok"', b'{"id": "x" "text": "ok"}',
                 b"{'id': 'single quotes'}", b'{"id":"x","text":NaN}', b'{"id":"x","text":"a"}{"id":"y"}',
                 b"\xef\xbb\xbf{\"id\":\"bom\",\"text\":\"x\"}"):
        raw(data, ("dlq", None))
    raw(b'{"id":"utf8-bad","text":"caf\xc3\x28 \xff"}', ("dlq", "invalid_utf8"))
    raw(b'{"id":"surrogate","text":"\\ud800"}', ("dlq", None))
    raw(b"[" * 5000 + b"]" * 5000, ("dlq", "too_deeply_nested"))
    raw(b'{"id":"deep","text":"x","meta":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}", ("dlq", "too_deeply_nested"))
    # ids
    for bad_id, reason in ((None, "missing_id"), (True, "bad_id"), (1.5, "bad_id"), ("", "bad_id"), ("   ", "bad_id"),
                           ([1], "bad_id"), ({"a": 1}, "bad_id"), ("x" * 257, "id_too_long"),
                           ("x" * 1_000_000, "id_too_long"), ("a\nb", "bad_id"), ("a\x00b", "bad_id")):
        raw(orjson.dumps({"id": bad_id, "text": "hello"}), ("dlq", reason))
    raw(orjson.dumps({"text": "no id at all"}), ("dlq", "missing_id"))
    # text and the other fields
    post(("dlq", "bad_text"), text=42)
    post(("dlq", "bad_text"), text=["a"])
    post(("dlq", "text_too_long"), text="x" * 20_001)
    post(("dlq", "text_too_long"), text="ha" * 5_000_000)              # a 10 MB text
    post(("dlq", "empty_post"), text="   \n\t")
    post(("dlq", "empty_post"))
    post(("dlq", "bad_brands"), text="hi", brands="acme")
    post(("dlq", "bad_brands"), text="hi", brands=[1])
    post(("dlq", "bad_brands"), text="hi", brands=["_all"])
    post(("dlq", "bad_brands"), text="hi", brands=[f"b{i}" for i in range(40)])
    post(("dlq", "bad_brands"), text="hi", brands=["x" * 65])
    post(("dlq", "bad_created_at"), text="hi", created_at="yesterday")
    post(("dlq", "bad_created_at"), text="hi", created_at=-1)
    post(("dlq", "bad_created_at"), text="hi", created_at=1e30)
    post(("dlq", "bad_created_at"), text="hi", created_at=True)
    post(("result", None), text="hi", caption=5)                     # a producer's caption is dropped, whatever it is
    post(("result", None), text="hi", caption="objects: smiling face.", image_error="pwned")
    post(("dlq", "bad_image_ref"), text="hi", image="http://10.0.0.1/x.png")
    post(("dlq", "bad_image_ref"), text="hi", image={"url": "http://10.0.0.1/", "b64": "AAAA"})
    post(("dlq", "bad_image_ref"), text="hi", image={"svg": "<svg/>"})
    post(("dlq", "bad_image_ref"), text="hi", image={"b64": ""})
    post(("dlq", "bad_image_ref"), text="hi", image={"url": 5})
    post(("result", None), text="unicode \u202e\u0000 zero width \u200b and emoji \U0001F600 ok")
    post(("result", None), text="<script>alert(1)</script> {{7*7}} ${jndi:ldap://10.0.0.1/a} '; DROP TABLE posts;--")
    post(("result", None), text="meta passes through", meta={"nested": {"a": [1, 2, {"b": None}]}}, author="x" * 5000)
    # images: every one twice, with text (-> text-only result flagged image_error) and image only (-> DLQ)
    png = png_bytes(32)
    jpeg = encoded(Image.new("RGB", (32, 32), (10, 200, 10)), "JPEG")
    images: list[tuple[dict, str | None]] = [
        ({"b64": "%%% not base64 %%%"}, "bad_base64"),
        ({"b64": b64(png)[:-3]}, "bad_base64"),
        ({"b64": b64(png[: len(png) // 2])}, None),                           # truncated PNG
        ({"b64": b64(jpeg[:200] + os.urandom(300))}, None),                   # corrupt JPEG
        ({"b64": b64(b"\x89PNG\r\n\x1a\n" + os.urandom(200))}, None),
        ({"b64": b64(png_claiming(50_000, 50_000))}, "image_too_many_pixels"),
        ({"b64": b64(real_png_bomb())}, "image_too_many_pixels"),
        ({"b64": b64(gif_claiming(65_535, 65_535))}, "image_too_many_pixels"),
        ({"b64": b64(SVG)}, "not_an_image"),
        ({"b64": b64(b"<html><body>not an image</body></html>")}, "not_an_image"),
        ({"b64": b64(encoded(Image.new("RGB", (8, 8)), "BMP"))}, "image_format_not_allowed"),
        ({"b64": b64(encoded(Image.new("RGB", (8, 8)), "TIFF"))}, "image_format_not_allowed"),
        ({"b64": b64(encoded(Image.new("RGB", (16, 16)), "ICO"))}, "image_format_not_allowed"),
        ({"b64": b64(b"\0" * 11 * 1024 * 1024)}, "image_too_large"),
        ({"path": "../../../../etc/passwd"}, "path_not_allowed"),
        ({"path": "/etc/passwd"}, "path_not_allowed"),
        ({"path": "link-to-passwd"}, "path_not_allowed"),
        ({"path": "sub/../../outside.png"}, "path_not_allowed"),
        ({"path": "a\x00b"}, "path_not_allowed"),
        ({"path": "."}, "path_not_allowed"),
        ({"path": "missing.png"}, "image_not_found"),
        ({"path": "fifo"}, "image_not_found"),
        ({"path": "sub"}, "image_not_found"),
        *(({"url": u}, "url_not_allowed") for u in private_urls(base, trap)),
        ({"url": f"{base}/to/http://169.254.169.254/"}, "url_not_allowed"),  # a redirector on loopback
        *(({"url": u}, reason) for u, reason in refused_before_any_lookup()),
    ]
    for image, reason in images:
        post(("image_error", reason), text="what do you think of this", image=image)
        post(("dlq", reason), text="", image=image)
    # images that are fine, however odd: polyglots decode as the image they are; a GIF flood as frame one
    for data in (png + b"PK\x03\x04" + os.urandom(64) + b"<script>alert(1)</script>",
                 encoded(Image.new("P", (8, 8)), "GIF") + b"/*<?php system($_GET['c']); ?>*/",
                 animated_gif(300), png):
        post(("result", None), text="fine", image={"b64": b64(data)})
    post(("result", None), text="an image from the allowed root", image={"path": "ok.png"})
    return items


def make_image_root(root) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ok.png").write_bytes(png_bytes(12))
    (root / "sub").mkdir(exist_ok=True)
    (root.parent / "outside.png").write_bytes(png_bytes(12))
    if not (root / "link-to-passwd").exists():
        os.symlink("/etc/passwd", root / "link-to-passwd")
    if not (root / "fifo").exists():
        os.mkfifo(root / "fifo")
    return str(root)


# --- hypothesis-generated messages -----------------------------------------------------------------

SAFE_URLS = ["http://10.1.2.3/x.png", "http://169.254.169.254/", "http://[::1]:8080/", "file:///etc/hosts",
             "http://127.0.0.1:1/a", "ftp://192.168.0.1/", "http://0.0.0.0/"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8).filter(lambda k: k != "image"), inner, max_size=4)),
    max_leaves=12)
image_values = st.one_of(
    json_values,
    st.builds(lambda u: {"url": u}, st.sampled_from(SAFE_URLS)),   # never a host name: no DNS off this box
    st.builds(lambda b: {"b64": base64.b64encode(b).decode()}, st.binary(max_size=300)),
    st.builds(lambda t: {"b64": t}, st.text(max_size=40)),
    st.builds(lambda t: {"path": t}, st.text(max_size=40)),
)
post_objects = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.text(max_size=20), st.integers(), json_values),
    "text": st.one_of(st.text(max_size=60), json_values),
    "image": image_values,
    "brands": st.one_of(st.lists(st.text(max_size=10), max_size=5), json_values),
    "created_at": st.one_of(st.integers(), st.text(max_size=30), st.floats(), json_values),
    "caption": st.one_of(st.text(max_size=20), json_values),
    "meta": json_values,
})


def _dumps(obj) -> bytes:
    """orjson, or the standard library for what orjson will not write (integers beyond 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        import json
        return json.dumps(obj).encode()


def _mangle(data: bytes, rnd: random.Random) -> bytes:
    how = rnd.randrange(4)
    if how == 0 and data:
        return data[: rnd.randrange(len(data))]                       # truncated
    if how == 1 and data:
        i = rnd.randrange(len(data))
        return data[:i] + bytes([rnd.randrange(128, 256)]) + data[i + 1:]  # invalid UTF-8 / a flipped byte
    return data


hostile_messages = st.one_of(
    st.binary(max_size=200),
    st.builds(_dumps, json_values),
    st.builds(_dumps, post_objects),
    st.builds(lambda o, r: _mangle(_dumps(o), r), post_objects, st.randoms(use_true_random=False)),
)


def generate(n: int) -> list[bytes]:
    """n hostile messages from hypothesis (derandomized: the same corpus every run)."""
    out: list[bytes] = []

    @hsettings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate], deadline=None,
               suppress_health_check=list(HealthCheck))
    @given(hostile_messages)
    def collect(message):
        out.append(message)

    collect()
    return out[:n]


# --- fast, in-process properties -------------------------------------------------------------------

@hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(hostile_messages)
def test_parse_post_rejects_anything_with_a_reason_and_never_raises_otherwise(message):
    try:
        parse_post(message, settings_for())
    except InvalidPost as e:
        assert e.reason in REASONS


@hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(hostile_messages, min_size=1, max_size=8))
def test_caption_stage_gives_every_message_exactly_one_outcome(messages):
    stage = Captioning(settings_for(fetch_timeout_s=1.0), NoCaptioner())
    try:
        batch = asyncio.run(stage.process(messages))
    finally:
        stage.close()
    assert len(batch.enriched) + len(batch.dlq) == len(messages)
    for _, value in batch.dlq:
        record_ = orjson.loads(value)
        assert record_["reason"] in REASONS and record_["stage"] in STAGES
    for _, value in batch.enriched:
        post = orjson.loads(value)
        assert post.get("image_error") is None or post["image_error"] in REASONS


def test_redirects_to_private_addresses_are_refused_at_every_hop(web, tripwire):
    """A server on 127.0.0.1 (let through by a test-only policy: nothing else private is) redirects to
    private and link-local addresses and other schemes; each hop is re-vetted before any connection: the
    refusal reason is the policy's, and no tripwire listener sees a connection."""
    loopback = ipaddress.ip_address("127.0.0.1")

    def policy(ip) -> bool:  # the test seam: our server only; everything else as in production
        return ip == loopback or is_public_address(ip)

    # other spellings of 127.0.0.1 pass the seam (the worker run refuses those)
    same_as_seam = ("127.1", "2130706433", "0x7f000001", "0177.0.0.1")
    expected = {u: "url_not_allowed" for u in private_urls(web, tripwire.port)
                if not u.startswith(web) and not any(f"//{h}:" in u or f"//{h}/" in u for h in same_as_seam)}
    # ("http:///x.png" as a Location is a same-host path by URL rules, not an escape; "//10.0.0.1/x" joins
    # the redirecting URL's scheme, so it is refused for its address)
    expected.update((u, "url_not_allowed" if u.startswith("//") else reason)
                    for u, reason in refused_before_any_lookup() if u != "http:///x.png")
    _Handler.hits.clear()
    tripwire.connections.clear()
    wrong = []
    for target, reason in expected.items():
        with pytest.raises(InvalidPost) as info:
            fetch_url(f"{web}/to/{target}", 1_000_000, 2.0, policy)
        if info.value.reason != reason:  # a fetch_failed here would mean a connection was attempted
            wrong.append((target, reason, str(info.value)))
    assert not wrong, wrong
    refused = len(expected)
    targets = list(expected)
    time.sleep(0.2)
    assert tripwire.connections == [], tripwire.connections
    # redirect chains back to the server itself: followed at most 3 times
    with pytest.raises(InvalidPost) as info:
        fetch_url(f"{web}/to/{web}/to/{web}/to/{web}/to/{web}/img.png", 1_000_000, 2.0, policy)
    assert info.value.reason == "fetch_failed"
    assert all(hit.startswith("/to/") for hit in _Handler.hits), "a redirect target was fetched"
    assert fetch_url(f"{web}/to//img.png", 1_000_000, 2.0, policy) == png_bytes(8)  # the seam itself works
    record("redirects from 127.0.0.1 to private/link-local/other schemes", messages=len(targets) + 1, results=0,
           dlq=refused + 1, lost=0, double_counted=0, notes="each hop re-vetted before connecting; max 3 redirects")


def test_a_hanging_name_lookup_meets_the_fetch_deadline(monkeypatch):
    """getaddrinfo cannot be interrupted; a DNS server that never answers must still not hold an image
    fetch (and so a caption batch) past fetch_timeout_s. The lookup is replaced by one that hangs: no
    query ever leaves this machine."""
    import socket

    from concurrent.futures import ThreadPoolExecutor

    release = threading.Event()

    def hanging_getaddrinfo(*args, **kwargs):
        release.wait(10)
        raise socket.gaierror("no answer")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    try:
        t0 = time.monotonic()
        with pytest.raises(InvalidPost) as info:
            fetch_url("http://images.example.invalid/a.png", 1_000_000, 0.5)
        assert info.value.reason == "fetch_timeout" and time.monotonic() - t0 < 1.5
        # many at once (more than the lookup pool's threads): every one still meets its deadline
        t0 = time.monotonic()
        with ThreadPoolExecutor(20) as pool:
            errors = list(pool.map(lambda i: _reason_of(f"http://h{i}.example.invalid/", 0.5), range(20)))
        assert set(errors) == {"fetch_timeout"} and time.monotonic() - t0 < 2.0
    finally:
        release.set()


def _reason_of(url: str, timeout_s: float) -> str:
    try:
        fetch_url(url, 1_000_000, timeout_s)
    except InvalidPost as e:
        return e.reason
    return "fetched"


# --- the volume run through a real worker ----------------------------------------------------------

def vm_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def valid_post(i: int) -> dict:
    return {"id": f"valid-{i}", "text": f"love the new screen #{i}", "brands": [BRANDS[i % len(BRANDS)]],
            "created_at": 1764410400000 + i}


@pytest.mark.integration
@pytest.mark.slow
def test_thousands_of_hostile_messages_never_crash_the_worker_nor_lose_a_valid_post(broker, redis_server,
                                                                                     tiny_model_dir, web, tmp_path,
                                                                                     tripwire):
    started = time.monotonic()
    image_root = make_image_root(tmp_path / "images")
    s = make_settings(broker, redis_server, tiny_model_dir, image_root=image_root, fetch_timeout_s=2.0,
                      caption_batch_max=32, batch_max=32)
    assert s.limits.allow_private_urls is False
    hand = hand_corpus(web, image_root, tripwire.port)
    n_valid = N_MESSAGES // VALID_EVERY
    n_generated = max(N_MESSAGES - n_valid - len(hand), 0)
    generated = generate(n_generated)
    hostile: list[tuple[bytes, Expected | None]] = hand + [(m, None) for m in generated]
    random.Random(3).shuffle(hostile)
    valid = [valid_post(i) for i in range(n_valid)]
    lines: list[bytes] = []
    step = max(len(hostile) // max(n_valid, 1), 1)
    for i, post in enumerate(valid):
        lines.extend(m for m, _ in hostile[i * step:(i + 1) * step])
        lines.append(orjson.dumps(post))
    lines.extend(m for m, _ in hostile[n_valid * step:])
    total = len(lines)
    warmup = [valid_post(100_000 + i) for i in range(40)]
    _Handler.hits.clear()
    tripwire.connections.clear()

    with workers(s, "all") as procs:
        worker = procs[0]
        produce_lines(s, [orjson.dumps(p) for p in warmup])
        wait_for(lambda: stored_ids(s) >= {p["id"] for p in warmup}, 120, procs, "the warm-up posts")
        rss_before = vm_rss_mb(worker.pid)
        half = total // 2

        def outcomes() -> int:
            return len(read_topic(s, s.kafka.topic_sentiment)) + len(read_topic(s, s.kafka.topic_dlq))
        produce_lines(s, lines[:half])
        wait_for(lambda: outcomes() >= half + len(warmup), 600 if FULL else 240, procs,
                 "an outcome for the first half", every_s=2.0)
        rss_mid = vm_rss_mb(worker.pid)
        produce_lines(s, lines[half:])
        wait_for(lambda: outcomes() >= total + len(warmup), 600 if FULL else 240, procs,
                 "an outcome for every message", every_s=2.0)
        time.sleep(1.0)
        rss_after = vm_rss_mb(worker.pid)
        assert worker.alive()
        results = [orjson.loads(r.value) for r in read_topic(s, s.kafka.topic_sentiment)]
        dead = [orjson.loads(r.value) for r in read_topic(s, s.kafka.topic_dlq)]

    # exactly one outcome per message
    assert len(results) + len(dead) == total + len(warmup)
    assert all(d["reason"] in REASONS and d["stage"] in STAGES and d["error"] is not None for d in dead)
    assert all(r["image_error"] is None or r["image_error"] in REASONS for r in results)
    # every valid post: a clean result, never a dead letter
    stored = stored_ids(s)
    valid_ids = {p["id"] for p in valid + warmup}
    lost = valid_ids - stored
    assert not lost, f"{len(lost)} valid posts lost"
    by_id = {r["id"]: r for r in results}
    assert all(by_id[i]["image_error"] is None for i in valid_ids)
    assert not valid_ids & {d["post_id"] for d in dead}
    # the hand-written corpus: each message's outcome and reason
    dead_by_id: dict[str, list[dict]] = collections.defaultdict(list)
    dead_by_raw: dict[bytes, list[dict]] = collections.defaultdict(list)
    for d in dead:
        dead_by_id[d["post_id"]].append(d)
        dead_by_raw[base64.b64decode(d["raw_b64"])].append(d)
    mismatches = []
    for message, (kind, reason) in hand:
        got: tuple[str, str | None]
        key = orjson.loads(message).get("id") if _is_object(message) else None
        key = key if isinstance(key, str) and key.startswith("h") and key[1:].isdigit() else None
        if key and key in by_id:
            got = ("image_error", by_id[key]["image_error"]) if by_id[key]["image_error"] else ("result", None)
        elif key and dead_by_id.get(key):
            got = ("dlq", dead_by_id[key][0]["reason"])
        elif dead_by_raw.get(message[:64 * 1024]):
            got = ("dlq", dead_by_raw[message[:64 * 1024]][0]["reason"])
        else:
            got = ("missing", None)
        if got[0] != kind or (reason is not None and got[1] != reason):
            mismatches.append((message[:120], (kind, reason), got))
    assert not mismatches, "\n".join(map(repr, mismatches[:20]))
    # nothing reached a private address: our loopback server saw no request at all
    assert _Handler.hits == [], _Handler.hits[:5]
    assert tripwire.connections == [], (tripwire.ports, tripwire.connections[:5])
    # every URL in this run is private, loopback or another scheme: refused by the policy before any
    # connection, so no outcome may say a fetch was attempted
    attempted = [r["id"] for r in results if r["image_error"] in ("fetch_failed", "fetch_timeout")]
    attempted += [d["post_id"] for d in dead if d["reason"] in ("fetch_failed", "fetch_timeout")]
    assert not attempted, attempted[:10]
    # counts: every distinct result counted once
    counts = brand_counts(s)
    counted = sum(counts["_all"].values())
    assert counted == len(stored), (counted, len(stored))
    # memory: bounded, and not growing with the number of messages
    grew = rss_after - rss_before
    flagged = sum(1 for r in results if r["image_error"])
    record(f"hostile input ({'full' if FULL else 'CI'} size): {len(hand)} hand-written + {len(generated)} generated,"
           f" {n_valid} valid interleaved", messages=total, results=len(results) - len(warmup),
           dlq=len(dead), lost=len(lost) + (total + len(warmup) - len(results) - len(dead)),
           double_counted=max(counted - len(stored), 0), seconds=time.monotonic() - started,
           notes=f"every message one outcome with a reason; {flagged} text-only with image_error; 0 requests reached "
                 f"127.0.0.1, 0 connections on any local address at ports {tripwire.ports}; "
                 f"worker RSS {rss_before:.0f} -> {rss_mid:.0f} -> {rss_after:.0f} MB")
    print(f"RSS MB before {rss_before:.0f} mid {rss_mid:.0f} after {rss_after:.0f}")
    assert grew < 400, f"worker RSS grew {grew:.0f} MB over {total} hostile messages"


def _is_object(message: bytes) -> bool:
    try:
        return isinstance(orjson.loads(message), dict)
    except orjson.JSONDecodeError:
        return False
