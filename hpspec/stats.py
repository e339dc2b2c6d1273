"""Statistics for verdicts over seeds. Pure (numbers in, numbers out); uses scipy, which
scikit-learn already requires.

Three verdicts from two one-sided tests at level alpha: *pass* when the data reject "the claim
is false", *fail* when they reject "the claim is true", *inconclusive* otherwise. Each
decision's false rate is at most alpha.

Which test, and why:

- **No seed diverged: t-tests.** Hyperparameter claims are judged on few seeds (3 to 20)
  whose spread differs between cells (a high learning rate is noisier than a low one).
  When both sides ran the *same seeds* (same initial weights where the architecture is the
  same, same data order), the seeds are pairs and the paired t-test on the per-seed
  differences removes the seed-to-seed variation both sides share; otherwise Welch's
  t-test, which does not assume equal variances. Both have closed forms and are accurate
  for near-normal per-seed metrics, where a permutation test cannot reach 5% with 3 seeds
  per side (its smallest one-sided p-value is 1/20) and bootstrap intervals under-cover.
- **Some seed diverged: exact permutation tests on ranks, the diverged seed ranked worst.**
  A diverged seed (a NaN or infinite value, or a run the runner stopped as diverged) is an
  outcome, not a missing value: dropping it compares only the survivors of an unstable
  configuration with every seed of a stable one (survivor bias; a configuration that
  diverged on 3 of 5 seeds "won" at p = 7e-8 that way). It has no number, so no mean-based
  test can use it, but it has a rank: worse than every finite value. Ranks with ties are
  exactly what permutation tests handle: under "both sides are the same" every relabelling
  (unpaired: Mann-Whitney's rank sum over all splits of the pooled seeds) or every sign flip
  (paired: Wilcoxon's signed rank sum over the per-seed differences, a seed diverged on
  both sides is a tie and carries no information) is equally likely, so the p-value is
  exact at any sample size, any distribution and any number of ties. Beyond 20,000
  relabellings the p-value is a Monte Carlo estimate with a fixed seed, still valid (the
  observed labelling counts as one of the draws).
- **Equivalence** (two one-sided tests, TOST) passes when the ``1 - 2 alpha`` interval of
  the difference lies inside ``+-margin`` and fails when it lies wholly outside. A diverged
  seed on either side has no value to be equivalent with, so with divergence the claim
  never passes: it fails when Fisher's exact test finds the two sides' divergence rates
  differ, else it is inconclusive.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import attrs

__all__ = ["TTest", "RankTest", "Test", "welch", "paired_t", "one_sample", "better", "rank_sum",
           "signed_rank", "fisher_diverged", "holm", "seeds_needed", "seeds_needed_ranks",
           "Adaptive", "adaptive", "EXACT_LIMIT"]

#: Relabellings enumerated exactly; beyond, a fixed-seed Monte Carlo sample of this size.
EXACT_LIMIT = 20000


@attrs.frozen
class TTest:
    """A one-sided question "is ``estimate`` below zero?" answered both ways.

    ``p_below`` is the p-value of H0: true value >= 0 (small: it is below zero);
    ``p_above`` the p-value of H0: true value <= 0 (small: it is above zero).
    ``sd`` holds the spreads a seed count estimate needs: (sd of the differences,) when
    paired, (sd_a, sd_b) otherwise.
    """

    estimate: float
    se: float
    df: float
    n: tuple[int, ...]
    p_below: float
    p_above: float
    name: str = "Welch's t-test"
    sd: tuple[float, ...] = ()
    diverged: tuple[int, int] = (0, 0)

    @property
    def paired(self) -> bool:
        return len(self.n) == 1

    def interval(self, confidence: float) -> tuple[float, float] | None:
        """Two-sided interval at ``confidence``."""
        if self.se == 0 or not math.isfinite(self.df):
            return (self.estimate, self.estimate)
        from scipy import stats as st

        q = float(st.t.ppf(0.5 + confidence / 2, self.df))
        return (self.estimate - q * self.se, self.estimate + q * self.se)


@attrs.frozen
class RankTest:
    """An exact permutation test on ranks (diverged seeds ranked worst); same p-value
    convention as :class:`TTest`. ``estimate`` is the median difference, for display only
    (infinite when diverged seeds dominate)."""

    estimate: float
    n: tuple[int, ...]
    p_below: float
    p_above: float
    name: str
    diverged: tuple[int, int] = (0, 0)
    exact: bool = True

    @property
    def paired(self) -> bool:
        return len(self.n) == 1

    def interval(self, confidence: float) -> tuple[float, float] | None:
        return None


Test = TTest | RankTest


def _finite(xs: Sequence[float]) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(x)]


def _ok(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _var(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def _p_values(estimate: float, se: float, df: float) -> tuple[float, float]:
    if se == 0:
        # No spread at all (deterministic metrics): any difference is certain, and an exact
        # tie is evidence for neither side.
        if estimate < 0:
            return 0.0, 1.0
        if estimate > 0:
            return 1.0, 0.0
        return 1.0, 1.0
    from scipy import stats as st

    t = estimate / se
    return float(st.t.cdf(t, df)), float(st.t.sf(t, df))


def welch(a: Sequence[float], b: Sequence[float], scale_b: float = 1.0,
          shift: float = 0.0) -> TTest:
    """Welch's test on ``mean(a) - scale_b * mean(b) - shift``. Needs two finite values per
    side.

    ``scale_b`` expresses relative margins: "a at least 10% below b" is ``scale_b=0.9``.
    """
    xa, xb = _finite(a), [scale_b * x for x in _finite(b)]
    if len(xa) < 2 or len(xb) < 2:
        raise ValueError("Welch's test needs at least two finite values on each side")
    va, vb = _var(xa) / len(xa), _var(xb) / len(xb)
    est = sum(xa) / len(xa) - sum(xb) / len(xb) - shift
    se = math.sqrt(va + vb)
    if se == 0:
        df = math.inf
    else:
        denom = (va**2 / (len(xa) - 1) if va else 0.0) + (vb**2 / (len(xb) - 1) if vb else 0.0)
        df = (va + vb) ** 2 / denom if denom else math.inf
    p_below, p_above = _p_values(est, se, df)
    return TTest(est, se, df, (len(xa), len(xb)), p_below, p_above, "Welch's t-test",
                 (math.sqrt(_var(xa)), math.sqrt(_var(xb))))


def paired_t(a: Sequence[float], b: Sequence[float], scale_b: float = 1.0,
             shift: float = 0.0) -> TTest:
    """Paired t-test on the per-seed differences ``a_i - scale_b * b_i - shift`` (a and b
    in the same seed order, all finite, at least two pairs)."""
    if len(a) != len(b):
        raise ValueError("a paired test needs the same seeds on both sides")
    d = [x - scale_b * y - shift for x, y in zip(a, b, strict=True)]
    t = one_sample(d, 0.0)
    return attrs.evolve(t, name="paired t-test", sd=(math.sqrt(_var(d)),))


def one_sample(a: Sequence[float], value: float) -> TTest:
    """Student's t-test on ``mean(a) - value``."""
    xa = _finite(a)
    if len(xa) < 2:
        raise ValueError("a t-test needs at least two finite values")
    est = sum(xa) / len(xa) - value
    se = math.sqrt(_var(xa) / len(xa))
    df = float(len(xa) - 1)
    p_below, p_above = _p_values(est, se, df)
    return TTest(est, se, df, (len(xa),), p_below, p_above, "one-sample t-test",
                 (math.sqrt(_var(xa)),))


