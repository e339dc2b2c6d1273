"""Claims about training outcomes, and their judgement. Pure: no torch, no pytest.

Building blocks, from small to large:

- a *quantity* reads one number from one seed's result (``metric("val_loss").min()``,
  ``throughput()``), and supports arithmetic (``metric("val_loss").min() * 1.5``);
- a *condition* is a yes/no question about one seed (``quantity >= 0.9``,
  ``metric("val_loss").below(0.3).within(epochs=5)``, ``diverges()``, ``~diverges()``);
- a *claim* says which cells a condition is about and how many seeds must satisfy it
  (``where(lr=0.03).expect(condition, at_least=2)``).

Judging a claim returns a :class:`Verdict` (plain data) whose message shows the claim, the
value per seed and the curve, so a failure explains itself.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from hpspec.errors import SpecError
from hpspec.measures import BY_NAME, CLAIMABLE
from hpspec.measures import get as measure_named
from hpspec.results import SeedResult, from_json_number, json_number
from hpspec.vocabulary import Direction, Mode, Outcome

__all__ = [
    "Quantity",
    "Metric",
    "Measure",
    "Condition",
    "Claim",
    "CellClaim",
    "Where",
    "Verdict",
    "SeedCheck",
    "SpecContext",
    "metric",
    "throughput",
    "epoch_time",
    "peak_memory",
    "measure",
    "parse_size",
    "diverges",
    "converges",
    "where",
    "expect",
    "judge_cell_claim",
    "recipe_metrics",
    "format_curve",
]

PASS: Outcome = "pass"
FAIL: Outcome = "fail"
INCONCLUSIVE: Outcome = "inconclusive"


def recipe_metrics(task: str | None) -> frozenset[str]:
    """The per-epoch metrics recipe mode records for a task."""
    base = {"train_loss", "val_loss"}
    if task == "classification":
        base |= {"val_acc"}
    return frozenset(base)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def format_number(x: float | None) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax != 0 and (ax >= 1e5 or ax < 1e-3):
        return f"{x:.3g}"
    return f"{x:.4g}"


def format_curve(values: Sequence[float], limit: int = 12) -> str:
    """``2.3 1.1 0.61 ... 0.45`` with at most ``limit`` numbers; long curves keep both ends."""
    shown = [format_number(v) for v in values]
    if len(shown) <= limit:
        return " ".join(shown)
    head = limit // 2
    tail = limit - head - 1
    return " ".join(shown[:head]) + f" ... ({len(shown) - head - tail} more) ... " + " ".join(
        shown[-tail:]
    )


# ------------------------------------------------------------------------------- quantities

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}


class Quantity:
    """One number read from one seed's result. Compare it to get a :class:`Condition`."""

    def evaluate(self, run: SeedResult) -> float | None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def metrics(self) -> frozenset[str]:
        return frozenset()

    def curve_metric(self) -> str | None:
        return None

    def _operand(self, other: Any) -> Any:
        """The right-hand side of a comparison as the condition keeps it."""
        return other

    # Comparisons build conditions. ``==`` / ``!=`` with a number (or a size string) build
    # one too (``measure("params") == 26122``); between two quantities they stay structural
    # equality, which claims' own equality (attrs) relies on. Subclasses are attrs classes
    # with eq=False so these are not replaced.
    def __eq__(self, other: Any) -> Any:
        if isinstance(other, Quantity):
            return type(self) is type(other) and _fields(self) == _fields(other)
        if _is_number(other) or isinstance(other, str):
            return Threshold(self, "==", self._operand(other))
        return NotImplemented

    def __ne__(self, other: Any) -> Any:
        if isinstance(other, Quantity):
            return not self.__eq__(other)
        if _is_number(other) or isinstance(other, str):
            return Threshold(self, "!=", self._operand(other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((type(self).__name__, _fields(self)))

    def __lt__(self, other: Any) -> Threshold:
        return Threshold(self, "<", self._operand(other))

    def __le__(self, other: Any) -> Threshold:
        return Threshold(self, "<=", self._operand(other))

    def __gt__(self, other: Any) -> Threshold:
        return Threshold(self, ">", self._operand(other))

    def __ge__(self, other: Any) -> Threshold:
        return Threshold(self, ">=", self._operand(other))

    def __add__(self, other: Any) -> Arith:
        return Arith("+", self, other)

    def __radd__(self, other: Any) -> Arith:
        return Arith("+", other, self)

    def __sub__(self, other: Any) -> Arith:
        return Arith("-", self, other)

    def __rsub__(self, other: Any) -> Arith:
        return Arith("-", other, self)

    def __mul__(self, other: Any) -> Arith:
        return Arith("*", self, other)

    def __rmul__(self, other: Any) -> Arith:
        return Arith("*", other, self)

    def __truediv__(self, other: Any) -> Arith:
        return Arith("/", self, other)

    def __rtruediv__(self, other: Any) -> Arith:
        return Arith("/", other, self)


def _fields(q: Quantity) -> tuple[Any, ...]:
    return attrs.astuple(q, recurse=False)  # type: ignore[arg-type]  # subclasses are attrs


def _evaluate(x: Any, run: SeedResult) -> float | None:
    return x.evaluate(run) if isinstance(x, Quantity) else float(x)


def _describe(x: Any) -> str:
    return x.describe() if isinstance(x, Quantity) else format_number(x)


_HOW = ("final", "min", "max", "first", "mean", "at", "argmin", "argmax")


@attrs.frozen(eq=False)
class Metric(Quantity):
    """A per-epoch metric, reduced to one number: ``final`` (default), ``min``, ``max``,
    ``first``, ``mean``, ``at`` an epoch, or the epoch of its ``argmin`` / ``argmax``."""

    name: str
    how: str = "final"
    epoch: int | None = None

    def final(self) -> Metric:
        return attrs.evolve(self, how="final", epoch=None)

    def min(self) -> Metric:
        return attrs.evolve(self, how="min", epoch=None)

    def max(self) -> Metric:
        return attrs.evolve(self, how="max", epoch=None)

    def first(self) -> Metric:
        return attrs.evolve(self, how="first", epoch=None)

    def mean(self) -> Metric:
        return attrs.evolve(self, how="mean", epoch=None)

    def at(self, epoch: int) -> Metric:
        return attrs.evolve(self, how="at", epoch=epoch)

    def argmin(self) -> Metric:
        """The (1-based) epoch at which the metric was lowest."""
        return attrs.evolve(self, how="argmin", epoch=None)

    def argmax(self) -> Metric:
        return attrs.evolve(self, how="argmax", epoch=None)

    def below(self, target: float) -> Reaches:
        """The metric goes below ``target`` at some epoch; add ``.within(epochs=N)``."""
        return Reaches(self.name, "below", target)

    def above(self, target: float) -> Reaches:
        return Reaches(self.name, "above", target)

    def evaluate(self, run: SeedResult) -> float | None:
        curve = run.curves.get(self.name)
        if not curve:
            return None
        finite = [(i, v) for i, v in enumerate(curve) if math.isfinite(v)]
        if self.how == "final":
            return curve[-1]
        if self.how == "first":
            return curve[0]
        if self.how == "at":
            assert self.epoch is not None
            return curve[self.epoch - 1] if self.epoch <= len(curve) else None
        if self.how == "mean":
            return sum(curve) / len(curve)
        if not finite:
            return math.nan
        if self.how == "min":
            return min(v for _, v in finite)
        if self.how == "max":
            return max(v for _, v in finite)
        if self.how == "argmin":
            return float(min(finite, key=lambda p: p[1])[0] + 1)
        if self.how == "argmax":
            return float(max(finite, key=lambda p: p[1])[0] + 1)
        raise AssertionError(self.how)

    def describe(self) -> str:
        if self.how == "at":
            return f"{self.name} at epoch {self.epoch}"
        if self.how in ("argmin", "argmax"):
            return f"epoch of {self.name} {self.how[3:]}"
        return f"{self.name} {self.how}"

    def metrics(self) -> frozenset[str]:
        return frozenset({self.name})

    def curve_metric(self) -> str | None:
        return self.name


_SIZE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> float:
    """``"2 GiB"``, ``"512MiB"``, ``"1.5 GB"``, ``"300 kB"`` or ``"4096"`` as bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-z]*)\s*", text.lower())
    if not m or m.group(2) not in {"", *_SIZE_UNITS}:
        raise ValueError(f"{text!r} is not a size; write e.g. '2 GiB', '512 MiB' or '1.5 GB'")
    return float(m.group(1)) * _SIZE_UNITS.get(m.group(2) or "b", 1)


@attrs.frozen(eq=False)
class Measure(Quantity):
    """A measurement of a seed's run (see ``hpspec.measures.REGISTRY``). Sizes compare
    with numbers of bytes or with text such as ``"2 GiB"``."""

    name: str
    label: str
    unit: str = ""

    def evaluate(self, run: SeedResult) -> float | None:
        return run.measurements.get(self.name)

    def describe(self) -> str:
        return self.label

    def _operand(self, other: Any) -> Any:
        if self.unit == "bytes" and isinstance(other, str):
            try:
                return parse_size(other)
            except ValueError:
                return other  # validation names it, with the fix
        return other


@attrs.frozen(eq=False)
class Arith(Quantity):
    op: str
    left: Any
    right: Any

    def evaluate(self, run: SeedResult) -> float | None:
        a, b = _evaluate(self.left, run), _evaluate(self.right, run)
        if a is None or b is None:
            return None
        try:
            return _ARITH[self.op](a, b)
        except ZeroDivisionError:
            return math.nan

    def describe(self) -> str:
        return f"{_describe(self.left)} {self.op} {_describe(self.right)}"

    def metrics(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for side in (self.left, self.right):
            if isinstance(side, Quantity):
                out |= side.metrics()
        return out

    def curve_metric(self) -> str | None:
        for side in (self.left, self.right):
            if isinstance(side, Quantity) and side.curve_metric():
                return side.curve_metric()
        return None


def metric(name: str) -> Metric:
    """A per-epoch metric by name: ``train_loss``, ``val_loss``, ``val_acc`` in recipe mode,
    or any key your loop-mode generator yields."""
    return Metric(name)


def _registered(name: str) -> Measure:
    m = measure_named(name)
    # A name hpspec does not take keeps itself as its label; validation names it, with the fix.
    if m is None or not m.claimable:
        return Measure(name, name)
    return Measure(m.name, m.label, m.unit)


def throughput() -> Measure:
    """Training samples per second over the timed epochs (the first is warm-up when there
    are several)."""
    return _registered("throughput")  # the gate's names: one vocabulary


def epoch_time() -> Measure:
    """Seconds of training per epoch, evaluation excluded."""
    return _registered("epoch_time")


def peak_memory() -> Measure:
    """Peak live tensor memory while training, in bytes; compare with ``"2 GiB"`` and such."""
    return _registered("memory")


def measure(name: str) -> Measure:
    """Any measurement by name: samples_per_s, steps_per_s, time_per_epoch, peak_memory,
    params, param_bytes, flops_per_sample, mfu (CUDA cards hpspec knows); the registry
    ``hpspec.measures`` lists them."""
    return _registered(name)


# ------------------------------------------------------------------------------- conditions


@attrs.frozen
class SeedCheck:
    """A condition's answer for one seed, with the number it looked at."""

    seed: int
    ok: bool
    value: float | None
    note: str = ""


class Condition:
    """A yes/no question about one seed's run. ``~condition`` negates it."""

    def check(self, run: SeedResult) -> SeedCheck:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def metrics(self) -> frozenset[str]:
        return frozenset()

    def curve_metric(self) -> str | None:
        return None

    def validate(self, ctx: SpecContext, arg: str) -> None:
        """Raise :class:`SpecError` for a condition that cannot be judged."""

    def __invert__(self) -> Not:
        return Not(self)

    def __bool__(self) -> bool:
        # `0.1 < metric("x") < 0.5` would silently keep only the second comparison.
        raise TypeError(
            "a condition has no truth value: write chained comparisons as two claims, "
            "e.g. [metric('x') > 0.1, metric('x') < 0.5]"
        )


def _check_number(x: Any, ctx: SpecContext, arg: str, what: str) -> None:
    if isinstance(x, Quantity):
        return
    if not _is_number(x) or not math.isfinite(float(x)):
        raise SpecError(
            f"{what} must be a finite number",
            where=ctx.where,
            argument=arg,
            value=x,
            fix="compare with a number, e.g. metric('val_acc').final() >= 0.9",
        )


def _exact(q: Quantity) -> bool:
    """Whether ``==`` on the quantity means something: measurements and epoch numbers."""
    if isinstance(q, Measure):
        return True
    if isinstance(q, Metric):
        return q.how in ("argmin", "argmax")
    if isinstance(q, Arith):
        return all(_exact(x) if isinstance(x, Quantity) else float(x).is_integer()
                   for x in (q.left, q.right)) and q.op != "/"
    return False


@attrs.frozen(eq=True)
class Threshold(Condition):
    left: Quantity
    op: str
    right: Any

    def check(self, run: SeedResult) -> SeedCheck:
        a, b = self.left.evaluate(run), _evaluate(self.right, run)
        if a is None or b is None:
            return SeedCheck(run.seed, False, a, "not measured")
        ok = _OPS[self.op](a, b)
        note = "" if isinstance(self.right, (int, float)) else f"vs {format_number(b)}"
        return SeedCheck(run.seed, bool(ok), a, note)

    def describe(self) -> str:
        return f"{self.left.describe()} {self.op} {_describe(self.right)}"

    def metrics(self) -> frozenset[str]:
        out = self.left.metrics()
        if isinstance(self.right, Quantity):
            out |= self.right.metrics()
        return out

    def curve_metric(self) -> str | None:
        return self.left.curve_metric() or (
            self.right.curve_metric() if isinstance(self.right, Quantity) else None
        )

    def validate(self, ctx: SpecContext, arg: str) -> None:
        if isinstance(self.left, Measure) and isinstance(self.right, str):
            raise SpecError("is not a size", where=ctx.where, argument=arg, value=self.right,
                            fix="write a size such as '2 GiB', '512 MiB' or '1.5 GB', or bytes")
        _check_number(self.right, ctx, arg, "the threshold")
        if self.op in ("==", "!=") and not _exact(self.left):
            raise SpecError(f"compares a float metric with {self.op}, which rounding decides",
                            where=ctx.where, argument=arg, value=self.describe(),
                            fix="use >= / <= with a tolerance; == and != are for "
                            "measurements (hp.measure('params') == 26122) and whole-number "
                            "quantities such as .argmin()")
        for q in (self.left, self.right):
            if isinstance(q, Measure):
                validate_measure(q, ctx, arg)
        if isinstance(self.left, Metric) and not isinstance(self.right, Quantity):
            _check_possible(self.left.name, self.op, float(self.right), ctx, arg,
                            self.describe())
        for q in (self.left, self.right):
            if isinstance(q, Metric) and q.how == "at":
                if not isinstance(q.epoch, int) or isinstance(q.epoch, bool) or q.epoch < 1:
                    raise SpecError("epoch must be a whole number from 1", where=ctx.where,
                                    argument=f"{arg}: {q.name}.at(epoch=...)", value=q.epoch,
                                    fix="epochs count from 1: .at(epoch=1) is after one epoch")


@attrs.frozen(eq=True)
class Reaches(Condition):
    """The metric goes below/above a target at some epoch (within N epochs when given)."""

    metric: str
    direction: Direction
    target: Any
    epochs: int | None = None
    seconds: float | None = None

    def within(self, epochs: int | None = None, seconds: float | None = None) -> Reaches:
        """By the end of epoch ``epochs``, and/or within ``seconds`` of training time
        (time-to-target: evaluation excluded, warm-up included)."""
        return attrs.evolve(self, epochs=epochs, seconds=seconds)

    def reached(self, run: SeedResult) -> tuple[int, int, float | None] | None:
        """When the target was first reached: (epoch, step, seconds of training), or None."""
        curve = run.curves.get(self.metric) or ()
        for epoch, v in enumerate(curve, start=1):
            if self._hit(v):
                seconds = (sum(run.epoch_seconds[:epoch])
                           if len(run.epoch_seconds) >= epoch else None)
                return epoch, epoch * run.steps_per_epoch, seconds
        return None

    def _hit(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        return v < self.target if self.direction == "below" else v > self.target

    def check(self, run: SeedResult) -> SeedCheck:
        if not run.curves.get(self.metric):
            return SeedCheck(run.seed, False, None, "not measured")
        hit = self.reached(run)
        if hit is None:
            return SeedCheck(run.seed, False, None,
                             f"never {self.direction} {format_number(self.target)}")
        epoch, step, seconds = hit
        ok = self.epochs is None or epoch <= self.epochs
        if self.seconds is not None:
            ok = ok and seconds is not None and seconds <= self.seconds
        note = f"reached at epoch {epoch}"
        if step:
            note += f", step {step}"
        if seconds is not None:
            note += f", {seconds:.3g} s"
        return SeedCheck(run.seed, ok, float(epoch), note)

    def _limits(self) -> list[str]:
        out = []
        if self.epochs is not None:
            out.append(f"{self.epochs} epochs")
        if self.seconds is not None:
            out.append(f"{format_number(self.seconds)} s")
        return out

    def describe(self) -> str:
        sym = "<" if self.direction == "below" else ">"
        limits = self._limits()
        within = f" within {' and '.join(limits)}" if limits else ""
        return f"{self.metric} {self.direction} {format_number(self.target)} ({sym}){within}"

    def needed(self) -> str:
        sym = "<" if self.direction == "below" else ">"
        by = f" by epoch {self.epochs}" if self.epochs is not None else ""
        if self.seconds is not None:
            by += f" within {format_number(self.seconds)} s"
        return f"needed {sym} {format_number(self.target)}{by}"

    def metrics(self) -> frozenset[str]:
        return frozenset({self.metric})

    def curve_metric(self) -> str | None:
        return self.metric

    def validate(self, ctx: SpecContext, arg: str) -> None:
        _check_number(self.target, ctx, arg, "the target")
        if not isinstance(self.target, Quantity):
            _check_possible(self.metric, "<" if self.direction == "below" else ">",
                            float(self.target), ctx, arg, self.describe())
        if self.epochs is not None and (
            not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1
        ):
            raise SpecError("must be a positive whole number", where=ctx.where,
                            argument=f"{arg}: within(epochs=...)", value=self.epochs,
                            fix="e.g. .within(epochs=5)")
        if self.seconds is not None and (
            not _is_number(self.seconds) or not 0 < float(self.seconds) < math.inf
        ):
            raise SpecError("must be a positive number of seconds", where=ctx.where,
                            argument=f"{arg}: within(seconds=...)", value=self.seconds,
                            fix="e.g. .within(seconds=30)")


@attrs.frozen(eq=True)
class Diverges(Condition):
    """Training was stopped as diverged (loss NaN/inf or far above its start)."""

    epochs: int | None = None

    def within(self, epochs: int) -> Diverges:
        return attrs.evolve(self, epochs=epochs)

    def check(self, run: SeedResult) -> SeedCheck:
        d = run.diverged
        if d is None:
            return SeedCheck(run.seed, False, None, f"did not diverge in {run.epochs_run} epochs")
        ok = self.epochs is None or d.epoch <= self.epochs
        return SeedCheck(run.seed, ok, float(d.epoch),
                         f"diverged at epoch {d.epoch}, step {d.step}: {d.reason}")

    def describe(self) -> str:
        return "diverges" + (f" within {self.epochs} epochs" if self.epochs else "")

    def curve_metric(self) -> str | None:
        return None


@attrs.frozen(eq=True)
class Converges(Condition):
    """Did not diverge, and ``metric`` ended at most ``fraction`` of its starting value."""

    metric: str = "train_loss"
    fraction: float = 0.5

    def check(self, run: SeedResult) -> SeedCheck:
        if run.diverged is not None:
            d = run.diverged
            return SeedCheck(run.seed, False, None, f"diverged at epoch {d.epoch}: {d.reason}")
        start = run.start_value(self.metric)
        curve = run.curves.get(self.metric)
        if start is None or not curve:
            return SeedCheck(run.seed, False, None, "not measured")
        end = curve[-1]
        ok = math.isfinite(end) and end <= self.fraction * start
        return SeedCheck(run.seed, ok, end, f"from {format_number(start)} to {format_number(end)}")

    def describe(self) -> str:
        return f"converges ({self.metric} ends <= {format_number(self.fraction)} x its start)"

    def metrics(self) -> frozenset[str]:
        return frozenset({self.metric})

    def curve_metric(self) -> str | None:
        return self.metric

    def validate(self, ctx: SpecContext, arg: str) -> None:
        if not _is_number(self.fraction) or not 0 < self.fraction < 1:
            raise SpecError("must be a number between 0 and 1", where=ctx.where,
                            argument=f"{arg}: converges(fraction=...)", value=self.fraction,
                            fix="e.g. fraction=0.5: the loss at least halves")


@attrs.frozen(eq=True)
class Not(Condition):
    inner: Condition

    def check(self, run: SeedResult) -> SeedCheck:
        c = self.inner.check(run)
        return attrs.evolve(c, ok=not c.ok)

    def describe(self) -> str:
        return f"not ({self.inner.describe()})"

    def metrics(self) -> frozenset[str]:
        return self.inner.metrics()

    def curve_metric(self) -> str | None:
        return self.inner.curve_metric()

    def validate(self, ctx: SpecContext, arg: str) -> None:
        self.inner.validate(ctx, arg)

    def __invert__(self) -> Condition:  # type: ignore[override]
        return self.inner


def diverges() -> Diverges:
    """The run diverges (add ``.within(epochs=N)``); ``~diverges()`` says it does not."""
    return Diverges()


def converges(metric: str = "train_loss", fraction: float = 0.5) -> Converges:
    """The run does not diverge and ``metric`` ends at most ``fraction`` x where it started
    (before training in recipe mode, else at epoch 1)."""
    return Converges(metric, fraction)


# ------------------------------------------------------------------------------------ claims


@attrs.frozen
class SpecContext:
    """What validation needs to know about the experiment a claim belongs to."""

    where: str
    hyperparameters: Mapping[str, Sequence[Any]]
    metrics: frozenset[str] | None
    seeds: int
    mode: Mode = "recipe"
    cells: tuple[Mapping[str, Any], ...] = ()
    #: The searched hyperparameters' names when the experiment is a search.
    searched: tuple[str, ...] = ()


class Claim:
    """Base of everything that goes in ``claims=[...]``."""

    def describe(self) -> str:
        raise NotImplementedError


@attrs.frozen(eq=True)
class Where:
    """Selects cells by hyperparameter value; a list or tuple value means "any of these"
    (so ``lr=[0.1, 0.3], bs=[32, 256]`` is all four combinations). ``cells`` lists exact
    combinations instead: a cell matches when it matches one of them (and ``params``)."""

    params: tuple[tuple[str, Any], ...] = ()
    cells: tuple[tuple[tuple[str, Any], ...], ...] | None = None

    def matches(self, params: Mapping[str, Any]) -> bool:
        if self.cells is not None and not any(
                Where(c).matches(params) for c in self.cells):
            return False
        for name, want in self.params:
            have = params.get(name, _MISSING)
            if isinstance(want, (list, tuple, set, frozenset)):
                if not any(_same(have, w) for w in want):
                    return False
            elif not _same(have, want):
                return False
        return True

    def expect(
        self,
        condition: Condition,
        *,
        at_least: int | None = None,
        confidence: float | None = None,
        points: float | None = None,
    ) -> CellClaim:
        """Claim ``condition`` for every matching cell: over every seed, over ``at_least`` k
        seeds, or (``confidence=0.95``) for the mean over seeds with that confidence.
        ``points`` is what the claim is worth when the run is graded (``--hpspec-grade``)."""
        return CellClaim(self, condition, at_least, confidence, points)

    def text(self) -> str:
        """``lr=0.1, bs=32`` or ``{lr=0.1, bs=32} or {lr=0.3, bs=256}``; empty for all."""
        parts = [f"{k}={_where_value(v)}" for k, v in self.params]
        if self.cells is not None:
            alts = " or ".join("{" + ", ".join(f"{k}={_where_value(v)}" for k, v in c) + "}"
                               for c in self.cells)
            parts.insert(0, f"({alts})" if parts else alts)
        return ", ".join(parts)

    def describe(self) -> str:
        if not self.params and self.cells is None:
            return "every cell"
        return "where " + self.text()


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    # 1 == True in Python; a grid of booleans and one of ints should not match each other.
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _where_value(v: Any) -> str:
    if isinstance(v, (list, tuple, set, frozenset)):
        return "{" + ", ".join(map(repr, v)) + "}"
    return repr(v) if isinstance(v, str) else str(v)


def where(*, cells: Sequence[Mapping[str, Any]] | None = None, **params: Any) -> Where:
    """Cells whose hyperparameters equal these values: ``where(lr=0.1, layers=[1, 2])`` (a
    list means any of these values, so several lists select their product), or an explicit
    list of cells: ``where(cells=[{"lr": 0.1, "bs": 32}, {"lr": 0.3, "bs": 256}])``."""
    if cells is None:
        return Where(tuple(params.items()))
    if isinstance(cells, Mapping) or not isinstance(cells, (list, tuple)) or not all(
            isinstance(c, Mapping) for c in cells):
        raise TypeError("where(cells=...) takes a list of dicts, e.g. "
                        "cells=[{'lr': 0.1, 'bs': 32}, {'lr': 0.3, 'bs': 256}]")
    return Where(tuple(params.items()), tuple(tuple(c.items()) for c in cells))


def expect(
    condition: Condition, *, at_least: int | None = None, confidence: float | None = None,
    points: float | None = None,
) -> CellClaim:
    """A claim over every cell of the grid."""
    return Where().expect(condition, at_least=at_least, confidence=confidence, points=points)


@attrs.frozen(eq=True)
class CellClaim(Claim):
    """A condition over each selected cell's seeds: all of them, or at least ``at_least``."""

    where: Where
    condition: Condition
    at_least: int | None = None
    confidence: float | None = None
    points: float | None = None

    def applies_to(self, params: Mapping[str, Any]) -> bool:
        return self.where.matches(params)

    def quorum(self, n: int) -> int:
        return n if self.at_least is None else min(self.at_least, n)

    def describe(self) -> str:
        if self.confidence is not None:
            return (f"{self.where.describe()}: mean {self.condition.describe()} "
                    f"({self.confidence:.0%} confidence)")
        seeds = "every seed" if self.at_least is None else f"at least {self.at_least} seeds"
        return f"{self.where.describe()}: {self.condition.describe()} ({seeds})"

    def value_label(self) -> str:
        """What the per-seed number in a message is."""
        cond = self.condition.inner if isinstance(self.condition, Not) else self.condition
        if isinstance(cond, Threshold):
            return cond.left.describe()
        if isinstance(cond, Converges):
            return f"{cond.metric} final"
        return "value"

    def target(self) -> tuple[str, str, float] | None:
        """(metric, op, number) when the claim is a line on a metric's chart: a threshold on a
        metric's final/min/max/... value, or a target its curve must reach."""
        cond = self.condition
        if isinstance(cond, Threshold) and isinstance(cond.left, Metric) and _is_number(
                cond.right) and cond.left.how in ("final", "min", "max", "mean", "first", "at"):
            return (cond.left.name, cond.op, float(cond.right))
        if isinstance(cond, Reaches) and _is_number(cond.target):
            return (cond.metric, "<" if cond.direction == "below" else ">", float(cond.target))
        return None


@attrs.frozen
class Effect:
    """What a comparison of two groups of seeds found: the difference of their means, its
    two-sided interval at ``level``, and the difference in pooled standard deviations
    (Cohen's d; None when both groups have no spread)."""

    difference: float
    low: float
    high: float
    level: float
    effect_size: float | None = None


@attrs.frozen
class Verdict:
    """The judgement of one claim on one cell (or, later, on several): plain data."""

    claim: str
    outcome: Outcome
    message: str
    checks: tuple[SeedCheck, ...] = ()
    #: For statistical verdicts: p-values of "the claim is false" and "the claim is true".
    p_pass: float | None = None
    p_fail: float | None = None
    #: What the claim is worth when graded (``points=``); None: not given.
    points: float | None = None
    #: (metric, op, number) a chart can draw as a line (see :meth:`CellClaim.target`).
    target: tuple[str, str, float] | None = None
    #: For a comparison of two groups: the difference with its interval and effect size.
    effect: Effect | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == PASS

    def to_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready data: the one form it takes in the ``--hpspec-json``
        document, the xdist payloads and ``hp.load`` (NaN and infinities kept as text)."""
        return {
            "claim": self.claim,
            "outcome": self.outcome,
            "message": self.message,
            "p_pass": self.p_pass,
            "p_fail": self.p_fail,
            "seeds": [{**attrs.asdict(c), "value": json_number(c.value)} for c in self.checks],
            "points": self.points,
            "target": (None if self.target is None else {
                "metric": self.target[0], "op": self.target[1],
                "value": json_number(self.target[2])}),
            "effect": None if self.effect is None else {
                k: json_number(x) if isinstance(x, float) else x
                for k, x in attrs.asdict(self.effect).items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        checks = tuple(SeedCheck(int(c["seed"]), bool(c["ok"]), from_json_number(c["value"]),
                                 c.get("note", "")) for c in d.get("seeds", ()))
        t = d.get("target")
        e = d.get("effect")
        return cls(
            d["claim"], d["outcome"], d["message"], checks, d.get("p_pass"), d.get("p_fail"),
            d.get("points"),
            None if t is None else (t["metric"], t["op"], float(t["value"])),
            None if e is None else Effect(
                from_json_number(e["difference"]), from_json_number(e["low"]),
                from_json_number(e["high"]), float(e["level"]),
                None if e.get("effect_size") is None else from_json_number(e["effect_size"])),
        )


def judge_cell_claim(claim: CellClaim, runs: Sequence[SeedResult]) -> Verdict:
    """Judge a per-cell claim over the seeds of one cell."""
    v = _judge_mean(claim, runs) if claim.confidence is not None else _judge_seeds(claim, runs)
    return attrs.evolve(v, points=claim.points, target=claim.target())


def _judge_seeds(claim: CellClaim, runs: Sequence[SeedResult]) -> Verdict:
    checks = tuple(claim.condition.check(r) for r in runs)
    held = sum(c.ok for c in checks)
    need = claim.quorum(len(runs))
    outcome = PASS if held >= need else FAIL
    lines = [f"claim: {claim.describe()}"]
    curve_metric = claim.condition.curve_metric()
    needed = claim.condition.needed() if isinstance(claim.condition, Reaches) else (
        f"needed {claim.condition.describe()}"
    )
    for run, c in zip(runs, checks, strict=True):
        mark = "ok  " if c.ok else "FAIL"
        parts = [f"  {mark} seed {run.seed}:"]
        if not isinstance(claim.condition, (Reaches, Diverges)) and c.value is not None:
            parts.append(f"{claim.value_label()} = {format_number(c.value)}")
        if c.note:
            parts.append(c.note)
        lines.append(" ".join(parts))
        curve = run.curves.get(curve_metric) if curve_metric else None
        if curve is not None and not c.ok:
            lines.append(f"         {curve_metric} by epoch: {format_curve(curve)} ({needed})")
        if run.diverged is not None and not isinstance(claim.condition, (Diverges, Not)):
            d = run.diverged
            lines.append(f"         diverged at epoch {d.epoch}, step {d.step}: {d.reason}")
    lines.append(f"held for {held} of {len(runs)} seeds, needed {need}")
    return Verdict(claim.describe(), outcome, "\n".join(lines), checks)


def _judge_mean(claim: CellClaim, runs: Sequence[SeedResult]) -> Verdict:
    """The mean over seeds against the threshold, by a one-sample t-test."""
    from hpspec import stats

    cond = claim.condition
    assert isinstance(cond, Threshold) and claim.confidence is not None
    alpha = 1 - claim.confidence
    values = [cond.left.evaluate(r) for r in runs]
    xs = [math.nan if v is None else float(v) for v in values]
    lines = [f"claim: {claim.describe()} (one-sample t-test)",
             f"  {cond.left.describe()} by seed: {format_curve(xs)}"]
    try:
        t = stats.one_sample(xs, float(cond.right))
    except ValueError:
        lines.append("  needs at least two finite values")
        return Verdict(claim.describe(), INCONCLUSIVE, "\n".join(lines), p_pass=1.0, p_fail=1.0)
    below = cond.op in ("<", "<=")
    p_pass, p_fail = (t.p_below, t.p_above) if below else (t.p_above, t.p_below)
    iv = t.interval(1 - 2 * alpha)
    assert iv is not None  # a t-test always has an interval
    lo, hi = iv
    shift = float(cond.right)
    lines.append(f"  mean {format_number(t.estimate + shift)}, {1 - 2 * alpha:.0%} interval "
                 f"[{format_number(lo + shift)}, {format_number(hi + shift)}], "
                 f"threshold {format_number(shift)}")
    outcome = PASS if p_pass < alpha else FAIL if p_fail < alpha else INCONCLUSIVE
    lines.append(f"  p = {p_pass:.3g} for, {p_fail:.3g} against: {outcome}")
    return Verdict(claim.describe(), outcome, "\n".join(lines), p_pass=p_pass, p_fail=p_fail)


def validate_claim(claim: Any, ctx: SpecContext, arg: str) -> Claim:
    """Check a claim against the experiment; returns it as a :class:`Claim`."""
    if isinstance(claim, Condition):
        claim = expect(claim)
    if isinstance(claim, Where):
        raise SpecError(
            "is a where-clause with no expectation", where=ctx.where, argument=arg,
            value=claim.describe(), fix="add .expect(condition), e.g. "
            "where(lr=0.1).expect(metric('val_acc').final() >= 0.9)",
        )
    if isinstance(claim, bool):
        raise SpecError(
            "is a bool, not a claim: a comparison was evaluated by Python", where=ctx.where,
            argument=arg, value=claim,
            fix="compare a quantity, e.g. hp.metric('val_acc').final() >= 0.9",
        )
    if not isinstance(claim, Claim):
        raise SpecError(
            f"is a {type(claim).__name__}, not a claim", where=ctx.where, argument=arg,
            value=claim, fix="build claims with hp.where(...).expect(...) or hp.expect(...)",
        )
    if isinstance(claim, CellClaim):
        _validate_cell_claim(claim, ctx, arg)
    validate = getattr(claim, "validate", None)
    if validate is not None:
        validate(ctx, arg)
    return claim


def _check_possible(metric: str, op: str, x: float, ctx: SpecContext, arg: str,
                    text: str) -> None:
    """Refuse a threshold no run can meet: accuracy outside [0, 1], a loss below 0 (recipe
    mode's losses: cross-entropy and squared error are never negative)."""
    if ctx.mode != "recipe":
        return
    lo, hi = (0.0, 1.0) if metric.endswith("acc") else (0.0, math.inf) if metric.endswith(
        "loss") else (-math.inf, math.inf)
    never = ((op in ("<", "<=") and (x < lo or (op == "<" and x == lo)))
             or (op in (">", ">=") and (x > hi or (op == ">" and x == hi))))
    if never:
        bounds = "[0, 1]" if hi == 1.0 else ">= 0"
        raise SpecError(f"can never hold: {metric} is {bounds}", where=ctx.where,
                        argument=arg, value=text,
                        fix="check the threshold (accuracy is a fraction: 0.95, not 95)")


def validate_measure(q: Measure, ctx: SpecContext, arg: str) -> None:
    if q.name not in CLAIMABLE:
        raise SpecError("is not a measurement hpspec takes", where=ctx.where,
                        argument=f"{arg}: measure(...)", value=q.name,
                        fix=f"use one of: {', '.join(CLAIMABLE)}")
    if ctx.mode == "loop" and not BY_NAME[q.name].in_loop_mode:
        raise SpecError("is measured in recipe mode only", where=ctx.where,
                        argument=f"{arg}: measure(...)", value=q.name,
                        fix="a loop-mode generator can yield the number as a metric and "
                        "claim it with metric(...); epoch_time() works in both modes")


def validate_where(w: Where, ctx: SpecContext, arg: str) -> None:
    for i, c in enumerate(w.cells if w.cells is not None else ()):
        validate_where(Where(c), ctx, f"{arg}: where(cells[{i}])")
        if ctx.cells and not any(Where(c).matches(x) for x in ctx.cells):
            raise SpecError("selects no cell of the grid", where=ctx.where,
                            argument=f"{arg}: where(cells[{i}])", value=dict(c),
                            fix="pick values that occur together in one cell")
    for name, want in w.params:
        if name not in ctx.hyperparameters:
            known = ", ".join(sorted(ctx.hyperparameters)) or "none"
            raise SpecError(
                "names an unknown hyperparameter", where=ctx.where,
                argument=f"{arg}: where({name}=...)", value=name,
                fix=f"use one of: {known}",
            )
        wants = list(want) if isinstance(want, (list, tuple, set, frozenset)) else [want]
        values = ctx.hyperparameters[name]
        for wv in wants:
            if not any(_same(wv, v) for v in values):
                raise SpecError(
                    "matches no cell", where=ctx.where, argument=f"{arg}: where({name}=...)",
                    value=wv, fix=f"the grid has {name} in {list(values)}",
                )


def validate_points(points: Any, ctx: SpecContext, arg: str) -> None:
    """``points=`` is a finite number >= 0 (a bool is a slip, not a weight)."""
    if points is None:
        return
    if not _is_number(points) or isinstance(points, bool) or not 0 <= points < math.inf:
        raise SpecError("must be a number >= 0", where=ctx.where, argument=f"{arg}: points",
                        value=points, fix="e.g. points=2 (what the claim is worth in a grade)")


def _validate_cell_claim(claim: CellClaim, ctx: SpecContext, arg: str) -> None:
    validate_points(claim.points, ctx, arg)
    validate_where(claim.where, ctx, arg)
    cond = claim.condition
    if isinstance(cond, bool):
        # `1 < 2`, or a comparison of two quantities (== between quantities is structural
        # equality), is evaluated by Python before hpspec sees it
        raise SpecError(
            "is a bool, not a condition: Python evaluated a comparison before hpspec saw it "
            "(one side must be a quantity and the other a number)", where=ctx.where,
            argument=f"{arg}: expect(...)", value=cond,
            fix="compare a quantity with a number, e.g. hp.measure('params') == 26122 or "
                "hp.metric('val_loss').final() < 0.3",
        )
    if not isinstance(cond, Condition):
        raise SpecError(
            f"is a {type(cond).__name__}, not a condition", where=ctx.where,
            argument=f"{arg}: expect(...)", value=cond,
            fix="pass a condition such as metric('val_loss').final() < 0.3 or diverges()",
        )
    if ctx.metrics is not None:
        unknown = sorted(cond.metrics() - ctx.metrics)
        if unknown:
            raise SpecError(
                "is a metric this experiment never produces", where=ctx.where,
                argument=f"{arg}: metric", value=unknown[0],
                fix=f"use one of: {', '.join(sorted(ctx.metrics))}",
            )
    cond.validate(ctx, arg)
    if claim.confidence is not None:
        c = claim.confidence
        if not isinstance(c, float) or not 0.5 <= c < 1:
            raise SpecError("must be a probability between 0.5 and 1", where=ctx.where,
                            argument=f"{arg}: confidence", value=c, fix="e.g. confidence=0.95")
        if not isinstance(cond, Threshold) or isinstance(cond.right, Quantity):
            raise SpecError(
                "works on a comparison with a number only", where=ctx.where,
                argument=f"{arg}: confidence", value=cond.describe(),
                fix="e.g. expect(metric('val_acc').final() >= 0.9, confidence=0.95)",
            )
        if claim.at_least is not None:
            raise SpecError("cannot be combined with at_least", where=ctx.where,
                            argument=f"{arg}: confidence", value=c,
                            fix="use one of at_least= (count of seeds) or confidence= (mean)")
    if claim.at_least is not None:
        k = claim.at_least
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= ctx.seeds:
            raise SpecError(
                f"must be between 1 and the number of seeds ({ctx.seeds})", where=ctx.where,
                argument=f"{arg}: at_least", value=k,
                fix=f"use at_least={min(max(1, k if isinstance(k, int) else 1), ctx.seeds)} "
                "or raise seeds=",
            )
