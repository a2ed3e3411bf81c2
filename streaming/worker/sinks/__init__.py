"""Where results go: a small sink interface, after Quix Streams' ``BaseSink`` and Bytewax's ``write_batch``.

The classify stage builds each ``Result`` once, serialises it once (``SinkItem.json``) and hands every
micro-batch to every configured sink, concurrently. It acks the source offsets only after ALL of them
returned: a sink that raises means no ack, and the batch is delivered again (at least once). So a sink

* returns from ``await write(batch)`` only once the batch is durably accepted (retrying outages itself, as
  the Redis sink does, or raising);
* is idempotent per result id: a redelivered post may reach it twice (``write`` may return the ids that
  were new to it; the Redis sink does, and the metrics count only results new to every sink that tells);
* gives up a retrying ``write`` (raises) once ``stop()`` is called (SIGTERM), so the worker can exit;
* sends ``item.json`` as it is (the same bytes every sink gets) rather than serialising ``item.result``
  again;
* releases what it holds in ``await close()`` (called once at shutdown).

Built in: ``redis`` (``sinks/redis.py``: result, idempotent brand-minute counts and the live channel, in three
idempotent single-slot steps) and ``topic`` (``sinks/topic.py``: the ``sentiment`` output topic, awaiting broker acks).

Choosing sinks is one setting, ``sinks`` (``AFFECTSTREAM_SINKS``), a comma-separated list of built-in names
and ``package.module:ClassName`` entries, e.g. ``redis,topic,mycompany.sinks:WebhookSink``. Each is
constructed once per worker as ``Cls(settings, app)`` (``app``: the faust app, for sinks that send to
Kafka). Adding a sink (a webhook, a database) is one module with a ``Sink`` subclass and one setting::

    class WebhookSink(Sink):
        async def write(self, batch: list[SinkItem]) -> None:
            await post_lines(URL, b"\\n".join(item.json for item in batch))   # raise -> no ack, redelivered

An unknown name or a class that cannot be imported stops the worker at start-up (``SinkConfigError``).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings

BUILTIN = {
    "redis": "affectstream.streaming.worker.sinks.redis:RedisSink",
    "topic": "affectstream.streaming.worker.sinks.topic:TopicSink",
}


@dataclass(frozen=True)
class SinkItem:
    """One result and its JSON (serialised once; every sink gets these same bytes), and the post's input for
    the retraining job (``post_input`` JSON: text, caption, brands, label, model), kept out of the Result so
    the post's text never reaches the ``sentiment`` topic; the Redis sink stores it beside the result."""
    result: Result
    json: bytes
    input: bytes | None = None

    @classmethod
    def of(cls, result: Result, input: bytes | None = None) -> "SinkItem":
        return cls(result, result.to_json(), input)

    @property
    def key(self) -> bytes:
        return self.result.id.encode("utf-8")


class Sink(ABC):
    """A destination for results. Subclasses implement ``write``; ``close`` is optional."""

    def __init__(self, settings: Settings, app: Any = None):
        self.settings = settings
        self.app = app

    @abstractmethod
    async def write(self, batch: list[SinkItem]) -> set[str] | None:
        """Return once every item is accepted; raise (or keep retrying) otherwise. Never called empty.
        May return the ids of the results it saw for the first time (the stage's metrics count only
        those); None means every one is new."""

    @property
    def stalled(self) -> bool:
        """True while a ``write`` is retrying an outage (it cannot finish until the outage ends)."""
        return False

    def stop(self) -> None:
        """The worker is stopping: a ``write`` that is retrying an outage should give up (raise) soon."""

    async def close(self) -> None:
        """Release connections; a retrying ``write`` should give up (raise) once this is called."""


class SinkConfigError(ValueError):
    """The ``sinks`` setting names a sink that does not exist or cannot be built."""


def resolve(spec: str) -> type:
    """A built-in name or ``package.module:ClassName`` -> the sink class."""
    target = BUILTIN.get(spec, spec)
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise SinkConfigError(f"unknown sink {spec!r}: built-in sinks are {', '.join(BUILTIN)}; "
                              f"a sink of your own is written package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SinkConfigError(f"sink {spec!r}: cannot import {module_name!r} ({e})") from e
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not callable(getattr(cls, "write", None)):
        raise SinkConfigError(f"sink {spec!r}: {module_name} has no sink class {class_name!r} "
                              f"(a class with async write(batch) and close())")
    return cls


def sink_classes(settings: Settings) -> list[type]:
    """The classes named by ``settings.classify.sinks``, in order; raises SinkConfigError for any problem."""
    specs = [part.strip() for part in settings.classify.sinks.split(",") if part.strip()]
    if not specs:
        raise SinkConfigError("sinks is empty: results would go nowhere (built-in: "
                              f"{', '.join(BUILTIN)})")
    if len(set(specs)) != len(specs):
        raise SinkConfigError(f"sinks lists a sink twice: {settings.classify.sinks!r}")
    return [resolve(spec) for spec in specs]


def build_sinks(settings: Settings, app: Any = None, classes: list[type] | None = None) -> list[Sink]:
    """One instance of each configured sink, constructed as ``Cls(settings, app)``."""
    built = []
    for cls in classes if classes is not None else sink_classes(settings):
        try:
            built.append(cls(settings, app))
        except Exception as e:
            raise SinkConfigError(f"sink {cls.__module__}:{cls.__qualname__} failed to start: "
                                  f"{type(e).__name__}: {e}") from e
    return built
