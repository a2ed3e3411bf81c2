"""Target-conditioned classification: the one marking function, marker tokens never selected, the
predictor's per-(post, target) API for target-aware and post-level models."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from affectstream.model.predictor import BatchPredictor
from affectstream.model.targets import (MARKERS, TARGET_FORMAT, TargetInput, from_placeholder, mark_target,
                                        marker_spans, markers_of, normalise_spans)
from affectstream.model.tokenization import SOURCE_TEXT, encode_pairs
from tests.tiny_models import tiny_classifier


def test_each_mention_is_wrapped_and_the_rest_of_the_text_kept():
    text = "Switched from acme to nimbus, nimbus is so much better"
    assert mark_target(text, "nimbus", [(22, 28), (30, 36)]) == (
        "Switched from acme to « nimbus » , « nimbus » is so much better")


def test_spans_at_both_edges_and_inside_a_word_keep_markers_apart_from_words():
    assert mark_target("acme", "acme", [(0, 4)]) == "« acme »"
    assert mark_target("#acme!", "acme", [(1, 5)]) == "# « acme » !"
    assert mark_target("love acme", "acme", [(5, 9)]) == "love « acme »"


def test_overlapping_unsorted_and_out_of_range_spans_are_merged_and_clamped():
    assert normalise_spans([(5, 9), (0, 3), (2, 4), (7, 20), (30, 40), (3, 3)], 12) == [(0, 4), (5, 12)]
    assert mark_target("ab acme corp", "acme corp", [(7, 12), (3, 7), (3, 12)]) == "ab « acme corp »"


def test_target_not_in_the_text_is_prefixed_and_empty_text_is_fine():
    assert mark_target("great coffee", "Acme", []) == "«=Acme» great coffee"
    assert mark_target("", "Acme", ()) == "«=Acme»"
    assert mark_target("", "Acme", [(0, 3)]) == "«=Acme»"      # a span into empty text marks nothing
    assert mark_target("hi", "Acme «Inc»\n", []) == "«=Acme Inc» hi"  # no marker characters inside the marker
    assert mark_target("hi", "", []) == "hi"


def test_placeholder_tweets_become_text_and_spans():
    text, spans = from_placeholder("RT @ x : $T$ is everything # MCM", "Chuck Bass")
    assert text == "RT @ x : Chuck Bass is everything # MCM" and spans == ((9, 19),)
    assert mark_target(text, "Chuck Bass", spans) == "RT @ x : « Chuck Bass » is everything # MCM"
    assert from_placeholder("$T$ vs $T$", "a") == ("a vs a", ((0, 1), (5, 6)))


POST_CHARS = st.characters(blacklist_characters="«»")  # a post's own « » read as markers: never selected, by design


@given(st.text(POST_CHARS, max_size=40), st.text(max_size=10),
       st.lists(st.tuples(st.integers(-5, 50), st.integers(-5, 50)), max_size=4))
def test_marking_never_loses_a_word_of_the_post(text, target, spans):
    marked = mark_target(text, target, spans)
    unmarked = MARKERS.sub(" ", marked)
    assert "".join(unmarked.split()) == "".join(text.split())  # the post's characters, in order
    assert all(MARKERS.fullmatch(marked[s:e]) for s, e in marker_spans(marked))


def test_marker_tokens_are_never_selectable_and_the_target_is():
    _, tokenizer = tiny_classifier()
    marked = mark_target("switched from acme to nimbus", "nimbus", [(22, 28)])
    batch = encode_pairs(tokenizer, [marked, mark_target("so good", "acme", [])], ["", ""], 64, marked=TARGET_FORMAT)
    chosen = [marked[s:e] for (s, e), ok, src in zip(batch.offsets[0].tolist(), batch.selectable[0].tolist(),
                                                     batch.source[0].tolist()) if ok and src == SOURCE_TEXT]
    assert "".join(chosen) == "switchedfromacmetonimbus"  # word pieces of the post, no '«' or '»'

    prefixed = "«=acme» so good"
    chosen = [prefixed[s:e] for (s, e), ok in zip(batch.offsets[1].tolist(), batch.selectable[1].tolist()) if ok]
    assert "".join(chosen) == "sogood"  # the prefixed name is not a word of the post


def test_unmarked_encoding_is_unchanged_by_the_marker_option():
    _, tokenizer = tiny_classifier()
    plain = encode_pairs(tokenizer, ["a « b"], ["c"], 32)
    assert plain.selectable.sum() == encode_pairs(tokenizer, ["a « b"], ["c"], 32, marked="").selectable.sum()
    assert encode_pairs(tokenizer, ["a « b"], ["c"], 32, marked=TARGET_FORMAT).selectable.sum() < plain.selectable.sum()


def test_a_model_trained_with_the_first_format_is_marked_the_way_it_was_trained():
    assert mark_target("love acme", "acme", [(5, 9)], "marked-v1") == "love <t> acme </t>"
    assert mark_target("love", "Acme", [], "marked-v1") == "<t=Acme> love"
    assert marker_spans("<t=Acme> love <t> x </t>", "marked-v1") == [(0, 8), (14, 17), (20, 24)]
    with pytest.raises(ValueError, match="unknown target format"):
        markers_of("marked-v9")


ITEMS = [
    TargetInput("switched from acme to nimbus, nimbus is better", "objects: phone.", "nimbus", ((22, 28), (30, 36))),
    TargetInput("switched from acme to nimbus, nimbus is better", "objects: phone.", "acme", ((14, 18),)),
    TargetInput("", "text in image: \"acme rocks\".", "acme", ()),
]


def test_post_level_model_gives_every_target_its_post_prediction():
    model, tokenizer = tiny_classifier(top_k=4)
    predictor = BatchPredictor(model, tokenizer, model.config, dtype="fp32")
    assert not predictor.target_aware
    got = predictor.predict_targets(ITEMS)
    want = predictor.predict([(i.text, i.description) for i in ITEMS])
    assert [g.to_dict() for g in got] == [w.to_dict() for w in want]
    assert got[0] is not got[1]


def test_target_aware_model_reads_each_target_and_rationales_are_post_words():
    model, tokenizer = tiny_classifier(top_k=16)
    model.config.target_format = TARGET_FORMAT
    predictor = BatchPredictor(model, tokenizer, model.config, dtype="fp32")
    assert predictor.target_aware
    got = predictor.predict_targets(ITEMS)
    assert len(got) == 3 and got[0].scores != got[1].scores  # the target changes the input
    for item, prediction in zip(ITEMS, got):
        assert prediction.label in model.config.sentiment_labels
        for word in prediction.rationale:
            assert word.source in ("text", "image")
            side = item.text if word.source == "text" else item.description
            assert word.text.lower() in side.lower()
            assert "«" not in word.text and "»" not in word.text
    assert predictor.predict_targets([]) == []


def test_single_and_batched_target_predictions_agree():
    model, tokenizer = tiny_classifier(top_k=8)
    model.config.target_format = TARGET_FORMAT
    predictor = BatchPredictor(model, tokenizer, model.config, dtype="fp32", batch_size=2)
    batched = predictor.predict_targets(ITEMS)
    single = [predictor.predict_targets([item])[0] for item in ITEMS]
    for a, b in zip(batched, single):
        assert a.label == b.label
        assert a.scores == pytest.approx(b.scores, abs=2e-3)
