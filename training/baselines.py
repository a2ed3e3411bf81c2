"""Reference predictors to report next to the trained model on the same test split."""
from __future__ import annotations

from functools import lru_cache

from affectstream.training.samples import Sample

# The thresholds VADER's authors recommend for three-way classification of the compound score.
POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_label(text: str) -> str:
    compound = _analyzer().polarity_scores(text)["compound"]
    if compound >= POSITIVE_THRESHOLD:
        return "positive"
    if compound <= NEGATIVE_THRESHOLD:
        return "negative"
    return "neutral"


def vader_rule_baseline(samples: list[Sample]) -> list[str]:
    """VADER's rule-based analyzer on each sample's text (the image is ignored): compound >= 0.05 →
    positive, <= -0.05 → negative, else neutral."""
    return [vader_label(s.text) for s in samples]


# name -> predictor (samples -> labels); a dataset kind names its baseline in training.datasets.KINDS
BASELINES = {"vader_rule": vader_rule_baseline}
