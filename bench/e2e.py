"""End to end through both stages, on the real broker and real Redis: posts produced into ``posts`` (as a
producer would), a caption worker (`affectstream worker --role caption`, the offline describer) and a
classify worker (`--role classify`), each a separate process, results observed in Redis and on the
``sentiment`` topic.

Three workloads, one after the other on the same workers:
- ``text``: text-only posts (the caption stage passes them straight through);
- ``images-cold``: one post in ``image_every`` carries a real JPEG inline (base64; 640x480, one in four a
  meme with text), each image never sent before, so the caption stage decodes and describes every one;
- ``images-warm``: the same mix, every image one the cold pass sent already: the caption cache answers.

For each: the maximum sustained rate (a burst produced as fast as the broker takes it; rate = posts /
(last result in Redis - first post sent)), then posts paced at 25%, 50%, 80% of that rate, each stamped with
``created_at`` = the moment it is handed to the producer. Latency per post:

- ``redis``: the moment its result arrives on the live channel (published by the Redis sink once the result
  is stored and counted) - created_at;
- ``topic``: the moment a consumer of ``sentiment`` (kafka-python, ``fetch_max_wait_ms`` 20) reads it -
  created_at. Tansu has no LogAppendTime (it keeps the producer's timestamp whatever the topic config), so
  the broker's acknowledgement itself is not visible to a consumer; this reading comes some 10-20 ms after it
  (Tansu holds the observer's own fetch too).

Where the time goes (``hops``, percentiles per load level): ``caption`` = created_at -> the enriched
record's timestamp (stamped by the caption worker's producer when it takes the record: producing, the
broker, the caption worker's fetch, its batch window and work); ``classify`` = that -> the result's
``processed_at`` (stamped right after inference: the broker, the classify worker's fetch, its batch window,
queueing behind the previous batch, the model); ``redis`` / ``topic`` = processed_at -> the two arrivals.

``batch_compute_ms`` is the model alone (the run's ``inference_backend``) on one full micro-batch of the
workload's texts, timed in this process before the workers start and again after they stop, the better of
the two (same machine, same run), for the goal p99 at 50% load <= window + 2 x batch compute
(``budget_ms``: the classify stage's window; the caption stage's window is not added, though a post
crosses both). Peak resident memory (VmHWM) of both workers is read at the end.
"""
from __future__ import annotations

import contextlib
import gc
import os
import re
import statistics
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import orjson

from affectstream.bench.workload import Workload
from affectstream.streaming.worker import heap
from affectstream.streaming.worker.kafka_config import bootstrap_servers, kafka_client_kwargs
from affectstream.streaming.worker.redis_client import sync_redis
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings

OBSERVER_FETCH_WAIT_MS = 20  # Tansu holds a waiting fetch ~half of this (FACTS.md): the observer's own delay
# The posts-enriched observer reads the records' own timestamps (stamped by the caption worker's producer), so
# when it reads them enters no figure: it fetches lazily, and its empty fetches stay off the shared broker.
# Measured at 50 % load (two interleaved pairs): broker CPU 0.91-0.94 -> 0.81-0.84 ms per post, all processes
# 1.56-1.59 -> 1.45-1.47 cores, p99 122 / 113 -> 103 / 114 ms.
ENRICHED_OBSERVER_FETCH_WAIT_MS = 500
CLASSIFY_LOG = re.compile(r"classified batch n=(\d+) .* in (\d+) ms")
CAPTION_LOG = re.compile(r"captioned batch n=(\d+) .*described=(\d+) cache_hits=(\d+) in (\d+) ms")


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
        self._consumers = [self._consumer(settings.topic_sentiment, OBSERVER_FETCH_WAIT_MS),
                           self._consumer(settings.topic_enriched, ENRICHED_OBSERVER_FETCH_WAIT_MS)]
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
        partitions = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        return consumer

    def _topic(self, consumer) -> None:
        sentiment = self.settings.topic_sentiment
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
                f"on {self.settings.topic_enriched}")

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        self._pubsub.close()
        self._redis.close()
        for consumer in self._consumers:
            consumer.close()


