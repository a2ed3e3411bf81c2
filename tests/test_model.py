"""Model math: top-K selection and masking, scorer gradient, uniformity loss, save/load, predictor, device picker."""
import json
import math

import pytest
import torch
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel

from affectstream.model.aligned import AlignedClassifier
from affectstream.model.config import AlignedConfig
from affectstream.model.deploy import load_deployed, save_deployed
from affectstream.model.device import cpu_has_bf16_units, pick_device, pick_dtype
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
    directory = save_deployed(model, tokenizer, tmp_path / "m")
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
        load_deployed(tmp_path)


def test_aligned_classifier_is_a_transformers_model():
    model, _ = tiny_classifier()
    assert isinstance(model, PreTrainedModel) and isinstance(model.config, PreTrainedConfig)
    assert AlignedClassifier.config_class is AlignedConfig
    assert model.config.encoder_config is model.encoder.config


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_save_pretrained_then_from_pretrained_gives_identical_outputs(tmp_path, kind):
    model, tokenizer = tiny_classifier(kind=kind, emotions=True, scratch=tmp_path)
    model.save_pretrained(tmp_path / "m")
    layout = json.loads((tmp_path / "m" / "config.json").read_text())
    assert layout["model_type"] == "affectstream-aligned" and layout["encoder_config"]["model_type"] == kind
    assert layout["top_k"] == model.config.top_k and layout["emotion_labels"] == list(model.config.emotion_labels)
    for reloaded in (AlignedClassifier.from_pretrained(tmp_path / "m"), AutoModel.from_pretrained(tmp_path / "m")):
        assert type(reloaded) is AlignedClassifier and reloaded.config.emotion_labels == model.config.emotion_labels
        _, before = forward(model.eval(), tokenizer, PAIRS)
        _, after = forward(reloaded.eval(), tokenizer, PAIRS)
        assert torch.equal(before.sentiment_logits, after.sentiment_logits)
        assert torch.equal(before.emotion_logits, after.emotion_logits)
        assert torch.equal(before.selected_idx, after.selected_idx)


def test_bf16_weights_load_upcast_to_fp32_unchanged(tmp_path):
    model, tokenizer = tiny_classifier()
    save_deployed(model.to(torch.bfloat16), tokenizer, tmp_path / "m")
    reloaded, _, _ = load_deployed(tmp_path / "m")
    assert reloaded.dtype == torch.float32
    for (name, stored), (_, loaded) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(stored.float(), loaded), name


def test_directory_in_the_pre_transformers_layout_still_loads(tmp_path):
    model, tokenizer = tiny_classifier()
    directory = save_deployed(model, tokenizer, tmp_path / "m")
    new = json.loads((directory / "config.json").read_text())
    own = model.config.method_options()
    legacy = {"affectstream": {k: list(v) if isinstance(v, tuple) else v for k, v in own.items()},
              "encoder_config": new["encoder_config"]}
    (directory / "config.json").write_text(json.dumps(legacy))
    reloaded, _, config = load_deployed(directory)
    assert config.method_options() == own
    _, before = forward(model.eval(), tokenizer, PAIRS)
    _, after = forward(reloaded, tokenizer, PAIRS)
    assert torch.equal(before.sentiment_logits, after.sentiment_logits)


