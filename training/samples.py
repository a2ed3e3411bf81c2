"""The in-memory form every dataset loader returns, whatever the raw layout on disk."""
from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from affectstream.model.config import EMOTION_LABELS, SENTIMENT_LABELS
from affectstream.model.targets import TARGET_FORMAT, mark_target

SPLITS: tuple[str, ...] = ("train", "dev", "test")


@dataclass
class Sample:
    id: str
    text: str
    label: str  # one of SENTIMENT_LABELS
    split: str  # one of SPLITS
    image_path: str | None = None  # a file path, or None for text-only
    image_bytes: bytes | None = None  # generated images (proxy set); never together with image_path
    emotion: str | None = None  # one of EMOTION_LABELS when the dataset has it
    target: str | None = None  # target-level data: the label is the sentiment toward this target
    target_spans: tuple[tuple[int, int], ...] = ()  # where `target` is mentioned in `text` (() = not in it)

    def __post_init__(self) -> None:
        # Loaders build samples from untrusted files; catching a bad value here names the sample.
        if self.label not in SENTIMENT_LABELS:
            raise ValueError(f"sample {self.id!r}: label {self.label!r} not in {SENTIMENT_LABELS}")
        if self.split not in SPLITS:
            raise ValueError(f"sample {self.id!r}: split {self.split!r} not in {SPLITS}")
        if self.emotion is not None and self.emotion not in EMOTION_LABELS:
            raise ValueError(f"sample {self.id!r}: emotion {self.emotion!r} not in {EMOTION_LABELS}")
        if self.image_path is not None and self.image_bytes is not None:
            raise ValueError(f"sample {self.id!r}: give image_path or image_bytes, not both")

    def model_text(self, target_format: str = TARGET_FORMAT) -> str:
        """The text side the model reads: the post text, with the target marked when the sample has one
        (the same `mark_target` serving uses)."""
        if self.target is None:
            return self.text
        return mark_target(self.text, self.target, self.target_spans, target_format)

    @property
    def has_image(self) -> bool:
        return self.image_path is not None or self.image_bytes is not None


@dataclass
class Dataset:
    name: str
    samples: list[Sample]
    has_emotion: bool
    # reason -> count of raw records the loader dropped (e.g. "conflicting_labels", "missing_text").
    skipped: dict[str, int] = field(default_factory=dict)
    # reason -> count of records kept with a caveat (e.g. "missing_image" → kept text-only).
    notes: dict[str, int] = field(default_factory=dict)
    source: str = ""  # where the data came from (path, or archive + checksum)
    citation: str = ""
    kind: str = ""  # its row in training.datasets.KINDS; set by load_dataset

    def split(self, name: str) -> list[Sample]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return [s for s in self.samples if s.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """split -> label -> count, with every split and label present (zeros included)."""
        out = {sp: {lab: 0 for lab in SENTIMENT_LABELS} for sp in SPLITS}
        for s in self.samples:
            out[s.split][s.label] += 1
        return out

    def emotion_counts(self) -> dict[str, int]:
        return dict(Counter(s.emotion for s in self.samples if s.emotion is not None))

    def fingerprint(self) -> str:
        """sha256 over (id, label, split) of every sample, sorted by id: same data and split → same hash,
        whatever order the loader produced them in. Goes into metrics.json for reproducibility."""
        h = hashlib.sha256()
        for s in sorted(self.samples, key=lambda s: s.id):
            h.update(f"{s.id}\t{s.label}\t{s.split}\n".encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def summary(self) -> str:
        c = self.counts()
        parts = [f"{sp}: " + " ".join(f"{lab}={n}" for lab, n in c[sp].items()) for sp in SPLITS]
        line = f"{self.name}: {len(self.samples)} samples ({'; '.join(parts)})"
        if self.skipped:
            line += f"; skipped {dict(sorted(self.skipped.items()))}"
        return line


def decode_text(raw: bytes) -> str:
    """Bytes from a scraped text file → str, never raising.

    MVSA/MSED texts were scraped from Twitter/the web and are not reliably UTF-8: try UTF-8 (dropping a
    BOM), then cp1252 (the usual culprit: smart quotes from Windows tools), then latin-1, which maps every
    byte and so cannot fail.
    """
    for enc in ("utf-8-sig", "cp1252"):
        with contextlib.suppress(UnicodeDecodeError):
            return raw.decode(enc)
    return raw.decode("latin-1")


def bump(counter: dict[str, int], reason: str, by: int = 1) -> None:
    counter[reason] = counter.get(reason, 0) + by


class BadLine(ValueError):
    """A line of a line-based dataset file that cannot become a sample; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def skip_line(e: BadLine, path: str | Path, lineno: int, *, strict: bool, skipped: dict[str, int]) -> None:
    """A bad line: with ``strict`` an error naming the file and line, otherwise counted under its reason."""
    if strict:
        raise ValueError(f"{path}:{lineno}: {e} ({e.reason})") from None
    bump(skipped, e.reason)
