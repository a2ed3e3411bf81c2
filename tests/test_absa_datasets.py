"""Three-line target-level sets (Dong 2014, MAMS, SemEval-2014) on hand-written fixtures in tests/fixtures/absa."""
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from affectstream.training.contrast import contrast_scores, sentence_key
from affectstream.training.datasets import KINDS, load_dataset
from affectstream.training.datasets.absa import LABELS, PLACEHOLDER, BadLine, Record, parse_record, parse_records
from affectstream.training.samples import decode_text

FIXTURES = Path(__file__).parent / "fixtures" / "absa"
MAMS = FIXTURES / "apc_datasets" / "109.MAMS"
LAPTOP = FIXTURES / "apc_datasets" / "110.SemEval" / "113.laptop14"
DONG = FIXTURES / "apc_datasets" / "101.ACL_Twitter" / "acl-14-short-data"


def sentences_of(samples):
    out = defaultdict(list)
    for s in samples:
        out[sentence_key(s)].append(s)
    return out


def test_mams_keeps_its_splits_and_groups_the_targets_of_a_sentence():
    data = load_dataset("mams", str(MAMS))
    train = data.split("train")
    assert [s.target for s in train] == ["decor", "food", "prices", "tables", "manager"]
    assert [s.label for s in train] == ["negative", "positive", "positive", "neutral", "negative"]
    assert [s.id for s in train[:4]] == ["mams:train:s1:t1", "mams:train:s1:t2", "mams:train:s1:t3", "mams:train:s2:t1"]
    food = train[1]
    assert food.text == "The decor is not special at all but their food and amazing prices make up for it."
    assert food.text[slice(*food.target_spans[0])] == "food"
    assert food.model_text() == ("The decor is not special at all but their « food » and amazing prices make up "
                                 "for it.")
    assert data.counts()["dev"] == {"negative": 1, "neutral": 0, "positive": 1}
    assert data.counts()["test"] == {"negative": 1, "neutral": 0, "positive": 1}
    groups = sentences_of(data.samples)
    assert sorted(len(g) for g in groups.values()) == [2, 2, 2, 3]
    assert data.skipped == {} and data.notes == {} and data.kind == "mams" and "EMNLP" in data.citation


def test_every_placeholder_is_the_target_and_numeric_polarities_read():
    data = load_dataset("dong2014", str(DONG))
    by_target = {s.target: s for s in data.samples}
    assert by_target["iphone"].label == "positive" and by_target["windows 7"].label == "negative"
    crash = by_target["windows 7"]
    assert crash.text == "why does windows 7 keep crashing ? windows 7 is the worst"
    assert [crash.text[a:b] for a, b in crash.target_spans] == ["windows 7", "windows 7"]
    assert all(len(g) == 1 for g in sentences_of(data.samples).values())  # one target per tweet


def test_dev_is_carved_from_train_by_seed_and_keeps_repeated_sentences_together():
    data = load_dataset("dong2014", str(DONG), seed=13)
    assert len(data.split("test")) == 2 and len(data.split("train")) + len(data.split("dev")) == 12
    assert data.split("dev") and all(s.id.startswith("dong2014:train:") for s in data.split("dev"))
    sides = {s.split for s in data.samples if s.text == "lady gaga is on tv tonight"}
    assert len(sides) == 1  # the repeated tweet never straddles train and dev
    assert data.notes == {"repeated_sentence": 1}
    again = load_dataset("dong2014", str(DONG), seed=13)
    assert again.fingerprint() == data.fingerprint()
    dev_by_seed = {frozenset(s.id for s in load_dataset("dong2014", str(DONG), seed=k).split("dev")) for k in range(8)}
    assert len(dev_by_seed) > 1


def test_a_retokenised_target_stays_in_its_sentence():
    data = load_dataset("laptop14", str(LAPTOP))
    train = data.split("train")
    assert [sentence_key(s)[len("laptop14:train:"):] for s in train] == ["s1", "s1", "s2", "s2", "s3"]
    assert train[1].target == '"sales" team' and train[1].model_text().endswith('called the « "sales" team » .')
    assert data.notes == {"repeated_sentence": 1}  # "The screen is great ." is in train and test


def test_a_spacing_slip_does_not_split_a_sentence():
    data = load_dataset("restaurant14", str(FIXTURES))
    assert len(sentences_of(data.split("train"))) == 1  # "deco r" in one copy, "decor" in the other


RESTAURANT = FIXTURES / "apc_datasets" / "110.SemEval" / "114.restaurant14"


@pytest.mark.parametrize("kind, folder", [("dong2014", DONG), ("mams", MAMS), ("laptop14", LAPTOP),
                                          ("restaurant14", RESTAURANT)])
def test_the_set_is_found_below_a_parent_folder_or_from_one_of_its_files(kind, folder):
    from_top = load_dataset(kind, str(FIXTURES))
    assert Path(from_top.source) == folder
    one_file = next(Path(from_top.source).iterdir())
    assert load_dataset(kind, str(one_file)).fingerprint() == from_top.fingerprint()
    assert KINDS[kind].needs_path


