"""Rendering results as text. Pure: returns strings, never prints (the plugin writes them)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from tabulate import tabulate

from hpspec.claims import Reaches, Verdict
from hpspec.claims import format_number as _fmt
from hpspec.measures import COLUMNS as MEASURE_REGISTRY_COLUMNS
from hpspec.measures import (
    FORMATTERS,
    SHORT,
    human_bytes,
    human_rate,
    human_seconds,
)
from hpspec.results import CellResult
from hpspec.spec import format_value
from hpspec.vocabulary import CellOutcome

__all__ = ["CellRecord", "Column", "columns_for", "render_experiment", "render_gate",
           "render_claims", "run_document", "JSON_SCHEMA_VERSION", "human_rate", "human_bytes",
           "human_seconds"]


@attrs.define
class CellRecord:
    """What the summary knows about one cell: its result (if it trained) and its outcome."""

    experiment: str
    cell_id: str
    params: dict[str, Any]
    outcome: CellOutcome = "not run"
    result: CellResult | None = None
    verdicts: list[Verdict] = attrs.field(factory=list)
    note: str = ""
    order: int = 0  # the cell's place in its grid


def printable(text: Any) -> str:
    """``text`` with control and other unprintable characters shown as escapes (``\\x1b``):
    a hyperparameter value or metric name is the user's text, and raw on a terminal an
    escape sequence could recolour, move the cursor or clear the screen."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in s)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[Any]) -> str:
    return tabulate([[printable(v) for v in row] for row in rows],
                    headers=[printable(h) for h in headers], tablefmt="simple",
                    disable_numparse=True)


def _final_value(metric: str) -> Callable[[CellResult], str]:
    """A column's filler: ``metric``'s last epoch, mean and sd over the seeds that have it
    (a named closure rather than a lambda, so the metric is bound once and typed)."""

    def value(res: CellResult) -> str:
        return _mean_sd([s.curves[metric][-1] for s in res.seeds if s.curves.get(metric)])

    return value


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


def metrics_of(records: Sequence[CellRecord]) -> list[str]:
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


@attrs.frozen
class Column:
    """A column of the experiment table: its header, how a cell's result fills it, and the
    line of the legend that says what it means."""

    name: str
    header: str
    value: Callable[[CellResult], str]
    legend: str = ""
    in_full: bool = True  # False: shown only when --hpspec-columns names it


def _measure_column(name: str, header: str, fmt: Callable[[float | None], str],
                    legend: str = "", in_full: bool = True) -> Column:
    return Column(name, header,
                  lambda res: fmt(_mean(s.measurements.get(name) for s in res.seeds)), legend,
                  in_full)


def _diverged(res: CellResult) -> str:
    div = [s.diverged for s in res.seeds if s.diverged is not None]
    if not div:
        return "-"
    return f"{len(div)}/{len(res.seeds)} (epoch {min(d.epoch for d in div)})"


def _epochs_run(res: CellResult) -> str:
    runs = sorted({s.epochs_run for s in res.seeds})
    planned = max(s.epochs_planned for s in res.seeds)
    text = f"{runs[0]}" if len(runs) == 1 else f"{runs[0]}-{runs[-1]}"
    return f"{text}/{planned}"


def _time_to(claim: Reaches) -> Callable[[CellResult], str]:
    def value(res: CellResult) -> str:
        hits = [claim.reached(s) for s in res.seeds]
        got = [h for h in hits if h is not None]
        if not got:
            return "never"
        epoch = statistics.median(h[0] for h in got)
        secs = _mean(h[2] for h in got)
        text = f"ep {epoch:g}" + (f", {human_seconds(secs)}" if secs is not None else "")
        return text if len(got) == len(hits) else f"{text} ({len(got)}/{len(hits)})"

    return value


#: A column per measurement that has one, in the registry's order.
MEASURE_COLUMNS: tuple[Column, ...] = tuple(
    _measure_column(m.name, m.header or m.name, FORMATTERS[m.format], m.legend, m.in_full)
    for m in MEASURE_REGISTRY_COLUMNS)

#: Columns of ``--hpspec-table=short`` (with the grid's axes and final validation metrics).
SHORT_COLUMNS = ("verdict", *SHORT)


