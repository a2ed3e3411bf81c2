"""The faust internals the worker uses (streaming/worker/faust_compat.py): the installed releases are the tested
ones and pyproject.toml bounds them so; a release outside is named with what to do; where an internal is gone,
faust's public behaviour serves (micro-batches from its own ``noack_take``, its own fetch wait), tested on real
faust streams and consumers."""
from __future__ import annotations

import asyncio
import logging

import faust
import pytest

from affectstream.streaming.worker import faust_compat
from affectstream.streaming.worker.stage import MicroBatches


def test_the_installed_faust_and_aiokafka_are_the_tested_ones_with_every_internal():
    assert faust_compat.version_problems() == []
    assert faust_compat.missing_hooks() == []


def test_a_release_outside_the_tested_ones_is_named_with_what_to_install():
    installed = {"faust-streaming": "0.16.2", "aiokafka": "0.14.0"}
    [problem] = faust_compat.version_problems(installed.__getitem__)
    assert "faust-streaming 0.16.2" in problem and f"'faust-streaming{faust_compat.TESTED['faust-streaming']}'" in problem


def stream_batches(values: list[int], max_: int) -> list[list[int]]:
    """Every value through ``MicroBatches`` over a real faust stream (an in-memory channel), each event acked."""
    async def run() -> list[list[int]]:
        app = faust.App("compat-test", broker="kafka://127.0.0.1:9", store="memory://", autodiscover=False)
        app.flow_control.resume()
        channel = app.channel(maxsize=len(values))
        stream = app.stream(channel)
        got: list[list[int]] = []
        async with stream:
            for value in values:
                await channel.send(value=value)
            batches = MicroBatches(stream)
            async for batch in batches.noack_take(max_, within=0.05):
                got.append([event.value for event in batch])
                for event in batch:
                    await batches.ack(event)
                if sum(map(len, got)) == len(values):
                    break
        return got

    return asyncio.run(asyncio.wait_for(run(), 30))


def test_micro_batches_fill_from_the_passive_stream():
    batches = stream_batches(list(range(10)), max_=4)
    assert [v for batch in batches for v in batch] == list(range(10))
    assert max(map(len, batches)) == 4


def test_without_the_stream_internals_faust_own_noack_take_makes_the_batches(monkeypatch):
    monkeypatch.setattr(faust_compat, "STREAM_HOOKS", ("_enable_passive_renamed", "_processors"))
    assert any("_enable_passive_renamed" in p and "noack_take" in p for p in faust_compat.missing_hooks())
    batches = stream_batches(list(range(10)), max_=4)
    assert [v for batch in batches for v in batch] == list(range(10))
    assert max(map(len, batches)) <= 4


def fetch_wait_of(app: faust.App) -> int:
    async def build() -> int:
        consumer = app.consumer._new_consumer_thread()._create_worker_consumer(app.transport)
        return consumer._fetch_max_wait_ms  # aiokafka's, read back here only to see what the worker asked for

    return asyncio.run(build())


def new_app(**options) -> faust.App:
    return faust_compat.new_app("compat-test", broker="kafka://127.0.0.1:9", autodiscover=False, **options)


def test_the_consumer_fetches_with_the_wait_asked_for():
    assert fetch_wait_of(new_app(fetch_max_wait_ms=20)) == 20


def test_without_the_driver_methods_a_plain_faust_app_keeps_fausts_wait(monkeypatch):
    monkeypatch.setattr(faust_compat, "FETCH_HOOKS",
                        (*faust_compat.FETCH_HOOKS, (faust.App, "_new_transport_renamed")))
    assert any("AFFECTSTREAM_FETCH_MAX_WAIT_MS has no effect" in p for p in faust_compat.missing_hooks())
    app = new_app(fetch_max_wait_ms=20)
    assert type(app) is faust.App
    assert fetch_wait_of(app) == faust_compat.FAUST_FETCH_WAIT_MS


def test_without_aiokafkas_attribute_the_consumer_starts_with_fausts_wait(monkeypatch, caplog):
    monkeypatch.setattr(faust_compat, "FETCH_WAIT_ATTRIBUTE", "_fetch_max_wait_ms_renamed")
    with caplog.at_level(logging.WARNING, logger=faust_compat.__name__):
        assert fetch_wait_of(new_app(fetch_max_wait_ms=20)) == faust_compat.FAUST_FETCH_WAIT_MS
    assert "keeps faust's fetch wait" in caplog.text and "install 'aiokafka" in caplog.text


@pytest.mark.parametrize("dist", sorted(faust_compat.TESTED))
def test_pyproject_bounds_each_library_to_the_releases_tested(dist):
    from tests.test_packaging import declared_requirement

    assert declared_requirement(dist).specifier == faust_compat.TESTED[dist]
