"""Rationale faithfulness (ERASER comprehensiveness / sufficiency) on tiny random models: the metric math,
the word mapping, the baselines' sizes, and the same rationale in evaluation as in the streamed result."""
import statistics

import pytest

from affectstream.model.predictor import BatchPredictor
from affectstream.training.faithfulness import (class_probabilities, comprehensiveness, explain, faithfulness,
                                                perturb, render, sufficiency)
from tests.tiny_models import tiny_classifier

POSTS = [("love this phone", ""), ("worst service ever", ""), ("ok then", "sunny beach"),
         ("unbelievably disappointing coffee today", "")]


def test_metric_definitions():
    assert comprehensiveness(0.9, 0.3) == pytest.approx(0.6)
    assert sufficiency(0.9, 0.8) == pytest.approx(0.1)


def test_perturb_removes_or_keeps_exactly_the_positions():
    sides = ("so much love here", "a red car")
    positions = {(0, 2), (1, 1)}
    assert perturb(sides, positions, keep=False) == ("so much here", "a car")
    assert perturb(sides, positions, keep=True) == ("love", "red")
    assert perturb(sides, set(), keep=True) == ("", "")


def test_rationale_of_every_word_gives_p_minus_p_empty_and_zero_sufficiency():
    # K larger than any post and no threshold: the model's rationale holds every word
    model, tokenizer = tiny_classifier(top_k=32)
    model.eval()
    report = faithfulness(model, tokenizer, POSTS, draws=2)
    full = class_probabilities(model, tokenizer, POSTS)
    empty = class_probabilities(model, tokenizer, [("", "")] * len(POSTS))
    predicted = [max(range(len(p)), key=p.__getitem__) for p in full]
    expected = statistics.fmean(p[c] - e[c] for p, e, c in zip(full, empty, predicted))
    assert report["methods"]["model"]["comprehensiveness"] == pytest.approx(expected, abs=1e-5)
    assert report["methods"]["model"]["sufficiency"] == pytest.approx(0.0, abs=1e-5)
    # random-K of every word is every word too
    assert report["methods"]["random-K"]["comprehensiveness"] == pytest.approx(expected, abs=1e-5)
    assert report["rationale_words_mean"] == pytest.approx(report["post_words_mean"])


def test_subword_tokens_count_as_one_word_and_baselines_match_the_model_size():
    model, tokenizer = tiny_classifier(top_k=3)
    for e in explain(model.eval(), tokenizer, POSTS):
        assert len(e.attention) == len(e.model) <= 3
        assert set(e.model) <= set(e.candidates) and set(e.attention) <= set(e.candidates)
        assert len(e.candidates) == sum(len(side.split()) for side in e.sides)  # one entry per word, not per token


def test_evaluation_rationale_is_the_streamed_rationale():
    model, tokenizer = tiny_classifier(top_k=8, min_weight_share=0.5, top_k_ratio=0.5, top_k_min=1)
    explained = explain(model.eval(), tokenizer, POSTS)
    streamed = BatchPredictor(model, tokenizer, model.config, dtype="fp32").predict(POSTS)
    for e, prediction in zip(explained, streamed):
        assert e.shown == [w.text for w in prediction.rationale]
        assert model.config.sentiment_labels[e.predicted] == prediction.label


def test_report_renders_every_method():
    model, tokenizer = tiny_classifier(top_k=2)
    report = faithfulness(model.eval(), tokenizer, POSTS, draws=3)
    text = render(report)
    for method in ("model", "random-K", "attention"):
        assert method in report["methods"] and method in text
    assert report["n"] == len(POSTS) and len(report["examples"]) == len(POSTS)
