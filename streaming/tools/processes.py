"""Child processes of the local tools (embedded servers, worker subprocesses): started so they die with
this process, stopped politely then firmly, their logs read back."""
from __future__ import annotations

import logging
import signal
import subprocess
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent():
    """A ``preexec_fn`` for Popen: on Linux, SIGTERM the child when the starting thread dies. Only from
    the main thread, whose death is the process's; a worker thread exiting must not take the child with it.
    None where that is not possible."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    return preexec


def stop_process(proc: subprocess.Popen, timeout_s: float, name: str = "child") -> int | None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s pid %d ignored SIGTERM; killing", name, proc.pid)
            proc.kill()
            proc.wait()
    return proc.returncode


def log_tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a child's log file."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