def test_load_refuses_weights_that_do_not_match_the_config(tmp_path):
    model, tokenizer = tiny_classifier()
    directory = save_deployed(model, tokenizer, tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    config["emotion_labels"] = ["happiness", "sad"]  # an emotion head the weights do not have
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        load_deployed(directory)


def test_device_picker_choices(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")


def test_dtype_picker_detects_bf16_instead_of_assuming_it():
    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_bf16_units() else torch.float32)
    assert pick_dtype("fp32", cpu) == torch.float32 and pick_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_dtype("int8", cpu)


def test_description_field_labels_are_never_selected():
    _, tokenizer = tiny_classifier()
    description = 'objects: espresso, coffee mug. text in image: "worst monday". scene: dark, warm colours.'
    batch = encode_pairs(tokenizer, ["my morning"], [description], 64)
    chosen = [description[s:e] for (s, e), ok, src in zip(batch.offsets[0].tolist(), batch.selectable[0].tolist(),
                                                          batch.source[0].tolist()) if ok and src == SOURCE_IMAGE]
    assert "objects" not in chosen and "scene" not in chosen and ":" not in chosen
    assert {"worst", "monday", "dark"} <= set(chosen) and "es" in chosen
    assert "image" not in chosen  # from "text in image:", the field label


# ---- method options: K per post, the weight-share threshold, hybrid pooling (defaults keep old models identical)

LONG_PAIRS = [("ok", ""), ("a much longer post text with many words in it and more", ""), ("good day", "sunny beach")]


def spread_scores(model, factor: float = 50.0):
    """A random scorer's scores lie close together; a trained one's do not."""
    with torch.no_grad():
        model.scorer.net[-1].weight.mul_(factor)
    return model


def test_weight_share_keeps_only_tokens_near_the_top_score():
    model, tokenizer = tiny_classifier(top_k=8, min_weight_share=0.5)
    _, out = forward(spread_scores(model).eval(), tokenizer, LONG_PAIRS)
    scores = out.selected_scores
    expected = torch.isfinite(scores) & (scores >= scores[:, :1] + math.log(0.5))
    assert torch.equal(out.selected_valid, expected)
    assert out.selected_valid[:, 0].all()  # the top token always passes
    # what is pooled is exactly what is kept: the same model without the threshold pools more
    free, _ = tiny_classifier(top_k=8)
    _, out_free = forward(spread_scores(free).eval(), tokenizer, LONG_PAIRS)
    assert out_free.selected_valid.sum() > out.selected_valid.sum()
    assert not torch.allclose(out.pooled, out_free.pooled)


def test_k_follows_post_length_within_bounds():
    model, tokenizer = tiny_classifier(top_k=6, top_k_ratio=0.5, top_k_min=2)
    batch, out = forward(model.eval(), tokenizer, LONG_PAIRS)
    real = batch.selectable.sum(dim=1).tolist()
    expected = [min(r, max(2, min(6, math.ceil(0.5 * r)))) for r in real]
    assert out.selected_valid.sum(dim=1).tolist() == expected
    assert expected[0] < expected[1]  # a short post keeps fewer tokens than a long one


def test_hybrid_pools_the_mean_of_topk_pool_and_all_tokens_mean():
    hybrid, tokenizer = tiny_classifier(top_k=3, pooling="hybrid")
    topk, _ = tiny_classifier(top_k=3, pooling="topk")
    every, _ = tiny_classifier(top_k=3, pooling="all")
    outs = [forward(m.eval(), tokenizer, LONG_PAIRS)[1] for m in (hybrid, topk, every)]
    assert torch.allclose(outs[0].pooled, (outs[1].pooled + outs[2].pooled) / 2, atol=1e-5)


@pytest.mark.parametrize("options", [dict(pooling="hybrid"), dict(min_weight_share=0.3, top_k_ratio=0.3, top_k_min=2),
                                     dict(pooling="hybrid", min_weight_share=0.3, top_k_ratio=0.3)])
def test_scorer_receives_gradient_with_every_method_option(options):
    model, tokenizer = tiny_classifier(top_k=3, **options)
    model.train()
    _, out = forward(model, tokenizer, PAIRS)
    aligned_objective(out.sentiment_logits, torch.tensor([2, 0, 2, 1]), out.pooled, 0.1)["loss"].backward()
    assert sum(p.grad.abs().sum().item() for p in model.scorer.parameters() if p.grad is not None) > 0


def test_config_without_method_options_keeps_the_fixed_k_method(tmp_path):
    model, tokenizer = tiny_classifier(top_k=4)
    directory = save_deployed(model, tokenizer, tmp_path / "m")
    raw = json.loads((directory / "config.json").read_text())
    for key in ("top_k_ratio", "top_k_min", "min_weight_share"):
        raw.pop(key, None)  # a directory written before these options existed
    (directory / "config.json").write_text(json.dumps(raw))
    loaded, _, config = load_deployed(directory)
    assert (config.top_k_ratio, config.min_weight_share, config.pooling) == (0.0, 0.0, "topk")
    _, before = forward(model.eval(), tokenizer, LONG_PAIRS)
    _, after = forward(loaded, tokenizer, LONG_PAIRS)
    assert torch.equal(before.selected_valid, after.selected_valid)
    assert torch.allclose(before.sentiment_logits, after.sentiment_logits, atol=1e-6)


def test_streamed_rationale_holds_only_tokens_above_the_threshold(tmp_path):
    model, tokenizer = tiny_classifier(top_k=8, min_weight_share=0.6)
    batch, out = forward(spread_scores(model).eval(), tokenizer, LONG_PAIRS)
    predictor = BatchPredictor(model, tokenizer, model.config, dtype="fp32")
    kept = out.selected_valid.sum(dim=1).tolist()
    assert kept[1] < min(8, int(batch.selectable[1].sum()))  # the threshold dropped some of the top-K
    for prediction, n in zip(predictor.predict(LONG_PAIRS), kept):
        assert 1 <= len(prediction.rationale) <= n


def test_scorer_warmup_pools_softly_over_every_real_token_and_reaches_every_score():
    model, tokenizer = tiny_classifier(top_k=2, top_k_ratio=0.25, min_weight_share=0.5, pooling="topk")
    model.train()
    batch = encode_pairs(tokenizer, [t for t, _ in LONG_PAIRS], [d for _, d in LONG_PAIRS], model.config.max_length)
    out = model(**batch.model_inputs(), select_all=True)
    # every real token is selected and valid: no K, no ratio, no weight threshold
    assert out.selected_valid.sum(dim=1).tolist() == batch.selectable.sum(dim=1).tolist()
    scores = out.token_scores
    scores.retain_grad()
    aligned_objective(out.sentiment_logits, torch.tensor([2, 0, 2]), out.pooled, 0.1)["loss"].backward()
    # a gradient for every real token's score (a lone token's weight is 1 whatever its score)
    several = batch.selectable & (batch.selectable.sum(dim=1, keepdim=True) > 1)
    assert torch.equal((scores.grad.abs() > 0) & batch.selectable, several)
    hard = model(**batch.model_inputs())             # and without it, the configured hard top-K as before
    assert hard.selected_valid.sum() < out.selected_valid.sum()


def test_lambda_ramp_rises_linearly_then_holds():
    from affectstream.training.config import TrainConfig
    from affectstream.training.train import uniformity_at

    constant, ramped = TrainConfig(uniformity_weight=0.2), TrainConfig(uniformity_weight=0.2, uniformity_ramp=0.5)
    assert [uniformity_at(constant, p) for p in (0.0, 0.5, 1.0)] == [0.2, 0.2, 0.2]
    assert [round(uniformity_at(ramped, p), 6) for p in (0.0, 0.25, 0.5, 0.9)] == [0.0, 0.1, 0.2, 0.2]