def test_missing_files_two_candidates_and_a_split_file_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder .*valid.xml.dat"):
        load_dataset("mams", str(tmp_path))
    shutil.copytree(MAMS, tmp_path / "a" / "MAMS")
    shutil.copytree(MAMS, tmp_path / "b" / "MAMS")
    with pytest.raises(FileNotFoundError, match="2 folders"):
        load_dataset("mams", str(tmp_path))
    with pytest.raises(ValueError, match="split file"):
        load_dataset("mams", str(MAMS), split_file="x.json")
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("laptop14")


def copy_with_extra(tmp_path: Path, extra: str) -> Path:
    root = shutil.copytree(MAMS, tmp_path / "MAMS")
    path = root / "train.xml.dat"
    path.write_text(path.read_text() + extra)
    return root


@pytest.mark.parametrize("extra, reason", [
    ("The $T$ was fine.\nsoup\nConflict\n", "bad_label"),
    ("The $T$ was fine.\nsoup\n2\n", "bad_label"),
    ("The soup was fine.\nsoup\nPositive\n", "missing_placeholder"),
    ("The $T$ was fine.\nsoup\n", "truncated"),       # the file ends inside the record
    ("The $T$ was fine.\n", "truncated"),
])
def test_bad_records_are_counted_or_name_their_line(tmp_path, extra, reason):
    root = copy_with_extra(tmp_path, extra)
    data = load_dataset("mams", str(root))
    assert data.skipped == {reason: 1} and len(data.split("train")) == 5
    with pytest.raises(ValueError, match=rf"train\.xml\.dat:16: .*\({reason}\)"):
        load_dataset("mams", str(root), strict=True)


@pytest.mark.parametrize("lost", [1, 2, 3])  # the sentence, target or polarity line of the first record
def test_a_lost_line_costs_one_record_not_the_rest_of_the_file(tmp_path, lost):
    root = shutil.copytree(MAMS, tmp_path / "MAMS")
    path = root / "train.xml.dat"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:lost - 1] + lines[lost:]))
    data = load_dataset("mams", str(root))
    assert data.skipped == {"truncated": 1}
    assert [s.target for s in data.split("train")] == ["food", "prices", "tables", "manager"]


def test_an_empty_target_line_reads_as_a_truncated_record():
    items = list(parse_records("A $T$ b\n   \nPositive\nThe $T$ c\nx\nNegative\n"))
    assert isinstance(items[0][1], BadLine) and items[0][1].reason == "truncated"
    assert isinstance(items[1][1], Record) and items[1][0] == 4 and items[1][1].text == "The x c"
    with pytest.raises(BadLine) as e:
        parse_record("A $T$ b", "  ", "Positive")
    assert e.value.reason == "empty_target"


def test_a_file_that_is_not_utf8_is_decoded_and_noted(tmp_path):
    root = shutil.copytree(MAMS, tmp_path / "MAMS")
    (root / "test.xml.dat").write_bytes("The caf\u00e9 \u2019s $T$ was cold.\nsoup\nNegative\n".encode("cp1252"))
    data = load_dataset("mams", str(root))
    assert data.split("test")[0].text == "The caf\u00e9 \u2019s soup was cold."
    assert data.notes == {"not_utf8": 1}


def test_contrast_scores_on_the_fixture_sentences():
    samples = load_dataset("mams", str(MAMS)).samples
    keys, gold = [sentence_key(s) for s in samples], [s.label for s in samples]
    perfect = contrast_scores(keys, gold, gold)
    assert (perfect.sentences, perfect.contrast, perfect.contrast_share, perfect.both_right) == (4, 4, 1.0, 1.0)
    constant = contrast_scores(keys, gold, ["positive"] * len(gold))
    assert constant.contrast_share == 0.0 and constant.both_right == 0.0


polarity = st.sampled_from(sorted(LABELS) + ["POSITIVE", "Conflict", "", "2"])
line = st.one_of(st.text(max_size=30), st.builds(lambda a, b: f"{a}{PLACEHOLDER}{b}", st.text(max_size=10),
                                                 st.text(max_size=10)), polarity)


@given(st.lists(line, max_size=30), st.sampled_from(["\n", "\r\n", "\r"]))
def test_parsing_random_lines_never_raises(lines, newline):
    items = list(parse_records(newline.join(lines)))
    assert all(isinstance(item, (Record, BadLine)) for _, item in items)
    numbers = [n for n, _ in items]
    assert numbers == sorted(set(numbers))


@given(st.binary(max_size=300))
def test_loading_random_bytes_never_crashes(tmp_path_factory, raw):
    root = shutil.copytree(MAMS, tmp_path_factory.mktemp("mams") / "MAMS")
    (root / "valid.xml.dat").write_bytes(raw)
    data = load_dataset("mams", str(root))
    assert len(data.split("train")) == 5 and sum(data.skipped.values()) <= len(decode_text(raw).splitlines())


word = st.text(st.characters(categories=("L", "N"), max_codepoint=0x24F), min_size=1, max_size=8)


@given(st.lists(st.tuples(word, word, word, st.sampled_from(["-1", "0", "1", "Negative", "neutral", "POSITIVE"])),
                min_size=1, max_size=8))
def test_well_formed_records_read_back_exactly(records):
    text = "".join(f"{a} {PLACEHOLDER} {b}\n{t}\n{p}\n" for a, t, b, p in records)
    items = [item for _, item in parse_records(text)]
    assert [(r.text, r.target, r.label) for r in items] == [
        (f"{a} {t} {b}", t, LABELS[p.lower()]) for a, t, b, p in records]
