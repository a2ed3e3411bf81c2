"""Target-level sentences in the three-line format: Dong et al. 2014 Twitter, MAMS, SemEval-2014 laptops and
restaurants, as kept in the ABSADatasets repository (yangheng95/ABSADatasets, ``datasets/apc_datasets/``).

Format (one record = three lines, no header, no blank lines between records)::

    the sentence with the target replaced by $T$   (every $T$ is the target)
    the target
    the polarity: Negative / Neutral / Positive, or -1 / 0 / 1 (Dong et al.'s readme), any case

A sentence with several targets is several consecutive records, one per target. Each becomes a sample
whose text is the sentence with the target put back and whose ``target_spans`` say where
(``model.targets.from_placeholder``), as for the TomBERT tweets. Ids name the sentence:
``<set>:<file>:s<sentence>:t<target>`` (1-based, ``<file>`` the split of the file the record came from),
so the targets of one sentence can be grouped (``training.contrast.sentence_key``). Consecutive records
are one sentence when their texts agree up to case, spacing and punctuation: the releases re-tokenise
some targets (``"sales" team`` for the sentence's ````` sales '' team``).

Splits: MAMS ships train/valid/test and they are kept. Dong et al. and SemEval ship train/test only: a
dev split of one tenth of the train *sentences* is carved deterministically by ``seed``, stratified by the
set of labels a sentence holds (so mixed-polarity sentences are spread evenly), with every copy of a
repeated sentence on the same side.

Bad records are skipped and counted in ``Dataset.skipped`` by reason (``bad_label``,
``missing_placeholder``: no ``$T$`` in the sentence, ``empty_target``, ``truncated``: a record cut short,
recognised when the next record's ``$T$`` sentence turns up inside it, or the file ends); ``strict=True``
raises ``ValueError`` naming the file and the record's first line instead. A file that is not UTF-8 is
decoded as cp1252/latin-1 and noted as ``not_utf8``; a sentence whose text repeats an earlier one of the
same set is kept and noted as ``repeated_sentence``. docs/target-data.md has the counts.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from affectstream.model.targets import from_placeholder
from affectstream.training.samples import BadLine, Dataset, Sample, bump, decode_text, skip_line
from affectstream.training.splits import stratified_split

PLACEHOLDER = "$T$"
LABELS = {"-1": "negative", "0": "neutral", "1": "positive",
          "negative": "negative", "neutral": "neutral", "positive": "positive"}
DEV_SHARE = 0.1           # of the train sentences, where a set has no dev split of its own


@dataclass(frozen=True)
class AbsaSet:
    files: dict[str, str]            # split -> file name in the set's folder ("dev" absent: carved from train)
    hint: str                        # a word in the set's folder path, to find it under a parent folder
    citation: str


SETS: dict[str, AbsaSet] = {
    "dong2014": AbsaSet({"train": "train.raw", "test": "test.raw"}, "acl", (
        "L. Dong, F. Wei, C. Tan, D. Tang, M. Zhou, K. Xu. Adaptive Recursive Neural Network for "
        "Target-dependent Twitter Sentiment Classification. ACL 2014.")),
    "mams": AbsaSet({"train": "train.xml.dat", "dev": "valid.xml.dat", "test": "test.xml.dat"}, "mams", (
        "Q. Jiang, L. Chen, R. Xu, X. Ao, M. Yang. A Challenge Dataset and Effective Models for Aspect-Based "
        "Sentiment Analysis. EMNLP-IJCNLP 2019.")),
    "laptop14": AbsaSet({"train": "Laptops_Train.xml.seg", "test": "Laptops_Test_Gold.xml.seg"}, "laptop", (
        "M. Pontiki, D. Galanis, J. Pavlopoulos, H. Papageorgiou, I. Androutsopoulos, S. Manandhar. "
        "SemEval-2014 Task 4: Aspect Based Sentiment Analysis. SemEval 2014 (laptops).")),
    "restaurant14": AbsaSet({"train": "Restaurants_Train.xml.seg", "test": "Restaurants_Test_Gold.xml.seg"},
                            "restaurant", (
        "M. Pontiki, D. Galanis, J. Pavlopoulos, H. Papageorgiou, I. Androutsopoulos, S. Manandhar. "
        "SemEval-2014 Task 4: Aspect Based Sentiment Analysis. SemEval 2014 (restaurants).")),
}
SOURCE = "Files from the ABSADatasets repository (yangheng95/ABSADatasets, MIT; each set keeps its authors' terms)."


@dataclass(frozen=True)
class Record:
    lineno: int                                # the record's first line in its file
    text: str                                  # the sentence with the target put back
    target: str
    spans: tuple[tuple[int, int], ...]         # where the target is in `text`
    label: str                                 # one of SENTIMENT_LABELS


def put_back(sentence: str, target: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The sentence with the target in place of every ``$T$``, and its spans; BadLine when there is no
    target or no placeholder to put it in."""
    if not target:
        raise BadLine("empty_target", "empty target")
    if PLACEHOLDER not in sentence:
        raise BadLine("missing_placeholder", f"the sentence has no {PLACEHOLDER} where the target was")
    return from_placeholder(sentence, target, PLACEHOLDER)


