"""Train/dev/test assignment: a seeded stratified split, or a split file given by the user.

Split files (any kind of dataset):
- CLMLF style: a directory holding ``train.json``, ``dev.json`` (or ``valid.json``/``val.json``) and
  ``test.json``, each a list of ``{"id", "text", "emotion_label"}`` with 0=positive, 1=neutral, 2=negative
  (the MVSA splits published with CLMLF, Li et al., NAACL 2022). A path to one of those files means its
  directory.
- A single JSON object ``{"train": [...], "dev": [...], "test": [...]}`` whose items are ids or objects
  as above.
"""
from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from affectstream.model.config import SENTIMENT_LABELS
from affectstream.training.samples import Sample, bump

# CLMLF's integer labels ("emotion_label" in their JSON files).
CLMLF_LABELS: dict[int, str] = {0: "positive", 1: "neutral", 2: "negative"}
_SPLIT_ALIASES = {"train": "train", "dev": "dev", "valid": "dev", "val": "dev", "validation": "dev",
                  "test": "test"}


def stratified_split(ids_labels: Iterable[tuple[str, str]], seed: int,
                     ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, str]:
    """id -> "train" | "dev" | "test", keeping each label's proportions in every split.

    Deterministic in (set of ids, labels, seed): ids are sorted before the seeded shuffle, so the order
    a loader reads files in (directory listing order differs between machines) cannot change the split.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers, got {ratios}")
    total = sum(ratios)
    by_label: dict[str, list[str]] = defaultdict(list)
    for id_, label in ids_labels:
        by_label[label].append(id_)
    out: dict[str, str] = {}
    for label in sorted(by_label):
        ids = sorted(set(by_label[label]))
        # A string seed is hashed with sha512 by `random`, so this is stable across processes and
        # platforms (unlike hash()); one stream per label keeps classes independent.
        random.Random(f"{seed}:{label}").shuffle(ids)
        n = len(ids)
        cut_train = int(n * ratios[0] / total + 0.5)
        cut_dev = int(n * (ratios[0] + ratios[1]) / total + 0.5)
        for i, id_ in enumerate(ids):
            out[id_] = "train" if i < cut_train else "dev" if i < cut_dev else "test"
    return out


@dataclass
class SplitFile:
    path: str
    assign: dict[str, str] = field(default_factory=dict)  # id -> split
    labels: dict[str, str] = field(default_factory=dict)  # id -> sentiment, when the file gives one
    texts: dict[str, str] = field(default_factory=dict)  # id -> text, when the file gives one


def load_split_file(path: str | Path) -> SplitFile:
    p = Path(path)
    if p.is_file() and p.stem.lower() in _SPLIT_ALIASES and p.suffix == ".json":
        p = p.parent  # one of the CLMLF files: its siblings are the other splits
    out = SplitFile(path=str(p))
    if p.is_dir():
        found = False
        for stem, split in _SPLIT_ALIASES.items():
            f = p / f"{stem}.json"
            if f.is_file():
                found = True
                _add_items(out, split, _read_json(f), f)
        if not found:
            raise ValueError(f"split directory {p} holds none of train.json/dev.json/test.json")
        return out
    if not p.is_file():
        raise FileNotFoundError(f"split file {p} does not exist")
    data = _read_json(p)
    if not isinstance(data, dict):
        raise ValueError(f"split file {p}: expected an object {{train, dev, test}} or a CLMLF directory")
    for key, items in data.items():
        split = _SPLIT_ALIASES.get(str(key).lower())
        if split is None:
            raise ValueError(f"split file {p}: unknown split {key!r}")
        _add_items(out, split, items, p)
    return out


def _read_json(path: Path) -> object:
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise ValueError(f"split file {path}: invalid JSON ({e})") from e


def _add_items(out: SplitFile, split: str, items: object, src: Path) -> None:
    if not isinstance(items, list):
        raise ValueError(f"split file {src}: {split} must be a list")
    for n, item in enumerate(items):
        if isinstance(item, dict):
            id_ = _norm_id(item.get("id"), src, n)
            lab = item.get("emotion_label", item.get("label"))
            if lab is not None:
                out.labels[id_] = _norm_label(lab, src, n)
            if isinstance(item.get("text"), str):
                out.texts[id_] = item["text"]
        else:
            id_ = _norm_id(item, src, n)
        if out.assign.get(id_, split) != split:
            raise ValueError(f"split file {src}: id {id_} is in both {out.assign[id_]} and {split}")
        out.assign[id_] = split


def _norm_id(value: object, src: Path, n: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or str(value).strip() == "":
        raise ValueError(f"split file {src}: item {n} has no usable id ({value!r})")
    return str(value).strip()


def _norm_label(value: object, src: Path, n: int) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value in CLMLF_LABELS:
        return CLMLF_LABELS[value]
    if isinstance(value, str) and value.strip().lower() in SENTIMENT_LABELS:
        return value.strip().lower()
    raise ValueError(f"split file {src}: item {n} has label {value!r}; expected 0/1/2 or a sentiment name")


def assign_splits(samples: list[Sample], *, seed: int, split_file: str | SplitFile | None = None,
                  fixed: Collection[str] = (), skipped: dict[str, int] | None = None,
                  notes: dict[str, int] | None = None) -> list[Sample]:
    """Give every sample its split and return the kept ones.

    With a split file, it decides alone: samples it does not name are dropped (``not_in_split_file``) and
    its label wins over the loader's (benchmark numbers are comparable only on the benchmark's labels).
    Without one, samples whose id is in ``fixed`` keep the split they came with; the rest are split
    stratified with ``seed``.
    """
    skipped = {} if skipped is None else skipped
    notes = {} if notes is None else notes
    if split_file is not None:
        sf = split_file if isinstance(split_file, SplitFile) else load_split_file(split_file)
        return _apply_split_file(samples, sf, skipped, notes)
    fixed = set(fixed)
    todo = [(s.id, s.label) for s in samples if s.id not in fixed]
    assign = stratified_split(todo, seed)
    return [s if s.id in fixed else dataclasses.replace(s, split=assign[s.id]) for s in samples]


def _apply_split_file(samples: list[Sample], sf: SplitFile, skipped: dict[str, int],
                      notes: dict[str, int]) -> list[Sample]:
    kept: list[Sample] = []
    for s in samples:
        split = sf.assign.get(s.id)
        if split is None:
            bump(skipped, "not_in_split_file")
            continue
        label = sf.labels.get(s.id, s.label)
        if label != s.label:
            bump(notes, "label_from_split_file")
        kept.append(dataclasses.replace(s, split=split, label=label))
    missing = len(set(sf.assign) - {s.id for s in samples})
    if missing:
        notes["split_file_ids_not_in_data"] = missing
    return kept
