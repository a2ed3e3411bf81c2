"""Mention matching speed: posts per second on one core with 1,000 tracked brands x 5 terms (issue 11's goal:
at least 50,000 posts/s).

The catalog is generated: every brand has a made-up name as alias, a two-word alias ("<name> <product>"), an
@handle, a #hashtag and a $cashtag, plus one exclusion phrase for one brand in ten. The posts are the bundled
sample's texts with their brand words replaced by random catalog names in random forms (plain, capitalised,
@, #, $; one in five mentions none), one in five with non-ASCII characters (emoji, accented letters, a
zero-width space: the slow normalisation path), and one in three with an image description in the offline
describer's format, matched too (source "image"), exactly as the caption stage does (``mentions.detect``).
The timing loop is single-threaded pure Python, so it measures one core.
"""
from __future__ import annotations

import random
import time

from affectstream.bench.workload import DESCRIPTIONS, sample_texts
from affectstream.streaming.worker.brands import parse_catalog
from affectstream.streaming.worker.mentions import MentionMatcher, detect

GOAL_POSTS_PER_S = 50_000
SAMPLE_BRANDS = ("acme", "nimbus", "voltcar", "skyline")
PRODUCTS = ("phone", "coffee", "air", "app", "store", "pro", "max", "cafe")
SYLLABLES = ("ka", "lo", "mi", "ren", "tor", "va", "zu", "bel", "qui", "sto", "ner", "dax", "fi", "po", "lum")
NON_ASCII = (" 😍", " café", " naïve take", " \u200b", " 👍🏽 merci", " ¡olé!")


def _names(n: int, rng: random.Random) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(names)


def catalog_doc(n_brands: int = 1000, seed: int = 0) -> dict:
    """A brands document with ``n_brands`` brands x 5 terms (alias, two-word alias, handle, hashtag, cashtag)."""
    rng = random.Random(seed)
    brands = []
    for i, name in enumerate(_names(n_brands, rng)):
        brand = {"id": f"b{i:05d}", "name": name.title(), "aliases": [name, f"{name} {PRODUCTS[i % len(PRODUCTS)]}"],
                 "handles": [f"@{name}hq"], "hashtags": [f"#{name}love"], "cashtags": [f"${name[:5].upper()}{i}"]}
        if i % 10 == 0:
            brand["exclude"] = [f"{name} pie"]
        brands.append(brand)
    return {"brands": brands}


def realistic_posts(doc: dict, n: int, seed: int = 0) -> list[tuple[str, str | None]]:
    """(text, caption or None) pairs: sample texts with catalog brands named in varied forms."""
    rng = random.Random(seed)
    texts = sample_texts()
    brands = doc["brands"]
    out = []
    for _ in range(n):
        text = rng.choice(texts)
        if rng.random() < 0.8:
            b = rng.choice(brands)
            form = rng.choice([b["aliases"][0], b["aliases"][0].title(), b["aliases"][1], b["handles"][0],
                               b["hashtags"][0], b["cashtags"][0]])
            for word in SAMPLE_BRANDS:
                text = text.replace(word, form)
        else:
            for word in SAMPLE_BRANDS:
                text = text.replace(word, "the brand")
        if rng.random() < 0.2:
            text += rng.choice(NON_ASCII)
        caption = rng.choice(DESCRIPTIONS) if rng.random() < 1 / 3 else None
        out.append((text, caption))
    return out


def mention_matching_rate(n_brands: int = 1000, n_posts: int = 20_000, rounds: int = 3, seed: int = 0) -> dict:
    """Posts per second through ``mentions.detect`` (text + caption), best of ``rounds``, one core.

    Returns {"brands", "terms", "posts", "build_s", "posts_per_s", "mentions_per_post", "goal_posts_per_s",
    "met"}."""
    doc = catalog_doc(n_brands, seed)
    t0 = time.perf_counter()
    catalog = parse_catalog(doc, source="bench")
    matcher = MentionMatcher(catalog)
    build_s = time.perf_counter() - t0
    posts = realistic_posts(doc, n_posts, seed)
    best = float("inf")
    found = 0
    for _ in range(rounds):
        found = 0
        t0 = time.perf_counter()
        for text, caption in posts:
            mentions, overflow = detect(matcher, text, caption, 100)
            found += len(mentions) + overflow
        best = min(best, time.perf_counter() - t0)
    rate = n_posts / best
    return {"brands": len(catalog.brands), "terms": catalog.n_terms, "posts": n_posts, "build_s": round(build_s, 3),
            "posts_per_s": round(rate), "mentions_per_post": round(found / n_posts, 3),
            "goal_posts_per_s": GOAL_POSTS_PER_S, "met": rate >= GOAL_POSTS_PER_S}


if __name__ == "__main__":
    print(mention_matching_rate())
