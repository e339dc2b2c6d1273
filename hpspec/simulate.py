"""Synthetic seeds for checking hpspec's statistics without training (A/A and A/B runs).

Pure: normal per-seed metric values for two cells, judged by the same
:class:`~hpspec.cross.Compare` and :func:`~hpspec.cross.judge_adaptive` code the plugin uses.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import attrs

from hpspec import stats
from hpspec.claims import metric
from hpspec.cross import Compare, compare, judge_adaptive
from hpspec.results import CellResult, SeedResult

__all__ = ["ErrorRates", "compare_trials"]

CLAIM: Compare = compare(metric("m").final(), lower={"arm": "a"}, than={"arm": "b"})


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


def compare_trials(
    trials: int,
    effect: float,
    seeds: int | stats.Adaptive,
    alpha: float = 0.05,
    seed: int = 0,
) -> ErrorRates:
    """Run ``trials`` claims "a is lower than b" where a ~ N(-effect, 1), b ~ N(0, 1).

    ``effect=0`` is an A/A test: every pass is a false positive.
    """
    rng = random.Random(seed)
    counts = {"pass": 0, "fail": 0, "inconclusive": 0}
    used = 0
    for _ in range(trials):
        a: list[float] = []
        b: list[float] = []

        def fetch(n: int, a: list[float] = a, b: list[float] = b) -> Mapping[str, CellResult]:
            while len(a) < n:
                a.append(rng.gauss(-effect, 1.0))
                b.append(rng.gauss(0.0, 1.0))
            return {"arm=a": _cell("a", a), "arm=b": _cell("b", b)}

        if isinstance(seeds, stats.Adaptive):
            verdict = judge_adaptive(CLAIM, fetch, seeds, alpha)
        else:
            verdict = CLAIM.judge(fetch(seeds), alpha)
        counts[verdict.outcome] += 1
        used += len(a)
    return ErrorRates(
        trials=trials,
        passed=counts["pass"] / trials,
        failed=counts["fail"] / trials,
        inconclusive=counts["inconclusive"] / trials,
        mean_seeds=used / trials,
    )
