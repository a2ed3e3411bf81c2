"""Social-text normalisation: one function, applied to the post text in training and in serving alike.

Scheme ``social-v1`` (the model's ``AlignedConfig.text_normalization``; ``none`` leaves text as it is):

- emoji → their English names as words (``😂`` → ``face with tears of joy``): WordPiece vocabularies
  (MiniLM) read an emoji as ``[UNK]``, yet it often carries a post's sentiment;
- ``@handle`` → ``@user`` and URLs → ``http`` (the convention of TweetEval and BERTweet's
  pre-processing): a handle or a link is a different string in every post and says nothing about its
  sentiment;
- a letter repeated three or more times → twice (``soooo`` → ``soo``): ``soo`` stays distinct from ``so``
  but every elongation reads the same;
- runs of whitespace → one space, none at either end.

A text written by ``model.targets.mark_target`` is normalised around its markers: the markers, the
mention between them (``« @acme »`` keeps ``@acme``: the target is what the model is asked about) and a
``«=Name»`` prefix are kept verbatim (a mention that itself holds ``»`` is ambiguous once marked: the
markers are still kept, the rest of it may be normalised). The function is idempotent, so normalising twice (an upstream
producer that already did it, a retry) changes nothing; the rationale's character offsets are offsets
into the normalised text, which the predictor slices its words from.
"""
from __future__ import annotations

import functools
import re

import emoji

from affectstream.model.targets import FORMATS, markers_of

SCHEMES = ("none", "social-v1")

# a handle not glued to a word before it (so an e-mail address is not a handle)
HANDLE = re.compile(r"(?<![\w@])@\w+")
# http(s) links and bare www. links; a URL never swallows a target marker
URL = re.compile(r"(?:https?://|www\.)[^\s«»<>]+", re.IGNORECASE)
# a letter (any script, not a digit or underscore) three or more times in a row
ELONGATION = re.compile(r"([^\W\d_])\1{2,}")
SPACES = re.compile(r"\s+")
# any character of any emoji the `emoji` package knows (none is ASCII-only): a text without one has no emoji,
# and skips `emoji.replace_emoji`, which costs ~150 µs per tweet against ~35 µs for the rest
EMOJI_CHARS = frozenset(c for key in emoji.EMOJI_DATA for c in key if not c.isascii())


def _emoji_words(chars: str, data: dict[str, str]) -> str:
    # ":face_with_tears_of_joy:" -> " face with tears of joy ": spaced so it never glues to a neighbour word
    return " " + data["en"].strip(":").replace("_", " ") + " "


def _social_v1(segment: str) -> str:
    """One unprotected stretch of text; whitespace collapsed but an edge space kept (it separates the
    stretch from a neighbouring marker). The order matters for idempotence: emoji names are written
    before elongations are shortened (``💤`` is ``ZZZ``)."""
    if not segment.isascii() and not EMOJI_CHARS.isdisjoint(segment):
        segment = emoji.replace_emoji(segment, replace=_emoji_words)
    segment = URL.sub("http", segment)
    segment = HANDLE.sub("@user", segment)
    segment = ELONGATION.sub(r"\1\1", segment)
    return SPACES.sub(" ", segment)


@functools.cache
def protected(target_format: str) -> re.Pattern:
    """What `mark_target` writes in ``target_format`` and normalisation must keep verbatim: a marked
    mention with its markers (``« @acme »``) and the not-in-text prefix (``«=Acme»``)."""
    markers_of(target_format)                      # ValueError for an unknown format
    fmt = FORMATS[target_format]
    prefix_open, prefix_close = fmt.prefix.split("{}")
    name = f"[^{re.escape(fmt.forbidden)}]*"
    return re.compile(f"{re.escape(prefix_open)}{name}{re.escape(prefix_close)}"
                      f"|{re.escape(fmt.open)}.*?{re.escape(fmt.close)}", re.DOTALL)


def normalize_text(text: str, scheme: str = "social-v1", marked: str = "") -> str:
    """``text`` normalised by ``scheme`` (see the module docstring). ``marked``: the target format of a
    text written by ``mark_target``, whose markers and marked mentions are kept as they are."""
    if scheme == "none":
        return text
    if scheme != "social-v1":
        raise ValueError(f"unknown text normalisation {scheme!r}; known: {SCHEMES}")
    if not marked:
        return _social_v1(text).strip(" ")
    out, cursor = [], 0
    for match in protected(marked).finditer(text):
        out.append(_social_v1(text[cursor:match.start()]))
        out.append(match.group())
        cursor = match.end()
    out.append(_social_v1(text[cursor:]))
    return "".join(out).strip(" ")


def normalize_texts(texts: list[str], scheme: str = "social-v1", marked: str = "") -> list[str]:
    if scheme == "none":
        return texts
    return [normalize_text(text, scheme, marked) for text in texts]
