"""Several seeds of one configuration: per-seed test scores, mean ± sd, next to published figures.

``train_seeds(cfg, seeds)`` trains the first seed into ``cfg.out_dir`` (the model that ships) and every
other one into ``<run_dir>/seed-<n>/model``, then ``attach_seeds`` writes the summary into the shipped
model's ``card.md`` and ``metrics.json`` (``"seeds"``). The sd is the sample standard deviation (n − 1).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from affectstream.training.config import TrainConfig

# Published test figures (accuracy, macro-F1, in %) for the target-level sets, as the papers report them
# (see the data's README): dataset name -> model -> (accuracy, macro-F1).
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "twitter2015": {"BERT-base, text only (TomBERT paper)": (74.15, 68.86),
                    "TomBERT, text + image (Yu & Jiang, IJCAI 2019)": (77.15, 71.75),
                    "EF-CapTrBERT, text + image caption (Khan & Fu, ACM MM 2021)": (78.01, 73.25)},
    "twitter2017": {"BERT-base, text only (TomBERT paper)": (68.15, 65.23),
                    "TomBERT, text + image (Yu & Jiang, IJCAI 2019)": (70.34, 68.03),
                    "EF-CapTrBERT, text + image caption (Khan & Fu, ACM MM 2021)": (69.77, 68.42)},
}


def seed_out_dir(cfg: TrainConfig, seed: int, first: bool) -> str:
    return cfg.out_dir if first else str(Path(cfg.run_dir) / f"seed-{seed}" / "model")


def train_seeds(cfg: TrainConfig, seeds: list[int], progress: bool = True) -> dict:
    from affectstream.training.train import train

    dirs = []
    for i, seed in enumerate(seeds):
        out = seed_out_dir(cfg, seed, first=i == 0)
        train(cfg.replace(seed=seed, out_dir=out, run_dir=str(Path(cfg.run_dir) / f"seed-{seed}")), progress=progress)
        dirs.append(out)
    return attach_seeds(dirs[0], dirs)


def summarise(model_dirs: list[str | Path]) -> dict:
    """test set -> {"per_seed": [{seed, accuracy, macro_f1, train_seconds}], "mean"/"sd": {accuracy, macro_f1}}."""
    out: dict[str, dict] = {}
    for directory in model_dirs:
        metrics = json.loads((Path(directory) / "metrics.json").read_text())
        for name, m in metrics["test"].items():
            out.setdefault(name, {"per_seed": []})["per_seed"].append({
                "seed": metrics["reproducibility"]["seed"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                "train_seconds": metrics.get("train_seconds"), "best_epoch": metrics.get("dev_best", {}).get("epoch")})
    for summary in out.values():
        rows = summary["per_seed"]
        for stat, fn in (("mean", statistics.fmean), ("sd", lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)):
            summary[stat] = {key: fn([r[key] for r in rows]) for key in ("accuracy", "macro_f1")}
    return out


def render(summary: dict) -> str:
    """Markdown: one table of mean ± sd over seeds next to the published rows, then the per-seed rows."""
    names = list(summary)
    n = max((len(s["per_seed"]) for s in summary.values()), default=0)
    lines = ["| model | " + " | ".join(f"{name} acc / macro-F1" for name in names) + " |",
             "|---|" + "---|" * len(names),
             f"| **this model**, mean ± sd over {n} seeds | " + " | ".join(
                 f"**{100 * s['mean']['accuracy']:.2f} ± {100 * s['sd']['accuracy']:.2f} / "
                 f"{100 * s['mean']['macro_f1']:.2f} ± {100 * s['sd']['macro_f1']:.2f}**" for s in summary.values()) + " |"]
    for model in dict.fromkeys(m for name in names for m in PUBLISHED.get(name, {})):
        cells = [PUBLISHED.get(name, {}).get(model) for name in names]
        lines.append(f"| {model} | " + " | ".join(f"{a:.2f} / {f:.2f}" if a else "–" for a, f in
                                                   (c or (None, None) for c in cells)) + " |")
    lines += ["", "| seed | best epoch | train s | " + " | ".join(f"{name} acc / macro-F1" for name in names) + " |",
              "|---:|---:|---:|" + "---|" * len(names)]
    first = next(iter(summary.values()))["per_seed"]
    for i, row in enumerate(first):
        cells = [summary[name]["per_seed"][i] for name in names]
        lines.append(f"| {row['seed']} | {row['best_epoch']} | {row['train_seconds']:.0f} | " + " | ".join(
            f"{100 * c['accuracy']:.2f} / {100 * c['macro_f1']:.2f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


SECTION = "## Test results over seeds"


def attach_seeds(model_dir: str | Path, model_dirs: list[str | Path]) -> dict:
    """Write the seed summary into the shipped model's card.md (replacing an earlier one) and metrics.json."""
    model_dir = Path(model_dir)
    summary = summarise(model_dirs)
    card_path = model_dir / "card.md"
    card = card_path.read_text().split(f"\n{SECTION}\n")[0].rstrip("\n")
    card_path.write_text(card + f"\n\n{SECTION}\n\nThe weights here are seed "
                         f"{summary[next(iter(summary))]['per_seed'][0]['seed']}'s; every seed has the same "
                         f"configuration. Published rows as the papers report them (%).\n\n{render(summary)}")
    metrics_path = model_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["seeds"] = summary
    metrics_path.write_text(json.dumps(metrics, indent=2, default=str))
    return summary
