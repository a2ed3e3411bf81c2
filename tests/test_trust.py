"""Trust boundary: a producer cannot plant the image side of a post.

`caption` and `image_error` are written by the caption stage only. On `posts` a producer's values are
dropped; on `posts-enriched` (internal: the caption stage writes there) they are read and `image_error`
must be one of the documented reasons."""
from __future__ import annotations

import asyncio
import base64

import orjson
import pytest

from affectstream.model.captioners.base import NoCaptioner
from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.worker.caption import Captioning
from affectstream.streaming.worker.schemas import IMAGE_ERROR_REASONS, REASONS, InvalidPost, parse_post
from tests.servers import settings_for
from tests.test_pipeline import make_settings, read_topic, stored_ids, wait_for, workers

S = settings_for()
PLANTED = "objects: smiling face. scene: bright, vivid colours."


def planted(**fields) -> bytes:
    return orjson.dumps({"id": "p1", "text": "meh", "caption": PLANTED, "image_error": "image_corrupt",
                         "captioner": "offline", **fields})


def test_a_producers_caption_image_error_and_captioner_are_dropped_on_posts():
    p = parse_post(planted(), S, trusted_enrichment=False)
    assert p.caption is None and p.image_error is None and p.captioner is None
    assert {"caption", "image_error", "captioner"}.isdisjoint(orjson.loads(p.to_json()))  # never forwarded either


def test_malformed_planted_fields_are_ignored_on_posts_not_rejected():
    for fields in ({"caption": 5}, {"image_error": ["x"]}, {"image_error": "pwned"}, {"caption": "x" * 30_000},
                   {"captioner": 5}, {"captioner": "\x00" * 600}):
        p = parse_post(orjson.dumps({"id": "p", "text": "hi", **fields}), S, trusted_enrichment=False)
        assert p.caption is None and p.image_error is None and p.captioner is None


def test_enriched_posts_keep_the_caption_stage_fields():
    p = parse_post(planted(), S, trusted_enrichment=True)
    assert (p.caption, p.image_error, p.captioner) == (PLANTED, "image_corrupt", "offline")


@pytest.mark.parametrize("value", [5, "", "a\x00b", ["offline"], "x" * 600])
def test_a_captioner_that_is_no_captioner_id_is_rejected_on_enriched(value):
    with pytest.raises(InvalidPost) as info:
        parse_post(planted(captioner=value), S, trusted_enrichment=True)
    assert info.value.reason == "bad_captioner" and info.value.reason in REASONS


@pytest.mark.parametrize("value", ["pwned", "invalid_json", "inference_failed", 5, ["image_corrupt"], {"a": 1}, ""])
def test_an_image_error_outside_the_documented_reasons_is_rejected_on_enriched(value):
    with pytest.raises(InvalidPost) as info:
        parse_post(planted(image_error=value), S, trusted_enrichment=True)
    assert info.value.reason == "bad_image_error" and info.value.reason in REASONS
    assert info.value.post_id == "p1"


def test_image_error_reasons_are_documented_reasons():
    assert IMAGE_ERROR_REASONS <= REASONS
    assert {"image_corrupt", "url_not_allowed", "fetch_timeout", "caption_timeout"} <= IMAGE_ERROR_REASONS


def _through_caption_stage(messages: list[bytes]):
    stage = Captioning(settings_for(), NoCaptioner())
    try:
        return asyncio.run(stage.process(messages))
    finally:
        stage.close()


def test_the_caption_stage_forwards_no_planted_caption_and_sets_image_error_itself():
    bad_image = {"b64": base64.b64encode(b"not an image at all").decode()}
    batch = _through_caption_stage([planted(id="text-only"), planted(id="broken-image", image=bad_image),
                                    planted(id="bad-planted", image_error=7)])
    out = {orjson.loads(v)["id"]: orjson.loads(v) for _, v in batch.enriched}
    assert not batch.dlq and set(out) == {"text-only", "broken-image", "bad-planted"}
    assert {"caption", "image_error", "captioner"}.isdisjoint(out["text-only"])
    assert "caption" not in out["broken-image"] and out["broken-image"]["image_error"] == "not_an_image"
    assert "captioner" not in out["broken-image"]  # not described: no captioner stamp
    # what the stage forwards parses as trusted enrichment
    for _, value in batch.enriched:
        parse_post(value, S, trusted_enrichment=True)


@pytest.mark.integration
def test_planted_captions_never_reach_results_and_bad_enrichment_goes_to_the_dlq(broker, redis_server,
                                                                                tiny_model_dir):
    s = make_settings(broker, redis_server, tiny_model_dir)
    bad_image = {"b64": base64.b64encode(b"not an image at all").decode()}
    on_posts = [orjson.loads(planted(id="plant-text")), orjson.loads(planted(id="plant-image", image=bad_image))]
    # the trusted topic: what the caption stage would write, and an image_error it never writes
    on_enriched = [{"id": "enriched-ok", "text": "meh", "caption": "a cracked phone screen"},
                   {"id": "enriched-bad", "text": "meh", "image_error": "totally_fine"}]
    with workers(s, "all") as procs:
        produce_lines(s, [orjson.dumps(p) for p in on_posts])
        produce_lines(s, [orjson.dumps(p) for p in on_enriched], topic=s.kafka.topic_enriched)
        wait_for(lambda: stored_ids(s) >= {"plant-text", "plant-image", "enriched-ok"}, 120, procs, "results")
        wait_for(lambda: read_topic(s, s.kafka.topic_dlq), 30, procs, "the dead letter")
        results = {r["id"]: r for r in (orjson.loads(x.value) for x in read_topic(s, s.kafka.topic_sentiment))}
        dead = [orjson.loads(x.value) for x in read_topic(s, s.kafka.topic_dlq)]
    assert results["plant-text"]["caption"] is None and results["plant-text"]["image_error"] is None
    assert results["plant-image"]["caption"] is None and results["plant-image"]["image_error"] == "not_an_image"
    for post_id in ("plant-text", "plant-image"):
        assert all(w["source"] == "text" for w in results[post_id]["rationale"]), results[post_id]
    assert results["enriched-ok"]["caption"] == "a cracked phone screen"
    assert "enriched-bad" not in results
    assert [(d["post_id"], d["reason"], d["stage"]) for d in dead] == [("enriched-bad", "bad_image_error", "classify")]


@pytest.mark.parametrize("trusted", [False, True])
def test_a_vlm_runs_a_checkpoints_own_code_only_when_the_setting_says_so(trusted):
    from affectstream.streaming.worker.caption import build_stage

    stage = build_stage(settings_for(captioner="vlm:some/checkpoint", captioner_trust_remote_code=trusted,
                                     redis_url="redis://127.0.0.1:1/0"))  # the caption cache connects lazily
    try:
        assert stage.captioner.config.trust_remote_code is trusted  # models load on first use: nothing runs yet
    finally:
        stage.close()
