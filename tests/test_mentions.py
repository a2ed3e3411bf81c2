"""Mention detection: spans in the original text, word boundaries, case, Unicode, exclusions, the per-post cap,
the Post fields' trust rules, the brands file hot reload, and a real caption worker writing mentions."""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import random

import orjson
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from affectstream.model.captioners.base import NoCaptioner
from affectstream.streaming.tools.producer import produce_lines
from affectstream.streaming.tools.sample import BRANDS_FILE, POSTS
from affectstream.streaming.tools.sample.make_sample import meme
from affectstream.streaming.worker.brands import load_catalog, parse_catalog
from affectstream.streaming.worker.caption import Captioning
from affectstream.streaming.worker.mentions import Mention, MentionDetector, MentionMatcher, detect
from affectstream.streaming.worker.schemas import REASONS, InvalidPost, parse_post
from tests.servers import settings_for

S = settings_for()
DOC = {"brands": [
    {"id": "acme", "name": "Acme", "aliases": ["acme", "acme corp"], "handles": ["@acme"], "hashtags": ["#acme"],
     "cashtags": ["$ACME"]},
    {"id": "nimbus", "name": "Nimbus Coffee", "aliases": ["nimbus"], "exclude": ["nimbus cloud"]},
    {"id": "ge", "name": "GE", "aliases": [{"alias": "GE", "case_sensitive": True}, "general electric"]},
    {"id": "apple", "name": "Apple", "aliases": ["apple"], "exclude": ["apple pie"]},
    {"id": "cpp", "name": "C++", "aliases": ["c++", "a.b", "(x)"]},
    {"id": "strasse", "name": "Straße", "aliases": ["straße"]},
]}
MATCHER = MentionMatcher(parse_catalog(DOC))


def found(text: str) -> list[tuple[str, str, str]]:
    """(brand, alias, the original text at the span) for every mention."""
    return [(m.brand, m.alias, text[m.span[0]:m.span[1]]) for m in MATCHER.find_mentions(text, "text")]


def test_a_comparative_post_names_both_brands_with_their_spans():
    text = "switched from ACME Corp to nimbus, nimbus is so much better"
    ms = MATCHER.find_mentions(text, "text")
    assert ms[0] == Mention(brand="acme", name="Acme", alias="acme corp", source="text", span=(14, 23))
    assert [(m.brand, m.span) for m in ms[1:]] == [("nimbus", (27, 33)), ("nimbus", (35, 41))]


def test_handles_hashtags_and_cashtags_match_as_their_own_terms():
    assert found("#acme @acme $acme") == [("acme", "#acme", "#acme"), ("acme", "@acme", "@acme"),
                                          ("acme", "$ACME", "$acme")]


@pytest.mark.parametrize("text, expected", [
    ("acme's battery", [("acme", "acme", "acme")]),       # possessive: a mention
    ("(acme)", [("acme", "acme", "acme")]),
    ("acmes are great", []),                              # plural: another word (list it as an alias)
    ("acmecorp", []), ("my_acme", []), ("support@acme.com", [("acme", "acme", "acme")][:0] + []),
    ("#acmefail", []),
])
def test_terms_match_whole_words_only(text, expected):
    if text == "support@acme.com":  # '@' after a word character is an e-mail, not a handle; '.' ends the word
        assert found(text) == [("acme", "acme", "acme")]
    else:
        assert found(text) == expected


def test_regex_special_characters_are_literal():
    assert found("I write c++ and a.b in (x)") == [("cpp", "c++", "c++"), ("cpp", "a.b", "a.b"), ("cpp", "(x)", "(x)")]
    assert found("c and axb and x") == []


def test_case_insensitive_by_default_and_case_sensitive_per_alias():
    assert found("ACME acme AcMe") == [("acme", "acme", "ACME"), ("acme", "acme", "acme"), ("acme", "acme", "AcMe")]
    assert found("GE shares, ge whiz, Ge") == [("ge", "GE", "GE")]
    assert found("GENERAL ELECTRIC") == [("ge", "general electric", "GENERAL ELECTRIC")]


def test_unicode_width_and_case_folding_map_spans_back_to_what_was_written():
    text = "Ｃａｆé: ＡＣＭＥ rocks, STRASSE and Straße"
    assert found(text) == [("acme", "acme", "ＡＣＭＥ"), ("strasse", "straße", "STRASSE"),
                           ("strasse", "straße", "Straße")]


def test_zero_width_characters_are_removed_before_matching_and_kept_in_the_span():
    text = "love ac\u200bme and n\u200dimbus\ufeff!"
    assert found(text) == [("acme", "acme", "ac\u200bme"), ("nimbus", "nimbus", "n\u200dimbus")]
    # invisible between two words joins them, as it looks: "x\u200bacme" reads "xacme"
    assert found("x\u200bacme") == [] and found("\u200bacme\u200b") == [("acme", "acme", "acme")]


def test_look_alike_letters_from_other_scripts_are_not_mentions():
    assert found("\u0430\u0441m\u0435 is great") == []           # Cyrillic а, с, е among Latin letters
    assert found("\u0410\u0421\u041c\u0415") == []                # all Cyrillic АСМЕ
    assert found("é acme ü") == [("acme", "acme", "acme")]       # other non-ASCII around a mention is fine


