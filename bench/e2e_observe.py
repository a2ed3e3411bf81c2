"""What the end-to-end bench sees (bench/e2e.py): posts stamped as they are handed to the producer, and three
observers of their results — the Redis live channel, a consumer of ``sentiment`` and one of ``posts-enriched``
— and the workers' micro-batches, read from their metrics; then latency percentiles per level and per hop.
"""
from __future__ import annotations

import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Iterator

import orjson

from affectstream.streaming.worker.kafka_config import bootstrap_servers, kafka_client_kwargs
from affectstream.streaming.worker.redis_client import sync_redis
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings

OBSERVER_FETCH_WAIT_MS = 20  # Tansu holds a waiting fetch ~half of this (docs/performance.md): the observer's own delay
# The posts-enriched observer reads the records' own timestamps (stamped by the caption worker's producer), so
# when it reads them enters no figure: it fetches lazily, and its empty fetches stay off the shared broker.
# Measured at 50 % load (two interleaved pairs): broker CPU 0.91-0.94 -> 0.81-0.84 ms per post, all processes
# 1.56-1.59 -> 1.45-1.47 cores, p99 122 / 113 -> 103 / 114 ms.
ENRICHED_OBSERVER_FETCH_WAIT_MS = 500


@dataclass
class Seen:
    """What the observers saw of one post (epoch ms)."""
    created_ms: float | None = None
    image: bool = False
    redis_ms: float | None = None
    redis_count: int = 0
    processed_ms: float | None = None
    caption: str | None = None
    topic_ms: float | None = None
    topic_count: int = 0
    enriched_ts: float | None = None


class Observers:
    """Three threads: the Redis live channel, a consumer of ``sentiment`` and one of ``posts-enriched`` (apart:
    enriched image posts are large, and the results must not queue behind them), both from the beginning.
    ``seen[id]`` collects what each saw; a post produced again would be counted twice."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.seen: dict[str, Seen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._redis = sync_redis(settings)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(settings.keys.live)
        self._consumers = [self._consumer(settings.kafka.topic_sentiment, OBSERVER_FETCH_WAIT_MS),
                           self._consumer(settings.kafka.topic_enriched, ENRICHED_OBSERVER_FETCH_WAIT_MS)]
        self._threads = [threading.Thread(target=self._live, name="bench-live", daemon=True),
                         *(threading.Thread(target=self._topic, args=(c,), name="bench-topic", daemon=True)
                           for c in self._consumers)]
        for thread in self._threads:
            thread.start()

    def post(self, post_id: str, created_ms: float, image: bool) -> None:
        with self._lock:
            entry = self.seen.setdefault(post_id, Seen())
            entry.created_ms, entry.image = created_ms, image

    def _entry(self, post_id: str) -> Seen:
        return self.seen.setdefault(post_id, Seen())

    def _live(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            now_ms = time.time() * 1000
            result = Result.from_json(message["data"])
            with self._lock:
                entry = self._entry(result.id)
                entry.redis_count += 1
                if entry.redis_ms is None:
                    entry.redis_ms, entry.processed_ms, entry.caption = now_ms, result.processed_at, result.caption

    def _consumer(self, topic: str, fetch_wait_ms: int):
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers(self.settings), group_id=None,
                                 enable_auto_commit=False, fetch_max_wait_ms=fetch_wait_ms,
                                 check_crcs=False,  # kafka-python's CRC of 60 kB image posts is pure Python
                                 client_id="affectstream-bench-observer", **kafka_client_kwargs(self.settings))
        partitions = [TopicPartition(topic, p) for p in range(self.settings.kafka.partitions)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        return consumer

    def _topic(self, consumer) -> None:
        sentiment = self.settings.kafka.topic_sentiment
        while not self._stop.is_set():
            batches = consumer.poll(timeout_ms=200)
            now_ms = time.time() * 1000
            with self._lock:
                for tp, records in batches.items():
                    for record in records:
                        if record.key is None:
                            continue
                        entry = self._entry(record.key.decode("utf-8", "replace"))
                        if tp.topic == sentiment:
                            entry.topic_count += 1
                            entry.topic_ms = entry.topic_ms or now_ms
                        elif entry.enriched_ts is None:
                            entry.enriched_ts = record.timestamp

    def wait_for(self, ids: list[str], timeout_s: float) -> bool:
        """True once every id has arrived in Redis and on the topic, and its enriched record has been read (the
        lazy observer's, for the hops)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                done = all(i in self.seen and self.seen[i].redis_ms and self.seen[i].topic_ms
                           and self.seen[i].enriched_ts for i in ids)
            if done:
                return True
            time.sleep(0.05)
        return False

    def missing(self, ids: list[str]) -> str:
        seen = [self.seen.get(i, Seen()) for i in ids]
        return (f"of {len(ids)}, {sum(not s.redis_ms for s in seen)} not in Redis, "
                f"{sum(not s.topic_ms for s in seen)} not on the topic, {sum(not s.enriched_ts for s in seen)} not read "
                f"on {self.settings.kafka.topic_enriched}")

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        self._pubsub.close()
        self._redis.close()
        for consumer in self._consumers:
            consumer.close()


