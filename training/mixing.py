"""The training mix: how much each extra dataset contributes (TrainConfig.max_extra_train)."""
from __future__ import annotations

import random

from affectstream.training.contrast import sentence_key
from affectstream.training.samples import Sample


def capped(samples: list[Sample], cap: int, seed: int) -> list[Sample]:
    """At most `cap` samples (0: all), drawn by whole sentence (training.contrast.sentence_key) so a sentence's
    targets, and the contrast between them, stay together."""
    if not cap or len(samples) <= cap:
        return samples
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(sentence_key(s), []).append(s)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    out: list[Sample] = []
    for key in keys:
        if len(out) >= cap:
            break
        out += groups[key]
    return out
