"""Ablations over seeds: the summary math (mean ± sd, paired differences), seeds parsing, the command on the
tiny preset (every variant × seed, JSON saved, runs read back instead of retrained) and the card section."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from affectstream.training.ablations import PLAIN, VARIANTS, attach_to_model, parse_seeds, summarise
from affectstream.training.config import PRESETS
from tests.dataset_fixtures import write_keyword_jsonl
from tests.test_training import keyword_jsonl  # noqa: F401  (the shared keyword-task fixture)


def record(seed, macro_f1, accuracy=0.5):
    return {"seed": seed, "dev": {"metric": macro_f1, "epoch": 1}, "train_seconds": 1.0,
            "test": {"posts": {"accuracy": accuracy, "macro_f1": macro_f1, "weighted_f1": macro_f1}}}


def test_parse_seeds_count_or_list():
    assert parse_seeds("3", 13) == [13, 14, 15]
    assert parse_seeds("13, 21,34", 0) == [13, 21, 34]


def test_summary_gives_mean_sd_and_paired_differences_per_seed():
    runs = {"full": [record(1, 0.70), record(2, 0.74), record(3, 0.72)],
            "λ = 0": [record(1, 0.73), record(2, 0.73), record(3, 0.75)]}
    study = summarise(runs, PRESETS["tiny"], [1, 2, 3])
    row = next(r for r in study["rows"] if r["variant"] == "λ = 0")
    assert row["macro_f1_mean"] == pytest.approx(0.73666667)
    assert row["macro_f1_sd"] == pytest.approx(0.011547, abs=1e-5)   # sample sd (n − 1)
    (paired,) = study["paired"]
    assert paired["variant"] == "λ = 0" and paired["against"] == "full"
    assert paired["macro_f1_diff_mean"] == pytest.approx((0.03 - 0.01 + 0.03) / 3)
    assert paired["macro_f1_diff_sd"] == pytest.approx(0.023094, abs=1e-5)
    assert (paired["wins"], paired["losses"], paired["ties"]) == (2, 1, 0)


def test_plain_baseline_is_the_issue_recipe_through_the_same_loop():
    cfg = PRESETS["default"].replace(**PLAIN)
    assert (cfg.pooling, cfg.uniformity_weight, cfg.captioner, cfg.extra_datasets) == ("all", 0.0, "none", ())
    assert (cfg.lr, cfg.head_lr, cfg.batch_size, cfg.epochs, cfg.bf16) == (5e-5, 5e-5, 32, 3, True)


def test_ablate_runs_every_variant_and_seed_then_reads_them_back(tmp_path, keyword_jsonl):  # noqa: F811
    from affectstream.cli import main

    variants = ["full", "λ = 0", "plain fine-tune (baseline)"]
    args = ["ablate", "--preset", "tiny", "--dataset", "jsonl", "--data-path", str(keyword_jsonl), "--epochs", "1",
            "--run-dir", str(tmp_path / "abl"), "--seeds", "13,14", "--json", str(tmp_path / "study.json")]
    for v in variants:
        args += ["--variant", v]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.output.count("training ") == len(variants) * 2
    study = json.loads((tmp_path / "study.json").read_text())
    assert study["seeds"] == [13, 14]
    assert {v: len(r) for v, r in study["runs"].items()} == dict.fromkeys(variants, 2)
    assert {p["variant"] for p in study["paired"]} == {"λ = 0", "plain fine-tune (baseline)"}
    assert "±" in first.output and "wins/losses/ties" in first.output
    # the same study again: every run is read back, nothing retrained, same numbers
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "training " not in again.output
    assert json.loads((tmp_path / "study.json").read_text())["rows"] == study["rows"]
    # read back with a held-out set: every run is scored on it as one more test set, cached beside its model
    held = write_keyword_jsonl(tmp_path / "held.jsonl", 90, prefix="h", seed=7)
    scored = CliRunner().invoke(main, [*args, "--no-train", "--held-out", f"jsonl={held}"])
    assert scored.exit_code == 0, scored.output
    study = json.loads((tmp_path / "study.json").read_text())
    name = "jsonl-test (held out)"
    assert {r["variant"] for r in study["rows"] if r["test set"] == name} == set(variants)
    assert all(0.0 <= r["test"][name]["macro_f1"] <= 1.0 for runs in study["runs"].values() for r in runs)
    assert all((Path(r["out_dir"]) / "held_out.json").is_file() for runs in study["runs"].values() for r in runs)


def test_attach_writes_one_section_and_replaces_it(tmp_path):
    (tmp_path / "card.md").write_text("# card\n\n## Results\n\nnumbers\n\n## Limitations\n\nsome\n")
    (tmp_path / "metrics.json").write_text("{}")
    runs = {"full": [record(1, 0.7), record(2, 0.8)], "λ = 0": [record(1, 0.75), record(2, 0.7)]}
    study = summarise(runs, PRESETS["tiny"], [1, 2])
    attach_to_model(tmp_path, study)
    attach_to_model(tmp_path, study)
    card = (tmp_path / "card.md").read_text()
    assert card.count("## Ablations over seeds") == 1 and "## Limitations" in card and "## Results" in card
    assert json.loads((tmp_path / "metrics.json").read_text())["ablations"]["paired"][0]["wins"] == 1


def test_every_variant_changes_only_known_training_options():
    fields = set(PRESETS["default"].__dataclass_fields__)
    for name, changes in VARIANTS.items():
        assert set(changes) <= fields, name


def test_a_variant_equal_to_another_is_read_back_not_trained_twice(tmp_path, keyword_jsonl):  # noqa: F811
    from affectstream.training.ablations import V1, run_study

    base = PRESETS["tiny"].replace(**V1, dataset="jsonl", data_path=str(keyword_jsonl), epochs=1,
                                   run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    lines: list[str] = []
    study = run_study(base, ["full", "v1 (fixed K=16 top-K, λ 0.1)"], [13], tmp_path / "abl", log=lines.append)
    assert len(lines) == 1  # the first trains; the second has the same configuration
    full, v1 = study["runs"]["full"][0], study["runs"]["v1 (fixed K=16 top-K, λ 0.1)"][0]
    assert full["out_dir"] == v1["out_dir"] and full["test"] == v1["test"]
    (paired,) = study["paired"]
    assert (paired["macro_f1_diff_mean"], paired["ties"]) == (0.0, 1)


def test_read_back_only_leaves_out_runs_not_done(tmp_path):
    from affectstream.training.ablations import run_study

    lines: list[str] = []
    study = run_study(PRESETS["tiny"], ["full", "λ = 0"], [13, 14], tmp_path / "abl", log=lines.append,
                      train_missing=False)
    assert study["runs"] == {} and study["rows"] == [] and study["paired"] == [] and study["seeds"] == []
    assert len(lines) == 4 and all(line.startswith("not done yet") for line in lines)
