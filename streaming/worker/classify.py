"""Classify agent: ``posts-enriched`` -> Redis + ``sentiment``, in micro-batches.

Per micro-batch (``batch_max`` posts or ``batch_window_s`` seconds, whichever first):
1. parse (a rejected message -> DLQ, stage ``classify``);
2. predict all (post text, image description) pairs in one call, in the inference thread (one thread:
   torch runs its own intra-op threads); if the batch call raises, retry post by post, and a post that
   still fails -> DLQ ``inference_failed``;
3. write the results to Redis (the sink retries until Redis accepts; idempotent per post id), send them to
   ``sentiment`` and wait for the broker's acknowledgements;
4. only then ack the batch's events, so their offsets can be committed: at least once.

The model is loaded once per worker. Between batches the agent checks (every few seconds) whether the
model directory changed — a new ``model.safetensors`` or a ``models/default`` symlink pointing at a new
version — and swaps the predictor without dropping a post.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import faust
import orjson

from affectstream.streaming.worker import metrics
from affectstream.streaming.worker.dlq import dlq_record, post_id_guess
from affectstream.streaming.worker.schemas import InvalidPost, make_result, parse_post
from affectstream.streaming.worker.settings import Settings

log = logging.getLogger("affectstream.classify")

Record = tuple[bytes | None, bytes]
RELOAD_CHECK_S = 5.0


@dataclass
class ClassifyBatch:
    results: list[dict] = field(default_factory=list)
    dlq: list[Record] = field(default_factory=list)


def model_signature(model_dir: str) -> tuple | None:
    """What identifies the deployed weights on disk: resolved path + weights file mtime and size."""
    try:
        real = Path(model_dir).resolve()
        st = os.stat(real / "model.safetensors")
        return str(real), st.st_mtime_ns, st.st_size
    except OSError:
        return None


class Classifying:
    """The classify stage without Kafka: ``await process(raw_values)`` -> ClassifyBatch.

    ``load_predictor`` is a zero-argument callable returning an object with ``.version`` and
    ``.predict(pairs) -> list[Prediction]``; it runs in the inference thread.
    """

    def __init__(self, settings: Settings, load_predictor, *, watch: bool = True):
        self.settings = settings
        self.load_predictor = load_predictor
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.predictor = None
        self.watch = watch
        self._signature: tuple | None = None
        self._next_check = 0.0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._signature = model_signature(self.settings.model_dir)
        self.predictor = await loop.run_in_executor(self.pool, self.load_predictor)
        self._next_check = time.monotonic() + RELOAD_CHECK_S
        log.info("model %s loaded from %s", self.predictor.version, self.settings.model_dir)

    async def maybe_reload(self) -> bool:
        """Swap in a new model version when the directory changed; a failed load keeps the old one."""
        if not self.watch or time.monotonic() < self._next_check:
            return False
        self._next_check = time.monotonic() + RELOAD_CHECK_S
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
        log.info("model reloaded: %s -> %s", self.predictor.version, predictor.version)
        self.predictor, self._signature = predictor, signature
        return True

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def process(self, raws: list[bytes]) -> ClassifyBatch:
        out = ClassifyBatch()
        posts, originals = [], []
        for raw in raws:
            try:
                posts.append(parse_post(raw, self.settings))
                originals.append(raw)
            except InvalidPost as e:
                post_id = e.post_id or post_id_guess(raw)
                log.warning("dlq stage=classify reason=%s id=%s", e.reason, post_id)
                out.dlq.append(dlq_record(raw, e.reason, "classify", str(e), post_id))
        if not posts:
            return out
        loop = asyncio.get_running_loop()
        predictor = self.predictor
        pairs = [(p.text, p.caption or "") for p in posts]
        try:
            predictions = await loop.run_in_executor(self.pool, predictor.predict, pairs)
            if len(predictions) != len(pairs):
                raise RuntimeError(f"{len(predictions)} predictions for {len(pairs)} posts")
        except Exception as e:  # noqa: BLE001 - find the post that breaks the batch, keep the rest
            log.warning("batch inference failed (%s: %s); retrying %d posts one by one",
                        type(e).__name__, e, len(pairs))
            predictions = []
            for pair in pairs:
                try:
                    predictions.append((await loop.run_in_executor(self.pool, predictor.predict, [pair]))[0])
                except Exception as e1:  # noqa: BLE001
                    predictions.append(e1)
        now_ms = int(time.time() * 1000)
        for post, raw, prediction in zip(posts, originals, predictions):
            if isinstance(prediction, BaseException):
                log.warning("dlq stage=classify reason=inference_failed id=%s", post.id)
                out.dlq.append(dlq_record(raw, "inference_failed", "classify",
                                          f"{type(prediction).__name__}: {prediction}", post.id))
            else:
                out.results.append(make_result(post, prediction.to_dict(), predictor.version, now_ms))
        return out


def build_stage(settings: Settings) -> Classifying:
    from affectstream.model.predictor import BatchPredictor  # torch: imported by register(), before the loop runs

    def load():
        return BatchPredictor.from_directory(settings.model_dir, device=settings.device,
                                             threads=settings.threads, top_k=settings.top_k or None)

    return Classifying(settings, load)


def register(app: faust.App, settings: Settings) -> str:
    """Attach the classify agent to ``app``; returns its name."""
    import affectstream.model.predictor  # noqa: F401 - import torch now: importing it inside the agent blocks the loop
    from affectstream.streaming.worker.caption import send_all
    from affectstream.streaming.worker.redis_sink import RedisSink

    topics = app.affect_topics  # type: ignore[attr-defined]
    state: dict = {}

    @app.agent(topics["enriched"], name="classify")
    async def classify(stream: faust.StreamT) -> None:
        if "stage" not in state:
            stage = build_stage(settings)
            await stage.start()
            state["stage"], state["sink"] = stage, RedisSink(settings)
        stage, sink = state["stage"], state["sink"]
        async for events in stream.noack_take(settings.batch_max, within=settings.batch_window_s):
            await stage.maybe_reload()
            started = time.perf_counter()
            batch = await stage.process([e.message.value for e in events])
            metrics.observe_classify_batch(batch, len(events), time.perf_counter() - started, stage.predictor.version)
            if batch.results:
                await sink.write(batch.results)  # returns once Redis has accepted every result
            await send_all(app, {
                "sentiment": [(r["id"].encode("utf-8"), orjson.dumps(r)) for r in batch.results],
                "dlq": batch.dlq,
            })
            for event in events:
                await stream.ack(event)
            log.info("classified batch n=%d results=%d dlq=%d in %.0f ms (model %s)", len(events),
                     len(batch.results), len(batch.dlq), 1000 * (time.perf_counter() - started),
                     stage.predictor.version)

    @app.on_before_shutdown.connect
    async def _close(app: faust.App, **kwargs) -> None:
        if "stage" in state:
            state["stage"].close()
            await state["sink"].close()

    return "classify"
