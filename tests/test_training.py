"""Training smoke tests: a tiny random encoder learns a keyword task, exports, reloads, predicts the same."""
import json
import random
from pathlib import Path

import pytest
import torch

from affectstream.model.deploy import load_deployed
from affectstream.model.predictor import BatchPredictor
from affectstream.training.config import PRESETS
from affectstream.training.train import train
from tests.dataset_fixtures import write_keyword_jsonl


@pytest.fixture(scope="module")
def keyword_jsonl(tmp_path_factory):
    return write_keyword_jsonl(tmp_path_factory.mktemp("data") / "posts.jsonl", 240)


def tiny_cfg(tmp_path, data, **changes):
    options = dict(dataset="jsonl", data_path=str(data), out_dir=str(tmp_path / "out"), run_dir=str(tmp_path / "run"),
                   cache_dir=str(tmp_path / "cache"), epochs=4)
    return PRESETS["tiny"].replace(**{**options, **changes})


def test_tiny_training_loss_falls_and_export_reloads(tmp_path, keyword_jsonl):
    result = train(tiny_cfg(tmp_path, keyword_jsonl), progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert result.metrics["test"]["posts"]["accuracy"] > 0.6   # chance is 0.33
    out = result.out_dir
    for name in ("config.json", "model.safetensors", "metrics.json", "card.md", "curves.png", "tokenizer.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reproducibility"]["seed"] == 13 and metrics["data"]["posts"]["fingerprint"]
    # the exported directory predicts what the in-memory model measured
    model, tokenizer, config = load_deployed(out)
    assert config.trained
    predictor = BatchPredictor.from_directory(out, dtype="fp32")
    preds = predictor.predict([("i love my phone", ""), ("i hate my car", "")])
    assert [p.label for p in preds] == ["positive", "negative"]
    assert any(w.text in ("love", "hate") for p in preds for w in p.rationale)


def test_resume_continues_from_checkpoint(tmp_path, keyword_jsonl):
    cfg = tiny_cfg(tmp_path, keyword_jsonl, epochs=2, patience=10)
    first = train(cfg, progress=False)
    resumed = train(cfg, progress=False)  # every epoch already done: nothing retrained
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history == first.history
    longer = train(cfg.replace(epochs=3), progress=False)  # a different config never resumes someone else's run
    assert [r["epoch"] for r in longer.history] == [1, 2, 3]


def test_weight_ema_scores_keeps_and_exports_the_moving_average(tmp_path, keyword_jsonl):
    from safetensors.torch import load_file

    cfg = tiny_cfg(tmp_path, keyword_jsonl, epochs=2, patience=10, weight_ema=0.9)
    result = train(cfg, progress=False)
    assert result.metrics["test"]["posts"]["accuracy"] > 0.6
    ckpt = tmp_path / "run" / "checkpoint"
    raw, averaged = load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "averaged.safetensors"))
    best = load_file(str(tmp_path / "run" / "best.safetensors"))
    name = "sentiment_head.weight"
    assert not torch.equal(raw[name], averaged[f"module.{name}"]), "the average lags the raw weights"
    if result.metrics["dev_best"]["epoch"] == 2:  # the best epoch is the last one: its average was kept
        assert torch.equal(best[name], averaged[f"module.{name}"])
    resumed = train(cfg, progress=False)  # the average is part of the checkpoint: nothing retrained
    assert resumed.history == result.history


def test_init_from_starts_at_a_trained_models_weights_and_refuses_another_encoder(tmp_path, keyword_jsonl):
    import shutil

    first = train(tiny_cfg(tmp_path / "a", keyword_jsonl, epochs=2), progress=False)
    # learning rates of zero: the second run's exported weights are exactly the ones it started from
    frozen = train(tiny_cfg(tmp_path / "b", keyword_jsonl, epochs=1, lr=0.0, head_lr=0.0, seed=99,
                            init_from=str(first.out_dir)), progress=False)
    before, after = load_deployed(first.out_dir)[0].state_dict(), load_deployed(frozen.out_dir)[0].state_dict()
    assert before.keys() == after.keys() and all(before[k].equal(after[k]) for k in before)
    assert frozen.metrics["test"]["posts"]["accuracy"] == pytest.approx(first.metrics["test"]["posts"]["accuracy"], abs=0.1)
    other = tmp_path / "other"
    shutil.copytree(first.out_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "encoder": "offline"}))
    with pytest.raises(ValueError, match="init-from"):
        train(tiny_cfg(tmp_path / "c", keyword_jsonl, epochs=1, init_from=str(other)), progress=False)


