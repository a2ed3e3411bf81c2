"""Mention detection: which tracked brands a text names, and where.

``MentionMatcher(catalog).find_mentions(text, source)`` returns ``Mention``s with ``span`` as [start, end)
offsets in the ORIGINAL text, in order of position, non-overlapping (the leftmost match wins, then the
longest: "acme corp" over "acme", "#acme" over "acme"). The rules (normalisation, word boundaries, case,
look-alikes, exclusions) are those of the brands file (``brands`` module docstring).

Design: one compiled ``re`` pattern per case rule, built as a trie of the normalised terms (common prefixes
shared, so the engine walks the trie instead of trying every alternative: ~200,000 ASCII posts/s on one
core with 5,000 terms, ``bench/mentions.py``), wrapped in ``(?<!\\w)…(?!\\w)`` for word boundaries; every
term is ``re.escape``d, so ``c++`` or ``(x)`` are literal. Texts are normalised (invisible characters
removed, NFKC, casefold) before matching; ASCII texts, and texts that normalisation leaves the same length,
keep their offsets, others are normalised per grapheme-like cluster (a character and its combining marks)
with a map from every normalised character back to the original cluster (an invisible character is a cluster
of its own that yields nothing), so a span always points at what the user wrote (``Ａｃｍｅ`` → its 4 full-width characters, ``ac\\u200bme`` → 5 characters).

``MentionDetector`` is what the caption stage holds: the matcher of the current brands file, reloaded when
the file changes (a bad new file keeps the old catalog and is logged once), and ``detect(text, caption)``
with the per-post cap.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from affectstream.streaming.worker.brands import (
    ZERO_WIDTH, Brand, BrandCatalog, BrandsFileError, Term, file_signature, load_catalog,
)

log = logging.getLogger("affectstream.mentions")

SOURCES = ("text", "image")
MENTION_KEYS = frozenset({"brand", "name", "alias", "source", "span"})


@dataclass(frozen=True)
class Mention:
    brand: str                    # brand id from the brands file
    name: str                     # the brand's display name (what the model is told the target is)
    alias: str                    # the alias / @handle / #hashtag / $cashtag that matched, as written in the file
    source: str                   # "text" (post text) or "image" (the image description / OCR text)
    span: tuple[int, int]         # [start, end) character offsets in the post text or in the caption

    def to_dict(self) -> dict[str, Any]:
        return {"brand": self.brand, "name": self.name, "alias": self.alias, "source": self.source,
                "span": [self.span[0], self.span[1]]}


def mention_from_dict(obj: Any) -> Mention:
    """The JSON form back to a Mention; ValueError when it is not exactly that form."""
    if not isinstance(obj, dict) or set(obj) != MENTION_KEYS:
        raise ValueError(f"a mention is an object with keys {sorted(MENTION_KEYS)}")
    span = obj["span"]
    if (not isinstance(span, list) or len(span) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)):
        raise ValueError("span must be [start, end] integers")
    if not all(isinstance(obj[k], str) and obj[k] for k in ("brand", "name", "alias", "source")):
        raise ValueError("brand, name, alias and source must be non-empty strings")
    if obj["source"] not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    return Mention(brand=obj["brand"], name=obj["name"], alias=obj["alias"], source=obj["source"],
                   span=(span[0], span[1]))


def _trie_pattern(keys: list[str]) -> str:
    """A regex matching exactly ``keys`` (literal text; one space = any run of white space), prefixes shared.
    At every node the longer continuation is tried first (greedy), so the longest term wins."""
    root: dict = {}
    for key in keys:
        node = root
        for c in key:
            node = node.setdefault(c, {})
        node[""] = True

    def emit(node: dict) -> str:
        kids = sorted(c for c in node if c)
        if not kids:
            return ""
        parts = [(r"\s+" if c == " " else re.escape(c)) + emit(node[c]) for c in kids]
        body = parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"
        return f"(?:{body})?" if "" in node else body

    return r"(?<!\w)(?:" + emit(root) + r")(?!\w)"


def _normalise(text: str, casefold: bool) -> tuple[str, list[int] | None, list[int] | None]:
    """(normalised text, start offsets, end offsets): for every normalised character, the [start, end) of
    the original characters it came from; (text', None, None) when offsets are unchanged."""
    if text.isascii():
        return (text.lower() if casefold else text), None, None
    if not any(c in ZERO_WIDTH for c in text) and unicodedata.is_normalized("NFKC", text):
        folded = text.casefold() if casefold else text
        if len(folded) == len(text) and unicodedata.is_normalized("NFKC", folded):
            return folded, None, None  # casefold mapped every character to exactly one
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        while j < n and unicodedata.combining(text[j]) and text[i] not in ZERO_WIDTH:
            j += 1
        piece = unicodedata.normalize("NFKC", "".join(c for c in text[i:j] if c not in ZERO_WIDTH))
        if casefold:
            piece = unicodedata.normalize("NFKC", piece.casefold())
        out.append(piece)
        starts.extend([i] * len(piece))
        ends.extend([j] * len(piece))
        i = j
    return "".join(out), starts, ends


def _original(span: tuple[int, int], starts: list[int] | None, ends: list[int] | None) -> tuple[int, int]:
    """A span in the normalised text -> the span of the original characters it came from."""
    if starts is None:
        return span
    return starts[span[0]], ends[span[1] - 1]


class MentionMatcher:
    """Built once per catalog (compiling 50,000 terms takes about a second); ``find_mentions`` is pure."""

    def __init__(self, catalog: BrandCatalog):
        self.catalog = catalog
        self._terms: dict[bool, dict[str, tuple[Brand, Term]]] = {False: {}, True: {}}
        for brand in catalog.brands:
            for term in brand.terms:
                self._terms[term.case_sensitive][term.key] = (brand, term)
        # case-insensitive terms over the casefolded text; case-sensitive ones over the NFKC text
        self._patterns = [(cs, re.compile(_trie_pattern(sorted(terms))))
                          for cs, terms in self._terms.items() if terms]
        self._exclusions = {b.id: re.compile(_trie_pattern(sorted(b.exclusions)))
                            for b in catalog.brands if b.exclusions}

    def find_mentions(self, text: str, source: str) -> list[Mention]:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if not text:
            return []
        found: list[tuple[int, int, Brand, Term]] = []
        for case_sensitive, pattern in self._patterns:
            norm, starts, ends = _normalise(text, casefold=not case_sensitive)
            terms = self._terms[case_sensitive]
            for m in pattern.finditer(norm):
                hit = terms.get(" ".join(m.group().split()))
                if hit is None:  # cannot happen with the same normalisation on both sides; never crash on it
                    continue
                brand, term = hit
                s, e = _original(m.span(), starts, ends)
                found.append((s, e, brand, term))
        if not found:
            return []
        found.sort(key=lambda f: (f[0], -f[1]))
        kept: list[tuple[int, int, Brand, Term]] = []
        for f in found:
            if not kept or f[0] >= kept[-1][1]:
                kept.append(f)
        if self._exclusions:
            kept = self._drop_excluded(text, kept)
        return [Mention(brand=b.id, name=b.name, alias=t.text, source=source, span=(s, e)) for s, e, b, t in kept]

    def _drop_excluded(self, text: str, kept: list) -> list:
        """Drop a mention lying inside one of its brand's exclusion phrases (matched case-insensitively)."""
        excluded: dict[str, list[tuple[int, int]]] = {}
        norm = starts = ends = None
        out = []
        for s, e, brand, term in kept:
            pattern = self._exclusions.get(brand.id)
            if pattern is not None:
                if norm is None:
                    norm, starts, ends = _normalise(text, casefold=True)
                if brand.id not in excluded:
                    excluded[brand.id] = [_original(m.span(), starts, ends) for m in pattern.finditer(norm)]
                if any(xs <= s and e <= xe for xs, xe in excluded[brand.id]):
                    continue
            out.append((s, e, brand, term))
        return out


def detect(matcher: MentionMatcher, text: str, caption: str | None, cap: int) -> tuple[list[Mention], int]:
    """A post's mentions: its text's (source "text"), then its caption's (source "image"); at most ``cap``
    kept, in that order, and how many more there were (the post's ``mentions_overflow``)."""
    mentions = matcher.find_mentions(text, "text")
    if caption:
        mentions += matcher.find_mentions(caption, "image")
    cap = max(cap, 0)
    return mentions[:cap], max(len(mentions) - cap, 0)


class MentionDetector:
    """The matcher of the brands file at ``path``, reloaded when the file changes.

    ``load()`` raises BrandsFileError (a worker must not start on a bad file); ``maybe_reload()`` swaps in a
    new matcher when the file's signature (path, mtime, size) changed and the new file is valid; a bad or
    unreadable new file keeps the old matcher and is logged once (until the file changes again)."""

    def __init__(self, path: str, max_mentions: int):
        self.path = path
        self.max_mentions = max_mentions
        self.matcher: MentionMatcher | None = None
        self._signature: tuple | None = None
        self._rejected: tuple | None = None

    def load(self) -> MentionMatcher:
        signature = file_signature(self.path)
        self.matcher = MentionMatcher(load_catalog(self.path))
        self._signature = signature
        return self.matcher

    def maybe_reload(self) -> bool:
        signature = file_signature(self.path)
        if signature is None or signature in (self._signature, self._rejected):
            return False
        try:
            matcher = MentionMatcher(load_catalog(self.path))
        except BrandsFileError as e:
            self._rejected = signature
            log.warning("brands file %s not reloaded (%d error(s): %s); keeping the previous %d brands",
                        self.path, len(e.errors), "; ".join(e.errors[:3]),
                        len(self.matcher.catalog.brands) if self.matcher else 0)
            return False
        old = len(self.matcher.catalog.brands) if self.matcher else 0
        self.matcher, self._signature, self._rejected = matcher, signature, None
        log.info("brands file reloaded: %d -> %d brands (%s)", old, len(matcher.catalog.brands), self.path)
        return True

    def detect(self, text: str, caption: str | None) -> tuple[list[Mention], int]:
        if self.matcher is None:
            return [], 0
        return detect(self.matcher, text, caption, self.max_mentions)
