"""Search: spaces, samplers that produce cells, successive halving, claims about what was found.

Pure: imports neither torch nor pytest (scrambled Sobol points come from scipy, else from
torch.quasirandom, imported lazily when a Sobol search is built).

A search is a way of producing cells. A sampler turns a space into a fixed list of trials at
collection, deterministically from its seed, and every trial becomes a cell with a readable id
(``t07-lr=0.0123-layers=2``), so ``-k``, ``--lf``, the cache and resume work as for a grid, and
trials that share an architecture train as one stacked model. Sampled floats are rounded to
three significant digits *before* training: the value in the id is the value trained.
``hp.optuna`` is the exception: a model-based sampler needs earlier results, so its trials are
listed by number only (``t07``) and their values asked when the search runs
(:mod:`hpspec.optuna_search`; the "Optuna" section below holds its checks and report helpers).

Successive halving (:func:`halving`, run by :func:`successive_halving`) ranks ALL the trials
of a search at each rung epoch, whichever stacked groups they train in: every trial still in is
trained from scratch (same seed, same data order) to the rung, stacked where it can be, the best
``1/eta`` go on to the next rung and the rest are reported as pruned there with their curve so
far. A survivor's curve is therefore exactly the curve it has unpruned. Hyperband
(:func:`hyperband`, run by :func:`run_brackets`) splits the trials into brackets
(:func:`plan_brackets`) and runs successive halving in each from a different first rung, the
brackets advancing together (:func:`halving_steps`): a round of every bracket is one call to
the trainer, so trials stack across brackets, each stopping at its own bracket's epoch.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

import attrs

from hpspec.claims import (
    INCONCLUSIVE,
    CellClaim,
    Condition,
    Quantity,
    SpecContext,
    Verdict,
    Where,
    judge_cell_claim,
    validate_claim,
)
from hpspec.claims import format_number as _fmt
from hpspec.cross import Compare, CrossClaim
from hpspec.errors import SpecError
from hpspec.optuna_search import default_batch
from hpspec.results import CellResult
from hpspec.spec import Cell, cell_id

__all__ = [
    "Dim",
    "Space",
    "Sampler",
    "Halving",
    "Found",
    "FoundCompare",
    "uniform",
    "loguniform",
    "intrange",
    "choice",
    "space",
    "random_search",
    "sobol",
    "optuna",
    "halving",
    "hyperband",
    "Bracket",
    "plan_brackets",
    "search_brackets",
    "run_brackets",
    "found",
    "trials",
    "successive_halving",
    "halving_steps",
    "mark_pruned",
    "cut",
    "rungs",
    "importance",
    "search_table",
    "search_document",
    "search_info",
    "search_experiment",
    "PRUNED",
]

#: Measurement set on a seed that halving stopped: the epoch it stopped at.
PRUNED = "pruned_at_epoch"

_SCALARS = (bool, int, float, str, type(None))


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def round_sig(x: float, digits: int = 3) -> float:
    """``x`` to ``digits`` significant digits: short ids that are the values trained."""
    return float(f"{x:.{digits}g}") if x != 0 else 0.0


# ------------------------------------------------------------------------------- dimensions


@attrs.frozen
class Dim:
    """One searched hyperparameter: ``kind`` is uniform, int or choice; ``log`` samples the
    logarithm uniformly."""

    kind: str
    low: Any = None
    high: Any = None
    values: tuple[Any, ...] = ()
    log: bool = False

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice({list(self.values)!r})"
        name = {"uniform": "loguniform" if self.log else "uniform",
                "int": "intrange"}[self.kind]
        tail = ", log=True" if self.kind == "int" and self.log else ""
        return f"{name}({self.low!r}, {self.high!r}{tail})"

    def check(self, where: str, arg: str) -> None:
        if self.kind == "choice":
            if not self.values:
                raise SpecError("is an empty choice, so there is nothing to sample",
                                where=where, argument=arg, value=list(self.values),
                                fix="give at least one value: hp.choice([1, 2])")
            seen: list[Any] = []
            for v in self.values:
                if not isinstance(v, _SCALARS) or (isinstance(v, float) and math.isnan(v)):
                    raise SpecError("holds a value that is not a number, string, bool or None",
                                    where=where, argument=arg, value=v,
                                    fix="name the option with a string and map it in the "
                                    "function")
                if any(v == s and type(v) is type(s) for s in seen):
                    raise SpecError(f"lists {v!r} twice", where=where, argument=arg,
                                    value=list(self.values), fix="remove the duplicate")
                seen.append(v)
            return
        if not (_num(self.low) and _num(self.high)):
            raise SpecError("needs finite numbers for low and high", where=where,
                            argument=arg, value=(self.low, self.high),
                            fix="e.g. hp.uniform(0.0, 0.5)")
        if self.kind == "int" and not (isinstance(self.low, int) and isinstance(self.high, int)):
            raise SpecError("needs whole numbers for low and high", where=where, argument=arg,
                            value=(self.low, self.high), fix="e.g. hp.intrange(1, 4)")
        if self.low > self.high:
            raise SpecError("has low > high", where=where, argument=arg,
                            value=(self.low, self.high),
                            fix=f"swap them: low={self.high!r}, high={self.low!r}")
        if self.kind == "uniform" and self.low == self.high:
            raise SpecError("is an empty range (low == high)", where=where, argument=arg,
                            value=(self.low, self.high),
                            fix=f"use a fixed value, {self.low!r}, or widen the range")
        if self.log and self.low <= 0:
            raise SpecError("is log-scaled, so low must be > 0", where=where, argument=arg,
                            value=(self.low, self.high),
                            fix="use a positive low bound, e.g. 1e-4, or hp.uniform")

    def at(self, u: float) -> Any:
        """The value at ``u`` in [0, 1): the sampler's unit coordinate mapped to this dim."""
        u = min(max(u, 0.0), math.nextafter(1.0, 0.0))
        if self.kind == "choice":
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        if self.kind == "int":
            if self.log:
                lo, hi = math.log(self.low - 0.5 if self.low > 0.5 else self.low), math.log(
                    self.high + 0.5)
                return int(min(max(round(math.exp(lo + u * (hi - lo))), self.low), self.high))
            return int(min(self.low + math.floor(u * (self.high - self.low + 1)), self.high))
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            x = math.exp(lo + u * (hi - lo))
        else:
            x = self.low + u * (self.high - self.low)
        return min(max(round_sig(x), self.low), self.high)


    def snap(self, x: Any) -> Any:
        """The value trained for a sampler's raw proposal ``x`` (Optuna's): floats rounded to
        three significant digits, as :meth:`at` rounds them, inside the bounds."""
        if self.kind == "choice":
            return x
        if self.kind == "int":
            return int(x)
        return min(max(round_sig(float(x)), self.low), self.high)


def uniform(low: float, high: float) -> Dim:
    """A float drawn uniformly from [low, high]."""
    return Dim("uniform", low, high)


def loguniform(low: float, high: float) -> Dim:
    """A float whose logarithm is uniform on [log low, log high] (learning rates)."""
    return Dim("uniform", low, high, log=True)


def intrange(low: int, high: int, *, log: bool = False) -> Dim:
    """A whole number from low to high, both included."""
    return Dim("int", low, high, log=log)


