"""Claims across cells: compare, trend, best. Pure: judged on plain results with
:mod:`hpspec.stats`.

Every cross-cell claim is decided over seeds by Welch's t-tests (see :mod:`hpspec.stats` for
why), giving pass, fail or inconclusive, and becomes a pytest item of its own that runs after
the cells it needs (training them when it was selected alone).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from hpspec import stats
from hpspec.claims import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Claim,
    Measure,
    Quantity,
    SpecContext,
    Verdict,
    Where,
    _fmt,
    _validate_measure,
    _validate_where,
    Effect,
    validate_points,
)
from hpspec.errors import SpecError
from hpspec.results import CellResult
from hpspec.spec import cell_id, format_value

__all__ = [
    "Compare",
    "Trend",
    "Best",
    "compare",
    "trend",
    "best",
    "CrossClaim",
    "decide",
    "judge_adaptive",
]


def decide(p_pass: float, p_fail: float, alpha: float) -> str:
    if p_pass < alpha:
        return PASS
    if p_fail < alpha:
        return FAIL
    return INCONCLUSIVE


def _selector(sel: Any) -> Where:
    if isinstance(sel, Where):
        return sel
    if isinstance(sel, Mapping):
        return Where(tuple(sel.items()))
    raise TypeError(sel)


def _sel_text(w: Where) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in w.params) or "all cells"


def _values(q: Quantity, results: Sequence[CellResult]) -> list[float]:
    out: list[float] = []
    for r in results:
        for s in r.seeds:
            v = q.evaluate(s)
            out.append(math.nan if v is None else float(v))
    return out


def _summary(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    bad = len(values) - len(finite)
    if not finite:
        text = "no finite value"
    elif len(finite) == 1:
        text = f"{_fmt(finite[0])}"
    else:
        text = f"{_fmt(statistics.fmean(finite))} ± {_fmt(statistics.stdev(finite))}"
    text += f" over {len(values)} seeds"
    if bad:
        text += f" ({bad} not finite, left out)"
    return text


class CrossClaim(Claim):
    """A claim over several cells, judged from their results."""

    confidence: float | None
    points: float | None

    def selects(self, params: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def slug(self) -> str:
        raise NotImplementedError

    def judge(self, results: Mapping[str, CellResult], alpha: float) -> Verdict:
        raise NotImplementedError

    def alpha(self, default: float) -> float:
        return default if self.confidence is None else 1 - self.confidence

    def _validate_common(self, ctx: SpecContext, arg: str, selectors: Sequence[Where]) -> None:
        validate_points(self.points, ctx, arg)
        q = getattr(self, "quantity", None)
        if not isinstance(q, Quantity):
            raise SpecError("must be a quantity such as hp.metric('val_loss').final()",
                            where=ctx.where, argument=f"{arg}: quantity", value=q)
        if ctx.metrics is not None:
            unknown = sorted(q.metrics() - ctx.metrics)
            if unknown:
                raise SpecError("is a metric this experiment never produces", where=ctx.where,
                                argument=f"{arg}: metric", value=unknown[0],
                                fix=f"use one of: {', '.join(sorted(ctx.metrics))}")
        if isinstance(q, Measure):
            _validate_measure(q, ctx, f"{arg}: quantity")
        for w in selectors:
            _validate_where(w, ctx, arg)
            if not any(w.matches(c) for c in ctx.cells):
                raise SpecError("selects no cell of the grid", where=ctx.where, argument=arg,
                                value=dict(w.params), fix="pick values that occur together")
        if self.confidence is not None and not (
            isinstance(self.confidence, float) and 0.5 <= self.confidence < 1
        ):
            raise SpecError("must be a probability between 0.5 and 1", where=ctx.where,
                            argument=f"{arg}: confidence", value=self.confidence,
                            fix="e.g. confidence=0.95")


def _pair_test(q: Quantity, a: Sequence[CellResult], b: Sequence[CellResult], lower: bool,
               margin: float) -> tuple[stats.TTest | None, list[float], list[float]]:
    """Test "a is better than b" (by a relative margin). The returned test's ``p_below`` is
    the p-value for the claim (small: a is better)."""
    va, vb = _values(q, a), _values(q, b)
    scale = (1 - margin) if lower else (1 + margin)
    try:
        t = stats.welch(va, vb, scale_b=scale) if lower else stats.welch(vb, va, scale_b=1 / scale)
    except ValueError:
        return None, va, vb
    return t, va, vb


@attrs.frozen(eq=True)
class Compare(CrossClaim):
    """Cells A are better than cells B on a quantity (pooled over their seeds)."""

    quantity: Quantity
    better: Where
    than: Where
    lower: bool
    margin: float = 0.0
    confidence: float | None = None
    name: str | None = None
    points: float | None = None

    def selects(self, params: Mapping[str, Any]) -> bool:
        return self.better.matches(params) or self.than.matches(params)

    def slug(self) -> str:
        if self.name:
            return self.name
        word = "lower" if self.lower else "higher"
        return f"compare-{_q_slug(self.quantity)}-{_sel_text(self.better)}-{word}-than-" \
               f"{_sel_text(self.than)}".replace(", ", "-")

    def describe(self) -> str:
        word = "lower" if self.lower else "higher"
        by = f" by at least {self.margin:.0%}" if self.margin else ""
        return (f"{self.quantity.describe()} is {word}{by} for {_sel_text(self.better)} than "
                f"for {_sel_text(self.than)}")

    def validate(self, ctx: SpecContext, arg: str) -> None:
        self._validate_common(ctx, arg, [self.better, self.than])
        if not (isinstance(self.margin, (int, float)) and 0 <= self.margin < 1):
            raise SpecError("must be a fraction in [0, 1)", where=ctx.where,
                            argument=f"{arg}: margin", value=self.margin,
                            fix="margin=0.1 means at least 10% better")
        if any(self.better.matches(c) and self.than.matches(c) for c in ctx.cells):
            raise SpecError("selects the same cell on both sides", where=ctx.where,
                            argument=arg, value=self.describe(),
                            fix="make the two selections disjoint")

    def judge(self, results: Mapping[str, CellResult], alpha: float) -> Verdict:
        a = [r for r in results.values() if self.better.matches(r.params)]
        b = [r for r in results.values() if self.than.matches(r.params)]
        t, va, vb = _pair_test(self.quantity, a, b, self.lower, self.margin)
        conf = 1 - alpha
        lines = [f"claim: {self.describe()} (Welch's t-test, {conf:.0%} confidence)",
                 f"  {_sel_text(self.better)}: {_summary(va)}",
                 f"  {_sel_text(self.than)}: {_summary(vb)}"]
        if t is None:
            lines.append("  needs at least two finite values on each side")
            return Verdict(self.describe(), INCONCLUSIVE, "\n".join(lines), p_pass=1.0,
                           p_fail=1.0, points=self.points)
        outcome = decide(t.p_below, t.p_above, alpha)
        lo, hi = t.interval(1 - 2 * alpha)
        sign = "" if self.lower else " (B - A)"
        lines.append(f"  difference{sign}: {_fmt(t.estimate)}, {1 - 2 * alpha:.0%} interval "
                     f"[{_fmt(lo)}, {_fmt(hi)}]; p = {t.p_below:.3g} for, {t.p_above:.3g} "
                     "against")
        if outcome == INCONCLUSIVE:
            lines.append(_more_seeds(t, va, vb, alpha))
        elif outcome == FAIL:
            lines.append(f"  refuted: the data contradict the claim at {conf:.0%} confidence")
        return Verdict(self.describe(), outcome, "\n".join(lines), p_pass=t.p_below,
                       p_fail=t.p_above, points=self.points,
                       effect=Effect(t.estimate, lo, hi, 1 - 2 * alpha,
                                     _cohen_d(va, vb) if self.lower else _cohen_d(vb, va)))


def _cohen_d(va: Sequence[float], vb: Sequence[float]) -> float | None:
    """Mean of A minus mean of B in pooled standard deviations (finite values only)."""
    fa = [v for v in va if math.isfinite(v)]
    fb = [v for v in vb if math.isfinite(v)]
    if len(fa) < 2 or len(fb) < 2:
        return None
    pooled = (((len(fa) - 1) * statistics.variance(fa) + (len(fb) - 1) * statistics.variance(fb))
              / (len(fa) + len(fb) - 2)) ** 0.5
    return None if pooled == 0 else (statistics.fmean(fa) - statistics.fmean(fb)) / pooled


def _more_seeds(t: stats.TTest, va: Sequence[float], vb: Sequence[float], alpha: float) -> str:
    fa = [v for v in va if math.isfinite(v)]
    fb = [v for v in vb if math.isfinite(v)]
    n = stats.seeds_needed(t.estimate, statistics.stdev(fa), statistics.stdev(fb), alpha)
    if n is None:
        return "  no difference observed: more seeds will not decide it"
    return (f"  undecided at {max(t.n)} seeds; roughly {n} seeds per cell would decide an "
            "effect this size (80% power)")


def _any_against(p_fails: Sequence[float]) -> float:
    """p-value of "at least one step (or rival) goes clearly the wrong way": Bonferroni over
    the steps keeps the false-fail rate at alpha. (Passing is an intersection-union test: the
    largest step p-value, no correction needed.)"""
    return min(1.0, min(p_fails) * len(p_fails)) if p_fails else 1.0


def _q_slug(q: Quantity) -> str:
    return q.describe().replace(" ", "_")


@attrs.frozen(eq=True)
class Trend(CrossClaim):
    """A quantity rises (or falls) with one hyperparameter, the others held fixed."""

    quantity: Quantity
    over: str
    increasing: bool
    among: Where = Where()
    confidence: float | None = None
    name: str | None = None
    points: float | None = None

    def selects(self, params: Mapping[str, Any]) -> bool:
        return self.among.matches(params)

    def slug(self) -> str:
        if self.name:
            return self.name
        word = "rises" if self.increasing else "falls"
        return f"trend-{_q_slug(self.quantity)}-{word}-with-{self.over}"

    def describe(self) -> str:
        word = "rises" if self.increasing else "falls"
        among = f" ({_sel_text(self.among)})" if self.among.params else ""
        return f"{self.quantity.describe()} {word} with {self.over}{among}"

    def validate(self, ctx: SpecContext, arg: str) -> None:
        self._validate_common(ctx, arg, [self.among])
        values = ctx.hyperparameters.get(self.over)
        if values is None:
            raise SpecError("is not a hyperparameter of this experiment", where=ctx.where,
                            argument=f"{arg}: over", value=self.over,
                            fix=f"use one of: {', '.join(sorted(ctx.hyperparameters))}")
        if len(values) < 2:
            raise SpecError("has a single value, so nothing can rise or fall", where=ctx.where,
                            argument=f"{arg}: over", value=self.over,
                            fix=f"give grid['{self.over}'] at least two values")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise SpecError("must be numeric to have an order", where=ctx.where,
                            argument=f"{arg}: over", value=self.over,
                            fix="a trend needs an ordered axis such as batch_size or lr")

    def groups(self, results: Mapping[str, CellResult]) -> list[list[CellResult]]:
        """Cells grouped by every other hyperparameter, each sorted by ``over``."""
        by_rest: dict[str, list[CellResult]] = {}
        for r in results.values():
            if not self.among.matches(r.params):
                continue
            rest = {k: v for k, v in r.params.items() if k != self.over}
            by_rest.setdefault(cell_id(rest), []).append(r)
        return [sorted(g, key=lambda r: r.params[self.over]) for g in by_rest.values()]

    def judge(self, results: Mapping[str, CellResult], alpha: float) -> Verdict:
        lines = [f"claim: {self.describe()} (Welch's t-test per step, {1 - alpha:.0%} "
                 "confidence)"]
        p_pass, p_fails, undecided = 0.0, [], []
        for group in self.groups(results):
            for prev, nxt in zip(group, group[1:]):
                # "rises": the next cell's value is higher, i.e. prev is lower than next.
                t, vp, vn = _pair_test(self.quantity, [prev], [nxt], self.increasing, 0.0)
                step = (f"{self.over}={format_value(prev.params[self.over])} -> "
                        f"{format_value(nxt.params[self.over])}")
                rest = {k: v for k, v in prev.params.items() if k != self.over}
                if rest and len(self.groups(results)) > 1:
                    step += f" ({cell_id(rest)})"
                if t is None:
                    lines.append(f"  {step}: not enough finite values")
                    p_pass, undecided = 1.0, undecided + [step]
                    continue
                mp = _fmt(statistics.fmean([v for v in vp if math.isfinite(v)]))
                mn = _fmt(statistics.fmean([v for v in vn if math.isfinite(v)]))
                verdict = decide(t.p_below, t.p_above, alpha)
                lines.append(f"  {step}: {mp} -> {mn}, p = {t.p_below:.3g} ({verdict})")
                p_pass = max(p_pass, t.p_below)  # intersection-union: every step must hold
                p_fails.append(t.p_above)
                if verdict == INCONCLUSIVE:
                    undecided.append(step)
        p_fail = _any_against(p_fails)
        outcome = decide(p_pass, p_fail, alpha)
        if outcome == INCONCLUSIVE and undecided:
            lines.append(f"  undecided steps: {', '.join(undecided)}")
        return Verdict(self.describe(), outcome, "\n".join(lines), p_pass=p_pass, p_fail=p_fail,
                       points=self.points)


@attrs.frozen(eq=True)
class Best(CrossClaim):
    """The selected cell beats every other cell (among ``among``) on a quantity."""

    quantity: Quantity
    cell: Where
    lower: bool
    among: Where = Where()
    confidence: float | None = None
    name: str | None = None
    points: float | None = None

    def selects(self, params: Mapping[str, Any]) -> bool:
        return self.among.matches(params) or self.cell.matches(params)

    def slug(self) -> str:
        if self.name:
            return self.name
        return f"best-{_q_slug(self.quantity)}-{_sel_text(self.cell)}".replace(", ", "-")

    def describe(self) -> str:
        word = "lowest" if self.lower else "highest"
        return f"{_sel_text(self.cell)} has the {word} {self.quantity.describe()}"

    def validate(self, ctx: SpecContext, arg: str) -> None:
        self._validate_common(ctx, arg, [self.cell, self.among])
        chosen = [c for c in ctx.cells if self.cell.matches(c) and self.among.matches(c)]
        others = [c for c in ctx.cells if self.among.matches(c) and not self.cell.matches(c)]
        if len(chosen) != 1:
            raise SpecError(f"must select exactly one cell, selects {len(chosen)}",
                            where=ctx.where, argument=f"{arg}: cell", value=dict(self.cell.params),
                            fix="name a value for every grid axis")
        if not others:
            raise SpecError("leaves no other cell to beat", where=ctx.where, argument=arg,
                            value=self.describe())

    def judge(self, results: Mapping[str, CellResult], alpha: float) -> Verdict:
        chosen = [r for r in results.values() if self.cell.matches(r.params)]
        others = [r for r in results.values()
                  if self.among.matches(r.params) and not self.cell.matches(r.params)]
        lines = [f"claim: {self.describe()} (Welch's t-test against each other cell, "
                 f"{1 - alpha:.0%} confidence)",
                 f"  {_sel_text(self.cell)}: {_summary(_values(self.quantity, chosen))}"]
        p_pass, p_fails = 0.0, []
        for other in others:
            t, _, vo = _pair_test(self.quantity, chosen, [other], self.lower, 0.0)
            label = other.cell_id
            if t is None:
                lines.append(f"  vs {label}: not enough finite values")
                p_pass = 1.0
                continue
            verdict = decide(t.p_below, t.p_above, alpha)
            lines.append(f"  vs {label}: {_summary(vo)}, p = {t.p_below:.3g} ({verdict})")
            p_pass = max(p_pass, t.p_below)
            p_fails.append(t.p_above)
        p_fail = _any_against(p_fails)
        return Verdict(self.describe(), decide(p_pass, p_fail, alpha), "\n".join(lines),
                       p_pass=p_pass, p_fail=p_fail, points=self.points)


def compare(
    quantity: Quantity,
    *,
    lower: Mapping[str, Any] | str | None = None,
    higher: Mapping[str, Any] | str | None = None,
    than: Mapping[str, Any],
    margin: float = 0.0,
    confidence: float | None = None,
    name: str | None = None,
    points: float | None = None,
    seeds: int | None = None,
) -> Compare:
    """``compare(metric("val_loss").final(), lower={"lr": 0.3}, than={"lr": 0.03})``: the
    cells selected by ``lower`` (or ``higher``) beat those selected by ``than``, by a relative
    ``margin`` when given (``margin=0.1``: at least 10%). In a search, ``higher="found"``
    (or ``lower="found"``) compares the best configuration found with the baseline ``than``
    (every searched hyperparameter given), both retrained on ``seeds`` fresh seeds (3); that
    form is dispatched by :func:`hpspec.search.compare`, which ``hp.compare`` is."""
    if (lower is None) == (higher is None):
        raise TypeError("compare() takes exactly one of lower= or higher=")
    side = lower if lower is not None else higher
    if seeds is not None:
        raise TypeError("compare(seeds=...) is for higher='found' / lower='found' in a search")
    return Compare(quantity, _selector(side), _selector(than), lower is not None, margin,
                   confidence, name, points)


def trend(
    quantity: Quantity,
    *,
    over: str,
    increasing: bool = True,
    where: Mapping[str, Any] | None = None,
    confidence: float | None = None,
    name: str | None = None,
    points: float | None = None,
) -> Trend:
    """``trend(throughput(), over="batch_size", increasing=True)``: the quantity rises (or
    falls) at every step of ``over``, for every combination of the other hyperparameters."""
    return Trend(quantity, over, increasing, _selector(where or {}), confidence, name, points)


def best(
    quantity: Quantity,
    *,
    cell: Mapping[str, Any],
    lower: bool = False,
    where: Mapping[str, Any] | None = None,
    confidence: float | None = None,
    name: str | None = None,
    points: float | None = None,
) -> Best:
    """``best(metric("val_acc").final(), cell={"lr": 0.3})``: that cell beats every other
    (``lower=True`` when lower is better)."""
    return Best(quantity, _selector(cell), lower, _selector(where or {}), confidence, name,
                points)


def judge_adaptive(
    claim: CrossClaim,
    fetch: Callable[[int], Mapping[str, CellResult]],
    plan: stats.Adaptive,
    alpha: float,
) -> Verdict:
    """Judge with sequential seeding: ``fetch(n)`` returns the needed cells' results with at
    least ``n`` seeds each; stop at the first look that decides. Each look tests at
    ``alpha / looks`` so the chance of a false decision over all looks is at most ``alpha``."""
    looks = plan.looks()
    per_look = alpha / len(looks)
    verdict: Verdict | None = None
    n = looks[0]
    for n in looks:
        verdict = claim.judge(fetch(n), per_look)
        if verdict.outcome != INCONCLUSIVE:
            break
    assert verdict is not None
    state = (f"decided at {n} seeds per cell" if verdict.outcome != INCONCLUSIVE
             else f"still undecided at the maximum, {n} seeds per cell")
    note = f"\nadaptive seeds: {state} (looks at {looks}, each at alpha {per_look:.3g})"
    return attrs.evolve(verdict, message=verdict.message + note)
