"""Prometheus metrics for every stage, in one registry a worker exposes at ``/metrics``.

Agents call ``observe_caption_batch`` / ``observe_classify_batch`` once per micro-batch; everything
else (DLQ reasons, cache hit rate, latency) is derived from the batch objects they already build.
"""
from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

POSTS = Counter("affectstream_posts_total", "Messages processed, by stage and outcome",
                ["stage", "outcome"], registry=REGISTRY)
DLQ = Counter("affectstream_dlq_total", "Messages sent to the dead-letter topic, by stage and reason",
              ["stage", "reason"], registry=REGISTRY)
BATCH_SIZE = Histogram("affectstream_batch_size", "Micro-batch size", ["stage"], registry=REGISTRY,
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_SECONDS = Histogram("affectstream_batch_seconds", "Time to process one micro-batch (parse + model)", ["stage"],
                          registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LATENCY = Histogram("affectstream_end_to_end_latency_seconds", "Post created_at to result written",
                    registry=REGISTRY, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
GC_PAUSE = Histogram("affectstream_gc_pause_seconds", "Python garbage-collector pauses, by generation (heap.py)",
                     ["generation"], registry=REGISTRY, buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))
CAPTION_CACHE = Counter("affectstream_caption_cache_total", "Caption cache lookups by result", ["result"],
                        registry=REGISTRY)
MODEL_INFO = Gauge("affectstream_model_info", "Deployed model version (value 1)", ["version"], registry=REGISTRY)
LABELS = Counter("affectstream_results_total", "Results by sentiment label", ["label"], registry=REGISTRY)
CAPTIONER_MISMATCH = Counter(
    "affectstream_captioner_mismatch_total",
    "Posts whose image was described by another captioner (served) than the model was trained on (trained)",
    ["served", "trained"], registry=REGISTRY)
# a candidate model under test (shadow.py, rollout.py)
SHADOW = Counter("affectstream_shadow_total",
                 "Posts scored by a candidate in shadow, by outcome: agree / disagree with the deployed label "
                 "(first scoring of a post only), failed (the candidate raised), write_failed (not stored)",
                 ["candidate", "outcome"], registry=REGISTRY)
CANARY = Counter("affectstream_canary_total", "Posts of canary partitions served by the candidate, by outcome "
                 "(result, dlq)", ["candidate", "outcome"], registry=REGISTRY)
CANDIDATE_INFO = Gauge("affectstream_candidate_info", "Candidate model under test: value = its share",
                       ["version", "mode"], registry=REGISTRY)
ROLLBACKS = Counter("affectstream_rollbacks_total", "Candidates rolled back automatically, by the threshold crossed",
                    ["candidate", "reason"], registry=REGISTRY)


def observe_dlq(stage: str, records: list[tuple[bytes | None, bytes]]) -> None:
    for _, value in records:
        try:
            record = orjson.loads(value)
            DLQ.labels(record.get("stage", stage), record.get("reason", "unknown")).inc()
        except orjson.JSONDecodeError:
            DLQ.labels(stage, "unknown").inc()


def observe_caption_batch(batch, n_events: int, seconds: float) -> None:
    BATCH_SIZE.labels("caption").observe(n_events)
    BATCH_SECONDS.labels("caption").observe(seconds)
    POSTS.labels("caption", "forwarded").inc(len(batch.enriched))
    POSTS.labels("caption", "dlq").inc(len(batch.dlq))
    CAPTION_CACHE.labels("hit").inc(batch.cache_hits)
    CAPTION_CACHE.labels("miss").inc(batch.described)
    observe_dlq("caption", batch.dlq)


def observe_classify_batch(batch, n_events: int, seconds: float, model_version: str) -> None:
    """After delivery: results count only when new (``batch.fresh_ids``, from the Redis sink's ``seen``
    marker); a redelivered post is ``outcome="redelivered"`` and adds no label or latency sample."""
    BATCH_SIZE.labels("classify").observe(n_events)
    BATCH_SECONDS.labels("classify").observe(seconds)
    fresh = batch.fresh_ids
    new = [r for r in batch.results if fresh is None or r.id in fresh]
    POSTS.labels("classify", "result").inc(len(new))
    POSTS.labels("classify", "redelivered").inc(len(batch.results) - len(new))
    POSTS.labels("classify", "dlq").inc(len(batch.dlq))
    observe_dlq("classify", batch.dlq)
    for result in new:
        LABELS.labels(result.label).inc()
        if result.latency_ms is not None and result.latency_ms >= 0:
            LATENCY.observe(result.latency_ms / 1000)
    # a warned post counts once, like its result (not again when redelivered); a rejected one as its dead letter
    for post_id, served, trained, rejected in getattr(batch, "mismatches", ()):
        if rejected or fresh is None or post_id in fresh:
            CAPTIONER_MISMATCH.labels(served, trained).inc()
    set_model_version(model_version)


def observe_shadow(candidate: str, *, agree: int = 0, disagree: int = 0, failed: int = 0,
                   write_failed: int = 0) -> None:
    for outcome, n in (("agree", agree), ("disagree", disagree), ("failed", failed), ("write_failed", write_failed)):
        if n:
            SHADOW.labels(candidate, outcome).inc(n)


def observe_canary(candidate: str, *, results: int = 0, dlq: int = 0) -> None:
    for outcome, n in (("result", results), ("dlq", dlq)):
        if n:
            CANARY.labels(candidate, outcome).inc(n)


def set_candidate(version: str | None, mode: str = "off", share: float = 0.0) -> None:
    CANDIDATE_INFO.clear()
    if version is not None:
        CANDIDATE_INFO.labels(version, mode).set(share)


def observe_rollback(candidate: str, reason: str) -> None:
    ROLLBACKS.labels(candidate, reason).inc()


def observe_gc_pause(generation: int, seconds: float) -> None:
    GC_PAUSE.labels(generation=str(generation)).observe(seconds)


def set_model_version(version: str) -> None:
    MODEL_INFO.clear()
    MODEL_INFO.labels(version).set(1)


def render() -> bytes:
    return generate_latest(REGISTRY)
