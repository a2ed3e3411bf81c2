"""The sink seam: a sink of one's own is one class and one setting; a batch is acked only after every sink
accepted it. The streamed run uses the real broker and the real redis-server (tests/servers.py)."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import pytest

from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.sinks import Sink, SinkConfigError, SinkItem, build_sinks, sink_classes
from affectstream.streaming.worker.sinks.redis import RedisSink
from affectstream.streaming.worker.sinks.topic import TopicSink
from affectstream.streaming.worker.stage import Stage, StageBatch, run_stage

ROOT = Path(__file__).resolve().parent.parent
TOY_SINK_FILE = "AFFECTSTREAM_TEST_TOY_SINK_FILE"


class ToySink(Sink):
    """Appends each result's JSON line to the file named by $AFFECTSTREAM_TEST_TOY_SINK_FILE."""

    def __init__(self, settings: Settings, app=None):
        super().__init__(settings, app)
        self.path = os.environ[TOY_SINK_FILE]

    async def write(self, batch: list[SinkItem]) -> None:
        await asyncio.to_thread(self._append, b"".join(item.json + b"\n" for item in batch))

    def _append(self, lines: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(lines)


# --- the registry -----------------------------------------------------------------------------------------

def test_built_in_and_user_sinks_resolve_in_order():
    assert sink_classes(Settings()) == [RedisSink, TopicSink]
    assert sink_classes(Settings().replace(sinks=" topic , tests.test_sinks:ToySink ")) == [TopicSink, ToySink]


@pytest.mark.parametrize("sinks, message", [
    ("redis,nope", "unknown sink 'nope': built-in sinks are redis, topic"),
    ("tests.no_such_module:Sink", "cannot import 'tests.no_such_module'"),
    ("tests.test_sinks:NoSuchSink", "has no sink class 'NoSuchSink'"),
    (" , ", "sinks is empty"),
    ("redis,topic,redis", "lists a sink twice"),
])
def test_a_bad_sinks_setting_is_a_clear_error(sinks, message):
    with pytest.raises(SinkConfigError, match=message):
        sink_classes(Settings().replace(sinks=sinks))


def test_unknown_sink_stops_the_classify_worker_at_start_up():
    from affectstream.streaming.worker.app import create_app

    async def build():
        create_app(Settings().replace(broker_url="kafka://127.0.0.1:9", redis_url="redis://127.0.0.1:9/0", sinks="webhook"),
                   "classify")

    with pytest.raises(SinkConfigError, match="unknown sink 'webhook'"):
        asyncio.run(build())


def test_a_sink_that_fails_to_construct_names_itself():
    with pytest.raises(SinkConfigError, match="TopicSink failed to start"):
        build_sinks(Settings().replace(sinks="topic"), app=None)


# --- ack only after every sink accepted (the stage skeleton, without Kafka) -------------------------------

class _Event:
    def __init__(self, value: bytes):
        self.message = type("Message", (), {"value": value})()


class _Stream:
    """What run_stage needs of a faust stream: ``noack_take`` batches and ``ack``."""

    def __init__(self, batches: list[list[bytes]]):
        self.batches = [[_Event(v) for v in batch] for batch in batches]
        self.acked: list[bytes] = []

    async def noack_take(self, max_: int, within: float):
        for batch in self.batches:
            yield batch

    async def ack(self, event: _Event) -> None:
        self.acked.append(event.message.value)


class _Batch(StageBatch):
    def __init__(self, items: list[SinkItem]):
        super().__init__()
        self._items = items

    @property
    def items(self) -> list[SinkItem]:
        return self._items


class _EchoStage(Stage):
    """One result per raw value (the value is the post id)."""

    async def process(self, raws: list[bytes]) -> StageBatch:
        return _Batch([SinkItem.of(Result(id=raw.decode(), label="neutral", scores={"neutral": 1.0}))
                       for raw in raws])


class _Recording(Sink):
    def __init__(self, fail: bool = False, delay: float = 0.0):
        super().__init__(Settings())
        self.fail, self.delay, self.got = fail, delay, []

    async def write(self, batch: list[SinkItem]) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("sink down")
        self.got.extend(item.json for item in batch)


def _run(stream: _Stream, sinks: list[Sink], sent: list) -> None:
    async def send(records):
        sent.append(records)

    asyncio.run(run_stage(stream, _EchoStage(), sinks, send, batch_max=10, within=0.01))


def test_batch_is_acked_after_every_sink_accepted_it_and_all_get_the_same_bytes():
    stream, sinks, sent = _Stream([[b"a", b"b"], [b"c"]]), [_Recording(), _Recording(delay=0.05)], []
    _run(stream, sinks, sent)
    assert stream.acked == [b"a", b"b", b"c"]
    assert [orjson.loads(j)["id"] for j in sinks[0].got] == ["a", "b", "c"]
    assert all(x is y for x, y in zip(sinks[0].got, sinks[1].got)), "one serialisation shared by every sink"
    assert sent == [{"dlq": []}, {"dlq": []}]


def test_no_ack_when_any_sink_fails_and_the_other_sinks_finish_first():
    stream, sinks = _Stream([[b"a", b"b"], [b"c"]]), [_Recording(delay=0.05), _Recording(fail=True)]
    with pytest.raises(ConnectionError, match="sink down"):
        _run(stream, sinks, [])
    assert stream.acked == []
    assert len(sinks[0].got) == 2, "the failure is raised only after the slower sink has finished"


def test_the_next_batch_is_computed_while_the_last_is_delivered_and_each_is_acked_after_its_delivery():
    log: list[tuple[str, str]] = []

    class _LoggedStream(_Stream):
        async def ack(self, event: _Event) -> None:
            log.append(("acked", event.message.value.decode()))

    class _LoggedStage(_EchoStage):
        async def process(self, raws: list[bytes]) -> StageBatch:
            log.append(("computed", raws[0].decode()))
            return await super().process(raws)

    class _SlowSink(_Recording):
        async def write(self, batch: list[SinkItem]) -> None:
            first = orjson.loads(batch[0].json)["id"]
            await super().write(batch)
            log.append(("delivered", first))

    sent: list = []

    async def send(records):
        sent.append(records)

    stream = _LoggedStream([[b"a", b"b"], [b"c"], [b"d"]])
    asyncio.run(run_stage(stream, _LoggedStage(), [_SlowSink(delay=0.05)], send, batch_max=10, within=0.01))
    assert sent == [{"dlq": []}] * 3, "each batch's topic records are sent once, with its delivery"
    assert log.index(("computed", "c")) < log.index(("delivered", "a")), "computing overlaps the delivery"
    for first, acked in (("a", ["a", "b"]), ("c", ["c"]), ("d", ["d"])):
        done = log.index(("delivered", first))
        assert all(log.index(("acked", x)) > done for x in acked), "acked only once delivered"
    assert [x for kind, x in log if kind == "acked"] == ["a", "b", "c", "d"]
    assert [x for kind, x in log if kind == "delivered"] == ["a", "c", "d"]


# --- a streamed run on the real broker and Redis ---------------------------------------------------------

@pytest.mark.integration
def test_a_sink_of_ones_own_sees_every_result_of_a_streamed_run(broker, redis_server, tiny_model_dir,
                                                                   tmp_path, monkeypatch):
    from tests.test_pipeline import lines_of, make_settings, read_topic, stored_ids, text_posts, wait_for, workers
    from affectstream.streaming.tools.producer import produce_lines

    out = tmp_path / "toy-sink.jsonl"
    monkeypatch.setenv(TOY_SINK_FILE, str(out))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the worker imports tests.test_sinks:ToySink from any cwd
    s = make_settings(broker, redis_server, tiny_model_dir, sinks="redis,topic,tests.test_sinks:ToySink")
    posts = text_posts(40, prefix="toy")
    bad = [b"not json", orjson.dumps({"id": "empty", "text": " "})]
    ids = {p["id"] for p in posts}

    def toy_ids() -> list[str]:
        return [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()] if out.exists() else []

    with workers(s, "all") as procs:
        produce_lines(s, lines_of(posts[:20]) + bad + lines_of(posts[20:]))
        wait_for(lambda: set(toy_ids()) >= ids and stored_ids(s) >= ids
                 and len(read_topic(s, s.kafka.topic_sentiment)) >= len(ids), 120, procs, "every result in every sink")
        topic_ids = [orjson.loads(r.value)["id"] for r in read_topic(s, s.kafka.topic_sentiment)]

    seen = toy_ids()
    assert sorted(seen) == sorted(ids), "each valid post exactly once in the toy sink, nothing else"
    assert stored_ids(s) == ids
    assert sorted(topic_ids) == sorted(ids)
    lines = {orjson.loads(line)["id"]: line for line in out.read_bytes().splitlines()}
    for record in read_topic(s, s.kafka.topic_sentiment):  # the same bytes in every sink
        assert record.value == lines[orjson.loads(record.value)["id"]]
