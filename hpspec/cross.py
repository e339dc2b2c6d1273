"""Claims across cells: compare, trend, best. Pure: judged on plain results with
:mod:`hpspec.stats`.

Every cross-cell claim is decided over seeds by the tests :mod:`hpspec.stats` chooses and
justifies (paired or Welch t-tests; exact rank tests with diverged seeds ranked worst), giving
pass, fail or inconclusive, and becomes a pytest item of its own that runs after the cells it
needs (training them when it was selected alone).
"""

from __future__ import annotations

import itertools
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
    Effect,
    Measure,
    Quantity,
    SpecContext,
    Verdict,
    Where,
    validate_measure,
    validate_points,
    validate_where,
)
from hpspec.claims import format_number as _fmt
from hpspec.errors import SpecError
from hpspec.results import CellResult
from hpspec.spec import cell_id, format_value
from hpspec.vocabulary import Outcome

__all__ = [
    "Compare",
    "Trend",
    "Best",
    "compare",
    "trend",
    "best",
    "Equivalent",
    "Noninferior",
    "equivalent",
    "noninferior",
    "CrossClaim",
    "decide",
    "judge_adaptive",
]


def decide(p_pass: float, p_fail: float, alpha: float) -> Outcome:
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
    if w.cells is not None:
        return w.text()
    return ", ".join(f"{k}={format_value(v)}" for k, v in w.params) or "all cells"


def _values(q: Quantity, results: Sequence[CellResult]) -> list[float]:
    """One number per seed; a seed the runner stopped as diverged, or whose value is not
    finite, is NaN (diverged: an outcome the tests rank worst, never a dropped value)."""
    out: list[float] = []
    for r in results:
        for s in r.seeds:
            v = q.evaluate(s)
            x = math.nan if v is None or s.diverged is not None else float(v)
            out.append(x if math.isfinite(x) else math.nan)
    return out


def _seed_ids(results: Sequence[CellResult]) -> list[int]:
    return [s.seed for r in results for s in r.seeds]


def _summary(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    bad = len(values) - len(finite)
    if not finite:
        return f"all {len(values)} seeds diverged (no value to average)"
    if len(finite) == 1:
        text = f"{_fmt(finite[0])}"
    else:
        text = f"{_fmt(statistics.fmean(finite))} ± {_fmt(statistics.stdev(finite))}"
    if bad:
        text += f" over the {len(finite)} finite seeds; {bad} of {len(values)} seeds diverged"
    else:
        text += f" over {len(values)} seeds"
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
            validate_measure(q, ctx, f"{arg}: quantity")
        for w in selectors:
            validate_where(w, ctx, arg)
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
               margin: float, paired: bool = True, shift: float = 0.0,
               scale: float | None = None) -> tuple[stats.Test | None, list[float], list[float]]:
    """Test "a is better than b" (by a relative margin, or than ``scale * b + shift``). The
    returned test's ``p_below`` is the p-value for the claim (small: a is better). Diverged
    seeds count as the worst value (see :mod:`hpspec.stats`)."""
    va, vb = _values(q, a), _values(q, b)
    if scale is None:
        scale = (1 - margin) if lower else (1 + margin)
    try:
        t = stats.better(va, vb, lower=lower, scale=scale, shift=shift, seeds_a=_seed_ids(a),
                         seeds_b=_seed_ids(b), paired=paired)
    except ValueError:
        return None, va, vb
    return t, va, vb


def _diverged_text(t: stats.Test) -> str:
    da, db = t.diverged
    return f"; diverged seeds: {da} vs {db}, ranked worst" if da or db else ""


def _check_sides(claim: CrossClaim, ctx: SpecContext, arg: str, a: Where, b: Where,
                 what: str) -> None:
    """The two sides of a two-sided claim (compare, equivalent, noninferior): disjoint, and
    each with enough seeds to be judged."""
    if any(a.matches(c) and b.matches(c) for c in ctx.cells):
        raise SpecError("selects the same cell on both sides", where=ctx.where,
                        argument=arg, value=claim.describe(),
                        fix="make the two selections disjoint")
    _too_few_seeds(ctx, arg, [a, b], what)