def test_combining_accents_are_composed_before_matching():
    assert found("Stra\u00dfe") == found("Strasse".replace("ss", "\u00df"))
    text = "cafe\u0301 acme"  # e + combining acute
    assert found(text) == [("acme", "acme", "acme")]


def test_exclusions_drop_only_the_mentions_inside_them():
    assert found("apple pie is great, apple stock too") == [("apple", "apple", "apple")]
    assert found("a Nimbus Cloud over nimbus") == [("nimbus", "nimbus", "nimbus")]


def test_the_longest_term_at_the_leftmost_position_wins():
    assert found("acme corp") == [("acme", "acme corp", "acme corp")]
    assert found("acme  corp") == [("acme", "acme corp", "acme  corp")]  # any run of white space
    assert found("acme corporate") == [("acme", "acme", "acme")]


def test_the_source_is_text_or_image():
    assert MATCHER.find_mentions("acme", "image")[0].source == "image"
    with pytest.raises(ValueError):
        MATCHER.find_mentions("acme", "caption")


@hsettings(max_examples=200, deadline=None)
@given(st.text(max_size=80), st.sampled_from(["acme", "ACME Corp", "nimbus", "c++", "GE", "#acme"]),
       st.text(alphabet=" ,.!?", min_size=1, max_size=3), st.text(alphabet=" ,.!?", min_size=1, max_size=3))
def test_any_text_gives_sorted_non_overlapping_spans_and_a_term_between_separators_is_found(noise, term, left, right):
    text = noise + left + term + right + noise
    ms = MATCHER.find_mentions(text, "text")
    ends = 0
    for m in ms:
        assert ends <= m.span[0] < m.span[1] <= len(text)
        ends = m.span[1]
    start = len(noise) + len(left)
    assert any(m.span[0] <= start and start + len(term) <= m.span[1] for m in ms), (text, ms)


def test_a_post_with_150_mentions_keeps_the_cap_and_counts_the_overflow():
    mentions, overflow = detect(MATCHER, "acme " * 120, "nimbus " * 30, 100)
    assert len(mentions) == 100 and overflow == 50
    assert all(m.source == "text" for m in mentions)  # text first, then the image's


# --- the Post fields ---------------------------------------------------------------------------------

def enriched(**fields) -> bytes:
    return orjson.dumps({"id": "p1", "text": "acme rocks", "caption": "text in image: nimbus", **fields})


GOOD = {"brand": "acme", "name": "Acme", "alias": "acme", "source": "text", "span": [0, 4]}


def test_mentions_round_trip_on_posts_enriched_and_are_dropped_from_producers_posts():
    image = {**GOOD, "brand": "nimbus", "name": "Nimbus", "alias": "nimbus", "source": "image", "span": [15, 21]}
    p = parse_post(enriched(mentions=[GOOD, image], mentions_overflow=3), S, trusted_enrichment=True)
    assert [m.span for m in p.mentions] == [(0, 4), (15, 21)] and p.mentions_overflow == 3
    assert orjson.loads(p.to_json())["mentions"] == [GOOD, image]
    planted = parse_post(enriched(mentions=[GOOD], mentions_overflow=3), S, trusted_enrichment=False)
    assert planted.mentions == [] and planted.mentions_overflow == 0
    assert {"mentions", "mentions_overflow"}.isdisjoint(orjson.loads(planted.to_json()))


@pytest.mark.parametrize("fields", [
    {"mentions": "acme"}, {"mentions": [GOOD] * 101}, {"mentions": [{**GOOD, "span": [0, 99]}]},
    {"mentions": [{**GOOD, "span": [3, 3]}]}, {"mentions": [{**GOOD, "span": [0, True]}]},
    {"mentions": [{**GOOD, "source": "caption"}]}, {"mentions": [{**GOOD, "extra": 1}]},
    {"mentions": [{**GOOD, "brand": "_all"}]}, {"mentions": [{**GOOD, "brand": "Not An Id"}]},
    {"mentions": [{**GOOD, "source": "image", "span": [0, 4]}], "caption": None},
    {"mentions_overflow": -1}, {"mentions_overflow": "3"}, {"mentions_overflow": True},
])
def test_malformed_mentions_on_posts_enriched_are_bad_mentions(fields):
    with pytest.raises(InvalidPost) as info:
        parse_post(enriched(**fields), S, trusted_enrichment=True)
    assert info.value.reason == "bad_mentions" and "bad_mentions" in REASONS and info.value.post_id == "p1"


# --- the caption stage -------------------------------------------------------------------------------

def brands_file(tmp_path, aliases=("acme",), name="b.json"):
    path = tmp_path / name
    path.write_bytes(orjson.dumps({"brands": [{"id": "acme", "name": "Acme", "aliases": list(aliases)}]}))
    return path


