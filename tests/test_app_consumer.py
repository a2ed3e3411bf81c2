"""The worker's Kafka consumer must not let the broker hold an empty fetch for long: Tansu keeps a
waiting fetch for about half of ``fetch_max_wait_ms`` even when data arrives (faust's 1500 ms default
put a ~550 ms floor under end-to-end latency)."""
from __future__ import annotations

import asyncio

from affectstream.streaming.worker.app import FETCH_MAX_WAIT_MS, create_app
from affectstream.streaming.worker.settings import Settings


def test_worker_consumer_uses_short_fetch_wait():
    async def build():
        app = create_app(Settings(broker_url="kafka://127.0.0.1:9", redis_url="redis://127.0.0.1:9/0"),
                         "all", register=False)
        thread = app.consumer._new_consumer_thread()
        consumer = thread._create_worker_consumer(app.transport)
        return consumer._fetch_max_wait_ms

    assert asyncio.run(build()) == FETCH_MAX_WAIT_MS <= 100
