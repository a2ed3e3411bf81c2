"""Dataset loaders: the cleaning rules give exact counts on tiny raw-layout fixtures; splits are
stratified and seeded; nothing here touches the network."""
from __future__ import annotations

import dataclasses
import io
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from affectstream.model.config import EMOTION_LABELS, SENTIMENT_LABELS
from tests.dataset_fixtures import (NON_UTF8_TEXT, write_clmlf_split, write_msed, write_mvsa_multiple,
                                    write_mvsa_single, write_vader_sdist, write_vader_snippets, write_vader_tweets)
from affectstream.training.datasets import KINDS, load_dataset, render_meme
from affectstream.training.datasets.jsonl import load_jsonl
from affectstream.training.datasets.msed import join_title_caption
from affectstream.training.datasets.mvsa import LabelLine, Rejected, combine_labels, parse_label_line
from affectstream.training.datasets.proxy import POST_TEXTS, load_proxy
from affectstream.training.datasets.vader import CITATION, Tweet, ensure_sdist, label_for, parse_tweet_line
from affectstream.training.samples import Dataset, Sample, decode_text
from affectstream.training.splits import load_split_file, stratified_split


def _labels(ds: Dataset) -> dict[str, str]:
    return {s.id: s.label for s in ds.samples}


# ---------------------------------------------------------------- MVSA


def test_mvsa_single_applies_cleaning_rules(tmp_path: Path) -> None:
    ds = load_dataset("mvsa-single", str(write_mvsa_single(tmp_path / "MVSA_Single")))
    assert ds.name == "mvsa-single" and not ds.has_emotion
    assert _labels(ds) == {"1": "positive", "2": "positive", "4": "negative", "5": "neutral",
                           "7": "positive"}
    assert ds.skipped == {"conflicting_labels": 1, "missing_text": 1}
    assert ds.notes == {"missing_image": 1}


def test_mvsa_single_decodes_non_utf8_text_without_crashing(tmp_path: Path) -> None:
    ds = load_dataset("mvsa-single", str(write_mvsa_single(tmp_path)))
    by_id = {s.id: s for s in ds.samples}
    assert by_id["4"].text == "café was \u201cgreat\u201d #fail"


def test_mvsa_keeps_truncated_image_path_and_drops_missing_image(tmp_path: Path) -> None:
    ds = load_dataset("mvsa-single", str(write_mvsa_single(tmp_path)))
    by_id = {s.id: s for s in ds.samples}
    assert by_id["5"].image_path == str(tmp_path / "data" / "5.jpg")  # decoding fails later, not here
    assert by_id["7"].image_path is None and by_id["7"].image_bytes is None


def test_mvsa_finds_the_label_file_one_level_down(tmp_path: Path) -> None:
    write_mvsa_single(tmp_path / "MVSA_Single")
    assert len(load_dataset("mvsa-single", str(tmp_path)).samples) == 5


def test_mvsa_multiple_needs_two_of_three_annotators(tmp_path: Path) -> None:
    ds = load_dataset("mvsa-multiple", str(write_mvsa_multiple(tmp_path)))
    assert _labels(ds) == {"1": "positive", "3": "negative", "6": "neutral"}
    assert ds.skipped == {"no_text_agreement": 1, "wrong_annotator_count": 1, "conflicting_labels": 1}


def test_clmlf_split_file_decides_membership_split_and_label(tmp_path: Path) -> None:
    root = write_mvsa_single(tmp_path / "mvsa")
    split_dir = write_clmlf_split(tmp_path / "split")
    ds = load_dataset("mvsa-single", str(root), split_file=str(split_dir))
    assert {s.id: (s.split, s.label) for s in ds.samples} == {
        "1": ("train", "positive"), "2": ("train", "positive"), "4": ("dev", "negative"),
        "5": ("test", "neutral"), "3": ("test", "negative")}  # 3: cleaning drops it, the split keeps it
    assert ds.skipped == {"missing_text": 1, "not_in_split_file": 1}
    assert ds.notes["kept_by_split_file"] == 1 and ds.notes["split_file_ids_not_in_data"] == 1
    # One of the three files names the same directory.
    again = load_dataset("mvsa-single", str(root), split_file=str(split_dir / "dev.json"))
    assert again.fingerprint() == ds.fingerprint()


