import base64

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from affectstream.model.images import ImageError
from affectstream.streaming.worker.dlq import dlq_record, post_id_guess, MAX_RAW_BYTES
from affectstream.streaming.worker.result import Result
from affectstream.streaming.worker.schemas import REASONS, ImageRef, InvalidPost, Post, parse_post
from affectstream.streaming.worker.settings import Settings

S = Settings()


def post(**fields) -> bytes:
    return orjson.dumps({"id": "p1", "text": "love it", **fields})


def reason_of(data: bytes, settings: Settings = S) -> str:
    """The rejection reason, parsed as the classify stage reads posts-enriched (caption fields checked)."""
    with pytest.raises(InvalidPost) as info:
        parse_post(data, settings, trusted_enrichment=True)
    assert info.value.reason in REASONS
    return info.value.reason


def test_minimal_post_parses():
    p = parse_post(post(), S)
    assert (p.id, p.text, p.image, p.created_at_ms, p.brands) == ("p1", "love it", None, None, [])


def test_full_post_parses_and_normalises():
    p = parse_post(post(image={"url": "https://x.test/a.png"}, created_at="2026-11-29T10:00:00Z",
                        brands=[" Acme ", "acme", "Other"], author="a", lang="en", meta={"k": 1}, extra=[1]), S)
    assert p.image == ImageRef("url", "https://x.test/a.png")
    assert p.created_at_ms == 1795946400000
    assert p.brands == ["acme", "other"]
    assert (p.author, p.lang, p.meta) == ("a", "en", {"k": 1})
    assert orjson.loads(p.to_json())["extra"] == [1]  # unknown fields pass through


def test_integer_id_and_epoch_ms():
    p = parse_post(orjson.dumps({"id": 42, "text": "x", "created_at": 1764410400000}), S)
    assert (p.id, p.created_at_ms) == ("42", 1764410400000)


def test_naive_iso_timestamp_is_utc():
    assert parse_post(post(created_at="2026-11-29T10:00:00"), S).created_at_ms == 1795946400000


def test_image_only_post_may_have_empty_text():
    p = parse_post(orjson.dumps({"id": "p", "text": "", "image": {"b64": "aGk="}}), S)
    assert p.text == "" and p.image.kind == "b64"


@pytest.mark.parametrize("data,reason", [
    (b"{not json", "invalid_json"),
    (b'{"id": "\xff\xfe"}', "invalid_utf8"),
    (b"[1, 2]", "not_an_object"),
    (b'"str"', "not_an_object"),
    (b"[" * 2000 + b"]" * 2000, "too_deeply_nested"),
    (orjson.dumps({"text": "x"}), "missing_id"),
    (orjson.dumps({"id": None, "text": "x"}), "missing_id"),
    (orjson.dumps({"id": True, "text": "x"}), "bad_id"),
    (orjson.dumps({"id": 1.5, "text": "x"}), "bad_id"),
    (orjson.dumps({"id": "", "text": "x"}), "bad_id"),
    (orjson.dumps({"id": "a\nb", "text": "x"}), "bad_id"),
    (orjson.dumps({"id": "x" * 257, "text": "x"}), "id_too_long"),
    (post(text=5), "bad_text"),
    (post(text="x" * 20_001), "text_too_long"),
    (post(text="  "), "empty_post"),
    (orjson.dumps({"id": "p"}), "empty_post"),
    (post(image={"url": "a", "b64": "b"}), "bad_image_ref"),
    (post(image={"ftp": "a"}), "bad_image_ref"),
    (post(image={"url": 3}), "bad_image_ref"),
    (post(image="https://x"), "bad_image_ref"),
    (post(created_at="yesterday"), "bad_created_at"),
    (post(created_at=-5), "bad_created_at"),
    (post(created_at=True), "bad_created_at"),
    (post(created_at=10**17), "bad_created_at"),
    (post(brands="acme"), "bad_brands"),
    (post(brands=[1]), "bad_brands"),
    (post(brands=["x" * 65]), "bad_brands"),
    (post(brands=[f"b{i}" for i in range(33)]), "bad_brands"),
    (post(brands=["_all"]), "bad_brands"),
    (post(caption=3), "bad_caption"),
    (post(captioner=5), "bad_captioner"),
    (post(captioner=""), "bad_captioner"),
    (post(captioner="vlm:\n"), "bad_captioner"),
    (post(captioner="x" * 513), "bad_captioner"),
])
def test_rejections_carry_a_reason(data, reason):
    assert reason_of(data) == reason


def test_oversized_message_is_rejected_before_parsing():
    assert reason_of(post(text="x" * 100), Settings().replace(max_message_bytes=50)) == "message_too_large"


def test_rejection_after_id_carries_post_id():
    with pytest.raises(InvalidPost) as info:
        parse_post(post(brands=5), S)
    assert info.value.post_id == "p1"


def test_reasons_cover_image_errors():
    for reason in ("image_empty", "image_too_large", "image_too_many_pixels", "image_format_not_allowed",
                   "not_an_image", "image_truncated", "image_corrupt"):
        assert reason in REASONS
    assert issubclass(InvalidPost, ValueError) and issubclass(ImageError, ValueError)


