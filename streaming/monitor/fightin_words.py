"""Which terms drive a change: the log-odds ratio with an informative Dirichlet prior, z-scored (Monroe,
Colaresi & Quinn 2008, "Fightin' Words", eqs. 16 and 18-20). docs/drivers.md works an example by hand.

Two corpora of term counts: the window ``i`` (a brand's negative posts in the last hour, say) and its
baseline ``j`` (the same brand's negative posts in the hour before); ``n`` is a corpus's total term count,
``"other"`` included. The prior is the pooled share of each term scaled to ``prior_total`` pseudo-counts::

    α_w = α₀ · (y_w^i + y_w^j) / (n^i + n^j)
    δ_w = log((y_w^i + α_w) / (n^i + α₀ − y_w^i − α_w)) − log((y_w^j + α_w) / (n^j + α₀ − y_w^j − α_w))
    σ²_w ≈ 1 / (y_w^i + α_w) + 1 / (y_w^j + α_w)
    z_w = δ_w / σ_w

A term with z_w > 0 takes a larger share of the window than of its baseline; the prior shrinks the rare
terms, whose raw log-odds would swing most, toward no change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

OTHER = "other"           # the terms a bounded bucket did not keep: part of n, never a driver
PRIOR_TOTAL = 10.0        # α₀: pseudo-counts of the prior (docs/drivers.md: why 10)
MIN_COUNT = 3             # a driver appears at least this often in the window
MIN_Z = 1.645             # ... and rose with z at least this (one-sided 5 %: only rises are drivers)


@dataclass(frozen=True)
class TermShift:
    term: str
    count: int            # y_w^i
    baseline_count: int   # y_w^j
    delta: float          # δ_w
    z: float              # z_w


def log_odds_z(window: Mapping[str, int], baseline: Mapping[str, int],
               prior_total: float = PRIOR_TOTAL) -> dict[str, TermShift]:
    """Every term of either corpus but ``OTHER`` -> its shift from the baseline to the window."""
    n_i, n_j = sum(window.values()), sum(baseline.values())
    pooled = n_i + n_j
    out: dict[str, TermShift] = {}
    if not pooled:
        return out
    for term in (set(window) | set(baseline)) - {OTHER}:
        y_i, y_j = window.get(term, 0), baseline.get(term, 0)
        if y_i + y_j <= 0:
            continue
        alpha = prior_total * (y_i + y_j) / pooled
        if n_i - y_i + prior_total - alpha <= 0 or n_j - y_j + prior_total - alpha <= 0:
            continue  # the term is the whole of both corpora: nothing to contrast it with
        delta = (math.log((y_i + alpha) / (n_i + prior_total - y_i - alpha))
                 - math.log((y_j + alpha) / (n_j + prior_total - y_j - alpha)))
        sigma = math.sqrt(1 / (y_i + alpha) + 1 / (y_j + alpha))
        out[term] = TermShift(term, y_i, y_j, delta, delta / sigma)
    return out


def drivers(window: Mapping[str, int], baseline: Mapping[str, int], top: int = 5, min_count: int = MIN_COUNT,
            min_z: float = MIN_Z, prior_total: float = PRIOR_TOTAL) -> list[TermShift]:
    """The ``top`` terms that rose most (highest z), each seen ``min_count`` times in the window and with
    z ≥ ``min_z``; ties by count, then term, so the order is stable."""
    shifts = [s for s in log_odds_z(window, baseline, prior_total).values()
              if s.count >= min_count and s.z >= min_z]
    return sorted(shifts, key=lambda s: (-s.z, -s.count, s.term))[:top]
