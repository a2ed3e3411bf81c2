"""End to end through both stages, on the real broker and real Redis: posts produced into ``posts`` (as a
producer would), a caption worker (`affectstream worker --role caption`, the offline describer) and a
classify worker (`--role classify`), each a separate process, results observed in Redis and on the
``sentiment`` topic.

Three workloads, one after the other (on fresh pipelines: below):
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
crosses both). Peak resident memory (VmHWM) of both workers is read at the end of each pipeline.

Pipelines: Tansu's memory engine costs more per record the more record batches a partition already holds
(measured: 0.30 / 1.25 / 2.35 ms of broker CPU per record at 0 / 10k / 20k one-record batches; five 50 %
rounds in a row on one broker: 0.67 -> 1.33 -> 1.84 -> 2.02 -> 2.20 ms per post, p99 103 -> 278 ms), which a
Kafka broker's indexed log does not. So the text workload and the image workloads each get a fresh broker,
Redis and workers (the warm pass shares the cold pass's, for its caption cache), and each round of the goal's
level (``goal``: GOAL_LEVEL of the text workload's maximum, ``goal_rounds`` times, for the run-to-run spread)
runs on a pipeline of its own. The levels inside a workload still run one after another on one broker.
"""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from affectstream.bench.e2e_observe import Observers, WorkerMetrics, batch_stats, level_stats, produce
from affectstream.bench.workload import Workload
from affectstream.streaming.worker.settings import Settings

GOAL_LEVEL = 0.5  # the goal is p99 at this share of the sustained maximum
E2E_WORKER = ("-m", "affectstream.bench.e2e_worker")  # `affectstream worker` with its metrics on a port of its own


def run_workload(settings: Settings, observers: Observers, workers: tuple[WorkerMetrics, WorkerMetrics],
                 work: Workload, *, burst: int, loads: tuple[float, ...], load_seconds: float,
                 say: Callable[[str], None]) -> dict:
    """The maximum sustained rate (a burst), then latency at each share of it, one level after another."""
    for worker in workers:
        worker.mark()
    posts = work.posts(f"{work.name}-burst", burst)
    produce(settings, observers, posts)
    ids = [p[0] for p in posts]
    if not observers.wait_for(ids, 60 + burst / 2):
        raise RuntimeError(f"{work.name}: burst incomplete: {observers.missing(ids)}")
    seen = [observers.seen[i] for i in ids]
    capacity = len(ids) / max((max(s.redis_ms for s in seen) - min(s.created_ms for s in seen)) / 1000, 1e-3)
    out: dict = {"max_posts_per_s": capacity, "burst": {**level_stats(observers, ids),
                                                        **batch_stats(*workers, posts=len(ids))},
                 "latency": {}}
    say(f"  {work.name}: sustained maximum {capacity:.1f} posts/s over {len(ids)} posts (described "
        f"{out['burst']['described']}, cache hits {out['burst']['cache_hits']})")
    for share in loads:
        out["latency"][f"{int(share * 100)}%"] = run_level(settings, observers, workers, work, share * capacity,
                                                           f"{int(share * 100)}%", load_seconds, say)
    return out


def run_level(settings: Settings, observers: Observers, workers: tuple[WorkerMetrics, WorkerMetrics],
              work: Workload, rate: float, name: str, load_seconds: float, say: Callable[[str], None]) -> dict:
    """Posts paced at ``rate`` for ``load_seconds``; their latency and the workers' batches meanwhile."""
    for worker in workers:
        worker.mark()
    n = max(10, int(rate * load_seconds))
    posts = work.posts(f"{work.name}-load{name.replace(' ', '-').replace('%', '')}", n)
    produce(settings, observers, posts, rate=rate)
    ids = [p[0] for p in posts]
    observers.wait_for(ids, 60 + 2 * n / max(rate, 1))  # a backlog left here would slow the next level
    level = {"rate": rate, **level_stats(observers, ids), **batch_stats(*workers, posts=len(ids))}
    hops = level["hops"]
    say(f"  {work.name} {name} ({rate:.1f} posts/s, {level['n']} posts): redis p50/p95/p99 "
        f"{level['p50_ms']:.0f}/{level['p95_ms']:.0f}/{level['p99_ms']:.0f} ms, topic p99 "
        f"{level['topic']['p99_ms']:.0f} ms; hops p50/p99: "
        + ", ".join(f"{k} {v['p50_ms']:.0f}/{v['p99_ms']:.0f}" for k, v in hops.items())
        + f"; classify batches {level['classify_batches']} (mean {level['classify_batch_mean']:.1f} posts, "
          f"{level['classify_batch_ms_mean']:.0f} ms)")
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


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection in this process inside the block: the bench stamps and observes posts in a process
    that has loaded the model too, and its own collections would be read as the pipeline's latency
    (docs/performance.md, "Garbage-collector pauses"). Reference counting still frees what it can."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Pipeline:
    """A fresh embedded broker and Redis, a caption and a classify worker, warmed up, and the observers."""
    settings: Settings
    observers: Observers
    metrics: tuple[WorkerMetrics, WorkerMetrics]  # (classify, caption), read from the workers themselves
    workers: tuple  # (classify, caption) WorkerProcess

    def peak_rss_mb(self) -> tuple[float, float]:
        return peak_rss_mb(self.workers[0].pid), peak_rss_mb(self.workers[1].pid)


