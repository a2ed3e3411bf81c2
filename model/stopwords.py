"""English function words, chat fillers and describer boilerplate: words that never explain a sentiment.

One list for every place that asks "is this rationale word a reason?": the driver terms of the Redis sink
(streaming/worker/driver_terms.py) and the rationale readability figure of `affectstream evaluate`
(training/readability.py).
"""
from __future__ import annotations

import functools

from affectstream.model.rationale import EMOTICON, display_word

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


@functools.lru_cache(maxsize=1 << 16)  # asked for every word of every post on the serving path; words repeat
def is_content_word(word: str) -> bool:
    """Whether a whitespace-delimited word can be a reason: an emoticon, or a word of two characters or more
    with a letter or digit that is not a function word once its edge punctuation and a leading '#'/'@' are
    gone (a lone "s" is what is left of "»'s" after a marked brand)."""
    if EMOTICON.fullmatch(word.strip()):
        return True
    w = display_word(word.strip()).lower().lstrip("#@")
    return len(w) >= 2 and any(c.isalnum() for c in w) and w not in STOPWORDS
