"""The deployed default on ten comparative brand posts written before it was trained
(tests/data/comparative_brands.jsonl): each target's label, as a regression check. Of the twenty targets,
the model must keep at least what it scored when it was deployed (recorded in models/default/metrics.json,
key "comparative", by `affectstream evaluate models/default --comparative FILE --attach`). The README's own
example is a known miss today, marked as such."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from affectstream import Analyzer

ROOT = Path(__file__).resolve().parents[1]
POSTS = [json.loads(line) for line in (Path(__file__).parent / "data" / "comparative_brands.jsonl").read_text().splitlines()]
MODEL = ROOT / "models" / "default"


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.from_pretrained(MODEL, captioner="none", device="cpu")


def target_labels(analyzer: Analyzer, post: dict) -> dict[str, str]:
    analysis = analyzer(post["text"], brands=list(post["targets"]))
    return {t.brand: t.label for t in analysis.targets}


def test_the_deployed_default_is_one_model_for_posts_and_brands(analyzer):
    assert analyzer.target_aware, "models/default must read targets (issue: one model for both questions)"


@pytest.mark.xfail(strict=True, reason="known miss of the deployed default (docs/brands.md): 'switched from acme to "
                   "nimbus' reads acme as positive; strict, so a model that gets it right turns this red until "
                   "the mark is removed")
def test_the_readme_example_labels_each_brand_apart(analyzer):
    labels = target_labels(analyzer, POSTS[0])
    assert labels == {"acme": "negative", "nimbus": "positive"}, labels


def test_comparative_posts_keep_their_deployed_score(analyzer):
    recorded = json.loads((MODEL / "metrics.json").read_text())["comparative"]
    right = sum(target_labels(analyzer, post)[brand] == gold for post in POSTS for brand, gold in post["targets"].items())
    assert recorded["n"] == sum(len(p["targets"]) for p in POSTS)
    assert right >= recorded["right"], f"{right} of {recorded['n']} targets right; {recorded['right']} when deployed"
