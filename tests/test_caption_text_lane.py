"""The caption stage's text lane: a micro-batch's text-only posts (and parse dead letters) are delivered while
its images are still being described, the image posts when they are done, and the batch is acked only after
both; a failure in either part acks nothing. A stage that does not split delivers once, as before."""
from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import time

import orjson
import pytest
from PIL import Image

from affectstream.streaming.worker.caption import CaptionBatch, Captioning
from affectstream.streaming.worker.sinks import Sink, SinkItem
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.settings import Settings
from affectstream.streaming.worker.stage import Stage, StageBatch, run_stage
from tests.servers import settings_for
from tests.test_sinks import _Batch, _Stream as _SinkStream

WAIT_S = 5.0


class _Stream(_SinkStream):
    """test_sinks' in-memory stream; acks also go to the shared ``timeline``."""

    def __init__(self, batches: list[list[bytes]], timeline: list):
        super().__init__(batches)
        self.timeline = timeline

    async def ack(self, event) -> None:
        await super().ack(event)
        self.timeline.append(("ack", event.message.value))


class _BlockingCaptioner:
    """``describe`` (in the stage's captioner thread) waits until the test sets ``release``."""
    name = "blocking"

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()

    def describe(self, images: list) -> list[str]:
        self.started.set()
        if not self.release.wait(WAIT_S):
            raise RuntimeError("the test never released the captioner")
        return [f"described {img.size[0]}" for img in images]


