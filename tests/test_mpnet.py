"""The packaged MPNet encoder (`offline:mpnet`): joining a split zip, checking it, unzipping it once and
atomically, clear errors; and, where the `mpnet` extra is installed, the real weights in the aligned model.
The last two tests skip when the five part packages are not installed (they are an optional extra)."""
import hashlib
import importlib.metadata
import io
import threading
import zipfile

import pytest
import torch

from affectstream.model.encoders import (MPNET, MPNET_ENCODER, EncoderUnavailable, SplitArchive, assemble,
                                         assemble_split_zip, find_pieces)


def split_zip(tmp_path, files: dict[str, bytes], pieces: int = 3):
    """A zip of `files` under one top directory `model/`, cut into `pieces` files; returns (paths, sha256)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"model/{name}", data)
    data = buffer.getvalue()
    size = -(-len(data) // pieces)
    paths = []
    for number in range(pieces):
        path = tmp_path / f"m.zip.{number + 1:03d}"
        path.write_bytes(data[number * size:(number + 1) * size])
        paths.append(path)
    return paths, hashlib.sha256(data).hexdigest()


def test_pieces_joined_in_order_are_unzipped_into_the_target(tmp_path):
    pieces, sha = split_zip(tmp_path, {"config.json": b"{}", "weights.bin": bytes(range(256)) * 400})
    target = tmp_path / "cache" / "m"
    assert assemble_split_zip(pieces, sha, target) == target
    assert (target / "config.json").read_bytes() == b"{}"
    assert (target / "weights.bin").read_bytes() == bytes(range(256)) * 400
    assert [p.name for p in target.parent.iterdir()] == ["m"]          # no scratch left behind


def test_pieces_out_of_order_fail_the_checksum_and_leave_nothing(tmp_path):
    pieces, sha = split_zip(tmp_path, {"config.json": b"{}", "weights.bin": b"x" * 5000})
    target = tmp_path / "cache" / "m"
    with pytest.raises(EncoderUnavailable, match="sha256"):
        assemble_split_zip([pieces[1], pieces[0], pieces[2]], sha, target)
    assert list(target.parent.iterdir()) == []


def test_a_corrupt_piece_fails_the_checksum(tmp_path):
    pieces, sha = split_zip(tmp_path, {"config.json": b"{}"})
    corrupt = bytearray(pieces[1].read_bytes())
    corrupt[-1] ^= 0xFF
    pieces[1].write_bytes(bytes(corrupt))
    with pytest.raises(EncoderUnavailable, match="expected " + sha):
        assemble_split_zip(pieces, sha, tmp_path / "cache" / "m")


def test_concurrent_assemblies_all_return_one_complete_directory(tmp_path):
    pieces, sha = split_zip(tmp_path, {"config.json": b"{}", "weights.bin": b"w" * 200_000})
    target = tmp_path / "cache" / "m"
    results, errors = [], []

    def run():
        try:
            results.append(assemble_split_zip(pieces, sha, target))
        except Exception as exc:  # noqa: BLE001 - the test reports any
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [target] * 4
    assert (target / "weights.bin").read_bytes() == b"w" * 200_000
    assert [p.name for p in target.parent.iterdir()] == ["m"]


def test_missing_extra_says_how_to_install_it(tmp_path):
    absent = SplitArchive("nothing", ("affectstream-no-such-part-001", "affectstream-no-such-part-002"), "0" * 64,
                          "pip install 'affectstream[mpnet]'")
    with pytest.raises(EncoderUnavailable, match=r"pip install 'affectstream\[mpnet\]'"):
        assemble(absent, cache=tmp_path)


def test_a_missing_part_is_named(tmp_path):
    # one distribution that is surely installed (holding no piece) and one that is not
    partial = SplitArchive("partial", ("torch", "affectstream-no-such-part-002"), "0" * 64, "pip install x")
    with pytest.raises(EncoderUnavailable, match="affectstream-no-such-part-002 is not installed") as caught:
        find_pieces(partial)
    assert "torch holds no *.zip.001 file" in str(caught.value)
    assert "--force-reinstall" in str(caught.value)


def test_an_assembled_directory_is_reused_without_the_pieces(tmp_path):
    (tmp_path / "nothing").mkdir()
    absent = SplitArchive("nothing", ("affectstream-no-such-part-001",), "0" * 64, "pip install x")
    assert assemble(absent, cache=tmp_path) == tmp_path / "nothing"


def mpnet_installed() -> bool:
    try:
        return all(importlib.metadata.distribution(name) for name in MPNET.distributions)
    except importlib.metadata.PackageNotFoundError:
        return False


needs_mpnet = pytest.mark.skipif(not mpnet_installed(), reason="the `mpnet` extra (five PyPI parts) is not installed")


@pytest.fixture(scope="module")
def mpnet():
    from affectstream.model.encoders import load_encoder

    return load_encoder(MPNET_ENCODER)


@needs_mpnet
def test_real_mpnet_reads_pairs_in_roberta_format(mpnet):
    from affectstream.model.tokenization import SOURCE_IMAGE, SOURCE_TEXT, encode_pairs

    encoder, tokenizer = mpnet
    batch = encode_pairs(tokenizer, ["Love it 😂"], ["objects: phone"], 32, normalization="social-v1")
    tokens = tokenizer.convert_ids_to_tokens(batch.input_ids[0].tolist())
    assert tokens == ["<s>", "love", "it", "face", "with", "tears", "of", "joy", "</s>", "</s>",
                      "objects", ":", "phone", "</s>"]
    assert batch.token_type_ids is None
    sources = batch.source[0].tolist()
    assert sources[1:8] == [SOURCE_TEXT] * 7 and sources[10:13] == [SOURCE_IMAGE] * 3
    assert type(encoder).__name__ == "MPNetModel" and encoder.config.hidden_size == 768


@needs_mpnet
def test_aligned_model_on_real_mpnet_runs_a_forward_pass(mpnet):
    from affectstream.model.aligned import AlignedClassifier
    from affectstream.model.config import AlignedConfig
    from affectstream.model.tokenization import encode_pairs

    encoder, tokenizer = mpnet
    config = AlignedConfig(encoder=MPNET_ENCODER, top_k=4, max_length=32,
                           text_normalization="social-v1")
    model = AlignedClassifier(config, encoder).eval()
    batch = encode_pairs(tokenizer, ["so good 👍", "awful service @acme"], ["", "a sad face"], 32,
                         normalization="social-v1")
    with torch.inference_mode():
        out = model(**batch.model_inputs())
    assert out.sentiment_logits.shape == (2, 3)
    assert torch.isfinite(out.sentiment_logits).all()
    assert out.selected_idx.shape == (2, 4)


@needs_mpnet
def test_bench_row_serves_the_mpnet_model(tmp_path):
    from affectstream.bench.mpnet import mpnet_row

    row = mpnet_row(tmp_path, posts=32, batch=16, rounds=1, device="cpu", say=lambda _: None)
    assert row["shape"] == "mpnet" and row["posts"] == 32 and row["batch"] == 16
    assert row["serving_posts_per_s"] > 0 and row["tokens_per_post"] > 3
    assert row["dtype_serving"] in ("bfloat16", "float32")
    assert (tmp_path / "mpnet" / "config.json").is_file()
