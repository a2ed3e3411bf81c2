"""Dataset loaders: every raw layout becomes one ``training.samples.Dataset``.

``load_dataset(kind, path, seed=, split_file=)`` with kind one of:

- ``mvsa-single`` / ``mvsa-multiple``: MVSA raw directories (``mvsa.py``: cleaning rules, counts);
- ``msed``: MSED csv + images (``msed.py``), with emotions;
- ``vader``: VADER's 4,200 human-rated tweets, fetched from PyPI when ``path`` is None (``vader.py``);
- ``jsonl``: your own posts, one JSON object a line (``jsonl.py``);
- ``proxy``: "proxy-memes (synthetic)", sentiment carried by the image only (``proxy.py``).

Extra keyword options go to the loader: ``size``/``image_size`` for proxy, ``strict`` for jsonl.
"""
from __future__ import annotations

from typing import Any

from affectstream.training.datasets.jsonl import load_jsonl
from affectstream.training.datasets.msed import load_msed
from affectstream.training.datasets.mvsa import load_mvsa
from affectstream.training.datasets.proxy import load_proxy, render_meme
from affectstream.training.datasets.vader import load_vader
from affectstream.training.samples import Dataset

KINDS: tuple[str, ...] = ("mvsa-single", "mvsa-multiple", "msed", "vader", "jsonl", "proxy")

__all__ = ["KINDS", "load_dataset", "render_meme"]


def load_dataset(kind: str, path: str | None = None, *, seed: int = 13, split_file: str | None = None,
                 **options: Any) -> Dataset:
    kind = kind.strip().lower()
    if kind in ("vader", "proxy"):
        if kind == "vader":
            return load_vader(path, seed=seed, split_file=split_file, **options)
        return load_proxy(seed=seed, split_file=split_file, **options)
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    if path is None:
        raise ValueError(f"dataset kind {kind!r} needs a path")
    if kind in ("mvsa-single", "mvsa-multiple"):
        return load_mvsa(path, multiple=kind == "mvsa-multiple", seed=seed, split_file=split_file, **options)
    if kind == "msed":
        return load_msed(path, seed=seed, split_file=split_file, **options)
    return load_jsonl(path, seed=seed, split_file=split_file, **options)
