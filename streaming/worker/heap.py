"""Keep Python's cyclic garbage collector off a worker's latency path.

After start-up a classify worker holds ~430k objects the collector tracks (torch, transformers, faust, the
model's modules). A full (generation 2) collection walks all of them: 228 ms on the 2-core bench host. One
such pause stalls every post in flight, and at 350 posts/s a single one in a 15 s load level is enough to
set its p99. Those start-up objects live as long as the process, so once the stage has started they are
moved to the permanent generation (``gc.freeze``): later collections walk only what was allocated since
(0.002 ms for the same full collection, measured). Frozen objects are still freed by reference counting;
only a reference cycle among them would outlive its use, and start-up objects are not dropped.

Pauses are timed into ``affectstream_gc_pause_seconds`` (by generation) so that a regression is visible
on /metrics. A measuring process pauses its collector outright (``collector_paused``): the end-to-end bench
stamps and observes posts in a process that has loaded the model too, and its own 70-290 ms collections
were read as the pipeline's latency (p99 at 50 % load 230 ms as it was, 129 ms with its heap frozen).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import time
from typing import Iterator

from affectstream.streaming.worker import metrics

log = logging.getLogger(__name__)

_started: list[float] = []   # the running collection's start (gc callbacks come in start/stop pairs)


def freeze_startup_heap() -> int:
    """Collect what is garbage now, then freeze every surviving object; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up heap frozen: %d objects out of the collector's reach", frozen)
    return frozen


def _time_collection(phase: str, info: dict) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started:
        metrics.observe_gc_pause(info.get("generation", -1), time.perf_counter() - _started.pop())


def time_collections() -> None:
    """Time every collection of this process into the GC pause histogram (once per process)."""
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection inside the block (reference counting still frees what it can)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
