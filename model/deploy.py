"""Deployed model directories: `models/<version>/` as docs/contracts.md fixes them.

    config.json        AlignedConfig (a PreTrainedConfig) with the encoder's config under "encoder_config"
    model.safetensors  every weight (never pickle)
    tokenizer files    the encoder's fast tokenizer
    metrics.json, card.md (+ plots)   written by the trainer

Saving and loading the model itself is transformers' `save_pretrained` / `from_pretrained`; this module
adds what a deployed directory holds besides the model, and refuses anything but safetensors.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from affectstream.model.aligned import AlignedClassifier
from affectstream.model.config import AlignedConfig
from affectstream.model.encoders import OFFLINE_ENCODER, load_encoder, quiet_transformers

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_deployed(model: AlignedClassifier, tokenizer: PreTrainedTokenizerFast, directory: str | Path,
                  metrics: dict | None = None, card: str | None = None) -> Path:
    directory = Path(directory)
    with quiet_transformers():
        model.save_pretrained(directory)
    tokenizer.save_pretrained(str(directory))
    if metrics is not None:
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    if card is not None:
        (directory / "card.md").write_text(card)
    return directory


def load_deployed(directory: str | Path, dtype: torch.dtype = torch.float32
                  ) -> tuple[AlignedClassifier, PreTrainedTokenizerFast, AlignedConfig]:
    """Model (on the CPU, in `dtype`; every weight must be in model.safetensors), tokenizer and config.
    fp32 by default whatever the stored dtype: the predictor casts once to the serving dtype."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a deployed model directory (needs {CONFIG_FILE} and {WEIGHTS_FILE}; "
                                "weights load from safetensors only, never from pickle)")
    with quiet_transformers():
        model, info = AlignedClassifier.from_pretrained(directory, dtype=dtype, use_safetensors=True,
                                                        output_loading_info=True)
    mismatched = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if mismatched:
        raise ValueError(f"{directory / WEIGHTS_FILE} does not match config.json: {mismatched}")
    tokenizer = AutoTokenizer.from_pretrained(str(directory), use_fast=True)
    return model.eval(), tokenizer, model.config


def is_trained(directory: str | Path) -> bool:
    try:
        return AlignedConfig.from_pretrained(str(directory)).trained
    except (OSError, KeyError, ValueError, TypeError):
        return False


def build_untrained(directory: str | Path, encoder: str = OFFLINE_ENCODER, **config_overrides) -> Path:
    """A pretrained encoder with freshly initialised scorer and heads, clearly labelled untrained."""
    torch.manual_seed(0)
    encoder_model, tokenizer = load_encoder(encoder)
    config = AlignedConfig(encoder=encoder, version="untrained", trained=False, **config_overrides)
    return save_deployed(AlignedClassifier(config, encoder_model), tokenizer, directory)
