"""A redelivered post (at-least-once delivery, or a replay after a crash) against the real redis-server: the
first result stands, it is published once, counted once, and the metrics count it once — even when the
second delivery is classified by a newer model with a different label."""
from __future__ import annotations

import asyncio
import time

import orjson

from affectstream.streaming.worker import metrics
from affectstream.streaming.worker.classify import Classifying
from affectstream.streaming.worker.redis_keys import minute_bucket
from affectstream.streaming.worker.sinks.redis import RedisSink
from affectstream.streaming.worker.stage import run_stage
from tests.servers import settings_for
from tests.test_redis_sink import MINUTE, T0, result, targeted
from tests.test_sinks import _Stream


async def live_messages(sink: RedisSink, channel: str, action) -> list[dict]:
    """Every message published on ``channel`` while ``action()`` runs (and for a moment after)."""
    pubsub = sink.client.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=1.0)  # subscribe confirmation
    await action()
    received, deadline = [], time.monotonic() + 1.0
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message:
            received.append(orjson.loads(message["data"]))
    await pubsub.aclose()
    return received


def test_redelivered_post_keeps_the_first_result_and_is_published_and_counted_once(redis_server):
    settings = settings_for(redis=redis_server)
    first = result(1, "positive")
    newer = result(1, "negative")  # the same post again, e.g. after a reload to a model that disagrees
    assert first.result.id == newer.result.id and first.json != newer.json

    async def run():
        sink = RedisSink(settings)
        returned = []

        async def deliver_twice():
            returned.append(await sink.write([first, result(2)]))
            returned.append(await sink.write([newer, result(2), result(3)]))

        published = await live_messages(sink, settings.keys.live, deliver_twice)
        stored = await sink.client.get(settings.keys.post("p1"))
        counts = await sink.brand_counts("acme", MINUTE)
        await sink.close()
        return returned, published, stored, counts

    returned, published, stored, counts = asyncio.run(run())
    assert returned == [{"p1", "p2"}, {"p3"}], "write returns the ids that were new"
    assert sorted(m["id"] for m in published) == ["p1", "p2", "p3"], "a redelivered post is not republished"
    assert [m["label"] for m in published if m["id"] == "p1"] == ["positive"]
    assert stored == first.json, "the first result stands"
    assert counts == {"positive": 3}, "counted once, with the first label"


class _Predictor:
    def __init__(self, version: str, label: str):
        self.version, self.label = version, label

    def predict(self, pairs):
        return [{"label": self.label, "scores": {self.label: 1.0}, "emotion": None, "rationale": []} for _ in pairs]


def metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_redelivered_post_through_the_classify_stage_counts_once_in_the_metrics(redis_server):
    """The classify stage and the real Redis sink: a post delivered again, classified by a newer model with
    another label, adds nothing to ``affectstream_posts_total{stage=classify,outcome=result}`` or the label
    counter; it shows as ``outcome=redelivered``."""
    settings = settings_for(redis=redis_server, captioner="none")
    post = orjson.dumps({"id": "redelivered-1", "text": "fine phone", "brands": ["acme"], "created_at": T0})
    other = orjson.dumps({"id": "other-1", "text": "so slow", "brands": ["acme"], "created_at": T0})
    before = {key: metric("affectstream_posts_total", stage="classify", outcome=key) for key in ("result", "redelivered")}
    labels_before = {label: metric("affectstream_results_total", label=label) for label in ("positive", "negative")}

    async def run():
        sink = RedisSink(settings)
        first = Classifying(settings, lambda: _Predictor("model-v1", "positive"), watch=False)
        second = Classifying(settings, lambda: _Predictor("model-v2", "negative"), watch=False)
        sent = []

        async def send(records):
            sent.append(records)

        async def both():
            for stage, batches in ((first, [[post]]), (second, [[post, other]])):
                await stage.start()
                await run_stage(_Stream(batches), stage, [sink], send, batch_max=10, within=0.01)
                stage.close()

        published = await live_messages(sink, settings.keys.live, both)
        stored = orjson.loads(await sink.client.get(settings.keys.post("redelivered-1")))
        counts = await sink.brand_counts("acme", minute_bucket(T0))
        await sink.close()
        return published, stored, counts

    published, stored, counts = asyncio.run(run())
    after = {key: metric("affectstream_posts_total", stage="classify", outcome=key) for key in ("result", "redelivered")}
    labels_after = {label: metric("affectstream_results_total", label=label) for label in ("positive", "negative")}
    assert [m["id"] for m in published] == ["redelivered-1", "other-1"]
    assert (stored["label"], stored["model"]) == ("positive", "model-v1"), "the first result stands"
    assert counts == {"positive": 1, "negative": 1}
    assert after["result"] - before["result"] == 2, "two posts, two results: the redelivery is not one"
    assert after["redelivered"] - before["redelivered"] == 1
    assert labels_after["positive"] - labels_before["positive"] == 1
    assert labels_after["negative"] - labels_before["negative"] == 1  # other-1 only


