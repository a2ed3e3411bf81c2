"""Shadow scoring against the real redis-server: a hashed share of posts is scored by the registry's candidate
too; its results go to the shadow topic and keys and the agreement counts, never to the real counts, the
live channel or the ``sentiment`` topic; redelivery adds nothing; a failing candidate never fails the batch.

The models here are stand-ins with a known answer per post (a registry version is a directory whose
``config.json`` says how it labels), so agreement can be checked exactly; the end-to-end loop with real
tiny models is ``test_feedback_loop.py``."""
from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path

import orjson
import pytest

from affectstream.model.registry import Registry
from affectstream.streaming.worker import metrics
from affectstream.streaming.worker.classify import Classifying, serving_dir
from affectstream.streaming.worker.redis_keys import minute_bucket
from affectstream.streaming.worker.shadow import agreement_fields, disagreement, parse_agreement, shadowed
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.sinks.redis import RedisSink
from affectstream.streaming.worker.stage import run_stage
from tests.servers import settings_for
from tests.test_redis_sink import T0
from tests.test_sinks import _Stream

WORDS = {"love": "positive", "great": "positive", "worst": "negative", "slow": "negative"}
TEXTS = ["love the screen", "worst battery", "picked one up", "great coffee", "so slow", "it is a phone"]
BRANDS = ["acme", "nimbus"]


def words_label(text: str) -> str:
    return next((label for word, label in WORDS.items() if word in text), "neutral")


class StandIn:
    """A predictor whose answer is set by its directory's config: ``words`` (by keyword), a constant label,
    or ``fail`` (every call raises)."""

    def __init__(self, version: str, behaviour: str):
        self.version, self.behaviour = version, behaviour
        self.calls = self.posts = 0

    def label(self, text: str) -> str:
        return words_label(text) if self.behaviour == "words" else self.behaviour

    def predict(self, pairs):
        self.calls += 1
        self.posts += len(pairs)
        if self.behaviour == "fail":
            raise RuntimeError("candidate broken")
        return [{"label": (label := self.label(text)), "scores": {label: 1.0}, "emotion": None, "rationale": []}
                for text, _ in pairs]


def load_stand_in(model_dir: str) -> StandIn:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return StandIn(config["version"], config["behaviour"])


def stand_in_dir(root: Path, name: str, behaviour: str) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"version": name, "behaviour": behaviour}))
    (directory / "model.safetensors").write_bytes(behaviour.encode())  # what model_signature looks at
    return directory


def registry_with(root: Path, deployed: str, candidate: str | None, mode: str = "off", share: float = 0.0
                  ) -> Registry:
    """v1 deployed (behaviour ``deployed``), v2 the candidate (``candidate``) in ``mode``."""
    registry = Registry(root / "registry")
    registry.promote(registry.add(stand_in_dir(root / "src", "dep", deployed), {"reason": "test"}))
    if candidate is not None:
        version = registry.add(stand_in_dir(root / "src", "cand", candidate), {"reason": "test"})
        if mode != "off":
            registry.set_rollout(version, mode, share, "test")
    return registry


def stage_for(settings, registry: Registry, sent: list | None = None) -> Classifying:
    s = settings.replace(model_registry=str(registry.root))

    async def send(records):
        if sent is not None:
            sent.append(records)

    return Classifying(s, lambda: load_stand_in(serving_dir(s)), load_model=load_stand_in, send_shadow=send,
                       watch=False)


def posts(n: int, prefix: str = "s") -> list[bytes]:
    return [orjson.dumps({"id": f"{prefix}-{i}", "text": f"{TEXTS[i % len(TEXTS)]} #{i}",
                          "brands": [BRANDS[i % len(BRANDS)]], "created_at": T0}) for i in range(n)]


def metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def run_batches(stage: Classifying, sink: RedisSink, batches: list[list[bytes]], sent: list) -> None:
    async def send(records):
        sent.append(records)

    await run_stage(_Stream(batches), stage, [sink], send, batch_max=64, within=0.01)
    await stage.flush_shadow()  # what the timer does
    if stage._shadow_write is not None:
        await stage._shadow_write


# --- the share ------------------------------------------------------------------------------------

def test_shadowed_share_is_a_stable_hash_of_the_post_id():
    ids = [f"post-{i}" for i in range(20_000)]
    picked = [i for i in ids if shadowed(i, 0.1)]
    assert 0.09 < len(picked) / len(ids) < 0.11
    assert picked == [i for i in ids if shadowed(i, 0.1)], "the same answer every time (and in every worker)"
    assert set(picked) <= {i for i in ids if shadowed(i, 0.2)}, "a larger share keeps the posts already in"
    assert not any(shadowed(i, 0.0) for i in ids) and all(shadowed(i, 1.0) for i in ids)


