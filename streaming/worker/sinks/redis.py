"""The Redis sink: per-post results, idempotent per-brand minute counts and the live channel.

One Lua script per result makes "claim the post, store its result, count it, publish it" atomic, and only
the first delivery of a post does any of it: the `seen` marker is set with NX, and the result key, the
counts and the live-channel message are written only when that marker was new. So a redelivered post —
even one classified again by a newer model — never overwrites the stored result, never counts twice and
is never published twice; `write` returns the ids that were new, and the stage's metrics count only those.

`write` treats Redis being unreachable *and* Redis refusing writes for a passing reason (OOM under
`noeviction`, READONLY replica, LOADING, BUSY script, MASTERDOWN, TRYAGAIN, CLUSTERDOWN) as an outage: it
backs off (capped), logs one line per interval rather than per retry, and returns only once every result
is accepted (or `close()` / `stop()` abandons it). Any other refusal (WRONGTYPE, a syntax error: a bug)
raises at once, so the stage crashes loudly instead of retrying forever; NOSCRIPT is retried at once (the
pipeline loads the script again).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, ClusterDownError, NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from affectstream.streaming.worker.redis_client import async_redis
from affectstream.streaming.worker.redis_keys import minute_bucket
from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.sinks import Sink, SinkItem

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
LOG_EVERY_S = 10.0  # while retrying: one warning line per interval, whatever the number of retries
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)
# refusals that pass by themselves: Redis is up but will not take writes right now
PASSING_REFUSALS = ("OOM", "READONLY", "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
_PASSING_CLASSES = (OutOfMemoryError, ReadOnlyError, BusyLoadingError, TryAgainError, ClusterDownError)
# the code may be wrapped by a script error ("ERR Error running script ... -OOM command not allowed ...")
_PASSING_RE = re.compile(r"(?:^|[\s\-:])(" + "|".join(PASSING_REFUSALS) + r")\b")

# KEYS: post, seen, bucket...   ARGV: result json, result ttl, seen ttl, bucket ttl, label, channel
# The first write is the NX claim: under OOM a script without flags is refused at its first write, so a
# refused script has done nothing.
WRITE_RESULT_LUA = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
for i = 3, #KEYS do
  redis.call('HINCRBY', KEYS[i], ARGV[5], 1)
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
redis.call('PUBLISH', ARGV[6], ARGV[1])
return 1
"""


class SinkStopped(RuntimeError):
    """`write` was abandoned because `stop()` was called; the batch is NOT stored (do not commit)."""


def is_retryable(error: BaseException) -> bool:
    """Unreachable, or a refusal that will pass (module docstring); False for a bug (WRONGTYPE …)."""
    if isinstance(error, (NoScriptError, *_PASSING_CLASSES)):
        return True
    if isinstance(error, UNREACHABLE):
        return True
    if isinstance(error, ResponseError):
        code = getattr(error, "status_code", None) or ""
        return bool(_PASSING_RE.search(f"{code} {error}"))
    return False


class RedisSink(Sink):
    def __init__(self, settings: Settings, app: Any = None, client: aioredis.Redis | None = None):
        super().__init__(settings, app)
        self._own_client = client is None
        self.client = client if client is not None else async_redis(settings)
        self._script = self.client.register_script(WRITE_RESULT_LUA)
        self._stop = asyncio.Event()
        self._stalled = 0  # writes that failed at least once and have not succeeded yet

    @property
    def stalled(self) -> bool:
        return self._stalled > 0

    def stop(self) -> None:
        """Ask a retrying `write` to give up (it raises SinkStopped)."""
        self._stop.set()

    async def write(self, batch: list[SinkItem]) -> set[str]:
        """Claim, store, count and publish every result not seen before; retries outages and passing
        refusals with capped backoff, retrying only the results not yet accepted. Returns the ids that
        were new (a redelivered post is accepted but not in the set)."""
        fresh: set[str] = set()
        pending = list(batch)
        delay, attempt, started, next_log = RETRY_FIRST_S, 0, time.monotonic(), 0.0
        try:
            while pending:
                error, pending = await self._write_pending(pending, fresh)
                if not pending:
                    break
                attempt += 1
                self._stalled += attempt == 1
                if self._stop.is_set():
                    raise SinkStopped(f"redis write abandoned after {attempt} attempts") from error
                if isinstance(error, NoScriptError):  # scripts were flushed: the next pipeline loads it again
                    continue
                if time.monotonic() >= next_log:
                    next_log = time.monotonic() + LOG_EVERY_S
                    log.warning("redis write failed (%s: %s); retrying with backoff up to %.0fs (attempt %d, "
                                "%d results pending, first id %s; next report in %.0fs)", type(error).__name__,
                                str(error)[:120], RETRY_MAX_S, attempt, len(pending), pending[0].result.id,
                                LOG_EVERY_S)
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        finally:
            self._stalled -= attempt > 0
        if attempt:
            log.info("redis write succeeded after %d retries in %.1fs (%d results)", attempt,
                     time.monotonic() - started, len(batch))
        return fresh

    async def _write_pending(self, pending: list[SinkItem],
                             fresh: set[str]) -> tuple[BaseException | None, list[SinkItem]]:
        """One attempt: adds the ids that were new to ``fresh``; returns the last retryable error and the
        items still to write. A refusal that is a bug raises."""
        try:
            outcomes = await self._write_once(pending)
        except BaseException as e:  # noqa: BLE001 - classified here; not retryable -> re-raised
            if not is_retryable(e):
                raise
            return e, pending
        error, failed = None, []
        for item, outcome in zip(pending, outcomes):
            if isinstance(outcome, BaseException):
                if not is_retryable(outcome):
                    raise outcome
                error = outcome
                failed.append(item)
            elif outcome:
                fresh.add(item.result.id)
        return error, failed

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):  # the normal case: no stop during the backoff
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _write_once(self, batch: list[SinkItem]) -> list[Any]:
        """One pipeline of scripts; per item 1 (new), 0 (seen before) or the exception Redis returned."""
        s = self.settings
        channel = s.keys.live
        async with self.client.pipeline(transaction=False) as pipe:
            for item in batch:
                result = item.result
                minute = minute_bucket(result.event_ms)
                keys = [s.keys.post(result.id), s.keys.seen(result.id),
                        *(s.keys.brand(brand, minute) for brand in result.counted_brands)]
                args = [item.json, s.result_ttl_s, s.seen_ttl_s, s.bucket_ttl_s, result.label, channel]
                await self._script(keys=keys, args=args, client=pipe)
            return await pipe.execute(raise_on_error=False)

    async def brand_counts(self, brand: str, minute: str) -> dict[str, int]:
        """Label -> count for one brand-minute bucket (dashboards, tests)."""
        raw = await self.client.hgetall(self.settings.keys.brand(brand, minute))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def close(self) -> None:
        self.stop()
        if self._own_client:
            await self.client.aclose()
