"""Losses as pure functions of tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def uniformity_loss(pooled: torch.Tensor) -> torch.Tensor:
    """Batch-level uniformity regulariser: mean off-diagonal cosine similarity.

        z_i = pooled_i / ||pooled_i||
        L_uni = 1 / (B (B - 1)) · Σ_{i ≠ j} z_i · z_j

    1 when every sample has the same direction, 0 for mutually orthogonal samples, and as low as
    -1/(B-1) when they spread evenly; minimising it pushes the pooled representations of a
    mini-batch apart. A batch of one has no pairs and gives 0.

    pooled: (batch, hidden)
    """
    batch = pooled.shape[0]
    if batch < 2:
        return pooled.new_zeros(()) * pooled.sum()  # keeps the graph, value 0
    z = F.normalize(pooled.float(), dim=-1)          # (batch, hidden)
    sim = z @ z.T                                    # (batch, batch)
    off_diagonal = sim.sum() - sim.diagonal().sum()
    return off_diagonal / (batch * (batch - 1))


def aligned_objective(
    sentiment_logits: torch.Tensor,
    sentiment_labels: torch.Tensor,
    pooled: torch.Tensor,
    uniformity_weight: float,
    emotion_logits: torch.Tensor | None = None,
    emotion_labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """L = CE(sentiment) [+ CE(emotion)] + λ · L_uni(pooled). Emotion labels of -100 are ignored."""
    ce = F.cross_entropy(sentiment_logits.float(), sentiment_labels)
    parts = {"ce": ce}
    total = ce
    if emotion_logits is not None and emotion_labels is not None and (emotion_labels >= 0).any():
        emo = F.cross_entropy(emotion_logits.float(), emotion_labels, ignore_index=-100)
        parts["emotion_ce"] = emo
        total = total + emo
    uni = uniformity_loss(pooled)
    parts["uniformity"] = uni
    parts["loss"] = total + uniformity_weight * uni
    return parts