def test_agreement_fields_count_post_labels_and_each_brands_target_label():
    deployed = Result(id="p", label="positive", scores={}, brands=["acme", "x:y"],
                      targets=[{"brand": "acme", "label": "negative"}, {"brand": "x:y", "label": "neutral"}])
    candidate = Result(id="p", label="positive", scores={}, brands=["acme", "x:y"],
                       targets=[{"brand": "acme", "label": "negative"}, {"brand": "x:y", "label": "positive"}])
    fields = agreement_fields(deployed, candidate)
    assert fields == ["all:positive:positive", "brand:acme:negative:negative", "brand:x:y:neutral:positive"]
    parsed = parse_agreement({f: 2 for f in fields})
    assert parsed == {"all": {("positive", "positive"): 2}, "acme": {("negative", "negative"): 2},
                      "x:y": {("neutral", "positive"): 2}}, "a brand id with a colon reads back whole"
    assert disagreement({"all:positive:positive": 3, "all:positive:negative": 1}) == (0.25, 4)
    assert disagreement({}) == (None, 0)


# --- the stage, the real Redis ----------------------------------------------------------------------

def test_shadowed_posts_are_scored_by_the_candidate_and_never_counted(redis_server, tmp_path):
    settings = settings_for(redis=redis_server, captioner="none")
    registry = registry_with(tmp_path, "words", "negative", "shadow", 0.5)
    batch = posts(120)
    ids = [orjson.loads(p)["id"] for p in batch]
    expected_shadow = {i for i in ids if shadowed(i, 0.5)}
    before = {o: metric("affectstream_shadow_total", candidate="v2", outcome=o) for o in ("agree", "disagree")}
    shadow_sent: list = []

    async def run():
        stage = stage_for(settings, registry, shadow_sent)
        sink = RedisSink(settings)
        await stage.start()
        assert stage.candidate is not None and stage.candidate.version == "v2"
        sent: list = []
        await run_batches(stage, sink, [batch[:60], batch[60:]], sent)
        r = sink.client
        keys = settings.keys
        agree_once = await r.hgetall(keys.shadow_agree("v2"))
        stored_once = {i: await r.get(keys.shadow_result(i)) for i in ids}
        await run_batches(stage, sink, [batch], sent)  # the whole batch delivered again
        agree_twice = await r.hgetall(keys.shadow_agree("v2"))
        stored_twice = {i: await r.get(keys.shadow_result(i)) for i in ids}
        counts = {b: await sink.brand_counts(b, minute_bucket(T0)) for b in (*BRANDS, "_all")}
        results = {i: orjson.loads(await r.get(keys.post(i))) for i in ids}
        await stage.aclose()
        await sink.close()
        return sent, agree_once, agree_twice, stored_once, stored_twice, counts, results

    sent, agree_once, agree_twice, stored_once, stored_twice, counts, results = asyncio.run(run())
    assert 40 < len(expected_shadow) < 80
    assert {i for i, v in stored_once.items() if v} == expected_shadow
    assert all(orjson.loads(stored_once[i])["model"] == "v2" and orjson.loads(stored_once[i])["label"] == "negative"
               for i in expected_shadow)
    topic = [(k.decode(), orjson.loads(v)) for records in shadow_sent for k, v in records["shadow"]]
    assert {k for k, _ in topic} == expected_shadow and all(v["model"] == "v2" for _, v in topic)
    assert all(set(records) == {"shadow"} for records in shadow_sent), "shadow records go to the shadow topic only"
    assert all(set(records) == {"dlq"} for records in sent), "nothing of the shadow reaches the stage's topics"

    agree = {k.decode(): int(v) for k, v in agree_once.items()}
    deployed = collections.Counter(results[i]["label"] for i in expected_shadow)
    assert {k: v for k, v in agree.items() if k.startswith("all:")} == {
        f"all:{label}:negative": n for label, n in deployed.items()}
    by_brand = collections.Counter((results[i]["brands"][0], results[i]["label"]) for i in expected_shadow)
    assert {k: v for k, v in agree.items() if k.startswith("brand:")} == {
        f"brand:{b}:{label}:negative": n for (b, label), n in by_brand.items()}
    assert agree_twice == agree_once and stored_twice == stored_once, "a redelivery adds nothing"

    assert all(r["model"] == "v1" for r in results.values()), "every real result is the deployed model's"
    real = collections.Counter(words_label(TEXTS[int(i.split("-")[1]) % len(TEXTS)]) for i in ids)
    assert counts["_all"] == dict(real), "the counts hold the deployed labels only"
    after = {o: metric("affectstream_shadow_total", candidate="v2", outcome=o) for o in ("agree", "disagree")}
    assert after["agree"] - before["agree"] == deployed["negative"]
    assert after["disagree"] - before["disagree"] == len(expected_shadow) - deployed["negative"]


