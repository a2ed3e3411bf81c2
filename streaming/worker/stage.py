"""The skeleton both agents share: micro-batches in, sinks and topics out, offsets acked last.

A stage (``caption.Captioning``, ``classify.Classifying``) knows nothing of Kafka: ``await start()`` loads
what it needs (models) off the event loop, ``await process(raw_values)`` turns one micro-batch into a
``StageBatch`` (results for the sinks, records for topics: forwards and dead letters), ``observe`` and
``log_batch`` report it. ``register_stage`` attaches the faust agent that runs, for every micro-batch:

    MicroBatches.noack_take -> stage.process -> every sink + every topic send, concurrently -> ack

A stage may hand a micro-batch over in parts (``process_parts``, an async iterator; by default one part,
``process_events``): each part is delivered as soon as it is ready, while the next is being computed (of
the same micro-batch or the next one: ``run_stage``), so the caption stage's text-only posts and parse DLQ
records go out while the batch's images are still being described. The batch is acked once every part is
delivered, and ``observe``/``log_batch`` see the parts merged into one batch (``StageBatch.merged``), once.

A micro-batch (``MicroBatches``) starts as soon as the stage is free and has an event, and closes when it
holds ``batch_max`` events, when no event came for ``QUIET_S`` (the rest of that fetch is in), or ``within``
seconds after its first event, whichever first; events that arrived while the stage was busy form the next
batch at once. faust's own ``noack_take`` waits ``within`` after every batch whatever is already there, and
that wait was most of the latency at low and medium load: a post waited up to a whole window in each stage
(docs/performance.md, "Latency floor").

Offsets are acked only after all of them succeeded, for every part; any failure raises before the ack, so
the batch is delivered again (at least once; the Redis sink is idempotent per post id). ``observe`` runs
after the ack, with ``batch.fresh_ids`` set to the results a sink reported as new (the Redis sink: first
delivery of the post), so a redelivered post is not counted again in the metrics.

A stage that raises takes the worker down: the agent logs the error and crashes the faust app, so the
process exits non-zero and its supervisor (compose ``restart: unless-stopped``, systemd, Kubernetes)
starts a fresh one, which resumes from the committed offsets. (faust's default would restart the agent
inside the process, with the failed batch's offsets never acked: a live process that commits nothing more.)
When the worker is asked to stop (SIGTERM), every sink's ``stop()`` is called at once, so a write retrying
an outage gives up, its batch stays unacked (delivered again later) and the worker exits.
"""
from __future__ import annotations

import asyncio
import copy
import functools
from abc import ABC, abstractmethod
import logging
import time
from dataclasses import dataclass, field, fields
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

import faust

from affectstream.streaming.worker import faust_compat, heap
from affectstream.streaming.worker.dlq import dlq_record, post_id_guess
from affectstream.streaming.worker.schemas import InvalidPost, Post, parse_post
from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.sinks import Sink, SinkItem
from affectstream.streaming.worker.sinks.topic import Record, send_all

log = logging.getLogger("affectstream.stage")

# A micro-batch of an idle stage closes once no event arrived for this long: the records of one fetch reach
# the stream back to back, and the next fetch comes tens of milliseconds later (Tansu holds a fetch for about
# half of FETCH_MAX_WAIT_MS, app.py), so this gathers a fetch and waits for no more.
QUIET_S = 0.002
STOP_GRACE_S = 3.0  # SIGTERM with a sink stuck in an outage: how long the worker may take to stop cleanly

SendRecords = Callable[[dict[str, list[Record]]], Awaitable[None]]
A = TypeVar("A")
B = TypeVar("B")


