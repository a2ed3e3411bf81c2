"""Targets: which brand (or other entity) a prediction is about, and how the model is told.

The target enters the *text* side of the pair as markers around each mention, the way TomBERT's data
marks it with ``$T$`` and target-marking papers wrap it in tokens. One function, `mark_target`, writes
the marked text for training and for serving alike (format ``marked-v1``):

- target mentioned at ``spans``: each mention wrapped, ``Switched from <t> acme </t> to nimbus``;
- target not in the text (no spans: named only in the image, or asserted by the producer):
  ``<t=acme> Switched from …``.

Why these markers: they are plain characters every tokenizer keeps (``<``, ``t``, ``>``), so no
vocabulary is added and any Hugging Face encoder reads them; they are separated from the mention by
spaces, so a rationale word is always the post's own word, never glued to a marker. The tokens of a
marker (and of the ``<t=…>`` prefix, whose name is not a word of the post) are never selected for
pooling or the rationale (`marker_spans`, used by ``model.tokenization``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

TARGET_FORMAT = "marked-v1"          # AlignedConfig.target_format of a model trained with mark_target
MARK_OPEN, MARK_CLOSE = "<t>", "</t>"
# every marker mark_target writes; tokens inside a match are never selectable
MARKERS = re.compile(r"</?t>|<t=[^<>]*>")


@dataclass(frozen=True)
class TargetInput:
    text: str                                      # post text
    description: str                               # image description ("" if none)
    target: str                                    # the target as the model should read it (brand display name)
    spans: tuple[tuple[int, int], ...] = ()        # where the target is mentioned in `text` (() = not in the text)


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


def _target_name(target: str) -> str:
    """The name as it goes inside ``<t=…>``: one line, no angle brackets (they would end the marker)."""
    return " ".join(target.replace("<", " ").replace(">", " ").split())


def mark_target(text: str, target: str, spans: Iterable[tuple[int, int]] = ()) -> str:
    """The post text with the target marked (format ``marked-v1``, see the module docstring).

    ``spans`` are [start, end) character offsets of the target's mentions in ``text``, in any order;
    overlapping ones are merged and ones outside the text clamped. With no usable span the target is
    prefixed. Whitespace is added around a marker only where the neighbouring character is not already
    whitespace, so the post's words stay whole.
    """
    text = text or ""
    merged = normalise_spans(spans, len(text))
    if not merged:
        name = _target_name(target)
        if not name:
            return text
        return f"<t={name}> {text}" if text else f"<t={name}>"
    out: list[str] = []
    last = ""                                      # the last character written so far
    cursor = 0
    for start, end in merged:
        before = text[cursor:start]
        out.append(before)
        last = before[-1:] or last
        if last and not last.isspace():
            out.append(" ")
        out.append(f"{MARK_OPEN} {text[start:end]} {MARK_CLOSE}")
        last = ">"
        after = text[end:end + 1]
        if after and not after.isspace():
            out.append(" ")
            last = " "
        cursor = end
    out.append(text[cursor:])
    return "".join(out)


def marker_spans(marked: str) -> list[tuple[int, int]]:
    """[start, end) of every marker in a text written by `mark_target`."""
    return [m.span() for m in MARKERS.finditer(marked)]


def from_placeholder(tweet: str, target: str, placeholder: str = "$T$") -> tuple[str, tuple[tuple[int, int], ...]]:
    """A tweet whose target was replaced by ``placeholder`` (TomBERT's ``$T$``) → the tweet with the target
    put back, and the target's spans in it (one per placeholder)."""
    parts = tweet.split(placeholder)
    text, spans = parts[0], []
    for part in parts[1:]:
        spans.append((len(text), len(text) + len(target)))
        text += target + part
    return text, tuple(spans)