def _key(name: str, labels: dict) -> tuple:
    return name, tuple(sorted(labels.items()))


class WorkerMetrics:
    """A worker's metrics registry (what its /metrics renders; served by bench/e2e_worker.py) read at a mark
    and again at a phase's end: its micro-batches in between."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.marked: dict[tuple, float] = {}

    def read(self) -> dict[tuple, float]:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        return {_key(s.name, s.labels): s.value for family in text_string_to_metric_families(text)
                for s in family.samples}

    def mark(self) -> None:
        self.marked = self.read()

    def since(self, stage: str, events: int, timeout_s: float = 5.0) -> dict[str, float]:
        """The stage's batches since the mark, once they hold ``events`` events or after ``timeout_s`` (a batch
        is counted just after its delivery, a moment after the bench has seen its results)."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.read()

            def delta(name: str, **labels: str) -> float:
                return now.get(_key(name, labels), 0.0) - self.marked.get(_key(name, labels), 0.0)

            out = {"batches": delta("affectstream_batch_size_count", stage=stage),
                   "events": delta("affectstream_batch_size_sum", stage=stage),
                   "seconds": delta("affectstream_batch_seconds_sum", stage=stage),
                   "cache_hits": delta("affectstream_caption_cache_total", result="hit"),
                   "described": delta("affectstream_caption_cache_total", result="miss")}
            if out["events"] >= events or time.monotonic() > deadline:
                return out
            time.sleep(0.05)


def produce(settings: Settings, observers: Observers, posts: list[tuple[str, str, str | None]],
            rate: float = 0.0) -> None:
    """Produce to ``posts``; with a rate, paced. created_at is stamped as each post is handed over."""
    from affectstream.streaming.tools.producer import produce_lines

    def lines() -> Iterator[bytes]:
        for post_id, text, image in posts:
            now_ms = int(time.time() * 1000)
            observers.post(post_id, now_ms, image is not None)
            post = {"id": post_id, "text": text, "brands": ["bench"], "created_at": now_ms}
            if image is not None:
                post["image"] = {"b64": image}
            yield orjson.dumps(post)

    produce_lines(settings, lines(), topic=settings.kafka.topic_posts, rate=rate)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def _pcts(values: list[float]) -> dict[str, float]:
    return {f"p{q}_ms": percentile(values, q) for q in (50, 95, 99)}


def level_stats(observers: Observers, ids: list[str]) -> dict:
    """Latency percentiles to Redis and to the topic, per-hop percentiles, and the invariants: lost,
    duplicated, image posts without a caption."""
    seen = [observers.seen.get(i, Seen()) for i in ids]
    done = [s for s in seen if s.created_ms and s.redis_ms]
    on_topic = [s for s in seen if s.created_ms and s.topic_ms]
    images = [s for s in done if s.image]
    out = {"n": len(done), "lost_redis": len(ids) - len(done), "lost_topic": len(ids) - len(on_topic),
           "duplicates_redis": sum(s.redis_count > 1 for s in seen),
           "duplicates_topic": sum(s.topic_count > 1 for s in seen),
           "image_posts": len(images), "image_posts_without_caption": sum(not s.caption for s in images),
           **_pcts([s.redis_ms - s.created_ms for s in done]),
           "topic": _pcts([s.topic_ms - s.created_ms for s in on_topic])}
    if images:  # a mixed workload: its image posts and its text-only posts apart
        out["images_only"] = _pcts([s.redis_ms - s.created_ms for s in images])
        out["texts_only"] = _pcts([s.redis_ms - s.created_ms for s in done if not s.image])
    hops = {"caption": [s.enriched_ts - s.created_ms for s in done if s.enriched_ts],
            "classify": [s.processed_ms - s.enriched_ts for s in done if s.enriched_ts and s.processed_ms],
            "redis": [s.redis_ms - s.processed_ms for s in done if s.processed_ms],
            "topic": [s.topic_ms - s.processed_ms for s in on_topic if s.processed_ms]}
    out["hops"] = {name: {"p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99)} for name, v in hops.items()}
    return out


def batch_stats(classify: WorkerMetrics, caption: WorkerMetrics, posts: int) -> dict:
    """The workers' micro-batches since their marks (``posts`` went through each): sizes and mean times,
    cache hits and descriptions."""
    c, k = classify.since("classify", posts), caption.since("caption", posts)

    def mean(total: float, batches: float) -> float:
        return total / batches if batches else float("nan")

    return {"classify_batches": int(c["batches"]), "classify_batch_mean": mean(c["events"], c["batches"]),
            "classify_batch_ms_mean": 1000 * mean(c["seconds"], c["batches"]),
            "caption_batches": int(k["batches"]), "caption_batch_ms_mean": 1000 * mean(k["seconds"], k["batches"]),
            "described": int(k["described"]), "cache_hits": int(k["cache_hits"])}