@dataclass
class StageBatch:
    """What one micro-batch turned into. Subclasses add their own outputs and counters."""
    dlq: list[Record] = field(default_factory=list)
    # after delivery: ids of the results some sink reported as new (None: every result is new)
    fresh_ids: set[str] | None = None

    @property
    def items(self) -> list[SinkItem]:
        """Results for the sinks (serialised once)."""
        return []

    def records(self) -> dict[str, list[Record]]:
        """Messages to send, by contract topic role ("enriched", "dlq" …)."""
        return {"dlq": self.dlq}

    def merged(self, other: "StageBatch") -> "StageBatch":
        """This part and ``other``, a later part of the same micro-batch, as one new batch (neither part is
        changed: a sink or a send may still hold a part's lists): list fields joined, int counters added,
        ``fresh_ids`` united. Subclasses keep their outputs in dataclass fields (as ``CaptionBatch`` and
        ``ClassifyBatch`` do); a field of any other kind raises rather than being dropped from the metrics."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        whole = copy.copy(self)
        whole.fresh_ids = self._fresh_with(other)
        for f in fields(self):
            if f.name == "fresh_ids":
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, list) or (isinstance(mine, int) and not isinstance(mine, bool)):
                setattr(whole, f.name, mine + theirs)
            else:
                raise TypeError(f"{type(self).__name__}.{f.name}: no rule to merge a {type(mine).__name__}")
        return whole

    def _fresh_with(self, other: "StageBatch") -> set[str] | None:
        """``fresh_ids`` of both parts together; a part's None (no sink told) means all of its results are new."""
        if self.fresh_ids is None and other.fresh_ids is None:
            return None
        return set.union(*(part.fresh_ids if part.fresh_ids is not None else {i.result.id for i in part.items}
                           for part in (self, other)))


class Stage(ABC):
    """Base of a stage; ``process`` is the one method a stage must write."""

    async def start(self) -> None:
        """Load what the stage needs; called once, on the event loop, before the first batch."""

    @abstractmethod
    async def process(self, raws: list[bytes]) -> StageBatch:
        """One micro-batch of raw values -> what to deliver."""

    async def process_events(self, events: list) -> StageBatch:
        """The micro-batch as faust events; a stage that needs more than the values overrides this (the
        classify stage's canary routes by each event's partition)."""
        return await self.process([e.message.value for e in events])

    async def process_parts(self, events: list) -> AsyncGenerator[StageBatch, None]:
        """The micro-batch in parts, each delivered as soon as it is yielded while the next is computed
        (``run_stage``). Default: one part, so a stage that does not split delivers once, as it always has.
        A stage that splits yields at least one part, all of one ``StageBatch`` type (they are merged)."""
        yield await self.process_events(events)

    def observe(self, batch: StageBatch, n_events: int, seconds: float) -> None:
        """Metrics for a batch, once it is delivered and acked (``batch.fresh_ids`` is set by then)."""

    def log_batch(self, batch: StageBatch, n_events: int, seconds: float) -> None:
        """After the batch was delivered and acked."""

    def close(self) -> None:
        """Stop thread pools (synchronous: tests and tools call it outside a loop's shutdown)."""

    async def aclose(self) -> None:
        self.close()


def run_every(interval_s: float, check: Callable[[], Awaitable[Any]], name: str) -> asyncio.Task:
    """A background task awaiting ``check()`` every ``interval_s`` seconds, whether or not posts arrive
    (model and brands-file reloads); a failing check is logged and tried again at the next tick."""
    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await check()
            except Exception:  # noqa: BLE001 - never let the timer die; the next check tries again
                log.exception("%s failed", name)

    return asyncio.create_task(loop(), name=name)


def parse_all(raws: list[bytes], settings: Settings, dlq_stage: str, dlq: list[Record], *,
              trusted_enrichment: bool) -> list[tuple[Post, bytes]]:
    """Parse every raw value; a rejected one becomes a DLQ record (``dlq_stage``) with its reason.
    ``trusted_enrichment``: False for ``posts`` (a producer's caption/image_error are dropped), True for
    ``posts-enriched``, which only the caption stage writes."""
    parsed: list[tuple[Post, bytes]] = []
    for raw in raws:
        try:
            parsed.append((parse_post(raw, settings, trusted_enrichment=trusted_enrichment), raw))
        except InvalidPost as e:
            post_id = e.post_id or post_id_guess(raw)
            log.warning("dlq stage=%s reason=%s id=%s", dlq_stage, e.reason, post_id)
            dlq.append(dlq_record(raw, e.reason, dlq_stage, str(e), post_id))
    return parsed