def test_target_level_training_marks_targets_and_exports_a_target_aware_model(tmp_path):
    """Two targets in one post with opposite labels: the model must read the target to tell them apart."""
    from affectstream.model.targets import TARGET_FORMAT, TargetInput

    rng = random.Random(1)
    root = tmp_path / "tw"
    root.mkdir()
    brands = ["acme", "nimbus", "zenith", "orbit"]
    for split, n in (("train", 240), ("dev", 60), ("test", 60)):
        lines = ["index\tlabel\timage\ttweet\ttarget"]
        for i in range(n):
            good, bad = rng.sample(brands, 2)
            tweet = f"switched from {bad} to {good}"
            lines.append(f"{2 * i}\t2\t{i}.jpg\t{tweet.replace(good, '$T$')}\t{good}")
            lines.append(f"{2 * i + 1}\t0\t{i}.jpg\t{tweet.replace(bad, '$T$')}\t{bad}")
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    cfg = tiny_cfg(tmp_path, root, dataset="twitter2015", epochs=6, patience=6)
    result = train(cfg, progress=False)
    assert result.metrics["test"]["twitter2015"]["accuracy"] > 0.7   # one label per post would score 0.5
    predictor = BatchPredictor.from_directory(result.out_dir, dtype="fp32")
    assert predictor.target_aware and predictor.config.target_format == TARGET_FORMAT
    text = "switched from acme to nimbus"
    got = predictor.predict_targets([TargetInput(text, "", "nimbus", ((22, 28),)), TargetInput(text, "", "acme", ((14, 18),))])
    assert [p.label for p in got] == ["positive", "negative"]
    assert all(w.source == "text" and w.text in text.split() for p in got for w in p.rationale)


def test_seed_summary_gives_mean_sd_and_the_published_rows(tmp_path):
    from affectstream.training.seeds import SECTION, attach_seeds

    dirs = []
    for seed, (acc, f1) in zip((1, 2, 3), ((0.70, 0.60), (0.72, 0.64), (0.74, 0.68))):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({
            "test": {"twitter2015": {"accuracy": acc, "macro_f1": f1}}, "train_seconds": 100.0 + seed,
            "dev_best": {"epoch": 2}, "reproducibility": {"seed": seed}}))
        (d / "card.md").write_text("# card\n")
        dirs.append(d)
    summary = attach_seeds(dirs[0], dirs)
    assert summary["twitter2015"]["mean"]["macro_f1"] == pytest.approx(0.64)
    assert summary["twitter2015"]["sd"]["macro_f1"] == pytest.approx(0.04)
    card = (dirs[0] / "card.md").read_text()
    assert "72.00 ± 2.00 / 64.00 ± 4.00" in card and "74.15 / 68.86" in card
    attach_seeds(dirs[0], dirs)  # again: the section is replaced, not repeated
    assert (dirs[0] / "card.md").read_text().count(SECTION) == 1
    assert json.loads((dirs[0] / "metrics.json").read_text())["seeds"]["twitter2015"]["per_seed"][2]["seed"] == 3


def test_evaluate_reads_the_models_own_split_and_warns_about_another(tmp_path, keyword_jsonl):
    from click.testing import CliRunner

    from affectstream.cli import main

    out = train(tiny_cfg(tmp_path, keyword_jsonl, seed=14, epochs=1), progress=False).out_dir
    args = ["evaluate", str(out), "--dataset", "jsonl", "--data-path", str(keyword_jsonl)]
    own = CliRunner().invoke(main, args)
    assert own.exit_code == 0, own.output
    assert "warning" not in own.output
    other = CliRunner().invoke(main, args + ["--seed", "13"])
    assert other.exit_code == 0, other.output
    assert "trained on the seed-14 split" in other.output


def test_evaluate_on_a_target_set_scores_the_post_label_against_the_targets_gold(tmp_path, keyword_jsonl):
    """`evaluate` on a target-level set also prints the same model's post label scored against every
    target's gold label, so "does reading the target beat the post's own label?" is one command."""
    import re

    from click.testing import CliRunner

    from affectstream.cli import main

    dong = Path(__file__).parent / "fixtures" / "absa" / "apc_datasets" / "101.ACL_Twitter" / "acl-14-short-data"
    out = train(tiny_cfg(tmp_path, keyword_jsonl, epochs=1), progress=False).out_dir
    result = CliRunner().invoke(main, ["evaluate", str(out), "--dataset", "dong2014", "--data-path", str(dong)])
    assert result.exit_code == 0, result.output
    line = re.search(r"post label for every target \(as served\): accuracy ([\d.]+), macro-F1 ([\d.]+) "
                     r"\(target labels: ([\d.]+)\)", result.output)
    assert line, result.output
    assert all(0.0 <= float(v) <= 1.0 for v in line.groups())


def test_a_model_trained_on_every_token_can_be_exported_choosing_content_words(tmp_path, keyword_jsonl):
    """TrainConfig.serve_selection (the default preset's "content"): trained choosing among every token, exported
    choosing among content words, with its test scores measured that way."""
    from affectstream.model.deploy import load_deployed
    from affectstream.training.train import evaluate_split, load_datasets

    cfg = tiny_cfg(tmp_path, keyword_jsonl, epochs=1, serve_selection="content")
    result = train(cfg, progress=False)
    model, tokenizer, config = load_deployed(result.out_dir)
    assert config.token_selection == "content"
    assert json.loads((result.out_dir / "metrics.json").read_text())["reproducibility"]["config"]["token_selection"] == "all"
    test = load_datasets(cfg)[0].split("test")
    assert evaluate_split(model, tokenizer, test, {}, cfg, torch.device("cpu"))["macro_f1"] == pytest.approx(
        result.metrics["test"]["posts"]["macro_f1"], abs=0.02)   # bf16 export vs the fp32 model the trainer scored
