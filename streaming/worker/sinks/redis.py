"""The Redis sink: per-post results, idempotent per-brand minute counts and the live channel.

One Lua script per result makes "store the result, count it once, publish it" atomic; the `seen` marker
means a redelivered post never counts twice. `write` retries outages until it succeeds (or `close()` /
`stop()`), so the stage acks source offsets only after a successful return.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from affectstream.streaming.worker.redis_client import async_redis
from affectstream.streaming.worker.redis_keys import minute_bucket
from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.sinks import Sink, SinkItem

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
RETRYABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError, ConnectionError,
             TimeoutError, OSError)

# KEYS: post, seen, bucket...   ARGV: result json, result ttl, seen ttl, bucket ttl, label, channel
WRITE_RESULT_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local fresh = redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3])
if fresh then
  for i = 3, #KEYS do
    redis.call('HINCRBY', KEYS[i], ARGV[5], 1)
    redis.call('EXPIRE', KEYS[i], ARGV[4])
  end
end
redis.call('PUBLISH', ARGV[6], ARGV[1])
if fresh then return 1 else return 0 end
"""


class SinkStopped(RuntimeError):
    """`write` was abandoned because `stop()` was called; the batch is NOT stored (do not commit)."""


class RedisSink(Sink):
    def __init__(self, settings: Settings, app: Any = None, client: aioredis.Redis | None = None):
        super().__init__(settings, app)
        self._own_client = client is None
        self.client = client if client is not None else async_redis(settings)
        self._script = self.client.register_script(WRITE_RESULT_LUA)
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask a retrying `write` to give up (it raises SinkStopped)."""
        self._stop.set()

    async def write(self, batch: list[SinkItem]) -> None:
        """Store, count (once per post id) and publish every result; retries outages with capped backoff."""
        if not batch:
            return
        delay = RETRY_FIRST_S
        attempt = 0
        while True:
            try:
                await self._write_once(batch)
                if attempt:
                    log.info("redis write succeeded after %d retries (%d results)", attempt, len(batch))
                return
            except RETRYABLE as e:
                attempt += 1
                if self._stop.is_set():
                    raise SinkStopped(f"redis write abandoned after {attempt} attempts") from e
                log.warning("redis write failed (%s: %s); retry %d in %.1fs (%d results, first id %s)",
                            type(e).__name__, str(e)[:120], attempt, delay, len(batch), batch[0].result.id)
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):  # the normal case: no stop during the backoff
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _write_once(self, batch: list[SinkItem]) -> None:
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
            await pipe.execute()

    async def brand_counts(self, brand: str, minute: str) -> dict[str, int]:
        """Label -> count for one brand-minute bucket (dashboards, tests)."""
        raw = await self.client.hgetall(self.settings.keys.brand(brand, minute))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def close(self) -> None:
        self.stop()
        if self._own_client:
            await self.client.aclose()
