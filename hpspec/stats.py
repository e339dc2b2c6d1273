"""Statistics for verdicts over seeds. Pure (numbers in, numbers out); uses scipy, which
scikit-learn already requires.

Why Welch's t-test. Hyperparameter claims are judged on few seeds (3 to 20) whose spread
differs between cells (a high learning rate is noisier than a low one). Welch's test does not
assume equal variances, has a closed form and is accurate for near-normal per-seed metrics.
A permutation test cannot reach 5% with 3 seeds per side (its smallest one-sided p-value is
1/20), and bootstrap intervals under-cover badly below about 10 samples.

Three verdicts from two one-sided tests at level alpha: *pass* when the data reject "the claim
is false", *fail* when they reject "the claim is true", *inconclusive* otherwise. Each
decision's false rate is at most alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

__all__ = ["TTest", "welch", "one_sample", "holm", "seeds_needed", "Adaptive", "adaptive"]


@attrs.frozen
class TTest:
    """A one-sided question "is ``estimate`` below zero?" answered both ways.

    ``p_below`` is the p-value of H0: true value >= 0 (small: it is below zero);
    ``p_above`` the p-value of H0: true value <= 0 (small: it is above zero).
    """

    estimate: float
    se: float
    df: float
    n: tuple[int, ...]
    p_below: float
    p_above: float

    def interval(self, confidence: float) -> tuple[float, float]:
        """Two-sided interval at ``confidence``."""
        if self.se == 0 or not math.isfinite(self.df):
            return (self.estimate, self.estimate)
        from scipy import stats as st

        q = float(st.t.ppf(0.5 + confidence / 2, self.df))
        return (self.estimate - q * self.se, self.estimate + q * self.se)


def _finite(xs: Sequence[float]) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(x)]


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


def welch(a: Sequence[float], b: Sequence[float], scale_b: float = 1.0) -> TTest:
    """Welch's test on ``mean(a) - scale_b * mean(b)``. Needs two finite values per side.

    ``scale_b`` expresses relative margins: "a at least 10% below b" is ``scale_b=0.9``.
    """
    xa, xb = _finite(a), [scale_b * x for x in _finite(b)]
    if len(xa) < 2 or len(xb) < 2:
        raise ValueError("Welch's test needs at least two finite values on each side")
    va, vb = _var(xa) / len(xa), _var(xb) / len(xb)
    est = sum(xa) / len(xa) - sum(xb) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0:
        df = math.inf
    else:
        denom = (va**2 / (len(xa) - 1) if va else 0.0) + (vb**2 / (len(xb) - 1) if vb else 0.0)
        df = (va + vb) ** 2 / denom if denom else math.inf
    p_below, p_above = _p_values(est, se, df)
    return TTest(est, se, df, (len(xa), len(xb)), p_below, p_above)


def one_sample(a: Sequence[float], value: float) -> TTest:
    """Student's t-test on ``mean(a) - value``."""
    xa = _finite(a)
    if len(xa) < 2:
        raise ValueError("a t-test needs at least two finite values")
    est = sum(xa) / len(xa) - value
    se = math.sqrt(_var(xa) / len(xa))
    df = float(len(xa) - 1)
    p_below, p_above = _p_values(est, se, df)
    return TTest(est, se, df, (len(xa),), p_below, p_above)


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


def seeds_needed(estimate: float, sd_a: float, sd_b: float, alpha: float,
                 power: float = 0.8) -> int | None:
    """Rough seeds per cell for a one-sided test to detect ``estimate`` with ``power``
    (normal approximation); None when there is no effect to detect."""
    if estimate == 0 or not math.isfinite(estimate):
        return None
    from scipy import stats as st

    z = float(st.norm.ppf(1 - alpha) + st.norm.ppf(power))
    n = z**2 * (sd_a**2 + sd_b**2) / estimate**2
    return max(2, math.ceil(n))


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