@contextlib.contextmanager
def pipeline(requested: Settings, texts: list[str], images: bool, say: Callable[[str], None]) -> Iterator[Pipeline]:
    """Services and workers that live for one block. Tansu's memory engine slows down as its partitions fill
    (module docstring), so a phase that must not inherit an earlier one's records gets a pipeline of its own."""
    from affectstream.streaming.tools.services import EmbeddedServices, free_port
    from affectstream.streaming.tools.workers import WorkerProcess

    with EmbeddedServices(requested) as services, contextlib.ExitStack() as stack:
        s = services.settings
        say(f"  broker {s.kafka.brokers}, redis {s.redis.url}; starting a caption and a classify worker ...")
        observers = Observers(s)
        stack.callback(observers.close)
        ports = {"classify": free_port(), "caption": free_port()}
        classify = WorkerProcess(s, "classify", loglevel="info", entry=(*E2E_WORKER, str(ports["classify"])))
        stack.callback(classify.stop)
        caption = WorkerProcess(s, "caption", loglevel="info", entry=(*E2E_WORKER, str(ports["caption"])))
        stack.callback(caption.stop)
        try:  # warm-up first: both workers joined, the models loaded (the describer's too), nothing measured
            posts = Workload("warmup", texts, image_every=4 if images else 0, first_image=1_000_000).posts(
                "warmup", max(requested.classify.micro_batch_max, 8))
            produce(s, observers, posts)
            if not observers.wait_for([p[0] for p in posts], 180):
                raise RuntimeError(f"warm-up: no results in 180 s: {observers.missing([p[0] for p in posts])}")
            yield Pipeline(s, observers, (WorkerMetrics(ports["classify"]), WorkerMetrics(ports["caption"])),
                           (classify, caption))
        except RuntimeError as e:
            raise RuntimeError(f"{e}\nclassify worker log:\n{classify.log_tail()}\ncaption worker log:\n"
                               f"{caption.log_tail()}") from e


def run(model_dir: Path, *, burst: int, load_seconds: float, loads: tuple[float, ...], batch_max: int,
        batch_window_s: float, device: str, threads: int, pairs: list[tuple[str, str]],
        caption_images: int, say: Callable[[str], None], image_burst: int | None = None, image_every: int = 3,
        caption_batch_max: int | None = None, caption_window_s: float | None = None,
        inference_backend: str = "torch", onnx_lanes: int = 0, goal_rounds: int = 1) -> dict:
    """The three workloads (module docstring); ``caption_images`` = 0 runs the text-only one alone. The
    top-level ``max_posts_per_s`` / ``latency`` are the text-only workload's; ``goal`` is the goal's level
    (GOAL_LEVEL of the text workload's maximum) run ``goal_rounds`` times, each on a fresh pipeline."""
    texts = [text for text, _ in pairs]
    defaults = Settings()
    caption_window_s = defaults.caption.micro_batch_window_s if caption_window_s is None else caption_window_s
    caption_batch_max = caption_batch_max or defaults.caption.micro_batch_max
    run_id = uuid.uuid4().hex[:8]
    requested = Settings().replace(broker_url="", redis_url="", app_id=f"affectstream-bench-{run_id}",
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
    rss: list[tuple[float, float]] = []
    kwargs = dict(loads=loads, load_seconds=load_seconds, say=say)
    with collector_paused():
        with pipeline(requested, texts, False, say) as p:
            text = out["workloads"]["text"] = run_workload(p.settings, p.observers, p.metrics, Workload("text", texts),
                                                           burst=burst, **kwargs)
            out["max_posts_per_s"], out["latency"] = text["max_posts_per_s"], text["latency"]
            rss.append(p.peak_rss_mb())
        if caption_images:  # the warm pass needs the cold pass's caption cache: one pipeline for both
            with pipeline(requested, texts, True, say) as p:
                n = image_burst or max(3 * image_every, burst // 4)
                cold = Workload("images-cold", texts, image_every=image_every)
                out["workloads"]["images-cold"] = run_workload(p.settings, p.observers, p.metrics, cold, burst=n,
                                                               **kwargs)
                warm = Workload("images-warm", texts, image_every=image_every, fresh_images=False, images=cold.images)
                out["workloads"]["images-warm"] = run_workload(p.settings, p.observers, p.metrics, warm, burst=n,
                                                               **kwargs)
                rss.append(p.peak_rss_mb())
        rate, levels = GOAL_LEVEL * text["max_posts_per_s"], []
        for i in range(goal_rounds):
            with pipeline(requested, texts, False, say) as p:
                levels.append(run_level(p.settings, p.observers, p.metrics, Workload(f"goal{i + 1}", texts), rate,
                                        f"{int(GOAL_LEVEL * 100)}% (fresh pipeline {i + 1})", load_seconds, say))
                rss.append(p.peak_rss_mb())
    if levels:
        p99s = [level["p99_ms"] for level in levels]
        out["goal"] = {"level": f"{int(GOAL_LEVEL * 100)}%", "rate": rate, "p99_rounds_ms": p99s,
                       "p99_median_ms": statistics.median(p99s), "rounds": levels}
    out["classify_worker_peak_rss_mb"] = max(c for c, _ in rss)
    out["caption_worker_peak_rss_mb"] = max(c for _, c in rss)
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
    goal = e.get("goal")
    if goal:
        lines.append(f"text at {goal['level']} load ({goal['rate']:.0f} posts/s), each round on a fresh broker, Redis and "
                     f"workers: p99 " + " / ".join(f"{ms:.0f}" for ms in goal["p99_rounds_ms"])
                     + f" ms (median {goal['p99_median_ms']:.0f}; budget {e['budget_ms']:.0f}); p50 "
                     + " / ".join(f"{r['p50_ms']:.0f}" for r in goal["rounds"]) + " ms")
    lines.append(f"peak resident set (VmHWM): classify worker {e['classify_worker_peak_rss_mb']:.0f} MB, "
                 f"caption worker (offline describer) {e['caption_worker_peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
