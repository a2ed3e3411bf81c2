"""What the chaos run sends: valid posts (some with small inline images, reposted so the caption cache
is hit), duplicates (the same post sent twice) and hostile messages, each kind with the DLQ reason it
must end with. Pure and seeded: the same (n, seed) gives the same bytes in the same order."""
from __future__ import annotations

import base64
import io
import random
from dataclasses import dataclass, field

import orjson
from PIL import Image

from affectstream.bench.workload import sample_texts

BRANDS = ("acme", "nimbus", "voltcar", "orbit", "kettle")
BASE_MS = 1764410400000            # 2025-11-29 10:00 UTC: results spread over this hour's minutes
SPREAD_MS = 30 * 60_000
PRIVATE_URLS = ("http://10.0.0.5/a.png", "http://192.168.1.1/cam.jpg", "http://172.16.3.4/x.png",
                "http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:6379/", "http://[::1]/a.png",
                "http://0.0.0.0/a.png", "http://100.64.0.1/a.png")
# hostile kind -> the DLQ reasons that count as a correct refusal
HOSTILE_REASONS: dict[str, frozenset[str]] = {
    "invalid_json": frozenset({"invalid_json"}),
    "missing_id": frozenset({"missing_id"}),
    "bad_base64": frozenset({"bad_base64"}),
    "private_url": frozenset({"url_not_allowed"}),
    "oversize_text": frozenset({"text_too_long"}),
    "not_an_image": frozenset({"not_an_image", "image_corrupt"}),
    "not_an_object": frozenset({"not_an_object"}),
    "bad_brands": frozenset({"bad_brands"}),
    "empty_post": frozenset({"empty_post"}),
}


@dataclass(frozen=True)
class Hostile:
    kind: str
    raw: bytes

    @property
    def reasons(self) -> frozenset[str]:
        return HOSTILE_REASONS[self.kind]


@dataclass
class Workload:
    lines: list[bytes]                                   # in send order
    valid: dict[str, dict] = field(default_factory=dict)  # post id -> post (each id once)
    hostile: list[Hostile] = field(default_factory=list)
    duplicates: int = 0                                  # extra sends of a valid post id
    image_posts: int = 0

    @property
    def messages(self) -> int:
        return len(self.lines)


def png_b64(seed: int, size: int = 32) -> str:
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    img.putpixel((rng.randrange(size), rng.randrange(size)), (255, 255, 255))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def build(n: int, seed: int, *, hostile_fraction: float = 0.05, duplicate_fraction: float = 0.03,
          image_fraction: float = 0.3, distinct_images: int | None = None) -> Workload:
    """``n`` messages: ``hostile_fraction`` hostile, ``duplicate_fraction`` resends of earlier valid posts,
    the rest distinct valid posts (every one with text, so a failing captioner never sends one to the DLQ:
    it goes on text-only with ``image_error``)."""
    rng = random.Random(seed)
    n_hostile = round(n * hostile_fraction)
    n_dup = round(n * duplicate_fraction)
    n_valid = n - n_hostile - n_dup
    texts = sample_texts()
    pool = [png_b64(seed * 7919 + i) for i in range(distinct_images or max(10, n_valid // 40))]
    wl = Workload(lines=[])
    valid_lines = []
    for i in range(n_valid):
        post = {"id": f"c{seed}-{i}", "text": f"{rng.choice(texts)} #{i}",
                "brands": rng.sample(BRANDS, rng.choice((0, 1, 1, 1, 2))),
                "created_at": BASE_MS + rng.randrange(SPREAD_MS)}
        if rng.random() < image_fraction:  # half reposts (caption cache hits), half new images
            post["image"] = {"b64": rng.choice(pool) if rng.random() < 0.5 else png_b64(seed * 7919 + len(pool) + i)}
            wl.image_posts += 1
        wl.valid[post["id"]] = post
        valid_lines.append(orjson.dumps(post))
    hostile = [_hostile(rng, i, seed) for i in range(n_hostile)]
    wl.hostile = hostile
    lines = valid_lines + [h.raw for h in hostile]
    rng.shuffle(lines)
    # duplicates: a valid post sent again, later in the stream (sometimes much later)
    for _ in range(n_dup):
        original = rng.randrange(n_valid)
        at = rng.randrange(len(lines) + 1)
        lines.insert(at, valid_lines[original])
    wl.duplicates = n_dup
    wl.lines = lines
    return wl


def _hostile(rng: random.Random, i: int, seed: int) -> Hostile:
    kind = list(HOSTILE_REASONS)[i % len(HOSTILE_REASONS)]
    hid = f"h{seed}-{i}"
    if kind == "invalid_json":
        raw = orjson.dumps({"id": hid, "text": "cut short"})[:-rng.randrange(2, 8)]
    elif kind == "missing_id":
        raw = orjson.dumps({"text": f"who am I {hid}", "brands": ["acme"]})
    elif kind == "bad_base64":
        raw = orjson.dumps({"id": hid, "text": "", "image": {"b64": "@@not*base64!!" + hid}})
    elif kind == "private_url":
        raw = orjson.dumps({"id": hid, "text": "", "image": {"url": rng.choice(PRIVATE_URLS) + f"?{hid}"}})
    elif kind == "oversize_text":
        raw = orjson.dumps({"id": hid, "text": "spam " * 4001 + hid, "brands": ["acme"]})
    elif kind == "not_an_image":
        not_png = base64.b64encode(b"hello " + hid.encode()).decode()
        raw = orjson.dumps({"id": hid, "text": "", "image": {"b64": not_png}})
    elif kind == "not_an_object":
        raw = orjson.dumps([hid, 1, 2, 3])
    elif kind == "bad_brands":
        raw = orjson.dumps({"id": hid, "text": "brand soup", "brands": "acme"})
    else:  # empty_post
        raw = orjson.dumps({"id": hid, "text": "   ", "brands": ["acme"]})
    return Hostile(kind, raw)
