"""Model math: top-K selection and masking, scorer gradient, uniformity loss, save/load, predictor."""
import math

import pytest
import torch

from affectstream.model.deploy import load_pretrained, save_pretrained
from affectstream.model.losses import aligned_objective, uniformity_loss
from affectstream.model.predictor import BatchPredictor
from affectstream.model.tokenization import SOURCE_IMAGE, SOURCE_SPECIAL, SOURCE_TEXT, encode_pairs
from tests.tiny_models import tiny_classifier

PAIRS = [
    ("I absolutely love this phone, unbelievable screen!", "objects: cellular telephone. scene: bright."),
    ("worst service ever", ""),
    ("", "text in image: \"best coffee ever\". objects: espresso."),
    ("ok", "dark"),
]


def forward(model, tokenizer, pairs, top_k=None):
    batch = encode_pairs(tokenizer, [t for t, _ in pairs], [d for _, d in pairs], model.config.max_length)
    return batch, model(**batch.model_inputs(), top_k=top_k)


def test_selected_tokens_are_never_special_or_padding():
    model, tokenizer = tiny_classifier(top_k=6)
    batch, out = forward(model.eval(), tokenizer, PAIRS)
    assert out.selected_idx.shape == (len(PAIRS), 6)
    chosen_source = batch.source.gather(1, out.selected_idx)
    chosen_mask = batch.attention_mask.gather(1, out.selected_idx)
    assert ((chosen_source != SOURCE_SPECIAL) | ~out.selected_valid).all()
    assert (chosen_mask.bool() | ~out.selected_valid).all()


def test_fewer_real_tokens_than_k_marks_the_rest_invalid():
    model, tokenizer = tiny_classifier(top_k=8)
    batch, out = forward(model.eval(), tokenizer, [("ok", "dark"), ("a much longer post text with many words in it", "")])
    real_tokens = batch.selectable.sum(dim=1)
    assert out.selected_valid[0].sum() == real_tokens[0] == 2
    assert out.selected_valid[1].sum() == 8
    assert torch.isfinite(out.pooled).all()


def test_empty_post_falls_back_without_nan():
    model, tokenizer = tiny_classifier(top_k=4)
    _, out = forward(model.eval(), tokenizer, [("", ""), ("fine", "")])
    assert torch.isfinite(out.sentiment_logits).all()


def test_sources_tag_text_and_description_sides():
    _, tokenizer = tiny_classifier()
    batch = encode_pairs(tokenizer, ["love it"], ["sad face"], 32)
    sources = batch.source[0][batch.selectable[0]].tolist()
    assert sources == [SOURCE_TEXT, SOURCE_TEXT, SOURCE_IMAGE, SOURCE_IMAGE]


def test_longer_side_is_truncated_first():
    _, tokenizer = tiny_classifier()
    batch = encode_pairs(tokenizer, ["short text"], ["word " * 200], 24)
    assert batch.input_ids.shape[1] == 24
    sources = batch.source[0].tolist()
    assert sources.count(SOURCE_TEXT) == 2 and sources.count(SOURCE_IMAGE) == 24 - 2 - 3


def test_scorer_receives_gradient_through_hard_topk():
    model, tokenizer = tiny_classifier(top_k=3)
    model.train()
    _, out = forward(model, tokenizer, PAIRS)
    loss = aligned_objective(out.sentiment_logits, torch.tensor([2, 0, 2, 1]), out.pooled, 0.1)["loss"]
    loss.backward()
    grads = [p.grad for p in model.scorer.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_all_tokens_ablation_pools_every_real_token():
    model, tokenizer = tiny_classifier(pooling="all")
    batch, out = forward(model.eval(), tokenizer, PAIRS[:2])
    with torch.no_grad():
        hidden = model.encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               token_type_ids=batch.token_type_ids).last_hidden_state
    expected = hidden[0][batch.selectable[0]].mean(0)
    assert torch.allclose(out.pooled[0], expected, atol=1e-5)


def test_uniformity_is_one_for_identical_samples():
    pooled = torch.randn(1, 16).repeat(5, 1) * 3.0
    assert uniformity_loss(pooled).item() == pytest.approx(1.0, abs=1e-5)


