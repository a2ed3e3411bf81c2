"""The caption cache: image sha256 + captioner -> description, in Redis (docs/contracts.md ``as:caption:…``).

Best effort, never raises: a reposted image is described once, and while Redis is unreachable the caption
stage goes on without the cache. After a failed call the cache is skipped for ``cache_retry_s`` instead of
paying a failed round trip (and a log line) per image; one line when it goes away, one when it is back.
"""
from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from affectstream.streaming.worker.redis_client import async_redis
from affectstream.streaming.worker.settings import Settings

log = logging.getLogger(__name__)

CACHE_TIMEOUT_S = 2.0
CACHE_RETRY_S = 5.0   # after a failed cache call, captioning goes on without the cache this long
FAILURES = (RedisError, OSError, asyncio.TimeoutError)


class CaptionCache:
    def __init__(self, settings: Settings, client: aioredis.Redis | None = None):
        self.settings = settings
        self._own_client = client is None
        self.client = client if client is not None else async_redis(settings)
        self.cache_retry_s = CACHE_RETRY_S
        self._down = False
        self._down_until = 0.0

    async def get_caption(self, sha: str, captioner: str) -> str | None:
        if self._skipped():
            return None
        try:
            value = await asyncio.wait_for(self.client.get(self.settings.keys.caption(captioner, sha)),
                                           CACHE_TIMEOUT_S)
        except FAILURES as e:
            self._failed(e)
            return None
        self._ok()
        return value.decode("utf-8", "replace") if value is not None else None

    async def put_caption(self, sha: str, captioner: str, caption: str) -> None:
        if self._skipped():
            return
        try:
            await asyncio.wait_for(
                self.client.set(self.settings.keys.caption(captioner, sha), caption, ex=self.settings.redis.caption_ttl_s),
                CACHE_TIMEOUT_S)
        except FAILURES as e:
            self._failed(e)
            return
        self._ok()

    def _skipped(self) -> bool:
        return time.monotonic() < self._down_until

    def _failed(self, e: BaseException) -> None:
        if not self._skipped():
            log.warning("caption cache unavailable (%s); captioning without it for %.0fs",
                        type(e).__name__, self.cache_retry_s)
        self._down = True
        self._down_until = time.monotonic() + self.cache_retry_s

    def _ok(self) -> None:
        if self._down:
            log.info("caption cache available again")
            self._down = False

    async def close(self) -> None:
        if self._own_client:
            await self.client.aclose()
