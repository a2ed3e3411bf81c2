"""Are the rationale words reasons a person would accept? Two figures over a set of predictions:

- ``stopword_share``: among all rationale words shown, the share that are function words (model.stopwords)
  or bare punctuation;
- ``content_first``: the share of posts whose first (highest-scoring) rationale word is a content word.

Plus the mean number of words shown per post. Negations ("not", "never", "no") are in the stopword list, so
these figures are strict: a rationale "not good" counts one stopword of two. An emoticon counts as content.
"""
from __future__ import annotations

from collections.abc import Sequence

from affectstream.model.stopwords import is_content_word


def rationale_readability(rationales: Sequence[Sequence[str]]) -> dict[str, float | int]:
    """`rationales`: per post, its rationale words in the order shown (highest score first)."""
    words = [w for r in rationales for w in r]
    shown = [r for r in rationales if r]
    return {
        "posts": len(rationales),
        "words_per_post": len(words) / len(rationales) if rationales else 0.0,
        "stopword_share": sum(not is_content_word(w) for w in words) / len(words) if words else 0.0,
        "content_first": sum(is_content_word(r[0]) for r in shown) / len(shown) if shown else 0.0,
    }