def test_split_file_as_one_json_object(tmp_path: Path) -> None:
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"train": ["1", "2"], "valid": [{"id": 4, "label": "negative"}], "test": [5]}))
    sf = load_split_file(f)
    assert sf.assign == {"1": "train", "2": "train", "4": "dev", "5": "test"}
    assert sf.labels == {"4": "negative"}


def test_split_file_rejects_an_id_in_two_splits(tmp_path: Path) -> None:
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"train": [1], "test": [1]}))
    with pytest.raises(ValueError, match="both"):
        load_split_file(f)


def test_combine_labels_rules() -> None:
    assert combine_labels("neutral", "positive") == "positive"
    assert combine_labels("negative", "neutral") == "negative"
    assert combine_labels("neutral", "neutral") == "neutral"
    assert combine_labels("positive", "negative") is None


LABEL_LINE_REASONS = {"blank", "header", "bad_id", "malformed", "wrong_annotator_count", "unknown_label",
                      "no_text_agreement", "no_image_agreement", "conflicting_labels"}


@settings(max_examples=300, deadline=None)
@given(line=st.text(), annotators=st.sampled_from([None, 1, 3]))
def test_label_line_parser_never_crashes(line: str, annotators: int | None) -> None:
    out = parse_label_line(line, annotators)
    if isinstance(out, LabelLine):
        assert out.label in SENTIMENT_LABELS
    else:
        assert isinstance(out, Rejected) and out.reason in LABEL_LINE_REASONS


@settings(max_examples=200, deadline=None)
@given(id_=st.from_regex(r"[0-9]{1,6}", fullmatch=True),
       pairs=st.lists(st.tuples(st.sampled_from(SENTIMENT_LABELS), st.sampled_from(SENTIMENT_LABELS)),
                      min_size=3, max_size=3),
       sep=st.sampled_from(["\t", " ", "\t\t"]), upper=st.booleans())
def test_label_line_parser_matches_the_voting_rule(id_: str, pairs: list[tuple[str, str]], sep: str,
                                                   upper: bool) -> None:
    line = id_ + sep + sep.join(f"{t},{i}" for t, i in pairs)
    out = parse_label_line(line.upper() if upper else line, annotators=3)

    def vote(xs: list[str]) -> str | None:
        lab, n = Counter(xs).most_common(1)[0]
        return lab if n >= 2 else None

    t, i = vote([p[0] for p in pairs]), vote([p[1] for p in pairs])
    expected = None if t is None or i is None else combine_labels(t, i)
    assert (out.label if isinstance(out, LabelLine) else None) == expected


def test_decode_text_falls_back_and_never_raises() -> None:
    assert decode_text("naïve".encode()) == "naïve"
    assert decode_text("\ufeffbom".encode()) == "bom"
    assert decode_text(NON_UTF8_TEXT).startswith("café")
    assert decode_text(b"\x81\x8d\xff") == "\x81\x8d\xff"  # undefined in cp1252: latin-1 maps every byte


# ---------------------------------------------------------------- splits and fingerprint


def _ids_labels(n_pos: int = 50, n_neu: int = 30, n_neg: int = 20) -> list[tuple[str, str]]:
    return ([(f"p{i}", "positive") for i in range(n_pos)] + [(f"u{i}", "neutral") for i in range(n_neu)]
            + [(f"n{i}", "negative") for i in range(n_neg)])


def test_stratified_split_keeps_class_proportions() -> None:
    items = _ids_labels()
    assign = stratified_split(items, seed=13)
    per = Counter((label, assign[id_]) for id_, label in items)
    assert [per[("positive", s)] for s in ("train", "dev", "test")] == [40, 5, 5]
    assert [per[("neutral", s)] for s in ("train", "dev", "test")] == [24, 3, 3]
    assert [per[("negative", s)] for s in ("train", "dev", "test")] == [16, 2, 2]


def test_stratified_split_is_deterministic_and_order_independent() -> None:
    items = _ids_labels()
    shuffled = items[:]
    random.Random(0).shuffle(shuffled)
    assert stratified_split(items, seed=13) == stratified_split(shuffled, seed=13)
    assert stratified_split(items, seed=13) != stratified_split(items, seed=14)


