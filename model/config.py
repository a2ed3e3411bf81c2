"""The model's one configuration object, serialised into a deployed directory's ``config.json``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SENTIMENT_LABELS = ("negative", "neutral", "positive")
MSED_EMOTION_LABELS = ("happiness", "sad", "neutral", "disgust", "anger", "fear")

# The encoder sees one pair: post text, then the image description. For RoBERTa the tokenizer
# renders it as `<s> text </s></s> description </s>`; for BERT-style encoders `[CLS] text [SEP] description [SEP]`.
DESCRIPTION_FORMAT = "pair(text, description)"


@dataclass
class AlignedConfig:
    encoder: str = "roberta-base"            # hub id or local path the encoder was initialised from
    sentiment_labels: tuple[str, ...] = SENTIMENT_LABELS
    emotion_labels: tuple[str, ...] = ()     # empty: no emotion head
    top_k: int = 16                          # tokens selected per post (and shown as the rationale)
    max_length: int = 128                    # tokens for the whole pair; the longer side is truncated first
    pooling: str = "topk"                    # "topk" (the method) | "all" (ablation: mean of every token)
    scorer_hidden: int = 256
    dropout: float = 0.1
    uniformity_weight: float = 0.1           # λ in  L = CE + λ·L_uni
    captioner: str = "offline"               # image -> language model used to build descriptions
    description_format: str = DESCRIPTION_FORMAT
    version: str = "untrained"
    trained: bool = False
    training_data: str = ""

    def __post_init__(self) -> None:
        self.sentiment_labels = tuple(self.sentiment_labels)
        self.emotion_labels = tuple(self.emotion_labels)
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.pooling not in ("topk", "all"):
            raise ValueError(f"pooling must be 'topk' or 'all', got {self.pooling!r}")
        if len(self.sentiment_labels) < 2:
            raise ValueError("need at least two sentiment labels")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AlignedConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
