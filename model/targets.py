"""Targets: which brand (or other entity) a prediction is about, and how the model is told.

The target enters the *text* side of the pair as markers around each mention, the way TomBERT's data
marks it with ``$T$`` and target-marking papers wrap it in tokens. One function, `mark_target`, writes
the marked text for training and for serving alike (format ``marked-v2``, the default):

- target mentioned at ``spans``: each mention wrapped, ``Switched from acme to « nimbus »``;
- target not in the text (no spans: named only in the image, or asserted by the producer):
  ``«=Nimbus» Switched from …``.

Why these markers: ``«`` and ``»`` are one token each in WordPiece (BERT, MiniLM) and byte-level BPE
(RoBERTa) vocabularies, so no vocabulary is added, any Hugging Face encoder reads them, and a marked
mention costs two tokens; they almost never occur in tweets (2 of 6,741 training lines). They are
separated from the mention by spaces, so a rationale word is always the post's own word, never glued
to a marker. The tokens of a marker (and of the ``«=…»`` prefix, whose name is not a word of the post)
are never selected for pooling or the rationale (`markers_of`, used by ``model.tokenization``).

``marked-v1`` (``<t> nimbus </t>``, ``<t=Nimbus>``) was measured first: the same accuracy within the
seed spread, but 7 extra tokens per mention made (post, target) classification 1.6× post-level on the
sample's mix (goal ≤ 1.3×). It stays readable so a model trained with it serves unchanged.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

TARGET_FORMAT = "marked-v2"          # AlignedConfig.target_format of a model trained with mark_target now


@dataclass(frozen=True)
class MarkerFormat:
    open: str                     # before a mention
    close: str                    # after a mention
    prefix: str                   # "{}" is the target's name; used when the text does not mention it
    pattern: re.Pattern           # every marker this format writes: tokens inside a match are never selectable
    forbidden: str                # characters removed from a name put inside the prefix
    mention: re.Pattern           # a marked mention or prefix whole, markers and name: with content-word
                                  # selection none of it is chosen ("acme" never explains acme's label)


FORMATS: dict[str, MarkerFormat] = {
    "marked-v2": MarkerFormat("«", "»", "«={}»", re.compile(r"«=[^«»]*»|[«»]"), "«»", re.compile(r"«[^«»]*»")),
    "marked-v1": MarkerFormat("<t>", "</t>", "<t={}>", re.compile(r"</?t>|<t=[^<>]*>"), "<>",
                              re.compile(r"<t>.*?</t>|<t=[^<>]*>")),
}
MARKERS = FORMATS[TARGET_FORMAT].pattern


def markers_of(target_format: str, whole_mentions: bool = False) -> re.Pattern:
    """The marker pattern of a model's `target_format` (``whole_mentions``: the pattern of a marked mention
    with its name); ValueError for a format this code cannot write."""
    if target_format not in FORMATS:
        raise ValueError(f"unknown target format {target_format!r}; known: {sorted(FORMATS)}")
    return FORMATS[target_format].mention if whole_mentions else FORMATS[target_format].pattern


@dataclass(frozen=True)
class TargetInput:
    text: str                                      # post text
    description: str                               # image description ("" if none)
    target: str                                    # the target as the model should read it (brand display name)
    spans: tuple[tuple[int, int], ...] = ()        # where the target is mentioned in `text` (() = not in the text)


def shift_scores(scores: dict[str, float], bias: tuple[float, ...], labels: tuple[str, ...]) -> dict[str, float]:
    """softmax(logits + b) from softmax(logits): p_c·exp(b_c), renormalised. The target bias (AlignedConfig.
    target_bias) applies after any backend's softmax, so torch, ONNX and int8 serving all honour it."""
    weighted = {label: scores[label] * math.exp(b) for label, b in zip(labels, bias)}
    total = sum(weighted.values()) or 1.0
    return {label: value / total for label, value in weighted.items()}


def normalise_spans(spans: Iterable[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Spans clamped to [0, length], empty ones dropped, sorted, overlapping or touching ones merged."""
    clamped = sorted((max(0, min(int(s), length)), max(0, min(int(e), length))) for s, e in spans)
    merged: list[tuple[int, int]] = []
    for start, end in clamped:
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _target_name(target: str, forbidden: str) -> str:
    """The name as it goes inside the prefix: one line, no marker characters (they would end the marker)."""
    for char in forbidden:
        target = target.replace(char, " ")
    return " ".join(target.split())


def mark_target(text: str, target: str, spans: Iterable[tuple[int, int]] = (), target_format: str = TARGET_FORMAT) -> str:
    """The post text with the target marked (format ``target_format``, see the module docstring).

    ``spans`` are [start, end) character offsets of the target's mentions in ``text``, in any order;
    overlapping ones are merged and ones outside the text clamped. With no usable span the target is
    prefixed. Whitespace is added around a marker only where the neighbouring character is not already
    whitespace, so the post's words stay whole.
    """
    fmt = FORMATS[target_format] if target_format in FORMATS else FORMATS[TARGET_FORMAT]
    text = text or ""
    merged = normalise_spans(spans, len(text))
    if not merged:
        name = _target_name(target, fmt.forbidden)
        if not name:
            return text
        prefix = fmt.prefix.format(name)
        return f"{prefix} {text}" if text else prefix
    out: list[str] = []
    last = ""                                      # the last character written so far
    cursor = 0
    for start, end in merged:
        before = text[cursor:start]
        out.append(before)
        last = before[-1:] or last
        if last and not last.isspace():
            out.append(" ")
        out.append(f"{fmt.open} {text[start:end]} {fmt.close}")
        last = fmt.close[-1]
        after = text[end:end + 1]
        if after and not after.isspace():
            out.append(" ")
            last = " "
        cursor = end
    out.append(text[cursor:])
    return "".join(out)


def marker_spans(marked: str, target_format: str = TARGET_FORMAT) -> list[tuple[int, int]]:
    """[start, end) of every marker in a text written by `mark_target`."""
    return [m.span() for m in markers_of(target_format).finditer(marked)]


def from_placeholder(tweet: str, target: str, placeholder: str = "$T$") -> tuple[str, tuple[tuple[int, int], ...]]:
    """A tweet whose target was replaced by ``placeholder`` (TomBERT's ``$T$``) → the tweet with the target
    put back, and the target's spans in it (one per placeholder)."""
    parts = tweet.split(placeholder)
    text, spans = parts[0], []
    for part in parts[1:]:
        spans.append((len(text), len(text) + len(target)))
        text += target + part
    return text, tuple(spans)