def test_fingerprint_ignores_order_but_not_labels_or_splits(tmp_path: Path) -> None:
    ds = load_dataset("mvsa-multiple", str(write_mvsa_multiple(tmp_path)))
    fp = ds.fingerprint()
    assert len(fp) == 64
    reordered = dataclasses.replace(ds, samples=list(reversed(ds.samples)))
    assert reordered.fingerprint() == fp
    relabelled = [dataclasses.replace(ds.samples[0], label="negative" if ds.samples[0].label != "negative"
                                      else "positive")] + ds.samples[1:]
    assert dataclasses.replace(ds, samples=relabelled).fingerprint() != fp
    moved = [dataclasses.replace(ds.samples[0], split="test" if ds.samples[0].split != "test"
                                 else "train")] + ds.samples[1:]
    assert dataclasses.replace(ds, samples=moved).fingerprint() != fp


def test_loading_twice_gives_the_same_fingerprint(tmp_path: Path) -> None:
    root = write_mvsa_single(tmp_path)
    assert load_dataset("mvsa-single", str(root)).fingerprint() == \
        load_dataset("mvsa-single", str(root)).fingerprint()


def test_counts_and_split_views(tmp_path: Path) -> None:
    ds = load_dataset("mvsa-single", str(write_mvsa_single(tmp_path)))
    counts = ds.counts()
    assert set(counts) == {"train", "dev", "test"}
    assert sum(counts["train"].values()) + sum(counts["dev"].values()) + sum(counts["test"].values()) == 5
    assert sum(len(ds.split(s)) for s in ("train", "dev", "test")) == 5
    with pytest.raises(ValueError):
        ds.split("validation")


def test_sample_rejects_invalid_values() -> None:
    with pytest.raises(ValueError):
        Sample(id="x", text="", label="happy", split="train")
    with pytest.raises(ValueError):
        Sample(id="x", text="", label="positive", split="train", image_path="a", image_bytes=b"b")
    with pytest.raises(ValueError):
        Sample(id="x", text="", label="positive", split="train", emotion="joy")


# ---------------------------------------------------------------- MSED


def test_msed_reads_csvs_images_and_emotions(tmp_path: Path) -> None:
    root = write_msed(tmp_path)
    ds = load_dataset("msed", str(root))
    assert ds.has_emotion and ds.name == "msed"
    got = {s.id: (s.split, s.label, s.emotion) for s in ds.samples}
    assert got == {"train-1": ("train", "positive", "happiness"), "train-3": ("train", "negative", "sad"),
                   "dev-1": ("dev", "neutral", "neutral"), "dev-2": ("dev", "negative", "anger"),
                   "test-1": ("test", "negative", "fear")}
    assert ds.skipped == {"unknown_emotion": 1, "unknown_sentiment": 1}
    by_id = {s.id: s for s in ds.samples}
    # Row 3 keeps image 3 although row 2 was skipped: images are numbered by CSV row.
    assert by_id["train-3"].image_path == str(root / "train" / "images" / "3.jpg")
    assert by_id["train-1"].text == "Happy dog. A dog runs on the grass"
    assert by_id["dev-1"].text == "Just a caption"
    assert all(s.emotion in EMOTION_LABELS for s in ds.samples)


def test_join_title_caption() -> None:
    assert join_title_caption("Rainy day.", "Rain all week") == "Rainy day. Rain all week"
    assert join_title_caption("Angry man", "Angry man shouting") == "Angry man shouting"
    assert join_title_caption("Title", "") == "Title"
    assert join_title_caption(None, None) == ""


# ---------------------------------------------------------------- VADER (local fixtures only)


def test_vader_labels_and_thresholds(tmp_path: Path) -> None:
    ds = load_dataset("vader", str(write_vader_tweets(tmp_path / "tweets_GroundTruth.txt")))
    assert _labels(ds) == {"1": "positive", "2": "neutral", "3": "positive", "4": "neutral",
                           "5": "negative", "6": "negative", "9": "positive"}
    assert ds.skipped == {"bad_rating": 1, "empty_text": 1, "malformed": 1}
    assert {s.id: s.text for s in ds.samples}["9"] == "tab\tinside text"
    assert ds.citation == CITATION and "Hutto" in CITATION and "ICWSM" in CITATION