def choice(values: Sequence[Any]) -> Dim:
    """One of ``values`` (categorical: each equally likely)."""
    return Dim("choice", values=tuple(values) if isinstance(values, (list, tuple)) else (values,))


@attrs.frozen
class Space:
    """Named dimensions; a plain value is fixed (the same in every trial)."""

    dims: tuple[tuple[str, Any], ...]

    def varying(self) -> tuple[tuple[str, Dim], ...]:
        return tuple((k, d) for k, d in self.dims if isinstance(d, Dim))

    def fixed(self) -> dict[str, Any]:
        return {k: d for k, d in self.dims if not isinstance(d, Dim)}

    def check(self, where: str) -> None:
        for name, d in self.dims:
            if not isinstance(name, str) or not name.isidentifier():
                raise SpecError("is not a valid hyperparameter name", where=where,
                                argument="search: space", value=name,
                                fix="use a Python identifier such as 'lr'")
            arg = f"space[{name!r}]"
            if isinstance(d, Dim):
                d.check(where, arg)
            elif not isinstance(d, _SCALARS) or (isinstance(d, float) and math.isnan(d)):
                fix = (f"use hp.choice({list(d)!r}) to search these options, or one number"
                       if isinstance(d, (list, tuple)) and d else
                       "use hp.choice([...]) for a list of options, or a number")
                raise SpecError("is neither a dimension nor a fixed value", where=where,
                                argument=arg, value=d, fix=fix)
        if not self.varying():  # (after the values: a list there says to use hp.choice)
            raise SpecError("has no dimension to search", where=where, argument="search: space",
                            value=dict(self.dims),
                            fix="give at least one hp.uniform/loguniform/intrange/choice")


def space(**dims: Any) -> Space:
    """``space(lr=hp.loguniform(1e-4, 1.0), layers=hp.choice([1, 2, 3]), hidden=64)``."""
    return Space(tuple(dims.items()))


# ---------------------------------------------------------------------------------- samplers


@attrs.frozen
class Halving:
    """Successive halving: rungs at ``min_epochs * eta**k`` epochs; at each, a stacked
    population keeps its best ``1/eta`` (at least one) on ``metric``. With ``brackets`` other
    than 1 it is Hyperband (:func:`hyperband`): the trials are split into brackets, each
    halving from its own first rung (see :func:`plan_brackets`)."""

    min_epochs: int = 1
    eta: int = 3
    metric: str = "val_loss"
    lower: bool | None = None
    #: How many Hyperband brackets: 1 is plain successive halving; None is one per starting
    #: rung, the last of which never prunes (Li et al. 2018).
    brackets: int | None = 1

    def lower_is_better(self) -> bool:
        return self.lower if self.lower is not None else not self.metric.endswith("acc")

    def name(self) -> str:
        return "successive halving" if self.brackets == 1 else "Hyperband"

    def check(self, where: str, metrics: frozenset[str] | None) -> None:
        fix = ("e.g. hp.halving(min_epochs=1, eta=3)" if self.brackets == 1
               else "e.g. hp.hyperband(min_epochs=1, eta=3)")
        for name, v, least in (("min_epochs", self.min_epochs, 1), ("eta", self.eta, 2)):
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise SpecError(f"must be a whole number >= {least}", where=where,
                                argument=f"halving: {name}", value=v, fix=fix)
        b = self.brackets
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise SpecError("must be a whole number >= 1, or None for one bracket per "
                            "starting rung", where=where, argument="halving: brackets",
                            value=b, fix="e.g. hp.hyperband(min_epochs=1, eta=3) (all "
                            "brackets) or brackets=2")
        if metrics is not None and self.metric not in metrics:
            raise SpecError("is a metric this experiment never produces", where=where,
                            argument="halving: metric", value=self.metric,
                            fix=f"use one of: {', '.join(sorted(metrics))}")

    def check_schedule(self, where: str, epochs: int, trials: int) -> None:
        """At collection, once the largest epoch count and the number of trials are known
        (after :meth:`check`): a schedule that would never prune, more brackets than starting
        rungs, or fewer trials than brackets is a :class:`SpecError`."""
        if self.min_epochs >= epochs:
            # the summary would say "successive halving" while nothing is ever pruned
            raise SpecError(f"would never prune: its first rung (epoch {self.min_epochs}) "
                            f"is not before the last epoch any trial trains ({epochs})",
                            where=where, argument="search: halving: min_epochs",
                            value=self.min_epochs,
                            fix=f"use min_epochs < {epochs} (e.g. {max(1, epochs // 4)}), or "
                            f"more epochs, or drop {self.name().split()[-1]}")
        if self.brackets == 1 and trials < 2:
            # halving ranks the trials against each other (hp.optuna: each asked batch, and
            # a batch holds at most the trials): one trial is never pruned
            raise SpecError("would never prune: halving ranks the trials against each other, "
                            "and one trial has nothing to be ranked against", where=where,
                            argument="search: trials", value=trials,
                            fix="use trials >= 2 (e.g. trials=8) with halving=, or drop "
                            "halving=")
        ladder = rungs(self, epochs)
        most = len(ladder) + 1
        if self.brackets is not None and self.brackets > most:
            starts = ", ".join(str(e) for e in ladder)
            raise SpecError(f"asks for more brackets than there are starting rungs: with "
                            f"min_epochs={self.min_epochs}, eta={self.eta} and {epochs} epochs "
                            f"a bracket first ranks at epoch {starts} or never ({most} "
                            "brackets)",
                            where=where, argument="halving: brackets", value=self.brackets,
                            fix=f"use brackets <= {most}, or brackets=None for all {most}")
        wanted = most if self.brackets is None else self.brackets
        if trials < wanted:
            li = sum(math.ceil(most / (s + 1) * self.eta ** s)
                     for s in range(most - wanted, most))
            raise SpecError(f"is fewer than the {wanted} Hyperband brackets: each bracket "
                            "needs at least one trial", where=where, argument="search: trials",
                            value=trials, fix=f"use trials >= {wanted} (Li et al.'s Hyperband "
                            f"would start {li}), or fewer brackets")


def _unknown_error(call: str, unknown: Mapping[str, Any], known: Sequence[str],
                   where: str) -> SpecError:
    from hpspec.spec import unknown_keyword

    return unknown_keyword(unknown, known, where=where, call=call)


@attrs.frozen
class _MisspelledHalving(Halving):
    """``hp.halving`` / ``hp.hyperband`` given a keyword they do not take: reported as a
    :class:`SpecError` of the experiment using it, at collection (:meth:`check`), not as a
    ``TypeError`` at import that would break the whole file."""

    call: str = "hp.halving"
    unknown: Mapping[str, Any] = attrs.field(factory=dict)
    known: tuple[str, ...] = ()

    def check(self, where: str, metrics: frozenset[str] | None) -> None:
        raise _unknown_error(self.call, self.unknown, self.known, where)


def halving(min_epochs: int = 1, eta: int = 3, metric: str = "val_loss",
            lower: bool | None = None, **unknown: Any) -> Halving:
    """Successive halving on the stacked population (``lower`` defaults to True except for
    metrics named ``*acc``)."""
    if unknown:
        return _MisspelledHalving(call="hp.halving", unknown=unknown,
                                  known=("min_epochs", "eta", "metric", "lower"))
    return Halving(min_epochs, eta, metric, lower)


