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

With a model registry (setting ``model_registry``, ``model/registry.py``) the stage serves ``<root>/current``
(a promotion or rollback is that symlink's swap, picked up as above) and, on the same timer, reads
``rollout.json``: a candidate in ``shadow`` scores a share of posts as well (``shadow.py``; never counted),
in ``canary`` serves the posts of a share of partitions (``rollout.py``), and is rolled back automatically
past a threshold (``rollout.RolloutWatch``). Every model, deployed or candidate, is loaded by ``load_model``.
Each result's input (``post_input``: text, description, brands, label, version) goes to the sinks with it,
for the retraining job (the Redis sink stores it beside the first result; it is not part of the Result).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import faust
import orjson

from affectstream.model.registry import Registry
from affectstream.streaming.worker import metrics
from affectstream.streaming.worker.dlq import dlq_record
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.rollout import Candidate, CandidateSlot, canary_posts, tally_canary
from affectstream.streaming.worker.schemas import Post
from affectstream.streaming.worker.scoring import Scored, Target, post_targets, score  # noqa: F401 - re-exported
from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.shadow import WRITE_TIMEOUT_S, ShadowItem, ShadowWriter, shadowed
from affectstream.streaming.worker.sinks import SinkItem, build_sinks, sink_classes
from affectstream.streaming.worker.sinks.topic import send_all
from affectstream.streaming.worker.stage import Stage, StageBatch, parse_all, register_stage, run_every

log = logging.getLogger("affectstream.classify")

RELOAD_CHECK_S = 5.0
SHADOW_CALL_MIN = 16  # shadowed posts gathered before the candidate scores them (in one call)
MISMATCH_ACTIONS = ("warn", "reject")


@dataclass
class ClassifyBatch(StageBatch):
    """Results (each serialised once) for the sinks, and dead letters."""
    sink_items: list[SinkItem] = field(default_factory=list)
    # train/serve check: (post id, served captioner, trained captioner, rejected?) per mismatching post
    mismatches: list[tuple[str, str, str, bool]] = field(default_factory=list)
    shadow: list[ShadowItem] = field(default_factory=list)  # the candidate's results scored in this batch

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


def model_signature(model_dir: str) -> tuple | None:
    """What identifies the deployed weights on disk: resolved path + weights file mtime and size."""
    try:
        real = Path(model_dir).resolve()
        st = os.stat(real / "model.safetensors")
        return str(real), st.st_mtime_ns, st.st_size
    except OSError:
        return None


def post_input(post: Post, result: Result) -> bytes:
    """What the retraining job needs of a post (``post_input``): its text, description, brands, and the label
    and version that answered it."""
    return orjson.dumps({"text": post.text, "caption": post.caption, "brands": result.brands,
                         "label": result.label, "model": result.model})


class Classifying(Stage):
    """The classify stage without Kafka: ``await process(raw_values)`` -> ClassifyBatch.

    ``load_predictor`` is a zero-argument callable returning the deployed model: an object with ``.version``
    and ``.predict(pairs) -> list[Prediction]`` (and ``.config.captioner``, for the train/serve check; without
    it nothing is checked; ``.target_aware`` and ``.predict_targets(items)`` for per-brand predictions;
    without them each target gets the post-level prediction); it runs in the inference thread.
    ``load_model(model_dir)`` loads a candidate of the registry the same way (None: no candidates);
    ``send_shadow`` sends {"shadow": records} to the topic (None: shadow results go to Redis only).
    """

    def __init__(self, settings: Settings, load_predictor, *, watch: bool = True,
                 check_every_s: float = RELOAD_CHECK_S, load_model: Callable[[str], Any] | None = None,
                 send_shadow=None, redis_client: Any = None):
        if settings.classify.captioner_mismatch not in MISMATCH_ACTIONS:
            raise ValueError(f"AFFECTSTREAM_CAPTIONER_MISMATCH must be one of {', '.join(MISMATCH_ACTIONS)}, "
                             f"got {settings.classify.captioner_mismatch!r}")
        self.settings = settings
        self.load_predictor = load_predictor
        self.load_model = load_model
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.predictor = None
        self.slot: CandidateSlot | None = None     # the registry's candidate while a rollout is on
        self.registry = Registry(settings.classify.model_registry) if settings.classify.model_registry else None
        self.model_dir = serving_dir(settings)
        self.watch = watch
        self.check_every_s = check_every_s
        self.send_shadow = send_shadow
        self.redis_client = redis_client
        self.shadow_writer: ShadowWriter | None = None
        self._signature: tuple | None = None
        self._watcher: asyncio.Task | None = None
        self._shadow_write: asyncio.Task | None = None
        self._shadow_pending: list[tuple[Post, Result]] = []  # shadowed posts not yet scored by the candidate
        self._shadow_for: str | None = None                  # the candidate they were picked for
        self._warned_no_partitions = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.registry is not None and not self.registry.current():
            raise RuntimeError(f"model registry {self.registry.root} has no deployed version: promote one "
                               "(`affectstream model promote VERSION`)")
        self._signature = model_signature(self.model_dir)
        self.predictor = await loop.run_in_executor(self.pool, self.load_predictor)
        metrics.set_model_version(self.predictor.version)
        log.info("model %s loaded from %s", self.predictor.version, self.model_dir)
        if self.registry is not None:
            from affectstream.streaming.worker.redis_client import async_redis

            client = self.redis_client if self.redis_client is not None else async_redis(self.settings)
            self.shadow_writer = ShadowWriter(self.settings, self.send_shadow, client)
            self.slot = CandidateSlot(self.settings, self.registry, self.load_model, self.pool, client)
            await self.check_rollout()
        if self.watch:
            self._watcher = run_every(self.check_every_s, self.check, "model reload check")

    async def check(self) -> None:
        """The timer: the deployed model's directory, then the registry's rollout."""
        await self.maybe_reload()
        if self.registry is not None:
            await self.check_rollout()
        await self.flush_shadow()

    async def maybe_reload(self) -> bool:
        """Swap in a new model version when the directory changed; a failed load keeps the old one. A
        promoted candidate that is loaded already is taken over rather than loaded again."""
        signature = model_signature(self.model_dir)
        if signature is None or signature == self._signature:
            return False
        loop = asyncio.get_running_loop()
        if self.slot is not None and self.slot.holds(signature[0]):
            predictor = self.slot.candidate.predictor
        else:
            try:
                predictor = await loop.run_in_executor(self.pool, self.load_predictor)
            except Exception as e:  # noqa: BLE001 - a half-written directory: try again at the next check
                log.warning("model reload from %s failed (%s: %s); keeping %s",
                            self.model_dir, type(e).__name__, e, self.predictor.version)
                return False
        log.info("model reloaded: %s -> %s (%s)", self.predictor.version, predictor.version, signature[0])
        self.predictor, self._signature = predictor, signature
        metrics.set_model_version(predictor.version)
        return True

    async def check_rollout(self) -> None:
        await self.slot.check(self.predictor.version)

    @property
    def candidate(self) -> Candidate | None:
        """The registry's candidate while a rollout is on (None without a registry)."""
        return self.slot.candidate if self.slot is not None else None

    def observe(self, batch: ClassifyBatch, n_events: int, seconds: float) -> None:
        metrics.observe_classify_batch(batch, n_events, seconds, self.predictor.version)

    def log_batch(self, batch: ClassifyBatch, n_events: int, seconds: float) -> None:
        log.info("classified batch n=%d results=%d dlq=%d in %.0f ms (model %s)", n_events,
                 len(batch.sink_items), len(batch.dlq), 1000 * seconds, self.predictor.version)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        if self._shadow_write is not None:
            await asyncio.wait([self._shadow_write], timeout=WRITE_TIMEOUT_S)
        if self.shadow_writer is not None and self.redis_client is None:
            await self.shadow_writer.client.aclose()
        self.close()

    async def process_events(self, events: list) -> ClassifyBatch:
        """A micro-batch of faust events: the values, and each event's partition (canary routes by it)."""
        return await self.process([e.message.value for e in events],
                                  [getattr(e.message, "partition", None) for e in events])

    async def process(self, raws: list[bytes], partitions: list[int | None] | None = None) -> ClassifyBatch:
        out = ClassifyBatch()
        predictor, candidate = self.predictor, self.candidate  # this batch's models, whatever a reload does meanwhile
        parsed = self._check_captioner(
            parse_all(raws, self.settings, "classify", out.dlq, trusted_enrichment=True), predictor, out)
        if not parsed:
            return out
        served: list[tuple[Any, Scored] | None] = [None] * len(parsed)
        if candidate is not None and candidate.mode == "canary":
            await self._canary(candidate, parsed, raws, partitions, served)
        rest = [i for i, s in enumerate(served) if s is None]
        for i, scored in zip(rest, await self._score(predictor, [parsed[i][0] for i in rest])):
            served[i] = (predictor, scored)
        now_ms = int(time.time() * 1000)
        answered: list[tuple[Post, Result]] = []
        for (post, raw), (model, scored) in zip(parsed, served):
            failure = scored.failure
            if failure is not None:
                log.warning("dlq stage=classify reason=inference_failed id=%s", post.id)
                out.dlq.append(dlq_record(raw, "inference_failed", "classify",
                                          f"{type(failure).__name__}: {failure}", post.id))
                continue
            result = scored.result(post, model.version, now_ms)
            out.sink_items.append(SinkItem.of(result, post_input(post, result)))
            answered.append((post, result))
            if scored.overflow:
                log.info("targets capped id=%s kept=%d overflow=%d", post.id, len(scored.targets), scored.overflow)
        if candidate is not None and candidate.mode == "shadow":
            out.shadow = await self._gather_shadow(candidate, [(p, r) for p, r in answered
                                                               if shadowed(p.id, candidate.share)])
        return out

    async def _gather_shadow(self, candidate: Candidate, picked: list[tuple[Post, Result]], *,
                             flush: bool = False) -> list[ShadowItem]:
        """Gather shadowed posts (with the deployed model's results) across micro-batches and let the candidate
        score them in one call once ``SHADOW_CALL_MIN`` are waiting (or ``flush``): at a 10 % share a batch
        of 32 holds about 3, and a call that small costs more per post than the batch it rides on."""
        if self._shadow_for != candidate.version:  # gathered for another candidate: not this one's to score
            self._shadow_pending, self._shadow_for = [], candidate.version
        self._shadow_pending.extend(picked)
        if not self._shadow_pending or (len(self._shadow_pending) < SHADOW_CALL_MIN and not flush):
            return []
        gathered, self._shadow_pending = self._shadow_pending, []
        return await self._shadow(candidate, gathered)

    async def flush_shadow(self) -> list[ShadowItem]:
        """Score what is gathered now (the timer calls it: a quiet stream still gets its shadow results within
        ``check_every_s``); dropped when the candidate left shadow. Returns the candidate's new results."""
        candidate = self.candidate
        if candidate is None or candidate.mode != "shadow":
            self._shadow_pending = []
            return []
        return await self._gather_shadow(candidate, [], flush=True)

    async def _canary(self, candidate: Candidate, parsed: list[tuple[Post, bytes]], raws: list[bytes],
                      partitions: list[int | None] | None, served: list) -> None:
        """Serve the posts of the canary partitions with the candidate (``rollout.canary_posts``); a post it
        cannot classify is left to the deployed model (and counted against the candidate: ``dlq_rate``)."""
        if partitions is None:
            if not self._warned_no_partitions:
                self._warned_no_partitions = True
                log.warning("canary %s: this stage is not told the events' partitions; the deployed model "
                            "serves every post", candidate.version)
            return
        mine = canary_posts(candidate, parsed, raws, partitions)
        stats = self.slot.stats if self.slot is not None else None
        scored = await self._score(candidate.predictor, [parsed[i][0] for i in mine],
                                   tally=stats.call if stats else None)
        for i, s in zip(mine, scored):
            if s.failure is None:
                served[i] = (candidate.predictor, s)
        tally_canary(candidate, stats, [parsed[i][0].id for i, s in zip(mine, scored) if s.failure is not None],
                     len(mine), self.predictor.version)

    async def _shadow(self, candidate: Candidate, answered: list[tuple[Post, Result]]) -> list[ShadowItem]:
        """Score the shadowed posts with the candidate (one call) and write its results off the batch's path;
        whatever fails here is logged and counted, never raised."""
        now_ms = int(time.time() * 1000)
        stats = self.slot.stats if self.slot is not None else None
        try:
            scored = await self._score(candidate.predictor, [post for post, _ in answered], one_by_one=False,
                                       tally=stats.call if stats else None)
        except Exception as e:  # noqa: BLE001 - the shadow never fails the real batch
            scored = [Scored(e, [], 0, e)] * len(answered)
        failed = [post.id for (post, _), s in zip(answered, scored) if s.failure is not None]
        items = [ShadowItem(deployed, s.result(post, candidate.version, now_ms))
                 for (post, deployed), s in zip(answered, scored) if s.failure is None]
        if failed:
            metrics.observe_shadow(candidate.version, failed=len(failed))
            log.warning("shadow %s failed on %d posts; first id=%s", candidate.version, len(failed), failed[0])
        if items and self.shadow_writer is not None:
            if self._shadow_write is not None and not self._shadow_write.done():
                await self._shadow_write  # one write in flight at most: a slow Redis slows the shadow, not memory
            self._shadow_write = asyncio.create_task(self.shadow_writer.write(items))
        return items

    async def _score(self, predictor, posts: list[Post], **kwargs) -> list[Scored]:
        return await score(self.pool, predictor, posts, self.settings.brands.max_targets_per_post, **kwargs)

    def _check_captioner(self, parsed: list[tuple[Post, bytes]], predictor, out: ClassifyBatch
                         ) -> list[tuple[Post, bytes]]:
        """The train/serve check (module docstring, step 1): returns the posts to classify."""
        trained = trained_captioner(predictor)
        reject = self.settings.classify.captioner_mismatch == "reject"
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


def serving_dir(settings: Settings) -> str:
    """The directory the stage serves and watches: the registry's ``current`` link, else ``model_dir``."""
    return str(Registry(settings.classify.model_registry).current_dir()) if settings.classify.model_registry else settings.classify.model_dir


def load_model(settings: Settings, model_dir: str):
    """Every model the stage serves (deployed or candidate) is loaded here, on ``settings.classify.inference_backend``."""
    from affectstream.model.serving import load_predictor  # torch: imported by register(), before the loop runs
    predictor = load_predictor(model_dir, settings.classify.inference_backend, device=settings.worker.device, threads=settings.worker.threads,
                               top_k=settings.classify.top_k or None, lanes=settings.classify.onnx_lanes)
    log.info("model %s served on %s (%s)", predictor.version, predictor.backend, predictor.backend_reason)
    return predictor


def build_stage(settings: Settings, app: faust.App | None = None) -> Classifying:
    load = functools.partial(load_model, settings)
    send = functools.partial(send_all, app) if app is not None else None
    return Classifying(settings, lambda: load(serving_dir(settings)), load_model=load, send_shadow=send)


def register(app: faust.App, settings: Settings) -> str:
    """Attach the classify agent to ``app``; returns its name. An unknown sink in ``settings.classify.sinks`` raises
    ``SinkConfigError`` here, at start-up."""
    classes = sink_classes(settings)
    import affectstream.model.serving  # noqa: F401 - import torch now: importing it inside the agent blocks the loop

    return register_stage(app, settings, name="classify", source="enriched",
                          build=lambda: build_stage(settings, app),
                          batch_max=settings.classify.micro_batch_max, within=settings.classify.micro_batch_window_s,
                          sinks=build_sinks(settings, app, classes))
