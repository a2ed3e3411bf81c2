"""The train/serve check: the caption stage stamps its captioner's id on every post whose image it described,
and the classify stage compares it with the captioner the deployed model was trained on
(``config.captioner``). Setting ``captioner_mismatch``: ``warn`` classifies anyway, ``reject`` sends the post
to the DLQ (``captioner_mismatch``); both count ``affectstream_captioner_mismatch_total{served,trained}``."""
from __future__ import annotations

import asyncio
import base64
import random

import orjson
import pytest

from affectstream.model.predictor import BatchPredictor
from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.tools.sample.make_sample import meme
from affectstream.streaming.tools.services import free_port
from affectstream.streaming.tools.workers import WorkerProcess
from affectstream.streaming.worker import metrics
from affectstream.streaming.worker.caption import Captioning
from affectstream.streaming.worker.classify import Classifying, captioner_mismatch
from affectstream.streaming.worker.schemas import REASONS, parse_post
from tests.servers import settings_for, workers_running
from tests.test_metrics_endpoint import scrape, value
from tests.test_pipeline import make_settings, read_topic, stored_ids, wait_for

VLM = "vlm:Salesforce/blip-image-captioning-large"
IMAGE = {"b64": base64.b64encode(meme("BEST COFFEE EVER", random.Random(1))).decode()}


class FakeVLM:
    """Stands in for a VLM captioner: a name and one description per image."""
    name = "vlm:fake/captioner"

    def describe(self, images):
        return ["a cup of coffee on a table"] * len(images)


def enriched(post_id: str, **fields) -> bytes:
    """A post as the caption stage writes it to posts-enriched."""
    return orjson.dumps({"id": post_id, "text": "look at this", **fields})


def batch() -> list[bytes]:
    return [
        enriched("text-only"),                                                       # no image, no caption
        enriched("same", image=IMAGE, caption="objects: cup.", captioner="offline"),  # the trained captioner
        enriched("other", image=IMAGE, caption="a cup of coffee", captioner=VLM),     # another captioner
        enriched("unstamped", image=IMAGE, caption="objects: cup."),                 # a stand-in tool: unchecked
    ]


def classify(settings, model_dir, raws: list[bytes]):
    """The classify stage without Kafka, on the tiny model (trained captioner: AlignedConfig's "offline")."""
    stage = Classifying(settings, lambda: BatchPredictor.from_directory(model_dir, device="cpu"), watch=False)

    async def run():
        await stage.start()
        return await stage.process(raws)
    try:
        return asyncio.run(run())
    finally:
        stage.close()


def counted(served: str, trained: str) -> float:
    return metrics.CAPTIONER_MISMATCH.labels(served, trained)._value.get()


def test_the_tiny_test_model_was_trained_on_the_offline_describer(tiny_model_dir):
    assert BatchPredictor.from_directory(tiny_model_dir, device="cpu").config.captioner == "offline"


def test_warn_classifies_a_mismatching_post_and_counts_it(tiny_model_dir):
    before = counted(VLM, "offline")
    out = classify(settings_for(), tiny_model_dir, batch())
    assert not out.dlq
    assert [r.id for r in out.results] == ["text-only", "same", "other", "unstamped"]
    assert out.mismatches == [("other", VLM, "offline", False)]
    metrics.observe_classify_batch(out, 4, 0.1, "tiny-bert")
    assert counted(VLM, "offline") == before + 1


def test_a_warned_mismatch_redelivered_is_not_counted_again(tiny_model_dir):
    out = classify(settings_for(), tiny_model_dir, batch())
    out.fresh_ids = {"text-only", "same", "unstamped"}  # the Redis sink saw "other" before
    before = counted(VLM, "offline")
    metrics.observe_classify_batch(out, 4, 0.1, "tiny-bert")
    assert counted(VLM, "offline") == before


def test_reject_sends_a_mismatching_post_to_the_dlq_with_its_reason(tiny_model_dir):
    before = counted(VLM, "offline")
    out = classify(settings_for(captioner_mismatch="reject"), tiny_model_dir, batch())
    assert [r.id for r in out.results] == ["text-only", "same", "unstamped"]
    dead = [orjson.loads(v) for _, v in out.dlq]
    assert [(d["post_id"], d["reason"], d["stage"]) for d in dead] == [("other", "captioner_mismatch", "classify")]
    assert VLM in dead[0]["error"] and "'offline'" in dead[0]["error"] and "captioner_mismatch" in REASONS
    assert [k for k, _ in out.dlq] == [b"other"]
    metrics.observe_classify_batch(out, 4, 0.1, "tiny-bert")
    assert counted(VLM, "offline") == before + 1


