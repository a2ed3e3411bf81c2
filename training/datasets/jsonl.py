"""Generic JSONL: one post per line, for data of your own.

    {"id": "p1", "text": "love it", "image": "imgs/p1.jpg", "label": "positive",
     "emotion": "happiness", "split": "train"}

``image`` (optional) is a path relative to the JSONL file's directory (absolute paths are kept);
``emotion`` (optional) is one of the MSED emotions; ``split`` (optional) is train/dev/test (``val`` and
``valid`` mean dev). Lines without a split are split stratified with the seed. The dataset has an
emotion head (``has_emotion``) only when every sample carries an emotion.

A bad line raises ValueError naming its line number; with ``strict=False`` it is skipped and counted
under its reason instead.
"""
from __future__ import annotations

from pathlib import Path

import orjson

from affectstream.model.config import EMOTION_LABELS, SENTIMENT_LABELS
from affectstream.training.samples import BadLine, Dataset, Sample, bump, skip_line
from affectstream.training.splits import assign_splits

_SPLIT_ALIASES = {"train": "train", "dev": "dev", "val": "dev", "valid": "dev", "validation": "dev",
                  "test": "test"}


def load_jsonl(path: str | Path, *, seed: int = 13, split_file: str | None = None,
               strict: bool = True) -> Dataset:
    p = Path(path)
    skipped: dict[str, int] = {}
    notes: dict[str, int] = {}
    samples: list[Sample] = []
    fixed: set[str] = set()
    seen: set[str] = set()
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                sample, has_split = parse_jsonl_line(raw, p.parent)
                if sample.id in seen:
                    raise BadLine("duplicate_id", f"id {sample.id!r} appears twice")
            except BadLine as e:
                skip_line(e, p, lineno, strict=strict, skipped=skipped)
                continue
            seen.add(sample.id)
            if has_split:
                fixed.add(sample.id)
            if sample.image_path is not None and not Path(sample.image_path).is_file():
                bump(notes, "missing_image")  # kept: decoding fails later and the post goes text-only
            samples.append(sample)
    samples = assign_splits(samples, seed=seed, split_file=split_file, fixed=fixed,
                            skipped=skipped, notes=notes)
    has_emotion = bool(samples) and all(s.emotion is not None for s in samples)
    return Dataset(name=p.stem, samples=samples, has_emotion=has_emotion, skipped=skipped, notes=notes,
                   source=str(p))


def parse_jsonl_line(raw: bytes | str, base_dir: Path) -> tuple[Sample, bool]:
    """One JSONL line → (sample, whether the line fixed its split). Raises BadLine with a reason."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadLine("invalid_json", f"not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadLine("not_an_object", "line is not a JSON object")
    id_ = obj.get("id")
    if isinstance(id_, bool) or not isinstance(id_, (str, int)) or not str(id_).strip():
        raise BadLine("missing_id", "missing or empty 'id'")
    text = obj.get("text", "")
    if not isinstance(text, str):
        raise BadLine("bad_text", "'text' must be a string")
    label = obj.get("label")
    if not isinstance(label, str) or label.strip().lower() not in SENTIMENT_LABELS:
        raise BadLine("bad_label", f"'label' must be one of {SENTIMENT_LABELS}, got {label!r}")
    return Sample(id=str(id_).strip(), text=text, label=label.strip().lower(),
                  split=_split_of(obj) or "train", image_path=_image_of(obj, base_dir),
                  emotion=_emotion_of(obj)), _split_of(obj) is not None


def _split_of(obj: dict) -> str | None:
    return _choice_of(obj, "split", _SPLIT_ALIASES, "bad_split", "train/dev/test")


def _emotion_of(obj: dict) -> str | None:
    return _choice_of(obj, "emotion", {e: e for e in EMOTION_LABELS}, "bad_emotion", f"one of {EMOTION_LABELS}")


def _choice_of(obj: dict, name: str, allowed: dict[str, str], reason: str, expected: str) -> str | None:
    """An optional field that must be one of ``allowed`` (case-insensitive), mapped to its canonical name."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or value.strip().lower() not in allowed:
        raise BadLine(reason, f"'{name}' must be {expected}, got {value!r}")
    return allowed[value.strip().lower()]


def _image_of(obj: dict, base_dir: Path) -> str | None:
    image = obj.get("image")
    if image is None or image == "":
        return None
    if not isinstance(image, str):
        raise BadLine("bad_image", "'image' must be a path string")
    return str(base_dir / image)  # an absolute `image` replaces base_dir, as pathlib joins
