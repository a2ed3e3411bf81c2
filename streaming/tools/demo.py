"""``affectstream demo``: the whole pipeline on one machine, with a live per-brand view.

1. start an embedded broker and Redis (``EmbeddedServices``; ``--external`` uses the configured ones),
   create the topics;
2. ensure a model: ``settings.model_dir`` when it holds a trained model, else an untrained one built
   from the packaged encoder (with a loud warning: its labels mean nothing until ``affectstream train``);
3. start worker process(es) ``affectstream worker --role all`` — subprocesses, so faust owns its own event
   loop and signal handling and a crash cannot take the view down; they are stopped (SIGTERM, then
   SIGKILL) on exit, Ctrl-C or error, and die with this process on Linux. Unless web is disabled, the first
   worker serves the live dashboard on ``settings.web_port`` (or a free port when that one is taken) and
   the demo prints ``dashboard: http://127.0.0.1:PORT/``;
4. stream the bundled sample (``created_at`` shifted so the newest post is "now") and show results as they arrive (from the ``sentiment`` and DLQ topics)
   and per-brand counts (from the Redis minute buckets);
5. stop once every sample line is accounted for — a result or a dead letter — or at the timeout, and
   print a summary.
"""
from __future__ import annotations

import contextlib
import collections
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from affectstream.streaming.worker.settings import ENV_PREFIX, Settings

STOP_TIMEOUT_S = 20.0


# --- worker processes ------------------------------------------------------------------------------

def settings_env(settings: Settings, base: dict | None = None) -> dict[str, str]:
    """The environment that makes ``Settings.load()`` in a child process return ``settings``.
    (Environment, not argv: secrets must not show up in ``ps``.)"""
    env = dict(os.environ if base is None else base)
    for name, value in dataclasses.asdict(settings).items():
        env[ENV_PREFIX + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class WorkerProcess:
    """``python -m affectstream.cli worker`` as a child process with its log in a file."""

    def __init__(self, settings: Settings, role: str = "all", *, log_path: str | None = None,
                 extra_args: list[str] | None = None, loglevel: str = "info"):
        self.role = role
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"affectstream-worker-{role}-", suffix=".log")
            os.close(fd)
        self.log_path = log_path
        web = "--with-web" if settings.web_enabled else "--without-web"  # port: settings.web_port
        cmd = [sys.executable, "-m", "affectstream.cli", "worker", "--role", role, web,
               "--no-create-topics", "--loglevel", loglevel, *(extra_args or [])]
        root = str(Path(__file__).resolve().parent.parent)
        env = settings_env(settings)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=os.getcwd(), preexec_fn=_die_with_parent())
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (faust stops cleanly and commits acked offsets), SIGKILL after ``timeout_s``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, nothing committed on the way out."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _die_with_parent():
    try:
        from affectstream.streaming.tools.services import _die_with_parent as die
        return die()
    except ImportError:
        return None


def shift_to_now(lines: list[bytes], now_ms: int | None = None) -> list[bytes]:
    """Move the posts' ``created_at`` (epoch ms) so the newest is now, keeping their spacing: the sample is
    replayed as a live stream, so the dashboard's last hour and the minute buckets show it as it happens.
    Lines that are not JSON objects with an integer ``created_at`` are left exactly as they are."""
    stamps = []
    for line in lines:
        try:
            post = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(post, dict) and isinstance(post.get("created_at"), int):
            stamps.append(post["created_at"])
    if not stamps:
        return lines
    offset = (now_ms if now_ms is not None else int(time.time() * 1000)) - max(stamps)
    out = []
    for line in lines:
        try:
            post = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.append(line)
            continue
        if isinstance(post, dict) and isinstance(post.get("created_at"), int):
            post["created_at"] += offset
            out.append(orjson.dumps(post))
        else:
            out.append(line)
    return out


def dashboard_port(settings: Settings) -> int:
    """``settings.web_port`` when it is free, else any free port (a second demo, or a worker on 6066)."""
    import socket

    from affectstream.streaming.tools.services import free_port

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", settings.web_port))
            return settings.web_port
        except OSError:
            return free_port()