def test_text_only_posts_never_mismatch():
    s = settings_for()
    text_only = parse_post(enriched("t", captioner=VLM), s, trusted_enrichment=True)  # a stray stamp
    assert not captioner_mismatch(text_only, "offline")
    failed_image = parse_post(enriched("f", image=IMAGE, image_error="image_corrupt"), s, trusted_enrichment=True)
    assert not captioner_mismatch(failed_image, "offline")  # the caption stage stamps described images only
    described = parse_post(enriched("d", image=IMAGE, captioner="none"), s, trusted_enrichment=True)
    assert captioner_mismatch(described, "offline")  # an image served with no description at all is skew too
    assert not captioner_mismatch(described, "none") and not captioner_mismatch(described, None)


def test_an_unknown_mismatch_action_stops_the_worker_at_start_up(tiny_model_dir):
    with pytest.raises(ValueError, match="AFFECTSTREAM_CAPTIONER_MISMATCH"):
        Classifying(settings_for(captioner_mismatch="ignore"), lambda: None, watch=False)


def test_the_caption_stage_stamps_its_own_captioner_and_drops_a_producers_claim():
    planted = [orjson.dumps({"id": "text", "text": "hi", "captioner": "offline"}),
               orjson.dumps({"id": "image", "text": "hi", "image": IMAGE, "captioner": "offline"})]
    stage = Captioning(settings_for(), FakeVLM())
    try:
        out = asyncio.run(stage.process(planted))
    finally:
        stage.close()
    forwarded = {orjson.loads(v)["id"]: orjson.loads(v) for _, v in out.enriched}
    assert "captioner" not in forwarded["text"]  # a producer's claim is dropped, and text-only gets no stamp
    assert forwarded["image"]["captioner"] == FakeVLM.name  # the stage's own id, not the producer's
    assert forwarded["image"]["caption"] == "a cup of coffee on a table"


@pytest.mark.integration
def test_a_caption_worker_serving_another_captioner_than_the_model_was_trained_on(broker, redis_server,
                                                                                  tmp_path_factory):
    """The gpu-profile mistake in reverse: a CPU caption worker (offline describer) feeds a model trained on
    a VLM's descriptions. The classify worker rejects those posts and counts them; text posts go through."""
    from tests.tiny_models import save_tiny

    model_dir = save_tiny(tmp_path_factory.mktemp("vlm-model") / "tiny", kind="bert", top_k=4, captioner=VLM)
    s = make_settings(broker, redis_server, model_dir, captioner="offline")
    port = free_port()
    classify_settings = s.replace(captioner_mismatch="reject", web_enabled=True, web_port=port)
    text = [{"id": f"t-{i}", "text": f"great coffee #{i}", "brands": ["acme"]} for i in range(4)]
    text.append({"id": "t-planted", "text": "meh", "captioner": VLM})  # a producer's claim changes nothing
    images = [{"id": f"i-{i}", "text": "look" if i else "", "brands": ["acme"], "image": IMAGE,
               "captioner": VLM} for i in range(3)]  # claiming the trained captioner does not get through
    caption, classify = WorkerProcess(s, "caption"), WorkerProcess(classify_settings, "classify")
    with workers_running([caption, classify]):
        produce_lines(s, [orjson.dumps(p) for p in text + images])
        wait_for(lambda: stored_ids(s) >= {p["id"] for p in text} and len(read_topic(s, s.kafka.topic_dlq)) >= 3,
                 180, [caption, classify], "text results and the image posts' dead letters")
        _, samples = scrape(port)
        stamps = {orjson.loads(r.value)["id"]: orjson.loads(r.value).get("captioner")
                  for r in read_topic(s, s.kafka.topic_enriched)}
        dead = [orjson.loads(r.value) for r in read_topic(s, s.kafka.topic_dlq)]

    assert stored_ids(s) == {p["id"] for p in text}
    assert stamps == {**{p["id"]: None for p in text}, **{p["id"]: "offline" for p in images}}
    assert sorted((d["post_id"], d["reason"], d["stage"]) for d in dead) == [
        (p["id"], "captioner_mismatch", "classify") for p in images]
    assert value(samples, "affectstream_captioner_mismatch_total", served="offline", trained=VLM) == 3
    assert value(samples, "affectstream_dlq_total", stage="classify", reason="captioner_mismatch") == 3
