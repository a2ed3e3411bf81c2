"""Rationales: the selected top-K tokens merged back into whole words of the post text or description."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

# stripped from the ends of a word; '#' and '@' stay, they carry meaning on social media
EDGE_PUNCTUATION = "\"'`.,;:!?()[]{}<>«»“”‘’…-_*~|/\\"
# a whole word that is an emoticon is shown as it is: it is often what the model read the sentiment from
# (":'(" alone made "bad mood. :'(" negative), and stripping its punctuation would leave nothing
EMOTICON = re.compile(r"""(?:[<>]?[:;=8][-'^o*]?[()\[\]dDpPoO/\\|{}@*3xX$]+|[()\[\]dD/\\|{}@]+[-'^o*]?[:;=8]|</?3+|\^_*\^|[-T>]_+[-T<])""")


def display_word(word: str) -> str:
    """What a rationale shows for a whitespace-delimited word: an emoticon whole, else the word without its
    edge punctuation ("" for punctuation only: not shown)."""
    if EMOTICON.fullmatch(word):
        return word
    return word.strip(EDGE_PUNCTUATION)


@dataclass(frozen=True)
class RationaleWord:
    text: str
    score: float
    source: str  # "text" | "image"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TokenSpan:
    source: str     # "text" | "image"
    start: int      # char offsets into that side's string
    end: int
    score: float


def word_at(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a token's char span to the whitespace-delimited word around it."""
    start = max(0, min(start, len(text)))
    end = max(start, min(end, len(text)))
    while start < end and text[start].isspace():  # a span is anchored on its first non-space run
        start += 1
    if start == end:
        return start, start
    end = next((i for i in range(start, end) if text[i].isspace()), end)
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return start, end


def merge_to_words(spans: list[TokenSpan], sides: dict[str, str]) -> list[RationaleWord]:
    """Token spans -> whole words, one entry per (source, word) with its best token score, best first.

    Several sub-word tokens of one word ("un", "##believ", "##able") become that word once; the same
    word selected on both sides stays twice, because which side it came from is the point.
    """
    best: dict[tuple[str, str], RationaleWord] = {}
    for span in spans:
        side = sides.get(span.source, "")
        start, end = word_at(side, span.start, span.end)
        word = display_word(side[start:end])
        if not word:
            continue
        key = (span.source, word.lower())
        if key not in best or span.score > best[key].score:
            best[key] = RationaleWord(text=word, score=round(float(span.score), 4), source=span.source)
    return sorted(best.values(), key=lambda w: (-w.score, w.source, w.text))