def parse_record(sentence: str, target: str, polarity: str) -> tuple[str, str, tuple[tuple[int, int], ...], str]:
    """One complete record's three lines → (text, target, spans, label), or BadLine with a reason."""
    target = target.strip()
    label = LABELS.get(polarity.strip().lower())
    if label is None:
        raise BadLine("bad_label", f"polarity must be one of {sorted(LABELS)} (any case), got {polarity[:40]!r}")
    text, spans = put_back(sentence.strip(), target)
    return text, target, spans, label


def parse_records(text: str) -> Iterator[tuple[int, Record | BadLine]]:
    """Every record of a file's text, in order: (first line number, Record or BadLine). Never raises.

    Blank lines are ignored. A record whose target or polarity line holds ``$T$`` was cut short (the next
    record's sentence came early): it is reported ``truncated`` and reading resumes at that sentence, so
    one lost line costs one record, not the rest of the file.
    """
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    pos = 0
    while pos < len(lines):
        chunk = lines[pos:pos + 3]
        lineno = chunk[0][0]
        if len(chunk) < 3:
            yield lineno, BadLine("truncated", f"the file ends inside a record ({len(chunk)} of 3 lines)")
            return
        early = next((i for i in (1, 2) if PLACEHOLDER in chunk[i][1]), None)
        if early is not None:
            yield lineno, BadLine("truncated", f"a record of {early} lines: the next sentence starts at line "
                                               f"{chunk[early][0]}")
            pos += early
            continue
        pos += 3
        try:
            yield lineno, Record(lineno, *parse_record(*(line for _, line in chunk)))
        except BadLine as e:
            yield lineno, e


def sentence_text_key(text: str) -> str:
    """What two records of one sentence share: the text without case, spacing or punctuation."""
    key = re.sub(r"[\W_]+", "", text.casefold())
    return key or text


def group_sentences(records: list[Record]) -> list[list[Record]]:
    """Consecutive records of the same sentence, together."""
    groups: list[list[Record]] = []
    for record in records:
        if groups and sentence_text_key(groups[-1][0].text) == sentence_text_key(record.text):
            groups[-1].append(record)
        else:
            groups.append([record])
    return groups


def read_file(path: Path, *, strict: bool, skipped: dict[str, int], notes: dict[str, int]) -> list[list[Record]]:
    """A file's sentences (each a list of its targets' records); bad records skipped or, strict, raised."""
    records: list[Record] = []
    for lineno, item in parse_records(read_text(path, notes)):
        if isinstance(item, BadLine):
            skip_line(item, path, lineno, strict=strict, skipped=skipped)
        else:
            records.append(item)
    return group_sentences(records)