def test_a_failing_candidate_never_fails_the_real_batch(redis_server, tmp_path):
    settings = settings_for(redis=redis_server, captioner="none")
    registry = registry_with(tmp_path, "words", "fail", "shadow", 1.0)
    batch = posts(30, prefix="f")
    before = metric("affectstream_shadow_total", candidate="v2", outcome="failed")

    async def run():
        stage = stage_for(settings, registry, [])
        sink = RedisSink(settings)
        await stage.start()
        sent: list = []

        async def send(records):
            sent.append(records)

        stream = _Stream([batch])
        await run_stage(stream, stage, [sink], send, batch_max=64, within=0.01)
        stored = [await sink.client.get(settings.keys.post(orjson.loads(p)["id"])) for p in batch]
        shadow = [await sink.client.get(settings.keys.shadow_result(orjson.loads(p)["id"])) for p in batch]
        await stage.aclose()
        await sink.close()
        return stream, stored, shadow, sent

    stream, stored, shadow, sent = asyncio.run(run())
    assert len(stream.acked) == len(batch) and all(stored), "every post has its real result, acked"
    assert not any(shadow) and all(records == {"dlq": []} for records in sent)
    assert metric("affectstream_shadow_total", candidate="v2", outcome="failed") - before == len(batch)


def test_a_shadow_write_that_fails_is_counted_and_the_batch_goes_on(redis_server, tmp_path):
    settings = settings_for(redis=redis_server, captioner="none")
    registry = registry_with(tmp_path, "words", "negative", "shadow", 1.0)
    before = metric("affectstream_shadow_total", candidate="v2", outcome="write_failed")

    async def broken_topic(records):
        raise ConnectionError("shadow topic unreachable")

    async def nothing(records):
        return None

    async def run():
        stage = stage_for(settings, registry)
        stage.send_shadow = broken_topic
        sink = RedisSink(settings)
        await stage.start()
        stage.shadow_writer.send = broken_topic
        stream = _Stream([posts(10, prefix="w")])
        await run_stage(stream, stage, [sink], nothing, batch_max=64, within=0.01)
        await stage.flush_shadow()
        await stage._shadow_write
        await stage.aclose()
        await sink.close()
        return stream

    stream = asyncio.run(run())
    assert len(stream.acked) == 10
    assert metric("affectstream_shadow_total", candidate="v2", outcome="write_failed") - before == 10


@pytest.mark.parametrize("share", [0.0, 0.1])
def test_shadowed_posts_are_gathered_across_batches_into_few_candidate_calls(redis_server, tmp_path, share):
    """At 10 % a batch of 32 holds about 3 shadowed posts; the candidate scores them 16 or more at a time
    (and what is left when the timer fires), never once per batch. Shadow off: never called."""
    settings = settings_for(redis=redis_server, captioner="none")
    registry = registry_with(tmp_path, "words", "negative", "shadow" if share else "off", share)
    batch = posts(640, prefix=f"c{share}")
    expected = sum(shadowed(orjson.loads(p)["id"], share) for p in batch)

    async def run():
        stage = stage_for(settings, registry, [])
        sink = RedisSink(settings)
        await stage.start()
        await run_batches(stage, sink, [batch[i:i + 32] for i in range(0, len(batch), 32)], [])
        predictor = stage.candidate.predictor if stage.candidate else None
        await stage.aclose()
        await sink.close()
        return (predictor.calls, predictor.posts) if predictor else (0, 0)

    calls, scored = asyncio.run(run())
    assert scored == expected, "every shadowed post scored once"
    assert calls <= expected // 16 + 1 and (calls > 0) == (share > 0)


def test_shadow_keys_inputs_and_the_analyst_measure_work_on_a_redis_cluster(redis_cluster, tmp_path):
    """Odd ids (braces pick a key's slot) on a 3-master cluster: each post's result, input and shadow result
    share its slot; the agreement hash and the analysts' index live elsewhere, read by cross-slot pipelines."""
    from affectstream.streaming.worker.redis_client import async_redis

    settings = settings_for(redis=redis_cluster, captioner="none", redis_cluster=True)
    registry = registry_with(tmp_path, "words", "negative", "shadow", 1.0)
    batch = [orjson.dumps({"id": f"odd{{{i}}}-{i}", "text": TEXTS[i % len(TEXTS)], "brands": ["we{ird}"],
                           "created_at": T0}) for i in range(12)]
    ids = [orjson.loads(p)["id"] for p in batch]

    async def run():
        stage = stage_for(settings, registry)
        sink = RedisSink(settings)
        await stage.start()
        await run_batches(stage, sink, [batch], [])
        client = async_redis(settings)
        keys = settings.keys
        for post_id in ids[:6]:
            await client.hset(keys.feedback_latest(post_id), "", orjson.dumps({"label": "positive"}))
            await client.zadd(keys.feedback_index(), {post_id: T0})
        inputs = [await client.get(keys.post_input(i)) for i in ids]
        shadow = [await client.get(keys.shadow_result(i)) for i in ids]
        agree = await client.hgetall(keys.shadow_agree("v2"))
        analyst = await stage.slot.watch.analyst(stage.candidate)
        await client.aclose()
        await stage.aclose()
        await sink.close()
        return inputs, shadow, agree, analyst

    inputs, shadow, agree, analyst = asyncio.run(run())
    assert all(inputs) and all(shadow)
    assert sum(int(v) for k, v in agree.items() if k.startswith(b"all:")) == len(ids)
    assert analyst == (1.0, 6), "the candidate says negative where the analysts said positive"