async def deliver(batch: StageBatch, sinks: Sequence[Sink], send: SendRecords) -> set[str] | None:
    """Hand ``batch`` to every sink and send its topic records, concurrently. Waits for all of them and
    then raises the first failure, if any: the caller acks only when this returns. Returns the result ids
    that are new to every sink that tells (a sink's ``write`` may return the set of ids it saw for the
    first time; the Redis sink does), None when no sink tells."""
    jobs = [send(batch.records())]
    items = batch.items
    if items:
        jobs.extend(sink.write(items) for sink in sinks)
    outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    told = [set(outcome) for outcome in outcomes[1:] if isinstance(outcome, (set, frozenset))]
    return set.intersection(*told) if told else None


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Await two jobs concurrently. The first to fail cancels the other (a worker about to crash need not
    describe images for a batch that will be delivered again, nor wait on a send) and its error is raised
    as it is, not wrapped, so ``register_stage`` logs it as before."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()
        return tasks[0].result(), tasks[1].result()
    finally:
        for task in tasks:
            task.cancel()  # nothing for a finished task; here when one failed or we were cancelled
        await asyncio.gather(*tasks, return_exceptions=True)


class MicroBatches:
    """A faust stream's events in micro-batches, never acked here (``noack_take``'s contract: the caller acks
    each event once it is delivered), with the closing rule of the module docstring.

    As faust's own ``take()``, a processor on the stream fills a buffer while the stream drains in the
    background; the buffer holds at most ``max_`` events (the processor waits for room), so a busy stage
    applies back-pressure to the consumer instead of reading ahead without bound. Where faust lacks the
    internals this needs (``faust_compat``), faust's own ``noack_take`` batches instead."""

    def __init__(self, stream: Any, quiet_s: float = QUIET_S):
        self.stream = stream
        self.quiet_s = quiet_s

    async def ack(self, event: Any) -> bool:
        return await self.stream.ack(event)

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list]:
        stream = self.stream
        if not faust_compat.passive_buffering(stream):  # a faust without the internals: its own batches
            async for batch in stream.noack_take(max_, within):
                yield batch
            return
        buffer: list = []
        arrived = asyncio.Event()  # set whenever an event joins the buffer
        room = asyncio.Event()     # set whenever the buffer has room

        async def add(value: Any) -> Any:
            while len(buffer) >= max_:
                room.clear()
                await room.wait()
            event = stream.current_event
            if event is None:
                raise RuntimeError("micro-batch buffer found no current event")
            buffer.append(event)
            arrived.set()
            return value

        enable_acks = stream.enable_acks
        stream.enable_acks = False  # acked by the caller, after delivery
        faust_compat.start_passive(stream, add)  # as faust's take(): the stream drains in the background
        loop = asyncio.get_running_loop()
        try:
            while not stream.should_stop:
                if buffer:  # arrived while the stage was busy: they waited already, go (after pending deliveries)
                    await asyncio.sleep(0)
                else:       # idle: the first event opens the batch; the rest of its fetch joins it
                    arrived.clear()
                    if await stream.wait_for_stopped(arrived):
                        break
                    closes = loop.time() + within
                    while len(buffer) < max_ and (left := closes - loop.time()) > 0:
                        arrived.clear()
                        await stream.wait_for_stopped(arrived, timeout=min(self.quiet_s, left))
                        if not arrived.is_set():
                            break  # quiet (or stopping): nothing more is on its way right now
                batch = buffer[:max_]
                del buffer[:len(batch)]
                room.set()
                yield batch
        finally:
            stream.enable_acks = enable_acks
            faust_compat.stop_passive(stream, add)


@dataclass
class _BatchEnd:
    """Queued after a micro-batch's last part: its events are acked once everything before is delivered."""
    events: list
    started: float


_STREAM_ENDED = object()


