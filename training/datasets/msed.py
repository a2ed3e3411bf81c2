"""MSED (Jia et al., "Beyond Emotion: A Multi-Modal Dataset for Human Desire Understanding", NAACL 2022).

Raw layout::

    <root>/{train,dev,test}/{split}.csv   columns Title, Caption, Sentiment, Emotion, Desire,
                                          Inference Sequence (one post per row)
    <root>/{split}/images/{i}.jpg         the post image, i = 1-based data-row index in the CSV

Sentiment is one of positive/neutral/negative and emotion one of happiness/sad/neutral/disgust/anger/
fear (MSED publishes 6,127 train / 1,021 dev / 2,024 test posts). Values are normalised for case and
whitespace; a row with any other value is skipped with reason ``unknown_sentiment``/``unknown_emotion``.
The dataset's own splits are kept unless a split file is given.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from affectstream.model.config import EMOTION_LABELS, SENTIMENT_LABELS
from affectstream.training.samples import SPLITS, Dataset, Sample, bump, decode_text
from affectstream.training.splits import assign_splits

# Spellings seen in re-distributions of MSED; mapping them is cheaper than losing rows.
_EMOTION_ALIASES = {"happy": "happiness", "joy": "happiness", "sadness": "sad", "angry": "anger",
                    "disgusted": "disgust", "fearful": "fear", "afraid": "fear"}
_SPLIT_DIRS = {"train": ("train",), "dev": ("dev", "val", "valid", "validation"), "test": ("test",)}


def load_msed(root: str | Path, *, seed: int = 13, split_file: str | None = None) -> Dataset:
    base = Path(root)
    skipped: dict[str, int] = {}
    notes: dict[str, int] = {}
    samples: list[Sample] = []
    for split in SPLITS:
        split_dir = _split_dir(base, split)
        if split_dir is None:
            bump(notes, f"missing_split_{split}")
            continue
        samples.extend(_read_split(split_dir, split, skipped, notes))
    if not samples:
        raise FileNotFoundError(f"no MSED csv files under {base} (expected train/train.csv, ...)")
    fixed = {s.id for s in samples}  # MSED's own split, unless a split file overrides it
    samples = assign_splits(samples, seed=seed, split_file=split_file, fixed=fixed,
                            skipped=skipped, notes=notes)
    return Dataset(name="msed", samples=samples, has_emotion=True, skipped=skipped, notes=notes,
                   source=str(base))


def _split_dir(base: Path, split: str) -> Path | None:
    for name in _SPLIT_DIRS[split]:
        d = base / name
        if d.is_dir() and (d / f"{name}.csv").is_file():
            return d
    return None


def _read_split(split_dir: Path, split: str, skipped: dict[str, int],
                notes: dict[str, int]) -> list[Sample]:
    raw = decode_text((split_dir / f"{split_dir.name}.csv").read_bytes())
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    # Header cells vary in case and stray spaces ("Inference Sequence ").
    reader.fieldnames = [(f or "").strip().lower() for f in (reader.fieldnames or [])]
    missing = {"title", "caption", "sentiment", "emotion"} - set(reader.fieldnames)
    if missing:
        raise ValueError(f"{split_dir.name}.csv lacks columns {sorted(missing)}")
    out: list[Sample] = []
    for i, row in enumerate(reader, start=1):  # i matches images/{i}.jpg even when a row is skipped
        sample = _row_to_sample(row, i, split, split_dir, skipped, notes)
        if sample is not None:
            out.append(sample)
    return out


def _row_to_sample(row: dict[str, str | None], i: int, split: str, split_dir: Path,
                   skipped: dict[str, int], notes: dict[str, int]) -> Sample | None:
    sentiment = _norm(row.get("sentiment"))
    if sentiment not in SENTIMENT_LABELS:
        bump(skipped, "unknown_sentiment")
        return None
    emotion = _norm(row.get("emotion"))
    emotion = _EMOTION_ALIASES.get(emotion, emotion)
    if emotion not in EMOTION_LABELS:
        bump(skipped, "unknown_emotion")
        return None
    image = split_dir / "images" / f"{i}.jpg"
    if not image.is_file():
        bump(notes, "missing_image")
    return Sample(id=f"{split}-{i}", text=join_title_caption(row.get("title"), row.get("caption")),
                  label=sentiment, split=split, emotion=emotion,
                  image_path=str(image) if image.is_file() else None)


def _norm(value: str | None) -> str:
    return " ".join((value or "").split()).lower()


def join_title_caption(title: str | None, caption: str | None) -> str:
    """"Title. Caption", without doubling a title the caption already starts with or a final stop."""
    t, c = " ".join((title or "").split()), " ".join((caption or "").split())
    if not t or c.lower().startswith(t.lower()):
        return c
    if not c or t.lower() == c.lower():
        return t
    sep = " " if t[-1] in ".!?:;,-" else ". "
    return f"{t}{sep}{c}"
