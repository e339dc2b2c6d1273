"""``hpspec`` / ``python -m hpspec``: look at the results store without writing SQL.

    hpspec runs [--limit N]          the runs, newest first
    hpspec show RUN                  one run's cells (mean final metrics) and verdicts
    hpspec diff A B                  what moved between two runs, cell by cell
    hpspec prune --keep N            delete all but the newest N unnamed runs

RUN is a run id, a name given with --hpspec-save, or ``latest``. ``--store PATH`` picks the
store (default .hpspec/results.sqlite), before or after the command.

``runs``, ``show`` and ``diff`` only look: they open the file read-only and never create,
migrate or move it, even when it is damaged. Every failure is one line naming the file.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from hpspec.gate import cell_numbers, compare_runs, parse_limits
from hpspec.measures import SHORT, is_measurement
from hpspec.report import render_gate
from hpspec.store import Store, StoreDamaged

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
        # Every metric, and of the measurements those the short table shows.
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(nums.items())
                            if k in SHORT or not is_measurement(k))
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


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative; give how many runs to keep (0 or "
                                         "more)")
    return n


def cmd_prune(store: Store, args: argparse.Namespace) -> str:
    n = store.prune(args.keep)
    return f"deleted {n} run(s); named runs are kept"


def _parser() -> argparse.ArgumentParser:
    # --store is accepted before and after the command: the subparsers get their own copy,
    # defaulting to SUPPRESS so one given before the command is not overwritten.
    store_help = "the results store (default .hpspec/results.sqlite)"
    ap = argparse.ArgumentParser(prog="hpspec", description="Look at hpspec's results store.")
    ap.add_argument("--store", type=Path, default=Path(".hpspec/results.sqlite"),
                    help=store_help)
    sub = ap.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--store", type=Path, default=argparse.SUPPRESS, help=store_help)
        return p

    p = command("runs", "the runs, newest first")
    p.add_argument("--limit", type=_count, default=20)
    p = command("show", "one run's cells and verdicts")
    p.add_argument("run")
    p = command("diff", "what moved between two runs")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--metrics", default="train_loss:+0,val_loss:+0,val_acc:-0,"
                   "samples_per_s:-0%,peak_memory:+0")
    p = command("prune", "delete old unnamed runs")
    p.add_argument("--keep", type=_count, default=20)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.store.exists():
        print(f"hpspec: no store at {args.store} (run pytest on experiments first, or pass "
              "--store PATH)", file=sys.stderr)
        return 2
    command = {"runs": cmd_runs, "show": cmd_show, "diff": cmd_diff, "prune": cmd_prune}
    try:
        if args.command == "prune":
            # Check it is ours before writing to it, and never move it aside (Store.open would).
            Store.open_readonly(args.store).close()
            store = Store.open_for_writing(args.store, 60.0)
        else:
            store = Store.open_readonly(args.store)
        try:
            text = command[args.command](store, args)
        finally:
            store.close()
    except (StoreDamaged, sqlite3.Error, OSError, ValueError) as e:
        what = str(e) if isinstance(e, StoreDamaged) else f"{args.store}: {type(e).__name__}: {e}"
        print(f"hpspec {args.command}: {what}", file=sys.stderr)
        return 1
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `hpspec runs | head`: the reader has what it wanted
        # stdout's pipe is gone: point it at devnull so the interpreter's final flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
