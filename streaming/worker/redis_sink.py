"""Old import path, kept for callers outside the worker package (tests/test_faults.py, bench/caption.py),
which use ``RedisSink`` only as the caption cache. Its parts have moved:

* the caption cache -> ``caption_cache.CaptionCache`` (what ``RedisSink`` names here);
* result writing (Lua script, idempotent counts, retries) -> ``sinks.redis.RedisSink``.

Import from those modules; this one goes once its last caller has moved.
"""
from affectstream.streaming.worker.caption_cache import CaptionCache
from affectstream.streaming.worker.caption_cache import CaptionCache as RedisSink
from affectstream.streaming.worker.sinks.redis import SinkStopped

__all__ = ["CaptionCache", "RedisSink", "SinkStopped"]
