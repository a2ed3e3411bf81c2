"""The chaos run (`affectstream reliability --chaos`): posts with images, duplicates and hostile messages
through separate caption and classify workers (two of each) while a seeded schedule breaks things.

    affectstream reliability --chaos                          # CI size: 3,000 messages, paced, ~2.5 min
    affectstream reliability --chaos --chaos-posts 20000 --chaos-seed 7 --chaos-seconds 300 --chaos-rate 0 \
        --out docs/reliability.md                             # the table's row: one burst, capacity under chaos
    affectstream reliability --chaos --chaos-posts 100000     # full size (tens of minutes on 2 cores)

By default the messages are paced over 3/4 of the schedule, so every fault (the captioner's too) hits
posts in flight; with ``--chaos-rate 0`` they go in one burst and posts/s is the capacity under chaos,
but the caption stage (fast) may be done before the captioner faults come.

Its own Tansu broker (memory storage: frozen with SIGSTOP, never restarted, see FACTS) and its own
redis-server with an append-only file (stopped and started again on the same port and directory, as a
production Redis with AOF would come back). The faults are ``bench/chaos_schedule.py``'s; the checks at
the end are ``bench/chaos_audit.py``'s; every worker's VmRSS is sampled each second and held to
:data:`RSS_LIMIT_MB`. The run prints posts/s achieved under chaos and returns a :class:`ChaosReport`,
which ``bench/reliability.py``'s ``chaos_row`` turns into a row of the reliability table.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from affectstream.bench.chaos_audit import Audit, audit, stored_ids
from affectstream.bench.chaos_schedule import Fault, chaos_schedule, describe, timeline
from affectstream.bench.chaos_worker import CONTROL_ENV, write_control
from affectstream.bench.chaos_workload import Workload, build
from affectstream.streaming.tools.processes import die_with_parent
from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.tools.services import RunningService, free_port, start_broker, start_redis
from affectstream.streaming.tools.workers import WorkerProcess, settings_env
from affectstream.streaming.worker.kafka_config import create_topics
from affectstream.streaming.worker.settings import Settings

# Documented bound: no worker process (caption or classify, steered captioner, tiny to MiniLM-sized
# model) may reach this resident set size at any sample; measured peaks are in the report and the row.
RSS_LIMIT_MB = 1200.0
SLOTS = ("caption-0", "caption-1", "classify-0", "classify-1")   # worker slots: "<role>-<n>"
READY = "[^Worker]: Ready"         # faust's log line once a worker has joined and is consuming
MAX_SELF_EXITS = 5                # a slot whose worker keeps exiting by itself ends the run


@dataclass
class ChaosConfig:
    posts: int = 3000                 # messages sent, duplicates and hostile ones included
    seed: int = 13
    model_dir: str = "models/default"
    horizon_s: float = 0.0            # faults start within this many seconds; 0: scaled from `posts`
    mean_gap_s: float = 6.0
    max_outage_s: float = 10.0
    caption_timeout_s: float = 1.0    # the slow captioner's calls run 0.2-2 s: some time out
    drain_timeout_s: float = 600.0    # after the last fault, how long every result may take
    rate: float | None = None         # messages/s sent; None: spread over 3/4 of the horizon; 0: one burst
    rss_limit_mb: float = RSS_LIMIT_MB
    batch_max: int = 32
    workdir: str = ""                 # logs, the Redis data dir, the captioner control file

    def horizon(self) -> float:
        return self.horizon_s or max(60.0, min(600.0, self.posts / 25))

    def send_rate(self) -> float:
        """The stream's pace: by default the messages keep arriving through most of the schedule, so
        faults hit posts in flight in every stage (capacity caps it: a backlog then builds up)."""
        return self.posts / (0.75 * self.horizon()) if self.rate is None else self.rate


@dataclass
class ChaosReport:
    config: ChaosConfig
    faults: list[Fault]
    applied: dict = field(default_factory=dict)    # action -> how many were applied
    audit: Audit | None = None
    seconds: float = 0.0                           # whole run, workers started to audit done
    process_seconds: float = 0.0                   # first message sent to last result processed
    posts_per_s: float = 0.0                       # distinct valid posts / process_seconds
    rss_mb: dict = field(default_factory=dict)     # slot -> [last sample, peak over every incarnation]
    restarts: int = 0
    skipped: int = 0                               # faults not applied: every post already had its result
    self_exits: list = field(default_factory=list)  # workers that exited without being killed
    workload: dict = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)

    @property
    def rss_peak_mb(self) -> float:
        return max((peak for _, peak in self.rss_mb.values()), default=0.0)

    @property
    def pace(self) -> str:
        return pace(self.config)

    @property
    def ok(self) -> bool:
        return (self.audit is not None and self.audit.ok and self.rss_peak_mb <= self.config.rss_limit_mb
                and all(self.applied.get(a, 0) for a in {f.action for f in self.faults}))


class ChaosWorker(WorkerProcess):
    """``python -m affectstream.bench.chaos_worker`` (a worker with the steered captioner) as a child."""

    def __init__(self, settings: Settings, role: str, control: str, log_path: str):
        self.role, self.log_path = role, log_path
        env = settings_env(settings, {**os.environ, CONTROL_ENV: control})
        cmd = [sys.executable, "-m", "affectstream.bench.chaos_worker", "--role", role]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, preexec_fn=die_with_parent())
        self.pid = self.proc.pid


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class ChaosRun:
    def __init__(self, cfg: ChaosConfig, echo=print):
        self.cfg, self.echo = cfg, echo
        self.workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="affectstream-chaos-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.control = str(self.workdir / "captioner.json")
        self.redis_dir = str(self.workdir / "redis")
        self.workers: dict[str, ChaosWorker | None] = {}
        self.incarnations: dict[str, int] = {}
        self.broker: RunningService | None = None
        self.redis: RunningService | None = None
        self.redis_port = 0
        self.frozen = False
        self.rss: dict[str, list[float]] = {}
        self.self_exits: list[str] = []
        self._next_sample = 0.0

    # --- services and workers ---
    def start(self) -> Settings:
        write_control(self.control, "ok")
        self.broker = start_broker(free_port())
        self.redis_port = free_port()
        self.redis = start_redis(self.redis_port, data_dir=self.redis_dir)
        run = f"{self.cfg.seed}-{os.getpid()}"
        s = Settings().replace(broker_url=self.broker.url, redis_url=self.redis.url, app_id=f"affectstream-chaos-{run}",
                     redis_prefix="chaos:", model_dir=str(self.cfg.model_dir), captioner="chaos",
                     caption_timeout_s=self.cfg.caption_timeout_s, batch_max=self.cfg.batch_max,
                     partitions=4, threads=1, web_enabled=False, session_timeout_s=6.0,
                     heartbeat_interval_s=1.0,
                     captioner_mismatch="warn")  # the steered captioner is not the model's: classify anyway
        create_topics(s)
        self.settings = s
        for slot in SLOTS:
            self.spawn(slot)
        return s

    def spawn(self, slot: str) -> None:
        n = self.incarnations[slot] = self.incarnations.get(slot, -1) + 1
        log_path = str(self.workdir / f"worker-{slot}-{n}.log")
        self.workers[slot] = ChaosWorker(self.settings, slot.rsplit("-", 1)[0], self.control, log_path)

    def stop(self) -> None:
        if self.frozen and self.broker is not None:
            os.kill(self.broker.pid, signal.SIGCONT)
            self.frozen = False
        for w in self.workers.values():
            if w is not None:
                w.stop()
        for service in (self.broker, self.redis):
            if service is not None:
                service.stop()

    # --- faults ---
    def apply(self, edge: str, f: Fault) -> None:
        begin = edge == "begin"
        if f.action == "kill_worker":
            if begin:
                w = self.workers.get(f.target)
                if w is not None:
                    w.kill()
                self.workers[f.target] = None
            else:
                self.spawn(f.target)
        elif f.action == "stop_redis":
            if begin:
                self.redis.stop()
            else:
                self.redis = start_redis(self.redis_port, data_dir=self.redis_dir)
        elif f.action == "freeze_broker":
            os.kill(self.broker.pid, signal.SIGSTOP if begin else signal.SIGCONT)
            self.frozen = begin
        else:
            mode = ("slow" if f.action == "slow_captioner" else "fail") if begin else "ok"
            write_control(self.control, mode)

    def sample(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_sample:
            return
        self._next_sample = now + 1.0
        for slot, w in self.workers.items():
            if w is None or not w.alive():
                continue
            mb = rss_mb(w.pid)
            if mb is not None:
                last_peak = self.rss.setdefault(slot, [mb, mb])
                last_peak[0], last_peak[1] = mb, max(last_peak[1], mb)

    def wait_until(self, deadline: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sample()
            self.check_workers()
            time.sleep(min(left, 0.25))

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until every worker has joined its group (faust logs "[^Worker]: Ready"): the clock of posts/s
        starts at the stream, not at model loading."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_workers()
            if all(READY in Path(w.log_path).read_text(errors="replace") for w in self.workers.values() if w):
                return
            self.wait_until(time.monotonic() + 0.5)
        raise RuntimeError(f"workers not ready within {timeout_s:.0f} s; logs in {self.workdir}")

    def check_workers(self) -> None:
        """A worker that exited without being killed is restarted (as an orchestrator would) and noted."""
        for slot, w in list(self.workers.items()):
            if w is not None and not w.alive():
                self.echo(f"chaos: worker {slot} exited by itself with {w.proc.returncode}; restarting "
                          f"(log {w.log_path}):\n{w.log_tail(15)}")
                self.self_exits.append(f"{slot} exit {w.proc.returncode} ({w.log_path})")
                if sum(x.startswith(f"{slot} ") for x in self.self_exits) > MAX_SELF_EXITS:
                    raise RuntimeError(f"worker {slot} keeps exiting by itself: {self.self_exits}")
                self.spawn(slot)


class Finished:
    """``check()`` at most every ``every_s`` seconds; once true, true for good."""

    def __init__(self, check, every_s: float = 5.0):
        self.check, self.every_s, self.value, self.last = check, every_s, False, 0.0

    def __call__(self) -> bool:
        if not self.value and time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            try:
                self.value = bool(self.check())
            except Exception:  # noqa: BLE001 - Redis may be down right now (a fault): not finished
                self.value = False
        return self.value


def run_chaos(cfg: ChaosConfig, echo=print) -> ChaosReport:
    """The whole run: servers, workers, the stream, the schedule, the drain, the audit."""
    wl: Workload = build(cfg.posts, cfg.seed)
    faults = chaos_schedule(cfg.seed, cfg.horizon(), SLOTS, mean_gap_s=cfg.mean_gap_s, max_outage_s=cfg.max_outage_s)
    report = ChaosReport(cfg, faults, workload={"messages": wl.messages, "valid": len(wl.valid),
                                                "duplicates": wl.duplicates, "hostile": len(wl.hostile),
                                                "image_posts": wl.image_posts})
    echo(f"chaos: seed {cfg.seed}, {wl.messages:,} messages ({len(wl.valid):,} valid, {wl.duplicates:,} "
         f"duplicates, {len(wl.hostile):,} hostile, {wl.image_posts:,} with images) sent "
         f"{pace(cfg)}; {len(faults)} faults "
         f"over {cfg.horizon():.0f} s:\n{describe(faults)}")
    chaos = ChaosRun(cfg, echo)
    started = time.monotonic()
    try:
        s = chaos.start()
        echo(f"chaos: logs in {chaos.workdir}")
        chaos.wait_ready()
        sent_error: list[BaseException] = []

        def send() -> None:
            try:
                produce_lines(s, wl.lines, rate=cfg.send_rate())
            except BaseException as e:  # noqa: BLE001 - reported below
                sent_error.append(e)

        t0_wall, t0 = time.time(), time.monotonic()
        producer = threading.Thread(target=send, daemon=True)
        producer.start()
        ids = set(wl.valid)
        kinds = {x.action for x in faults}
        skipped: set[int] = set()
        finished = Finished(lambda: ids <= stored_ids(s))
        for at, edge, f in timeline(faults):
            chaos.wait_until(t0 + at)
            chaos.check_workers()
            if id(f) in skipped:
                continue
            if (edge == "begin" and not producer.is_alive() and set(report.applied) == kinds
                    and finished()):  # every kind applied, every post has its result: stop breaking things
                skipped.add(id(f))
                continue
            echo(f"chaos: {time.monotonic() - t0:7.1f}s {edge:<5} {f.action} {f.target}")
            chaos.apply(edge, f)
            if edge == "begin":
                report.applied[f.action] = report.applied.get(f.action, 0) + 1
        report.restarts = sum(chaos.incarnations.values())
        report.skipped = len(skipped)
        producer.join(cfg.drain_timeout_s)
        if sent_error or producer.is_alive():
            raise RuntimeError(f"producer failed: {sent_error[:1] or 'still sending'}")
        deadline = time.monotonic() + cfg.drain_timeout_s
        have = 0
        while time.monotonic() < deadline:
            chaos.check_workers()
            have = len(stored_ids(s) & ids)
            if have == len(ids):
                break
            chaos.wait_until(time.monotonic() + 2.0)
        echo(f"chaos: {have:,} of {len(ids):,} valid posts have a result, {time.monotonic() - t0:.0f} s in")
        chaos.wait_until(time.monotonic() + 5.0)  # in-flight dead letters and redeliveries land
        chaos.sample(force=True)
        report.audit = audit(s, wl)
    finally:
        report.logs = [str(p) for p in sorted(chaos.workdir.glob("worker-*.log"))]
        chaos.stop()
    report.self_exits = chaos.self_exits
    report.rss_mb = {slot: [round(a, 1), round(b, 1)] for slot, (a, b) in sorted(chaos.rss.items())}
    report.seconds = time.monotonic() - started
    a = report.audit
    if a.last_processed_ms:
        report.process_seconds = max(a.last_processed_ms / 1000 - t0_wall, 1e-3)
        report.posts_per_s = a.stored / report.process_seconds
    echo(summary(report))
    if report.ok and not cfg.workdir:
        shutil.rmtree(chaos.workdir, ignore_errors=True)
    return report


def pace(cfg: ChaosConfig) -> str:
    rate = cfg.send_rate()
    return f"at {rate:.0f} msg/s" if rate else "in one burst"


def summary(r: ChaosReport) -> str:
    a = r.audit
    lines = [
        f"chaos: {a.stored:,} of {a.valid:,} valid posts with exactly one stored result in "
        f"{r.process_seconds:.1f} s under chaos: {r.posts_per_s:.1f} posts/s (sent {pace(r.config)}; seed "
        f"{r.config.seed}; "
        f"whole run {r.seconds:.0f} s)",
        f"  faults applied: {', '.join(f'{k} {v}' for k, v in sorted(r.applied.items()))} ({r.skipped} more "
        f"skipped: every post had its result); worker restarts {r.restarts}",
        f"  results: lost {a.lost}, extra keys {a.extra_keys}; sentiment topic: {a.on_topic:,} ids, missing "
        f"{a.topic_missing}, unknown {a.topic_extra_ids}, {a.topic_redelivered:,} redelivered records",
        f"  brand counts vs recount: over {a.counts_over}, under {a.counts_under}",
        f"  driver term counts vs recount: {a.terms.terms:,} terms in {a.terms.buckets:,} buckets, over "
        f"{a.terms.over}, under {a.terms.under}; rolled-up hours {a.terms.hours}, off {a.terms.hours_off}",
        f"  DLQ: {a.hostile_in_dlq:,} of {a.hostile:,} hostile messages, reasons {a.dlq_reasons}; valid posts "
        f"there: {a.valid_in_dlq}",
        f"  image_error on results: {a.image_errors}; caption cache: {a.cached_captions} entries for "
        f"{r.workload['image_posts']:,} image posts",
        f"  workers that exited by themselves (restarted): {r.self_exits or 'none'}",
        f"  worker RSS MB (at the end, peak): {r.rss_mb}; bound {r.config.rss_limit_mb:.0f} MB",
        "  " + ("all invariants hold" if r.ok else "FAILED: " + "; ".join(a.failures() or ["RSS or coverage"])),
    ]
    return "\n".join(lines)
