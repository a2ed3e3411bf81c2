"""Per-(post, brand) results: which brands a post is about, one prediction toward each, each brand's Redis
bucket counting its own target label, the topic carrying the targets, alerts following the target labels.

Unit tests build posts by hand; the stage tests run the classify stage with a stand-in target-aware
predictor against the real redis-server; the stream tests run a worker subprocess on the real broker and
Redis with a tiny target-aware model (``AlignedConfig.target_format``)."""
from __future__ import annotations

import asyncio
import collections

import orjson
import pytest

from affectstream.model.targets import TargetInput
from affectstream.streaming.monitor.alerts import AlertRule
from affectstream.streaming.monitor.hub import LiveHub
from affectstream.streaming.worker.classify import Classifying, post_targets
from affectstream.streaming.worker.mentions import Mention
from affectstream.streaming.worker.redis_keys import minute_bucket
from affectstream.streaming.worker.schemas import Post
from affectstream.streaming.worker.sinks.redis import RedisSink
from affectstream.streaming.worker.stage import run_stage
from tests.servers import settings_for
from tests.test_redis_sink import T0
from tests.test_sinks import _Stream

SWITCH = "Switched from acme to nimbus, nimbus is so much better"


def mention(brand: str, start: int, source: str = "text", alias: str | None = None) -> Mention:
    alias = alias or brand
    return Mention(brand=brand, name=brand.title(), alias=alias, source=source, span=(start, start + len(alias)))


def post(text: str = SWITCH, brands=(), mentions=(), caption: str | None = None) -> Post:
    p = Post(id="p1", text=text, image=None, created_at_ms=T0, brands=list(brands), caption=caption)
    p.mentions, p.mentions_overflow = list(mentions), 0
    return p


# --- which brands a post is about -----------------------------------------------------------------

def test_targets_are_mentioned_brands_in_order_of_first_mention_then_asserted_ones():
    p = post(brands=["voltcar", "nimbus"], mentions=[mention("acme", 14), mention("nimbus", 22),
                                                     mention("nimbus", 30), mention("globex", 0, "image")])
    targets, overflow = post_targets(p, cap=16)
    assert [t.brand for t in targets] == ["acme", "nimbus", "globex", "voltcar"] and overflow == 0
    assert [len(t.mentions) for t in targets] == [1, 2, 1, 0]   # nimbus once, with both its mentions
    assert [t.name for t in targets] == ["Acme", "Nimbus", "Globex", "voltcar"]  # asserted only: its id


def test_targets_beyond_the_cap_are_counted_not_dropped_silently():
    p = post(text="x", brands=[f"b{i:03d}" for i in range(100)], mentions=[mention("acme", 0)])
    targets, overflow = post_targets(p, cap=16)
    assert [t.brand for t in targets] == ["acme", *(f"b{i:03d}" for i in range(15))] and overflow == 85
    assert post_targets(p, cap=0) == ([], 101)
    assert post_targets(post(text="no brand here"), cap=16) == ([], 0)


def test_the_model_is_told_the_brand_name_and_where_the_text_mentions_it():
    p = post(caption="a can of globex soda", mentions=[mention("nimbus", 22), mention("nimbus", 30),
                                                       mention("globex", 9, "image")])
    nimbus, globex = post_targets(p, cap=16)[0]
    assert nimbus.model_input(p) == TargetInput(text=SWITCH, description="a can of globex soda", target="Nimbus",
                                                spans=((22, 28), (30, 36)))
    assert globex.model_input(p).spans == ()  # an image mention has no span in the post text


# --- the classify stage with a target-aware predictor -----------------------------------------------

class TargetPredictor:
    """Stands in for ``BatchPredictor``: the post as a whole is ``neutral``; toward a brand, the label
    ``toward`` gives. Records every call; ``fail_on`` makes a call holding that target raise."""
    target_aware = True

    def __init__(self, toward: dict[str, str], version: str = "targets-v1", fail_on: str | None = None):
        self.toward, self.version, self.fail_on = toward, version, fail_on
        self.calls: list[tuple[str, int]] = []

    @staticmethod
    def _pred(label: str, word: str) -> dict:
        return {"label": label, "scores": {label: 0.9}, "emotion": None,
                "rationale": [{"text": word, "score": 0.9, "source": "text"}]}

    def predict(self, pairs):
        self.calls.append(("predict", len(pairs)))
        return [self._pred("neutral", "switched") for _ in pairs]

    def predict_targets(self, items: list[TargetInput]):
        self.calls.append(("predict_targets", len(items)))
        if any(item.target == self.fail_on for item in items):
            raise RuntimeError(f"cannot read {self.fail_on}")
        return [self._pred(self.toward.get(item.target.lower(), "neutral"), item.target.lower()) for item in items]


