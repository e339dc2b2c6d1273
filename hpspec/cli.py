"""``hpspec`` / ``python -m hpspec``: look at the results store without writing SQL.

    hpspec runs [--limit N]          the runs, newest first
    hpspec show RUN                  one run's cells (mean final metrics) and verdicts
    hpspec diff A B                  what moved between two runs, cell by cell
    hpspec prune --keep N            delete all but the newest N unnamed runs

RUN is a run id, a name given with --hpspec-save, or ``latest``. ``--store PATH`` picks the
store (default .hpspec/results.sqlite).
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from hpspec.gate import cell_numbers, compare_runs, parse_limits
from hpspec.report import render_gate
from hpspec.store import Store

__all__ = ["main"]


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _find(store: Store, ref: str) -> int:
    row = store.find_run(ref)
    if row is None:
        raise SystemExit(f"hpspec: no run {ref!r} in {store.path}; `hpspec runs` lists them")
    return row.id


def cmd_runs(store: Store, args: argparse.Namespace) -> str:
    rows = [[r.id, _when(r.started), r.name or "", r.status, r.seeds, r.cached,
             r.environment.get("device", "-"), r.fingerprint] for r in store.runs(args.limit)]
    return tabulate(rows, headers=["run", "started", "name", "status", "seeds", "cached",
                                   "device", "environment"], disable_numparse=True)


def cmd_show(store: Store, args: argparse.Namespace) -> str:
    run_id = _find(store, args.run)
    cells = store.run_cells(run_id)
    rows = []
    for (exp, cell), entry in sorted(cells.items()):
        nums = cell_numbers(entry["seeds"])
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(nums.items())
                            if k in ("train_loss", "val_loss", "val_acc", "samples_per_s",
                                     "peak_memory") or k not in _MEASURES)
        rows.append([exp.split("::")[-1], cell, entry["outcome"], len(entry["seeds"]), metrics])
    out = [f"run {run_id} in {store.path}",
           tabulate(rows, headers=["experiment", "cell", "outcome", "seeds", "means"],
                    disable_numparse=True)]
    verdicts = store.verdicts(run_id)
    if verdicts:
        out.append(tabulate([[v["experiment"].split("::")[-1], v["cell_id"] or "(across)",
                              v["claim"], v["outcome"]] for v in verdicts],
                            headers=["experiment", "cell", "claim", "verdict"],
                            disable_numparse=True))
    return "\n\n".join(out)


_MEASURES = {"steps_per_s", "time_per_epoch", "params", "param_bytes", "flops_per_sample",
             "stacked", "mfu"}


def cmd_diff(store: Store, args: argparse.Namespace) -> str:
    a, b = _find(store, args.a), _find(store, args.b)
    numbers = [{k: cell_numbers(v["seeds"]) for k, v in store.run_cells(r).items()}
               for r in (a, b)]
    runs = {r.id: r for r in store.runs()}
    same = runs[a].fingerprint == runs[b].fingerprint
    rows, warnings = compare_runs(numbers[1], numbers[0], parse_limits(args.metrics), same,
                                  force=True)
    # A number that stayed diverged (NaN in both runs) did not move; NaN != 0 would say so.
    rows = [r for r in rows if r.change != 0 and not (
        math.isnan(r.change) and not math.isfinite(r.baseline) and not math.isfinite(r.current))]
    text = [f"run {b} against run {a}"]
    if not same:
        text.append("note: the runs' environments differ (timings are not comparable)")
    text += warnings
    text.append(render_gate(rows) if rows else "nothing moved")
    return "\n".join(text)


def cmd_prune(store: Store, args: argparse.Namespace) -> str:
    n = store.prune(args.keep)
    return f"deleted {n} run(s); named runs are kept"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hpspec", description="Look at hpspec's results store.")
    ap.add_argument("--store", type=Path, default=Path(".hpspec/results.sqlite"))
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("runs", help="the runs, newest first")
    p.add_argument("--limit", type=int, default=20)
    p = sub.add_parser("show", help="one run's cells and verdicts")
    p.add_argument("run")
    p = sub.add_parser("diff", help="what moved between two runs")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--metrics", default="train_loss:+0,val_loss:+0,val_acc:-0,"
                   "samples_per_s:-0%,peak_memory:+0")
    p = sub.add_parser("prune", help="delete old unnamed runs")
    p.add_argument("--keep", type=int, default=20)
    args = ap.parse_args(argv)
    if not args.store.exists():
        print(f"hpspec: no store at {args.store} (run pytest on experiments first, or pass "
              "--store PATH)", file=sys.stderr)
        return 2
    store = Store.open(args.store)
    try:
        command = {"runs": cmd_runs, "show": cmd_show, "diff": cmd_diff, "prune": cmd_prune}
        print(command[args.command](store, args))
    finally:
        store.close()
    return 0