def hyperband(min_epochs: int = 1, eta: int = 3, metric: str = "val_loss",
              lower: bool | None = None, brackets: int | None = None,
              **unknown: Any) -> Halving:
    """Hyperband (Li et al. 2018): the search's trials are split into ``brackets`` brackets
    (None: one per starting rung), each running successive halving from a later first rung,
    so that a trial slow to start is not always ranked at ``min_epochs``. Pass it as
    ``halving=`` to a sampler; ``brackets=1`` is :func:`halving`."""
    if unknown:
        return _MisspelledHalving(call="hp.hyperband", unknown=unknown,
                                  known=("min_epochs", "eta", "metric", "lower", "brackets"))
    return Halving(min_epochs, eta, metric, lower, brackets)


@attrs.frozen
class Sampler:
    """``kind`` is random, sobol or ``optuna:<name>``: ``trials`` points of ``space`` from
    ``seed``."""

    kind: str
    space: Any
    trials: Any
    seed: Any = 0
    halving: Halving | None = None
    #: What "best" means for the report and hp.found: a metric's final value.
    metric: str | None = None
    #: hp.optuna: trials asked at once (None: every trial for random/qmc, else 4).
    batch: Any = None

    def expand_trials(self, where: str) -> list[tuple[str, dict[str, Any]]]:
        return trials(self, where)

    @property
    def asked(self) -> bool:
        """Whether the values are asked when the search runs (Optuna), not listed at
        collection: the trials' cells then hold only the fixed values."""
        return self.kind.startswith("optuna:")

    def check_claim(self, claim: Any, where: str, arg: str) -> None:
        """Refuse a claim that selects trials by a value an Optuna search decides at run
        time (see :func:`check_asked_claim`); any claim fits a random or Sobol search."""
        if self.asked:
            check_asked_claim(self, claim, where, arg)

    def largest(self, name: str) -> Any:
        """The largest value the space gives ``name`` (None when it is not a number)."""
        for k, d in self.space.dims:
            if k != name:
                continue
            if not isinstance(d, Dim):
                return d
            if d.kind == "choice":
                nums = [v for v in d.values if _num(v)]
                return max(nums) if nums and len(nums) == len(d.values) else None
            return d.high
        return None

    def order_metric(self) -> str:
        return self.metric or (self.halving.metric if self.halving else "val_loss")

    def lower_is_better(self) -> bool:
        if self.halving is not None and self.metric in (None, self.halving.metric):
            return self.halving.lower_is_better()
        return not self.order_metric().endswith("acc")


@attrs.frozen
class _MisspelledSampler(Sampler):
    """A sampler given a keyword it does not take (``n_trials=``): reported as a
    :class:`SpecError` of the experiment using it, at collection, not as a ``TypeError`` at
    import that would break the whole file."""

    call: str = "hp.random"
    unknown: Mapping[str, Any] = attrs.field(factory=dict)
    known: tuple[str, ...] = ()

    def expand_trials(self, where: str) -> list[tuple[str, dict[str, Any]]]:
        raise _unknown_error(self.call, self.unknown, self.known, where)


_SAMPLER_KEYS = ("space", "trials", "seed", "halving", "metric")


def random_search(space: Space, *, trials: int | None = None, seed: int = 0,
                  halving: Halving | None = None, metric: str | None = None,
                  **unknown: Any) -> Sampler:
    """``trials`` independent uniform draws of the space (per dimension, on its scale)."""
    if unknown:
        return _MisspelledSampler("random", space, trials, seed, halving, metric,
                                  call="hp.random", unknown=unknown, known=_SAMPLER_KEYS)
    return Sampler("random", space, trials, seed, halving, metric)


def sobol(space: Space, *, trials: int | None = None, seed: int = 0,
          halving: Halving | None = None, metric: str | None = None,
          **unknown: Any) -> Sampler:
    """``trials`` points of a scrambled Sobol sequence: spread more evenly than random draws
    (a power of two of trials keeps its balance properties)."""
    if unknown:
        return _MisspelledSampler("sobol", space, trials, seed, halving, metric,
                                  call="hp.sobol", unknown=unknown, known=_SAMPLER_KEYS)
    return Sampler("sobol", space, trials, seed, halving, metric)


def optuna(space: Space, *, trials: int | None = None, sampler: str = "tpe", seed: int = 0,
           batch: int | None = None, halving: Halving | None = None,
           metric: str | None = None, **unknown: Any) -> Sampler:
    """Optuna's ``sampler`` ("tpe", "cmaes", "random" or "qmc", seeded with ``seed``) through
    its ask-and-tell interface. The trials are listed at collection by number (``t00``..),
    their values asked when the search runs, ``batch`` at a time: a batch trains as one stacked
    population (ranked by ``halving`` when given), its results are told to Optuna, then the
    next batch is asked. ``batch`` defaults to every trial for random and qmc (their proposals
    do not depend on results) and to 4 for tpe and cmaes. See :mod:`hpspec.optuna_search`."""
    if unknown:
        return _MisspelledSampler("optuna:" + str(sampler), space, trials, seed, halving,
                                  metric, batch, call="hp.optuna", unknown=unknown,
                                  known=(*_SAMPLER_KEYS, "sampler", "batch"))
    return Sampler("optuna:" + str(sampler), space, trials, seed, halving, metric, batch)


def _unit_points(s: Sampler, d: int) -> list[list[float]]:
    n = s.trials
    if s.kind == "random":
        rng = random.Random(s.seed)
        return [[rng.random() for _ in range(d)] for _ in range(n)]
    try:
        import warnings

        from scipy.stats import qmc

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "balance properties" for non powers of two
            pts = qmc.Sobol(d, scramble=True, seed=s.seed).random(n)
        return [list(map(float, row)) for row in pts]
    except ImportError:  # scikit-learn needs scipy, so this is for setups without it
        import torch

        eng = torch.quasirandom.SobolEngine(d, scramble=True, seed=s.seed)
        return eng.draw(n).double().tolist()


