"""Target-level tweets: Twitter-2015 (Zhang et al., AAAI 2018) and Twitter-2017 (Lu et al., ACL 2018) as
released with TomBERT (Yu & Jiang, IJCAI 2019; repository jefferyYu/TomBERT, ``absa_data/``).

Layout::

    <root>/{train,dev,test}.tsv     tab-separated, a header line, no quoting:
                                    index, label (0 negative, 1 neutral, 2 positive), image id,
                                    the tweet with the target replaced by ``$T$``, the target
    <root>/images/<image id>        optional: when present the tweet gets its image (and a description)

One line per (tweet, target): a tweet with two targets is two samples with the same text and different
targets and labels. Each sample's text is the tweet with the target put back, and ``target_spans`` say
where (``model.targets.from_placeholder``), so training marks it with the same ``mark_target`` as serving.

Bad lines are skipped and counted in ``Dataset.skipped`` by reason (``malformed``: not 5 columns,
``bad_label``, ``missing_placeholder``: no ``$T$`` in the tweet, ``empty_target``, ``empty_text``,
``duplicate_id``); ``strict=True`` raises ``ValueError`` naming the file and line instead. A file that is
not UTF-8 is decoded as cp1252/latin-1 (``decode_text``) and noted as ``not_utf8``. The dataset's own
splits are kept.
"""
from __future__ import annotations

from pathlib import Path

from affectstream.model.targets import from_placeholder
from affectstream.training.samples import SPLITS, BadLine, Dataset, Sample, bump, decode_text, skip_line

PLACEHOLDER = "$T$"
LABELS = {"0": "negative", "1": "neutral", "2": "positive"}
CITATIONS = {
    "twitter2015": "Q. Zhang, J. Fu, X. Liu, X. Huang. Adaptive Co-attention Network for Named Entity Recognition "
                   "in Tweets. AAAI 2018.",
    "twitter2017": "D. Lu, L. Neves, V. Carvalho, N. Zhang, H. Ji. Visual Attention Model for Name Tagging in "
                   "Multimodal Social Media. ACL 2018.",
}
TOMBERT = ("J. Yu, J. Jiang. Adapting BERT for Target-Oriented Multimodal Sentiment Classification. IJCAI 2019 "
           "(the release these files come from).")


def parse_line(line: str) -> tuple[str, str, str, str, tuple[tuple[int, int], ...]]:
    """One data line → (index, label, image id, text, target spans in text), or BadLine with a reason."""
    cols = line.rstrip("\r\n").split("\t")
    if len(cols) != 5:
        raise BadLine("malformed", f"expected 5 tab-separated columns, got {len(cols)}")
    index, label, image_id, tweet, target = (c.strip() for c in cols)
    if label not in LABELS:
        raise BadLine("bad_label", f"label must be one of {sorted(LABELS)}, got {label!r}")
    if not target:
        raise BadLine("empty_target", "empty target")
    if PLACEHOLDER not in tweet:
        raise BadLine("missing_placeholder", f"the tweet has no {PLACEHOLDER} where the target was")
    text, spans = from_placeholder(tweet, target, PLACEHOLDER)
    return index, LABELS[label], image_id, text, spans


def read_split(path: Path, name: str, split: str, *, strict: bool, skipped: dict[str, int],
               notes: dict[str, int], images: Path | None) -> list[Sample]:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        bump(notes, "not_utf8")
    samples: list[Sample] = []
    seen: set[str] = set()
    for lineno, line in enumerate(decode_text(raw).splitlines(), start=1):
        if not line.strip():
            continue
        if lineno == 1 and line.split("\t", 1)[0].strip().lower() == "index":
            continue  # the header
        try:
            index, label, image_id, text, spans = parse_line(line)
            sample_id = f"{name}:{split}:{index}"
            if sample_id in seen:
                raise BadLine("duplicate_id", f"index {index!r} appears twice")
        except BadLine as e:
            skip_line(e, path, lineno, strict=strict, skipped=skipped)
            continue
        seen.add(sample_id)
        image = images / image_id if images is not None and image_id else None
        samples.append(Sample(id=sample_id, text=text, label=label, split=split, target=text[spans[0][0]:spans[0][1]],
                              target_spans=spans, image_path=str(image) if image and image.is_file() else None))
    return samples


def load_twitter(root: str | Path, *, name: str, seed: int = 13, split_file: str | None = None,
                 strict: bool = False) -> Dataset:
    """``root``: a folder with train.tsv, dev.tsv, test.tsv (and optionally ``images/``). ``seed`` and
    ``split_file`` are accepted for the registry's uniform call; the release's own splits are kept."""
    base = Path(root)
    if split_file:
        raise ValueError(f"{name}: the release's own train/dev/test split is used; a split file is not supported")
    images = base / "images" if (base / "images").is_dir() else None
    skipped: dict[str, int] = {}
    notes: dict[str, int] = {}
    samples: list[Sample] = []
    for split in SPLITS:
        path = base / f"{split}.tsv"
        if not path.is_file():
            bump(notes, f"missing_split_{split}")
            continue
        samples += read_split(path, name, split, strict=strict, skipped=skipped, notes=notes, images=images)
    if not samples:
        raise FileNotFoundError(f"no {name} samples under {base} (expected train.tsv, dev.tsv, test.tsv)")
    return Dataset(name=name, samples=samples, has_emotion=False, skipped=skipped, notes=notes, source=str(base),
                   citation=f"{CITATIONS.get(name, '')} {TOMBERT}".strip())