def columns_for(
    records: Sequence[CellRecord],
    targets: Sequence[Reaches] = (),
    table: str = "full",
    pick: Sequence[str] | None = None,
) -> tuple[list[Column], list[str]]:
    """The columns to show (besides the grid's axes) and the names asked for that have no
    data in this experiment. ``pick`` (``--hpspec-columns``) wins over ``table``."""
    results = [r.result for r in records if r.result is not None]
    metrics = metrics_of(records)
    available: dict[str, Column] = {
        "verdict": Column("verdict", "verdict", lambda res: "")  # filled from the record
    }
    for m in metrics:
        available[m] = Column(m, f"{m} (final)", _final_value(m))
    available["diverged"] = Column("diverged", "diverged", _diverged)
    if any(s.diverged is None and 0 < s.epochs_run < s.epochs_planned
           for res in results for s in res.seeds):
        available["epochs"] = Column(
            "epochs", "epochs", _epochs_run,
            "epochs: epochs trained of those planned, where a seed stopped once its claims "
            "were decided (--hpspec-full-curves trains them all)")
    for t in targets:
        sym = "<" if t.direction == "below" else ">"
        name = f"time_to_{t.metric}{sym}{_fmt(t.target)}"
        available[name] = Column(
            name, f"{t.metric}{sym}{_fmt(t.target)} at", _time_to(t),
            f"{t.metric}{sym}{_fmt(t.target)} at: epoch (median over seeds) and training "
            "seconds (mean) when the target was first reached",
        )
    for c in MEASURE_COLUMNS:
        if any(c.name in s.measurements for res in results for s in res.seeds):
            available[c.name] = c
    if pick:
        chosen = [available[n] for n in pick if n in available]
        return chosen, [n for n in pick if n not in available]
    if table == "short":
        vals = [m for m in metrics if m.startswith("val_")] or metrics[:1]
        names = ["verdict", *vals, "diverged", *SHORT_COLUMNS[1:]]
        return [available[n] for n in names if n in available], []
    return [c for c in available.values() if c.in_full], []


def render_experiment(
    name: str,
    axes: Sequence[str],
    records: Sequence[CellRecord],
    device: str | None = None,
    targets: Sequence[Reaches] = (),
    table: str = "full",
    pick: Sequence[str] | None = None,
) -> str:
    """One table: a row per cell with its hyperparameters and the chosen columns (final
    metrics as mean ± sd over seeds, measurements as means), then a legend of the columns."""
    cols, missing = columns_for(records, targets, table, pick)
    headers = [*axes, *[c.header for c in cols]]
    rows = []
    for r in records:
        row: list[Any] = [format_value(r.params.get(a)) for a in axes]
        for c in cols:
            if c.name == "verdict":
                row.append(f"{r.outcome} ({r.note})" if r.note else r.outcome)
            else:
                row.append("-" if r.result is None else c.value(r.result))
        rows.append(row)
    counts = sorted({len(r.result.seeds) for r in records if r.result})
    seeds = "" if not counts else (
        f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    )
    plural = "s" if counts and counts[-1] != 1 else ""
    title = f"{name}" + (f" on {device}" if device else "") + (
        f", {seeds} seed{plural} per cell (mean ± sd)" if counts else ""
    )
    out = [printable(title), _table(rows, headers)]
    legend = [c.legend for c in cols if c.legend]
    if legend and table == "full" and not pick:
        out.append("\n".join(f"  {printable(line)}" for line in legend))
    if missing:
        known = ", ".join(c.name for c in columns_for(records, targets)[0])
        out.append(printable(f"  --hpspec-columns: no data for {', '.join(missing)}; this "
                             f"experiment has: {known}"))
    return "\n".join(out)


def render_claims(verdicts: Sequence[Verdict]) -> str:
    """The cross-cell claims of one experiment: claim, verdict and p-value."""
    rows = [
        [v.claim, v.outcome, "-" if v.p_pass is None else f"{v.p_pass:.3g}"] for v in verdicts
    ]
    return _table(rows, ["claim across cells", "verdict", "p"])


#: Version of the ``--hpspec-json`` document; bump on any incompatible change.
JSON_SCHEMA_VERSION = 1


def run_document(
    experiments: Sequence[tuple[str, str, Sequence[str], Sequence[CellRecord], Sequence[Verdict]]],
    environment: dict[str, Any],
    extras: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole run as one JSON-ready dict (schema ``hpspec-run``, version 1); ``extras``
    adds fields to an experiment by key (a search's ``"search"`` summary):

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
                        "verdicts": [v.to_dict() for v in r.verdicts],
                        "result": r.result.to_dict() if r.result else None,
                    }
                    for r in records
                ],
                "claims": [v.to_dict() for v in claims],
                **dict((extras or {}).get(key, {})),
            }
            for key, name, axes, records, claims in experiments
        ],
    }


def _num(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else "diverged"


def render_gate(rows: Sequence[Any]) -> str:
    """What moved against the baseline: a row per cell and compared metric."""
    table = []
    for r in rows:
        rel = "-" if r.relative is None else f"{100 * r.relative:+.1f}%"
        # NaN / inf is a diverged run, not a number that moved by some amount.
        change = f"{r.change:+.3g}" if math.isfinite(r.change) else (
            "diverged" if math.isfinite(r.baseline) and not math.isfinite(r.current)
            else "recovered" if math.isfinite(r.current) else "-")
        table.append([r.experiment.split("::")[-1], r.cell_id, r.metric, _num(r.baseline),
                      _num(r.current), change, rel, r.limit,
                      "REGRESSED" if r.failed else "ok"])
    return _table(table, ["experiment", "cell", "metric", "baseline", "now", "change",
                          "change %", "limit", "gate"])
