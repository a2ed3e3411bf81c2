"""End to end through the real broker and real Redis: posts produced to ``posts-enriched`` (text posts
with their image description already attached, as the caption agent would forward them: that topic is
the internal, trusted one, written by the caption stage and tools standing in for it, never by
producers; a caption a producer puts on ``posts`` is dropped), one classify
worker (`affectstream worker --role classify`, a separate process), results read back from Redis's live
channel (`as:live`, published by the Redis sink once the result is stored and counted).

- maximum sustained rate: a burst of posts produced as fast as the broker takes them; rate = posts /
  (last result − first result), which excludes the worker's start-up;
- latency at 25%, 50%, 80% of that rate: posts paced at the target rate, each stamped with
  ``created_at`` = the moment it is handed to the producer; latency = the moment its result arrives on
  ``as:live`` − created_at (so it includes producing, the broker, batching, the model, the Redis write),
  split at the result's ``processed_at`` (stamped right after inference): ``to_processed`` = producing,
  fetching, the batch window, queueing behind the previous batch and the model; the rest is the Redis
  write and the live channel.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson

from affectstream.streaming.worker.redis_client import sync_redis
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings


@dataclass
class LiveResults:
    """Subscribes to the live channel in a thread; records id -> (arrival ms, created_at ms, processed_at ms)."""
    settings: Settings
    arrivals: dict[str, tuple[float, int | None, int | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._client = sync_redis(self.settings)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(self.settings.keys.live)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-live", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            now_ms = time.time() * 1000
            result = Result.from_json(message["data"])
            self.arrivals.setdefault(result.id, (now_ms, result.created_at, result.processed_at))

    def wait_for(self, ids: list[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(i in self.arrivals for i in ids):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()
        self._client.close()


def _post(post_id: str, pair: tuple[str, str]) -> bytes:
    text, description = pair
    return orjson.dumps({"id": post_id, "text": text, "caption": description or None, "brands": ["bench"],
                         "created_at": int(time.time() * 1000)})


def _produce(settings, pairs: list[tuple[str, str]], prefix: str, rate: float = 0.0) -> list[str]:
    """Produce to the enriched topic; with a rate, pace sends (created_at stamped at each send)."""
    from affectstream.streaming.tools.producer import produce_lines

    ids = [f"{prefix}-{i}" for i in range(len(pairs))]
    lines = (_post(i, pair) for i, pair in zip(ids, pairs))  # lazy: created_at is the send moment
    produce_lines(settings, lines, topic=settings.topic_enriched, rate=rate)
    return ids


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(model_dir: Path, *, burst: int, load_seconds: float, loads: tuple[float, ...], batch_max: int,
        batch_window_s: float, device: str, threads: int, pairs: list[tuple[str, str]],
        caption_images: int, say: Callable[[str], None]) -> dict:
    from affectstream.streaming.tools.services import EmbeddedServices
    from affectstream.streaming.tools.workers import WorkerProcess

    run_id = uuid.uuid4().hex[:8]
    requested = Settings(broker_url="", redis_url="", app_id=f"affectstream-bench-{run_id}",
                         redis_prefix=f"bench{run_id}:", model_dir=str(model_dir), captioner="offline",
                         batch_max=batch_max, batch_window_s=batch_window_s, device=device, threads=threads,
                         session_timeout_s=6.0, heartbeat_interval_s=1.0, web_enabled=False, partitions=4)
    out: dict = {"batch_max": batch_max, "batch_window_s": batch_window_s}
    with EmbeddedServices(requested) as services:
        s = services.settings
        say(f"  broker {s.broker_url}, redis {s.redis_url}; starting a classify worker ...")
        live = LiveResults(s)
        worker = WorkerProcess(s, "classify", loglevel="warning")
        caption_worker = None
        try:
            warm = _produce(s, pairs[:batch_max], "warm")
            if not live.wait_for(warm, 120):
                raise RuntimeError(f"classify worker gave no results in 120 s; log:\n{worker.log_tail()}")
            # maximum sustained rate: a burst, timed from the first result to the last
            ids = _produce(s, (pairs * (burst // len(pairs) + 1))[:burst], "burst")
            if not live.wait_for(ids, 60 + burst / 5):
                raise RuntimeError(f"burst incomplete; log:\n{worker.log_tail()}")
            arrivals = sorted(live.arrivals[i][0] for i in ids)
            max_rate = (len(ids) - 1) / max((arrivals[-1] - arrivals[0]) / 1000, 1e-3)
            out["max_posts_per_s"] = max_rate
            say(f"  sustained maximum {max_rate:.0f} posts/s over {len(ids)} posts")
            out["latency"] = {}
            for share in loads:
                rate = share * max_rate
                n = max(10, int(rate * load_seconds))
                ids = _produce(s, (pairs * (n // len(pairs) + 1))[:n], f"load{int(share * 100)}", rate=rate)
                live.wait_for(ids, 30 + n / max(rate, 1))
                got = [live.arrivals[i] for i in ids if i in live.arrivals]
                latencies = [arrival - created for arrival, created, _ in got]
                to_processed = [processed - created for _, created, processed in got if processed is not None]
                out["latency"][f"{int(share * 100)}%"] = {
                    "rate": rate, "n": len(latencies), "lost": len(ids) - len(latencies),
                    "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
                    "p99_ms": percentile(latencies, 99),
                    "to_processed_p50_ms": percentile(to_processed, 50),
                    "to_processed_p99_ms": percentile(to_processed, 99)}
                say(f"  {int(share * 100)}% load ({rate:.0f} posts/s): p50 {percentile(latencies, 50):.0f} ms, "
                    f"p95 {percentile(latencies, 95):.0f} ms, p99 {percentile(latencies, 99):.0f} ms "
                    f"(created -> after inference: p50 {percentile(to_processed, 50):.0f}, "
                    f"p99 {percentile(to_processed, 99):.0f} ms)")
            out["classify_worker_peak_rss_mb"] = peak_rss_mb(worker.pid)
            # a caption worker (offline describer) on image posts, for its memory
            if caption_images:
                caption_worker = WorkerProcess(s, "caption", loglevel="warning")
                from affectstream.bench.workload import images
                import base64
                import io

                posts = []
                for i, image in enumerate(images(caption_images)):
                    buffer = io.BytesIO()
                    image.save(buffer, format="JPEG", quality=85)
                    posts.append(orjson.dumps({"id": f"img-{i}", "text": "look at this",
                                               "image": {"b64": base64.b64encode(buffer.getvalue()).decode()}}))
                from affectstream.streaming.tools.producer import produce_lines

                produce_lines(s, posts, topic=s.topic_posts)
                ok = live.wait_for([f"img-{i}" for i in range(caption_images)], 180)
                out["caption_worker_peak_rss_mb"] = peak_rss_mb(caption_worker.pid)
                out["caption_worker_complete"] = ok
                say(f"  caption worker: {caption_images} image posts {'done' if ok else 'INCOMPLETE'}")
        finally:
            live.close()
            worker.stop()
            if caption_worker is not None:
                caption_worker.stop()
    return out
