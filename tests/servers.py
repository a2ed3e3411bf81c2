"""Real servers for the integration tests, shared across the session.

Use with ``pytest_plugins = ["tests.servers"]`` in tests/conftest.py. Never mock Kafka or Redis.
"""
from __future__ import annotations

import contextlib
import threading
import uuid
from http.server import ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from affectstream.streaming.tools.services import RunningService, start_broker, start_redis
from affectstream.streaming.worker.settings import Settings

__all__ = ["broker", "redis_server", "settings_for", "workers_running", "local_http_server"]


@pytest.fixture(scope="session")
def broker() -> Iterator[RunningService]:
    """A real Tansu broker (memory storage) on a free 127.0.0.1 port."""
    service = start_broker()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RunningService]:
    """A real redis-server (no persistence) on a free 127.0.0.1 port."""
    service = start_redis()
    yield service
    service.stop()


def settings_for(broker: RunningService | None = None, redis: RunningService | None = None,
                 **overrides: Any) -> Settings:
    """Settings pointing at the test servers, with short group timeouts and a unique Redis prefix and
    app id, so tests sharing a server never see each other's keys or consumer groups."""
    run = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "broker_url": broker.url if broker else "",
        "redis_url": redis.url if redis else "",
        "redis_prefix": f"t{run}:",
        "app_id": f"affectstream-test-{run}",
        "session_timeout_s": 6.0,
        "heartbeat_interval_s": 1.0,
        "web_enabled": False,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def workers_running(workers: list, log_lines: int = 80) -> Iterator[list]:
    """Stop every worker process in ``workers`` on the way out (the list may grow inside the block); when
    the block fails, print each one's log tail first."""
    try:
        yield workers
    except BaseException:
        for w in workers:
            if w is not None:
                print(f"--- worker {w.role} pid {w.pid}:\n{w.log_tail(log_lines)}")
        raise
    finally:
        for w in workers:
            if w is not None:
                w.stop()


@contextlib.contextmanager
def local_http_server(handler) -> Iterator[str]:
    """A threaded HTTP server for ``handler`` on a free 127.0.0.1 port; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