def enriched(post_id: str, text: str, brands=(), mentions=(), created_at: int = T0) -> bytes:
    return orjson.dumps({"id": post_id, "text": text, "brands": list(brands), "created_at": created_at,
                         "mentions": [m.to_dict() for m in mentions], "mentions_overflow": 0})


def switch_post(post_id: str, created_at: int = T0) -> bytes:
    return enriched(post_id, SWITCH, mentions=[mention("acme", 14), mention("nimbus", 22), mention("nimbus", 30)],
                    created_at=created_at)


async def classify(settings, predictor, batches: list[list[bytes]]) -> tuple[list, list]:
    """Run the classify stage over ``batches`` into the real Redis; returns (sink items, dead letters)."""
    sink = RedisSink(settings)
    stage = Classifying(settings, lambda: predictor, watch=False)
    items, dead, sent = [], [], []
    original = stage.process

    async def process(raws, partitions=None):  # run_stage -> process_events -> process(values, partitions)
        batch = await original(raws, partitions)
        items.extend(batch.sink_items)
        dead.extend(batch.dlq)
        return batch

    stage.process = process

    async def send(records):  # the topic side of delivery: these tests read Redis, so records are only kept
        sent.append(records)

    await stage.start()
    await run_stage(_Stream(batches), stage, [sink], send, batch_max=10, within=0.01)
    stage.close()
    await sink.close()
    return items, dead


def counts(settings, brands, minute: str = minute_bucket(T0)) -> dict:
    async def read():
        sink = RedisSink(settings)
        out = {b: await sink.brand_counts(b, minute) for b in brands}
        await sink.close()
        return out
    return asyncio.run(read())


def test_a_multi_brand_post_counts_each_brand_with_its_own_label_once(redis_server):
    settings = settings_for(redis=redis_server, captioner="none")
    predictor = TargetPredictor({"acme": "negative", "nimbus": "positive"})
    batch = [switch_post("s1"), enriched("s2", "love my voltcar", brands=["voltcar"]), enriched("s3", "nothing")]
    items, dead = asyncio.run(classify(settings, predictor, [batch, batch]))  # the second: a redelivery

    assert dead == [] and predictor.calls == [("predict", 3), ("predict_targets", 3)] * 2
    first = {i.result.id: i.result for i in items[:3]}
    assert [(t["brand"], t["label"]) for t in first["s1"].targets] == [("acme", "negative"), ("nimbus", "positive")]
    assert first["s1"].brands == ["acme", "nimbus"] and first["s1"].label == "neutral"
    assert [m["span"] for m in first["s1"].targets[1]["mentions"]] == [[22, 28], [30, 36]]
    assert first["s1"].targets[0]["rationale"] == [{"text": "acme", "score": 0.9, "source": "text"}]
    assert [t["mentions"] for t in first["s2"].targets] == [[]]   # asserted by the producer only
    assert first["s3"].targets == [] and first["s3"].brands == []
    assert counts(settings, ("acme", "nimbus", "voltcar", "_all")) == {
        "acme": {"negative": 1}, "nimbus": {"positive": 1}, "voltcar": {"neutral": 1}, "_all": {"neutral": 3}}


def test_a_model_that_is_not_target_aware_is_not_asked_per_target(redis_server):
    settings = settings_for(redis=redis_server, captioner="none")
    predictor = TargetPredictor({"acme": "negative"})
    predictor.target_aware = False
    items, _ = asyncio.run(classify(settings, predictor, [[switch_post("n1")]]))
    assert predictor.calls == [("predict", 1)]
    assert [(t["brand"], t["label"]) for t in items[0].result.targets] == [("acme", "neutral"), ("nimbus", "neutral")]


