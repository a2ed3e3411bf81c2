"""Deployed model directories: `models/<version>/` as DESIGN.md fixes them.

    config.json        {"affectstream": AlignedConfig, "encoder_config": HF config of the encoder}
    model.safetensors  every weight (never pickle)
    tokenizer files    the encoder's fast tokenizer
    metrics.json, card.md (+ plots)   written by the trainer
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from affectstream.model.aligned import AlignedClassifier
from affectstream.model.config import AlignedConfig
from affectstream.model.encoders import OFFLINE_ENCODER, encoder_from_config, load_encoder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_pretrained(
    model: AlignedClassifier,
    tokenizer: PreTrainedTokenizerFast,
    directory: str | Path,
    metrics: dict | None = None,
    card: str | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"affectstream": model.config.to_dict(), "encoder_config": model.encoder.config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
    # safetensors refuses shared or non-contiguous storage; clone makes every tensor its own
    state = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "version": model.config.version})
    tokenizer.save_pretrained(str(directory))
    if metrics is not None:
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    if card is not None:
        (directory / "card.md").write_text(card)
    return directory


def read_config(directory: str | Path) -> AlignedConfig:
    data = json.loads((Path(directory) / CONFIG_FILE).read_text())
    return AlignedConfig.from_dict(data["affectstream"])


def load_pretrained(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[AlignedClassifier, PreTrainedTokenizerFast, AlignedConfig]:
    """Rebuild the architecture from config.json and load model.safetensors into it (strict)."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a deployed model directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    data = json.loads((directory / CONFIG_FILE).read_text())
    config = AlignedConfig.from_dict(data["affectstream"])
    model = AlignedClassifier(config, encoder_from_config(data["encoder_config"]))
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), use_fast=True)
    return model.to(device).eval(), tokenizer, config


def is_trained(directory: str | Path) -> bool:
    try:
        return read_config(directory).trained
    except (FileNotFoundError, KeyError, ValueError, json.JSONDecodeError):
        return False


def build_untrained(directory: str | Path, encoder: str = OFFLINE_ENCODER, **config_overrides) -> Path:
    """A pretrained encoder with freshly initialised scorer and heads, clearly labelled untrained."""
    torch.manual_seed(0)
    encoder_model, tokenizer = load_encoder(encoder)
    config = AlignedConfig(encoder=encoder, version="untrained", trained=False, **config_overrides)
    return save_pretrained(AlignedClassifier(config, encoder_model), tokenizer, directory)