def test_a_write_that_crashed_between_steps_is_finished_by_the_redelivery(redis_server):
    """A worker that died after claiming a post (step 1), or after counting it in one bucket but not the
    other, or after counting but before announcing: the redelivery — classified again with another label —
    counts the first result exactly once in every bucket, publishes it once, and reports it as new."""
    from affectstream.streaming.worker.sinks.redis import ANNOUNCE, COUNT, _Write

    settings = settings_for(redis=redis_server)
    posts = {"claimed": result(1, "positive", brands=("acme", "other")),
             "half-counted": result(2, "positive", brands=("acme", "other")),
             "counted": result(3, "positive", brands=("acme", "other"))}

    async def crash(sink: RedisSink, item, until: str, buckets_left: int = 0) -> None:
        """Run the steps of ``item`` until ``until``, then stop, as a killed worker would."""
        w = [_Write(item)]
        await sink._claim_step(w, set())
        if until in (COUNT, ANNOUNCE):
            keep = sorted(w[0].buckets)[:buckets_left]
            w[0].buckets -= set(keep)
            await sink._count_step(w, set())
            w[0].buckets |= set(keep)

    async def run():
        dead = RedisSink(settings)
        await crash(dead, posts["claimed"], "claim")
        await crash(dead, posts["half-counted"], COUNT, buckets_left=1)   # two of three buckets counted
        await crash(dead, posts["counted"], ANNOUNCE)
        await dead.close()
        sink = RedisSink(settings)
        again = [result(i, "negative", brands=("acme", "other")) for i in (1, 2, 3)]  # a newer model
        returned = []

        async def redeliver():
            returned.append(await sink.write(again))
            returned.append(await sink.write(again))

        published = await live_messages(sink, settings.keys.live, redeliver)
        counts = {b: await sink.brand_counts(b, MINUTE) for b in ("acme", "other", "_all")}
        await sink.close()
        return returned, published, counts

    returned, published, counts = asyncio.run(run())
    assert returned == [{"p1", "p2", "p3"}, set()], "the redelivery finished the three posts"
    assert sorted((m["id"], m["label"]) for m in published) == [("p1", "positive"), ("p2", "positive"),
                                                                  ("p3", "positive")]
    assert counts == {"acme": {"positive": 3}, "other": {"positive": 3}, "_all": {"positive": 3}}


def test_a_crashed_multi_brand_write_is_finished_with_the_first_results_target_labels(redis_server):
    """A post about acme (negative) and nimbus (positive), counted in acme's bucket only before the worker
    died; redelivered and classified again with other labels: each brand counts once, with the FIRST
    result's label toward it."""
    from affectstream.streaming.worker.sinks.redis import _Write

    settings = settings_for(redis=redis_server)
    first = targeted(1, "neutral", {"acme": "negative", "nimbus": "positive"})
    again = targeted(1, "positive", {"acme": "positive", "nimbus": "negative"})

    async def run():
        dead = RedisSink(settings)
        w = [_Write(first)]
        await dead._claim_step(w, set())
        w[0].buckets = {b for b in w[0].buckets if b[0] == "acme"}   # the crash: nimbus and _all never counted
        await dead._count_step(w, set())
        await dead.close()
        sink = RedisSink(settings)
        fresh = [await sink.write([again]), await sink.write([again])]
        counts = {b: await sink.brand_counts(b, MINUTE) for b in ("acme", "nimbus", "_all")}
        await sink.close()
        return fresh, counts

    fresh, counts = asyncio.run(run())
    assert fresh == [{"p1"}, set()]
    assert counts == {"acme": {"negative": 1}, "nimbus": {"positive": 1}, "_all": {"neutral": 1}}


def test_the_same_post_twice_in_one_batch_counts_once(redis_server):
    settings = settings_for(redis=redis_server)

    async def run():
        sink = RedisSink(settings)
        fresh = await sink.write([result(1, "positive"), result(1, "negative"), result(2, "neutral")])
        counts = await sink.brand_counts("acme", MINUTE)
        await sink.close()
        return fresh, counts

    fresh, counts = asyncio.run(run())
    assert fresh == {"p1", "p2"}
    assert counts == {"positive": 1, "neutral": 1}