def read_text(path: Path, notes: dict[str, int]) -> str:
    """The file's text, whatever its encoding; one that is not UTF-8 is noted."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        bump(notes, "not_utf8")
        return decode_text(raw)


def to_samples(name: str, file_split: str, sentences: list[list[Record]]) -> list[Sample]:
    return [Sample(id=f"{name}:{file_split}:s{s}:t{t}", text=r.text, label=r.label, split=file_split,
                   target=r.target, target_spans=r.spans)
            for s, sentence in enumerate(sentences, start=1) for t, r in enumerate(sentence, start=1)]


def carve_dev(samples: list[Sample], seed: int) -> list[Sample]:
    """Train samples → train and dev, one tenth of the sentences to dev, stratified by a sentence's label set.

    The unit is the sentence's text, so targets of one sentence, and repeated copies of it, stay together."""
    units: dict[str, set[str]] = {}
    for s in samples:
        units.setdefault(sentence_text_key(s.text), set()).add(s.label)
    assign = stratified_split(((key, "+".join(sorted(labels))) for key, labels in units.items()), seed,
                              ratios=(1 - DEV_SHARE, DEV_SHARE, 0.0))
    return [dataclasses.replace(s, split=assign[sentence_text_key(s.text)]) for s in samples]


def find_set_dir(root: Path, name: str) -> Path:
    """The folder holding the set's files: ``root`` itself, or the one folder below it (the repository, or
    ``apc_datasets/``) that holds them and whose path names the set."""
    spec = SETS[name]
    root = root.parent if root.is_file() else root   # the path of one of its files names its folder
    if all((root / f).is_file() for f in spec.files.values()):
        return root
    found = sorted({p.parent for p in root.rglob(spec.files["train"])
                    if spec.hint in str(p.parent.relative_to(root)).lower()
                    and all((p.parent / f).is_file() for f in spec.files.values())})
    if len(found) != 1:
        what = "no folder" if not found else f"{len(found)} folders ({', '.join(map(str, found))})"
        raise FileNotFoundError(f"{name}: {what} under {root} with {', '.join(spec.files.values())}; "
                                f"pass the folder that holds them")
    return found[0]


def note_repeats(sentences: list[list[Record]], seen: set[str], notes: dict[str, int]) -> None:
    """Count sentences whose text an earlier sentence of the set (any split) already had."""
    for sentence in sentences:
        key = sentence_text_key(sentence[0].text)
        if key in seen:
            bump(notes, "repeated_sentence")
        seen.add(key)


def load_absa(root: str | Path, *, name: str, seed: int = 13, split_file: str | None = None,
              strict: bool = False) -> Dataset:
    """``root``: the set's folder, or a folder above it. ``seed`` chooses the carved dev split where the set
    has none; ``split_file`` is refused (a per-target file could put one sentence on both sides)."""
    if name not in SETS:
        raise ValueError(f"unknown target-level set {name!r}; expected one of {tuple(SETS)}")
    if split_file:
        raise ValueError(f"{name}: the release's train/test split (and a dev split carved by seed) is used; "
                         f"a split file is not supported")
    base = find_set_dir(Path(root), name)
    spec = SETS[name]
    skipped: dict[str, int] = {}
    notes: dict[str, int] = {}
    samples: list[Sample] = []
    seen: set[str] = set()
    for split, file_name in spec.files.items():
        sentences = read_file(base / file_name, strict=strict, skipped=skipped, notes=notes)
        note_repeats(sentences, seen, notes)
        part = to_samples(name, split, sentences)
        samples += carve_dev(part, seed) if split == "train" and "dev" not in spec.files else part
    if not samples:
        raise ValueError(f"{name}: no usable records under {base} (skipped: {skipped})")
    return Dataset(name=name, samples=samples, has_emotion=False, skipped=skipped, notes=notes, source=str(base),
                   citation=f"{spec.citation} {SOURCE}")