# --- the model -------------------------------------------------------------------------------------

UNTRAINED_WARNING = """\
!!! WARNING: no trained model at {model_dir!r}.
!!! Using an UNTRAINED model at {path!r} (packaged encoder + randomly initialised heads).
!!! Its labels and rationales are MEANINGLESS; they only show the pipeline working.
!!! Train one with:   affectstream train --preset default"""


def ensure_model(settings: Settings, say=print) -> tuple[Path, bool]:
    """(model directory, trained?) — the configured model if trained, else a cached untrained one."""
    from affectstream.model.deploy import build_untrained, is_trained

    configured = Path(settings.model_dir)
    if is_trained(configured):
        return configured, True
    path = configured.parent / "untrained"
    if not (path / "model.safetensors").exists():
        say(f"building an untrained model in {path} ...")
        build_untrained(path)
    say(UNTRAINED_WARNING.format(model_dir=str(configured), path=str(path)))
    return path, False


# --- watching results ------------------------------------------------------------------------------

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
        from kafka import KafkaConsumer, TopicPartition
        import redis

        from affectstream.streaming.worker.kafka_config import bootstrap_servers, kafka_client_kwargs
        from affectstream.streaming.worker.redis_client import redis_client_kwargs

        self.settings, self.progress, self.since_ms = settings, progress, since_ms
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers(settings), group_id=None,
                                      enable_auto_commit=False, client_id="affectstream-demo",
                                      **kafka_client_kwargs(settings))
        tps = []
        for topic in (settings.topic_sentiment, settings.topic_dlq):
            for p in sorted(self.consumer.partitions_for_topic(topic) or {0}):
                tps.append(TopicPartition(topic, p))
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.redis = redis.Redis.from_url(settings.redis_url, **redis_client_kwargs(settings))

    def poll(self, timeout_ms: int = 200) -> None:
        p = self.progress
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms).items():
            for record in records:
                if record.timestamp < self.since_ms:
                    continue
                value = orjson.loads(record.value)
                now = time.monotonic()
                p.first_result_at = p.first_result_at or now
                p.last_result_at = now
                if tp.topic == self.settings.topic_dlq:
                    p.dlq += 1
                    p.dlq_reasons[f"{value.get('stage')}/{value.get('reason')}"] += 1
                    p.recent.append(("dlq", value))
                else:
                    p.result_ids.add(value.get("id"))
                    p.model_version = value.get("model", p.model_version)
                    p.recent.append(("result", value))

    def refresh_brands(self) -> None:
        from affectstream.streaming.worker.redis_keys import ALL_BRANDS

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

    from affectstream.streaming.tools.tail import dlq_text, result_text

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
    brands = Table(title="per-brand sentiment (Redis minute buckets)", expand=True)
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


# --- the demo --------------------------------------------------------------------------------------

@dataclass
class Summary:
    posts_in: int
    results: int
    dlq: int
    dlq_reasons: dict
    wall_s: float
    stream_s: float
    posts_per_s: float
    model: str
    trained: bool
    complete: bool
    brand_counts: dict

    def lines(self) -> list[str]:
        out = [
            f"posts in     {self.posts_in}",
            f"results      {self.results}",
            f"DLQ          {self.dlq}  " + ", ".join(f"{k}={v}" for k, v in sorted(self.dlq_reasons.items())),
            f"wall time    {self.wall_s:.1f}s in all; {self.stream_s:.1f}s from the first post sent to the last "
            f"result ({self.posts_in / max(self.stream_s, 1e-6):.1f} posts/s end to end, worker start-up included)",
            f"throughput   {self.posts_per_s:.1f} posts/s (first to last result)",
            f"model        {self.model}" + ("" if self.trained else "  (UNTRAINED: labels are meaningless)"),
        ]
        for brand in sorted(self.brand_counts):
            c = self.brand_counts[brand]
            out.append(f"  {brand:<10} " + "  ".join(f"{label} {c.get(label, 0):>3}" for label in LABELS))
        if not self.complete:
            out.append("INCOMPLETE: timed out or a worker failed before every post was accounted for")
        return out


