"""Per-(post, target) classification cost vs post-level classification, same predictor, same posts.

The mix is the bundled sample's: every post with at least one target, where a post's targets are the
brands its text mentions (the brands file's matcher, in order of first mention) and then the brands its
producer asserted, at most ``max_targets`` (the result contract's rule). Text mentions give the spans
`mark_target` marks; an asserted brand with no text mention is prefixed. Posts are classified text-only
(description ""): the caption stage's cost is the same for both paths and is measured elsewhere.

Both paths do the whole model job (tokenize → forward → top-K → rationale) and are timed interleaved,
best round kept (`bench.classify.interleaved`). The cost ratio is per post: post-level posts/s divided
by target-level posts/s (goal ≤ 1.3×). With a model that is not target-aware `predict_targets` runs
each distinct post once, so its ratio is about 1 by construction; the figure that matters is a
target-aware model's.
"""
from __future__ import annotations

from pathlib import Path

import orjson

from affectstream.bench.classify import interleaved
from affectstream.model.predictor import BatchPredictor
from affectstream.model.targets import TargetInput
from affectstream.streaming.tools.sample import BRANDS_FILE, POSTS
from affectstream.streaming.worker.brands import load_catalog
from affectstream.streaming.worker.mentions import MentionMatcher

COST_GOAL = 1.3


def sample_targets(posts_file: str | Path = POSTS, brands_file: str | Path = BRANDS_FILE,
                   max_targets: int = 3) -> list[tuple[str, list[TargetInput]]]:
    """(post text, its targets) for every post of the sample that has 1..max_targets targets."""
    catalog = load_catalog(str(brands_file))
    names = {brand.id: brand.name for brand in catalog.brands}
    matcher = MentionMatcher(catalog)
    mix = []
    for line in Path(posts_file).read_bytes().splitlines():
        try:
            post = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # the sample holds deliberately bad lines for the DLQ
        if not isinstance(post, dict) or not isinstance(post.get("text"), str):
            continue
        text = post["text"]
        spans: dict[str, list[tuple[int, int]]] = {}
        for mention in matcher.find_mentions(text, "text"):
            spans.setdefault(mention.brand, []).append(mention.span)
        for brand in post.get("brands") or []:
            if isinstance(brand, str) and brand:
                spans.setdefault(brand, [])
        targets = [TargetInput(text, "", names.get(brand, brand), tuple(found))
                   for brand, found in list(spans.items())[:max_targets]]
        if targets:
            mix.append((text, targets))
    return mix


def bench_targets(predictor: BatchPredictor, *, rounds: int = 3, max_targets: int = 3,
                  posts_file: str | Path = POSTS, brands_file: str | Path = BRANDS_FILE) -> dict:
    """Posts/s of post-level `predict` and of per-(post, target) `predict_targets` on the sample's mix,
    and their cost ratio (goal ≤ COST_GOAL)."""
    mix = sample_targets(posts_file, brands_file, max_targets)
    pairs = [(text, "") for text, _ in mix]
    items = [item for _, targets in mix for item in targets]
    best = interleaved({
        "post": lambda: len(predictor.predict(pairs)) and len(pairs),
        "targets": lambda: len(predictor.predict_targets(items)) and len(pairs),  # counted in posts
    }, rounds)
    ratio = best["post"].posts_per_s / best["targets"].posts_per_s
    return {
        "posts": len(pairs), "targets": len(items), "targets_per_post": round(len(items) / max(1, len(pairs)), 3),
        "target_aware": predictor.target_aware,
        "post_level_posts_per_s": round(best["post"].posts_per_s, 1),
        "target_level_posts_per_s": round(best["targets"].posts_per_s, 1),
        "target_level_pairs_per_s": round(best["targets"].posts_per_s * len(items) / max(1, len(pairs)), 1),
        "cost_ratio": round(ratio, 3), "goal": COST_GOAL, "met": ratio <= COST_GOAL,
    }
