"""The faust-streaming internals the worker uses (and one of aiokafka's, through faust's driver), in one place,
each with faust's public behaviour as the fallback where a release has removed it.

``start_passive`` / ``stop_passive``
    ``Stream._enable_passive`` and ``Stream._processors``: a processor fills the micro-batch buffer while the
    stream drains in the background, as faust's own ``take()`` does, so ``stage.MicroBatches`` can close a
    batch as soon as its fetch is in. Fallback (``passive_buffering`` false): faust's public
    ``Stream.noack_take``, which waits ``within`` after every batch (more latency at low load).
``new_app``
    faust builds aiokafka's consumer with ``fetch_max_wait_ms=1500`` and has no setting for it; the app
    built here overrides ``App._new_transport``, ``Consumer._new_consumer_thread`` and
    ``AIOKafkaConsumerThread._create_worker_consumer`` to set aiokafka's ``_fetch_max_wait_ms`` before the
    consumer starts (docs/performance.md: why the wait matters on Tansu). Fallback: a plain ``faust.App``
    and faust's 1500 ms.

``check_faust()`` runs at a worker's start-up (``app.create_app``) and logs, once, what to do when the
installed releases lie outside ``TESTED`` (the bounds pyproject.toml declares) or an internal is gone.
"""
from __future__ import annotations

import functools
import importlib.metadata
import logging
from typing import Any, Callable

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from packaging.specifiers import SpecifierSet
from packaging.version import Version

log = logging.getLogger(__name__)

TESTED = {"faust-streaming": SpecifierSet(">=0.15,<0.16"), "aiokafka": SpecifierSet(">=0.14,<0.15")}
STREAM_HOOKS = ("_enable_passive", "_processors")  # faust.Stream's
FETCH_HOOKS = ((faust.App, "_new_transport"), (faust_aiokafka.Consumer, "_new_consumer_thread"),
               (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer"))
FETCH_WAIT_ATTRIBUTE = "_fetch_max_wait_ms"  # aiokafka.AIOKafkaConsumer's, read when start() builds its Fetcher
FAUST_FETCH_WAIT_MS = 1500                   # what faust's driver passes aiokafka


def version_problems(installed: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """A line per library whose installed release is outside ``TESTED``, saying what to do."""
    problems = []
    for dist, tested in TESTED.items():
        have = installed(dist)
        if Version(have) not in tested:
            problems.append(f"{dist} {have} is outside the releases the worker was tested with ({tested}): install "
                            f"'{dist}{tested}' as pyproject.toml bounds it; where an internal the worker uses is "
                            "gone, faust's public behaviour serves instead (logged on its own line)")
    return problems


def _has_stream_hook(name: str) -> bool:
    """Methods are class attributes; ``_processors`` is set per stream, so its declaration is looked up."""
    return hasattr(faust.Stream, name) or any(name in getattr(c, "__annotations__", {}) for c in faust.Stream.__mro__)


def missing_hooks() -> list[str]:
    """The internals this faust lacks, with the fallback that serves instead and what restores them."""
    problems = []
    fix = f"install 'faust-streaming{TESTED['faust-streaming']}'"
    gone = [name for name in STREAM_HOOKS if not _has_stream_hook(name)]
    if gone:
        problems.append(f"faust.Stream has no {', '.join(gone)}: micro-batches come from faust's Stream.noack_take, "
                        f"which waits the whole batch window after every batch (more latency at low load); {fix}")
    gone = [f"{cls.__name__}.{name}" for cls, name in FETCH_HOOKS if not hasattr(cls, name)]
    if gone:
        problems.append(f"faust has no {', '.join(gone)}: the consumer keeps faust's fetch wait of "
                        f"{FAUST_FETCH_WAIT_MS} ms and AFFECTSTREAM_FETCH_MAX_WAIT_MS has no effect (on Tansu that "
                        f"wait is the end-to-end latency floor); {fix}")
    return problems


@functools.cache
def check_faust() -> list[str]:
    """Log the version and internals problems once per process; returns them."""
    problems = version_problems() + missing_hooks()
    for problem in problems:
        log.warning(problem)
    return problems


# --- passive buffering: the stream drains in the background into a processor --------------------------------

def passive_buffering(stream: Any) -> bool:
    """Whether ``start_passive`` / ``stop_passive`` work on this stream."""
    return all(hasattr(stream, name) for name in STREAM_HOOKS)


def start_passive(stream: Any, processor: Callable[[Any], Any]) -> None:
    """Run ``processor`` on every event while the stream drains in the background (faust's ``take()``)."""
    stream.add_processor(processor)
    stream._enable_passive(aiter(stream.channel))


def stop_passive(stream: Any, processor: Callable[[Any], Any]) -> None:
    stream._processors.remove(processor)


# --- the consumer's fetch wait ----------------------------------------------------------------------------------

def set_fetch_wait(consumer: Any, wait_ms: int) -> bool:
    """Set an aiokafka consumer's fetch wait before it starts; False (and a warning) where aiokafka has no such
    attribute any more, and the consumer keeps faust's wait."""
    if not hasattr(consumer, FETCH_WAIT_ATTRIBUTE):
        log.warning("aiokafka %s has no AIOKafkaConsumer.%s: the consumer keeps faust's fetch wait of %d ms; "
                    "install 'aiokafka%s'", importlib.metadata.version("aiokafka"), FETCH_WAIT_ATTRIBUTE,
                    FAUST_FETCH_WAIT_MS, TESTED["aiokafka"])
        return False
    setattr(consumer, FETCH_WAIT_ATTRIBUTE, wait_ms)
    return True


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        set_fetch_wait(consumer, self.app.fetch_max_wait_ms)  # type: ignore[attr-defined]
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class ShortFetchApp(faust.App):
    """faust.App whose Kafka consumer fetches with ``fetch_max_wait_ms`` instead of faust's fixed wait."""

    fetch_max_wait_ms = FAUST_FETCH_WAIT_MS

    def _new_transport(self):
        if self.conf.broker_consumer[0].scheme in ("kafka", "aiokafka"):
            return _Transport(self.conf.broker_consumer, self)
        return super()._new_transport()


def new_app(app_id: str, *, fetch_max_wait_ms: int, **options: Any) -> faust.App:
    """``faust.App(app_id, **options)`` whose consumer fetches with ``fetch_max_wait_ms``; a plain faust.App
    (faust's wait) where this faust lacks the methods the override needs."""
    if any(not hasattr(cls, name) for cls, name in FETCH_HOOKS):
        return faust.App(app_id, **options)
    app = ShortFetchApp(app_id, **options)
    app.fetch_max_wait_ms = fetch_max_wait_ms
    return app