async def run_stage(stream: Any, stage: Stage, sinks: Sequence[Sink], send: SendRecords,
                    batch_max: int, within: float) -> None:
    """The agent loop over a stream: anything with ``noack_take`` and ``ack`` (``MicroBatches`` over the
    agent's faust stream in a worker).

    Two coroutines joined by a one-slot queue: one computes the parts of each micro-batch, the other
    delivers them in order and acks a batch after its last part. So a part's delivery (Redis, and the
    broker's acknowledgement of its records: about as long as the model's own work on the batch) overlaps
    the computing of the next part, of the same batch or the next one (docs/performance.md, "Deliveries
    overlap the next batch")."""
    handoff: asyncio.Queue = asyncio.Queue(maxsize=1)

    async def compute() -> None:
        async for events in stream.noack_take(batch_max, within=within):
            started = time.perf_counter()
            parts = stage.process_parts(events)
            try:
                async for part in parts:
                    await handoff.put(part)
            finally:
                await parts.aclose()
            await handoff.put(_BatchEnd(events, started))
        await handoff.put(_STREAM_ENDED)

    async def deliver_in_order() -> None:
        whole: StageBatch | None = None
        while (item := await handoff.get()) is not _STREAM_ENDED:
            if isinstance(item, _BatchEnd):
                if whole is None:
                    raise RuntimeError("the stage yielded no part for its micro-batch")
                for event in item.events:
                    await stream.ack(event)
                seconds = time.perf_counter() - item.started
                stage.observe(whole, len(item.events), seconds)
                stage.log_batch(whole, len(item.events), seconds)
                whole = None
            else:
                item.fresh_ids = await deliver(item, sinks, send)
                whole = item if whole is None else whole.merged(item)

    await both(compute(), deliver_in_order())


def register_stage(app: faust.App, settings: Settings, *, name: str, source: str, build: Callable[[], Stage],
                   batch_max: int, within: float, sinks: Sequence[Sink] = ()) -> str:
    """Attach agent ``name`` reading the contract topic ``source`` ("posts", "enriched"). ``build`` runs
    in a thread on the agent's first start (it may load models); ``sinks`` are closed at shutdown."""
    topics = app.affect_topics  # type: ignore[attr-defined]
    state: dict[str, Stage] = {}

    async def agent(stream: faust.StreamT) -> None:
        try:
            if "stage" not in state:
                stage = await asyncio.get_running_loop().run_in_executor(None, build)
                await stage.start()
                state["stage"] = stage
                heap.time_collections()
                if settings.worker.gc_freeze:  # after the models are loaded: what is there now lives as long as the worker
                    heap.freeze_startup_heap()
            await run_stage(MicroBatches(stream), state["stage"], sinks, functools.partial(send_all, app), batch_max,
                            within)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the stage ends the worker (module docstring)
            if app.should_stop:  # a sink gave up because the worker is stopping: the batch stays unacked
                log.info("agent %s stopped with the worker (%s); its last batch was not acked and will be "
                         "delivered again", name, type(e).__name__)
                return
            log.critical("agent %s crashed (%s: %s); stopping the worker with a non-zero exit so that its "
                         "supervisor restarts it (unacked offsets are delivered again)", name,
                         type(e).__name__, e, exc_info=e)
            await app.crash(e)

    agent.__name__ = agent.__qualname__ = name
    app.agent(topics[source], name=name)(agent)

    @app.task
    async def _stop_sinks_on_shutdown() -> None:
        """SIGTERM while a sink retries an outage: make it give up, and do not let faust wait for that
        batch's acks (``stream_wait_empty``: it would wait forever). The batch stays unacked, uncommitted,
        and is delivered again to whichever worker takes the partition."""
        await app.wait_until_stopped()
        stalled = [type(sink).__name__ for sink in sinks if sink.stalled]
        for sink in sinks:
            sink.stop()
        if not stalled:
            return
        log.warning("stopping while %s cannot write; the unwritten batch is left unacked (delivered again "
                    "after a restart)", ", ".join(stalled))
        app.conf.stream_wait_empty = False
        await asyncio.sleep(STOP_GRACE_S)  # still here: faust was already waiting for the acks
        log.error("worker still stopping %.0f s after SIGTERM with an unwritten batch; crashing it", STOP_GRACE_S)
        await app.crash(RuntimeError("stopped with an unwritten batch"))

    @app.on_before_shutdown.connect
    async def _close(app: faust.App, **kwargs) -> None:
        if "stage" in state:
            await state["stage"].aclose()
        for sink in sinks:
            await sink.close()

    return name
