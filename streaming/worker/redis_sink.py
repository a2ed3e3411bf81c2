"""Redis sink: per-post results, idempotent per-brand minute counts, the live channel, the caption cache.

One Lua script per result makes "store the result, count it once, publish it" atomic; the `seen` marker
means a redelivered post never counts twice. `write` retries outages until it succeeds (or `stop()`),
so the caller commits source offsets only after a successful return.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timezone

import orjson
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ReadOnlyError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from affectstream.streaming.worker.redis_client import async_redis
from affectstream.streaming.worker.redis_keys import counted_brands, event_ms, minute_bucket
from affectstream.streaming.worker.settings import Settings

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
CACHE_TIMEOUT_S = 2.0
CACHE_RETRY_S = 5.0   # after a failed cache call, captioning goes on without the cache this long
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


class RedisSink:
    def __init__(self, settings: Settings, client: aioredis.Redis | None = None):
        self.settings = settings
        self._own_client = client is None
        self.client = client if client is not None else async_redis(settings)
        self._script = self.client.register_script(WRITE_RESULT_LUA)
        self._stop = asyncio.Event()
        self.cache_retry_s = CACHE_RETRY_S
        self._cache_down = False
        self._cache_down_until = 0.0

    def stop(self) -> None:
        """Ask a retrying `write` to give up (it raises SinkStopped)."""
        self._stop.set()

    async def write(self, results: list[dict]) -> None:
        """Store, count (once per post id) and publish every result; retries outages with capped backoff."""
        if not results:
            return
        delay = RETRY_FIRST_S
        attempt = 0
        while True:
            try:
                await self._write_once(results)
                if attempt:
                    log.info("redis write succeeded after %d retries (%d results)", attempt, len(results))
                return
            except RETRYABLE as e:
                attempt += 1
                if self._stop.is_set():
                    raise SinkStopped(f"redis write abandoned after {attempt} attempts") from e
                log.warning("redis write failed (%s: %s); retry %d in %.1fs (%d results, first id %s)",
                            type(e).__name__, str(e)[:120], attempt, delay, len(results), results[0].get("id"))
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):  # the normal case: no stop during the backoff
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _write_once(self, results: list[dict]) -> None:
        s = self.settings
        channel = s.keys.live
        async with self.client.pipeline(transaction=False) as pipe:
            for result in results:
                body = orjson.dumps(result)
                keys = [s.keys.post(result["id"]), s.keys.seen(result["id"]), *self._bucket_keys(result)]
                args = [body, s.result_ttl_s, s.seen_ttl_s, s.bucket_ttl_s, result["label"], channel]
                await self._script(keys=keys, args=args, client=pipe)
            await pipe.execute()

    def _bucket_keys(self, result: dict) -> list[str]:
        minute = minute_bucket(event_ms(result.get("created_at"), result["processed_at"]))
        return [self.settings.keys.brand(brand, minute) for brand in counted_brands(result.get("brands", []))]

    async def brand_counts(self, brand: str, minute: str) -> dict[str, int]:
        """Label -> count for one brand-minute bucket (dashboards, tests)."""
        raw = await self.client.hgetall(self.settings.keys.brand(brand, minute))
        return {k.decode(): int(v) for k, v in raw.items()}

    # --- caption cache: best effort, never raises ----------------------------------------------------

    def _caption_key(self, sha: str, captioner: str) -> str:
        return self.settings.keys.caption(captioner, sha)

    async def get_caption(self, sha: str, captioner: str) -> str | None:
        if self._cache_skipped():
            return None
        try:
            value = await asyncio.wait_for(self.client.get(self._caption_key(sha, captioner)), CACHE_TIMEOUT_S)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            self._cache_failed(e)
            return None
        self._cache_ok()
        return value.decode("utf-8", "replace") if value is not None else None

    async def put_caption(self, sha: str, captioner: str, caption: str) -> None:
        if self._cache_skipped():
            return
        try:
            await asyncio.wait_for(
                self.client.set(self._caption_key(sha, captioner), caption, ex=self.settings.caption_ttl_s),
                CACHE_TIMEOUT_S)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            self._cache_failed(e)
            return
        self._cache_ok()

    # While the cache is unreachable, skip it for `cache_retry_s` instead of paying a failed round trip
    # (and a log line) per image; one line when it goes away, one when it is back.
    def _cache_skipped(self) -> bool:
        return time.monotonic() < self._cache_down_until

    def _cache_failed(self, e: BaseException) -> None:
        if not self._cache_skipped():
            log.warning("caption cache unavailable (%s); captioning without it for %.0fs",
                        type(e).__name__, self.cache_retry_s)
        self._cache_down = True
        self._cache_down_until = time.monotonic() + self.cache_retry_s

    def _cache_ok(self) -> None:
        if self._cache_down:
            log.info("caption cache available again")
            self._cache_down = False

    async def close(self) -> None:
        self.stop()
        if self._own_client:
            await self.client.aclose()
