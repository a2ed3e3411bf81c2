"""The demo's live view: what it has seen (``Progress``), where it reads it (``Watcher``: the ``sentiment``
and DLQ topics, the Redis brand buckets) and how it shows it (``render``, a rich Live view, or plain
progress lines for logs; ``watch`` runs the loop until every post is accounted for)."""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import orjson

from affectstream.streaming.tools.tail import dlq_text, result_text, topic_consumer
from affectstream.streaming.tools.workers import WorkerProcess
from affectstream.streaming.worker.redis_client import sync_redis
from affectstream.streaming.worker.redis_keys import ALL_BRANDS
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings


@dataclass
class Progress:
    total: int
    started: float = field(default_factory=time.monotonic)
    produced_at: float | None = None
    first_result_at: float | None = None
    last_result_at: float | None = None
    result_ids: set = field(default_factory=set)
    dlq: int = 0
    dlq_reasons: collections.Counter = field(default_factory=collections.Counter)
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=8))
    brand_counts: dict = field(default_factory=dict)   # brand -> {label: count}, from Redis
    model_version: str = ""

    @property
    def done(self) -> bool:
        return len(self.result_ids) + self.dlq >= self.total

    def throughput(self) -> float:
        """Posts accounted for per second, from the first result to the latest (the worker's start-up —
        group join and model load — is excluded; the summary also gives the end-to-end figure)."""
        if self.first_result_at is None or self.last_result_at is None:
            return 0.0
        return (len(self.result_ids) + self.dlq) / max(self.last_result_at - self.first_result_at, 0.5)


class Watcher:
    """Reads ``sentiment`` and the DLQ from the start (no consumer group) and the Redis brand buckets.
    Only records written after ``since_ms`` count, so an external broker's old messages are ignored."""

    def __init__(self, settings: Settings, progress: Progress, since_ms: int):
        self.settings, self.progress, self.since_ms = settings, progress, since_ms
        self.consumer = topic_consumer(settings, [settings.kafka.topic_sentiment, settings.kafka.topic_dlq],
                                       from_beginning=True, client_id="affectstream-demo")
        self.redis = sync_redis(settings)

    def poll(self, timeout_ms: int = 200) -> None:
        p = self.progress
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms).items():
            for record in records:
                if record.timestamp < self.since_ms:
                    continue
                now = time.monotonic()
                p.first_result_at = p.first_result_at or now
                p.last_result_at = now
                if tp.topic == self.settings.kafka.topic_dlq:
                    letter = orjson.loads(record.value)
                    p.dlq += 1
                    p.dlq_reasons[f"{letter.get('stage')}/{letter.get('reason')}"] += 1
                    p.recent.append(("dlq", letter))
                else:
                    result = Result.from_json(record.value)
                    p.result_ids.add(result.id)
                    p.model_version = result.model or p.model_version
                    p.recent.append(("result", result))

    def refresh_brands(self) -> None:
        keys = self.settings.keys
        counts: dict[str, collections.Counter] = {}
        for key in self.redis.scan_iter(match=keys.brand_pattern(), count=500):
            parsed = keys.parse_brand_key(key.decode())
            if parsed is None or parsed[0] == ALL_BRANDS:
                continue
            brand = parsed[0]
            c = counts.setdefault(brand, collections.Counter())
            for label, n in self.redis.hgetall(key).items():
                c[label.decode()] += int(n)
        self.progress.brand_counts = counts

    def close(self) -> None:
        self.consumer.close()
        self.redis.close()


# --- rendering -------------------------------------------------------------------------------------

LABELS = ("positive", "neutral", "negative")


def render(progress: Progress, workers: list[WorkerProcess], trained: bool):
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    p = progress
    elapsed = time.monotonic() - p.started
    head = Text()
    head.append(f"posts in {p.total}   results {len(p.result_ids)}   DLQ {p.dlq}   ")
    head.append(f"{p.throughput():.1f} posts/s   {elapsed:.0f}s   ")
    alive = sum(w.alive() for w in workers)
    head.append(f"workers {alive}/{len(workers)}", style="green" if alive == len(workers) else "bold red")
    if p.first_result_at is None:
        head.append("   (waiting for the worker to join the group and load the model...)", style="dim")
    if not trained:
        head.append("\nUNTRAINED MODEL: labels are meaningless until `affectstream train --preset default`",
                    style="bold red")
    brands = Table(title="sentiment toward each brand (its target labels, Redis minute buckets)", expand=True)
    brands.add_column("brand")
    for label, style in zip(LABELS, ("green", "yellow", "red")):
        brands.add_column(label, justify="right", style=style)
    brands.add_column("share", ratio=1)
    for brand in sorted(p.brand_counts):
        c = p.brand_counts[brand]
        total = sum(c.values()) or 1
        bar = Text()
        for label, style in zip(LABELS, ("green", "yellow", "red")):
            bar.append("█" * round(30 * c.get(label, 0) / total), style=style)
        brands.add_row(brand, *(str(c.get(label, 0)) for label in LABELS), bar)
    recent = Text("\n").join(
        dlq_text(v) if kind == "dlq" else result_text(v) for kind, v in list(p.recent)[::-1]) or Text("…")
    legend = Text("rationale words: ", style="dim")
    legend.append("from the post text", style="cyan")
    legend.append(" / ", style="dim")
    legend.append("from the image description", style="magenta")
    return Group(Panel(head, title="affectstream demo"), brands,
                 Panel(Group(recent, legend), title="recent posts"))


# --- the loop ----------------------------------------------------------------------------------------

def watch(progress: Progress, watcher: Watcher, procs: list[WorkerProcess], deadline: float, live: bool,
           trained: bool, console, say) -> bool:
    last_brands = last_line = 0.0

    def step() -> bool | None:
        nonlocal last_brands
        watcher.poll(200)
        now = time.monotonic()
        if now - last_brands > 1.0:
            watcher.refresh_brands()
            last_brands = now
        if progress.done:
            watcher.refresh_brands()  # the last frame shows the final counts
            return True
        if now > deadline:
            say(f"timed out with {len(progress.result_ids)} results and {progress.dlq} dead letters "
                f"of {progress.total} posts")
            return False
        if not any(w.alive() for w in procs):
            say("every worker exited")
            for w in procs:
                say(f"--- worker pid {w.pid} log tail:\n{w.log_tail()}")
            return False
        return None

    if live:
        from rich.live import Live

        with Live(render(progress, procs, trained), console=console, refresh_per_second=4,
                  transient=False) as view:
            while True:
                outcome = step()
                view.update(render(progress, procs, trained))
                if outcome is not None:
                    return outcome
    while True:
        outcome = step()
        now = time.monotonic()
        if outcome is not None or now - last_line > 2.0:
            last_line = now
            p = progress
            say(f"[{now - p.started:6.1f}s] results {len(p.result_ids)}  DLQ {p.dlq}  of {p.total}  "
                f"{p.throughput():.1f} posts/s")
        if outcome is not None:
            return outcome