class WorkerLog:
    """A worker's log file read from a mark: its per-batch lines (``log_batch``) for one phase."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = os.path.getsize(self.path)

    def lines(self, pattern: re.Pattern) -> list[tuple[int, ...]]:
        text = Path(self.path).read_bytes()[self.offset:].decode("utf-8", "replace")
        return [tuple(int(g) for g in m.groups()) for m in pattern.finditer(text)]


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

    produce_lines(settings, lines(), topic=settings.topic_posts, rate=rate)


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


def batch_logs(classify_log: WorkerLog, caption_log: WorkerLog) -> dict:
    """Micro-batches the workers logged since their marks: sizes and times, cache hits and descriptions."""
    classify = classify_log.lines(CLASSIFY_LOG)
    caption = caption_log.lines(CAPTION_LOG)
    return {"classify_batches": len(classify),
            "classify_batch_mean": statistics.fmean([n for n, _ in classify]) if classify else 0.0,
            "classify_batch_ms_p50": percentile([ms for _, ms in classify], 50),
            "caption_batches": len(caption),
            "caption_batch_ms_p50": percentile([ms for *_, ms in caption], 50),
            "described": sum(d for _, d, _, _ in caption), "cache_hits": sum(h for _, _, h, _ in caption)}


GOAL_LEVEL = 0.5  # the goal is p99 at this share of the sustained maximum


def run_workload(settings: Settings, observers: Observers, logs: tuple[WorkerLog, WorkerLog], work: Workload, *,
                 burst: int, loads: tuple[float, ...], load_seconds: float, say: Callable[[str], None],
                 goal_rounds: int = 1) -> dict:
    """The maximum sustained rate (a burst), then latency at each share of it; ``goal_rounds`` > 1 runs the
    goal's level (GOAL_LEVEL) that many times in all, for its run-to-run spread (``p99_rounds_ms``)."""
    for log in logs:
        log.mark()
    posts = work.posts(f"{work.name}-burst", burst)
    produce(settings, observers, posts)
    ids = [p[0] for p in posts]
    if not observers.wait_for(ids, 60 + burst / 2):
        raise RuntimeError(f"{work.name}: burst incomplete: {observers.missing(ids)}")
    seen = [observers.seen[i] for i in ids]
    capacity = len(ids) / max((max(s.redis_ms for s in seen) - min(s.created_ms for s in seen)) / 1000, 1e-3)
    out: dict = {"max_posts_per_s": capacity, "burst": {**level_stats(observers, ids), **batch_logs(*logs)},
                 "latency": {}}
    say(f"  {work.name}: sustained maximum {capacity:.1f} posts/s over {len(ids)} posts (described "
        f"{out['burst']['described']}, cache hits {out['burst']['cache_hits']})")
    for share in loads:
        out["latency"][f"{int(share * 100)}%"] = run_level(settings, observers, logs, work, share * capacity,
                                                           f"{int(share * 100)}%", load_seconds, say)
    goal = f"{int(GOAL_LEVEL * 100)}%"
    if goal_rounds > 1 and goal in out["latency"]:
        first = out["latency"][goal]
        rounds = [first["p99_ms"]] + [
            run_level(settings, observers, logs, work, GOAL_LEVEL * capacity, f"{goal} round {i + 2}", load_seconds,
                      say)["p99_ms"] for i in range(goal_rounds - 1)]
        first["p99_rounds_ms"], first["p99_median_ms"] = rounds, statistics.median(rounds)
    return out


def run_level(settings: Settings, observers: Observers, logs: tuple[WorkerLog, WorkerLog], work: Workload,
              rate: float, name: str, load_seconds: float, say: Callable[[str], None]) -> dict:
    """Posts paced at ``rate`` for ``load_seconds``; their latency and the workers' batches meanwhile."""
    for log in logs:
        log.mark()
    n = max(10, int(rate * load_seconds))
    posts = work.posts(f"{work.name}-load{name.replace(' ', '-').replace('%', '')}", n)
    produce(settings, observers, posts, rate=rate)
    ids = [p[0] for p in posts]
    observers.wait_for(ids, 60 + 2 * n / max(rate, 1))  # a backlog left here would slow the next level
    level = {"rate": rate, **level_stats(observers, ids), **batch_logs(*logs)}
    hops = level["hops"]
    say(f"  {work.name} {name} ({rate:.1f} posts/s, {level['n']} posts): redis p50/p95/p99 "
        f"{level['p50_ms']:.0f}/{level['p95_ms']:.0f}/{level['p99_ms']:.0f} ms, topic p99 "
        f"{level['topic']['p99_ms']:.0f} ms; hops p50/p99: "
        + ", ".join(f"{k} {v['p50_ms']:.0f}/{v['p99_ms']:.0f}" for k, v in hops.items())
        + f"; classify batches {level['classify_batches']} (mean {level['classify_batch_mean']:.1f} posts, "
          f"{level['classify_batch_ms_p50']:.0f} ms)")
    return level