def test_a_post_whose_target_prediction_fails_goes_to_the_dlq_and_the_rest_flow(redis_server):
    settings = settings_for(redis=redis_server, captioner="none")
    predictor = TargetPredictor({"acme": "negative"}, fail_on="Globex")
    bad = enriched("bad", "globex again", mentions=[mention("globex", 0)])
    items, dead = asyncio.run(classify(settings, predictor, [[switch_post("ok1"), bad, enriched("ok2", "fine")]]))
    assert sorted(i.result.id for i in items) == ["ok1", "ok2"]
    assert [(orjson.loads(v)["post_id"], orjson.loads(v)["reason"]) for _, v in dead] == [("bad", "inference_failed")]
    assert predictor.calls[:2] == [("predict", 3), ("predict_targets", 3)]  # then post by post


def test_the_overflow_is_on_the_result(redis_server):
    settings = settings_for(redis=redis_server, captioner="none", max_targets_per_post=2)
    raw = enriched("many", SWITCH, brands=["voltcar", "globex"], mentions=[mention("acme", 14), mention("nimbus", 22)])
    items, _ = asyncio.run(classify(settings, TargetPredictor({}), [[raw]]))
    result = orjson.loads(items[0].json)
    assert [t["brand"] for t in result["targets"]] == ["acme", "nimbus"] and result["targets_overflow"] == 2
    assert result["brands"] == ["acme", "nimbus"]


def test_alerts_follow_each_brands_target_labels(redis_server):
    """22 posts that are neutral as a whole but negative toward acme and positive toward nimbus, after a calm
    half hour: acme's negative share jumps and it alerts; nimbus does not."""
    settings = settings_for(redis=redis_server, captioner="none")
    calm = [enriched(f"calm-{i}", "acme and nimbus", mentions=[mention("acme", 0), mention("nimbus", 9)],
                     created_at=T0 - 30 * 60_000 + i * 60_000) for i in range(30)]
    burst = [switch_post(f"burst-{i}", created_at=T0 + i * 1000) for i in range(22)]
    asyncio.run(classify(settings, TargetPredictor({}), [calm]))   # neutral toward both
    asyncio.run(classify(settings, TargetPredictor({"acme": "negative", "nimbus": "positive"}), [burst]))
    assert counts(settings, ("acme", "nimbus", "_all")) == {
        "acme": {"negative": 22}, "nimbus": {"positive": 22}, "_all": {"neutral": 22}}

    async def evaluate():
        hub = LiveHub(settings, AlertRule(min_window_posts=20, min_baseline_posts=20))
        for raw in calm + burst:
            hub.on_message("result", await hub.client.get(settings.keys.post(orjson.loads(raw)["id"])))
        sent = []

        async def send(alert):
            sent.append(alert)

        fired = await hub.evaluate_alerts(send)
        await hub.stop()
        return fired, sent

    fired, sent = asyncio.run(evaluate())
    assert [(a["brand"], a["label"]) for a in sent] == [("acme", "negative")]
    assert len(fired) == 1


# --- a stream through a classify worker with a tiny target-aware model -------------------------------

@pytest.fixture(scope="module")
def target_model_dir(tmp_path_factory):
    """A tiny random aligned model trained-format ``marked-v1``: it reads each target marked in the text."""
    from affectstream.model.targets import TARGET_FORMAT
    from tests.tiny_models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-targets", kind="bert", top_k=4,
                     target_format=TARGET_FORMAT)


def stream_posts() -> list[dict]:
    """Enriched posts (standing in for the caption stage, which alone writes ``mentions``): comparative
    two-brand posts, a mention plus an asserted brand, an image-only mention, too many brands, no brand."""
    out = []
    for i in range(8):
        m = [mention("acme", 14), mention("nimbus", 22), mention("nimbus", 30)]
        out.append({"id": f"switch-{i}", "text": SWITCH, "mentions": [x.to_dict() for x in m]})
    for i in range(4):
        text = f"acme support fixed it in {i + 2} minutes"
        out.append({"id": f"asserted-{i}", "text": text, "brands": ["voltcar"],
                    "mentions": [mention("acme", 0).to_dict()]})
    out.append({"id": "image-only", "text": "look at this can", "caption": 'text in image: "globex"',
                "mentions": [mention("globex", 16, "image").to_dict()]})
    out.append({"id": "crowded", "text": "acme nimbus voltcar globex all at the expo",
                "mentions": [mention(b, s).to_dict() for b, s in (("acme", 0), ("nimbus", 5), ("voltcar", 12),
                                                                  ("globex", 20))]})
    out += [{"id": f"plain-{i}", "text": f"what a day {i}"} for i in range(3)]
    for i, p in enumerate(out):
        p["created_at"] = T0 + i * 1000
    return out