def _midranks(xs: Sequence[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    if not s:
        return math.nan
    m = len(s) // 2
    if len(s) % 2:
        return s[m]
    lo, hi = s[m - 1], s[m]
    if math.isinf(lo) or math.isinf(hi):
        return lo if lo == hi else (hi if math.isinf(hi) and not math.isinf(lo) else lo)
    return (lo + hi) / 2


def rank_sum(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, bool]:
    """Exact permutation test on the rank sum of ``a`` in the pooled sample (Mann-Whitney),
    midranks for ties; values may be ``inf``. Returns (p_below, p_above, exact): p_below is
    small when a's values are lower."""
    pooled = list(a) + list(b)
    ranks = _midranks(pooled)
    na, n = len(a), len(pooled)
    observed = sum(ranks[:na])
    eps = 1e-9 * max(1.0, observed)
    total = math.comb(n, na)
    if total <= EXACT_LIMIT:
        sums = [sum(ranks[i] for i in combo) for combo in itertools.combinations(range(n), na)]
        low = sum(s <= observed + eps for s in sums)
        high = sum(s >= observed - eps for s in sums)
        return low / total, high / total, True
    rng = random.Random(0)
    low = high = 1  # the observed labelling is one of the draws
    idx = list(range(n))
    for _ in range(EXACT_LIMIT):
        rng.shuffle(idx)
        s = sum(ranks[i] for i in idx[:na])
        low += s <= observed + eps
        high += s >= observed - eps
    return low / (EXACT_LIMIT + 1), high / (EXACT_LIMIT + 1), False


def signed_rank(d: Sequence[float]) -> tuple[float, float, bool]:
    """Exact sign-flip permutation test on Wilcoxon's signed ranks of the differences ``d``
    (may be ``inf``; zeros carry no information and are dropped). Returns (p_below, p_above,
    exact): p_below is small when the differences are negative."""
    nz = [x for x in d if x != 0 and not math.isnan(x)]
    if not nz:
        return 1.0, 1.0, True
    ranks = _midranks([abs(x) for x in nz])
    signed = [r if x > 0 else -r for r, x in zip(ranks, nz, strict=True)]
    observed = sum(signed)
    eps = 1e-9 * max(1.0, abs(observed))
    n = len(signed)
    if 2**n <= EXACT_LIMIT:
        low = high = 0
        for flips in itertools.product((1, -1), repeat=n):
            s = sum(f * abs(r) for f, r in zip(flips, signed, strict=True))
            low += s <= observed + eps
            high += s >= observed - eps
        return low / 2**n, high / 2**n, True
    rng = random.Random(0)
    low = high = 1
    for _ in range(EXACT_LIMIT):
        s = sum(abs(r) if rng.random() < 0.5 else -abs(r) for r in signed)
        low += s <= observed + eps
        high += s >= observed - eps
    return low / (EXACT_LIMIT + 1), high / (EXACT_LIMIT + 1), False


def fisher_diverged(diverged_a: int, n_a: int, diverged_b: int, n_b: int) -> float:
    """Two-sided Fisher's exact p-value that the two sides diverge at different rates."""
    from scipy import stats as st

    table = [[diverged_a, n_a - diverged_a], [diverged_b, n_b - diverged_b]]
    return float(st.fisher_exact(table, alternative="two-sided").pvalue)


def better(
    a: Sequence[float],
    b: Sequence[float],
    *,
    lower: bool,
    scale: float = 1.0,
    shift: float = 0.0,
    seeds_a: Sequence[int] | None = None,
    seeds_b: Sequence[int] | None = None,
    paired: bool = True,
) -> Test:
    """Test "a is better than ``scale * b + shift``" (lower or higher is better).

    The returned test's ``p_below`` is the p-value for the claim (small: a is better),
    ``p_above`` the p-value against it. Values that are not finite are diverged seeds,
    ranked worse than every finite value (see the module docstring). The seeds are paired
    when ``paired`` and both sides ran the same seed ids once each. Raises ValueError when
    there is too little data for any test.
    """
    # Orient so that lower is better: "a > s*b + c" is "-a < s*(-b) - c".
    sign = 1.0 if lower else -1.0
    xa = [sign * float(x) if _ok(x) else math.inf for x in a]
    xb = [sign * float(x) if _ok(x) else math.inf for x in b]
    c = sign * shift
    div = (sum(math.isinf(x) for x in xa), sum(math.isinf(x) for x in xb))
    is_paired = (paired and seeds_a is not None and seeds_b is not None
                 and len(set(seeds_a)) == len(seeds_a) == len(seeds_b)
                 and set(seeds_a) == set(seeds_b))
    if is_paired:
        assert seeds_a is not None and seeds_b is not None
        by_b = dict(zip(seeds_b, xb, strict=True))
        xb = [by_b[s] for s in seeds_a]
    if not any(div):
        t = paired_t(xa, xb, scale, c) if is_paired else welch(xa, xb, scale, c)
        return t
    if not xa or not xb:
        raise ValueError("a rank test needs at least one seed on each side")
    yb = [scale * y + c if math.isfinite(y) else math.inf for y in xb]
    if is_paired:
        d = []
        for x, y in zip(xa, yb, strict=True):
            if math.isinf(x) and math.isinf(y):
                d.append(0.0)  # both diverged: a tie, no information
            else:
                d.append(x - y)
        p_below, p_above, exact = signed_rank(d)
        return RankTest(_median(d), (len(d),), p_below, p_above,
                        "Wilcoxon signed-rank test (exact, diverged = worst)", div, exact)
    p_below, p_above, exact = rank_sum(xa, yb)
    est = _median(xa) - _median(yb) if not (math.isinf(_median(xa)) and
                                            math.isinf(_median(yb))) else 0.0
    return RankTest(est, (len(xa), len(yb)), p_below, p_above,
                    "Mann-Whitney rank-sum test (exact, diverged = worst)", div, exact)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control, any dependence)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def seeds_needed(estimate: float, sd_a: float, sd_b: float | None, alpha: float,
                 power: float = 0.8, current: int = 0, limit: int = 1000) -> int | None:
    """Seeds per cell for a one-sided t-test to detect ``estimate`` with ``power``.

    ``sd_b=None`` means paired: ``sd_a`` is the spread of the per-seed differences. Uses
    t quantiles (not the normal approximation, which undercounts at few seeds) and never
    answers ``current`` or fewer: the test already looked there and did not decide. None
    when there is no effect to detect; ``limit + 1`` when not even ``limit`` seeds would.
    """
    if estimate == 0 or not math.isfinite(estimate):
        return None
    from scipy import stats as st

    var = sd_a**2 if sd_b is None else sd_a**2 + sd_b**2
    if var == 0:
        return max(2, current + 1)
    # The normal approximation is a lower bound; step up from it to the t-based answer.
    z0 = float(st.norm.ppf(1 - alpha) + st.norm.ppf(power))
    n = max(2, math.ceil(z0**2 * var / estimate**2))
    while n <= limit:
        df = n - 1 if sd_b is None else 2 * n - 2
        z = float(st.t.ppf(1 - alpha, df) + st.t.ppf(power, df))
        if abs(estimate) * math.sqrt(n / var) >= z:
            return max(n, current + 1)
        n += 1
    return limit + 1


def seeds_needed_ranks(a: Sequence[float], b: Sequence[float], test: RankTest, alpha: float,
                       lower: bool, scale: float = 1.0, shift: float = 0.0,
                       limit: int = 40) -> int | None:
    """Seeds per cell at which the rank test would decide if the observed seeds' pattern
    (divergence included) repeated: the samples are replicated 2, 3, ... times. None when
    the pattern favours neither side; ``limit + 1`` when even ``limit`` seeds would not."""
    if min(test.p_below, test.p_above) >= 0.5:
        return None
    n = max(test.n)
    k = 2
    while n * k <= limit:
        seeds = list(range(len(a) * k))
        t = better(list(a) * k, list(b) * k, lower=lower, scale=scale, shift=shift,
                   seeds_a=seeds if test.paired else None,
                   seeds_b=seeds if test.paired else None, paired=test.paired)
        if min(t.p_below, t.p_above) < alpha:
            return n * k
        k += 1
    return limit + 1


@attrs.frozen
class Adaptive:
    """Sequential seeding: start with ``min`` seeds per cell, add ``step`` at a time up to
    ``max`` until the claims that need the cells are decided.

    Each look tests at ``alpha / looks`` (a Bonferroni split over the planned looks), so by
    the union bound the chance of any false decision over all looks stays at most alpha.
    Conservative, but valid whatever the metric's distribution of p-values across looks; the
    measured rates are in ``benchmarks/stats_validation.py``.
    """

    min: int = 3
    max: int = 20
    step: int = 2

    def looks(self) -> list[int]:
        sizes = list(range(self.min, self.max, self.step))
        if not sizes or sizes[-1] != self.max:
            sizes.append(self.max)
        return sizes


def adaptive(min: int = 3, max: int = 20, step: int = 2) -> Adaptive:  # noqa: A002
    """``seeds=hp.adaptive(min=3, max=20)``: add seeds to the cells a cross-cell claim needs
    until it is decided (see :class:`Adaptive`)."""
    return Adaptive(min, max, step)