def _png(side: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (side % 256, 80, 160)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


TEXT = [orjson.dumps({"id": f"t{i}", "text": f"plain text post {i}"}) for i in range(2)]
IMAGES = [orjson.dumps({"id": f"i{i}", "text": "look at this", "image": {"b64": _png(20 + i)}}) for i in range(2)]
MALFORMED = b"{not json"
MIXED = TEXT + [MALFORMED] + IMAGES


def _ids(records: dict) -> tuple[set[str], list[dict]]:
    """(forwarded post ids, dead letters) of one send."""
    return ({orjson.loads(v)["id"] for _, v in records.get("enriched", [])},
            [orjson.loads(v) for _, v in records.get("dlq", [])])


async def _until(predicate, what: str) -> None:
    for _ in range(int(WAIT_S / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_text_posts_and_dead_letters_go_out_while_images_are_described_and_acks_wait_for_both(caplog):
    timeline: list = []
    captioner = _BlockingCaptioner()
    stage = Captioning(settings_for(caption_timeout_s=WAIT_S), captioner)
    stream = _Stream([MIXED], timeline)
    first_send_may_return = asyncio.Event()

    async def send(records):
        forwarded, dead = _ids(records)
        timeline.append(("send", forwarded, len(dead)))
        if forwarded & {"t0", "t1"}:
            await first_send_may_return.wait()  # the text part's broker acks are slow: the image part waits

    async def scenario():
        worker = asyncio.create_task(run_stage(stream, stage, [], send, batch_max=10, within=0.01))
        await _until(lambda: timeline, "the text part's send")
        assert timeline == [("send", {"t0", "t1"}, 1)], "text posts and the dead letter first, alone"
        await _until(captioner.started.is_set, "the captioner to start while the text part is sent")
        captioner.release.set()
        await asyncio.sleep(0.2)  # images described; their part must still wait for the text part's send
        assert len(timeline) == 1 and not stream.acked
        first_send_may_return.set()
        await asyncio.wait_for(worker, WAIT_S)

    caplog.set_level(logging.INFO, logger="affectstream.caption")
    try:
        asyncio.run(scenario())
    finally:
        captioner.release.set()
        stage.close()
    assert timeline[1] == ("send", {"i0", "i1"}, 0)
    assert [entry[0] for entry in timeline[2:]] == ["ack"] * len(MIXED), "acked only after both parts"
    assert sorted(stream.acked) == sorted(MIXED)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("captioned batch"))
    assert "n=5 forwarded=4 dlq=1 described=2 cache_hits=0" in line, line


def _run_unblocked(batch: list) -> list[dict]:
    """One batch through `run_stage` with a captioner that answers at once; what each send got, in order."""
    sent: list[dict] = []
    captioner = _BlockingCaptioner()
    captioner.release.set()
    stage = Captioning(settings_for(caption_timeout_s=WAIT_S), captioner)

    async def send(records):
        sent.append(records)

    try:
        asyncio.run(run_stage(_Stream([batch], []), stage, [], send, batch_max=10, within=0.01))
    finally:
        stage.close()
    return sent


def test_the_image_part_is_described_and_stamped():
    sent = _run_unblocked(MIXED)
    dead = [orjson.loads(v) for _, v in sent[0]["dlq"]]
    assert [(d["stage"], d["reason"]) for d in dead] == [("parse", "invalid_json")]
    images = {orjson.loads(v)["id"]: orjson.loads(v) for _, v in sent[1]["enriched"]}
    assert {i: (p["caption"], p["captioner"]) for i, p in images.items()} == {
        "i0": ("described 20", "blocking"), "i1": ("described 21", "blocking")}


@pytest.mark.parametrize("batch, sends", [(TEXT + [MALFORMED], 1), (IMAGES, 1), (MIXED, 2)])
def test_a_batch_is_split_only_when_it_has_both_lanes(batch, sends):
    sent = _run_unblocked(batch)
    assert len(sent) == sends
    assert sum(len(_ids(r)[0]) + len(_ids(r)[1]) for r in sent) == len(batch), "every post once"


@pytest.mark.parametrize("failing", ["text part send", "image part send", "describing"])
def test_a_failure_in_either_part_raises_and_acks_nothing(failing):
    timeline: list = []
    sent: list[set[str]] = []
    captioner = _BlockingCaptioner()
    stage = Captioning(settings_for(caption_timeout_s=WAIT_S), captioner)
    later = [orjson.dumps({"id": "next", "text": "a later batch"})]
    stream = _Stream([MIXED, later], timeline)

    async def send(records):
        forwarded, _ = _ids(records)
        if failing == "text part send" and "t0" in forwarded:
            await _until(captioner.started.is_set, "the images to be in the captioner")
            raise ConnectionError("broker gone")
        if failing == "image part send" and "i0" in forwarded:
            raise ConnectionError("broker gone")
        sent.append(forwarded)

    if failing == "describing":
        async def broken(pending, out):
            await asyncio.sleep(0.05)
            raise RuntimeError("image lane broke")
        stage._caption = broken
    elif failing == "image part send":
        captioner.release.set()
    # "text part send": the captioner stays blocked; the failed send must not wait for it
    expected = RuntimeError if failing == "describing" else ConnectionError
    started = time.monotonic()
    try:
        with pytest.raises(expected):
            asyncio.run(run_stage(stream, stage, [], send, batch_max=10, within=0.01))
    finally:
        took = time.monotonic() - started
        captioner.release.set()
        stage.close()
    assert stream.acked == [], "nothing of the failed batch is acked"
    assert all("next" not in s for s in sent), "the next batch never starts"
    if failing == "text part send":
        assert sent == [], "the image part is abandoned, not sent"
        assert took < WAIT_S / 2, "the describing is cancelled, not waited for"
        assert stage._stuck is not None, "a later batch must not queue behind the abandoned describe call"


# --- a stage that does not split (classify-like) ------------------------------------------------------------

@pytest.fixture
def no_split_run():
    class _PartitionStage(Stage):
        """Like the classify stage: overrides process_events, never process_parts."""
        calls = 0

        async def process(self, raws):
            raise AssertionError("process_events is the stage's entry point")

        async def process_events(self, events):
            type(self).calls += 1
            return _Batch([SinkItem.of(Result(id=e.message.value.decode(), label="neutral",
                                              scores={"neutral": 1.0})) for e in events])

    class _Recording(Sink):
        def __init__(self):
            super().__init__(Settings())
            self.writes: list[list[str]] = []

        async def write(self, batch):
            self.writes.append([item.result.id for item in batch])
            return {batch[0].result.id}

    return _PartitionStage, _Recording


def test_a_stage_without_parts_delivers_each_batch_once(no_split_run):
    stage_cls, sink_cls = no_split_run
    timeline: list = []
    sink, sent, observed = sink_cls(), [], []
    stage = stage_cls()
    stage.observe = lambda batch, n, seconds: observed.append((n, batch.fresh_ids))
    stream = _Stream([[b"a", b"b"], [b"c"]], timeline)

    async def send(records):
        sent.append(records)
        timeline.append(("send",))

    asyncio.run(run_stage(stream, stage, [sink], send, batch_max=10, within=0.01))
    assert sink.writes == [["a", "b"], ["c"]] and sent == [{"dlq": []}, {"dlq": []}]
    assert [e[0] for e in timeline] == ["send", "ack", "ack", "send", "ack"]
    assert stage_cls.calls == 2 and observed == [(2, {"a"}), (1, {"c"})]


def test_merged_joins_lists_adds_counters_and_unites_fresh_ids():
    a = CaptionBatch(enriched=[(b"t", b"{}")], dlq=[(None, b"x")])
    b = CaptionBatch(enriched=[(b"i", b"{}")], cache_hits=2, described=1)
    merged = a.merged(b)
    assert merged is not a and a.enriched == [(b"t", b"{}")], "the parts are left as delivered"
    assert merged.enriched == [(b"t", b"{}"), (b"i", b"{}")] and merged.dlq == [(None, b"x")]
    assert (merged.cache_hits, merged.described, merged.fresh_ids) == (2, 1, None)
    with pytest.raises(TypeError):
        a.merged(StageBatch())


def test_merged_fresh_ids_count_every_result_of_a_part_no_sink_told_about_as_new():
    from affectstream.streaming.worker.classify import ClassifyBatch

    def item(post_id: str) -> SinkItem:
        return SinkItem.of(Result(id=post_id, label="neutral", scores={"neutral": 1.0}))

    told = ClassifyBatch(sink_items=[item("b"), item("c")], fresh_ids={"b"})
    untold = ClassifyBatch(sink_items=[item("a")])
    merged = untold.merged(told)
    assert merged.fresh_ids == {"a", "b"} and [i.result.id for i in merged.items] == ["a", "b", "c"]