def _too_few_seeds(ctx: SpecContext, arg: str, sides: Sequence[Where], what: str) -> None:
    """One seed per side leaves no spread to judge a difference by: refuse at collection."""
    if ctx.seeds > 1:
        return
    counts = [sum(1 for c in ctx.cells if w.matches(c)) for w in sides]
    if all(n <= 1 for n in counts):
        raise SpecError(f"has one seed on each side, so {what} can never be decided",
                        where=ctx.where, argument=arg, value=f"seeds={ctx.seeds}",
                        fix="use seeds=5 (or more) in @hp.experiment, or "
                        "seeds=hp.adaptive(min=3, max=20)")


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
    paired: bool = True

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
        _check_sides(self, ctx, arg, self.better, self.than, "the comparison")

    def judge(self, results: Mapping[str, CellResult], alpha: float) -> Verdict:
        a = [r for r in results.values() if self.better.matches(r.params)]
        b = [r for r in results.values() if self.than.matches(r.params)]
        t, va, vb = _pair_test(self.quantity, a, b, self.lower, self.margin, self.paired)
        conf = 1 - alpha
        name = t.name if t is not None else "no test"
        lines = [f"claim: {self.describe()} ({name}, {conf:.0%} confidence)",
                 f"  {_sel_text(self.better)}: {_summary(va)}",
                 f"  {_sel_text(self.than)}: {_summary(vb)}"]
        if t is None:
            lines.append("  needs at least two finite values on each side")
            return Verdict(self.describe(), INCONCLUSIVE, "\n".join(lines), p_pass=1.0,
                           p_fail=1.0, points=self.points)
        outcome = decide(t.p_below, t.p_above, alpha)
        sign = "" if self.lower else " (B - A)"
        what = "median per-seed difference" if isinstance(t, stats.RankTest) else "difference"
        if t.paired:
            what += f" (paired by seed, {t.n[0]} pairs)"
        iv = t.interval(1 - 2 * alpha)
        shown = f", {1 - 2 * alpha:.0%} interval [{_fmt(iv[0])}, {_fmt(iv[1])}]" if iv else ""
        lines.append(f"  {what}{sign}: {_fmt(t.estimate)}{shown}; p = {t.p_below:.3g} for, "
                     f"{t.p_above:.3g} against{_diverged_text(t)}")
        if outcome == INCONCLUSIVE:
            lines.append(_more_seeds(t, va, vb, alpha, self.lower,
                                     (1 - self.margin) if self.lower else (1 + self.margin)))
        elif outcome == FAIL:
            lines.append(f"  refuted: the data contradict the claim at {conf:.0%} confidence")
        return Verdict(self.describe(), outcome, "\n".join(lines), p_pass=t.p_below,
                       p_fail=t.p_above, points=self.points,
                       effect=Effect(t.estimate, iv[0] if iv else math.nan,
                                     iv[1] if iv else math.nan, 1 - 2 * alpha,
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


#: Seed counts beyond this are reported as "too small an effect to decide".
SEED_LIMIT = 100


def _more_seeds(t: stats.Test, va: Sequence[float], vb: Sequence[float], alpha: float,
                lower: bool = True, scale: float = 1.0, shift: float = 0.0) -> str:
    now = max(t.n)
    if isinstance(t, stats.RankTest):
        n = stats.seeds_needed_ranks(va, vb, t, alpha, lower, scale, shift, limit=SEED_LIMIT)
        if n is None:
            return "  no difference observed: more seeds will not decide it"
        if n > SEED_LIMIT:
            return (f"  undecided at {now} seeds per cell; the effect is too small to decide "
                    f"within {SEED_LIMIT} seeds per cell")
        return (f"  undecided at {now} seeds per cell; if the seeds went on like these "
                f"(divergence included), roughly {n} seeds per cell would decide")
    if isinstance(t, stats.TTest) and t.paired:
        n = stats.seeds_needed(t.estimate, t.sd[0], None, alpha, current=now, limit=SEED_LIMIT)
    else:
        n = stats.seeds_needed(t.estimate, t.sd[0], t.sd[1], alpha, current=now,
                               limit=SEED_LIMIT)
    if n is None:
        return "  no difference observed: more seeds will not decide it"
    if n > SEED_LIMIT:
        return (f"  undecided at {now} seeds per cell; the effect is too small to decide "
                f"within {SEED_LIMIT} seeds per cell")
    return (f"  undecided at {now} seeds per cell; roughly {n} seeds per cell would decide an "
            "effect this size (80% power)")


def _mean_text(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    text = _fmt(statistics.fmean(finite)) if finite else "no finite value"
    bad = len(values) - len(finite)
    return text + (f" ({bad} of {len(values)} diverged)" if bad else "")


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
        lines = [f"claim: {self.describe()} (a test per step: paired t-test when the cells "
                 "share seeds, else Welch's; exact rank test, diverged seeds worst, when any "
                 f"diverged; {1 - alpha:.0%} confidence)"]
        p_pass = 0.0
        p_fails: list[float] = []
        undecided: list[str] = []
        for group in self.groups(results):
            for prev, nxt in itertools.pairwise(group):
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
                mp, mn = _mean_text(vp), _mean_text(vn)
                verdict = decide(t.p_below, t.p_above, alpha)
                lines.append(f"  {step}: {mp} -> {mn}, {t.name}, p = {t.p_below:.3g} "
                             f"({verdict})")
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
        lines = [f"claim: {self.describe()} (a test against each other cell: paired t-test "
                 "when they share seeds, else Welch's; exact rank test, diverged seeds worst, "
                 f"when any diverged; {1 - alpha:.0%} confidence)",
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
            lines.append(f"  vs {label}: {_summary(vo)}, {t.name}, p = {t.p_below:.3g} "
                         f"({verdict})")
            p_pass = max(p_pass, t.p_below)
            p_fails.append(t.p_above)
        p_fail = _any_against(p_fails)
        return Verdict(self.describe(), decide(p_pass, p_fail, alpha), "\n".join(lines),
                       p_pass=p_pass, p_fail=p_fail, points=self.points)


def _parse_margin(margin: Any) -> tuple[float, bool] | None:
    """``0.01`` (absolute, in the quantity's units) or ``"1%"`` (relative to B): (amount,
    relative), or None when it is neither."""
    if isinstance(margin, str):
        text = margin.strip()
        if text.endswith("%"):
            try:
                x = float(text[:-1]) / 100
            except ValueError:
                return None
            return (x, True) if 0 < x < 1 else None
        return None
    if isinstance(margin, (int, float)) and not isinstance(margin, bool) and \
            0 < margin < math.inf:
        return float(margin), False
    return None


def _margin_text(margin: Any) -> str:
    return margin if isinstance(margin, str) else _fmt(margin)


def _direction(q: Quantity, better: str | None) -> bool | None:
    """True when lower is better: given, or read off a metric name ending in loss / acc."""
    if better in ("lower", "higher"):
        return better == "lower"
    name = q.describe().split(" ")[0]
    if name.endswith("loss"):
        return True
    if name.endswith("acc"):
        return False
    return None


def _validate_margin(margin: Any, ctx: SpecContext, arg: str) -> None:
    if _parse_margin(margin) is None:
        raise SpecError("must be a positive number (absolute, in the quantity's units) or a "
                        "percentage such as '1%' (relative to the reference side)",
                        where=ctx.where, argument=f"{arg}: margin", value=margin,
                        fix="e.g. margin=0.01 or margin='1%'")


@attrs.frozen(eq=True)
class Equivalent(CrossClaim):
    """Cells A and B agree on a quantity within ``+-margin`` (two one-sided tests)."""

    quantity: Quantity
    a: Where
    b: Where
    margin: Any
    confidence: float | None = None
    name: str | None = None
    paired: bool = True
    points: float | None = None

    def selects(self, params: Mapping[str, Any]) -> bool:
        return self.a.matches(params) or self.b.matches(params)

    def slug(self) -> str:
        return self.name or (f"equivalent-{_q_slug(self.quantity)}-{_sel_text(self.a)}-and-"
                             f"{_sel_text(self.b)}").replace(", ", "-")

    def describe(self) -> str:
        return (f"{self.quantity.describe()} for {_sel_text(self.a)} is within "
                f"±{_margin_text(self.margin)} of {_sel_text(self.b)}")

    def validate(self, ctx: SpecContext, arg: str) -> None:
        self._validate_common(ctx, arg, [self.a, self.b])
        _validate_margin(self.margin, ctx, arg)
        _check_sides(self, ctx, arg, self.a, self.b, "equivalence")

    def judge(self, results: Mapping[str, CellResult], alpha: float) -> Verdict:
        ra = [r for r in results.values() if self.a.matches(r.params)]
        rb = [r for r in results.values() if self.b.matches(r.params)]
        parsed = _parse_margin(self.margin)
        assert parsed is not None
        m, rel = parsed
        va, vb = _values(self.quantity, ra), _values(self.quantity, rb)
        conf = 1 - alpha
        da = sum(not math.isfinite(v) for v in va)
        db = sum(not math.isfinite(v) for v in vb)
        lines = [f"claim: {self.describe()}", f"  {_sel_text(self.a)}: {_summary(va)}",
                 f"  {_sel_text(self.b)}: {_summary(vb)}"]
        if da or db:
            # A diverged seed has no value to be equivalent with: never a pass.
            p = stats.fisher_diverged(da, len(va), db, len(vb))
            outcome = FAIL if p < alpha else INCONCLUSIVE
            lines[0] += f" (Fisher's exact test on divergence counts, {conf:.0%} confidence)"
            lines.append(f"  diverged seeds: {da} of {len(va)} vs {db} of {len(vb)}; p = "
                         f"{p:.3g} that they diverge at different rates; a diverged seed is "
                         "never equivalent, so this claim cannot pass")
            return Verdict(self.describe(), outcome, "\n".join(lines), p_pass=1.0, p_fail=p,
                           points=self.points)
        # upper: a < b + m (or (1 + m) b); lower: a > b - m (or (1 - m) b).
        up, _, _ = _pair_test(self.quantity, ra, rb, True, 0.0, self.paired,
                              shift=0.0 if rel else m, scale=(1 + m) if rel else 1.0)
        lo, _, _ = _pair_test(self.quantity, ra, rb, False, 0.0, self.paired,
                              shift=0.0 if rel else -m, scale=(1 - m) if rel else 1.0)
        if up is None or lo is None:
            lines.append("  needs at least two finite values on each side")
            return Verdict(self.describe(), INCONCLUSIVE, "\n".join(lines), p_pass=1.0,
                           p_fail=1.0, points=self.points)
        lines[0] += f" (two one-sided {up.name}s, {conf:.0%} confidence)"
        p_pass = max(up.p_below, lo.p_below)
        # Outside the margin on either side; the two are disjoint events, Bonferroni keeps
        # the false-fail rate at alpha even when the margin is tiny.
        p_fail = min(1.0, 2 * min(up.p_above, lo.p_above))
        outcome = decide(p_pass, p_fail, alpha)
        diff = stats.better(va, vb, lower=True, seeds_a=_seed_ids(ra), seeds_b=_seed_ids(rb),
                            paired=self.paired)
        iv = diff.interval(1 - 2 * alpha)
        bound = f"±{_fmt(m)}" if not rel else f"±{m:.3g} x B's mean " \
            f"(±{_fmt(m * abs(statistics.fmean(vb)))})"
        if iv is not None:
            lines.append(f"  difference A - B: {_fmt(diff.estimate)}, {1 - 2 * alpha:.0%} "
                         f"interval [{_fmt(iv[0])}, {_fmt(iv[1])}], margin {bound}")
        lines.append(f"  p = {p_pass:.3g} for (both one-sided tests), {p_fail:.3g} against")
        if outcome == INCONCLUSIVE:
            worst = up if up.p_below >= lo.p_below else lo
            lines.append(_more_seeds(worst, va, vb, alpha))
        elif outcome == FAIL:
            lines.append(f"  refuted: the difference lies outside the margin at {conf:.0%} "
                         "confidence")
        return Verdict(self.describe(), outcome, "\n".join(lines), p_pass=p_pass,
                       p_fail=p_fail, points=self.points)


@attrs.frozen(eq=True)
class Noninferior(CrossClaim):
    """Cells A are no worse than cells B by more than ``margin`` (one-sided test)."""

    quantity: Quantity
    a: Where
    than: Where
    margin: Any
    better: str | None = None
    confidence: float | None = None
    name: str | None = None
    paired: bool = True
    points: float | None = None

    def selects(self, params: Mapping[str, Any]) -> bool:
        return self.a.matches(params) or self.than.matches(params)

    def slug(self) -> str:
        return self.name or (f"noninferior-{_q_slug(self.quantity)}-{_sel_text(self.a)}-to-"
                             f"{_sel_text(self.than)}").replace(", ", "-")

    def describe(self) -> str:
        return (f"{self.quantity.describe()} for {_sel_text(self.a)} is no worse than for "
                f"{_sel_text(self.than)} by more than {_margin_text(self.margin)}")

    def validate(self, ctx: SpecContext, arg: str) -> None:
        self._validate_common(ctx, arg, [self.a, self.than])
        _validate_margin(self.margin, ctx, arg)
        if _direction(self.quantity, self.better) is None:
            raise SpecError("does not say whether lower or higher is better", where=ctx.where,
                            argument=f"{arg}: better", value=self.better,
                            fix="pass better='lower' or better='higher'")
        _check_sides(self, ctx, arg, self.a, self.than, "non-inferiority")

    def judge(self, results: Mapping[str, CellResult], alpha: float) -> Verdict:
        ra = [r for r in results.values() if self.a.matches(r.params)]
        rb = [r for r in results.values() if self.than.matches(r.params)]
        parsed = _parse_margin(self.margin)
        lower = _direction(self.quantity, self.better)
        assert parsed is not None and lower is not None
        m, rel = parsed
        # Lower is better: a < b + m (or (1 + m) b); higher: a > b - m (or (1 - m) b).
        if rel:
            scale, shift = (1 + m if lower else 1 - m), 0.0
        else:
            scale, shift = 1.0, (m if lower else -m)
        t, va, vb = _pair_test(self.quantity, ra, rb, lower, 0.0, self.paired, shift=shift,
                               scale=scale)
        conf = 1 - alpha
        name = t.name if t is not None else "no test"
        lines = [f"claim: {self.describe()} ({name}, {conf:.0%} confidence, "
                 f"{'lower' if lower else 'higher'} is better)",
                 f"  {_sel_text(self.a)}: {_summary(va)}",
                 f"  {_sel_text(self.than)}: {_summary(vb)}"]
        if t is None:
            lines.append("  needs at least two finite values on each side")
            return Verdict(self.describe(), INCONCLUSIVE, "\n".join(lines), p_pass=1.0,
                           p_fail=1.0, points=self.points)
        outcome = decide(t.p_below, t.p_above, alpha)
        iv = t.interval(1 - 2 * alpha)
        what = "B - A" if not lower else "A - B"
        shown = f", {1 - 2 * alpha:.0%} interval [{_fmt(iv[0])}, {_fmt(iv[1])}]" if iv else ""
        lines.append(f"  {what} less the margin (below 0 holds the claim): "
                     f"{_fmt(t.estimate)}{shown}; p = {t.p_below:.3g} for, {t.p_above:.3g} "
                     f"against{_diverged_text(t)}")
        if outcome == INCONCLUSIVE:
            lines.append(_more_seeds(t, va, vb, alpha, lower, scale, shift))
        elif outcome == FAIL:
            lines.append(f"  refuted: A is worse by more than the margin at {conf:.0%} "
                         "confidence")
        return Verdict(self.describe(), outcome, "\n".join(lines), p_pass=t.p_below,
                       p_fail=t.p_above, points=self.points)


def equivalent(
    quantity: Quantity,
    *,
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    margin: float | str,
    confidence: float | None = None,
    name: str | None = None,
    paired: bool = True,
    points: float | None = None,
) -> Equivalent:
    """``equivalent(metric("val_acc").final(), a={"bs": 256}, b={"bs": 32}, margin=0.01)``:
    the difference A - B lies within ``+-margin`` (absolute, or ``"1%"`` of B). Two one-sided
    tests: passes when the ``1 - 2 alpha`` interval lies inside the margin, fails when it
    lies outside; a seed diverged on either side means it cannot pass."""
    return Equivalent(quantity, _selector(a), _selector(b), margin, confidence, name, paired,
                      points)


def noninferior(
    quantity: Quantity,
    a: Mapping[str, Any],
    *,
    than: Mapping[str, Any],
    margin: float | str,
    better: str | None = None,
    confidence: float | None = None,
    name: str | None = None,
    paired: bool = True,
    points: float | None = None,
) -> Noninferior:
    """``noninferior(metric("val_acc").final(), {"bs": 256}, than={"bs": 32}, margin=0.01)``:
    A is no worse than B by more than ``margin`` (absolute, or ``"1%"`` of B). Which way is
    better is read off a metric named ``*loss`` (lower) or ``*acc`` (higher), else give
    ``better="lower"`` or ``"higher"``. Diverged seeds count as the worst value."""
    return Noninferior(quantity, _selector(a), _selector(than), margin, better, confidence,
                       name, paired, points)


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
    where: Mapping[str, Any] | None = None,
    paired: bool = True,
    seeds: int | None = None,
) -> Compare:
    """``compare(metric("val_loss").final(), lower={"lr": 0.3}, than={"lr": 0.03})``: the
    cells selected by ``lower`` (or ``higher``) beat those selected by ``than``, by a relative
    ``margin`` when given (``margin=0.1``: at least 10%).

    ``where={"layers": 2}`` narrows both sides to the cells that also match it (the other
    axes are pooled over otherwise). Sides that ran the same seed ids once each are paired
    by seed; ``paired=False`` forces the unpaired (Welch / rank-sum) test.

    In a search, ``higher="found"`` (or ``lower="found"``) compares the best configuration
    found with the baseline ``than`` (every searched hyperparameter given), both retrained on
    ``seeds`` fresh seeds (3); that form is dispatched by :func:`hpspec.search.compare`,
    which ``hp.compare`` is."""
    if (lower is None) == (higher is None):
        raise TypeError("compare() takes exactly one of lower= or higher=")
    side = lower if lower is not None else higher
    if seeds is not None:
        raise TypeError("compare(seeds=...) is for higher='found' / lower='found' in a search")
    better_w, than_w = _selector(side), _selector(than)
    if where:
        extra = tuple(_selector(where).params)
        better_w, than_w = attrs.evolve(better_w, params=better_w.params + extra), \
            attrs.evolve(than_w, params=than_w.params + extra)
    return Compare(quantity, better_w, than_w, lower is not None, margin, confidence, name,
                   points=points, paired=paired)


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