def test_enriched_post_round_trips_with_caption():
    p = parse_post(post(image={"b64": "aGk="}), S)
    p.caption, p.image_error = "a cat", None
    again = parse_post(p.to_json(), S, trusted_enrichment=True)
    assert again.caption == "a cat" and again.image_error is None
    p.image_error = "image_corrupt"
    assert parse_post(p.to_json(), S, trusted_enrichment=True).image_error == "image_corrupt"


def test_enriched_post_round_trips_with_its_captioner():
    p = parse_post(post(image={"b64": "aGk="}), S)
    assert p.captioner is None and "captioner" not in orjson.loads(p.to_json())
    p.caption, p.captioner = "a cat", "vlm:Salesforce/blip-image-captioning-large"
    again = parse_post(p.to_json(), S, trusted_enrichment=True)
    assert (again.caption, again.captioner) == ("a cat", "vlm:Salesforce/blip-image-captioning-large")


def test_result_from_prediction_has_design_fields_in_order():
    p = parse_post(post(created_at=1000, brands=["Acme"]), S)
    p.caption = "desc"
    pred = {"label": "positive", "scores": {"negative": 0.1, "neutral": 0.1, "positive": 0.8},
            "emotion": None, "rationale": [{"text": "love", "score": 0.9, "source": "text"}]}
    r = Result.from_prediction(p, pred, "v1", 1500)
    assert list(orjson.loads(r.to_json())) == ["id", "label", "scores", "emotion", "rationale", "caption",
                                               "image_error", "brands", "targets", "targets_overflow", "model",
                                               "created_at", "processed_at",
                                               "latency_ms"]
    assert (r.latency_ms, r.brands, r.caption, r.model) == (500, ["acme"], "desc", "v1")
    assert Result.from_json(r.to_json()) == r
    p.created_at_ms = None
    assert Result.from_prediction(p, pred, "v1", 1500).latency_ms is None


def test_result_from_a_prediction_object():
    class Prediction:  # the predictor's Prediction: anything with to_dict()
        def to_dict(self):
            return {"label": "negative", "scores": {"negative": 1.0}, "emotion": None, "rationale": []}

    p = parse_post(post(), S)
    pred = Prediction()
    r = Result.from_prediction(p, pred, "v2", 7)
    assert (r.id, r.label, r.rationale, r.processed_at, r.latency_ms) == ("p1", "negative", [], 7, None)


def test_dlq_record_truncates_and_keys_by_id():
    raw = b"x" * (MAX_RAW_BYTES + 10)
    key, value = dlq_record(raw, "invalid_json", "parse", "boom", "p1")
    rec = orjson.loads(value)
    assert key == b"p1"
    assert set(rec) >= {"reason", "stage", "error", "raw_b64", "at"}
    assert rec["raw_truncated"] and rec["raw_bytes"] == len(raw)
    assert len(base64.b64decode(rec["raw_b64"])) == MAX_RAW_BYTES
    assert dlq_record(b"{}", "missing_id", "parse", "", None)[0] is None
    with pytest.raises(ValueError):
        dlq_record(b"", "x", "nowhere", "", None)


@pytest.mark.parametrize("raw,expected", [
    (b'{"id": "a1", "text": 1}', "a1"),
    (b'{"id": 7}', "7"),
    (b'{"text": "x", "id": "zz", broken', "zz"),
    (b"\xff\xfe", None),
    (b"[]", None),
])
def test_post_id_guess(raw, expected):
    assert post_id_guess(raw) == expected


@given(st.binary(max_size=512))
@hsettings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_bytes_give_post_or_invalid_post(data):
    try:
        parse_post(data, S)
    except InvalidPost as e:
        assert e.reason in REASONS
    post_id_guess(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)

post_fields = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.text(max_size=300), st.integers(-10**6, 10**6), json_values),
    "text": st.one_of(st.text(max_size=50), json_values),
    "image": st.one_of(st.none(), st.dictionaries(st.sampled_from(["url", "b64", "path", "x"]),
                                                  st.text(max_size=10) | json_values, max_size=2), json_values),
    "created_at": st.one_of(st.integers(-10, 2**53), st.text(max_size=30), json_values,
                            st.datetimes().map(lambda d: d.isoformat())),
    "brands": st.one_of(st.lists(st.text(max_size=70), max_size=40), json_values),
    "author": json_values, "lang": json_values, "meta": json_values, "caption": json_values,
    "extra": json_values,
})


@given(st.one_of(json_values, post_fields))
@hsettings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_any_json_gives_post_or_invalid_post_and_valid_posts_round_trip(value):
    data = orjson.dumps(value)
    try:
        p = parse_post(data, S)
    except InvalidPost as e:
        assert e.reason in REASONS
        return
    assert isinstance(p, Post)
    again = parse_post(p.to_json(), S)
    assert again.to_json() == p.to_json()
    for name in ("id", "text", "image", "created_at_ms", "brands", "author", "lang", "meta", "caption"):
        assert getattr(again, name) == getattr(p, name)
