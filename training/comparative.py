"""Comparative brand posts: does each target get its own label? `affectstream evaluate MODEL --comparative FILE`.

FILE is JSON lines, one post each: ``{"text": "...", "targets": {"acme": "negative", "nimbus": "positive"}}``.
Every brand is looked up in the text (its first mention, case-insensitive) and marked there, as the classify
stage marks a mention; a brand the text does not name is read from the prefix. The result is a table
(post, brand, gold, predicted, the brand's top rationale words) and the count of targets right; with
``--attach`` it goes into the model's card and metrics.json (key ``comparative``), where the regression
test (tests/test_comparative_brands.py) reads it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from affectstream.model.targets import TargetInput


def load_posts(path: str | Path) -> list[dict]:
    posts = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        post = json.loads(line)
        if not isinstance(post.get("text"), str) or not isinstance(post.get("targets"), dict) or not post["targets"]:
            raise ValueError(f"{path}:{n}: need a 'text' string and a non-empty 'targets' object")
        posts.append(post)
    return posts


def spans_of(text: str, brand: str) -> tuple[tuple[int, int], ...]:
    """Every whole-word, case-insensitive mention of `brand` in `text`."""
    return tuple(m.span() for m in re.finditer(rf"(?<!\w){re.escape(brand)}(?!\w)", text, flags=re.IGNORECASE))


def score(predictor, posts: list[dict]) -> dict:
    items = [(post, brand, gold) for post in posts for brand, gold in post["targets"].items()]
    predictions = predictor.predict_targets([TargetInput(post["text"], "", brand, spans_of(post["text"], brand))
                                             for post, brand, _ in items])
    rows = [{"text": post["text"], "brand": brand, "gold": gold, "predicted": p.label,
             "rationale": [w.text for w in p.rationale[:3]]} for (post, brand, gold), p in zip(items, predictions)]
    return {"n": len(rows), "right": sum(r["gold"] == r["predicted"] for r in rows), "rows": rows}


def render(report: dict) -> str:
    lines = ["| post | brand | expected | model | its top words |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        mark = "" if r["gold"] == r["predicted"] else " ✗"
        lines.append(f"| {r['text']} | {r['brand']} | {r['gold']} | {r['predicted']}{mark} | {', '.join(r['rationale'])} |")
    lines.append(f"\n{report['right']} of {report['n']} targets right.")
    return "\n".join(lines)
