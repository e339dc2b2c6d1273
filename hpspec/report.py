"""Rendering results as text. Pure: returns strings, never prints (the plugin writes them)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from tabulate import tabulate

from hpspec.claims import Verdict
from hpspec.results import CellResult, json_number
from hpspec.spec import format_value

__all__ = ["CellRecord", "render_experiment", "render_claims", "run_document", "JSON_SCHEMA_VERSION", "human_rate", "human_bytes", "human_seconds"]


@attrs.define
class CellRecord:
    """What the summary knows about one cell: its result (if it trained) and its outcome."""

    experiment: str
    cell_id: str
    params: dict[str, Any]
    outcome: str = "not run"  # passed | failed | error | not run
    result: CellResult | None = None
    verdicts: list[Verdict] = attrs.field(factory=list)
    note: str = ""


def human_rate(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.1f}"


def human_bytes(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{int(x)} B"


def human_seconds(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if x < 1e-3:
        return f"{x * 1e6:.0f} us"
    if x < 1:
        return f"{x * 1e3:.1f} ms"
    return f"{x:.2f} s"


def _mean_sd(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not values:
        return "-"
    if len(finite) < len(values):
        if not finite:
            return "nan"
        return f"{statistics.fmean(finite):.3g} ({len(values) - len(finite)} nan)"
    mean = statistics.fmean(finite)
    if len(finite) == 1:
        return f"{mean:.3g}"
    return f"{mean:.3g} ± {statistics.stdev(finite):.2g}"


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else None


def _metrics_of(records: Sequence[CellRecord]) -> list[str]:
    order = ["train_loss", "val_loss", "val_acc"]
    seen: list[str] = []
    for r in records:
        if r.result is None:
            continue
        for s in r.result.seeds:
            for k in s.curves:
                if k not in seen:
                    seen.append(k)
    return [m for m in order if m in seen] + [m for m in seen if m not in order]


def render_experiment(
    name: str, axes: Sequence[str], records: Sequence[CellRecord], device: str | None = None
) -> str:
    """One table: a row per cell with its hyperparameters, verdict, final metrics (mean ± sd
    over seeds), divergence, time per epoch, samples/s and peak memory."""
    metrics = _metrics_of(records)
    headers = [*axes, "verdict", *[f"{m} (final)" for m in metrics], "diverged", "time/epoch",
               "samples/s", "peak mem"]
    rows = []
    for r in records:
        row: list[Any] = [format_value(r.params.get(a)) for a in axes]
        row.append(r.outcome)
        res = r.result
        if res is None:
            row += ["-"] * (len(metrics) + 4)
            rows.append(row)
            continue
        for m in metrics:
            finals = [s.curves[m][-1] for s in res.seeds if s.curves.get(m)]
            row.append(_mean_sd(finals))
        div = [s for s in res.seeds if s.diverged is not None]
        row.append(
            "-" if not div else f"{len(div)}/{len(res.seeds)} (epoch {min(s.diverged.epoch for s in div)})"  # type: ignore[union-attr]
        )
        row.append(human_seconds(_mean(s.measurements.get("time_per_epoch") for s in res.seeds)))
        row.append(human_rate(_mean(s.measurements.get("samples_per_s") for s in res.seeds)))
        row.append(human_bytes(_mean(s.measurements.get("peak_memory") for s in res.seeds)))
        rows.append(row)
    counts = sorted({len(r.result.seeds) for r in records if r.result})
    seeds = "" if not counts else (
        f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    )
    plural = "s" if counts and counts[-1] != 1 else ""
    title = f"{name}" + (f" on {device}" if device else "") + (
        f", {seeds} seed{plural} per cell (mean ± sd)" if counts else ""
    )
    table = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
    return f"{title}\n{table}"


def render_claims(verdicts: Sequence[Verdict]) -> str:
    """The cross-cell claims of one experiment: claim, verdict and p-value."""
    rows = [
        [v.claim, v.outcome, "-" if v.p_pass is None else f"{v.p_pass:.3g}"] for v in verdicts
    ]
    return tabulate(rows, headers=["claim across cells", "verdict", "p"], tablefmt="simple",
                    disable_numparse=True)


#: Version of the ``--hpspec-json`` document; bump on any incompatible change.
JSON_SCHEMA_VERSION = 1


def _verdict_dict(v: Verdict) -> dict[str, Any]:
    return {
        "claim": v.claim,
        "outcome": v.outcome,
        "message": v.message,
        "p_pass": v.p_pass,
        "p_fail": v.p_fail,
        "seeds": [{**attrs.asdict(c), "value": json_number(c.value)} for c in v.checks],
    }



def run_document(
    experiments: Sequence[tuple[str, str, Sequence[str], Sequence[CellRecord], Sequence[Verdict]]],
    environment: dict[str, Any],
) -> dict[str, Any]:
    """The whole run as one JSON-ready dict (schema ``hpspec-run``, version 1):

    ``{"schema", "version", "environment", "experiments": [{"key", "name", "axes",
    "cells": [{"cell_id", "params", "outcome", "verdicts", "result"}], "claims": [...]}]}``
    where ``result`` is :meth:`hpspec.results.CellResult.to_dict` (per seed: curves by
    epoch, epoch seconds, initial values, divergence, measurements) or null.
    """
    return {
        "schema": "hpspec-run",
        "version": JSON_SCHEMA_VERSION,
        "environment": environment,
        "experiments": [
            {
                "key": key,
                "name": name,
                "axes": list(axes),
                "cells": [
                    {
                        "cell_id": r.cell_id,
                        "params": dict(r.params),
                        "outcome": r.outcome,
                        "verdicts": [_verdict_dict(v) for v in r.verdicts],
                        "result": r.result.to_dict() if r.result else None,
                    }
                    for r in records
                ],
                "claims": [_verdict_dict(v) for v in claims],
            }
            for key, name, axes, records, claims in experiments
        ],
    }
