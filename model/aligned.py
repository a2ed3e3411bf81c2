"""The aligned classifier: encoder → token scorer → top-K selection → score-weighted pooling → heads.

The whole forward pass reads top to bottom in `AlignedClassifier.forward`. Shapes: B batch, T tokens,
H hidden, K selected tokens.

Why score-weighted pooling: a hard top-K index has no gradient, so a scorer used only to *choose*
tokens would never learn. Here the chosen tokens are pooled with weights softmax(scores of the chosen
tokens): the choice stays hard (only K tokens reach the heads, and they are the rationale), while the
loss reaches the scorer through the weights. `test_scorer_receives_gradient` proves it.

Options (AlignedConfig; each default keeps directories written before it behaving identically):
- `top_k_ratio` ρ: K follows the post's length, K_i = clamp(ceil(ρ·n_i), top_k_min, top_k) for a post of
  n_i real tokens. With a fixed K = 16 and tweets of ~20 tokens, top-K kept nearly every token.
- `min_weight_share` s: of the top-K, a token is kept only when its pooling weight is at least s times the
  top token's, i.e. its score is within ln(1/s) of the top score. The kept tokens are the ones pooled and
  the ones shown as the rationale, so the rationale is exactly what the top-K pool used.
- `pooling = "hybrid"`: the heads see the mean of the top-K pool and the plain mean of all real tokens.
  The top-K part adds weight to the chosen tokens on top of the context every token gives; measured
  against both pure forms with `affectstream ablate`.
- `sentiment_bias` b: added to the sentiment logits (logit adjustment), fitted on dev after training to
  maximise macro-F1 (`training/calibrate.py`). It is part of forward, so every backend (torch, the ONNX
  graphs traced from forward) predicts with it; empty (the default) adds nothing.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import AutoModel, PreTrainedModel

from affectstream.model.config import AlignedConfig
from affectstream.model.encoders import build_encoder


@dataclass
class AlignedOutput:
    sentiment_logits: torch.Tensor          # (B, n_sentiment)
    emotion_logits: torch.Tensor | None     # (B, n_emotion) when the model has an emotion head
    pooled: torch.Tensor                    # (B, H) what the heads see; the uniformity loss acts on it
    token_scores: torch.Tensor              # (B, T) scorer output, -inf where not selectable
    selected_idx: torch.Tensor              # (B, K) token positions, best first
    selected_scores: torch.Tensor           # (B, K) raw scores of the selected tokens
    selected_valid: torch.Tensor            # (B, K) bool: kept (pooled and shown); False past a post's own K,
                                            # below the weight share, or where it had fewer than K real tokens


class TokenScorer(nn.Module):
    """A small MLP ranking every token: hidden state -> one scalar."""

    def __init__(self, hidden: int, inner: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner, 1))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.net(hidden_states).squeeze(-1)  # (B, T, H) -> (B, T)


class AlignedClassifier(PreTrainedModel):
    """`save_pretrained` writes config.json + model.safetensors; `from_pretrained` rebuilds the encoder from
    `config.encoder_config` and loads every weight (see `model/deploy.py` for the serving entry point)."""

    config_class = AlignedConfig
    base_model_prefix = "aligned"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["TokenScorer"]  # the encoder's own (e.g. BertLayer) are gathered by post_init

    def __init__(self, config: AlignedConfig, encoder: PreTrainedModel | None = None):
        # a pretrained encoder (training) or one built from the config (loading a deployed directory)
        if encoder is not None:
            config.encoder_config = encoder.config
        elif config.encoder_config is None:
            raise ValueError("AlignedConfig.encoder_config is not set and no encoder was given")
        super().__init__(config)
        self.encoder = encoder if encoder is not None else build_encoder(config.encoder_config)
        # segment ids only for encoders that take them (DistilBERT and MPNet have no token_type_ids argument)
        self.encoder_takes_token_types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
        hidden = config.encoder_config.hidden_size
        self.scorer = TokenScorer(hidden, config.scorer_hidden, config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.sentiment_head = nn.Linear(hidden, len(config.sentiment_labels))
        self.emotion_head = nn.Linear(hidden, len(config.emotion_labels)) if config.emotion_labels else None
        # initialises only modules not yet initialised (scorer, heads): a given or loaded encoder keeps its weights
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,                    # (B, T)
        attention_mask: torch.Tensor,               # (B, T)
        selectable: torch.Tensor,                   # (B, T) bool: real text/description tokens
        token_type_ids: torch.Tensor | None = None,
        top_k: int | None = None,
        select_all: bool = False,                   # scorer warm-up (training): a soft pool over every token
    ) -> AlignedOutput:
        # 1. one encoder over the text + description pair: both modalities in one space
        encoder_kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.encoder_takes_token_types:
            encoder_kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**encoder_kwargs).last_hidden_state  # (B, T, H)

        # 2. rank every token; padding and special tokens can never be chosen. A post with no real
        #    token at all (empty text and description) falls back to the first position.
        #    (out of place: the traced ONNX graph of an in-place index_put set position 0 in every row of a
        #    batch that held such a post)
        first = torch.arange(selectable.shape[1], device=selectable.device) == 0       # (T,)
        selectable = selectable | (~selectable.any(dim=1, keepdim=True) & first)       # (B, T)
        token_scores = self.scorer(hidden).float().masked_fill(~selectable, float("-inf"))  # (B, T)

        # 3. hard top-K; positions beyond a short post's real tokens come back as -inf and are dropped
        #    `select_all` (the scorer warm-up of training) takes every real token, so every score gets a gradient
        k = hidden.shape[1] if select_all else min(top_k or self.config.top_k, hidden.shape[1])
        selected_scores, selected_idx = token_scores.topk(k, dim=1)  # (B, K), best first
        selected_valid = torch.isfinite(selected_scores)             # (B, K)
        # (the masks are combined out of place: ONNX export has no in-place `and`)
        ratio = 0.0 if select_all else self.config.top_k_ratio
        if ratio > 0:  # K follows the post's length
            n_real = selectable.sum(dim=1, keepdim=True)                                 # (B, 1)
            k_post = (ratio * n_real).ceil().clamp(min=self.config.top_k_min, max=k)  # (B, 1)
            selected_valid = selected_valid & (torch.arange(k, device=hidden.device) < k_post)  # (B, K)
        share = 0.0 if select_all else self.config.min_weight_share
        if share > 0:  # weight_j / weight_top = exp(s_j - s_top) >= share; the top token always passes
            selected_valid = selected_valid & (selected_scores >= selected_scores[:, :1] + math.log(share))
        kept_scores = selected_scores.masked_fill(~selected_valid, float("-inf"))    # (B, K)

        # 4. pooling: the method (score-weighted top-K), the ablation (plain mean of all real tokens) or both
        if self.config.pooling in ("topk", "hybrid"):
            weights = torch.softmax(kept_scores, dim=1)              # (B, K); -inf -> 0; gradient path to the scorer
            selected_hidden = hidden.gather(1, selected_idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, K, H)
            pooled = (weights.unsqueeze(-1).to(hidden.dtype) * selected_hidden).sum(dim=1)  # (B, H)
        if self.config.pooling in ("all", "hybrid"):
            mask = selectable.unsqueeze(-1).to(hidden.dtype)          # (B, T, 1)
            mean_all = (hidden * mask).sum(dim=1) / mask.sum(dim=1)   # (B, H)
            pooled = mean_all if self.config.pooling == "all" else (pooled + mean_all) / 2

        # 5. heads
        features = self.dropout(pooled)
        sentiment_logits = self.sentiment_head(features)              # (B, n_sentiment)
        if self.config.sentiment_bias:  # a constant per model: the ONNX trace bakes it into the graph
            # added in fp32: under bf16 a sum of logits ~3 and a bias of 0.3 rounds, flipping near-ties the fit saw apart
            bias = torch.tensor(self.config.sentiment_bias, dtype=torch.float32, device=sentiment_logits.device)
            sentiment_logits = sentiment_logits.float() + bias        # (B, n_sentiment) + (n_sentiment,)
        emotion_logits = self.emotion_head(features) if self.emotion_head is not None else None
        return AlignedOutput(
            sentiment_logits=sentiment_logits,
            emotion_logits=emotion_logits,
            pooled=pooled,
            token_scores=token_scores,
            selected_idx=selected_idx,
            selected_scores=selected_scores,
            selected_valid=selected_valid,
        )


AutoModel.register(AlignedConfig, AlignedClassifier, exist_ok=True)
