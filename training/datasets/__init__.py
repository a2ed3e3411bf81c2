"""Dataset loaders: every raw layout becomes one ``training.samples.Dataset``.

``load_dataset(kind, path, seed=, split_file=)`` with kind one of the rows of ``KINDS``:

- ``mvsa-single`` / ``mvsa-multiple``: MVSA raw directories (``mvsa.py``: cleaning rules, counts);
- ``msed``: MSED csv + images (``msed.py``), with emotions;
- ``vader``: VADER's 4,200 human-rated tweets, fetched from PyPI when ``path`` is None (``vader.py``);
- ``vader-snippets``: the same raters' 19,503 review and editorial snippets from the same archive (``vader.py``);
- ``jsonl``: your own posts, one JSON object a line (``jsonl.py``);
- ``proxy``: "proxy-memes (synthetic)", sentiment carried by the image only (``proxy.py``);
- ``twitter2015`` / ``twitter2017``: target-level tweets in TomBERT's release format (``twitter.py``): each
  sample has a ``target`` the label is about;
- ``dong2014`` / ``mams`` / ``laptop14`` / ``restaurant14``: target-level sentences in the three-line ``$T$``
  format of the ABSADatasets repository (``absa.py``); ids group the targets of one sentence.

Extra keyword options go to the loader: ``size``/``image_size`` for proxy, ``strict`` for jsonl.
Everything that differs by kind (loader, whether it needs a path, which TrainConfig fields feed it,
its reference baseline, what the model card must say about it) is one row of ``KINDS``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from affectstream.training.datasets.absa import SETS as ABSA_SETS
from affectstream.training.datasets.absa import load_absa
from affectstream.training.datasets.jsonl import load_jsonl
from affectstream.training.datasets.msed import load_msed
from affectstream.training.datasets.mvsa import load_mvsa
from affectstream.training.datasets.proxy import load_proxy, render_meme
from affectstream.training.datasets.twitter import load_twitter
from affectstream.training.datasets.vader import load_vader, load_vader_snippets
from affectstream.training.samples import Dataset

__all__ = ["KINDS", "DatasetKind", "load_dataset", "render_meme"]


@dataclass(frozen=True)
class DatasetKind:
    load: Callable[..., Dataset]              # (path, *, seed, split_file, **options) -> Dataset
    needs_path: bool = True                   # False: fetched or generated when no path is given
    train_options: dict[str, str] = field(default_factory=dict)  # loader option -> TrainConfig field
    baseline: str | None = None               # a training.baselines.BASELINES name, reported next to the model
    synthetic: bool = False                   # generated data: the card says its scores mean nothing for real posts
    card_notes: tuple[str, ...] = ()          # extra lines for the model card's data section


def _pathless(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
    """A generator that reads no files: the registry's uniform call passes a path, which it ignores."""
    @functools.wraps(loader)
    def load(path: str | None, **kwargs: Any) -> Dataset:
        return loader(**kwargs)
    return load


KINDS: dict[str, DatasetKind] = {
    "mvsa-single": DatasetKind(functools.partial(load_mvsa, multiple=False)),
    "mvsa-multiple": DatasetKind(functools.partial(load_mvsa, multiple=True)),
    "msed": DatasetKind(load_msed),
    "vader": DatasetKind(load_vader, needs_path=False, baseline="vader_rule", card_notes=(
        "These are the tweets VADER's authors rated and evaluated their analyzer on, so the VADER baseline "
        "below is not an out-of-sample figure for VADER.",)),
    "vader-snippets": DatasetKind(load_vader_snippets, needs_path=False, card_notes=(
        "Review and editorial snippets (Amazon, movies, NYT) rated by VADER's raters on the tweets' scale: "
        "extra training data for the tweet model, not tweets.",)),
    "jsonl": DatasetKind(load_jsonl),
    "proxy": DatasetKind(_pathless(load_proxy), needs_path=False, train_options={"size": "proxy_size"}, synthetic=True),
    **{name: DatasetKind(functools.partial(load_twitter, name=name), card_notes=(
        "Target-level: one sample per (tweet, target); the label is the sentiment toward the target, which the "
        "model reads marked in the text (model.targets.mark_target). The release has no images, so this is text only.",))
       for name in ("twitter2015", "twitter2017")},
    **{name: DatasetKind(functools.partial(load_absa, name=name), card_notes=(
        "Target-level: one sample per (sentence, target), the target marked in the text as for the tweets; "
        "sentences with several targets (often of different polarities) are kept whole within one split.",))
       for name in ABSA_SETS},
}


def load_dataset(kind: str, path: str | None = None, *, seed: int = 13, split_file: str | None = None,
                 **options: Any) -> Dataset:
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {tuple(KINDS)}")
    spec = KINDS[kind]
    if path is None and spec.needs_path:
        raise ValueError(f"dataset kind {kind!r} needs a path")
    dataset = spec.load(path, seed=seed, split_file=split_file, **options)
    dataset.kind = kind
    return dataset