def run_demo(settings: Settings, *, sample: Path, live: bool = True, rate: float = 0.0, timeout_s: float = 600.0,
             workers: int = 1, say=None, hold: bool = False) -> Summary:
    """Run the demo; ``hold`` keeps the workers and the dashboard up after the stream until Ctrl-C."""
    from rich.console import Console

    from affectstream.streaming.tools.producer import produce_lines, read_lines
    from affectstream.streaming.tools.services import EmbeddedServices
    from affectstream.streaming.worker.kafka_config import create_topics

    console = Console(stderr=False, highlight=False)
    say = say or (lambda msg: print(msg, flush=True))
    started = time.monotonic()
    lines = shift_to_now(list(read_lines(str(sample))))
    progress = Progress(total=len(lines))
    procs: list[WorkerProcess] = []
    watcher = None
    with EmbeddedServices(settings) as services:
        s = services.settings
        try:
            if settings.broker_url:  # external: make sure the topics exist
                create_topics(s)
            say(f"broker {s.redacted()['broker_url']}   redis {s.redacted()['redis_url']}")
            model_dir, trained = ensure_model(s, say)
            s = s.replace(model_dir=str(model_dir), web_enabled=False)
            web_port = dashboard_port(settings) if settings.web_enabled else None
            for i in range(workers):
                # the first worker serves the dashboard (and /metrics); the others run without web
                web = {"web_enabled": True, "web_port": web_port} if i == 0 and web_port else {}
                procs.append(WorkerProcess(s.replace(**web), "all"))
            say(f"started {workers} worker(s); logs: {', '.join(w.log_path for w in procs)}")
            if web_port:
                say(f"dashboard: http://127.0.0.1:{web_port}/   (metrics: http://127.0.0.1:{web_port}/metrics)")
            since_ms = int(time.time() * 1000) - 1000
            watcher = Watcher(s, progress, since_ms)
            producer_done = threading.Event()
            produce_error: list[BaseException] = []

            def produce() -> None:
                try:
                    produce_lines(s, lines, rate=rate)
                except BaseException as e:  # noqa: BLE001 - reported by the main thread
                    produce_error.append(e)
                finally:
                    producer_done.set()

            progress.produced_at = time.monotonic()
            threading.Thread(target=produce, name="demo-producer", daemon=True).start()
            deadline = started + timeout_s
            complete = _watch(progress, watcher, procs, deadline, live, trained, console, say)
            if produce_error:
                raise produce_error[0]
            watcher.refresh_brands()
            if hold and web_port and complete:
                _hold(procs, web_port, say)
        finally:
            for w in procs:
                w.stop()
            if watcher is not None:
                watcher.close()
        failed = [w for w in procs if w.proc.returncode not in (0, None, -signal.SIGTERM)]
        for w in failed if not complete else []:
            say(f"--- worker pid {w.pid} exited with {w.proc.returncode}; log tail:\n{w.log_tail()}")
    p = progress
    stream_s = ((p.last_result_at or time.monotonic()) - (p.produced_at or started))
    summary = Summary(
        posts_in=p.total, results=len(p.result_ids), dlq=p.dlq, dlq_reasons=dict(p.dlq_reasons),
        wall_s=time.monotonic() - started, stream_s=stream_s, posts_per_s=p.throughput(),
        model=p.model_version or str(model_dir), trained=trained, complete=complete,
        brand_counts={b: dict(c) for b, c in p.brand_counts.items()})
    say("")
    for line in summary.lines():
        say(line)
    return summary


def _hold(procs: list[WorkerProcess], web_port: int, say) -> None:
    """Keep the workers (and so the dashboard) up after the stream, until Ctrl-C or a worker exits."""
    say(f"stream done; the dashboard stays up at http://127.0.0.1:{web_port}/ until Ctrl-C")
    with contextlib.suppress(KeyboardInterrupt):
        while all(w.alive() for w in procs):
            time.sleep(0.5)


def _watch(progress: Progress, watcher: Watcher, procs: list[WorkerProcess], deadline: float, live: bool,
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
