"""Pair encoding shared by training and serving: (post text, image description) -> one token sequence.

Both sides go through the encoder's own fast tokenizer as a *pair*, so the description lands in the same
representation space as the text (RoBERTa: `<s> text </s></s> description </s>`). The tokenizer tells which
side every token came from (`sequence_ids`), which gives the selectable mask (special and padding tokens are
never selected) and the rationale's `source`.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from affectstream.model.normalize import normalize_texts
from affectstream.model.stopwords import is_content_word
from affectstream.model.targets import markers_of

SOURCE_SPECIAL, SOURCE_TEXT, SOURCE_IMAGE = -1, 0, 1
SOURCE_NAMES = {SOURCE_TEXT: "text", SOURCE_IMAGE: "image"}

# The field labels of the offline describer's structured description (`objects: … text in image: "…".
# scene: …`) are its layout, not its content: they are never selected, so rationales show what the image
# holds rather than the words "objects" and "scene". Free-text VLM descriptions rarely match.
DESCRIPTION_FIELD_LABELS = re.compile(r"\b(?:objects|text in image|scene):")
WORD = re.compile(r"\S+")
# which tokens the scorer may choose (AlignedConfig.token_selection): "all" real tokens, or only the tokens of
# "content" words (model.stopwords.is_content_word) — then a rationale is never "the", "is" or "!"
TOKEN_SELECTIONS = ("all", "content")


@dataclass
class EncodedPairs:
    input_ids: torch.Tensor            # (batch, seq)
    attention_mask: torch.Tensor       # (batch, seq)
    token_type_ids: torch.Tensor | None
    selectable: torch.Tensor           # (batch, seq) bool: a real token of the text or the description
    source: torch.Tensor               # (batch, seq) int8: SOURCE_TEXT | SOURCE_IMAGE | SOURCE_SPECIAL
    offsets: torch.Tensor              # (batch, seq, 2) char span in its own side's string, from its first non-space
    texts: list[str]                   # the text side as tokenised (normalised): what `offsets` index into
    descriptions: list[str]            # the description side as tokenised

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "selectable": self.selectable}
        if self.token_type_ids is not None:
            inputs["token_type_ids"] = self.token_type_ids
        return inputs


def encoding_options(config) -> dict[str, str]:
    """`encode_pairs`'s model-dependent options from a model's config (AlignedConfig): how its text is
    normalised and which tokens it may choose, so training, calibration, evaluation and serving read alike."""
    return {"normalization": config.text_normalization, "selection": config.token_selection}


@functools.lru_cache(maxsize=16)
def pair_encoder(tokenizer: PreTrainedTokenizerFast, max_length: int) -> Tokenizer:
    """The Rust tokenizer behind `tokenizer`, configured once for pair truncation and dynamic padding.

    Calling it directly skips transformers' per-call Python (re-configuring truncation and padding,
    flattening encodings): 20 ms -> 4.5 ms per batch of 64 posts. A private copy, so the shared
    tokenizer's state is never mutated under another thread.
    """
    rust = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    rust.enable_truncation(max_length, strategy="longest_first")
    rust.enable_padding(direction=tokenizer.padding_side, pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token,
                        pad_type_id=tokenizer.pad_token_type_id)
    return rust


def encode_pairs(
    tokenizer: PreTrainedTokenizerFast, texts: list[str], descriptions: list[str], max_length: int,
    marked: str = "", normalization: str = "none", selection: str = "all",
) -> EncodedPairs:
    """Tokenise a batch with dynamic padding (to the longest pair in the batch, not to max_length).

    ``marked``: a target format (``model.targets``) when the texts were written by ``mark_target``; the
    tokens of its markers are never selected, like the describer's field labels.
    ``normalization``: the model's ``text_normalization`` scheme (``model.normalize``), applied to the
    post text only. Not to the description: it is written by a captioner (no handles, links or
    elongations), and the offline describer's quoted OCR text and field labels must reach the model and
    the field-label pattern exactly as the describer wrote them. The returned ``texts`` are the
    normalised ones, so rationale offsets slice the words the model read.
    ``selection``: the model's ``token_selection``; "content" leaves only content-word tokens selectable,
    and not the marked target's own name, except in a post that has none (it keeps every real token but
    the markers, so it still has a rationale)."""
    if not tokenizer.is_fast:
        raise TypeError("affectstream needs a fast tokenizer (offsets and sequence ids)")
    texts = normalize_texts(list(texts), normalization, marked)
    descriptions = list(descriptions)
    encodings = pair_encoder(tokenizer, max_length).encode_batch(list(zip(texts, descriptions)))
    input_ids = torch.tensor([e.ids for e in encodings])
    attention_mask = torch.tensor([e.attention_mask for e in encodings])
    spans = [e.offsets for e in encodings]
    if spans_may_start_on_space(tokenizer):
        spans = [[skip_leading_space(span, (text, description), seq_id) for span, seq_id in zip(row, e.sequence_ids)]
                 for row, e, text, description in zip(spans, encodings, texts, descriptions)]
    offsets = torch.tensor(spans).reshape(len(encodings), -1, 2)
    source = torch.tensor([[SOURCE_SPECIAL if seq_id is None else seq_id for seq_id in e.sequence_ids]
                           for e in encodings], dtype=torch.int8)
    uses_token_types = "token_type_ids" in tokenizer.model_input_names
    token_type_ids = torch.tensor([e.type_ids for e in encodings]) if uses_token_types else None
    # a token with an empty char span (e.g. a lone space piece) carries no word for the rationale
    non_empty = offsets[..., 1] > offsets[..., 0]
    selectable = (source != SOURCE_SPECIAL) & attention_mask.bool() & non_empty & ~field_label_tokens(descriptions, source, offsets)
    if marked:
        selectable &= ~tokens_inside(texts, markers_of(marked), source, offsets, SOURCE_TEXT)
    if selection == "content":
        content = selectable & ~function_word_tokens(texts, source, offsets, SOURCE_TEXT) \
            & ~function_word_tokens(descriptions, source, offsets, SOURCE_IMAGE)
        if marked:
            content &= ~tokens_inside(texts, markers_of(marked, whole_mentions=True), source, offsets, SOURCE_TEXT)
        selectable = torch.where(content.any(dim=1, keepdim=True), content, selectable)
    elif selection != "all":
        raise ValueError(f"selection must be one of {TOKEN_SELECTIONS}, got {selection!r}")
    return EncodedPairs(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        selectable=selectable, source=source, offsets=offsets, texts=texts, descriptions=descriptions)


@functools.lru_cache(maxsize=16)
def spans_may_start_on_space(tokenizer: PreTrainedTokenizerFast) -> bool:
    """Whether a token's char span can include the space before its word. SentencePiece tokenizers whose
    `▁` marks the space (DeBERTa-v2's) report `▁scene` over " scene"; WordPiece, byte-level BPE (trimmed
    offsets) and XLM-R's report "scene". Probed once per tokenizer, so the others pay nothing."""
    sides = ("a b", "c d")
    encoding = pair_encoder(tokenizer, 16).encode(*sides)
    return any(sides[seq_id][start:end][:1].isspace()
               for (start, end), seq_id in zip(encoding.offsets, encoding.sequence_ids) if seq_id is not None)