def test_uniformity_is_zero_for_orthogonal_samples():
    assert uniformity_loss(torch.eye(6) * 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_uniformity_matches_pairwise_definition_on_random_batch():
    torch.manual_seed(1)
    pooled = torch.randn(7, 10)
    b = pooled.shape[0]
    brute = sum(torch.cosine_similarity(pooled[i], pooled[j], dim=0).item()
                for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
    value = uniformity_loss(pooled).item()
    assert value == pytest.approx(brute, abs=1e-5)
    assert -1 / (b - 1) - 1e-6 <= value <= 1


def test_uniformity_minimum_for_evenly_spread_samples():
    pooled = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity_loss(pooled).item() == pytest.approx(-1.0)


def test_uniformity_of_single_sample_is_zero_and_differentiable():
    pooled = torch.randn(1, 8, requires_grad=True)
    loss = uniformity_loss(pooled)
    loss.backward()
    assert loss.item() == 0.0


def test_objective_adds_lambda_times_uniformity_and_emotion():
    torch.manual_seed(0)
    logits, emo_logits, pooled = torch.randn(4, 3), torch.randn(4, 6), torch.randn(4, 8)
    labels, emo = torch.tensor([0, 1, 2, 1]), torch.tensor([0, -100, 3, 5])
    parts = aligned_objective(logits, labels, pooled, 0.5, emo_logits, emo)
    assert parts["loss"].item() == pytest.approx(
        (parts["ce"] + parts["emotion_ce"] + 0.5 * uniformity_loss(pooled)).item(), abs=1e-6)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_save_then_load_reproduces_predictions(tmp_path, kind):
    model, tokenizer = tiny_classifier(kind=kind, emotions=True, scratch=tmp_path)
    directory = save_pretrained(model, tokenizer, tmp_path / "m")
    assert {p.name for p in directory.iterdir()} >= {"config.json", "model.safetensors"}
    assert not list(directory.glob("*.bin")) and not list(directory.glob("*.pt"))
    before = BatchPredictor(model, tokenizer, model.config, dtype="fp32").predict(PAIRS)
    after = BatchPredictor.from_directory(directory, dtype="fp32").predict(PAIRS)
    assert [p.to_dict() for p in before] == [p.to_dict() for p in after]
    assert after[0].emotion is not None and set(after[0].emotion["scores"]) == set(model.config.emotion_labels)


def test_predictor_keeps_input_order_and_returns_rationales(tiny_model_dir):
    predictor = BatchPredictor.from_directory(tiny_model_dir, batch_size=2)
    single = [predictor.predict([pair])[0] for pair in PAIRS]
    batched = predictor.predict(PAIRS)
    for one, many in zip(single, batched):
        assert one.label == many.label
        assert math.isclose(sum(many.scores.values()), 1.0, abs_tol=1e-3)
        assert many.rationale, "every post with a real token has a rationale"
        assert all(w.source in ("text", "image") for w in many.rationale)
        assert [w.score for w in many.rationale] == sorted((w.score for w in many.rationale), reverse=True)
    assert {w.source for w in batched[2].rationale} == {"image"}  # empty text: everything from the description
    assert {w.source for w in batched[1].rationale} == {"text"}   # no image


def test_load_refuses_directory_without_safetensors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path)


def test_description_field_labels_are_never_selected():
    _, tokenizer = tiny_classifier()
    description = 'objects: espresso, coffee mug. text in image: "worst monday". scene: dark, warm colours.'
    batch = encode_pairs(tokenizer, ["my morning"], [description], 64)
    chosen = [description[s:e] for (s, e), ok, src in zip(batch.offsets[0].tolist(), batch.selectable[0].tolist(),
                                                          batch.source[0].tolist()) if ok and src == SOURCE_IMAGE]
    assert "objects" not in chosen and "scene" not in chosen and ":" not in chosen
    assert {"worst", "monday", "dark"} <= set(chosen) and "es" in chosen
    assert "image" not in chosen  # from "text in image:", the field label