def batch_compute_ms(model_dir: Path, texts: list[str], batch_max: int, device: str, threads: int,
                     backend: str = "torch", rounds: int = 7) -> float:
    """Median time of the model alone, on ``backend`` (model/serving.py), on one full micro-batch of
    text-only posts (what the worker calls)."""
    from affectstream.model.serving import load_predictor

    predictor = load_predictor(str(model_dir), backend, device=device, threads=threads)
    pairs = [(texts[(i * 7) % len(texts)], "") for i in range(batch_max)]
    predictor.predict(pairs)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        predictor.predict(pairs)
        times.append(1000 * (time.perf_counter() - started))
    del predictor
    gc.collect()
    return statistics.median(times)


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(model_dir: Path, *, burst: int, load_seconds: float, loads: tuple[float, ...], batch_max: int,
        batch_window_s: float, device: str, threads: int, pairs: list[tuple[str, str]],
        caption_images: int, say: Callable[[str], None], image_burst: int | None = None, image_every: int = 3,
        caption_batch_max: int | None = None, caption_window_s: float | None = None,
        inference_backend: str = "torch", onnx_lanes: int = 0, goal_rounds: int = 1) -> dict:
    """The three workloads (module docstring); ``caption_images`` = 0 runs the text-only one alone. The
    top-level ``max_posts_per_s`` / ``latency`` are the text-only workload's, whose goal level runs
    ``goal_rounds`` times."""
    from affectstream.streaming.tools.services import EmbeddedServices
    from affectstream.streaming.tools.workers import WorkerProcess

    texts = [text for text, _ in pairs]
    defaults = Settings()
    caption_window_s = defaults.caption_batch_window_s if caption_window_s is None else caption_window_s
    caption_batch_max = caption_batch_max or defaults.caption_batch_max
    run_id = uuid.uuid4().hex[:8]
    requested = Settings(broker_url="", redis_url="", app_id=f"affectstream-bench-{run_id}",
                         redis_prefix=f"bench{run_id}:", model_dir=str(model_dir), captioner="offline",
                         batch_max=batch_max, batch_window_s=batch_window_s, caption_batch_max=caption_batch_max,
                         caption_batch_window_s=caption_window_s, device=device, threads=threads,
                         inference_backend=inference_backend, onnx_lanes=onnx_lanes, session_timeout_s=6.0,
                         heartbeat_interval_s=1.0, web_enabled=False, partitions=4)
    say(f"  model alone on one batch of {batch_max} ...")
    compute_ms = [batch_compute_ms(model_dir, texts, batch_max, device, threads, inference_backend)]
    out: dict = {"batch_max": batch_max, "batch_window_s": batch_window_s, "caption_batch_max": caption_batch_max,
                 "caption_window_s": caption_window_s, "image_every": image_every,
                 "inference_backend": inference_backend, "workloads": {}}
    with EmbeddedServices(requested) as services, contextlib.ExitStack() as stack, heap.collector_paused():
        s = services.settings
        say(f"  broker {s.broker_url}, redis {s.redis_url}; starting a caption and a classify worker ...")
        observers = Observers(s)
        stack.callback(observers.close)
        classify = WorkerProcess(s, "classify", loglevel="info")
        stack.callback(classify.stop)
        caption = WorkerProcess(s, "caption", loglevel="info")
        stack.callback(caption.stop)
        logs = (WorkerLog(classify.log_path), WorkerLog(caption.log_path))
        kwargs = dict(loads=loads, load_seconds=load_seconds, say=say)
        try:  # warm-up first: both workers joined, the models loaded (the describer's too), nothing measured
            posts = Workload("warmup", texts, image_every=4 if caption_images else 0, first_image=1_000_000).posts(
                "warmup", max(batch_max, 8))
            produce(s, observers, posts)
            if not observers.wait_for([p[0] for p in posts], 180):
                raise RuntimeError(f"warm-up: no results in 180 s: {observers.missing([p[0] for p in posts])}")
            text = out["workloads"]["text"] = run_workload(s, observers, logs, Workload("text", texts), burst=burst,
                                                           goal_rounds=goal_rounds, **kwargs)
            out["max_posts_per_s"], out["latency"] = text["max_posts_per_s"], text["latency"]
            if caption_images:
                n = image_burst or max(3 * image_every, burst // 4)
                cold = Workload("images-cold", texts, image_every=image_every)
                out["workloads"]["images-cold"] = run_workload(s, observers, logs, cold, burst=n, **kwargs)
                warm = Workload("images-warm", texts, image_every=image_every, fresh_images=False, images=cold.images)
                out["workloads"]["images-warm"] = run_workload(s, observers, logs, warm, burst=n, **kwargs)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\nclassify worker log:\n{classify.log_tail()}\ncaption worker log:\n"
                               f"{caption.log_tail()}") from e
        out["classify_worker_peak_rss_mb"] = peak_rss_mb(classify.pid)
        out["caption_worker_peak_rss_mb"] = peak_rss_mb(caption.pid)
        say(f"  peak RSS: classify worker {out['classify_worker_peak_rss_mb']:.0f} MB, caption worker "
            f"{out['caption_worker_peak_rss_mb']:.0f} MB")
    # timed again with the workers gone; the better of the two (the host is shared: noise only adds time)
    compute_ms.append(batch_compute_ms(model_dir, texts, batch_max, device, threads, inference_backend))
    out["batch_compute_ms"] = min(compute_ms)
    out["budget_ms"] = 1000 * batch_window_s + 2 * out["batch_compute_ms"]  # the goal (one window)
    say(f"  model alone on a batch of {batch_max}: {' / '.join(f'{ms:.0f}' for ms in compute_ms)} ms (before / after "
        f"the run); budget: classify window {1000 * batch_window_s:.0f} ms + 2 x {out['batch_compute_ms']:.0f} ms "
        f"= {out['budget_ms']:.0f} ms")
    return out