def skip_leading_space(span: tuple[int, int], sides: tuple[str, str], seq_id: int | None) -> tuple[int, int]:
    """The span from its first non-space character; a piece that is only the space becomes empty."""
    if seq_id is None:
        return span
    start, end = span
    side = sides[seq_id]
    while start < end and side[start].isspace():
        start += 1
    return start, end


def field_label_tokens(descriptions: list[str], source: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(batch, seq) bool: description tokens inside a DESCRIPTION_FIELD_LABELS match."""
    return tokens_inside(descriptions, DESCRIPTION_FIELD_LABELS, source, offsets, SOURCE_IMAGE)


def function_word_tokens(sides: list[str], source: torch.Tensor, offsets: torch.Tensor, side: int) -> torch.Tensor:
    """(batch, seq) bool: tokens of `side` inside a whitespace-delimited word that is not a content word."""
    spans = [[m.span() for m in WORD.finditer(string) if not is_content_word(m.group())] for string in sides]
    return tokens_in_spans(spans, source, offsets, side)


def tokens_inside(sides: list[str], pattern: re.Pattern, source: torch.Tensor, offsets: torch.Tensor,
                  side: int) -> torch.Tensor:
    """(batch, seq) bool: tokens of `side` (SOURCE_TEXT | SOURCE_IMAGE) inside a match of `pattern` in that side's string."""
    return tokens_in_spans([[m.span() for m in pattern.finditer(string)] for string in sides], source, offsets, side)


def tokens_in_spans(spans: list[list[tuple[int, int]]], source: torch.Tensor, offsets: torch.Tensor,
                    side: int) -> torch.Tensor:
    """(batch, seq) bool: tokens of `side` whose char span lies inside one of their row's `spans` (sorted,
    not overlapping: regex matches)."""
    if not any(spans):
        return torch.zeros(source.shape, dtype=torch.bool)
    # one sorted line for the whole batch (row r's chars at r·stride + c), so one searchsorted finds, for every
    # token, the last span starting at or before it: this runs for every post on the serving path
    stride = int(max(offsets.max().item(), max(hi for row in spans for _, hi in row))) + 1
    rows = [(r, lo, hi) for r, row_spans in enumerate(spans) for lo, hi in row_spans]
    span_lo = torch.tensor([r * stride + lo for r, lo, _ in rows])
    span_hi = torch.tensor([r * stride + hi for r, _, hi in rows])
    base = torch.arange(source.shape[0]).unsqueeze(1) * stride                    # (batch, 1)
    token_lo, token_hi = base + offsets[..., 0], base + offsets[..., 1]           # (batch, seq)
    i = torch.searchsorted(span_lo, token_lo, right=True) - 1                    # (batch, seq)
    inside = (i >= 0) & (token_hi <= span_hi[i.clamp(min=0)])
    return inside & (source == side)
