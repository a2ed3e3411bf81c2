"""Caption agent: ``posts`` -> ``posts-enriched`` (image posts gain a ``caption``), bad input -> DLQ.

Per micro-batch:
1. parse every message; a rejected one goes to the DLQ (stage ``parse``) with its reason. Producers are
   untrusted: a ``caption``, ``image_error`` or ``captioner`` they put on a post is dropped (schemas
   docstring); only this stage writes those fields, and ``image_error`` is always one of
   ``IMAGE_ERROR_REASONS``;
2. text-only posts pass straight through, in their own lane: in the worker (``process_parts``) they and the
   parse DLQ records are delivered at once, while the batch's images are fetched and described, and the
   image posts follow when they are done; the batch is acked after both (``stage.run_stage``);
3. image posts: load the bytes (base64 / URL with the SSRF guard / path) in an I/O thread pool, look the
   sha256 up in the Redis caption cache, decode and describe the misses in the captioner's own thread
   (the GPU when the device setting gives one), each describe call bounded by ``caption_timeout_s``.
   Memory: images are decoded reduced towards the captioner's ``max_input_side``, and the misses are
   split into sub-batches of at most ``caption_batch_max_pixels`` pixels decoded at once (counted from
   the headers; an image over the budget alone is a sub-batch of its own), each decoded, described and
   released before the next: a batch of 16 images at the 40 M pixel cap never holds 16 decoded images.
   A described post is stamped ``captioner`` = the captioner's id (``name``; a cache hit too: the cache is
   per captioner), which the classify stage checks against the model's trained captioner;
4. an image that cannot be loaded, decoded or described never loses its post: a post with text goes on
   text-only with ``image_error`` set to the reason; a post with no text at all has nothing left to
   classify, so it goes to the DLQ (stage ``caption``) with that reason;
5. mentions (when ``brands_file`` is set): every forwarded post, text-only ones too, gets the tracked brands
   named in its text (source ``text``) and in its caption (source ``image``), at most
   ``max_mentions_per_post``, the rest counted in ``mentions_overflow`` (``mentions.MentionDetector``). The
   brands file is loaded at start (a bad file stops the worker with every error listed) and checked every
   ``RELOAD_CHECK_S`` seconds, like the model in the classify stage: a changed file is reloaded; a bad new
   file keeps the previous brands and is logged once.

Offsets (``stage.register_stage``): events are taken in micro-batches (``stage.MicroBatches``: at once
when the stage is idle) and acked only after every forward and DLQ send of the batch has been
acknowledged by the broker (at least once; the classify stage is idempotent in Redis). Each batch is
logged on one line (``captioned batch n=… described=… cache_hits=…``) and counted on /metrics.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncGenerator

import faust

from affectstream.model.images import ImageError, ImageLimits, decode_image, decoded_pixels, image_sha256
from affectstream.streaming.worker import metrics
from affectstream.streaming.worker.caption_cache import CaptionCache
from affectstream.streaming.worker.dlq import dlq_record
from affectstream.streaming.worker.image_refs import load_image_bytes
from affectstream.streaming.worker.mentions import MentionDetector
from affectstream.streaming.worker.schemas import IMAGE_ERROR_REASONS, InvalidPost, Post
from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.stage import Record, Stage, StageBatch, parse_all, register_stage, run_every

log = logging.getLogger("affectstream.caption")

RELOAD_CHECK_S = 5.0  # how often the brands file is checked for changes


@dataclass
class CaptionBatch(StageBatch):
    """What one micro-batch turned into: messages for ``posts-enriched`` and for the DLQ."""
    enriched: list[Record] = field(default_factory=list)
    cache_hits: int = 0
    described: int = 0

    def records(self) -> dict[str, list[Record]]:
        return {"enriched": self.enriched, "dlq": self.dlq}


@dataclass
class _Pending:
    post: Post
    raw: bytes
    data: bytes | None = None
    sha: str | None = None


class Captioning(Stage):
    """The caption stage without Kafka: ``await process(raw_values)`` -> CaptionBatch.

    ``captioner`` is anything with ``.name`` and ``.describe(list[PIL.Image]) -> list[str]``; ``cache`` is
    anything with ``async get_caption(sha, name)`` / ``async put_caption(sha, name, caption)`` (a
    ``caption_cache.CaptionCache``) or None.
    """

    def __init__(self, settings: Settings, captioner, cache=None, io_threads: int = 4, *,
                 check_every_s: float = RELOAD_CHECK_S):
        self.settings = settings
        self.captioner = captioner
        self.cache = cache
        self.limits = ImageLimits(max_bytes=settings.limits.image_max_bytes, max_pixels=settings.limits.image_max_pixels)
        self.io_pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="image-io")
        # one decoding thread: memory freed after a large decode stays in the freeing thread's malloc arena,
        # so decoding in turn on 4 threads held ~4 x one decode (measured: 570 vs 140 MB over 16 large PNGs)
        self.decode_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-decode")
        # one thread owns the captioner: models are not re-entrant, and torch has its own threads
        self.model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner")
        self._stuck = None  # concurrent Future of a describe call that timed out and still runs
        self.max_side = getattr(captioner, "max_input_side", None)  # decode reduced towards it
        self.mentions = (MentionDetector(settings.brands.file, settings.brands.max_mentions_per_post)
                         if settings.brands.file else None)
        self.check_every_s = check_every_s
        self._watcher: asyncio.Task | None = None

    async def start(self) -> None:
        log.info("captioner %s ready", self.captioner.name)
        if self.mentions is not None:
            matcher = await asyncio.get_running_loop().run_in_executor(None, self.mentions.load)
            log.info("brands file %s: %s", self.settings.brands.file, matcher.catalog.summary())
            self._watcher = run_every(self.check_every_s, self.maybe_reload_brands, "brands file reload check")

    async def maybe_reload_brands(self) -> bool:
        if self.mentions is None:
            return False
        return await asyncio.get_running_loop().run_in_executor(None, self.mentions.maybe_reload)

    def observe(self, batch: CaptionBatch, n_events: int, seconds: float) -> None:
        metrics.observe_caption_batch(batch, n_events, seconds)

    def log_batch(self, batch: CaptionBatch, n_events: int, seconds: float) -> None:
        log.info("captioned batch n=%d forwarded=%d dlq=%d described=%d cache_hits=%d in %.0f ms", n_events,
                 len(batch.enriched), len(batch.dlq), batch.described, batch.cache_hits, 1000 * seconds)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self.io_pool.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.model_pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        self.close()
        if self.cache is not None:
            await self.cache.close()

    async def process(self, raws: list[bytes]) -> CaptionBatch:
        """The whole micro-batch at once (tests and tools; the worker takes it in parts, ``process_parts``)."""
        out = CaptionBatch()
        pending = self._text_lane(raws, out)
        if pending:
            await self._caption(pending, out)
        return out

    async def process_parts(self, events: list) -> AsyncGenerator[CaptionBatch, None]:
        """The text lane (module docstring, step 2): the text-only posts and parse dead letters first, then,
        once described, the image posts. A batch without images is one part; nothing is yielded empty."""
        text = CaptionBatch()
        pending = self._text_lane([e.message.value for e in events], text)
        if not pending:
            yield text
            return
        if text.enriched or text.dlq:
            yield text
        images = CaptionBatch()
        await self._caption(pending, images)
        yield images

    def _text_lane(self, raws: list[bytes], out: CaptionBatch) -> list[_Pending]:
        """Parse the batch: rejects to ``out.dlq``, text-only posts forwarded to ``out.enriched``; returns the
        image posts, still to be captioned."""
        pending: list[_Pending] = []
        for post, raw in parse_all(raws, self.settings, "parse", out.dlq, trusted_enrichment=False):
            if post.image is None:
                out.enriched.append(self._forward(post))
            else:
                pending.append(_Pending(post, raw))
        return pending

    async def _caption(self, pending: list[_Pending], out: CaptionBatch) -> None:
        loop = asyncio.get_running_loop()
        loaded = await asyncio.gather(
            *(loop.run_in_executor(self.io_pool, self._load, p) for p in pending), return_exceptions=True)
        ok: list[_Pending] = []
        for p, result in zip(pending, loaded):
            if isinstance(result, BaseException):
                self._image_failed(p, _reason(result, "fetch_failed"), str(result), out)
            else:
                p.data, p.sha = result
                ok.append(p)
        # cache: a reposted image is described once (per captioner)
        captions: dict[str, str] = {}
        if self.cache is not None and ok:
            shas = sorted({p.sha for p in ok})
            found = await asyncio.gather(
                *(self.cache.get_caption(sha, self.captioner.name) for sha in shas), return_exceptions=True)
            for sha, caption in zip(shas, found):
                if isinstance(caption, str):
                    captions[sha] = caption
                    out.cache_hits += sum(p.sha == sha for p in ok)
        misses: dict[str, bytes] = {}
        for p in ok:
            if p.sha not in captions:
                misses.setdefault(p.sha, p.data)
        failed: dict[str, tuple[str, str]] = {}
        if misses:
            fresh, failed = await self._describe(misses)
            captions.update(fresh)
            out.described += len(fresh)
            if self.cache is not None:
                await asyncio.gather(
                    *(self.cache.put_caption(sha, self.captioner.name, c) for sha, c in fresh.items()),
                    return_exceptions=True)
        for p in ok:
            if p.sha in captions:
                p.post.caption = captions[p.sha] or None
                p.post.captioner = self.captioner.name  # the train/serve check (classify) reads it
                out.enriched.append(self._forward(p.post))
            else:
                reason, error = failed.get(p.sha, ("caption_failed", "no caption"))
                self._image_failed(p, reason, error, out)

    def _load(self, p: _Pending) -> tuple[bytes, str]:
        data = load_image_bytes(p.post.image, self.settings)
        return data, image_sha256(data)

    async def _describe(self, misses: dict[str, bytes]) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
        """Describe every miss, one pixel-budgeted sub-batch at a time (module docstring, step 3).
        Returns (captions by sha, (reason, error) by sha for the ones that failed)."""
        loop = asyncio.get_running_loop()
        shas = list(misses)
        costs = await asyncio.gather(
            *(loop.run_in_executor(self.decode_pool, _pixels, misses[s], self.limits, self.max_side) for s in shas))
        captions: dict[str, str] = {}
        failed: dict[str, tuple[str, str]] = {}
        for group in pixel_budgeted(shas, costs, self.settings.caption.max_decoded_pixels):
            fresh, bad = await self._describe_batch({s: misses[s] for s in group})
            captions.update(fresh)
            failed.update(bad)
        return captions, failed

    async def _describe_batch(self, misses: dict[str, bytes]) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
        """Decode (I/O pool) then describe as one batch (captioner thread), with a time limit."""
        loop = asyncio.get_running_loop()
        shas = list(misses)
        decoded = await asyncio.gather(
            *(loop.run_in_executor(self.decode_pool, decode_image, misses[s], self.limits, self.max_side)
              for s in shas),
            return_exceptions=True)
        failed: dict[str, tuple[str, str]] = {}
        images, image_shas = [], []
        for sha, img in zip(shas, decoded):
            if isinstance(img, BaseException):
                failed[sha] = (_reason(img, "image_corrupt"), str(img))
            else:
                images.append(img)
                image_shas.append(sha)
        if not images:
            return {}, failed
        timeout = self.settings.caption.timeout_s
        if self._stuck is not None and not self._stuck.done():
            # the captioner thread is still inside a call that timed out: do not queue behind it
            log.warning("captioner still busy with a timed-out call; %d images go on text-only", len(images))
            failed.update({s: ("caption_timeout", "captioner busy with a call that timed out") for s in image_shas})
            return {}, failed
        self._stuck = None
        try:
            texts = await self._call_captioner(images, timeout)
            if len(texts) != len(images):
                raise RuntimeError(f"captioner returned {len(texts)} descriptions for {len(images)} images")
            return dict(zip(image_shas, (str(t) for t in texts))), failed
        except asyncio.TimeoutError:
            # the thread cannot be interrupted; its late answer is dropped
            log.warning("caption batch of %d timed out after %.1fs", len(images), timeout)
            failed.update({s: ("caption_timeout", f"no description within {timeout}s") for s in image_shas})
            return {}, failed
        except Exception as e:  # noqa: BLE001 - one bad image must not fail its neighbours: retry one by one
            log.warning("caption batch failed (%s: %s); retrying per image", type(e).__name__, e)
        captions: dict[str, str] = {}
        for sha, img in zip(image_shas, images):
            if self._stuck is not None and not self._stuck.done():
                failed[sha] = ("caption_timeout", "captioner busy with a call that timed out")
                continue
            try:
                text = await self._call_captioner([img], timeout)
                captions[sha] = str(text[0])
            except asyncio.TimeoutError:
                failed[sha] = ("caption_timeout", f"no description within {timeout}s")
            except Exception as e:  # noqa: BLE001
                failed[sha] = ("caption_failed", f"{type(e).__name__}: {e}")
        return captions, failed

    async def _call_captioner(self, images: list, timeout: float) -> list:
        """``describe`` in the captioner thread, bounded by ``timeout``. A call that runs past it cannot be
        interrupted: it is remembered in ``_stuck`` so later batches fail fast instead of queueing behind it."""
        future = self.model_pool.submit(self.captioner.describe, images)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):  # cancelled: the batch's other part failed
            if not future.cancel():  # already running: its late answer is dropped
                self._stuck = future
            raise

    def _forward(self, post: Post) -> Record:
        """The record for posts-enriched, with the post's mentions when brands are tracked (step 5)."""
        if self.mentions is not None:
            post.mentions, post.mentions_overflow = self.mentions.detect(post.text, post.caption)
            if post.mentions_overflow:
                log.info("mentions capped id=%s kept=%d overflow=%d", post.id, len(post.mentions),
                         post.mentions_overflow)
        return _forward(post)

    def _image_failed(self, p: _Pending, reason: str, error: str, out: CaptionBatch) -> None:
        if reason not in IMAGE_ERROR_REASONS:  # the classify stage rejects any other image_error
            reason, error = "caption_failed", f"{reason}: {error}"
        if p.post.text.strip():
            log.info("image_error reason=%s id=%s: forwarding text-only", reason, p.post.id)
            p.post.image_error = reason
            out.enriched.append(self._forward(p.post))
        else:
            log.warning("dlq stage=caption reason=%s id=%s (image-only post)", reason, p.post.id)
            out.dlq.append(dlq_record(p.raw, reason, "caption", error, p.post.id))


