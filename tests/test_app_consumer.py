"""The worker's Kafka consumer must not let the broker hold an empty fetch for long: Tansu keeps a
waiting fetch for about half of ``fetch_max_wait_ms`` even when data arrives (faust's 1500 ms default
put a ~550 ms floor under end-to-end latency)."""
from __future__ import annotations

import asyncio

from affectstream.streaming.worker.app import FETCH_MAX_WAIT_MS, create_app
from affectstream.streaming.worker.settings import Settings


def fetch_wait_of(settings: Settings) -> int:
    async def build():
        app = create_app(settings, "all", register=False)
        thread = app.consumer._new_consumer_thread()
        consumer = thread._create_worker_consumer(app.transport)
        return consumer._fetch_max_wait_ms

    return asyncio.run(build())


SERVICES = dict(broker_url="kafka://127.0.0.1:9", redis_url="redis://127.0.0.1:9/0")


def test_worker_consumer_uses_short_fetch_wait():
    assert fetch_wait_of(Settings().replace(**SERVICES)) == FETCH_MAX_WAIT_MS <= 100


def test_fetch_wait_is_a_setting():
    settings = Settings.load(env={"AFFECTSTREAM_FETCH_MAX_WAIT_MS": "20", "AFFECTSTREAM_BROKER_URL": SERVICES["broker_url"],
                                  "AFFECTSTREAM_REDIS_URL": SERVICES["redis_url"]})
    assert fetch_wait_of(settings) == 20


def test_producer_linger_is_a_setting_in_milliseconds():
    async def build(settings: Settings) -> float:
        return create_app(settings, "all", register=False).conf.producer_linger

    assert asyncio.run(build(Settings().replace(**SERVICES))) == 0.002
    assert asyncio.run(build(Settings().replace(**SERVICES, producer_linger_ms=0))) == 0.0