def test_vader_reads_nested_archives_and_directories(tmp_path: Path) -> None:
    tweets = write_vader_tweets(tmp_path / "t.txt")
    (tmp_path / "dl").mkdir()
    sdist = write_vader_sdist(tmp_path / "dl" / "vaderSentiment-3.3.2.tar.gz", tweets)
    from_txt = load_dataset("vader", str(tweets))
    assert load_dataset("vader", str(sdist)).fingerprint() == from_txt.fingerprint()
    assert load_dataset("vader", str(tmp_path / "dl")).fingerprint() == from_txt.fingerprint()


def test_vader_snippets_come_from_the_same_archive_with_set_prefixed_ids(tmp_path: Path) -> None:
    snippets = write_vader_snippets(tmp_path / "snippets")
    sdist = write_vader_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", write_vader_tweets(tmp_path / "t.txt"), snippets)
    ds = load_dataset("vader-snippets", str(sdist))
    assert _labels(ds) == {"amazon:1": "positive", "amazon:2": "neutral", "movies:1": "positive",
                           "movies:2": "neutral", "nyt:1": "positive", "nyt:2": "neutral"}
    assert ds.skipped == {"bad_rating": 3} and ds.name == "vader-snippets"
    assert load_dataset("vader-snippets", str(snippets)).fingerprint() == ds.fingerprint()
    assert "vader-snippets" in KINDS and not KINDS["vader-snippets"].needs_path
    (snippets / "nytEditorialSnippets_GroundTruth.txt").unlink()
    with pytest.raises(FileNotFoundError):
        load_dataset("vader-snippets", str(snippets))


