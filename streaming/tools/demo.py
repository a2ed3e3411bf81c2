"""``affectstream demo``: the whole pipeline on one machine, with a live per-brand view.

1. start an embedded broker and Redis (``EmbeddedServices``; ``--external`` uses the configured ones),
   create the topics;
2. ensure a model: ``settings.classify.model_dir`` when it holds a trained model, else an untrained one built
   from the packaged encoder (with a loud warning: its labels mean nothing until ``affectstream train``);
3. start worker process(es) ``affectstream worker --role all`` (``workers.WorkerProcess``: subprocesses,
   so faust owns its own event loop and signal handling and a crash cannot take the view down); they are
   stopped (SIGTERM, then SIGKILL) on exit, Ctrl-C or error, and die with this process on Linux. Unless
   web is disabled, the first worker serves the live dashboard on ``settings.web.bind`` (loopback by
   default), port ``settings.web.port`` (or a free port when that one is taken), and the demo prints
   ``dashboard: http://127.0.0.1:PORT/``; the other workers open no port;
4. stream the bundled sample (``created_at`` shifted so the newest post is "now") and show results as
   they arrive (from the ``sentiment`` and DLQ topics) and per-brand counts (from the Redis minute
   buckets): ``demo_view``;
5. stop once every sample line is accounted for — a result or a dead letter — or at the timeout, and
   print a summary.
"""
from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from affectstream.streaming.tools.demo_view import LABELS, Progress, Watcher, watch
from affectstream.streaming.tools.sample import BRANDS_FILE
from affectstream.streaming.tools.workers import WorkerProcess
from affectstream.streaming.worker.settings import Settings


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
    """``settings.web.port`` when it is free, else any free port (a second demo, or a worker on 6066)."""
    from affectstream.streaming.tools.services import free_port

    family = socket.AF_INET6 if ":" in settings.web.bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((settings.web.bind, settings.web.port))
            return settings.web.port
        except OSError:
            return free_port()


def dashboard_url(settings: Settings, port: int) -> str:
    """Where to open the dashboard: loopback when the server listens there or on every interface."""
    host = settings.web.bind
    if host in ("0.0.0.0", "", "localhost") or host.startswith("127."):
        host = "127.0.0.1"
    elif ":" in host:
        host = "[::1]" if host in ("::", "::1") else f"[{host}]"
    return f"http://{host}:{port}/"


# --- the model -------------------------------------------------------------------------------------

UNTRAINED_WARNING = """\
!!! WARNING: no trained model at {model_dir!r}.
!!! Using an UNTRAINED model at {path!r} (packaged encoder + randomly initialised heads).
!!! Its labels and rationales are MEANINGLESS; they only show the pipeline working.
!!! Train one with:   affectstream train --preset default"""


def ensure_model(settings: Settings, say=print) -> tuple[Path, bool]:
    """(model directory, trained?) — the configured model if trained, else a cached untrained one."""
    from affectstream.model.deploy import build_untrained, is_trained

    configured = Path(settings.classify.model_dir)
    if is_trained(configured):
        return configured, True
    path = configured.parent / "untrained"
    if not (path / "model.safetensors").exists():
        say(f"building an untrained model in {path} ...")
        build_untrained(path)
    say(UNTRAINED_WARNING.format(model_dir=str(configured), path=str(path)))
    return path, False


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
    brand_drivers: dict = field(default_factory=dict)   # brand -> label -> top driver terms (docs/drivers.md)

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
        if self.brand_counts:
            out.append("sentiment toward each brand (per-brand target labels, from the Redis buckets):")
        for brand in sorted(self.brand_counts):
            c = self.brand_counts[brand]
            out.append(f"  {brand:<10} " + "  ".join(f"{label} {c.get(label, 0):>3}" for label in LABELS))
            for label, terms in self.brand_drivers.get(brand, {}).items():
                out.append(f"  {'':<10} {label} drivers: {', '.join(terms) if terms else '(none)'}")
        if not self.complete:
            out.append("INCOMPLETE: timed out or a worker failed before every post was accounted for")
        return out


def run_demo(settings: Settings, *, sample: Path, live: bool = True, rate: float = 0.0, timeout_s: float = 600.0,
             workers: int = 1, say=None, hold: bool = False, drivers_of=None) -> Summary:
    """Run the demo; ``hold`` keeps the workers and the dashboard up after the stream until Ctrl-C.
    ``drivers_of(settings, brands, now_ms)``: brand -> label -> top driver terms for the summary (the CLI passes
    the monitor's reader: tools and monitor share a layer, so the demo does not import it)."""
    from rich.console import Console

    from affectstream.streaming.tools.producer import produce_lines, read_lines
    from affectstream.streaming.tools.services import EmbeddedServices
    from affectstream.streaming.worker.app import check_web_exposure
    from affectstream.streaming.worker.kafka_config import create_topics

    check_web_exposure(settings)  # off loopback without a token: say so before starting anything

    console = Console(stderr=False, highlight=False)
    say = say or (lambda msg: print(msg, flush=True))
    started = time.monotonic()
    lines = shift_to_now(list(read_lines(str(sample))))
    progress = Progress(total=len(lines))
    procs: list[WorkerProcess] = []
    watcher = None
    drivers: dict = {}
    with EmbeddedServices(settings) as services:
        s = services.settings
        try:
            if settings.kafka.brokers:  # external: make sure the topics exist
                create_topics(s)
            say(f"broker {s.redacted()['broker_url']}   redis {s.redacted()['redis_url']}")
            model_dir, trained = ensure_model(s, say)
            s = s.replace(model_dir=str(model_dir), web_enabled=False, brands_file=s.brands.file or str(BRANDS_FILE))
            web_port = dashboard_port(settings) if settings.web.enabled else None
            for i in range(workers):
                # the first worker serves the dashboard (and /metrics); the others run without web
                web = {"web_enabled": True, "web_port": web_port} if i == 0 and web_port else {}
                procs.append(WorkerProcess(s.replace(**web), "all"))
            say(f"started {workers} worker(s); logs: {', '.join(w.log_path for w in procs)}")
            if web_port:
                url = dashboard_url(settings, web_port)
                say(f"dashboard: {url}   (metrics: {url}metrics)")
                if settings.web.auth_token:
                    say("  (token required: open the dashboard once with ?token=<AFFECTSTREAM_WEB_AUTH_TOKEN>; "
                        "API and /metrics clients send Authorization: Bearer <token>)")
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
            complete = watch(progress, watcher, procs, deadline, live, trained, console, say)
            if produce_error:
                raise produce_error[0]
            watcher.refresh_brands()
            if drivers_of is not None:
                drivers = drivers_of(s, sorted(progress.brand_counts), int(time.time() * 1000))
            if hold and web_port and complete:
                _hold(procs, dashboard_url(settings, web_port), say)
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
        brand_counts={b: dict(c) for b, c in p.brand_counts.items()}, brand_drivers=drivers)
    say("")
    for line in summary.lines():
        say(line)
    return summary


def _hold(procs: list[WorkerProcess], url: str, say) -> None:
    """Keep the workers (and so the dashboard) up after the stream, until Ctrl-C or a worker exits."""
    say(f"stream done; the dashboard stays up at {url} until Ctrl-C")
    with contextlib.suppress(KeyboardInterrupt):
        while all(w.alive() for w in procs):
            time.sleep(0.5)