def run_stage(stage: Captioning, posts: list[dict]) -> list[dict]:
    async def go():
        await stage.start()
        try:
            return await stage.process([orjson.dumps(p) for p in posts])
        finally:
            stage.close()
    return [orjson.loads(v) for _, v in asyncio.run(go()).enriched]


def test_the_caption_stage_writes_capped_mentions_and_drops_planted_ones(tmp_path):
    stage = Captioning(settings_for(brands_file=str(brands_file(tmp_path)), max_mentions_per_post=100), NoCaptioner())
    out = run_stage(stage, [{"id": "many", "text": "acme " * 150},
                            {"id": "planted", "text": "no brand here", "mentions": [GOOD], "mentions_overflow": 9}])
    many, planted = out
    assert len(many["mentions"]) == 100 and many["mentions_overflow"] == 50
    assert many["mentions"][0] == {"brand": "acme", "name": "Acme", "alias": "acme", "source": "text", "span": [0, 4]}
    assert "mentions" not in planted and "mentions_overflow" not in planted
    parse_post(orjson.dumps(many), settings_for(), trusted_enrichment=True)  # what it wrote reads back


def test_without_a_brands_file_no_mentions_are_written():
    out = run_stage(Captioning(settings_for(), NoCaptioner()), [{"id": "a", "text": "acme"}])
    assert "mentions" not in out[0]


def test_the_brands_file_is_reloaded_when_it_changes_and_a_bad_one_keeps_the_old(tmp_path, caplog):
    path = brands_file(tmp_path)
    detector = MentionDetector(str(path), 100)
    detector.load()
    assert detector.maybe_reload() is False
    path.write_bytes(orjson.dumps({"brands": [{"id": "acme", "aliases": ["acme", "acmecorp"]}]}))
    os.utime(path, ns=(1, 1))
    assert detector.maybe_reload() is True
    assert [m.alias for m in detector.detect("acmecorp", None)[0]] == ["acmecorp"]
    path.write_bytes(b'{"brands": [{"id": "acme", "aliases": [""]}]}')
    os.utime(path, ns=(2, 2))
    with caplog.at_level(logging.WARNING, logger="affectstream.mentions"):
        assert detector.maybe_reload() is False
        assert detector.maybe_reload() is False
    assert len([r for r in caplog.records if "not reloaded" in r.getMessage()]) == 1  # logged once
    assert [m.alias for m in detector.detect("acmecorp", None)[0]] == ["acmecorp"]   # old catalog kept


# --- the demo sample ---------------------------------------------------------------------------------

def test_the_samples_brand_posts_name_their_brands_in_text():
    matcher = MentionMatcher(load_catalog(str(BRANDS_FILE)))
    posts = {}
    for line in POSTS.read_bytes().splitlines():
        if b'"sample-brand-' in line:
            post = orjson.loads(line)
            posts[post["id"]] = post
    assert len(posts) == 18

    def brands(pid):
        return [m.brand for m in matcher.find_mentions(posts[pid]["text"], "text")]

    assert brands("sample-brand-00") == ["acme", "nimbus", "nimbus"]          # comparative
    assert brands("sample-brand-06") == ["voltcar", "voltcar"]                # $VOLT, voltcar e5
    assert brands("sample-brand-10") == [] and brands("sample-brand-11") == []  # excluded phrases
    assert brands("sample-brand-13") == [] and "image" in posts["sample-brand-13"]  # named only in the image


# --- a real caption worker ---------------------------------------------------------------------------

@pytest.mark.integration
def test_a_caption_worker_writes_text_and_image_mentions_to_posts_enriched(broker, redis_server, tmp_path):
    from tests.test_pipeline import make_settings, read_topic, wait_for, workers

    s = make_settings(broker, redis_server, tmp_path / "no-model", captioner="offline",
                      brands_file=str(BRANDS_FILE))
    image = base64.b64encode(meme("NIMBUS", random.Random(3))).decode()
    posts = [{"id": "t1", "text": "switched from acme to @voltcar, #voltcar is so much better"},
             {"id": "i1", "text": "this made my morning", "image": {"b64": image}},
             {"id": "n1", "text": "a nimbus cloud over the city skyline"}]
    with workers(s, "caption") as procs:
        produce_lines(s, [orjson.dumps(p) for p in posts])
        records = wait_for(lambda: (r := read_topic(s, s.kafka.topic_enriched)) and len(r) >= 3 and r, 180, procs,
                           "three posts on posts-enriched")
    by_id = {r.key.decode(): orjson.loads(r.value) for r in records}
    t1 = by_id["t1"]["mentions"]
    assert [(m["brand"], m["alias"], m["source"]) for m in t1] == [
        ("acme", "acme", "text"), ("voltcar", "@voltcar", "text"), ("voltcar", "#voltcar", "text")]
    assert by_id["t1"]["text"][slice(*t1[1]["span"])] == "@voltcar"
    (m,) = by_id["i1"]["mentions"]
    assert (m["brand"], m["source"]) == ("nimbus", "image")
    assert by_id["i1"]["caption"][slice(*m["span"])].lower() == "nimbus"
    assert "mentions" not in by_id["n1"]  # both phrases are excluded in the sample's brands file
