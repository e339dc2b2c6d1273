"""Synthetic seeds for checking hpspec's statistics without training (A/A and A/B runs).

Pure: normal per-seed metric values for two cells, judged by the same
:class:`~hpspec.cross.Compare` and :func:`~hpspec.cross.judge_adaptive` code the plugin uses.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

import attrs

from hpspec import stats
from hpspec.claims import metric
from hpspec.cross import (
    Compare,
    CrossClaim,
    compare,
    equivalent,
    judge_adaptive,
    noninferior,
)
from hpspec.results import CellResult, SeedResult

__all__ = ["ErrorRates", "compare_trials", "margin_trials"]

CLAIM: Compare = compare(metric("m").final(), lower={"arm": "a"}, than={"arm": "b"})
UNPAIRED: Compare = compare(metric("m").final(), lower={"arm": "a"}, than={"arm": "b"},
                            paired=False)


@attrs.frozen
class ErrorRates:
    trials: int
    passed: float
    failed: float
    inconclusive: float
    mean_seeds: float


def _cell(arm: str, values: list[float]) -> CellResult:
    seeds = tuple(SeedResult(seed=i, curves={"m": [v]}) for i, v in enumerate(values))
    return CellResult("sim", f"arm={arm}", {"arm": arm}, "cpu", seeds)


def _pair(rng: random.Random, mean_a: float, rho: float) -> tuple[float, float]:
    """One seed's values on both sides: unit variance each, correlation ``rho`` (what the
    shared initial weights and data order leave in common)."""
    if rho == 0:  # independent: the same draws as before pairing existed
        return rng.gauss(mean_a, 1.0), rng.gauss(0.0, 1.0)
    z = rng.gauss(0.0, 1.0)
    return (mean_a + math.sqrt(rho) * z + math.sqrt(1 - rho) * rng.gauss(0.0, 1.0),
            math.sqrt(rho) * z + math.sqrt(1 - rho) * rng.gauss(0.0, 1.0))


def _run(claim: CrossClaim, trials: int, mean_a: float, seeds: int | stats.Adaptive,
         alpha: float, seed: int, rho: float) -> ErrorRates:
    rng = random.Random(seed)
    counts = {"pass": 0, "fail": 0, "inconclusive": 0}
    used = 0
    for _ in range(trials):
        a: list[float] = []
        b: list[float] = []

        def fetch(n: int, a: list[float] = a, b: list[float] = b) -> Mapping[str, CellResult]:
            while len(a) < n:
                x, y = _pair(rng, mean_a, rho)
                a.append(x)
                b.append(y)
            return {"arm=a": _cell("a", a), "arm=b": _cell("b", b)}

        if isinstance(seeds, stats.Adaptive):
            verdict = judge_adaptive(claim, fetch, seeds, alpha)
        else:
            verdict = claim.judge(fetch(seeds), alpha)
        counts[verdict.outcome] += 1
        used += len(a)
    return ErrorRates(
        trials=trials,
        passed=counts["pass"] / trials,
        failed=counts["fail"] / trials,
        inconclusive=counts["inconclusive"] / trials,
        mean_seeds=used / trials,
    )


def compare_trials(
    trials: int,
    effect: float,
    seeds: int | stats.Adaptive,
    alpha: float = 0.05,
    seed: int = 0,
    rho: float = 0.0,
    paired: bool = True,
) -> ErrorRates:
    """Run ``trials`` claims "a is lower than b" where a ~ N(-effect, 1), b ~ N(0, 1), the
    two sides' values for one seed correlated by ``rho`` (both sides share seed ids, so the
    claim pairs them unless ``paired=False``).

    ``effect=0`` is an A/A test: every pass is a false positive.
    """
    return _run(CLAIM if paired else UNPAIRED, trials, -effect, seeds, alpha, seed, rho)


def margin_trials(
    kind: str,
    trials: int,
    difference: float,
    margin: float,
    seeds: int,
    alpha: float = 0.05,
    seed: int = 0,
    rho: float = 0.0,
    paired: bool = True,
) -> ErrorRates:
    """``kind="equivalent"``: "a is within +-margin of b" with true a - b = ``difference``;
    ``kind="noninferior"``: "a (higher is better) is no worse than b by more than margin"
    with true a - b = ``difference``. At ``difference = margin`` (equivalence) or
    ``-margin`` (non-inferiority) the claim is false by a hair: every pass is false."""
    q = metric("m").final()
    if kind == "equivalent":
        claim: CrossClaim = equivalent(q, a={"arm": "a"}, b={"arm": "b"}, margin=margin,
                                       paired=paired)
    else:
        claim = noninferior(q, {"arm": "a"}, than={"arm": "b"}, margin=margin,
                            better="higher", paired=paired)
    return _run(claim, trials, difference, seeds, alpha, seed, rho)
