"""Results as plain data: what one seed of one cell produced.

No torch here: a result is numbers, lists and strings, so it can be stored, sent from a
pytest-xdist worker, compared with a baseline and rendered without the training stack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from hpspec.measures import DESCRIPTIONS

__all__ = ["Divergence", "SeedResult", "CellResult", "MEASUREMENTS", "json_number",
           "from_json_number"]

#: Measurements the runner takes per seed, with the unit each is in (from the registry).
MEASUREMENTS = DESCRIPTIONS


@attrs.frozen
class Divergence:
    """Where and why a seed's training was stopped as diverged."""

    epoch: int
    step: int
    reason: str


@attrs.frozen
class SeedResult:
    """One seed's run: per-epoch curves (index 0 is epoch 1), timings and measurements."""

    seed: int
    curves: Mapping[str, Sequence[float]]
    epoch_seconds: Sequence[float] = ()
    initial: Mapping[str, float] = attrs.field(factory=dict)
    diverged: Divergence | None = None
    measurements: Mapping[str, float] = attrs.field(factory=dict)
    epochs_planned: int = 0
    steps_per_epoch: int = 0

    @property
    def epochs_run(self) -> int:
        return max((len(v) for v in self.curves.values()), default=0)

    def curve(self, metric: str) -> list[float] | None:
        values = self.curves.get(metric)
        return None if values is None else list(values)

    def start_value(self, metric: str) -> float | None:
        """The metric before training when it was measured, else its first epoch's value."""
        if metric in self.initial:
            return self.initial[metric]
        curve = self.curves.get(metric)
        return curve[0] if curve else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "curves": {k: [json_number(x) for x in v] for k, v in self.curves.items()},
            "epoch_seconds": [float(x) for x in self.epoch_seconds],
            "initial": {k: json_number(v) for k, v in self.initial.items()},
            "diverged": attrs.asdict(self.diverged) if self.diverged else None,
            "measurements": {k: json_number(v) for k, v in self.measurements.items()},
            "epochs_planned": self.epochs_planned,
            "steps_per_epoch": self.steps_per_epoch,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SeedResult:
        div = d.get("diverged")
        return cls(
            seed=int(d["seed"]),
            curves={k: [_unnum(x) for x in v] for k, v in d["curves"].items()},
            epoch_seconds=[float(x) for x in d.get("epoch_seconds", [])],
            initial={k: _unnum(v) for k, v in d.get("initial", {}).items()},
            diverged=Divergence(**div) if div else None,
            measurements={k: _unnum(v) for k, v in d.get("measurements", {}).items()},
            epochs_planned=int(d.get("epochs_planned", 0)),
            steps_per_epoch=int(d.get("steps_per_epoch", 0)),
        )


@attrs.frozen
class CellResult:
    """All seeds of one cell, with where it ran."""

    experiment: str
    cell_id: str
    params: Mapping[str, Any]
    device: str
    seeds: tuple[SeedResult, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "cell_id": self.cell_id,
            "params": dict(self.params),
            "device": self.device,
            "seeds": [s.to_dict() for s in self.seeds],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CellResult:
        return cls(
            experiment=d["experiment"],
            cell_id=d["cell_id"],
            params=dict(d["params"]),
            device=d["device"],
            seeds=tuple(SeedResult.from_dict(s) for s in d["seeds"]),
        )


def json_number(x: float | None) -> float | str | None:
    """JSON has no NaN or infinity; keep them as strings rather than lose them."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else repr(x)


def from_json_number(x: float | str | None) -> float:
    """The inverse of :func:`json_number`. hpspec never stores a missing number (its curves
    mark a missing epoch with NaN), so a null from a hand-edited file reads as that NaN."""
    if x is None:
        return math.nan
    return float(x)


_unnum = from_json_number
