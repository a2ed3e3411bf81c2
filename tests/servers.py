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
    return Settings().replace(**values)


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


# --- Redis Cluster ----------------------------------------------------------------------------------

class RedisClusterNodes:
    """A real Redis Cluster of ``masters`` redis-server processes on 127.0.0.1 (no replicas), each in its own
    folder with an append-only file fsynced on every write, so a node stopped (even SIGKILLed) and started
    again on its port and folder comes back with its slots and every acknowledged write."""

    def __init__(self, root: str, masters: int = 3):
        from pathlib import Path

        from affectstream.streaming.tools.services import free_port

        self.ports = [free_port() for _ in range(masters)]
        self.bus_ports = [free_port() for _ in range(masters)]  # else port + 10000, often past 65535
        self.dirs = [Path(root) / f"node-{port}" for port in self.ports]
        self.nodes: list[RunningService | None] = [None] * masters
        for i in range(masters):
            self.start_node(i)
        import subprocess

        created = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                                  "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True,
                                 timeout=60)
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
        self.wait_ok()

    @property
    def url(self) -> str:
        """A startup node; the cluster client finds the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, i: int) -> RunningService:
        from affectstream.streaming.tools.services import _start_once, redis_binary

        self.dirs[i].mkdir(parents=True, exist_ok=True)
        port = self.ports[i]
        cmd = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "no",
               "--cluster-enabled", "yes", "--cluster-port", str(self.bus_ports[i]),
               "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "3000",
               "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dirs[i]),
               "--daemonize", "no"]
        self.nodes[i] = _start_once("redis-cluster-node", cmd, port, f"redis://127.0.0.1:{port}/0", None)
        return self.nodes[i]

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i`` (a crash: no shutdown, no final fsync)."""
        import os
        import signal

        node, self.nodes[i] = self.nodes[i], None
        if node is not None:
            os.kill(node.pid, signal.SIGKILL)
            node.stop()  # reaps it

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every node reports ``cluster_state:ok``."""
        import time

        import redis

        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for port in self.ports:
                try:
                    states.append(redis.Redis(port=port, socket_timeout=2).cluster("info").get("cluster_state"))
                except redis.RedisError as e:
                    states.append(type(e).__name__)
            if all(state == "ok" for state in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok after {timeout_s}s: {states}")
            time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            if node is not None:
                node.stop()
        self.nodes = [None] * len(self.nodes)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[RedisClusterNodes]:
    """A real 3-master Redis Cluster on 127.0.0.1 (``redis-cli --cluster create``)."""
    cluster = RedisClusterNodes(str(tmp_path_factory.mktemp("redis-cluster")))
    yield cluster
    cluster.stop()
