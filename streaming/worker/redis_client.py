"""Redis client construction from settings (URL, password, TLS, cluster), for the worker, the monitor and
the tools.

With ``redis_cluster`` (``AFFECTSTREAM_REDIS_CLUSTER=true``) ``redis_url`` names any node of a Redis Cluster
and the clients are redis-py's cluster clients: they discover the other nodes, route each command (and each
script, whose keys share one slot: ``redis_keys``) to the master of its slot, follow MOVED/ASK, split
pipelines by node and run SCAN on every master."""
from __future__ import annotations

from typing import Any

from affectstream.streaming.worker.settings import Settings


def redis_client_kwargs(settings: Settings, flavor: str = "sync") -> dict[str, Any]:
    """password / TLS for redis-py's ``from_url`` (``flavor`` "sync" for redis.Redis, "asyncio" for
    redis.asyncio); a password already in the URL wins (from_url applies it).

    TLS: ``from_url`` picks the connection class from the URL scheme and passes an ``ssl=True`` keyword
    on to the connection, which then fails with TypeError at the first connect; so ``redis_tls`` on a
    ``redis://`` URL selects the flavor's SSLConnection explicitly (certificates verified by default)."""
    kwargs: dict[str, Any] = {}
    if settings.redis.password:
        kwargs["password"] = settings.redis.password
    if settings.redis.tls and not settings.redis.url.startswith("rediss://"):
        if settings.redis.cluster:  # the cluster client builds its connections itself
            kwargs["ssl"] = True
            return kwargs
        if flavor == "asyncio":
            from redis.asyncio.connection import SSLConnection
        else:
            from redis.connection import SSLConnection
        kwargs["connection_class"] = SSLConnection
    return kwargs


def async_redis(settings: Settings):
    """redis.asyncio client (a ``RedisCluster`` with ``redis_cluster``); short retries (callers that must not
    lose writes retry themselves)."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    cls = RedisCluster if settings.redis.cluster else aioredis.Redis
    return cls.from_url(
        settings.redis.url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1), **redis_client_kwargs(settings, "asyncio"))


def sync_redis(settings: Settings, **kwargs: Any):
    """redis.Redis client (a ``RedisCluster`` with ``redis_cluster``) for tools and tests."""
    import redis
    from redis.cluster import RedisCluster

    cls = RedisCluster if settings.redis.cluster else redis.Redis
    return cls.from_url(settings.redis.url, **redis_client_kwargs(settings, "sync"), **kwargs)
