"""Scores on data a study never trained or tuned on: `affectstream ablate --held-out twitter2015=PATH`.

Every run of a study chooses its epoch and class bias on its own dev split and is scored on its own test
split; a held-out set (e.g. the Twitter-2015/2017 target-level test sets) is data none of them saw, so it
shows whether a difference between variants carries over or was fitted to VADER. Target samples go through
`predict_targets`, as the classify stage sends brand targets (a model that is not target-aware answers each
with its post-level label). Scores are cached next to each run's model (`held_out.json`), keyed by the
set's fingerprint and the model's weights hash, so a study read back again does not re-score.
"""
from __future__ import annotations

import json
from pathlib import Path

from affectstream.model.config import SENTIMENT_LABELS
from affectstream.training.samples import Dataset, Sample

CACHE_FILE = "held_out.json"
METRICS = ("accuracy", "macro_f1", "weighted_f1")


def parse_held_out(specs: tuple[str, ...]) -> dict[str, list[Sample]]:
    """"kind=PATH" (or a kind that is fetched) -> {"<kind>-test": the set's test samples}."""
    from affectstream.training.datasets import load_dataset

    sets = {}
    for spec in specs:
        kind, _, path = spec.partition("=")
        dataset: Dataset = load_dataset(kind.strip(), path.strip() or None)
        test = dataset.split("test")
        if not test:
            raise ValueError(f"held-out set {spec!r} has no test split")
        sets[f"{kind.strip()}-test (held out)"] = test
    return sets


def fingerprint(samples: list[Sample]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for s in samples:
        digest.update(f"{s.id}\t{s.label}\t{s.target or ''}\n".encode())
    return digest.hexdigest()[:16]


def score_held_out(model_dir: str | Path, sets: dict[str, list[Sample]]) -> dict[str, dict[str, float]]:
    """{set name: accuracy / macro_f1 / weighted_f1} of the deployed directory on each held-out set, served
    as the torch backend serves it."""
    from affectstream.model.onnx_export import weights_hash

    model_dir = Path(model_dir)
    cache_path = model_dir / CACHE_FILE
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    weights = weights_hash(model_dir)
    out, predictor = {}, None
    for name, samples in sets.items():
        key = f"{name}|{fingerprint(samples)}|{weights}"
        if key not in cache:
            predictor = predictor or _predictor(model_dir)
            cache[key] = _score(predictor, samples)
        out[name] = cache[key]
    if predictor is not None:
        cache_path.write_text(json.dumps(cache, indent=2))
    return out


def _predictor(model_dir: Path):
    from affectstream.model.predictor import BatchPredictor

    return BatchPredictor.from_directory(model_dir, device="cpu")


def _score(predictor, samples: list[Sample]) -> dict[str, float]:
    from affectstream.training.evaluate import classification_metrics
    from affectstream.training.int8_gate import predict_labels

    labels = tuple(predictor.config.sentiment_labels) or SENTIMENT_LABELS
    metrics = classification_metrics([s.label for s in samples], predict_labels(predictor, samples), labels)
    return {k: metrics[k] for k in METRICS}
