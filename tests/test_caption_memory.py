"""Memory per caption batch: a batch of large images is never decoded and held all at once.

The pixel cap is per image (40 M pixels, ~120 MB as RGB); a batch of 16 cache misses of that size would
hold ~1.7 GB. The caption stage decodes a batch in sub-batches of at most ``caption_batch_max_pixels``
decoded pixels (an image alone over the budget is its own sub-batch; nothing is dropped) and reduces each
image to its captioner's input size right after decoding.

The streamed test sends 16 distinct 6000 x 6000 PNGs (solid colours: ~110 KB files, 108 MB each decoded)
through a real caption worker process on the real broker and Redis and reads the worker's peak resident
set (VmHWM) before and after. Documented bound: the peak grows by less than ``PEAK_GROWTH_BOUND_MB``
(3 bytes x the 64 M pixel default budget = 192 MB, plus decoder and allocator slack). Measured on the
2-core dev box: 80 -> 2,835 MB before the budget (all 16 decoded at once), 80 -> 229 MB after."""
from __future__ import annotations

import base64
import struct
import time
import zlib

import orjson
import pytest

from affectstream.streaming.tools.producer import produce_lines
from tests.test_pipeline import make_settings, read_topic, wait_for, workers

SIDE = 6000
N_IMAGES = 16
PEAK_GROWTH_BOUND_MB = 350


def solid_png(colour: tuple[int, int, int], side: int = SIDE) -> bytes:
    """A side x side RGB PNG of one colour, written row by row (small file, never held decoded here)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    packer = zlib.compressobj(9)
    row = b"\0" + bytes(colour) * side
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def image_post(post_id: str, data: bytes) -> bytes:
    return orjson.dumps({"id": post_id, "text": "look at this", "image": {"b64": base64.b64encode(data).decode()}})


def test_pixel_budgeted_sub_batches_keep_order_and_never_drop_an_image():
    from affectstream.streaming.worker.caption import pixel_budgeted

    assert pixel_budgeted(list("abcde"), [10, 50, 30, 100, 5], 64) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert pixel_budgeted(list("abc"), [1, 1, 1], 64) == [["a", "b", "c"]]
    assert pixel_budgeted([], [], 64) == []


@pytest.mark.integration
def test_a_batch_of_large_images_keeps_the_caption_workers_peak_rss_bounded(broker, redis_server, tiny_model_dir):
    s = make_settings(broker, redis_server, tiny_model_dir, partitions=1, caption_batch_max=N_IMAGES,
                      caption_batch_window_s=3.0, caption_timeout_s=120.0)
    assert s.caption.max_decoded_pixels == 64_000_000 and s.limits.image_max_pixels >= SIDE * SIDE
    images = [solid_png((16 * i, 255 - 16 * i, 90)) for i in range(N_IMAGES)]
    with workers(s, "caption") as procs:
        worker = procs[0]
        produce_lines(s, [image_post("warm", solid_png((1, 2, 3), 64))])
        wait_for(lambda: read_topic(s, s.kafka.topic_enriched), 120, procs, "the warm-up post")
        time.sleep(1.0)
        before = peak_rss_mb(worker.pid)
        produce_lines(s, [image_post(f"big-{i}", data) for i, data in enumerate(images)])
        wait_for(lambda: len(read_topic(s, s.kafka.topic_enriched)) >= N_IMAGES + 1, 300, procs, "every large image post",
                 every_s=2.0)
        after = peak_rss_mb(worker.pid)
        out = [orjson.loads(r.value) for r in read_topic(s, s.kafka.topic_enriched)]
    print(f"caption worker peak RSS: {before:.0f} MB warm, {after:.0f} MB after {N_IMAGES} x {SIDE}x{SIDE} PNGs")
    big = [p for p in out if p["id"].startswith("big-")]
    assert len(big) == N_IMAGES and all(p.get("image_error") is None for p in big), big[:2]
    assert after - before < PEAK_GROWTH_BOUND_MB, f"peak RSS grew {after - before:.0f} MB ({before:.0f} -> {after:.0f})"
