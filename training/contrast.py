"""Contrast scores: does the model tell apart targets of one sentence that the annotators told apart?

A post-level model in disguise predicts the same label for every target of a post. On the sentences
whose targets have *different* gold labels ("contrast sentences": every MAMS sentence, a minority of
SemEval's) two shares show whether target marking does its job:

- ``contrast_share``: the share of contrast sentences whose predicted labels also differ (not all equal);
- ``both_right``: the share of contrast sentences whose every target is predicted right.

A constant predictor scores 0 on both. docs/target-data.md says which sets have contrast sentences.
"""
from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from affectstream.training.samples import Sample

# The target-level loaders' ids name the sentence: "<set>:<file>:s<sentence>:t<target>".
_TARGET_SUFFIX = re.compile(r":t\d+$")


@dataclass(frozen=True)
class ContrastScores:
    sentences: int                  # sentences (groups) seen
    multi_target: int               # of them, with at least two targets
    contrast: int                   # of those, whose gold labels differ: the denominator below
    contrast_share: float | None    # predicted labels differ too; None when `contrast` is 0
    both_right: float | None        # every target right; None when `contrast` is 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def contrast_scores(sentence_ids: Sequence[Hashable], gold: Sequence[str], predicted: Sequence[str]) -> ContrastScores:
    """Per-target ``gold`` and ``predicted`` labels, each target's sentence in ``sentence_ids`` (same
    length, any order: targets are grouped by id) → ContrastScores."""
    if not len(sentence_ids) == len(gold) == len(predicted):
        raise ValueError(f"sentence_ids, gold and predicted differ in length: "
                         f"{len(sentence_ids)}, {len(gold)}, {len(predicted)}")
    groups: dict[Hashable, list[tuple[str, str]]] = {}
    for sid, g, p in zip(sentence_ids, gold, predicted):
        groups.setdefault(sid, []).append((g, p))
    multi = [pairs for pairs in groups.values() if len(pairs) >= 2]
    contrast = [pairs for pairs in multi if len({g for g, _ in pairs}) > 1]
    differ = sum(len({p for _, p in pairs}) > 1 for pairs in contrast)
    right = sum(all(g == p for g, p in pairs) for pairs in contrast)
    n = len(contrast)
    return ContrastScores(sentences=len(groups), multi_target=len(multi), contrast=n,
                          contrast_share=differ / n if n else None, both_right=right / n if n else None)


def sentence_key(sample: Sample) -> str:
    """Which sentence (post) a target-level sample belongs to, for ``contrast_scores``.

    The three-line sets' ids name it (``mams:train:s12:t2`` → ``mams:train:s12``); for other target-level
    data (TomBERT's tweets: one line per target, the tweet repeated) the split and text identify it.
    """
    if _TARGET_SUFFIX.search(sample.id):
        return _TARGET_SUFFIX.sub("", sample.id)
    return f"{sample.split}\n{sample.text}"
