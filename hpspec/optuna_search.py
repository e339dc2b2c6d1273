"""``hp.optuna``: Optuna's samplers driven through its ask-and-tell interface, in batches.

Pure: imports neither torch nor pytest; Optuna itself is imported lazily (the ``optuna`` extra).

A model-based sampler (TPE, CMA-ES) proposes a trial from the results of earlier ones, so its
trials cannot be listed with their values at collection. They are listed by number only
(``t00`` .. ``t15``: stable ids for ``-k``, ``--lf`` and the records), and their values are
decided when the search runs: :func:`run_asked` asks ``batch`` trials, hands them to a
trainer (the session trains a batch as one stacked population, or ranks it by successive
halving, through the same path a random or Sobol search uses), tells Optuna each result, and
asks the next batch. The sampler is seeded and Optuna's in-memory study is rebuilt on every
run, so the same search asks the same values whenever it is told the same results; each
trial's result is cached under its values, so a second run replays the search from the cache
(ask, find the stored result for those values, tell it) and trains nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import statistics
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from hpspec.errors import SpecError

__all__ = ["SAMPLERS", "MODEL_BASED_BATCH", "Told", "check_installed", "default_batch",
           "distributions", "run_asked", "tell", "fanova_importance"]

#: The sampler names ``hp.optuna(sampler=...)`` takes, with Optuna's class for each.
SAMPLERS = {"tpe": "TPESampler", "cmaes": "CmaEsSampler", "random": "RandomSampler",
            "qmc": "QMCSampler"}

#: Trials asked at once by a model-based sampler (TPE, CMA-ES) unless ``batch=`` says.
MODEL_BASED_BATCH = 4

INSTALL_FIX = "pip install optuna (from a checkout of hpspec: pip install -e '.[optuna]')"


def check_installed(sampler: str, where: str) -> None:
    """A SpecError naming the fix when Optuna (or, for CMA-ES, the ``cmaes`` package Optuna's
    CMA-ES sampler needs) cannot be imported."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SpecError("needs the optuna package, which is not installed", where=where,
                        argument="search", value=f"hp.optuna(sampler={sampler!r})",
                        fix=INSTALL_FIX) from None
    if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise SpecError("needs the cmaes package (Optuna's CMA-ES sampler runs on it), "
                        "which is not installed", where=where, argument="search: sampler",
                        value=sampler, fix="pip install cmaes (from a checkout: pip install -e "
                        "'.[optuna]'), or use sampler='tpe'")


def default_batch(sampler: str, trials: int) -> int:
    """Random and QMC proposals do not depend on results: every trial in one batch (one
    stacked population). TPE and CMA-ES learn from each batch: :data:`MODEL_BASED_BATCH`."""
    if sampler in ("random", "qmc"):
        return trials
    return min(trials, MODEL_BASED_BATCH)


def distributions(space: Any) -> dict[str, Any]:
    """The searched dimensions of an :class:`hpspec.search.Space` as Optuna distributions."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for name, d in space.varying():
        if d.kind == "choice":
            out[name] = CategoricalDistribution(list(d.values))
        elif d.kind == "int":
            out[name] = IntDistribution(d.low, d.high, log=d.log)
        else:
            out[name] = FloatDistribution(float(d.low), float(d.high), log=d.log)
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's per-trial log lines and its experimental-feature warnings, silenced while
    Optuna asks and is told (never around training; the verbosity is put back)."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(before)


def _sampler(name: str, seed: int, batch: int) -> Any:
    import optuna

    if name == "tpe":
        # Start modelling after the first batch (Optuna's default start-up of 10 random trials
        # would leave a 16-trial search random); the constant liar keeps the trials asked
        # together in one batch apart from each other.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, batch),
                                          constant_liar=True)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return optuna.samplers.RandomSampler(seed=seed)


#: What Optuna is told of a trial: its value (NaN: it failed) and the epoch successive halving
#: stopped it at (None: it finished).
Told = tuple[float, "int | None"]

#: ``train([(trial id, values), ...])``: what to tell of each trial, by id (its result served
#: from the cache or trained); a trial it could not train is left out (told failed).
TrainBatch = Callable[[list[tuple[str, dict[str, Any]]]], Mapping[str, Told]]


def run_asked(sampler: Any, labels: Sequence[str], train: TrainBatch,
              log: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the search: ask ``sampler.batch`` trials (all of them when None and the sampler
    does not learn), ``train`` them, tell Optuna each result, repeat until ``labels`` (the
    trial ids, in order) are all asked. Each value is the one hpspec trains
    (``Dim.snap``: floats rounded to three significant digits; Optuna keeps its raw
    proposal, less than 0.05% away). Returns each trial's values."""
    import optuna

    name = sampler.kind.split(":", 1)[1]
    batch = sampler.batch or default_batch(name, len(labels))
    dims = dict(sampler.space.varying())
    asked: dict[str, dict[str, Any]] = {}
    dists = distributions(sampler.space)
    with _quiet():
        study = optuna.create_study(
            direction="minimize" if sampler.lower_is_better() else "maximize",
            sampler=_sampler(name, sampler.seed, batch))
    for start in range(0, len(labels), batch):
        ids = list(labels[start:start + batch])
        with _quiet():
            trials = [study.ask(dists) for _ in ids]
        values = [{k: dims[k].snap(t.params[k]) for k in dists} for t in trials]
        asked.update(zip(ids, values, strict=True))
        got = train(list(zip(ids, values, strict=True)))  # the user's code: not silenced
        with _quiet():
            states = [tell(study, t, got.get(cid)) for cid, t in zip(ids, trials, strict=True)]
        if log is not None:
            counts = {s: states.count(s) for s in dict.fromkeys(states)}
            log.append(f"optuna {name}: batch {start // batch + 1} of "
                       f"{math.ceil(len(labels) / batch)} ({ids[0]}..{ids[-1]}) asked and "
                       f"told: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return asked


def tell(study: Any, trial: Any, told: Told | None) -> str:
    """Tell Optuna how ``trial`` went; returns the state told (complete, pruned or failed).
    A trial that halving stopped reports its value at that epoch and is told pruned (TPE
    ranks pruned trials by it); one with no finite value (diverged, or it could not train) is
    told failed, as Optuna's own ``optimize`` does for a NaN objective."""
    from optuna.trial import TrialState

    value, stopped = told if told is not None else (math.nan, None)
    if not math.isfinite(value):
        study.tell(trial, state=TrialState.FAIL)
        return "failed"
    if stopped is not None:
        trial.report(value, stopped)
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned"
    study.tell(trial, value)
    return "complete"


def fanova_importance(space: Any, ys: Mapping[str, float],
                      params: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, float]]:
    """Optuna's fANOVA importance (``FanovaImportanceEvaluator``, seed 0) of the searched
    hyperparameters for the values ``ys`` (trial id -> metric): each trial is added to a fresh
    study with the values it trained. Shares of the metric's variance, summing to 1; [] when
    fewer than three trials have a value."""
    import optuna

    if len(ys) < 3:
        return []
    dists = distributions(space)
    with _quiet():
        study = optuna.create_study()
        study.add_trials([optuna.trial.create_trial(
            params={k: params[c][k] for k in dists}, distributions=dists, value=float(v))
            for c, v in ys.items()])
        if statistics.pvariance(list(ys.values())) == 0:
            return [(k, 0.0) for k in dists]
        got = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            normalize=True)
    return sorted(((k, float(v)) for k, v in got.items()), key=lambda t: -t[1])
