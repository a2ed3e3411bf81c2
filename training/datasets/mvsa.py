"""MVSA-Single and MVSA-Multiple (Niu et al., "Sentiment Analysis on Multi-view Social Data", MMM 2016).

Raw layout (as distributed)::

    <root>/labelResultAll.txt   header line, then  ID<TAB>text_label,image_label
                                (MVSA-Multiple: three tab-separated annotator pairs per line)
    <root>/data/{ID}.txt        the tweet text (not reliably UTF-8)
    <root>/data/{ID}.jpg        the tweet image (some are truncated; kept, decoded later)

Cleaning, the standard one used by MVAN and CLMLF:

1. MVSA-Multiple only: per modality keep a label when at least 2 of the 3 annotators agree, else drop
   the post (``no_text_agreement`` / ``no_image_agreement``). The parser generalises this to a strict
   majority of however many pairs the line has, which for one pair (MVSA-Single) is that pair.
2. Per post: equal text and image labels → that label; one neutral → the other one; positive against
   negative → drop (``conflicting_labels``).

Counts after cleaning, as reported by CLMLF (Li et al., NAACL 2022) and MVAN (Yang et al., 2020):
MVSA-Single 4,511 posts (2,683 positive / 470 neutral / 1,358 negative); MVSA-Multiple 17,024 posts
(11,318 positive / 4,408 neutral / 1,298 negative). A post whose text file is missing is skipped
(``missing_text``); a missing image keeps the post text-only (note ``missing_image``).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from affectstream.model.config import SENTIMENT_LABELS
from affectstream.training.samples import Dataset, Sample, bump, decode_text
from affectstream.training.splits import SplitFile, assign_splits, load_split_file

LABEL_FILE = "labelResultAll.txt"
# Ids become file names (data/{ID}.txt): a strict pattern keeps "../x" out of the path.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COMMA_RE = re.compile(r"\s*,\s*")
# Reasons the cleaning rules (not a broken file) reject a post: a split file's label may overrule them.
CLEANING_REASONS = frozenset({"no_text_agreement", "no_image_agreement", "conflicting_labels"})


@dataclass(frozen=True)
class LabelLine:
    id: str
    label: str  # the post's label after cleaning
    text_label: str
    image_label: str


@dataclass(frozen=True)
class Rejected:
    reason: str
    id: str | None = None


def parse_label_line(line: str, annotators: int | None = None) -> LabelLine | Rejected:
    """One line of labelResultAll.txt → the cleaned label, or the reason it yields none. Never raises."""
    fields = _COMMA_RE.sub(",", line.strip()).split()
    if not fields:
        return Rejected("blank")
    id_, pairs = fields[0], fields[1:]
    if id_.lower() == "id":
        return Rejected("header")
    if not _ID_RE.fullmatch(id_):
        return Rejected("bad_id")
    if not pairs:
        return Rejected("malformed", id_)
    if annotators is not None and len(pairs) != annotators:
        return Rejected("wrong_annotator_count", id_)
    split_pairs = [p.lower().split(",") for p in pairs]
    if any(len(p) != 2 for p in split_pairs):
        return Rejected("malformed", id_)
    if any(lab not in SENTIMENT_LABELS for p in split_pairs for lab in p):
        return Rejected("unknown_label", id_)
    text_label = _majority([p[0] for p in split_pairs])
    if text_label is None:
        return Rejected("no_text_agreement", id_)
    image_label = _majority([p[1] for p in split_pairs])
    if image_label is None:
        return Rejected("no_image_agreement", id_)
    label = combine_labels(text_label, image_label)
    if label is None:
        return Rejected("conflicting_labels", id_)
    return LabelLine(id_, label, text_label, image_label)


def _majority(labels: list[str]) -> str | None:
    """The label more than half the annotators gave (>= 2 of 3), else None."""
    label, n = Counter(labels).most_common(1)[0]
    return label if 2 * n > len(labels) else None


def combine_labels(text_label: str, image_label: str) -> str | None:
    if text_label == image_label:
        return text_label
    if text_label == "neutral":
        return image_label
    if image_label == "neutral":
        return text_label
    return None  # positive vs negative: the post's sentiment is ambiguous


def load_mvsa(root: str | Path, *, multiple: bool, seed: int = 13,
              split_file: str | None = None) -> Dataset:
    base = _find_root(Path(root))
    name = "mvsa-multiple" if multiple else "mvsa-single"
    sf: SplitFile | None = load_split_file(split_file) if split_file else None
    skipped: dict[str, int] = {}
    notes: dict[str, int] = {}
    samples: list[Sample] = []
    seen: set[str] = set()
    lines = decode_text((base / LABEL_FILE).read_bytes()).splitlines()
    for line in lines:
        parsed = parse_label_line(line, annotators=3 if multiple else 1)
        label = _label_or_none(parsed, sf, skipped, notes)
        if label is None:
            continue
        id_ = parsed.id
        assert id_ is not None
        if id_ in seen:
            bump(skipped, "duplicate_id")
            continue
        seen.add(id_)
        sample = _read_post(base, id_, label, sf, skipped, notes)
        if sample is not None:
            samples.append(sample)
    samples = assign_splits(samples, seed=seed, split_file=sf, skipped=skipped, notes=notes)
    return Dataset(name=name, samples=samples, has_emotion=False, skipped=skipped, notes=notes,
                   source=str(base))


def _label_or_none(parsed: LabelLine | Rejected, sf: SplitFile | None, skipped: dict[str, int],
                   notes: dict[str, int]) -> str | None:
    if isinstance(parsed, LabelLine):
        return parsed.label
    if parsed.reason in ("header", "blank"):
        return None
    if sf is not None and parsed.reason in CLEANING_REASONS and parsed.id in sf.labels:
        # The benchmark split labels this post although our cleaning would drop it: follow the split.
        bump(notes, "kept_by_split_file")
        return sf.labels[parsed.id]
    bump(skipped, parsed.reason)
    return None


def _read_post(base: Path, id_: str, label: str, sf: SplitFile | None, skipped: dict[str, int],
               notes: dict[str, int]) -> Sample | None:
    text_path = base / "data" / f"{id_}.txt"
    if text_path.is_file():
        text = " ".join(decode_text(text_path.read_bytes()).split())
    elif sf is not None and id_ in sf.texts:
        text = sf.texts[id_]
        bump(notes, "text_from_split_file")
    else:
        bump(skipped, "missing_text")
        return None
    image_path = base / "data" / f"{id_}.jpg"
    if not image_path.is_file():
        bump(notes, "missing_image")
    return Sample(id=id_, text=text, label=label, split="train",
                  image_path=str(image_path) if image_path.is_file() else None)


def _find_root(root: Path) -> Path:
    """The directory holding labelResultAll.txt: ``root`` itself or one level down (archives unpack to
    ``MVSA_Single/`` inside the folder the user names)."""
    if (root / LABEL_FILE).is_file():
        return root
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if (child / LABEL_FILE).is_file():
                return child
    raise FileNotFoundError(f"no {LABEL_FILE} in {root} or its subdirectories")