def table(e: dict) -> str:
    """The end-to-end rows as markdown: one line per workload and load."""
    lines = [f"end to end through both stages — batch {e['batch_max']} / window {1000 * e['batch_window_s']:.0f} ms "
             f"(classify), {e['caption_batch_max']} / {1000 * e['caption_window_s']:.0f} ms (caption), "
             f"{e['inference_backend']}; model alone on a batch: {e['batch_compute_ms']:.0f} ms; budget "
             f"(classify window + 2 x compute) {e['budget_ms']:.0f} ms",
             "| workload | max posts/s | load | posts/s | posts | p50 ms | p95 ms | p99 ms | topic p99 ms | "
             "image posts p99 ms | text posts p99 ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, w in e["workloads"].items():
        for level, v in w["latency"].items():
            image_p99 = v.get("images_only", {}).get("p99_ms")
            text_p99 = v.get("texts_only", {}).get("p99_ms")
            lines.append(f"| {name} | {w['max_posts_per_s']:.1f} | {level} | {v['rate']:.1f} | {v['n']} | "
                         f"{v['p50_ms']:.0f} | {v['p95_ms']:.0f} | {v['p99_ms']:.0f} | {v['topic']['p99_ms']:.0f} | "
                         + " | ".join(f"{p:.0f}" if p is not None else "–" for p in (image_p99, text_p99)) + " |")
    goal = e["workloads"].get("text", {}).get("latency", {}).get(f"{int(GOAL_LEVEL * 100)}%", {})
    if "p99_rounds_ms" in goal:
        lines.append(f"text p99 at {int(GOAL_LEVEL * 100)}% load over {len(goal['p99_rounds_ms'])} rounds: "
                     + " / ".join(f"{ms:.0f}" for ms in goal["p99_rounds_ms"])
                     + f" ms (median {goal['p99_median_ms']:.0f}; budget {e['budget_ms']:.0f})")
    lines.append(f"peak resident set (VmHWM): classify worker {e['classify_worker_peak_rss_mb']:.0f} MB, "
                 f"caption worker (offline describer) {e['caption_worker_peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