@pytest.mark.integration
def test_a_stream_counts_each_post_and_brand_once_with_its_target_label(broker, redis_server, target_model_dir):
    from affectstream.model.predictor import BatchPredictor
    from affectstream.streaming.tools.producer import produce_lines
    from affectstream.streaming.worker.classify import post_targets as targets_of
    from affectstream.streaming.worker.schemas import parse_post
    from tests.test_pipeline import brand_counts, make_settings, read_topic, stored_ids, wait_for, workers

    s = make_settings(broker, redis_server, target_model_dir, max_targets_per_post=3, untargeted_brand="_none")
    posts = stream_posts()
    lines = [orjson.dumps(p) for p in posts]
    with workers(s, "classify") as procs:
        produce_lines(s, lines, topic=s.kafka.topic_enriched)
        ids = {p["id"] for p in posts}
        wait_for(lambda: stored_ids(s) >= ids, 120, procs, "a result for every post")
        first_counts = brand_counts(s)
        produce_lines(s, lines, topic=s.kafka.topic_enriched)   # every post delivered again
        wait_for(lambda: len(read_topic(s, s.kafka.topic_sentiment)) >= 2 * len(posts), 90, procs, "the second pass")
        records = read_topic(s, s.kafka.topic_sentiment)
    assert brand_counts(s) == first_counts, "a redelivered post counts no brand twice"

    # one message per post and delivery, keyed by the post id, targets inside
    assert all(r.key.decode() == orjson.loads(r.value)["id"] for r in records)
    first: dict[str, dict] = {}
    for r in records:
        first.setdefault(orjson.loads(r.value)["id"], orjson.loads(r.value))
    assert set(first) == ids
    switch = first["switch-0"]
    assert [t["brand"] for t in switch["targets"]] == switch["brands"] == ["acme", "nimbus"]
    assert [m["span"] for m in switch["targets"][1]["mentions"]] == [[22, 28], [30, 36]]
    assert all({"brand", "label", "scores", "rationale", "mentions"} == set(t) for r in first.values()
               for t in r["targets"])
    assert [t["brand"] for t in first["asserted-0"]["targets"]] == ["acme", "voltcar"]
    assert first["asserted-0"]["targets"][1]["mentions"] == []
    assert first["image-only"]["targets"][0]["mentions"][0]["source"] == "image"
    assert (first["crowded"]["brands"], first["crowded"]["targets_overflow"]) == (["acme", "nimbus", "voltcar"], 1)
    assert first["plain-0"]["targets"] == [] and first["plain-0"]["targets_overflow"] == 0

    # each target's label is the model's prediction toward that brand (not the post's label) ...
    predictor = BatchPredictor.from_directory(str(target_model_dir), device="cpu")
    for p in posts:
        post = parse_post(orjson.dumps(p), s, trusted_enrichment=True)
        items = [t.model_input(post) for t in targets_of(post, 3)[0]]
        expected = [pred.label for pred in predictor.predict_targets(items)] if items else []
        assert [t["label"] for t in first[p["id"]]["targets"]] == expected, p["id"]
    assert any(t["label"] != r["label"] for r in first.values() for t in r["targets"]), "a test that tells them apart"

    # ... and each (post, brand) counts once in its own bucket with that label; _all and _none the post's
    expected_counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in first.values():
        for t in r["targets"]:
            expected_counts[t["brand"]][t["label"]] += 1
        expected_counts["_all"][r["label"]] += 1
        if not r["targets"]:
            expected_counts["_none"][r["label"]] += 1
    assert first_counts == expected_counts
    assert sum(first_counts["nimbus"].values()) == 9 and sum(first_counts["acme"].values()) == 13
    assert sum(first_counts["_none"].values()) == 3
