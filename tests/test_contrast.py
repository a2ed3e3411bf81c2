"""Contrast scores over the targets of one sentence (training.contrast)."""
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from affectstream.training.contrast import contrast_scores, sentence_key
from affectstream.training.samples import Sample

# s1: gold differs (contrast); s2: gold differs; s3: gold all positive (not contrast); s4: one target.
IDS = ["s1", "s1", "s2", "s2", "s2", "s3", "s3", "s4"]
GOLD = ["negative", "positive", "neutral", "negative", "negative", "positive", "positive", "negative"]


def test_a_constant_predictor_scores_zero_and_a_perfect_one_scores_one():
    constant = contrast_scores(IDS, GOLD, ["positive"] * len(GOLD))
    assert (constant.sentences, constant.multi_target, constant.contrast) == (4, 3, 2)
    assert constant.contrast_share == 0.0 and constant.both_right == 0.0
    perfect = contrast_scores(IDS, GOLD, GOLD)
    assert perfect.contrast_share == 1.0 and perfect.both_right == 1.0


def test_predictions_that_differ_but_are_wrong_count_for_contrast_not_for_both_right():
    predicted = ["negative", "positive",                 # s1: right
                 "positive", "neutral", "negative",      # s2: differ, all wrong but the last
                 "negative", "positive",                 # s3: not a contrast sentence, ignored
                 "positive"]                             # s4: single target, ignored
    scores = contrast_scores(IDS, GOLD, predicted)
    assert scores.contrast_share == 1.0 and scores.both_right == 0.5
    same_in_s2 = predicted[:2] + ["negative"] * 3 + predicted[5:]
    scores = contrast_scores(IDS, GOLD, same_in_s2)
    assert scores.contrast_share == 0.5 and scores.both_right == 0.5


def test_no_contrast_sentence_gives_none_not_a_made_up_share():
    scores = contrast_scores(["a", "a", "b"], ["positive", "positive", "negative"], ["positive"] * 3)
    assert scores.contrast == 0 and scores.contrast_share is None and scores.both_right is None
    assert scores.as_dict() == {"sentences": 2, "multi_target": 1, "contrast": 0,
                                "contrast_share": None, "both_right": None}


def test_lengths_must_agree():
    with pytest.raises(ValueError, match="differ in length"):
        contrast_scores(["a"], ["positive", "negative"], ["positive", "negative"])


labels = st.sampled_from(["negative", "neutral", "positive"])


@given(st.lists(st.tuples(st.integers(0, 5), labels, labels), max_size=40), st.randoms())
def test_scores_do_not_depend_on_the_order_of_targets(rows, rnd: random.Random):
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    a = contrast_scores(*zip(*rows)) if rows else contrast_scores([], [], [])
    b = contrast_scores(*zip(*shuffled)) if rows else a
    assert a == b
    assert a.both_right is None or 0 <= a.both_right <= (a.contrast_share or 0) <= 1  # all right implies they differ


def test_sentence_key_groups_three_line_ids_and_falls_back_to_the_text():
    a = Sample(id="mams:train:s12:t2", text="x", label="neutral", split="dev", target="y")
    assert sentence_key(a) == "mams:train:s12"
    tweet = "RT @ x : Chuck Bass is everything # MCM"
    t1 = Sample(id="twitter2015:train:1", text=tweet, label="positive", split="train", target="Chuck Bass")
    t2 = Sample(id="twitter2015:train:2", text=tweet, label="neutral", split="train", target="# MCM")
    t3 = Sample(id="twitter2015:test:2", text=tweet, label="neutral", split="test", target="# MCM")
    assert sentence_key(t1) == sentence_key(t2) != sentence_key(t3)
