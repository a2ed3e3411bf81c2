"""The terms a result contributes to each of its brand buckets: its rationale words, made comparable.

Each bucket gets the rationale behind the label it counts there (``Result.bucket_labels``): a brand with a
target entry its target's rationale, any other bucket (a result from before targets, the untargeted
bucket, ``_all``) the post-level rationale. A word becomes a term (``normalise``) lower-cased, without edge
punctuation or a leading ``#``, and dropped when it is a stopword, a handle, a link, an emoticon, a number or a single
character; the words of the post's brands (ids, mention names and aliases) are dropped in every bucket,
since "acme" never explains why people feel something about acme. The side stays: a term is
``<side>:<word>``, ``text:refund`` or ``image:refund`` (docs/drivers.md).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from affectstream.model.rationale import EDGE_PUNCTUATION, EMOTICON
from affectstream.model.stopwords import STOPWORDS
from affectstream.streaming.worker.redis_keys import ALL_BRANDS, counted_brands
from affectstream.streaming.worker.result import Result

if TYPE_CHECKING:
    from affectstream.streaming.worker.settings import Settings

MAX_TERM_CHARS = 40
TERM_SEP = "\x1f"            # joins a post's terms into one script argument; no term holds a control character
MAX_TERMS_PER_BUCKET = 32   # per post and bucket: a rationale is top-K words, K is far smaller
SIDES = ("text", "image")
_WORD_SPLIT = re.compile(r"[^\w]+")


@functools.lru_cache(maxsize=1 << 16)  # words repeat (a Zipf-shaped stream): the sink pays once per word
def normalise(word: str) -> str | None:
    """A rationale word -> the term it counts as, or None when it explains nothing (module docstring)."""
    w = word.strip().lower()
    if w.startswith("@") or "://" in w or w.startswith("www.") or EMOTICON.fullmatch(w):
        return None
    w = w.strip(EDGE_PUNCTUATION).lstrip("#")
    if w.endswith("'s") or w.endswith("’s"):
        w = w[:-2]
    if (len(w) < 2 or len(w) > MAX_TERM_CHARS or not w.isprintable() or not any(c.isalpha() for c in w)
            or w in STOPWORDS):
        return None
    return w


def brand_words(result: Result) -> set[str]:
    """The words of every brand the result is about: ids, mention names and aliases, split into words."""
    words: set[str] = set()
    for brand in result.brands:
        words |= _name_words(str(brand))
    for target in result.targets:
        if type(target) is not dict and not isinstance(target, Mapping):   # (dict first: no ABC check)
            continue
        words |= _name_words(str(target.get("brand", "")))
        for mention in target.get("mentions") or ():
            if type(mention) is dict or isinstance(mention, Mapping):
                words |= _name_words(str(mention.get("name", "")))
                words |= _name_words(str(mention.get("alias", "")))
    return words


@functools.lru_cache(maxsize=1 << 16)
def _name_words(name: str) -> frozenset[str]:
    return _parts(name.lower())


@functools.lru_cache(maxsize=1 << 16)
def _parts(text: str) -> frozenset[str]:
    """``text`` and its words (split at anything but letters, digits and ``_``)."""
    return frozenset([text, *(part for part in _WORD_SPLIT.split(text) if part)])


@functools.lru_cache(maxsize=1 << 16)
def side_term(source: Any, text: Any) -> tuple[str, frozenset[str]] | None:
    """(rationale side, word) -> (``side:term``, the term's words), or None when it counts nothing."""
    if source not in SIDES:
        return None
    term = normalise(str(text))
    return None if term is None else (f"{source}:{term}", _parts(term))


def terms_of(rationale: Iterable[Any], drop: set[str]) -> tuple[str, ...]:
    """Rationale entries -> distinct ``side:term`` strings, in rationale order (best first)."""
    out: dict[str, None] = {}
    for entry in rationale:
        if not isinstance(entry, dict):  # a result parsed from JSON holds plain dicts
            continue
        try:
            found = side_term(entry.get("source"), entry.get("text", ""))
        except TypeError:  # an unhashable side or word: not a term
            continue
        if found is not None and drop.isdisjoint(found[1]):
            out[found[0]] = None
            if len(out) >= MAX_TERMS_PER_BUCKET:
                break
    return tuple(out)


def bucket_terms(result: Result, untargeted_brand: str = "") -> dict[str, tuple[str, ...]]:
    """Brand bucket -> the terms the result adds there, for the buckets of ``Result.bucket_labels`` but
    ``_all``: the whole stream's drivers are nobody's (alerts and the dashboard are per brand), and they
    would double the sink's term work. (The sink runs this for every result: no ABC check on the plain
    dicts a result holds.)"""
    own: dict[str, Any] = {}    # brand -> its target's rationale (the last entry for a brand, as bucket_labels)
    for t in result.targets:
        if ((type(t) is dict or isinstance(t, Mapping)) and isinstance(brand := t.get("brand"), str)
                and isinstance(t.get("label"), str)):
            own[brand] = t.get("rationale") or ()
    drop = brand_words(result)
    post_terms: tuple[str, ...] | None = None   # only when a bucket has no target of its own
    out = {}
    for brand in counted_brands([*own, *result.brands], untargeted_brand):   # the buckets bucket_labels names
        if brand == ALL_BRANDS:
            continue
        if brand in own:
            out[brand] = terms_of(own[brand], drop)
        else:
            post_terms = terms_of(result.rationale, drop) if post_terms is None else post_terms
            out[brand] = post_terms
    return out


def split_term(term: str) -> tuple[str, str]:
    """``text:refund`` -> ("text", "refund")."""
    side, _, word = term.partition(":")
    return side, word


# The rollup recomputes an hour once it ended this long ago (by the monitor's clock); until then a mark of
# the hour stays in ``rollup_due``, so the sink need not mark it again (``RedisSink``). docs/drivers.md.
ROLLUP_SETTLE_MS = 2 * 60_000
MARK_AGAIN_AFTER_MS = ROLLUP_SETTLE_MS // 2   # the sink marks every count once an hour is this far past its end


def driver_labels(settings: "Settings") -> tuple[str, ...]:
    """The labels whose posts' rationale terms are counted (``drivers.labels``, comma-separated)."""
    return tuple(label.strip() for label in settings.drivers.labels.split(",") if label.strip())
