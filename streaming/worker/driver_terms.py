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

import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from affectstream.model.rationale import EDGE_PUNCTUATION, EMOTICON
from affectstream.streaming.worker.redis_keys import ALL_BRANDS, counted_brands
from affectstream.streaming.worker.result import Result

if TYPE_CHECKING:
    from affectstream.streaming.worker.settings import Settings

MAX_TERM_CHARS = 40
MAX_TERMS_PER_BUCKET = 32   # per post and bucket: a rationale is top-K words, K is far smaller
SIDES = ("text", "image")
_WORD_SPLIT = re.compile(r"[^\w]+")

STOPWORDS = frozenset("""
a about above after again against ain all am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't done down during
each either else ever every few for from further get gets getting go goes going gone got gotta had hadn't
has hasn't have haven't having he he'd he'll he's her here here's hers herself him himself his how how's i
i'd i'll i'm i've if in into is isn't it it's its itself just let let's lol may me might more most much must
mustn't my myself neither never no nor not now of off oh ok okay on once one only or other ought our ours
ourselves out over own per please pls quite rather really rt same say says see seems shall shan't she she'd
she'll she's should shouldn't so some such than that that's the their theirs them themselves then there
there's these they they'd they'll they're they've thing things this those though through thru to too u
under until up upon ur us very via was wasn't way we we'd we'll we're we've well were weren't what what's
when when's where where's whether which while who who's whom whose why why's will with within without won't
would wouldn't yeah yes yet you you'd you'll you're you've your yours yourself yourselves im ive dont cant
wont didnt doesnt isnt wasnt arent thats whats youre theyre amp also even still another
image photo picture pic shows showing shown background view close closeup
""".split())


def normalise(word: str) -> str | None:
    """A rationale word -> the term it counts as, or None when it explains nothing (module docstring)."""
    w = word.strip().lower()
    if w.startswith("@") or "://" in w or w.startswith("www.") or EMOTICON.fullmatch(w):
        return None
    w = w.strip(EDGE_PUNCTUATION).lstrip("#")
    if w.endswith("'s") or w.endswith("’s"):
        w = w[:-2]
    if len(w) < 2 or len(w) > MAX_TERM_CHARS or not any(c.isalpha() for c in w) or w in STOPWORDS:
        return None
    return w


def brand_words(result: Result) -> set[str]:
    """The words of every brand the result is about: ids, mention names and aliases, split into words."""
    names: list[str] = list(result.brands)
    for target in result.targets:
        if not isinstance(target, Mapping):
            continue
        names.append(str(target.get("brand", "")))
        for mention in target.get("mentions") or ():
            if isinstance(mention, Mapping):
                names += [str(mention.get("name", "")), str(mention.get("alias", ""))]
    words = set()
    for name in names:
        lowered = name.lower()
        words.add(lowered)
        words.update(part for part in _WORD_SPLIT.split(lowered) if part)
    return words


def terms_of(rationale: Iterable[Any], drop: set[str]) -> tuple[str, ...]:
    """Rationale entries -> distinct ``side:term`` strings, in rationale order (best first)."""
    out: dict[str, None] = {}
    for entry in rationale:
        if not isinstance(entry, Mapping) or entry.get("source") not in SIDES:
            continue
        term = normalise(str(entry.get("text", "")))
        if term is None or term in drop or any(part in drop for part in _WORD_SPLIT.split(term) if part):
            continue
        out[f"{entry['source']}:{term}"] = None
        if len(out) >= MAX_TERMS_PER_BUCKET:
            break
    return tuple(out)


def bucket_terms(result: Result, untargeted_brand: str = "") -> dict[str, tuple[str, ...]]:
    """Brand bucket -> the terms the result adds there, for the buckets of ``Result.bucket_labels``."""
    drop = brand_words(result)
    own = {t["brand"]: t.get("rationale") or () for t in result.targets
           if isinstance(t, Mapping) and isinstance(t.get("brand"), str) and isinstance(t.get("label"), str)}
    post_terms = terms_of(result.rationale, drop)
    out = {}
    for brand in counted_brands([*own, *result.brands], untargeted_brand):
        out[brand] = terms_of(own[brand], drop) if brand in own and brand != ALL_BRANDS else post_terms
    return out


def split_term(term: str) -> tuple[str, str]:
    """``text:refund`` -> ("text", "refund")."""
    side, _, word = term.partition(":")
    return side, word


def driver_labels(settings: "Settings") -> tuple[str, ...]:
    """The labels whose posts' rationale terms are counted (``drivers.labels``, comma-separated)."""
    return tuple(label.strip() for label in settings.drivers.labels.split(",") if label.strip())
