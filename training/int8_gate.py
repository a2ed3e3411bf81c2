"""The int8 quality gate: `affectstream bench --int8-gate MODEL_DIR`, and the retraining job for every
candidate it registers (streaming/tools/retrain_job.py).

int8 serves only where it classifies as well as the model itself: macro-F1 of the onnx-int8 backend
against the torch backend (bf16 where the CPU has bf16 units, as served; else fp32) on the VADER test
split and, when their folders are there, the Twitter-2015 and Twitter-2017 test sets. It passes when on
every set int8's macro-F1 is at most 0.5 points below the reference's (`model.serving.GATE_TOLERANCE`).
One-sided on purpose: the gate guards against a loss of quality. On these test sets one changed label
moves macro-F1 by 0.1-0.4 points, so int8 lands a few tenths above or below by chance; the deltas and
the share of labels on which both agree are recorded either way. Twitter samples are
(tweet, target) pairs and go through `predict_targets`, as the classify stage sends brand targets (a
model that is not target-aware answers each with its post-level label). The result, with the weights'
hash, goes to `int8_gate.json` next to the model (or the cache when the directory is read-only), where
`load_predictor(..., backend="auto")` reads it.
"""
from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from affectstream.model.config import SENTIMENT_LABELS
from affectstream.model.device import cpu_model
from affectstream.model.serving import GATE_TOLERANCE, cpu_isa, load_predictor, write_gate
from affectstream.model.onnx_export import EXPORT_RECIPE, weights_hash
from affectstream.model.targets import TargetInput
from affectstream.training.config import data_root
from affectstream.training.datasets import load_dataset
from affectstream.training.evaluate import classification_metrics

GATE_SETS = ("twitter2015", "twitter2017")  # target-level test sets checked beside VADER when present


def gate_sets(data_root: str | Path, say: Callable[[str], None] = print) -> dict[str, list]:
    """name -> test samples: VADER always (cached or fetched), Twitter-2015/2017 when present."""
    sets = {"vader-test": [s for s in load_dataset("vader").samples if s.split == "test"]}
    for name in GATE_SETS:
        folder = Path(data_root) / name
        if (folder / "test.tsv").is_file():
            sets[f"{name}-test"] = [s for s in load_dataset(name, str(folder)).samples if s.split == "test"]
        else:
            say(f"  int8 gate: {folder} not found, {name} skipped")
    return sets


def predict_labels(predictor, samples: list) -> list[str]:
    if any(s.target for s in samples):
        items = [TargetInput(s.text, "", s.target or "", tuple(s.target_spans)) for s in samples]
        return [p.label for p in predictor.predict_targets(items)]
    return [p.label for p in predictor.predict([(s.text, "") for s in samples])]


def run_gate(model_dir: str | Path, data_path: str | Path | None = None, say: Callable[[str], None] = print,
             write: bool = True) -> dict:
    """`data_path`: the folder holding twitter2015/ and twitter2017/ (default: training.config.data_root())."""
    model_dir = Path(model_dir)
    say(f"int8 gate: {model_dir} (torch vs onnx-int8) ...")
    reference = load_predictor(model_dir, "torch", device="cpu")
    int8 = load_predictor(model_dir, "onnx-int8")
    labels = tuple(reference.config.sentiment_labels) or SENTIMENT_LABELS
    sets = {}
    data_path = Path(data_path) if data_path is not None else data_root()
    for name, samples in gate_sets(data_path, say).items():
        truth = [s.label for s in samples]
        ref_pred, int8_pred = predict_labels(reference, samples), predict_labels(int8, samples)
        ref_f1 = classification_metrics(truth, ref_pred, labels)["macro_f1"]
        int8_f1 = classification_metrics(truth, int8_pred, labels)["macro_f1"]
        sets[name] = {"n": len(samples), "macro_f1_reference": round(ref_f1, 4), "macro_f1_int8": round(int8_f1, 4),
                      "delta_points": round(100 * (int8_f1 - ref_f1), 2),
                      "label_agreement": round(sum(a == b for a, b in zip(ref_pred, int8_pred)) / len(samples), 4),
                      "passed": int8_f1 >= ref_f1 - GATE_TOLERANCE}
        say(f"  {name}: n={len(samples)} macro-F1 {reference.backend} {ref_f1:.4f}, int8 {int8_f1:.4f} "
            f"({sets[name]['delta_points']:+.2f} points), labels agree {sets[name]['label_agreement']:.1%}")
    gate = {
        "passed": bool(sets) and all(s["passed"] for s in sets.values()),
        "tolerance_points": 100 * GATE_TOLERANCE,
        "reference": f"torch {str(getattr(reference, 'dtype', '')).replace('torch.', '')}",
        "int8": "ONNX Runtime dynamic int8 (QInt8 per-channel weights; scorer and heads fp32), model/onnx_export.py",
        "rule": "int8 macro-F1 >= reference macro-F1 - tolerance on every set",
        "sets": sets,
        "data_path": str(data_path),
        "missing": [f"{name}-test" for name in GATE_SETS if f"{name}-test" not in sets],
        "weights_hash": weights_hash(model_dir),
        "recipe": EXPORT_RECIPE,
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu": cpu_model() or platform.processor(), **cpu_isa()},
    }
    gate["card_line"] = card_line(gate)
    if write:
        gate["written_to"] = str(write_gate(model_dir, gate))
    return gate


def card_line(gate: dict) -> str:
    """One line for the model card."""
    parts = ", ".join(f"{name} {s['macro_f1_reference']:.4f} → {s['macro_f1_int8']:.4f} ({s['delta_points']:+.2f})"
                      for name, s in gate["sets"].items())
    verdict = "passed" if gate["passed"] else "NOT passed (int8 is not served by `auto`)"
    if gate.get("missing"):
        verdict += f" (not checked, data missing under {gate['data_path']}: {', '.join(gate['missing'])})"
    return (f"int8 serving gate ({gate['measured_at']}): macro-F1 {gate['reference']} → onnx-int8: {parts}; "
            f"passes when int8 is at most {gate['tolerance_points']:.1f} points below on every set: {verdict}.")


