"""Tiny datasets in the exact raw layouts the loaders read, written into a temporary directory."""
from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import orjson
from PIL import Image

# cp1252 smart quotes and é: invalid as UTF-8, the usual state of scraped MVSA texts.
NON_UTF8_TEXT = b"caf\xe9 was \x93great\x94 #fail"


def jpeg_bytes(size: tuple[int, int] = (16, 16), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def write_mvsa_single(root: Path) -> Path:
    """Post 1 pos/pos, 2 neutral+positive → positive, 3 pos vs neg (dropped), 4 non-UTF-8 text,
    5 truncated JPEG, 6 no text file (skipped), 7 no image (kept text-only)."""
    data = root / "data"
    data.mkdir(parents=True)
    (root / "labelResultAll.txt").write_text(
        "ID\ttext,image\n"
        "1\tpositive,positive\n"
        "2\tneutral,positive\n"
        "3\tpositive,negative\n"
        "4\tnegative,neutral\n"
        "5\tneutral,neutral\r\n"  # a CRLF line among LF ones
        "6\tnegative,negative\n"
        "7\tpositive,neutral\n"
        "\n")
    texts = {1: b"sunny day at the beach", 2: b"new shoes!", 3: b"mixed feelings", 4: NON_UTF8_TEXT,
             5: b"a photo of a street", 7: b"no picture with this one"}
    for id_, text in texts.items():
        (data / f"{id_}.txt").write_bytes(text)
    for id_ in (1, 2, 3, 4, 6):
        (data / f"{id_}.jpg").write_bytes(jpeg_bytes())
    full = jpeg_bytes((64, 64))
    (data / "5.jpg").write_bytes(full[: len(full) // 2])  # truncated: the loader must keep its path
    return root


def write_mvsa_multiple(root: Path) -> Path:
    """1 → positive, 2 no 2-of-3 text agreement (dropped), 3 → negative, 4 only two annotators (dropped),
    5 positive vs negative after voting (dropped), 6 → neutral."""
    data = root / "data"
    data.mkdir(parents=True)
    (root / "labelResultAll.txt").write_text(
        "ID\ttext,image\ttext,image\ttext,image\n"
        "1\tpositive,positive\tpositive,neutral\tneutral,positive\n"
        "2\tpositive,negative\tneutral,negative\tnegative,negative\n"
        "3\tneutral,negative\tneutral,negative\tpositive,positive\n"
        "4\tpositive,positive\tpositive,positive\n"
        "5\tnegative,positive\tnegative,positive\tneutral,neutral\n"
        "6\tneutral,neutral\tneutral,neutral\tneutral,positive\n")
    for id_ in range(1, 7):
        (data / f"{id_}.txt").write_text(f"post number {id_}")
        (data / f"{id_}.jpg").write_bytes(jpeg_bytes())
    return root


def write_clmlf_split(root: Path) -> Path:
    """CLMLF-style split over the MVSA-Single fixture (0=positive, 1=neutral, 2=negative). Post 3, which
    cleaning drops, is labelled here; post 7 is absent; post 99 has no data."""
    root.mkdir(parents=True)
    files = {"train": [{"id": 1, "text": "x", "emotion_label": 0},
                       {"id": 2, "text": "x", "emotion_label": 0}],
             "dev": [{"id": 4, "text": "x", "emotion_label": 2}],
             "test": [{"id": 5, "text": "x", "emotion_label": 1}, {"id": 3, "text": "x", "emotion_label": 2},
                      {"id": 99, "text": "x", "emotion_label": 1}]}
    for split, items in files.items():
        (root / f"{split}.json").write_text(json.dumps(items))
    return root


MSED_HEADER = ["Title", "Caption", "Sentiment", "Emotion", "Desire", "Inference Sequence"]


def write_msed(root: Path) -> Path:
    """train: 3 rows, row 2 has an unknown emotion (skipped) — row 3 must still map to images/3.jpg;
    dev: 2 rows with messy case/whitespace; test: 2 rows, one with an unknown sentiment (skipped)."""
    rows = {
        "train": [["Happy dog", "A dog runs on the grass", "positive", "happiness", "none", "x"],
                  ["Odd", "Something", "negative", "confusion", "none", "x"],
                  ["Rainy day.", "Rain all week", "negative", "sad", "none", "x"]],
        "dev": [["", "Just a caption", " Neutral ", "NEUTRAL", "none", "x"],
                ["Angry man", "Angry man shouting", "Negative", " Anger", "none", "x"]],
        "test": [["Spider", "Close-up of a spider", "negative", "fear", "none", "x"],
                 ["Meh", "whatever", "mixed", "neutral", "none", "x"]],
    }
    for split, split_rows in rows.items():
        d = root / split
        (d / "images").mkdir(parents=True)
        with (d / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(MSED_HEADER)
            w.writerows(split_rows)
        for i in range(1, len(split_rows) + 1):
            (d / "images" / f"{i}.jpg").write_bytes(jpeg_bytes())
    return root


def write_vader_tweets(path: Path) -> Path:
    """CRLF lines as in the real file, with ratings on and around the ±0.5 thresholds."""
    lines = ["1\t2.7\tSo lucky to have such friends.", "2\t0.5\tExactly on the line.",
             "3\t0.51\tJust over the line.", "4\t-0.5\tExactly on the negative line.",
             "5\t-0.51\tJust under.", "6\t-3.1\tDie die die", "7\tnot-a-number\tbroken rating",
             "8\t0.0\t", "oops no tabs here", "9\t1.0\ttab\tinside text"]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


def write_vader_snippets(directory: Path) -> Path:
    """The three snippet files (amazon, movies, nyt), two rated lines each (one on a threshold) and a bad one."""
    from affectstream.training.datasets.vader import SNIPPET_FILES

    directory.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(SNIPPET_FILES.values()):
        lines = [f"1\t{1.5 + n}\tA fine snippet number {n}.", f"2\t-0.5\tOn the line {n}.", "3\tbad\tbroken"]
        (directory / name).write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return directory


def write_vader_sdist(path: Path, tweets: Path, snippets: Path | None = None) -> Path:
    """An sdist-shaped tarball holding hutto_ICWSM_2014.tar.gz holding tweets_GroundTruth.txt (and the
    snippet files in `snippets`)."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        tar.add(tweets, arcname="hutto_ICWSM_2014/tweets_GroundTruth.txt")
        for f in sorted(snippets.iterdir()) if snippets else ():
            tar.add(f, arcname=f"hutto_ICWSM_2014/{f.name}")
    with tarfile.open(path, mode="w:gz") as tar:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    return path


KEYWORD_WORDS = {"positive": ["love", "great", "awesome"], "negative": ["hate", "awful", "terrible"],
                 "neutral": ["table", "monday", "blue"]}


def write_keyword_jsonl(path: Path, n: int, prefix: str = "k", seed: int = 0) -> Path:
    """`n` posts whose label is decided by one keyword (`KEYWORD_WORDS`), labels in turn: a task a tiny model
    learns in seconds, in the JSONL layout `--dataset jsonl` reads."""
    import random

    from affectstream.model.config import SENTIMENT_LABELS

    rng = random.Random(seed)
    lines = []
    for i in range(n):
        label = SENTIMENT_LABELS[i % 3]
        text = f"{rng.choice(['so', 'the', 'my'])} {rng.choice(KEYWORD_WORDS[label])} {rng.choice(['phone', 'coffee', 'car'])}"
        lines.append(orjson.dumps({"id": f"{prefix}{i}", "text": text, "label": label}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path