def _pixels(data: bytes, limits: ImageLimits, max_side: int | None) -> int:
    """What decoding ``data`` will allocate, in pixels; 0 for a bad header (decoding reports why)."""
    try:
        return decoded_pixels(data, limits, max_side)
    except ImageError:
        return 0


def pixel_budgeted(keys: list[str], costs: list[int], budget: int) -> list[list[str]]:
    """Split ``keys`` in order into groups whose costs sum to at most ``budget``; a key costing more than
    the budget alone is a group of its own (never dropped)."""
    groups: list[list[str]] = []
    total = budget + 1
    for key, cost in zip(keys, costs):
        if groups and total + cost <= budget:
            groups[-1].append(key)
            total += cost
        else:
            groups.append([key])
            total = cost
    return groups


def _forward(post: Post) -> Record:
    return post.id.encode("utf-8"), post.to_json()


def _reason(exc: BaseException, default: str) -> str:
    if isinstance(exc, (InvalidPost, ImageError)):
        return exc.reason
    return default


def build_stage(settings: Settings) -> Captioning:
    from affectstream.model.captioners import build_captioner

    captioner = build_captioner(settings.caption.captioner, settings.worker.device,
                                trust_remote_code=settings.caption.trust_remote_code)
    return Captioning(settings, captioner, cache=CaptionCache(settings))


def register(app: faust.App, settings: Settings) -> str:
    """Attach the caption agent to ``app``; returns its name."""
    import affectstream.model.captioners  # noqa: F401 - heavy imports now, not on the event loop

    return register_stage(app, settings, name="caption", source="posts", build=lambda: build_stage(settings),
                          batch_max=settings.caption.micro_batch_max, within=settings.caption.micro_batch_window_s)
