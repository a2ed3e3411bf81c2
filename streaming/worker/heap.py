"""Keep Python's cyclic garbage collector off a worker's latency path.

After start-up a classify worker holds several hundred thousand objects the collector tracks (torch,
transformers, faust, the model's modules), and a full (generation 2) collection walks all of them: a pause
long enough to stall every post in flight and set a load level's p99 on its own (docs/performance.md,
"Garbage-collector pauses"). Those start-up objects live as long as the process, so once the stage has
started they are moved to the permanent generation (``gc.freeze``): later collections walk only what was
allocated since. Frozen objects are still freed by reference counting; only a reference cycle among them
would outlive its use, and start-up objects are not dropped.

Pauses are timed into ``affectstream_gc_pause_seconds`` (by generation) so that a regression is visible
on /metrics.
"""
from __future__ import annotations

import gc
import logging
import time

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
