"""Rationale words -> driver terms per bucket: normalised, stopwords and brand names dropped, side kept."""
from __future__ import annotations

from affectstream.streaming.worker.driver_terms import bucket_terms, normalise, split_term
from affectstream.streaming.worker.result import Result


def words(*pairs: tuple[str, str]) -> list[dict]:
    return [{"text": text, "score": 1.0 - i / 10, "source": source} for i, (text, source) in enumerate(pairs)]


def test_a_word_is_lower_cased_and_noise_is_dropped():
    assert normalise("Refund") == "refund"
    assert normalise("#Outage") == "outage"
    assert normalise("Acme's") == "acme"
    for noise in ("the", "not", "@acme_help", "https://x.co/a", ":(", ":D", "42", "a", "!!", "image"):
        assert normalise(noise) is None, noise


def test_each_brand_gets_its_targets_terms_and_all_the_posts_with_sides_kept_and_brand_names_dropped():
    result = Result(
        id="p1", label="negative", scores={"negative": 1.0}, brands=["acme", "nimbus"],
        rationale=words(("refund", "text"), ("Acme", "text"), ("cracked", "image"), ("the", "text")),
        targets=[{"brand": "acme", "label": "negative", "scores": {},
                  "rationale": words(("Refund", "text"), ("refund!", "text"), ("AcmePay", "text"),
                                     ("screen", "image")),
                  "mentions": [{"brand": "acme", "name": "Acme", "alias": "acmepay", "source": "text"}]},
                 {"brand": "nimbus", "label": "positive", "scores": {},
                  "rationale": words(("love", "text"), ("Nimbus", "text"), ("acme", "text"))}])
    terms = bucket_terms(result)
    assert terms == {"acme": ("text:refund", "image:screen"), "nimbus": ("text:love",)}, "_all counts no terms"
    assert split_term("image:screen") == ("image", "screen")


def test_a_result_without_targets_gives_its_brands_and_the_untargeted_bucket_the_post_terms():
    """(``_all`` counts labels only: no bucket_terms entry.)"""
    plain = Result(id="p2", label="negative", scores={}, brands=["acme"], rationale=words(("slow", "text")))
    assert bucket_terms(plain) == {"acme": ("text:slow",)}
    nobody = Result(id="p3", label="negative", scores={}, rationale=words(("slow", "text")))
    assert bucket_terms(nobody, "untargeted") == {"untargeted": ("text:slow",)}
    assert bucket_terms(nobody) == {}
