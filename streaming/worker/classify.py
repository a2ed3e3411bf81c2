"""Classify agent: ``posts-enriched`` -> Redis + ``sentiment``, in micro-batches.

Per micro-batch (``batch_max`` posts or ``batch_window_s`` seconds, whichever first):
1. parse (a rejected message -> DLQ, stage ``classify``); then the train/serve check: a post whose image was
   described by another captioner (its ``captioner``, stamped by the caption stage) than the one the model
   was trained on (``config.captioner`` of the deployed directory) is a mismatch — the model reads
   descriptions unlike those it learned from. Setting ``captioner_mismatch``: ``warn`` (default: classified
   anyway, logged once per batch) or ``reject`` (DLQ ``captioner_mismatch``); either way counted in
   ``affectstream_captioner_mismatch_total{served,trained}``. Text-only posts and posts without a stamp
   are never a mismatch;
2. predict all (post text, image description) pairs in one call, in the inference thread (one thread:
   torch runs its own intra-op threads); if the batch call raises, retry post by post, and a post that
   still fails -> DLQ ``inference_failed``;
3. the brands each post is about (``post_targets``: its mentions' brands in order of first mention, then
   the producer's asserted ``brands`` without a mention, at most ``max_targets_per_post``, the rest
   counted in ``targets_overflow``), and one more call for every (post, target) of the batch
   (``predict_targets``; the same post-by-post fallback and DLQ reason). A model that is not target-aware
   would answer each target with the post-level prediction, so for it that call is skipped and each
   target gets the post-level prediction (counts then equal the post-level ones, as before targets);
4. build each ``Result`` once, serialise it once, and hand the batch to every configured sink (setting
   ``sinks``, default ``redis,topic``: Redis — retried until it accepts, idempotent per post id — and the
   ``sentiment`` topic, awaiting the broker's acknowledgements; see ``sinks/``), dead letters to the DLQ;
5. only after all of them accepted, ack the batch's events so their offsets can be committed
   (``stage.register_stage``): at least once.

The model is loaded once per worker. A timer (every ``RELOAD_CHECK_S`` seconds, whether or not posts
arrive) checks whether the model directory changed — ``model_signature``: the resolved path and the size
and mtime of ``model.safetensors`` — and swaps the predictor without dropping a post: a batch already in
inference finishes with the model it started with, and every later result carries the new version id.
Deploy a new version atomically: write it to its own directory, then repoint a symlink
(``ln -s v2 tmp && mv -T tmp current``, i.e. ``os.replace``); a load that fails keeps the old model and is
tried again at the next check. The reload is logged (``model reloaded: A -> B``) and shown by the
``affectstream_model_info`` metric.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import faust

from affectstream.streaming.worker import metrics
from affectstream.streaming.worker.dlq import dlq_record
from affectstream.model.targets import TargetInput
from affectstream.streaming.worker.result import Result, target_entry
from affectstream.streaming.worker.schemas import Post
from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.sinks import SinkItem, build_sinks, sink_classes
from affectstream.streaming.worker.stage import Stage, StageBatch, parse_all, register_stage, run_every

if TYPE_CHECKING:
    from affectstream.streaming.worker.mentions import Mention

log = logging.getLogger("affectstream.classify")

RELOAD_CHECK_S = 5.0
MISMATCH_ACTIONS = ("warn", "reject")


@dataclass
class ClassifyBatch(StageBatch):
    """Results (each serialised once) for the sinks, and dead letters."""
    sink_items: list[SinkItem] = field(default_factory=list)
    # train/serve check: (post id, served captioner, trained captioner, rejected?) per mismatching post
    mismatches: list[tuple[str, str, str, bool]] = field(default_factory=list)

    @property
    def items(self) -> list[SinkItem]:
        return self.sink_items

    @property
    def results(self) -> list[Result]:
        return [item.result for item in self.sink_items]


def trained_captioner(predictor) -> str | None:
    """The captioner the deployed model was trained on (``AlignedConfig.captioner``); None when unknown."""
    captioner = getattr(getattr(predictor, "config", None), "captioner", None)
    return captioner if isinstance(captioner, str) and captioner else None


def captioner_mismatch(post: Post, trained: str | None) -> bool:
    """True when ``post``'s image was described by another captioner than ``trained``. Text-only posts
    (no image, no caption) and posts the caption stage did not stamp are never a mismatch."""
    if trained is None or post.captioner is None:
        return False
    if post.image is None and post.caption is None:
        return False
    return post.captioner != trained


@dataclass(frozen=True)
class Target:
    """A brand a post is about: its id, the name the model is told, the mentions that made it one (none for
    a brand only the producer asserted)."""
    brand: str
    name: str
    mentions: tuple[Mention, ...] = ()

    def model_input(self, post: Post) -> TargetInput:
        spans = tuple(tuple(m.span) for m in self.mentions if m.source == "text")
        return TargetInput(text=post.text, description=post.caption or "", target=self.name, spans=spans)


def post_targets(post: Post, cap: int) -> tuple[list[Target], int]:
    """The post's targets and how many were left out: the brands of its mentions in order of first mention,
    then its asserted ``brands`` that no mention named (in their order), at most ``cap``."""
    by_brand: dict[str, list[Mention]] = {}
    for mention in post.mentions:
        by_brand.setdefault(mention.brand, []).append(mention)
    for brand in post.brands:
        by_brand.setdefault(brand, [])
    brands = list(by_brand)
    kept = brands[:max(cap, 0)]
    return ([Target(b, by_brand[b][0].name if by_brand[b] else b, tuple(by_brand[b])) for b in kept],
            len(brands) - len(kept))


def model_signature(model_dir: str) -> tuple | None:
    """What identifies the deployed weights on disk: resolved path + weights file mtime and size."""
    try:
        real = Path(model_dir).resolve()
        st = os.stat(real / "model.safetensors")
        return str(real), st.st_mtime_ns, st.st_size
    except OSError:
        return None


class Classifying(Stage):
    """The classify stage without Kafka: ``await process(raw_values)`` -> ClassifyBatch.

    ``load_predictor`` is a zero-argument callable returning an object with ``.version`` and
    ``.predict(pairs) -> list[Prediction]`` (and ``.config.captioner``, for the train/serve check; without
    it nothing is checked; ``.target_aware`` and ``.predict_targets(items)`` for per-brand predictions;
    without them each target gets the post-level prediction); it runs in the inference thread.
    """

    def __init__(self, settings: Settings, load_predictor, *, watch: bool = True,
                 check_every_s: float = RELOAD_CHECK_S):
        if settings.captioner_mismatch not in MISMATCH_ACTIONS:
            raise ValueError(f"AFFECTSTREAM_CAPTIONER_MISMATCH must be one of {', '.join(MISMATCH_ACTIONS)}, "
                             f"got {settings.captioner_mismatch!r}")
        self.settings = settings
        self.load_predictor = load_predictor
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.predictor = None
        self.watch = watch
        self.check_every_s = check_every_s
        self._signature: tuple | None = None
        self._watcher: asyncio.Task | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._signature = model_signature(self.settings.model_dir)
        self.predictor = await loop.run_in_executor(self.pool, self.load_predictor)
        metrics.set_model_version(self.predictor.version)
        log.info("model %s loaded from %s", self.predictor.version, self.settings.model_dir)
        if self.watch:
            self._watcher = run_every(self.check_every_s, self.maybe_reload, "model reload check")

    async def maybe_reload(self) -> bool:
        """Swap in a new model version when the directory changed; a failed load keeps the old one."""
        signature = model_signature(self.settings.model_dir)
        if signature is None or signature == self._signature:
            return False
        loop = asyncio.get_running_loop()
        try:
            predictor = await loop.run_in_executor(self.pool, self.load_predictor)
        except Exception as e:  # noqa: BLE001 - a half-written directory: try again at the next check
            log.warning("model reload from %s failed (%s: %s); keeping %s",
                        self.settings.model_dir, type(e).__name__, e, self.predictor.version)
            return False
        log.info("model reloaded: %s -> %s (%s)", self.predictor.version, predictor.version, signature[0])
        self.predictor, self._signature = predictor, signature
        metrics.set_model_version(predictor.version)
        return True

    def observe(self, batch: ClassifyBatch, n_events: int, seconds: float) -> None:
        metrics.observe_classify_batch(batch, n_events, seconds, self.predictor.version)

    def log_batch(self, batch: ClassifyBatch, n_events: int, seconds: float) -> None:
        log.info("classified batch n=%d results=%d dlq=%d in %.0f ms (model %s)", n_events,
                 len(batch.sink_items), len(batch.dlq), 1000 * seconds, self.predictor.version)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def process(self, raws: list[bytes]) -> ClassifyBatch:
        out = ClassifyBatch()
        predictor = self.predictor
        parsed = self._check_captioner(
            parse_all(raws, self.settings, "classify", out.dlq, trusted_enrichment=True), predictor, out)
        if not parsed:
            return out
        posts = [post for post, _ in parsed]
        pairs = [(p.text, p.caption or "") for p in posts]
        post_level = [p[0] if isinstance(p, list) else p
                      for p in await self._infer(predictor.predict, [[pair] for pair in pairs])]
        targets = [post_targets(p, self.settings.max_targets_per_post) for p in posts]
        if getattr(predictor, "target_aware", False):
            groups = [[t.model_input(post) for t in ts] if not isinstance(pred, BaseException) else []
                      for post, (ts, _), pred in zip(posts, targets, post_level)]
            per_target = await self._infer(predictor.predict_targets, groups)
        else:  # the post-level prediction is what predict_targets would answer for every target
            per_target = [pred if isinstance(pred, BaseException) else [pred] * len(ts)
                          for (ts, _), pred in zip(targets, post_level)]
        now_ms = int(time.time() * 1000)
        for (post, raw), pred, (ts, overflow), target_preds in zip(parsed, post_level, targets, per_target):
            failure = next((e for e in (pred, target_preds) if isinstance(e, BaseException)), None)
            if failure is not None:
                log.warning("dlq stage=classify reason=inference_failed id=%s", post.id)
                out.dlq.append(dlq_record(raw, "inference_failed", "classify",
                                          f"{type(failure).__name__}: {failure}", post.id))
                continue
            entries = [target_entry(t.brand, tp, [m.to_dict() for m in t.mentions])
                       for t, tp in zip(ts, target_preds)]
            out.sink_items.append(SinkItem.of(Result.from_prediction(post, pred, predictor.version, now_ms,
                                                                     entries, overflow)))
            if overflow:
                log.info("targets capped id=%s kept=%d overflow=%d", post.id, len(ts), overflow)
        return out

    async def _infer(self, fn, groups: list[list]) -> list[list | BaseException]:
        """``fn`` over every item of every group in one call, in the inference thread; if that raises (or
        answers the wrong number of items), group by group, and a group that still fails gets its error."""
        loop = asyncio.get_running_loop()

        async def call(items: list) -> list:
            answers = await loop.run_in_executor(self.pool, fn, items)
            if len(answers) != len(items):
                raise RuntimeError(f"{len(answers)} predictions for {len(items)} inputs")
            return list(answers)

        flat = [item for group in groups for item in group]
        if not flat:
            return [[] for _ in groups]
        try:
            answers = await call(flat)
        except Exception as e:  # noqa: BLE001 - find the post that breaks the batch, keep the rest
            log.warning("batch inference failed (%s: %s); retrying %d posts one by one",
                        type(e).__name__, e, sum(1 for g in groups if g))
            out: list[list | BaseException] = []
            for group in groups:
                try:
                    out.append(await call(group) if group else [])
                except Exception as e1:  # noqa: BLE001
                    out.append(e1)
            return out
        split, start = [], 0
        for group in groups:
            split.append(answers[start:start + len(group)])
            start += len(group)
        return split

    def _check_captioner(self, parsed: list[tuple[Post, bytes]], predictor, out: ClassifyBatch
                         ) -> list[tuple[Post, bytes]]:
        """The train/serve check (module docstring, step 1): returns the posts to classify."""
        trained = trained_captioner(predictor)
        reject = self.settings.captioner_mismatch == "reject"
        keep = []
        for post, raw in parsed:
            if not captioner_mismatch(post, trained):
                keep.append((post, raw))
                continue
            out.mismatches.append((post.id, post.captioner, trained, reject))
            if reject:
                out.dlq.append(dlq_record(raw, "captioner_mismatch", "classify",
                                          f"described by {post.captioner!r}; model {predictor.version} was "
                                          f"trained on {trained!r}", post.id))
            else:
                keep.append((post, raw))
        for served in sorted({m[1] for m in out.mismatches}):
            ids = [m[0] for m in out.mismatches if m[1] == served]
            log.warning("captioner mismatch (%s): %d posts described by %r, model %s trained on %r; first id=%s",
                        "rejected" if reject else "warn", len(ids), served, predictor.version, trained, ids[0])
        return keep


def build_stage(settings: Settings) -> Classifying:
    from affectstream.model.predictor import BatchPredictor  # torch: imported by register(), before the loop runs

    def load():
        return BatchPredictor.from_directory(settings.model_dir, device=settings.device,
                                             threads=settings.threads, top_k=settings.top_k or None)

    return Classifying(settings, load)


def register(app: faust.App, settings: Settings) -> str:
    """Attach the classify agent to ``app``; returns its name. An unknown sink in ``settings.sinks`` raises
    ``SinkConfigError`` here, at start-up."""
    classes = sink_classes(settings)
    import affectstream.model.predictor  # noqa: F401 - import torch now: importing it inside the agent blocks the loop

    return register_stage(app, settings, name="classify", source="enriched", build=lambda: build_stage(settings),
                          batch_max=settings.batch_max, within=settings.batch_window_s,
                          sinks=build_sinks(settings, app, classes))
