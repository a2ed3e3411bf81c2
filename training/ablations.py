"""Ablations over seeds: every variant × seed; within a seed all variants share the split (the seed draws the
initialisation and the stratified split); mean ± sd per variant and a paired comparison per seed.

A variant is a set of TrainConfig changes applied to the base (a preset): the method's parts switched off
one at a time, the first deployed method (`v1`), and `plain` — the issue's plain fine-tune baseline through
the same loop (mean of all tokens, linear head, AdamW 5e-5 for every weight, batch 32, 3 epochs, best dev
epoch, bf16 autocast, text only, the primary data set only) — with the same dev-fitted class bias as every
variant (`class_bias`; the "no class bias" variant switches it off). Each run writes its own model directory;
a run whose metrics.json was made with the same configuration is read back instead of trained again, so
an interrupted study resumes and several processes can share one. The result is one JSON document
(`save_study`) that `attach_to_model` writes into a model's card and metrics.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from affectstream.training.config import TrainConfig

PLAIN = {"pooling": "all", "uniformity_weight": 0.0, "captioner": "none", "extra_datasets": (), "lr": 5e-5,
         "head_lr": 5e-5, "epochs": 3, "patience": 3, "batch_size": 32, "top_k_ratio": 0.0, "min_weight_share": 0.0}
# the method as it was first deployed: fixed K = 16, score-weighted top-K only, λ = 0.1
V1 = {"pooling": "topk", "top_k": 16, "top_k_ratio": 0.0, "min_weight_share": 0.0, "uniformity_weight": 0.1}

VARIANTS: dict[str, dict] = {
    "full": {},
    "v1 (fixed K=16 top-K, λ 0.1)": V1,
    "all tokens mean-pooled": {"pooling": "all"},
    "λ = 0": {"uniformity_weight": 0.0},
    "text only": {"captioner": "none"},
    "normalisation off": {"text_normalization": "none"},
    "no class bias": {"class_bias": False},
    "scorer warm-up (first 25% soft over all tokens)": {"scorer_warmup": 0.25},
    "λ ramp (0 → λ over the first half)": {"uniformity_ramp": 0.5},
    "EMA of the weights (decay 0.99 per step)": {"weight_ema": 0.99},
    "plain fine-tune (baseline)": PLAIN,
}
# what `affectstream ablate` runs when no --variant is named
DEFAULT_VARIANTS = ("full", "v1 (fixed K=16 top-K, λ 0.1)", "all tokens mean-pooled", "λ = 0", "text only",
                    "no class bias", "plain fine-tune (baseline)")
METRICS = ("accuracy", "macro_f1", "weighted_f1")
# run-specific fields that do not change what is trained
_BOOKKEEPING = ("out_dir", "run_dir", "version", "resume", "ablations", "threads", "cache_dir", "export_dtype")


def parse_seeds(value: str, first: int) -> list[int]:
    """"5" → five seeds from `first`; "13,14,15" → those seeds."""
    value = value.strip()
    if "," not in value:
        return list(range(first, first + int(value)))
    return [int(seed) for seed in value.split(",") if seed.strip()]


def tag_of(variant: str) -> str:
    tag = "".join(c if c.isalnum() else "-" for c in variant.lower().replace("λ", "lambda"))
    return "-".join(part for part in tag.split("-") if part)[:48]


def variant_config(base: TrainConfig, variant: str, seed: int, root: Path) -> TrainConfig:
    changes = {k: v for k, v in VARIANTS[variant].items() if hasattr(base, k)}  # a field this checkout lacks: not run
    if len(changes) < len(VARIANTS[variant]):
        raise ValueError(f"variant {variant!r} needs TrainConfig fields this version lacks: "
                         f"{sorted(set(VARIANTS[variant]) - set(changes))}")
    run_dir = root / f"{tag_of(variant)}-s{seed}"
    encoder = "minilm" if base.encoder == "offline" else Path(base.encoder).name
    return base.replace(**changes, seed=seed, run_dir=str(run_dir), out_dir=str(run_dir / "model"),
                        version=f"{base.dataset}-{encoder}-{tag_of(variant)}-s{seed}")


# fields added to TrainConfig later, with the value every run made before them had
_LEGACY = {"class_bias": False, "distill_from": "", "distill_weight": 0.5, "distill_temperature": 2.0,
           "init_from": "", "uniformity_ramp": 0.0, "scorer_warmup": 0.0,
           "weight_ema": 0.0, "max_extra_train": 0}


def comparable(cfg: TrainConfig | dict) -> dict:
    values = dataclasses.asdict(cfg) if isinstance(cfg, TrainConfig) else {**_LEGACY, **cfg}
    return json.loads(json.dumps({k: v for k, v in values.items() if k not in _BOOKKEEPING}, default=str))


def finished_run(cfg: TrainConfig, root: str | Path | None = None) -> tuple[str, dict] | None:
    """(model dir, metrics) of an earlier run of exactly this configuration: in its own directory, or under
    `root` by another variant name (a variant that equals the base, or a base that changed since)."""
    candidates = [Path(cfg.out_dir) / "metrics.json"]
    if root is not None:
        candidates += sorted(Path(root).glob("*/model/metrics.json"))
    wanted = comparable(cfg)
    for path in candidates:
        if path.is_file():
            metrics = json.loads(path.read_text())
            if comparable(metrics["reproducibility"]["config"]) == wanted:
                return str(path.parent), metrics
    return None


def run_study(base: TrainConfig, variants: list[str], seeds: list[int], root: str | Path,
              progress: bool = False, log=print, train_missing: bool = True, held_out: dict | None = None) -> dict:
    """Train (or read back) every variant × seed; returns the study document (see `summarise`).
    `train_missing=False` only reads back: a run not done yet is left out (and said so). `held_out`: name ->
    test samples no run trained or tuned on (training/held_out.py), scored as extra test sets of every run."""
    from affectstream.training.train import train

    root = Path(root)
    runs: dict[str, list[dict]] = {}
    for seed in seeds:  # seed-major: a study cut short still has every variant on its first seeds
        for variant in variants:
            cfg = variant_config(base, variant, seed, root)
            found = finished_run(cfg, root)
            if found is None and not train_missing:
                log(f"not done yet, left out: {variant!r} seed {seed}")
                continue
            if found is None:
                log(f"training {variant!r} seed {seed} -> {cfg.out_dir}")
                found = cfg.out_dir, train(cfg, progress=progress).metrics
            record = run_record(seed, found[0], found[1])
            if held_out:
                from affectstream.training.held_out import score_held_out

                record["test"].update(score_held_out(found[0], held_out))
            runs.setdefault(variant, []).append(record)
    return summarise(runs, base, seeds)


def run_record(seed: int, out_dir: str, metrics: dict) -> dict:
    return {"seed": seed, "out_dir": out_dir, "train_seconds": metrics.get("train_seconds"),
            "dev": metrics.get("dev_best", {}),
            "test": {name: {k: m[k] for k in METRICS} for name, m in metrics["test"].items()}}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: dict[str, list[dict]], base: TrainConfig, seeds: list[int], reference: str = "full") -> dict:
    """rows: mean ± sd per (variant, test set); paired: per-seed differences against `reference`."""
    rows, paired = [], []
    for variant, records in runs.items():
        for name in dict.fromkeys(n for r in records for n in r["test"]):
            scored = [r for r in records if name in r["test"]]
            row = {"variant": variant, "test set": name, "seeds": len(scored)}
            for metric in METRICS:
                row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd([r["test"][name][metric] for r in scored])
            row["dev_macro_f1_mean"] = statistics.fmean(r["dev"].get("metric", float("nan")) for r in scored)
            rows.append(row)
            if variant == reference or reference not in runs:
                continue
            ref = {r["seed"]: r["test"].get(name) for r in runs[reference]}
            diffs = [r["test"][name]["macro_f1"] - ref[r["seed"]]["macro_f1"] for r in scored if ref.get(r["seed"])]
            if diffs:
                mean, sd = mean_sd(diffs)
                paired.append({"variant": variant, "test set": name, "against": reference, "seeds": len(diffs),
                               "macro_f1_diff_mean": mean, "macro_f1_diff_sd": sd,
                               "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs),
                               "ties": sum(d == 0 for d in diffs)})
    present = sorted({r["seed"] for records in runs.values() for r in records})  # seeds left out are not claimed
    return {"base": comparable(base), "seeds": present, "variants": {v: VARIANTS.get(v, {}) for v in runs},
            "runs": runs, "rows": rows, "paired": paired}


def render(study: dict) -> str:
    """Plain-text tables: mean ± sd per variant and test set, then the paired per-seed differences."""
    from affectstream.training.evaluate import format_table

    def pm(row: dict, key: str) -> str:
        return f"{row[key + '_mean']:.4f} ± {row[key + '_sd']:.4f}"

    table = format_table([{"variant": r["variant"], "test set": r["test set"], "seeds": r["seeds"],
                           "accuracy": pm(r, "accuracy"), "macro-F1": pm(r, "macro_f1"),
                           "weighted-F1": pm(r, "weighted_f1"), "dev macro-F1": r["dev_macro_f1_mean"]}
                          for r in study["rows"]],
                         ["variant", "test set", "seeds", "accuracy", "macro-F1", "weighted-F1", "dev macro-F1"])
    seeds = ", ".join(map(str, study["seeds"]))
    out = f"mean ± sd over seeds {seeds} (sample sd)\n\n{table}"
    if study["paired"]:
        paired = format_table([{"variant": p["variant"], "test set": p["test set"], "seeds": p["seeds"],
                                "macro-F1 − full": f"{p['macro_f1_diff_mean']:+.4f} ± {p['macro_f1_diff_sd']:.4f}",
                                "wins/losses/ties": f"{p['wins']}/{p['losses']}/{p['ties']}"} for p in study["paired"]],
                              ["variant", "test set", "seeds", "macro-F1 − full", "wins/losses/ties"])
        out += f"\npaired per seed against the full method (same seed: same split, same test set)\n\n{paired}"
    return out


def save_study(study: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(study, indent=2, ensure_ascii=False, default=str))
    return path


SECTION = "Ablations over seeds"


def attach_to_model(out_dir: str | Path, study: dict) -> str:
    """Write the study's tables into a model's card.md (replacing an earlier section) and metrics.json
    ("ablations"); returns the tables."""
    from affectstream.training.card import attach_section

    tables = render(study)
    variants = "\n".join(f"- **{name}**: `{json.dumps(changes, ensure_ascii=False, default=str)}`"
                          for name, changes in study["variants"].items())
    body = (f"`affectstream ablate --seeds …`: within a seed every variant trains and is tested on the same split; "
            f"the seed draws both the initialisation and the stratified 8:1:1 split, so different seeds are also "
            f"different splits (and test sets). A variant is the full method's configuration with these changes:"
            f"\n\n{variants}\n\n```text\n{tables}```")
    attach_section(out_dir, SECTION, body, "ablations", {k: study[k] for k in ("seeds", "variants", "rows", "paired")})
    return tables
