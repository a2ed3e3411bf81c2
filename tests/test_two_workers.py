"""Two ``affectstream worker`` processes on one host, started as an operator would (no web flag, the same
default web port in their settings), on a real broker and Redis: both start and share the work, because
roles that serve no dashboard open no port; the monitor is the one that does."""
from __future__ import annotations

import socket

import orjson
import pytest

from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.tools.services import free_port
from affectstream.streaming.tools.workers import WorkerProcess
from tests.servers import workers_running
from tests.test_pipeline import make_settings, stored_ids, text_posts, wait_for

pytestmark = pytest.mark.integration


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_two_workers_on_one_host_both_start_and_only_the_monitor_opens_the_web_port(broker, redis_server,
                                                                                  tiny_model_dir):
    port = free_port()  # both workers' settings name this port, as two workers on 6066 would
    s = make_settings(broker, redis_server, tiny_model_dir, web_port=port)
    workers = [WorkerProcess(s, "caption", web_by_role=True), WorkerProcess(s, "classify", web_by_role=True)]
    posts = text_posts(30, prefix="two")
    with workers_running(workers):
        produce_lines(s, [orjson.dumps(p) for p in posts])
        wait_for(lambda: len(stored_ids(s)) >= len(posts), 90, workers, "every result through both workers")
        assert all(w.alive() for w in workers) and not listening(port)
        assert all("address already in use" not in w.log_tail(200).lower() for w in workers)
        monitor = WorkerProcess(s, "monitor", web_by_role=True)  # the dashboard's role: opens it on loopback
        workers.append(monitor)
        wait_for(lambda: listening(port), 60, workers, "the monitor's web port")
        assert all(w.alive() for w in workers)
