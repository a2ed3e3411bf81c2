"""The dev-fitted class bias: the fit finds a boundary that raises macro-F1, forward applies the stored
bias, old config.json files load without one, and a model directory is calibrated without retraining."""
import json
import random

import orjson
import pytest
import torch

from affectstream.model.config import SENTIMENT_LABELS, AlignedConfig
from affectstream.model.deploy import load_deployed
from affectstream.model.tokenization import encode_pairs
from affectstream.training.calibrate import fit_bias, macro_f1
from affectstream.training.calibrate_dir import calibrate_directory
from affectstream.training.config import PRESETS
from affectstream.training.evaluate import classification_metrics
from affectstream.training.train import evaluate_split, load_datasets, train
from tests.tiny_models import tiny_classifier


def under_predicted_neutral(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a model that ranks well but puts neutral (class 1) 1.0 too low: most neutral posts lose
    to their runner-up class, so neutral recall is poor until neutral's logit is raised."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(0, 3, (n,), generator=g)
    logits = torch.randn(n, 3, generator=g) * 0.3
    logits[torch.arange(n), truth] += 1.0
    logits[:, 1] -= 1.0
    return logits, truth


def test_macro_f1_matches_classification_metrics():
    rng = random.Random(1)
    truth = [rng.randrange(3) for _ in range(200)]
    preds = [[rng.randrange(3) for _ in range(200)] for _ in range(4)] + [[0] * 200]  # one row never predicts 1, 2
    got = macro_f1(torch.tensor(preds), torch.tensor(truth), 3)
    for row, value in zip(preds, got.tolist()):
        expected = classification_metrics([SENTIMENT_LABELS[t] for t in truth], [SENTIMENT_LABELS[p] for p in row],
                                          SENTIMENT_LABELS)["macro_f1"]
        assert value == pytest.approx(expected, abs=1e-12)


def test_fit_raises_the_under_predicted_class_and_dev_macro_f1():
    logits, truth = under_predicted_neutral()
    fit = fit_bias(logits, truth)
    assert fit.bias[0] == 0.0                      # the reference class stays at 0
    assert 0.5 <= fit.bias[1] <= 1.5               # neutral comes back up by about the offset it lost
    assert fit.dev_macro_f1_after > fit.dev_macro_f1_before + 0.1
    # the fitted bias generalises to fresh draws of the same model
    fresh, fresh_truth = under_predicted_neutral(seed=1)
    before = macro_f1(fresh.argmax(-1)[None], fresh_truth, 3).item()
    after = macro_f1((fresh + torch.tensor(fit.bias)).argmax(-1)[None], fresh_truth, 3).item()
    assert after > before + 0.1


def test_fit_keeps_zero_bias_when_nothing_improves():
    truth = torch.tensor([0, 1, 2] * 20)
    logits = torch.nn.functional.one_hot(truth, 3).float() * 5  # already perfect: every shift only ties or loses
    fit = fit_bias(logits, truth)
    assert fit.bias == [0.0, 0.0, 0.0] and fit.dev_macro_f1_after == fit.dev_macro_f1_before == 1.0


def test_forward_adds_the_stored_bias_and_old_configs_load_without_one(tmp_path):
    model, tokenizer = tiny_classifier()
    model.eval()
    batch = encode_pairs(tokenizer, ["love it", "meh", "awful"], ["", "", ""], model.config.max_length)
    with torch.no_grad():
        plain = model(**batch.model_inputs()).sentiment_logits
        model.config.sentiment_bias = (0.0, 2.0, -1.0)
        biased = model(**batch.model_inputs()).sentiment_logits
    assert torch.allclose(biased - plain, torch.tensor([0.0, 2.0, -1.0]).expand_as(plain), atol=1e-6)
    # a bf16 model adds the bias in fp32, exactly as the fit did (a bf16 sum would round near-ties)
    model.to(torch.bfloat16)
    model.config.sentiment_bias = ()
    with torch.no_grad():
        plain16 = model(**batch.model_inputs()).sentiment_logits
        model.config.sentiment_bias = (0.0, 0.3, -0.1)
        biased16 = model(**batch.model_inputs()).sentiment_logits
    assert biased16.dtype == torch.float32
    assert torch.equal(biased16, plain16.float() + torch.tensor([0.0, 0.3, -0.1]))
    model.config.sentiment_bias = (0.0, 2.0, -1.0)
    # a config.json written before the field existed has no key: no bias
    model.config.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["sentiment_bias"] == [0.0, 2.0, -1.0]
    del stored["sentiment_bias"]
    assert AlignedConfig.from_dict(stored).sentiment_bias == ()
    with pytest.raises(ValueError, match="one value per sentiment label"):
        AlignedConfig(sentiment_bias=(1.0, 2.0))


@pytest.fixture(scope="module")
def skewed_jsonl(tmp_path_factory):
    """Keyword posts, two thirds positive: a short run under-predicts the rarer classes."""
    words = {"positive": ["love", "great"], "negative": ["hate", "awful"], "neutral": ["table", "monday"]}
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "posts.jsonl"
    labels = ["positive"] * 4 + ["negative", "neutral"]
    rows = [orjson.dumps({"id": f"s{i}", "text": f"my {rng.choice(words[lab])} {rng.choice(['phone', 'car'])}",
                          "label": lab}) for i, lab in enumerate(labels[i % 6] for i in range(180))]
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


def test_training_records_the_bias_and_a_directory_calibrates_without_retraining(tmp_path, skewed_jsonl):
    cfg = PRESETS["tiny"].replace(dataset="jsonl", data_path=str(skewed_jsonl), out_dir=str(tmp_path / "out"),
                                  run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), epochs=1)
    result = train(cfg, progress=False)
    record = result.metrics["class_bias"]
    assert record["fitted_on"] == "posts dev" and record["dev_macro_f1_after"] >= record["dev_macro_f1_before"]
    model, tokenizer, config = load_deployed(result.out_dir)
    assert config.sentiment_bias == tuple(record["bias"].values())
    # the fit saw the dev logits evaluation sees: its score is the one the exported model gets on dev
    dev = load_datasets(cfg)[0].split("dev")
    assert evaluate_split(model, tokenizer, dev, {}, cfg, torch.device("cpu"))["macro_f1"] == pytest.approx(
        record["dev_macro_f1_after"], abs=1e-9)
    # an uncalibrated directory (as written before the option) is calibrated in place; weights stay as they were
    plain = train(cfg.replace(class_bias=False, out_dir=str(tmp_path / "plain"), run_dir=str(tmp_path / "run2")),
                  progress=False)
    assert plain.metrics["class_bias"] is None and load_deployed(plain.out_dir)[2].sentiment_bias == ()
    weights = (plain.out_dir / "model.safetensors").read_bytes()
    posthoc = calibrate_directory(plain.out_dir)
    assert posthoc["bias"] == record["bias"]       # same weights, same dev split: the fit training made
    assert (plain.out_dir / "model.safetensors").read_bytes() == weights
    metrics = json.loads((plain.out_dir / "metrics.json").read_text())
    assert metrics["class_bias"]["post_hoc"] and metrics["reproducibility"]["config"]["class_bias"] is True
    assert metrics["test"]["posts"]["macro_f1"] == pytest.approx(result.metrics["test"]["posts"]["macro_f1"])
    assert "sentiment logit bias" in (plain.out_dir / "card.md").read_text()


