"""Worker processes for the local tools: ``python -m affectstream.cli worker`` as a child process,
configured through the environment, its log in a file. The demo, the benchmarks and the tests run workers
exactly as deployed, so faust owns its event loop and signal handling and a crash cannot take the caller
down."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from affectstream.streaming.tools.processes import die_with_parent, log_tail, stop_process
from affectstream.streaming.worker.settings import Settings, env_name

STOP_TIMEOUT_S = 20.0


def settings_env(settings: Settings, base: dict | None = None) -> dict[str, str]:
    """The environment that makes ``Settings.load()`` in a child process return ``settings``.
    (Environment, not argv: secrets must not show up in ``ps``.)"""
    env = dict(os.environ if base is None else base)
    for name, value in settings.by_name().items():
        env[env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class WorkerProcess:
    """``python -m affectstream.cli worker --role ROLE`` as a child process with its log in a file; it dies
    with this process on Linux."""

    def __init__(self, settings: Settings, role: str = "all", *, log_path: str | None = None,
                 extra_args: list[str] | None = None, loglevel: str = "info", web_by_role: bool = False,
                 entry: tuple[str, ...] = ("-m", "affectstream.cli")):
        """``web_by_role``: say nothing about web (no flag, no variable), as an operator starting
        ``affectstream worker`` by hand, so the role decides (only the monitor opens the port); otherwise
        ``settings.web.enabled`` is passed explicitly. ``entry``: the interpreter arguments that run the
        command line (a caller's own wrapper of it, such as the end-to-end bench's)."""
        self.role = role
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"affectstream-worker-{role}-", suffix=".log")
            os.close(fd)
        self.log_path = log_path
        web = [] if web_by_role else ["--with-web" if settings.web.enabled else "--without-web"]
        cmd = [sys.executable, *entry, "worker", "--role", role, *web,
               "--no-create-topics", "--loglevel", loglevel, *(extra_args or [])]
        env = settings_env(settings)
        if web_by_role:
            env.pop(env_name("web_enabled"))
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=os.getcwd(),
                                         preexec_fn=die_with_parent())
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (faust stops cleanly and commits acked offsets), SIGKILL after ``timeout_s``."""
        return stop_process(self.proc, timeout_s, f"worker {self.role}")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing committed on the way out."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)
