"""`affectstream calibrate MODEL_DIR`: fit the class bias (training/calibrate.py) of a trained model directory
without retraining, and rewrite what it changes (config.json's `sentiment_bias`, metrics.json's test scores,
the card's sections)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from affectstream.training.calibrate import calibrate_model, calibrate_target_sets
from affectstream.training.config import TrainConfig


def calibrate_directory(model_dir: str | Path, device: str = "cpu", token_selection: str | None = None) -> dict:
    """Fit the bias for a trained model directory without retraining: the datasets and split seed come from
    its metrics.json; config.json gains `sentiment_bias` (weights untouched) and, for a model trained on
    (post, target) pairs as well, a refitted `target_bias`; metrics.json's test scores, `class_bias` record
    and card.md's Method / Results / Reproducibility sections are rewritten.

    ``token_selection``: serve choosing among these tokens from now on ("content": content words only), set
    before the fit, so the biases and the test scores are those of the model as it will be served."""
    from affectstream.model.captioners import build_captioner
    from affectstream.model.deploy import load_deployed
    from affectstream.model.device import pick_device
    from affectstream.training.card import attach_section, refresh_card
    from affectstream.training.descriptions import describe_samples
    from affectstream.training.train import evaluate_split, load_datasets

    model_dir = Path(model_dir)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    stored = metrics["reproducibility"]["config"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in fields})
    model, tokenizer, model_cfg = load_deployed(model_dir)
    trained_selection = getattr(model.config, "token_selection", "all")
    if token_selection:
        model.config.token_selection = token_selection
    torch_device = pick_device(device)
    model.to(torch_device)
    datasets = load_datasets(cfg)
    samples = [s for d in datasets for s in d.samples if s.has_image]
    descriptions, _ = describe_samples(samples, build_captioner(model_cfg.captioner, device=torch_device.type), cfg.cache_dir)
    primary = datasets[0]
    def test_scores() -> dict:
        return {d.name: evaluate_split(model, tokenizer, d.split("test"), descriptions, cfg, torch_device)
                for d in datasets if d.split("test")}

    # "before" is measured on the stored weights (bf16 exports score a little differently from the fp32
    # model the trainer measured), so before and after differ only by the bias
    before = {name: m["macro_f1"] for name, m in test_scores().items()}
    record = calibrate_model(model, tokenizer, primary.split("dev"), descriptions, cfg.max_length, torch_device,
                             cfg.bf16, fitted_on=f"{primary.name} dev")
    if targets := calibrate_target_sets(model, tokenizer, datasets, descriptions, cfg.max_length, torch_device, cfg.bf16):
        record["targets"] = targets
    if model.config.token_selection != trained_selection:
        record["token_selection"] = {"trained": trained_selection, "served": model.config.token_selection}
    metrics["test"] = test_scores()
    record |= {"post_hoc": True, "test_macro_f1_before": before,
               "test_macro_f1_after": {name: m["macro_f1"] for name, m in metrics["test"].items()}}
    metrics["class_bias"] = record
    metrics["reproducibility"]["config"]["class_bias"] = True  # what a training run with the bias would record
    # config.json: only the one key changes (a re-save would also rewrite the stored dtype and bookkeeping)
    config = json.loads((model_dir / "config.json").read_text())
    config["sentiment_bias"] = list(model.config.sentiment_bias)
    if "targets" in record:
        config["target_bias"] = list(model.config.target_bias)
    config["token_selection"] = model.config.token_selection
    (model_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False, default=str))
    refresh_card(model_dir, model.config.method_options(), metrics, datasets)
    attach_section(model_dir, "Class bias (fitted after training)", describe_record(record) + ".\n\nFitted with "
                   "`affectstream calibrate` on the trained weights; the Method, Results and Reproducibility sections "
                   "above include it. Plots and sections measured before it (confusion plots, rationales, ablations, "
                   "the int8 gate) predate the bias.", "class_bias", record)
    return record


def describe_record(record: dict) -> str:
    """One paragraph for the CLI and the card."""
    bias = ", ".join(f"{label} {value:+.2f}" for label, value in record["bias"].items())
    text = (f"per-class logit bias ({bias}) fitted on {record['fitted_on']} ({record['n']} posts) for macro-F1: "
            f"dev macro-F1 {record['dev_macro_f1_before']:.4f} → {record['dev_macro_f1_after']:.4f}")
    if selection := record.get("token_selection"):
        text = (f"token selection {selection['served']!r} (trained with {selection['trained']!r}), then " + text)
    if targets := record.get("targets"):
        target_bias = ", ".join(f"{label} {value:+.2f}" for label, value in targets["bias"].items())
        text += (f"; target-level bias ({target_bias}) on {targets['fitted_on']} ({targets['n']} targets): dev macro-F1 "
                 f"{targets['dev_macro_f1_before']:.4f} → {targets['dev_macro_f1_after']:.4f}")
    if record.get("test_macro_f1_before"):
        text += "; test macro-F1 " + ", ".join(
            f"{name} {record['test_macro_f1_before'][name]:.4f} → {after:.4f}"
            for name, after in record["test_macro_f1_after"].items() if name in record["test_macro_f1_before"])
    return text