def test_onnx_graph_carries_the_bias(tmp_path, monkeypatch):
    """The ONNX export traces forward, so the fp32 graph must give the biased scores the torch model gives,
    and they must differ from the same weights without the bias."""
    from affectstream.model import serving
    from tests.tiny_models import save_tiny

    monkeypatch.setenv("AFFECTSTREAM_CACHE", str(tmp_path / "cache"))
    posts = [("love it", ""), ("worst service ever", ""), ("meh", "objects: espresso.")]
    plain_dir = save_tiny(tmp_path / "plain", top_k=4)
    biased_dir = save_tiny(tmp_path / "biased", top_k=4, sentiment_bias=(0.0, 3.0, -1.0))
    torch_biased = serving.load_predictor(biased_dir, "torch", device="cpu", dtype="fp32").predict(posts)
    onnx_biased = serving.load_predictor(biased_dir, "onnx-fp32").predict(posts)
    onnx_plain = serving.load_predictor(plain_dir, "onnx-fp32").predict(posts)
    for a, b, c in zip(torch_biased, onnx_biased, onnx_plain):
        assert a.label == b.label and all(abs(a.scores[k] - b.scores[k]) <= 2e-3 for k in a.scores)
        assert b.scores["neutral"] > c.scores["neutral"] + 0.05   # the +3 on neutral is in the graph


def test_a_directory_switched_to_content_selection_is_refitted_and_scored_as_served(tmp_path, skewed_jsonl):
    cfg = PRESETS["tiny"].replace(dataset="jsonl", data_path=str(skewed_jsonl), out_dir=str(tmp_path / "out"),
                                  run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), epochs=1)
    out = train(cfg, progress=False).out_dir
    weights = (out / "model.safetensors").read_bytes()
    record = calibrate_directory(out, token_selection="content")
    assert record["token_selection"] == {"trained": "all", "served": "content"}
    model, tokenizer, config = load_deployed(out)
    assert config.token_selection == "content" and config.sentiment_bias == tuple(record["bias"].values())
    assert (out / "model.safetensors").read_bytes() == weights
    # the recorded test score is the served model's: content selection and the refitted bias
    test = load_datasets(cfg)[0].split("test")
    metrics = json.loads((out / "metrics.json").read_text())
    assert evaluate_split(model, tokenizer, test, {}, cfg, torch.device("cpu"))["macro_f1"] == pytest.approx(
        metrics["test"]["posts"]["macro_f1"], abs=1e-9)
    assert "token selection 'content' (trained with 'all')" in (out / "card.md").read_text()
