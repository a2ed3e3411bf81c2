"""The drivers' statistic (Monroe, Colaresi & Quinn 2008) against a hand-computed example, and its ranking."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from affectstream.streaming.monitor.fightin_words import OTHER, drivers, log_odds_z


def test_the_log_odds_z_matches_the_hand_computed_example():
    """docs/drivers.md: window {refund 3, other 7}, baseline {refund 1, other 19}, α₀ = 10.
    α = 10 · 4/30 = 4/3; δ = ln((13/3)/(47/3)) − ln((7/3)/(83/3)) = ln(1079/329); σ² = 3/13 + 3/7 = 60/91."""
    shift = log_odds_z({"refund": 3, OTHER: 7}, {"refund": 1, OTHER: 19}, prior_total=10)["refund"]
    assert shift.delta == pytest.approx(math.log(1079 / 329)) == pytest.approx(1.18773, abs=1e-5)
    assert shift.z == pytest.approx(math.log(1079 / 329) / math.sqrt(60 / 91)) == pytest.approx(1.46273, abs=1e-5)
    assert (shift.count, shift.baseline_count) == (3, 1)


def test_other_is_counted_in_the_totals_but_never_scored():
    assert OTHER not in log_odds_z({"a": 2, OTHER: 5}, {"a": 1, OTHER: 9})
    with_other = log_odds_z({"a": 2, OTHER: 5}, {"a": 1, OTHER: 9})["a"].z
    without = log_odds_z({"a": 2}, {"a": 1})
    assert without == {}, "a term that is both whole corpora has nothing to be contrasted with"
    assert with_other > 0


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 50), min_size=1),
       st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 50), min_size=1))
def test_swapping_window_and_baseline_flips_the_sign(window, baseline):
    forward, backward = log_odds_z(window, baseline), log_odds_z(baseline, window)
    assert forward.keys() == backward.keys()
    for term, shift in forward.items():
        assert shift.z == pytest.approx(-backward[term].z, abs=1e-9)


def test_drivers_are_the_terms_that_rose_most_and_often_enough():
    window = {"refund": 30, "outage": 12, "app": 6, "rare": 2, "love": 1, OTHER: 60}
    baseline = {"refund": 2, "outage": 1, "app": 20, "rare": 0, "love": 40, OTHER: 300}
    found = drivers(window, baseline, top=5)
    assert [d.term for d in found] == ["refund", "outage"], "app fell, rare is too rare, love fell"
    assert found[0].z > found[1].z >= 1.645
    assert drivers(window, baseline, top=1)[0].term == "refund"
    assert [d.term for d in drivers(window, baseline, min_count=2, min_z=0.0)][:3] == ["refund", "outage", "rare"]
