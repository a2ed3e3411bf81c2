"""Ablations in one command: the full method against each of its parts switched off, on the same data and seed."""
from __future__ import annotations

from pathlib import Path

from affectstream.training.config import TrainConfig
from affectstream.training.train import train

VARIANTS: dict[str, dict] = {
    "full method": {},
    "text only (captioner none)": {"captioner": "none"},
    "no token selection (all tokens pooled)": {"pooling": "all"},
    "no uniformity (λ = 0)": {"uniformity_weight": 0.0},
}


def rows_of(variant: str, metrics: dict) -> list[dict]:
    return [{"variant": variant, "test set": dataset, "accuracy": m["accuracy"], "weighted_f1": m["weighted_f1"],
             "macro_f1": m["macro_f1"]} for dataset, m in metrics["test"].items()]


def run_ablations(base: TrainConfig, progress: bool = False, skip_full: bool = False) -> list[dict]:
    """Train every variant into its own run/out directory; one table row per (variant, test set)."""
    rows = []
    for name, changes in VARIANTS.items():
        if skip_full and not changes:
            continue
        tag = "".join(c if c.isalnum() else "-" for c in name.split(" (")[0].lower())
        cfg = base.replace(**changes, out_dir=str(Path(base.run_dir) / "ablations" / tag / "model"),
                           run_dir=str(Path(base.run_dir) / "ablations" / tag), version=f"ablation-{tag}")
        rows += rows_of(name, train(cfg, progress=progress).metrics)
    return rows


def attach_to_model(out_dir: str | Path, rows: list[dict]) -> str:
    """Add the ablation table to an exported model's card.md and metrics.json; returns the table."""
    import json

    from affectstream.training.evaluate import format_table

    out_dir = Path(out_dir)
    table = format_table(rows, ["variant", "test set", "accuracy", "weighted_f1", "macro_f1"])
    card = out_dir / "card.md"
    card.write_text(card.read_text() + f"\n## Ablations (same data, seed and budget)\n\n```text\n{table}```\n")
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["ablations"] = rows
    metrics_path.write_text(json.dumps(metrics, indent=2, default=str))
    return table