def trials(s: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """The search's trials as (label, values of the varying dimensions); raises
    :class:`SpecError` for a bad sampler or space."""
    if not isinstance(s, Sampler):
        raise SpecError("must be a sampler", where=where, argument="search", value=s,
                        fix="write search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1)), "
                        "trials=16)")
    if not isinstance(s.space, Space):
        raise SpecError("must be built with hp.space(...)", where=where,
                        argument="search: space", value=s.space,
                        fix="hp.space(lr=hp.loguniform(1e-3, 1))")
    s.space.check(where)
    for name, v in (("trials", s.trials), ("seed", s.seed)):
        low = 1 if name == "trials" else 0
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise SpecError(f"must be a whole number >= {low}", where=where,
                            argument=f"search: {name}", value=v, fix=f"e.g. {name}=16")
    if s.halving is not None and not isinstance(s.halving, Halving):
        raise SpecError("must be built with hp.halving(...) or hp.hyperband(...)",
                        where=where, argument="search: halving", value=s.halving,
                        fix="halving=hp.halving(min_epochs=1, eta=3)")
    dims = s.space.varying()
    width = max(2, len(str(s.trials - 1)))
    if s.asked:
        _check_asked(s, where)
        return [(f"t{i:0{width}d}", {}) for i in range(s.trials)]
    out: list[tuple[str, dict[str, Any]]] = []
    for i, u in enumerate(_unit_points(s, len(dims))):
        out.append((f"t{i:0{width}d}", {k: d.at(x) for (k, d), x in zip(dims, u, strict=True)}))
    return out


# ------------------------------------------------------------- Optuna (asked at run time)


def _check_asked(s: Sampler, where: str) -> None:
    """hp.optuna's own arguments: a known sampler, a batch size, searched epochs or batch
    sizes that are whole numbers >= 1 (a grid's cells are checked one by one; an Optuna
    trial's values are not known yet), and Optuna installed."""
    from hpspec.optuna_search import SAMPLERS, check_installed

    name = s.kind.split(":", 1)[1]
    if name not in SAMPLERS:
        raise SpecError("is not a sampler hp.optuna knows", where=where,
                        argument="search: sampler", value=name,
                        fix="use one of: " + ", ".join(repr(k) for k in SAMPLERS))
    if s.batch is not None and (isinstance(s.batch, bool) or not isinstance(s.batch, int)
                                or s.batch < 1):
        raise SpecError("must be a whole number >= 1", where=where, argument="search: batch",
                        value=s.batch, fix="e.g. batch=4 (trials asked and trained together)")
    if s.halving is not None and s.batch is not None and s.batch < 2:
        # successive halving ranks each asked batch on its own: one trial is never pruned
        raise SpecError("would never prune: halving ranks each asked batch on its own, and a "
                        "batch of one trial has nothing to rank it against", where=where,
                        argument="search: batch", value=s.batch,
                        fix="use batch=4 (or more) with halving=, or drop halving=")
    dims = dict(s.space.varying())
    for setting in ("epochs", "batch_size"):
        d = dims.get(setting)
        if d is None:
            continue
        values = d.values if d.kind == "choice" else (d.low,) if d.kind == "int" else (None,)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise SpecError("must be searched over whole numbers >= 1", where=where,
                            argument=f"space[{setting!r}]", value=d.describe(),
                            fix=f"e.g. {setting}=hp.choice([4, 8]) or hp.intrange(2, 8)")
    if name == "cmaes" and all(d.kind == "choice" for d in dims.values()):
        raise SpecError("would sample every trial at random: CMA-ES searches numbers and "
                        "this space has only choices", where=where, argument="search: sampler",
                        value=name, fix="use sampler='tpe' (or add hp.uniform/loguniform/"
                        "intrange dimensions)")
    check_installed(name, where)


def check_asked_claim(s: Sampler, claim: Any, where: str, arg: str) -> None:
    """An Optuna search's values are decided when it runs, so a claim cannot pick trials by a
    searched value (``where(lr=...)``, a compare or trend between values): claims about the
    best trial (hp.found, compare(higher="found")) and claims about every trial fit."""
    searched = [k for k, _ in s.space.varying()]
    if isinstance(claim, CellClaim):
        names = [k for k, _ in claim.where.params]
        names += [k for c in (claim.where.cells or ()) for k, _ in c]
        bad = [k for k in names if k in searched]
        if bad:
            raise SpecError("selects trials by a value Optuna decides when the search runs",
                            where=where, argument=f"{arg}: where({bad[0]}=...)", value=bad[0],
                            fix="claim about the best trial with hp.found(...), drop the "
                            "where() to claim it of every trial, or search with hp.random / "
                            "hp.sobol (their values are listed at collection)")
    elif isinstance(claim, CrossClaim) and not hasattr(claim, "judge_fresh"):
        raise SpecError("picks trials by their values, which Optuna decides when the search "
                        "runs", where=where, argument=arg, value=claim.describe(),
                        fix="claim about the best trial: hp.found(...) or hp.compare(..., "
                        "higher='found', than={...}); or search with hp.random / hp.sobol")


def trial_name(exp: Any, cid: str, params: Mapping[str, Any] | None) -> str:
    """How reports name a trial: its id, which for an Optuna search is its number only, with
    the values it was asked once they are known (``t03-lr=0.0123-layers=2``)."""
    s = getattr(exp, "search", None)
    if s is None or not s.asked or not params:
        return cid
    values = {k: params[k] for k, _ in s.space.varying() if k in params}
    return f"{cid}-{cell_id(values)}" if values else cid


def asked_outcome(s: Sampler, result: CellResult) -> tuple[float, int | None]:
    """What an Optuna search tells of a trial: the search metric's last value, mean over seeds
    (NaN when a seed diverged), and the epoch halving stopped it at (None: it finished)."""
    return score(result, s.order_metric()), pruned_at(result)


def trial_params(exp: Any, results: Mapping[str, CellResult]) -> dict[str, dict[str, Any]]:
    """Each trial's hyperparameters: its cell's, completed by its result's (an Optuna trial's
    values are only in its result)."""
    return {c.id: {**c.as_dict(), **dict(results[c.id].params)} for c in exp.cells
            if c.id in results}


def asked_key(exp: Any, seed: int) -> dict[str, Any]:
    """What an Optuna search with halving adds to a seed's cache key: the sampler, whose
    arguments decide the batch a trial is ranked in (and so whether it is pruned). Nothing
    without halving: a trial's result is then cached under its values alone, as a grid cell's
    is. Fresh seeds (hp.found) are not pruned and get no addition."""
    s = getattr(exp, "search", None)
    if s is None or not s.asked or s.halving is None or seed not in exp.seeds:
        return {}
    return {"asked": repr(s)}


# ---------------------------------------------------------------------------------- halving


def rungs(h: Halving, epochs: int) -> list[int]:
    """Epochs at which the population is ranked: ``min_epochs * eta**k`` below ``epochs``."""
    out, e = [], h.min_epochs
    while e < epochs:
        out.append(e)
        e *= h.eta
    return out


def _rung_score(result: CellResult, metric: str, epoch: int, lower: bool) -> float:
    """The trial's ``metric`` at ``epoch``, mean over seeds, signed so smaller is better
    (inf when a seed has no finite value there: diverged or too short)."""
    vals = []
    for s in result.seeds:
        curve = s.curves.get(metric) or ()
        if s.diverged is not None or len(curve) < epoch or not math.isfinite(curve[epoch - 1]):
            return math.inf
        vals.append(float(curve[epoch - 1]))
    v = statistics.fmean(vals)
    return v if lower else -v


def cut(result: CellResult, epoch: int) -> CellResult:
    """``result`` as it stood after ``epoch`` epochs (curves cut there, no pruning mark)."""
    seeds = tuple(attrs.evolve(
        s, curves={k: list(v)[:epoch] for k, v in s.curves.items()},
        epoch_seconds=tuple(s.epoch_seconds)[:epoch],
        measurements={k: v for k, v in s.measurements.items() if k != PRUNED})
        for s in result.seeds)
    return attrs.evolve(result, seeds=seeds)


def mark_pruned(result: CellResult, epoch: int) -> CellResult:
    """``result`` cut to its first ``epoch`` epochs and marked as pruned there."""
    seeds = tuple(attrs.evolve(s, measurements={**s.measurements, PRUNED: float(epoch)})
                  for s in cut(result, epoch).seeds)
    return attrs.evolve(result, seeds=seeds)


#: ``train(targets)``: each trial of ``targets`` trained from scratch (its own seeds and data
#: order) and stopped after its own target epoch (None: its full epoch count), all in one
#: call, so trials that share an architecture stack even when their targets differ (the
#: stacked engine lets each member leave at its own epoch); each result is cut to its target.
#: A trial it could not train is left out of the answer.
TrainTo = Callable[[Mapping[str, "int | None"]], Mapping[str, CellResult]]

#: One bracket's halving, step by step: yields the targets it wants trained next, is sent
#: their results, and returns every trial's final result (see :func:`halving_steps`).
HalvingSteps = Generator[dict[str, "int | None"], Mapping[str, CellResult],
                         dict[str, CellResult]]


#: ``final(trial id, result)``: called as soon as a trial's result is final (finished,
#: diverged or pruned), so that it can be saved before the search ends: a search stopped
#: half-way (Ctrl-C, a killed worker) keeps every trial decided so far.
Final = Callable[[str, CellResult], None]


def halving_steps(h: Halving, epochs: Mapping[str, int], log: list[str] | None = None,
                  at: Sequence[int] | None = None, prefix: str = "",
                  final: Final | None = None) -> HalvingSteps:
    """Successive halving over ``epochs``' trials as a generator: each ``yield`` is one
    training (a rung: the trials still in, to the rung epoch; last, the survivors, to their
    end), answered with its results; the ranking between trainings is
    :func:`successive_halving`'s. :func:`run_brackets` drives several brackets' generators
    together, so one call trains a round of every bracket. ``final`` is told each trial's
    result as soon as it is final."""
    lower = h.lower_is_better()
    alive = list(epochs)
    out: dict[str, CellResult] = {}

    def decided(cid: str, result: CellResult) -> None:
        out[cid] = result
        if final is not None:
            final(cid, result)
    for e in (rungs(h, max(epochs.values(), default=0)) if at is None else at):
        if len(alive) <= 1:
            break
        got = yield dict.fromkeys(alive, e)
        going = []
        for cid in alive:
            r = got.get(cid)
            if r is None:  # failed to train: its own run reports the error
                continue
            if epochs[cid] <= e or any(s.diverged is not None for s in r.seeds):
                decided(cid, r)  # finished (or diverged) within this rung: final
            else:
                going.append(cid)
        keep = max(1, len(going) // h.eta)
        order = sorted(going, key=lambda c: (_rung_score(got[c], h.metric, e, lower), c))
        for cid in order[keep:]:
            decided(cid, mark_pruned(got[cid], e))
        if log is not None and going:
            log.append(f"{prefix}halving at epoch {e}: {len(going)} trial(s) ranked on "
                       f"{h.metric} across all groups, {min(keep, len(going))} kept, "
                       f"{max(0, len(going) - keep)} pruned")
        alive = order[:keep]
    if alive:
        got = yield dict.fromkeys(alive)
        for cid in alive:
            if cid in got:
                decided(cid, got[cid])
    return out


def successive_halving(h: Halving, epochs: Mapping[str, int], train: TrainTo,
                       log: list[str] | None = None, at: Sequence[int] | None = None,
                       prefix: str = "") -> dict[str, CellResult]:
    """Successive halving over ALL of a search's trials, whichever stacked groups they train
    in, without checkpoints: at each rung ``e`` the trials still in are trained from scratch to
    epoch ``e`` (``train`` stacks them where it can), those that run past ``e`` are ranked
    together on ``h.metric`` at epoch ``e``, the best ``1/eta`` (at least one) go on and the
    rest are pruned at ``e`` with their curve so far. Training is deterministic given the seed,
    so a survivor's final curve is by construction the curve it has unpruned; the cost is the
    sum over rungs of (trials in) x (rung epochs), not a full run per trial.

    ``epochs`` maps each trial id to its own epoch count (a trial that ends at or before a
    rung is finished there, not ranked). ``at``: the rung epochs (default: :func:`rungs` to
    the largest count; a Hyperband bracket passes its own); ``prefix`` starts each log line.
    Returns every trained trial's result: pruned ones marked with :data:`PRUNED`."""
    return _drive([halving_steps(h, epochs, log, at, prefix)], train)[0]


def _drive(brackets: Sequence[HalvingSteps], train: TrainTo) -> list[dict[str, CellResult]]:
    """Run the brackets' halving steps in rounds: each round, what every bracket still
    wants trained goes to ``train`` in ONE call (their trials are disjoint), and each bracket
    is sent its own trials' results. Returns each bracket's final results, in order."""
    done: list[dict[str, CellResult]] = [{} for _ in brackets]
    asks: dict[int, dict[str, int | None]] = {}

    def advance(i: int, answer: Mapping[str, CellResult] | None) -> None:
        try:
            asks[i] = next(brackets[i]) if answer is None else brackets[i].send(answer)
        except StopIteration as stop:
            asks.pop(i, None)
            done[i] = stop.value

    for i in range(len(brackets)):
        advance(i, None)
    while asks:
        targets = {cid: e for i in sorted(asks) for cid, e in asks[i].items()}
        got = train(targets)
        for i, want in sorted(asks.items()):
            advance(i, {cid: got[cid] for cid in want if cid in got})
    return done


@attrs.frozen
class Bracket:
    """One bracket of a halving search: ``trials`` (ids, in trial order) halved at
    ``rungs`` (none: they all train to the end)."""

    index: int
    rungs: tuple[int, ...]
    trials: tuple[str, ...]

    def describe(self, labels: Mapping[str, str] | None = None) -> str:
        names = [(labels or {}).get(t, t) for t in self.trials]
        span = names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"
        when = (f"ranked at epoch{'s' if len(self.rungs) > 1 else ''} "
                f"{', '.join(map(str, self.rungs))}" if self.rungs else "never pruned")
        return f"bracket {self.index}: {len(names)} trial(s) {span}, {when}"


def plan_brackets(h: Halving, epochs: Mapping[str, int]) -> list[Bracket]:
    """The trials split into Hyperband brackets, deterministically (the same plan at
    collection, in the report and when training). With ``k`` rungs below the largest epoch
    count there are up to ``k + 1`` brackets: bracket ``b`` ranks at the rungs from the
    ``b``-th on, so bracket 0 is plain successive halving and bracket ``k`` never prunes;
    ``h.brackets`` keeps the first ones (None: all; 1: only bracket 0, :func:`halving`).
    As in Li et al. (2018) a bracket ranked at ``s`` rungs gets trials in proportion to
    ``eta**s / (s + 1)``, so each bracket costs about the same (at least one trial each,
    rounded by largest remainder); the trials are dealt in their order in contiguous blocks,
    bracket 0 first (a block of a Sobol sequence is itself spread evenly)."""
    ids = list(epochs)
    ladder = rungs(h, max(epochs.values(), default=0))
    most = len(ladder) + 1
    n = most if h.brackets is None else min(h.brackets, most)
    n = max(1, min(n, len(ids)))  # (collection refuses both; a profile may cut epochs later)
    weights = [h.eta ** (len(ladder) - b) / (len(ladder) - b + 1) for b in range(n)]
    quota = [len(ids) * w / sum(weights) for w in weights]
    counts = [max(1, math.floor(q)) for q in quota]
    while sum(counts) > len(ids):  # the one-each minimum overdrew: take from the biggest
        j = max((b for b in range(n) if counts[b] > 1), key=lambda b: (counts[b] - quota[b], -b))
        counts[j] -= 1
    while sum(counts) < len(ids):  # largest remainder first, earlier bracket on a tie
        j = max(range(n), key=lambda b: (quota[b] - counts[b], -b))
        counts[j] += 1
    out, start = [], 0
    for b, c in enumerate(counts):
        out.append(Bracket(b, tuple(ladder[b:]), tuple(ids[start:start + c])))
        start += c
    return out


def search_brackets(exp: Any) -> list[Bracket]:
    """:func:`plan_brackets` for a halving search's trials (with their own epoch counts)."""
    return plan_brackets(exp.search.halving, {c.id: exp.epochs_for(c) for c in exp.cells})


def run_brackets(h: Halving, epochs: Mapping[str, int], train: TrainTo,
                 log: list[str] | None = None,
                 final: Final | None = None) -> dict[str, CellResult]:
    """Hyperband: :func:`successive_halving` in each bracket of :func:`plan_brackets`, the
    brackets advancing together: at each round the trainings of every bracket with one left
    (a rung, or its survivors to the end) go to ``train`` in one call, so trials that share
    an architecture stack across brackets, each stopping at its own bracket's epoch. The
    ranking stays per bracket, exactly as when the brackets ran one after the other; the log
    lists the brackets in order. With one bracket this is :func:`successive_halving` over all
    the trials. Returns every trial's result, pruned ones marked; ``final`` is told each as
    soon as it is decided (see :data:`Final`)."""
    plan = plan_brackets(h, epochs)
    logs: list[list[str]] = [[] for _ in plan]
    steps = [halving_steps(h, {c: epochs[c] for c in b.trials}, logs[b.index],
                           b.rungs if len(plan) > 1 else None,
                           f"bracket {b.index}: " if len(plan) > 1 else "", final)
             for b in plan]
    out: dict[str, CellResult] = {}
    for got in _drive(steps, train):
        out.update(got)
    if log is not None:
        log.extend(line for lines in logs for line in lines)
    return out


def pruned_at(result: CellResult) -> int | None:
    """The epoch halving stopped this cell at (None: it was not pruned)."""
    marks = [s.measurements.get(PRUNED) for s in result.seeds]
    epochs = [int(m) for m in marks if m is not None]
    return min(epochs) if epochs else None


# ------------------------------------------------------------------------------ best / claims


def score(result: CellResult, metric: str) -> float:
    """The metric's final value, mean over seeds (NaN when a seed has none or diverged)."""
    vals = []
    for s in result.seeds:
        curve = s.curves.get(metric) or ()
        if not curve or s.diverged is not None:
            return math.nan
        vals.append(float(curve[-1]))
    return statistics.fmean(vals) if vals else math.nan


def ranked(sampler: Sampler, results: Mapping[str, CellResult]) -> list[str]:
    """Trial ids best first: finished trials by the search metric, then pruned ones (by how
    far they got, then metric), then those with no finite value."""
    metric, lower = sampler.order_metric(), sampler.lower_is_better()

    def key(cid: str) -> tuple[Any, ...]:
        r = results[cid]
        v = score(r, metric)
        p = pruned_at(r)
        bad = not math.isfinite(v)
        return (bad, p is not None, -(p or 0), (v if lower else -v) if not bad else 0.0, cid)

    return sorted(results, key=key)


def _fresh_seeds(exp: Any, n: int) -> tuple[int, ...]:
    start = max(exp.seeds) + 1 if exp.seeds else 0
    # well away from the search's seeds, so a later seeds= increase cannot reuse them
    start = max(start, 1000)
    return tuple(range(start, start + n))


class _SearchClaim:
    """Shared by the claims judged on fresh seeds of the best trial(s)."""

    seeds: int
    top: int

    def selects(self, params: Mapping[str, Any]) -> bool:
        return True

    def fresh_seeds(self, exp: Any) -> tuple[int, ...]:
        return _fresh_seeds(exp, self.seeds)

    def best(self, exp: Any, results: Mapping[str, CellResult]) -> list[str]:
        trials_only = {k: v for k, v in results.items() if k in {c.id for c in exp.cells}}
        return ranked(exp.search, trials_only)[: self.top]


@attrs.frozen(eq=True)
class Found(_SearchClaim, CrossClaim):
    """The best configuration found meets ``condition``, judged on ``seeds`` fresh seeds
    (not the search's: the best of many noisy trials is biased upward)."""

    condition: Condition
    seeds: int = 3
    top: int = 1
    confidence: float | None = None
    name: str | None = None
    points: float | None = None

    def slug(self) -> str:
        return self.name or f"found-{self.condition.describe()}".replace(" ", "")

    def describe(self) -> str:
        return f"the best configuration found: {self.condition.describe()}"

    def validate(self, ctx: SpecContext, arg: str) -> None:
        _check_counts(self, ctx, arg)
        validate_claim(CellClaim(Where(), self.condition, None, self.confidence), ctx, arg)

    def judge_fresh(self, exp: Any, results: Mapping[str, CellResult],
                    fresh: Mapping[str, CellResult], alpha: float) -> Verdict:
        best = self.best(exp, results)
        if not best:
            return Verdict(self.describe(), INCONCLUSIVE, "no trial finished", points=self.points)
        first = fresh[best[0]]
        inner = judge_cell_claim(CellClaim(Where(), self.condition, None, self.confidence),
                                 first.seeds)
        seeds = [s.seed for s in first.seeds]
        lines = [f"claim: {self.describe()}",
                 f"  judged on fresh seeds {seeds} only: the search's own seeds are not used, "
                 "since the best of many noisy trials is biased upward",
                 *_best_lines(exp, best, results, fresh),
                 *("  " + line for line in inner.message.splitlines()[1:])]
        return attrs.evolve(inner, claim=self.describe(), message="\n".join(lines),
                            points=self.points)


def _check_counts(claim: Any, ctx: SpecContext, arg: str) -> None:
    for name, v, least in (("seeds", claim.seeds, 1), ("top", claim.top, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise SpecError(f"must be a whole number >= {least}", where=ctx.where,
                            argument=f"{arg}: {name}", value=v, fix=f"e.g. {name}=3")


def _best_lines(exp: Any, best: Sequence[str], results: Mapping[str, CellResult],
                fresh: Mapping[str, CellResult]) -> list[str]:
    metric = exp.search.order_metric()
    out = []
    for rank, cid in enumerate(best, 1):
        vals = [s.curves.get(metric, [math.nan])[-1] for s in fresh[cid].seeds]
        name = trial_name(exp, cid, fresh[cid].params)
        out.append(f"  #{rank} {name}: {metric} {_fmt(score(results[cid], metric))} in the "
                   f"search, fresh seeds {', '.join(_fmt(v) for v in vals)}")
    return out


@attrs.frozen(eq=True)
class FoundCompare(_SearchClaim, CrossClaim):
    """The best configuration found beats ``baseline`` on ``quantity``; both are trained on the
    same fresh seeds and compared by Welch's t-test."""

    quantity: Quantity
    baseline: tuple[tuple[str, Any], ...]
    lower: bool
    margin: float = 0.0
    seeds: int = 3
    confidence: float | None = None
    name: str | None = None
    points: float | None = None
    top: int = 1

    def slug(self) -> str:
        word = "lower" if self.lower else "higher"
        return self.name or (f"found-{word}-{self.quantity.describe()}-than-"
                             f"{cell_id(dict(self.baseline))}").replace(" ", "")

    def describe(self) -> str:
        word = "lower" if self.lower else "higher"
        by = f" by at least {self.margin:.0%}" if self.margin else ""
        return (f"{self.quantity.describe()} is {word}{by} for the best configuration found "
                f"than for the baseline {cell_id(dict(self.baseline))}")

    def validate(self, ctx: SpecContext, arg: str) -> None:
        _check_counts(self, ctx, arg)
        self._validate_common(ctx, arg, [])
        if self.seeds < 2:
            raise SpecError("must be >= 2 for a comparison", where=ctx.where,
                            argument=f"{arg}: seeds", value=self.seeds, fix="e.g. seeds=3")
        base = dict(self.baseline)
        known = set(ctx.hyperparameters)
        for k, v in base.items():
            if k not in known:
                raise SpecError("names an unknown hyperparameter", where=ctx.where,
                                argument=f"{arg}: than[{k!r}]", value=k,
                                fix=f"use one of: {', '.join(sorted(known))}")
            if not isinstance(v, _SCALARS):
                raise SpecError("must be a number, string, bool or None", where=ctx.where,
                                argument=f"{arg}: than[{k!r}]", value=v)
        missing = [k for k in ctx.searched if k not in base]
        if missing:
            raise SpecError("leaves hyperparameters of the space unset", where=ctx.where,
                            argument=f"{arg}: than", value=base,
                            fix=f"give the baseline's {', '.join(missing)} too")

    def baseline_cell(self, exp: Any) -> Any:
        params = {**{k: v for k, v in exp.fixed}, **dict(self.baseline)}
        return Cell(params=tuple(params.items()), varying=tuple(dict(self.baseline)),
                    label="baseline")

    def judge_fresh(self, exp: Any, results: Mapping[str, CellResult],
                    fresh: Mapping[str, CellResult], alpha: float) -> Verdict:
        best = self.best(exp, results)
        base = self.baseline_cell(exp)
        if not best:
            return Verdict(self.describe(), INCONCLUSIVE, "no trial finished", points=self.points)
        a, b = fresh[best[0]], fresh[base.id]
        sel_a = Where((("__side", "found"),))
        sel_b = Where((("__side", "baseline"),))
        cmp = Compare(self.quantity, sel_a, sel_b, self.lower, self.margin, self.confidence)
        inner = cmp.judge({"a": attrs.evolve(a, params={"__side": "found"}),
                           "b": attrs.evolve(b, params={"__side": "baseline"})}, alpha)
        body = inner.message.splitlines()[1:]
        name = trial_name(exp, best[0], a.params)
        body = [line.replace("__side=found", f"best found ({name})").replace(
            "__side=baseline", f"baseline ({base.id})") for line in body]
        seeds = [s.seed for s in a.seeds]
        lines = [f"claim: {self.describe()} (Welch's t-test, {1 - alpha:.0%} confidence)",
                 f"  both trained on fresh seeds {seeds}; the search's own seeds are not used, "
                 "since the best of many noisy trials is biased upward", *body]
        return attrs.evolve(inner, claim=self.describe(), message="\n".join(lines),
                            points=self.points)


def found(condition: Condition, *, seeds: int = 3, top: int = 1,
          confidence: float | None = None, name: str | None = None,
          points: float | None = None) -> Found:
    """``found(metric("val_acc").final() >= 0.97)``: the best trial, retrained on ``seeds``
    fresh seeds, meets the condition on those seeds (``top=k`` retrains and reports the k
    best; the claim is about the first)."""
    return Found(condition, seeds, top, confidence, name, points)


def compare(quantity: Quantity, **kw: Any) -> Any:
    """``hp.compare``: :func:`hpspec.cross.compare`, or with ``higher="found"`` /
    ``lower="found"`` the best configuration of a search against the baseline ``than``."""
    from hpspec import cross

    side = kw.get("higher", kw.get("lower"))
    if isinstance(side, str) and side == "found":
        lower = kw.pop("lower", None) is not None
        kw.pop("higher", None)
        seeds = kw.pop("seeds", None)
        return compare_found(quantity, lower=lower, seeds=3 if seeds is None else seeds, **kw)
    return cross.compare(quantity, **kw)


def compare_found(quantity: Quantity, *, lower: bool, than: Mapping[str, Any],
                  margin: float = 0.0, seeds: int = 3, confidence: float | None = None,
                  name: str | None = None, points: float | None = None) -> FoundCompare:
    return FoundCompare(quantity, tuple(dict(than).items()), lower, margin, seeds, confidence,
                        name, points)


# ------------------------------------------------------------------------------ importance


def importance(sampler: Sampler, results: Mapping[str, CellResult],
               params: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, float]]:
    """How much each searched hyperparameter mattered: the share of the variance of the
    metric across trials that lies between the groups of that hyperparameter's values
    (the correlation ratio, eta squared). Numbers with more than four distinct values are cut
    into three bins of equal count (log scale where the dimension is). The metric is each
    trial's value at the last epoch every trial reached (so pruned trials count too).
    A rough guide: dimensions are scored one at a time, interactions are not separated."""
    ys = _importance_values(sampler, results)
    if len(ys) < 3:
        return []
    total = statistics.pvariance(list(ys.values()))
    out = []
    for name, dim in sampler.space.varying():
        values = {c: params[c][name] for c in ys}
        distinct = sorted(set(values.values()), key=repr)
        if dim.kind != "choice" and len(distinct) > 4:
            order = sorted(ys, key=lambda c: values[c])
            groups = [order[i * len(order) // 3:(i + 1) * len(order) // 3] for i in range(3)]
        else:
            groups = [[c for c in ys if values[c] == v] for v in distinct]
        groups = [g for g in groups if g]
        between = sum(len(g) * (statistics.fmean(ys[c] for c in g)
                                - statistics.fmean(ys.values())) ** 2 for g in groups) / len(ys)
        out.append((name, between / total if total > 0 else 0.0))
    return sorted(out, key=lambda t: -t[1])


def _importance_values(sampler: Sampler, results: Mapping[str, CellResult]) -> dict[str, float]:
    """Each trial's metric at the last epoch every trial reached (mean over seeds), for the
    trials where it is finite."""
    metric = sampler.order_metric()
    ids = [c for c in results if all(s.curves.get(metric) for s in results[c].seeds)]
    if len(ids) < 3:
        return {}
    depth = min(min(len(s.curves[metric]) for s in results[c].seeds) for c in ids)
    ys: dict[str, float] = {}
    for c in ids:
        vals = [float(s.curves[metric][depth - 1]) for s in results[c].seeds]
        if all(math.isfinite(v) for v in vals):
            ys[c] = statistics.fmean(vals)
    return ys


def asked_importance(sampler: Sampler, results: Mapping[str, CellResult],
                     params: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, float]]:
    """An Optuna search's importance: Optuna's fANOVA evaluator on the same per-trial values
    :func:`importance` uses (so pruned trials count too), the values each trial trained."""
    from hpspec.optuna_search import fanova_importance

    ys = _importance_values(sampler, results)
    return fanova_importance(sampler.space, ys, {c: params[c] for c in ys})


# ----------------------------------------------------------------------------------- report


def search_table(exp: Any, results: Mapping[str, CellResult], top: int = 10) -> str:
    """Trials sorted by the search metric: the ``top`` best, then counts of the rest. With
    Hyperband, which trials each bracket holds and where it ranks, and each row's bracket."""
    s: Sampler = exp.search
    metric = s.order_metric()
    trial_ids = [c.id for c in exp.cells if c.id in results]
    got = {c: results[c] for c in trial_ids}
    params = trial_params(exp, got)
    order = ranked(s, got)
    names = {c: trial_name(exp, c, params[c]) for c in order[:top]}
    width = max([len(n) for n in names.values()] + [5])
    h = s.halving
    plan = search_brackets(exp) if h is not None and not s.asked else []
    bracket_of = {t: b.index for b in plan for t in b.trials} if len(plan) > 1 else {}
    # an Optuna trial's epochs may be searched: known from its result only
    epochs = ([p.get("epochs", exp.epochs) for p in params.values()] if s.asked
              else [exp.epochs_for(c) for c in exp.cells])
    batch = (f", asked {s.batch or default_batch(s.kind.split(':', 1)[1], s.trials)} at a "
             "time" if s.asked else "")
    schedule = ""
    if h is not None and bracket_of:
        schedule = f"; Hyperband eta={h.eta}, {len(plan)} brackets"
    elif h is not None and any(isinstance(e, int) for e in epochs):
        schedule = (f"; successive halving eta={h.eta} at epochs "
                    f"{rungs(h, max(e for e in epochs if isinstance(e, int)))}"
                    + (" (within each batch)" if s.asked else ""))
    # a pruned trial's value is from an earlier epoch: it ranks after every finished one (a
    # finished 0.10 above a pruned 0.63), which "sorted by" alone would not say
    after = (", pruned trials after finished ones by the epoch they reached"
             if any(pruned_at(r) is not None for r in got.values()) else "")
    lines = [f"search: {s.kind}, {len(exp.cells)} trials (seed {s.seed}{batch}), sorted by "
             f"{metric} ({'lower' if s.lower_is_better() else 'higher'} is better){after}"
             f"{schedule}"]
    labels = {c.id: c.label or c.id for c in exp.cells}
    lines += [f"  {b.describe(labels)}" for b in plan if bracket_of]
    lines.append(f"  {'#':>3}  {'trial':<{width}}  {metric:>10}  epochs  "
                 + ("bracket  " if bracket_of else "") + "status")
    for i, cid in enumerate(order[:top], 1):
        r = got[cid]
        p = pruned_at(r)
        diverged = any(x.diverged for x in r.seeds)
        status = ("diverged" if diverged else f"pruned at epoch {p}" if p else "finished")
        run = max(x.epochs_run for x in r.seeds)
        where = f"{bracket_of[cid]:>7}  " if cid in bracket_of else ""
        lines.append(f"  {i:>3}  {names[cid]:<{width}}  {_fmt(score(r, metric)):>10}  "
                     f"{run:>6}  {where}{status}")
    pruned = sum(1 for c in order if pruned_at(got[c]) is not None)
    rest = len(order) - min(top, len(order))
    tail = [part for n, part in ((rest, f"{rest} more trial(s) not shown"),
                                 (pruned, f"{pruned} pruned in all")) if n]
    if tail:
        lines.append(f"  ... {'; '.join(tail)}")
    missing = len(exp.cells) - len(order)
    if missing:
        lines.append(f"  {missing} trial(s) not trained in this run (deselected or failed)")
    if s.asked:
        imp, how = asked_importance(s, got, params), ("fANOVA, Optuna's evaluator: share of "
                                                      "the metric's variance, summing to 1")
    else:
        imp, how = importance(s, got, params), ("share of the metric's variance between a "
                                                "hyperparameter's values")
    if imp:
        lines.append(f"  importance ({how}): " + ", ".join(f"{k} {v:.2f}" for k, v in imp))
    return "\n".join(lines)


def search_document(exp: Any, results: Mapping[str, CellResult], top: int = 5) -> dict[str, Any]:
    """What the JSON document (and so the HTML report) adds for a search: the metric and its
    direction, the log-scaled dimensions, the ``top`` best trials, where trials were pruned
    and, for Hyperband, each bracket's rungs and trials."""
    s: Sampler = exp.search
    got = {c.id: results[c.id] for c in exp.cells if c.id in results}
    return {"kind": s.kind, "metric": s.order_metric(), "lower": s.lower_is_better(),
            "log": [k for k, d in s.space.varying() if d.log],
            "best": ranked(s, got)[:top] if got else [],
            "pruned": {c: pruned_at(r) for c, r in got.items() if pruned_at(r) is not None},
            **({"brackets": [{"rungs": list(b.rungs), "trials": list(b.trials)}
                             for b in search_brackets(exp)]}
               if s.halving is not None and s.halving.brackets != 1 else {})}


def search_info(exp: Any) -> dict[str, Any]:
    """What :func:`search_table` and :func:`search_document` read of a search experiment, as
    plain data: the sampler, the epochs and the trials' cells. An xdist worker sends it to the
    controller, which collects nothing, so that its summary shows the search table a serial run
    shows (:func:`search_experiment` rebuilds the experiment)."""
    s: Sampler = exp.search

    def dim(d: Any) -> dict[str, Any]:
        if isinstance(d, Dim):
            return {"kind": d.kind, "low": d.low, "high": d.high, "values": list(d.values),
                    "log": d.log}
        return {"fixed": d}

    return {"kind": s.kind, "space": [[k, dim(d)] for k, d in s.space.dims],
            "trials": s.trials, "seed": s.seed,
            "halving": attrs.asdict(s.halving) if s.halving is not None else None,
            "metric": s.metric, "batch": s.batch, "epochs": exp.epochs,
            "varying": list(exp.cells[0].varying) if exp.cells else [],
            "cells": [[c.label, [[k, v] for k, v in c.params]] for c in exp.cells]}


def search_experiment(name: str, info: Mapping[str, Any]) -> Any:
    """The experiment :func:`search_info` describes, enough for the search's table and
    document (no function, data or claims: it is never trained)."""
    from hpspec.spec import Experiment

    def dim(d: Mapping[str, Any]) -> Any:
        if "fixed" in d:
            return d["fixed"]
        return Dim(d["kind"], d["low"], d["high"], tuple(d["values"]), d["log"])

    h = info["halving"]
    sampler = Sampler(info["kind"], Space(tuple((k, dim(d)) for k, d in info["space"])),
                      info["trials"], info["seed"], Halving(**h) if h is not None else None,
                      info["metric"], info["batch"])
    varying = tuple(info["varying"])
    cells = tuple(Cell(tuple((k, v) for k, v in params), varying, label)
                  for label, params in info["cells"])
    return Experiment(name=name, where=name, fn=_never_called, mode="recipe", cells=cells,
                      axes=varying, fixed=(), epochs=info["epochs"], batch_size=None,
                      seeds=(0,), data=None, claims=(), metrics=None, search=sampler)


def _never_called(case: Any) -> Any:  # search_experiment's: its experiment never trains
    raise AssertionError("a search rebuilt for its summary is never trained")


# ------------------------------------------------------------------------- for the runners


def search_key(exp: Any, seed: int) -> dict[str, Any]:
    """What a halving search adds to a seed's cache key: the rule and the trials (pruning
    depends on every trial trained beside it). Nothing otherwise, so a grid's keys stay as
    they were. Fresh seeds (hp.found) are not pruned and get no addition."""
    s = getattr(exp, "search", None)
    if s is None or s.halving is None or seed not in exp.seeds:
        return {}
    return {"halving": repr(s.halving), "trials": [c.id for c in exp.cells]}
