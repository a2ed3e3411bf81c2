"""The model's one configuration object, a transformers `PreTrainedConfig` serialised as the deployed
directory's ``config.json``, and the label lists every layer imports from here.

The encoder's own config is a sub-config (``encoder_config``), stored as a dict in config.json and rebuilt
with ``AutoConfig.for_model`` — the way HF composite models (LLaVA's ``text_config``) keep theirs.
"""
from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoConfig, PreTrainedConfig

from affectstream.model.normalize import SCHEMES as NORMALIZATION_SCHEMES
from affectstream.model.tokenization import TOKEN_SELECTIONS

SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
# MSED's six emotion classes, in the order the MSED paper lists them.
EMOTION_LABELS: tuple[str, ...] = ("happiness", "sad", "neutral", "disgust", "anger", "fear")

# The encoder sees one pair: post text, then the image description. For RoBERTa the tokenizer
# renders it as `<s> text </s></s> description </s>`; for BERT-style encoders `[CLS] text [SEP] description [SEP]`.
DESCRIPTION_FORMAT = "pair(text, description)"
POOLINGS = ("topk", "all", "hybrid")


class AlignedConfig(PreTrainedConfig):
    model_type: ClassVar[str] = "affectstream-aligned"
    sub_configs: ClassVar[dict] = {"encoder_config": AutoConfig}

    encoder: str = "roberta-base"            # hub id or local path the encoder was initialised from
    encoder_config: dict | PreTrainedConfig | None = None  # the encoder's architecture (HF config)
    sentiment_labels: tuple[str, ...] | list[str] = SENTIMENT_LABELS
    emotion_labels: tuple[str, ...] | list[str] = ()  # empty: no emotion head
    top_k: int = 16                          # tokens selected per post (and shown as the rationale)
    max_length: int = 128                    # tokens for the whole pair; the longer side is truncated first
    pooling: str = "topk"                    # "topk" (the method) | "all" (ablation: mean of every token)
                                             # | "hybrid" (mean of the top-K pool and the mean of every token)
    top_k_ratio: float = 0.0                 # > 0: K per post = clamp(ceil(ρ·n tokens), top_k_min, top_k); 0: K = top_k
    top_k_min: int = 1
    min_weight_share: float = 0.0            # keep (pool and show) a top-K token only if its weight >= share × the top one's
    sentiment_bias: tuple[float, ...] | list[float] = ()  # per sentiment label, added to the logits (fitted on dev
                                             # by training.calibrate); empty: none, as in directories from before it
    target_bias: tuple[float, ...] | list[float] = ()     # per sentiment label, added on top of sentiment_bias to the
                                             # logits of (post, target) rows (fitted on target-level dev): one model
                                             # answers both questions, each with its own decision boundary
    scorer_hidden: int = 256
    dropout: float = 0.1
    uniformity_weight: float = 0.1           # λ in  L = CE + λ·L_uni
    captioner: str = "offline"               # image -> language model used to build descriptions
    description_format: str = DESCRIPTION_FORMAT
    target_format: str = ""                  # "" = post-level only; "marked-v1" = trained on model.targets.mark_target texts
    text_normalization: str = "none"         # model.normalize scheme applied to the post text ("none": directories from before it)
    token_selection: str = "all"             # "all" real tokens may be chosen, or only "content" words' (model.tokenization)
    version: str = "untrained"
    trained: bool = False
    training_data: str = ""

    def __post_init__(self, **kwargs: Any) -> None:
        self.sentiment_labels = tuple(self.sentiment_labels)
        self.emotion_labels = tuple(self.emotion_labels)
        self.sentiment_bias = tuple(float(b) for b in self.sentiment_bias)
        self.target_bias = tuple(float(b) for b in self.target_bias)
        if isinstance(self.encoder_config, dict):
            self.encoder_config = AutoConfig.for_model(**self.encoder_config)
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.top_k_ratio <= 1.0 or self.top_k_min < 1:
            raise ValueError(f"need 0 <= top_k_ratio <= 1 and top_k_min >= 1, got {self.top_k_ratio}, {self.top_k_min}")
        if not 0.0 <= self.min_weight_share <= 1.0:
            raise ValueError(f"min_weight_share must be in [0, 1], got {self.min_weight_share}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.text_normalization not in NORMALIZATION_SCHEMES:
            raise ValueError(f"text_normalization must be one of {NORMALIZATION_SCHEMES}, got {self.text_normalization!r}")
        if self.token_selection not in TOKEN_SELECTIONS:
            raise ValueError(f"token_selection must be one of {TOKEN_SELECTIONS}, got {self.token_selection!r}")
        if len(self.sentiment_labels) < 2:
            raise ValueError("need at least two sentiment labels")
        if self.sentiment_bias and len(self.sentiment_bias) != len(self.sentiment_labels):
            raise ValueError(f"sentiment_bias needs one value per sentiment label {self.sentiment_labels}, "
                             f"got {self.sentiment_bias}")
        if self.target_bias and len(self.target_bias) != len(self.sentiment_labels):
            raise ValueError(f"target_bias needs one value per sentiment label {self.sentiment_labels}, "
                             f"got {self.target_bias}")
        super().__post_init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        return self.encoder_config.hidden_size

    @property
    def initializer_range(self) -> float:
        """The encoder's init scale, used by `_init_weights` for the scorer and heads."""
        return getattr(self.encoder_config, "initializer_range", 0.02)

    def method_options(self) -> dict[str, Any]:
        """Only this class's own fields (no encoder config, no HF bookkeeping): what the model card shows."""
        return {name: getattr(self, name) for name in type(self).__annotations__
                if name not in ("model_type", "sub_configs", "encoder_config")}

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        # directories written before this class was a PreTrainedConfig nest the fields under "affectstream"
        if "affectstream" in config_dict:
            config_dict = {**config_dict["affectstream"], "encoder_config": config_dict["encoder_config"]}
        return super().from_dict(config_dict, **kwargs)


AutoConfig.register(AlignedConfig.model_type, AlignedConfig, exist_ok=True)  # AutoTokenizer/AutoConfig read our config.json
