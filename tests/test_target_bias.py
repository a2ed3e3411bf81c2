"""One model, two decision boundaries: the target-level class bias (AlignedConfig.target_bias) moves the
labels of (post, target) pairs only, the same way in training evaluation and in every serving backend."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from affectstream.model import serving
from affectstream.model.config import SENTIMENT_LABELS
from affectstream.model.deploy import load_deployed
from affectstream.model.targets import TargetInput, shift_scores
from affectstream.training.samples import Sample
from affectstream.training.mixing import capped
from affectstream.training.train import with_target_bias
from tests.tiny_models import save_tiny

ITEMS = [TargetInput("acme is great but nimbus is awful", "", "acme", ((0, 4),)),
         TargetInput("acme is great but nimbus is awful", "", "Nimbus", ((18, 24),))]
POST = [("acme is great but nimbus is awful", "")]


@given(st.lists(st.floats(-8, 8), min_size=3, max_size=3), st.lists(st.floats(-3, 3), min_size=3, max_size=3))
def test_shifting_probabilities_is_adding_the_bias_to_the_logits(logits, bias):
    probs = torch.tensor(logits, dtype=torch.float64).softmax(-1).tolist()
    shifted = shift_scores(dict(zip(SENTIMENT_LABELS, probs)), tuple(bias), SENTIMENT_LABELS)
    expected = (torch.tensor(logits, dtype=torch.float64) + torch.tensor(bias, dtype=torch.float64)).softmax(-1).tolist()
    assert all(math.isclose(shifted[lab], e, abs_tol=1e-9) for lab, e in zip(SENTIMENT_LABELS, expected))


@pytest.mark.parametrize("backend", ["torch", "onnx-fp32"])
def test_the_target_bias_moves_target_labels_and_leaves_post_labels(tmp_path, backend, monkeypatch):
    monkeypatch.setenv("AFFECTSTREAM_CACHE", str(tmp_path / "cache"))
    plain = save_tiny(tmp_path / "plain", kind="bert", top_k=4, target_format="marked-v2")
    biased = save_tiny(tmp_path / "biased", kind="bert", top_k=4, target_format="marked-v2",
                       target_bias=(0.0, 50.0, 0.0))   # every target neutral
    assert load_deployed(biased)[2].target_bias == (0.0, 50.0, 0.0)      # stored in config.json and read back
    a = serving.load_predictor(plain, backend, device="cpu", dtype="fp32")
    b = serving.load_predictor(biased, backend, device="cpu", dtype="fp32")
    assert [p.label for p in b.predict_targets(ITEMS)] == ["neutral", "neutral"]
    assert b.predict(POST)[0].label == a.predict(POST)[0].label            # the post-level answer is untouched
    assert all(abs(sum(p.scores.values()) - 1) < 1e-3 for p in b.predict_targets(ITEMS))


def test_training_evaluation_adds_the_bias_to_target_rows_only():
    batch = [Sample(id="p", text="post", label="positive", split="test"),
             Sample(id="t", text="acme post", label="neutral", split="test", target="acme", target_spans=((0, 4),))]
    logits = torch.zeros(2, 3)
    out = with_target_bias(logits, batch, (0.0, 1.0, 0.0))
    assert out.tolist() == [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    assert with_target_bias(logits, batch, ()) is logits


def test_capping_an_extra_set_keeps_whole_sentences():
    samples = [Sample(id=f"mams:train:s{i}:t{t}", text=f"sentence {i}", label="neutral", split="train", target=f"x{t}")
               for i in range(10) for t in range(3)]
    kept = capped(samples, 7, seed=1)
    sentences = {s.id.rsplit(":", 1)[0] for s in kept}
    assert len(kept) == 3 * len(sentences) and 7 <= len(kept) <= 9
    assert capped(samples, 0, seed=1) is samples and capped(samples, 1000, seed=1) is samples
    assert capped(samples, 7, seed=1) == kept                              # seeded: the same draw again
