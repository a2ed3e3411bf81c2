"""Pair encoding shared by training and serving: (post text, image description) -> one token sequence.

Both sides go through the encoder's own fast tokenizer as a *pair*, so the description lands in the same
representation space as the text (RoBERTa: `<s> text </s></s> description </s>`). The tokenizer tells which
side every token came from (`sequence_ids`), which gives the selectable mask (special and padding tokens are
never selected) and the rationale's `source`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

SOURCE_SPECIAL, SOURCE_TEXT, SOURCE_IMAGE = -1, 0, 1
SOURCE_NAMES = {SOURCE_TEXT: "text", SOURCE_IMAGE: "image"}


@dataclass
class EncodedPairs:
    input_ids: torch.Tensor            # (batch, seq)
    attention_mask: torch.Tensor       # (batch, seq)
    token_type_ids: torch.Tensor | None
    selectable: torch.Tensor           # (batch, seq) bool: a real token of the text or the description
    source: torch.Tensor               # (batch, seq) int8: SOURCE_TEXT | SOURCE_IMAGE | SOURCE_SPECIAL
    offsets: torch.Tensor              # (batch, seq, 2) char span of each token in its own side's string

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "selectable": self.selectable}
        if self.token_type_ids is not None:
            inputs["token_type_ids"] = self.token_type_ids
        return inputs


def encode_pairs(
    tokenizer: PreTrainedTokenizerFast, texts: list[str], descriptions: list[str], max_length: int
) -> EncodedPairs:
    """Tokenise a batch with dynamic padding (to the longest pair in the batch, not to max_length)."""
    if not tokenizer.is_fast:
        raise TypeError("affectstream needs a fast tokenizer (offsets and sequence ids)")
    enc = tokenizer(
        list(texts),
        list(descriptions),
        truncation="longest_first",
        max_length=max_length,
        padding=True,
        return_offsets_mapping=True,
        return_tensors="pt",
    )
    # one list per row from the Rust encodings; a per-token Python loop costs ~10-20 ms per batch of 64
    source = torch.tensor([[SOURCE_SPECIAL if seq_id is None else seq_id for seq_id in encoding.sequence_ids]
                           for encoding in enc.encodings], dtype=torch.int8)
    # a token with an empty char span (e.g. a lone space piece) carries no word for the rationale
    offsets = enc["offset_mapping"]
    non_empty = offsets[..., 1] > offsets[..., 0]
    selectable = (source != SOURCE_SPECIAL) & enc["attention_mask"].bool() & non_empty
    return EncodedPairs(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        token_type_ids=enc.get("token_type_ids"),
        selectable=selectable,
        source=source,
        offsets=offsets,
    )
