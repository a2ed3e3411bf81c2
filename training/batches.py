"""Training batches: length-bucketed shuffles and the encoding of samples as the model reads them (shared by
the training loop, the class-bias fit and evaluation)."""
from __future__ import annotations

import random

import torch

from affectstream.model.config import EMOTION_LABELS, SENTIMENT_LABELS
from affectstream.model.targets import TARGET_FORMAT
from affectstream.model.tokenization import encode_pairs
from affectstream.training.samples import Sample


def length_bucketed_batches(samples: list[Sample], descriptions: dict[str, str], batch_size: int,
                            rng: random.Random) -> list[list[Sample]]:
    """Shuffle, sort within windows of 20 batches by length, cut, shuffle the batches: little padding, still random."""
    order = samples[:]
    rng.shuffle(order)
    window = batch_size * 20
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda s: len(s.text) + len(descriptions.get(s.id, "")))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def encode_batch(tokenizer, batch: list[Sample], descriptions: dict[str, str], max_length: int,
                 target_format: str = TARGET_FORMAT, normalization: str = "none", selection: str = "all"):
    """Samples with a target are read with it marked (`Sample.model_text`); marker tokens are never selected.
    ``normalization``, ``selection``: the model's `text_normalization` and `token_selection`, so training reads
    text as serving will."""
    marked = target_format if any(s.target is not None for s in batch) else ""
    encoded = encode_pairs(tokenizer, [s.model_text(target_format) for s in batch],
                           [descriptions.get(s.id, "") for s in batch], max_length, marked=marked,
                           normalization=normalization, selection=selection)
    labels = torch.tensor([SENTIMENT_LABELS.index(s.label) for s in batch])
    emotions = torch.tensor([EMOTION_LABELS.index(s.emotion) if s.emotion else -100 for s in batch])
    return encoded, labels, emotions
