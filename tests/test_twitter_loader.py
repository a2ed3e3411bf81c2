"""Twitter-2015/2017 target-level loader (TomBERT's tsv format) on small synthetic fixtures."""
from pathlib import Path

import pytest

from affectstream.training.datasets import KINDS, load_dataset
from affectstream.training.datasets.twitter import BadLine, parse_line

HEADER = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String\n"


def write_release(root: Path, train: list[str], dev: list[str] | None = None, test: list[str] | None = None,
                  encoding: str = "utf-8") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, lines in (("train", train), ("dev", dev or ["1\t1\t9.jpg\t$T$ today\tMonday"]),
                         ("test", test or ["1\t0\t8.jpg\tstuck on $T$ again\tthe M25"])):
        (root / f"{split}.tsv").write_bytes((HEADER + "\n".join(lines) + "\n").encode(encoding))
    return root


GOOD = [
    "1\t2\t1.jpg\tRT @ x : $T$ is everything # MCM\tChuck Bass",
    "2\t1\t1.jpg\tRT @ x : Chuck Bass is everything $T$\t# MCM",
    "3\t0\t2.jpg\t$T$ vs $T$ , never again\tAcme",
]


def test_reads_targets_labels_and_spans(tmp_path):
    data = load_dataset("twitter2015", str(write_release(tmp_path / "t", GOOD)))
    train = data.split("train")
    assert [s.label for s in train] == ["positive", "neutral", "negative"]
    first = train[0]
    assert first.text == "RT @ x : Chuck Bass is everything # MCM" and first.target == "Chuck Bass"
    assert first.text[slice(*first.target_spans[0])] == "Chuck Bass"
    assert first.model_text() == "RT @ x : « Chuck Bass » is everything # MCM"
    assert train[1].model_text().endswith("« # MCM »")
    assert train[2].target_spans == ((0, 4), (8, 12))
    assert len({s.id for s in data.samples}) == 5 and first.id == "twitter2015:train:1"
    assert data.counts()["dev"]["neutral"] == 1 and data.counts()["test"]["negative"] == 1
    assert data.skipped == {} and data.kind == "twitter2015" and "IJCAI 2019" in data.citation


@pytest.mark.parametrize("line, reason", [
    ("4\t2\t1.jpg\tno placeholder here\tAcme", "missing_placeholder"),
    ("4\t7\t1.jpg\t$T$ rocks\tAcme", "bad_label"),
    ("4\tpositive\t1.jpg\t$T$ rocks\tAcme", "bad_label"),
    ("4\t2\t1.jpg\t$T$ rocks", "malformed"),
    ("4\t2\t1.jpg\t$T$ rocks\tAcme\textra", "malformed"),
    ("4\t2\t1.jpg\t$T$ rocks\t  ", "empty_target"),
    ("1\t2\t1.jpg\t$T$ again\tAcme", "duplicate_id"),
])
def test_bad_lines_are_counted_or_name_their_line(tmp_path, line, reason):
    root = write_release(tmp_path / "t", GOOD + [line])
    data = load_dataset("twitter2017", str(root))
    assert data.skipped == {reason: 1} and len(data.split("train")) == 3
    with pytest.raises(ValueError, match=rf"train\.tsv:5: .*\({reason}\)"):
        load_dataset("twitter2017", str(root), strict=True)


def test_parse_line_gives_a_reason():
    with pytest.raises(BadLine) as e:
        parse_line("1\t2\tx.jpg\tno target\tAcme")
    assert e.value.reason == "missing_placeholder"


def test_non_utf8_file_is_decoded_and_noted(tmp_path):
    root = write_release(tmp_path / "t", ["1\t2\t1.jpg\t$T$ caf\u00e9 \u2019s best\tAcme"], encoding="cp1252")
    data = load_dataset("twitter2015", str(root))
    assert data.split("train")[0].text == "Acme caf\u00e9 \u2019s best"
    assert data.notes == {"not_utf8": 1}  # train.tsv; dev and test are ASCII and data.skipped == {}


def test_images_folder_when_present_gives_image_paths(tmp_path):
    root = write_release(tmp_path / "t", GOOD)
    (root / "images").mkdir()
    (root / "images" / "1.jpg").write_bytes(b"not really a jpeg")
    train = load_dataset("twitter2015", str(root)).split("train")
    assert [s.has_image for s in train] == [True, True, False]


def test_missing_folder_and_split_file_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.tsv"):
        load_dataset("twitter2015", str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("twitter2015")
    with pytest.raises(ValueError, match="split file"):
        load_dataset("twitter2015", str(write_release(tmp_path / "t", GOOD)), split_file="x.json")
    assert KINDS["twitter2017"].needs_path
