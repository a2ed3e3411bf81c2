"""The feedback intake: the monitor's agent on the ``feedback`` topic. Each correction is checked again
(anyone with broker access can produce to the topic, so the dashboard's check is a courtesy, this one is
the authority) and then kept in Redis — history, latest per target, the index the dashboard lists — or sent
to the DLQ with its reason (stage ``feedback``).

One correction, in order (``Intake.take_in``):

1. parse the record (``feedback.parse_correction``); read the post's stored result and check the label and
   the target against it (``feedback.check_against_result``), which also fixes ``old_label`` and ``model``;
2. already in the post's history (a redelivery)? Then nothing more happens: outcome ``duplicate``;
3. count it against the analyst's minute (``RedisKeys.feedback_rate``); over ``rate_limit``: ``rate_limited``;
4. store it (``feedback.STORE_LUA``: append to the history unless present, make it the latest of its target
   unless a newer one is there) and put the post in the index (``ZADD GT``: the newest ``ts`` stays).

Delivery is at least once and every write is idempotent except the rate counter: a record redelivered
after step 3 but before step 4 counts twice against its analyst's minute (at most one extra per crash).
A Redis failure crashes the worker (as the processing stages do): its records are not acked and come back.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import faust

from affectstream.streaming.worker.dlq import dlq_record, post_id_guess
from affectstream.streaming.worker.feedback import (RATE_PER_MINUTE, RATE_TTL_S, STORE_LUA, Correction, FeedbackError,
                                                    check_against_result, parse_correction, rate_key, store_keys)
from affectstream.streaming.worker.redis_keys import RedisKeys
from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.sinks.topic import send_all

log = logging.getLogger("affectstream.feedback")

DLQ_STAGE = "feedback"
BATCH_MAX = 100
BATCH_WITHIN_S = 0.2


@dataclass(frozen=True)
class Outcome:
    status: str                         # "stored" | "stored_older" | "duplicate" | "rejected"
    correction: Correction | None = None
    reason: str = ""                    # a feedback.REASONS entry when rejected
    error: str = ""


class Intake:
    """Takes in corrections on one client (the store script registered once)."""

    def __init__(self, client, keys: RedisKeys, rate_limit: int = RATE_PER_MINUTE):
        self.client, self.keys, self.rate_limit = client, keys, rate_limit
        self._store = client.register_script(STORE_LUA)

    async def take_in(self, raw: bytes) -> Outcome:
        """Check and keep one correction (module docstring); never raises for a bad record."""
        client, keys = self.client, self.keys
        try:
            correction = parse_correction(raw)
            correction = check_against_result(correction, await client.get(keys.post(correction.post_id)))
        except FeedbackError as e:
            return Outcome("rejected", None, e.reason, str(e))
        record = correction.to_json()
        history, _ = store_keys(keys, correction.post_id)
        if await client.lpos(history, record) is not None:
            return Outcome("duplicate", correction)
        counter = rate_key(keys, correction)
        pipe = client.pipeline(transaction=False)  # one key: the counter and its expiry in one round trip
        pipe.incr(counter)
        pipe.expire(counter, RATE_TTL_S)
        count, _ = await pipe.execute()
        if int(count) > self.rate_limit:
            return Outcome("rejected", correction, "rate_limited", f"analyst {correction.analyst!r} sent more "
                           f"than {self.rate_limit} corrections in one minute")
        stored = await self._store(keys=store_keys(keys, correction.post_id),
                                   args=[record, correction.field, correction.ts])
        await client.zadd(keys.feedback_index(), {correction.post_id: correction.ts}, gt=True)
        return Outcome({0: "duplicate", 1: "stored_older", 2: "stored"}[int(stored)], correction)


def register_intake(app: faust.App, settings: Settings, rate_limit: int = RATE_PER_MINUTE) -> str:
    """Attach the intake agent (``feedback`` topic -> Redis, or the DLQ) to ``app``; returns its name."""
    from affectstream.streaming.worker.redis_client import async_redis

    topics = app.affect_topics  # type: ignore[attr-defined]
    state: dict = {}
    name = "feedback_intake"

    async def agent(stream: faust.StreamT) -> None:
        client = state.setdefault("client", async_redis(settings))
        intake = Intake(client, settings.keys, rate_limit)
        try:
            async for events in stream.noack_take(BATCH_MAX, within=BATCH_WITHIN_S):
                dead = []
                for event in events:
                    raw = bytes(event.message.value or b"")
                    outcome = await intake.take_in(raw)
                    if outcome.status == "rejected":
                        post_id = outcome.correction.post_id if outcome.correction else post_id_guess_feedback(raw)
                        log.warning("dlq stage=%s reason=%s id=%s", DLQ_STAGE, outcome.reason, post_id)
                        dead.append(dlq_record(raw, outcome.reason, DLQ_STAGE, outcome.error, post_id))
                    else:
                        c = outcome.correction
                        log.info("feedback %s id=%s target=%s %s->%s by %s", outcome.status, c.post_id, c.target,
                                 c.old_label, c.label, c.analyst)
                await send_all(app, {"dlq": dead})
                for event in events:
                    await stream.ack(event)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - Redis or broker failure: unacked records come back after a restart
            if app.should_stop:
                return
            log.critical("agent %s crashed (%s: %s); stopping the worker so that its supervisor restarts it",
                         name, type(e).__name__, e, exc_info=e)
            await app.crash(e)

    agent.__name__ = agent.__qualname__ = name
    app.agent(topics["feedback"], name=name)(agent)

    @app.on_before_shutdown.connect
    async def _close(app: faust.App, **kwargs) -> None:
        if "client" in state:
            await state["client"].aclose()

    return name


def post_id_guess_feedback(raw: bytes) -> str | None:
    """The ``post_id`` of a record that failed to parse, when it can be read (for the DLQ key)."""
    import orjson

    try:
        obj = orjson.loads(raw)
        value = obj.get("post_id") if isinstance(obj, dict) else None
        return str(value)[:256] if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) else None
    except orjson.JSONDecodeError:
        return post_id_guess(raw)