def test_vader_cached_sdist_with_wrong_checksum_is_a_clear_error(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFFECTSTREAM_CACHE", str(tmp_path))
    (tmp_path / "vader").mkdir()
    (tmp_path / "vader" / "vaderSentiment-3.3.2.tar.gz").write_bytes(b"not the sdist")
    with pytest.raises(RuntimeError, match="sha256"):
        ensure_sdist()


def test_vader_label_for() -> None:
    assert [label_for(x) for x in (-4, -0.51, -0.5, 0, 0.5, 0.51, 4)] == \
        ["negative", "negative", "neutral", "neutral", "neutral", "positive", "positive"]


@settings(max_examples=300, deadline=None)
@given(line=st.text())
def test_tweet_line_parser_never_crashes(line: str) -> None:
    out = parse_tweet_line(line)
    assert isinstance(out, Tweet) or out in {"blank", "malformed", "bad_rating", "empty_text"}


# ---------------------------------------------------------------- JSONL


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_good_file(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"x")
    rows: list[object] = [{"id": "a", "text": "love it", "image": "imgs/a.jpg", "label": "positive",
                           "split": "test"},
                          {"id": 2, "text": "meh", "label": "Neutral", "split": "val"}, ""]
    rows += [{"id": f"x{i}", "text": "t", "label": SENTIMENT_LABELS[i % 3]} for i in range(30)]
    ds = load_jsonl(_write_jsonl(tmp_path / "mine.jsonl", rows))
    by_id = {s.id: s for s in ds.samples}
    assert len(ds.samples) == 32 and ds.name == "mine" and not ds.has_emotion
    assert by_id["a"].image_path == str(tmp_path / "imgs" / "a.jpg") and by_id["a"].split == "test"
    assert by_id["2"].split == "dev" and by_id["2"].label == "neutral"
    # The 30 lines without a split are split 8:1:1 per class.
    rest = Counter(s.split for s in ds.samples if s.id.startswith("x"))
    assert rest == {"train": 24, "dev": 3, "test": 3}


def test_jsonl_with_emotions_has_emotion(tmp_path: Path) -> None:
    rows = [{"id": i, "text": "t", "label": "negative", "emotion": "FEAR"} for i in range(3)]
    ds = load_dataset("jsonl", str(_write_jsonl(tmp_path / "e.jsonl", rows)))
    assert ds.has_emotion and {s.emotion for s in ds.samples} == {"fear"}


@pytest.mark.parametrize("bad, reason", [
    ("{not json", "invalid_json"), ("[1, 2]", "not_an_object"),
    ({"text": "no id", "label": "positive"}, "missing_id"),
    ({"id": "b", "text": "t", "label": "happy"}, "bad_label"),
    ({"id": "b", "text": 5, "label": "positive"}, "bad_text"),
    ({"id": "b", "text": "t", "label": "positive", "split": "holdout"}, "bad_split"),
    ({"id": "b", "text": "t", "label": "positive", "emotion": "joyful"}, "bad_emotion"),
    ({"id": "g1", "text": "t", "label": "positive"}, "duplicate_id"),
])
def test_jsonl_bad_line_names_its_line_or_is_counted(tmp_path: Path, bad: object, reason: str) -> None:
    rows = [{"id": "g1", "text": "ok", "label": "positive"},
            {"id": "g2", "text": "ok", "label": "negative"}, bad]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: .*\({reason}\)"):
        load_jsonl(path)
    lenient = load_jsonl(path, strict=False)
    assert len(lenient.samples) == 2 and lenient.skipped == {reason: 1}


# ---------------------------------------------------------------- proxy memes


def test_proxy_is_balanced_deterministic_and_images_decode() -> None:
    a = load_dataset("proxy", seed=5, size=30, image_size=(96, 96))
    b = load_proxy(seed=5, size=30, image_size=(96, 96))
    assert a.name == "proxy-memes (synthetic)" and not a.has_emotion
    assert Counter(s.label for s in a.samples) == {"negative": 10, "neutral": 10, "positive": 10}
    assert a.fingerprint() == b.fingerprint()
    assert [s.image_bytes for s in a.samples] == [s.image_bytes for s in b.samples]
    assert load_proxy(seed=6, size=30, image_size=(96, 96)).fingerprint() != a.fingerprint()
    for s in a.samples:
        assert s.image_path is None and s.image_bytes is not None
        assert s.text in POST_TEXTS  # the post text never carries the label
        img = Image.open(io.BytesIO(s.image_bytes))
        img.load()
        assert img.size == (96, 96)


def test_proxy_default_size_is_balanced_600() -> None:
    # Counting labels is cheap; the rendering cost (~5 s) is the price of checking the real default.
    ds = load_proxy()
    assert len(ds.samples) == 600
    assert all(sum(ds.counts()[sp].values()) for sp in ("train", "dev", "test"))
    assert Counter(s.label for s in ds.samples) == {lab: 200 for lab in SENTIMENT_LABELS}


def test_render_meme_is_deterministic_and_draws_dark_text_on_light_background() -> None:
    a, b = render_meme("WORST MONDAY EVER", seed=1), render_meme("WORST MONDAY EVER", seed=1)
    assert a.size == (384, 384) and a.mode == "RGB" and a.tobytes() == b.tobytes()
    gray = a.convert("L")
    hist = gray.histogram()
    dark, light = sum(hist[:100]), sum(hist[180:])
    assert light > dark > 0.03 * 384 * 384  # lots of ink, on a lighter page


def test_load_dataset_rejects_unknown_kind_and_missing_path() -> None:
    assert set(KINDS) == {"mvsa-single", "mvsa-multiple", "msed", "vader", "vader-snippets", "jsonl", "proxy", "twitter2015", "twitter2017",
                          "dong2014", "mams", "laptop14", "restaurant14"}
    with pytest.raises(ValueError, match="unknown dataset kind"):
        load_dataset("imdb", "x")
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("msed")


def test_registry_rows_name_real_options_and_baselines() -> None:
    from affectstream.training.baselines import BASELINES
    from affectstream.training.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for kind, spec in KINDS.items():
        assert callable(spec.load), kind
        assert set(spec.train_options.values()) <= fields, kind
        assert spec.baseline is None or spec.baseline in BASELINES, kind
    assert [k for k, spec in KINDS.items() if not spec.needs_path] == ["vader", "vader-snippets", "proxy"]
    assert KINDS["proxy"].synthetic and KINDS["vader"].baseline == "vader_rule"


def test_load_dataset_records_its_kind_and_the_trainer_feeds_registry_options(tmp_path) -> None:
    from affectstream.training.config import PRESETS
    from affectstream.training.train import load_datasets

    assert load_dataset("mvsa-single", str(write_mvsa_single(tmp_path))).kind == "mvsa-single"
    cfg = PRESETS["tiny"].replace(dataset="proxy", extra_datasets=("proxy",), proxy_size=12)
    datasets = load_datasets(cfg)
    assert [d.kind for d in datasets] == ["proxy", "proxy"] and all(len(d.samples) == 12 for d in datasets)
