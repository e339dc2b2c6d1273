"""Regression gates: this run's numbers against a baseline's, with per-metric thresholds.

Pure: numbers in, rows and a verdict out. ``val_loss:+0.02`` fails a cell whose mean final
validation loss rose by more than 0.02; ``throughput:-10%`` fails one whose samples/s fell by
more than 10%. The sign says which way is worse, the unit (none or %) whether the limit is
absolute or relative, in the spirit of pytest-benchmark's ``--benchmark-compare-fail``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from hpspec.measures import ALIASES, TIMING

__all__ = ["Limit", "parse_limits", "cell_numbers", "GateRow", "compare_runs", "ALIASES",
           "TIMING"]

# Friendly names for measurements, and the numbers that depend on the machine (compared
# only between equal environment fingerprints): both read from the registry.


@attrs.frozen
class Limit:
    metric: str
    sign: int  # +1: a rise is a regression; -1: a fall is
    amount: float
    relative: bool

    def describe(self) -> str:
        unit = "%" if self.relative else ""
        amount = self.amount * 100 if self.relative else self.amount
        return f"{self.metric}:{'+' if self.sign > 0 else '-'}{amount:g}{unit}"


def parse_limits(text: str) -> list[Limit]:
    """``"val_loss:+0.02,throughput:-10%"`` as limits; raises ValueError naming the part."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"([A-Za-z_][\w.]*)\s*:\s*([+-])\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*(%?)",
                         part)
        if not m:
            raise ValueError(
                f"{part!r} is not METRIC:+AMOUNT or METRIC:-AMOUNT[%]; e.g. "
                "val_loss:+0.02 (a rise above 0.02 fails) or throughput:-10% (a fall of more "
                "than 10% fails)")
        name, sign, amount, pct = m.groups()
        value = float(amount) / (100 if pct else 1)
        out.append(Limit(ALIASES.get(name, name), 1 if sign == "+" else -1, value, bool(pct)))
    if not out:
        raise ValueError("no limits given; e.g. val_loss:+0.02,throughput:-10%")
    return out


def _mean(values: Iterable[Any]) -> float | None:
    vals = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        vals.append(f)
    return statistics.fmean(vals) if vals else None


def cell_numbers(seeds: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean over seeds of each final metric and measurement (seeds as ``to_dict`` dicts)."""
    names: set[str] = set()
    for s in seeds:
        names |= set(s.get("curves", {})) | set(s.get("measurements", {}))
    out = {}
    for n in names:
        finals = [s["curves"][n][-1] for s in seeds if s.get("curves", {}).get(n)]
        value = _mean(finals) if finals else _mean(
            s.get("measurements", {}).get(n) for s in seeds)
        if value is not None:
            out[n] = value
    return out


@attrs.frozen
class GateRow:
    experiment: str
    cell_id: str
    metric: str
    baseline: float
    current: float
    change: float  # current - baseline
    relative: float | None
    limit: str
    failed: bool


def compare_runs(
    current: Mapping[tuple[str, str], Mapping[str, float]],
    baseline: Mapping[tuple[str, str], Mapping[str, float]],
    limits: Sequence[Limit],
    same_environment: bool,
    force: bool = False,
) -> tuple[list[GateRow], list[str]]:
    """Rows for every (cell, limited metric) both runs have, and warnings."""
    rows: list[GateRow] = []
    warnings: list[str] = []
    skipped_timing = False
    for (exp, cell), now in sorted(current.items()):
        then = baseline.get((exp, cell))
        if then is None:
            continue
        for lim in limits:
            if lim.metric not in now or lim.metric not in then:
                continue
            if lim.metric in TIMING and not same_environment and not force:
                skipped_timing = True
                continue
            a, b = then[lim.metric], now[lim.metric]
            if not (math.isfinite(a) and math.isfinite(b)):
                failed = math.isfinite(a) and not math.isfinite(b)
                rows.append(GateRow(exp, cell, lim.metric, a, b, math.nan, None,
                                    lim.describe(), failed))
                continue
            change = b - a
            rel = change / abs(a) if a else None
            moved = (rel if lim.relative else change)
            failed = moved is not None and lim.sign * moved > lim.amount
            rows.append(GateRow(exp, cell, lim.metric, a, b, change, rel, lim.describe(),
                                failed))
    if skipped_timing:
        warnings.append(
            "timings were not compared: the baseline ran on another environment (versions, "
            "device or CPU count differ), so its speed says nothing about this run's; "
            "--hpspec-compare-force compares them anyway")
    missing = [k for k in current if k not in baseline]
    if missing and baseline:
        warnings.append(f"{len(missing)} cell(s) have no baseline to compare with "
                        f"(e.g. {missing[0][0]}[{missing[0][1]}])")
    return rows, warnings
