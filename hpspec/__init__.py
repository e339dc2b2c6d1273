"""hpspec: executable hyperparameter claims, collected and judged by pytest.

``import hpspec`` does not import torch: ``hp.models`` (:mod:`hpspec.engine.models`) and
training load it on first use, so pytest start-up stays fast in projects that have no
experiments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpspec import datasets
from hpspec.api import Run, load, run
from hpspec.claims import (
    converges,
    diverges,
    epoch_time,
    expect,
    measure,
    metric,
    peak_memory,
    throughput,
    where,
)
from hpspec.cross import best, equivalent, noninferior, trend
from hpspec.errors import CellError, HpspecError, SpecError
from hpspec.search import (
    choice,
    compare,
    found,
    halving,
    hyperband,
    intrange,
    loguniform,
    optuna,
    sobol,
    space,
    uniform,
)
from hpspec.search import random_search as random
from hpspec.spec import Case, Recipe, cells, experiment, grid, register_profile
from hpspec.stats import adaptive

if TYPE_CHECKING:
    from hpspec.engine import models

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "experiment",
    "grid",
    "cells",
    "Case",
    "Recipe",
    "metric",
    "throughput",
    "epoch_time",
    "peak_memory",
    "measure",
    "diverges",
    "converges",
    "compare",
    "trend",
    "best",
    "equivalent",
    "noninferior",
    "adaptive",
    "register_profile",
    "where",
    "expect",
    "space",
    "uniform",
    "loguniform",
    "intrange",
    "choice",
    "random",
    "sobol",
    "optuna",
    "halving",
    "hyperband",
    "found",
    "datasets",
    "models",
    "HpspecError",
    "SpecError",
    "CellError",
    "run",
    "load",
    "Run",
]


def __getattr__(name: str) -> Any:
    if name == "models":
        import importlib

        return importlib.import_module("hpspec.engine.models")
    raise AttributeError(f"module 'hpspec' has no attribute {name!r}")
