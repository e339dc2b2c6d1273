from __future__ import annotations

import math

import pytest
from scipy import stats as st

from hpspec import stats
from hpspec.simulate import compare_trials


def test_welch_matches_scipy():
    a, b = [1.0, 2.0, 3.5, 2.2], [2.5, 3.1, 4.0, 3.8, 5.0]
    t = stats.welch(a, b)
    ref = st.ttest_ind(a, b, equal_var=False, alternative="less")
    assert t.p_below == pytest.approx(ref.pvalue)
    assert t.p_above == pytest.approx(1 - ref.pvalue)
    lo, hi = t.interval(0.9)
    assert lo < t.estimate < hi


def test_welch_relative_margin():
    a, b = [9.0, 9.1, 8.9], [10.0, 10.1, 9.9]
    assert stats.welch(a, b).p_below < 0.01  # a below b
    assert stats.welch(a, b, scale_b=0.8).p_above < 0.01  # but not 20% below b


def test_no_spread_is_decided_by_the_sign():
    t = stats.welch([1.0, 1.0], [2.0, 2.0])
    assert (t.p_below, t.p_above) == (0.0, 1.0)
    tie = stats.welch([1.0, 1.0], [1.0, 1.0])
    assert (tie.p_below, tie.p_above) == (1.0, 1.0)


def test_welch_needs_two_finite_values():
    with pytest.raises(ValueError):
        stats.welch([1.0, math.nan], [1.0, 2.0])


def test_one_sample_matches_scipy():
    a = [0.91, 0.93, 0.95, 0.92]
    t = stats.one_sample(a, 0.9)
    ref = st.ttest_1samp(a, 0.9, alternative="greater")
    assert t.p_above == pytest.approx(ref.pvalue)


def test_holm():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == [0.5]


def test_seeds_needed_shrinks_with_effect():
    small = stats.seeds_needed(0.1, 0.2, 0.2, 0.05)
    big = stats.seeds_needed(0.5, 0.2, 0.2, 0.05)
    assert small > big >= 2
    assert stats.seeds_needed(0.0, 1, 1, 0.05) is None


def test_adaptive_looks():
    assert stats.adaptive(3, 9, 2).looks() == [3, 5, 7, 9]
    assert stats.adaptive(3, 10, 3).looks() == [3, 6, 9, 10]
    assert stats.adaptive(4, 4).looks() == [4]


# A/A: two identical distributions under two names. A "pass" of "a is lower than b" is a
# false positive; its rate must stay at alpha (0.05) plus a 3-sigma sampling margin.
TRIALS = 400
MARGIN = 3 * math.sqrt(0.05 * 0.95 / TRIALS)


@pytest.mark.parametrize("seeds", [3, 5, 10, stats.adaptive(3, 20, 2)], ids=str)
def test_false_positive_rate_stays_at_alpha(seeds):
    r = compare_trials(TRIALS, effect=0.0, seeds=seeds, alpha=0.05, seed=7)
    assert r.passed <= 0.05 + MARGIN
    assert r.failed <= 0.05 + MARGIN


def test_power_and_adaptive_savings_on_a_known_effect():
    fixed = compare_trials(200, effect=2.0, seeds=20, seed=3)
    adapt = compare_trials(200, effect=2.0, seeds=stats.adaptive(3, 20, 2), seed=3)
    assert fixed.passed > 0.95 and adapt.passed > 0.95
    assert adapt.mean_seeds < 10  # decided early, far below the 20 a fixed plan spends
    assert compare_trials(200, effect=1.0, seeds=3, seed=3).passed < fixed.passed


def test_paired_t_matches_scipy():
    a, b = [1.0, 2.1, 3.3, 4.0], [0.8, 1.7, 3.2, 3.5]
    t = stats.paired_t(a, b)
    ref = st.ttest_rel(a, b, alternative="greater")
    assert t.name == "paired t-test" and t.paired
    assert t.p_above == pytest.approx(ref.pvalue)


def test_rank_sum_and_signed_rank_match_scipy_without_ties():
    a, b = [0.1, 0.5, 0.3, 0.9], [1.0, 0.7, 1.2, 0.8, 1.1]
    p_below, _, exact = stats.rank_sum(a, b)
    assert exact
    assert p_below == pytest.approx(
        st.mannwhitneyu(a, b, alternative="less", method="exact").pvalue)
    d = [-0.3, -1.1, 0.2, -0.7, -0.9, -0.4]
    p_below, _, _ = stats.signed_rank(d)
    assert p_below == pytest.approx(st.wilcoxon(d, alternative="less", method="exact").pvalue)


def test_diverged_seeds_rank_worst_never_survivors():
    nan = math.nan
    unstable = [0.01, 0.02, nan, nan, nan]  # great survivors, 3 of 5 diverged
    stable = [0.5, 0.51, 0.49, 0.52, 0.5]
    for seeds in (range(5), None):
        t = stats.better(unstable, stable, lower=True, seeds_a=seeds, seeds_b=seeds)
        assert isinstance(t, stats.RankTest) and t.diverged == (3, 0)
        assert t.p_below > 0.05  # never "unstable is lower"
    # Higher is better: a NaN accuracy is the worst accuracy too.
    t = stats.better([nan] * 5, [0.9] * 5, lower=False)
    assert t.p_above < 0.05 and t.p_below == 1.0
    # All seeds diverged on the other side: a clean win once enough seeds exist.
    assert stats.better([0.1] * 5, [math.inf] * 5, lower=True).p_below < 0.05


def test_pairing_needs_the_same_seed_ids():
    a, b = [1.0, 2.0, 3.0], [1.1, 2.1, 3.2]
    assert stats.better(a, b, lower=True, seeds_a=[0, 1, 2], seeds_b=[2, 1, 0]).paired
    assert not stats.better(a, b, lower=True, seeds_a=[0, 1, 2], seeds_b=[3, 4, 5]).paired
    assert not stats.better(a, b, lower=True, seeds_a=[0, 1, 2], seeds_b=[0, 1, 2],
                            paired=False).paired


def test_seeds_needed_exceeds_the_seeds_used():
    # The normal approximation said 3 at 3 seeds ("undecided at 3; 3 would decide").
    assert stats.seeds_needed(1.0, 0.5, 0.5, 0.05, current=3) >= 4
    assert stats.seeds_needed(0.001, 1.0, 1.0, 0.05, limit=50) == 51
    assert stats.seeds_needed(1.0, 1.0, None, 0.05) < stats.seeds_needed(1.0, 1.0, 1.0, 0.05)


def test_fisher_on_divergence_counts():
    assert stats.fisher_diverged(5, 5, 0, 5) < 0.05
    assert stats.fisher_diverged(1, 5, 0, 5) == pytest.approx(1.0)
