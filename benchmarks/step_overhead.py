"""How much does one stacked training step cost, for small stacks and large ones?

    python benchmarks/step_overhead.py [--reps 3] [--json PATH]
    python benchmarks/step_overhead.py --against DIR [--reps 3] [--json PATH]

CPU time (time.process_time) with one torch thread, per case:

  step K=4 h32 b32 L1/L2   one stacked step (forward, backward, update) of 4 members of the
                           digits MLP 64-32(-32)-10, plain SGD, batch 32: the groups of a
                           halving search (benchmarks/search_speed.py), in microseconds
  step K=64 h128 b64 mom   64 members of 64-128-128-10, SGD momentum 0.9, batch 64: the grid
  round 32 trials          one 32-trial halving round, ``search_speed.hpspec_round(seed, 32,
                           2)`` (a Sobol search, eta 2, cache off), in seconds
  grid 64 members          ``runner.run_stacked`` on the grid of benchmarks/grid_speed.py
                           (4 lr x 4 weight decays x 4 seeds, 64-128-128-10, SGD momentum 0.9,
                           batch 64, 5 epochs), in seconds

Medians of --reps. With ``--against DIR`` (another checkout of hpspec, e.g. the base commit:
``git archive BASE | tar -x -C DIR``) each repetition runs this file once in a fresh process
on DIR's hpspec and once on this checkout's, interleaved, and the table has both columns and
their ratio (this checkout's time over DIR's). This file must exist only here: DIR is put on
the worker's path in place of this checkout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
clock = time.process_time


def _setup(root: str) -> None:
    sys.path.insert(0, root)
    sys.path.insert(1, str(Path(root) / "benchmarks"))


def _step_case(k: int, hidden: list[int], batch: int, momentum: float, steps: int) -> float:
    """Microseconds of CPU per stacked step (after a warm-up)."""
    import torch

    import hpspec as hp
    from hpspec.datasets import digits
    from hpspec.engine.runner import device_data
    from hpspec.engine.stacked import Member, _engine

    data = device_data(digits(), "cpu")
    members = []
    for j in range(k):
        torch.manual_seed(j)
        model = hp.models.mlp(64, hidden, 10, activation="relu" if j % 2 else "tanh")
        opt = torch.optim.SGD(model.parameters(), lr=0.01 * (j + 1), momentum=momentum)
        members.append(Member(f"c{j}", j, model, opt, None))
    members.sort(key=lambda m: repr(m.model))
    engine = _engine(members, data, "cpu", batch)
    n = data.x_train.shape[0]
    perms = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(j))
                         for j in range(k)])
    xs, ys = data.x_train[perms], data.y_train[perms]
    per_epoch = n // batch
    batches = [(xs[:, i * batch:(i + 1) * batch], ys[:, i * batch:(i + 1) * batch])
               for i in range(per_epoch)]
    for i in range(20):
        engine.step(*batches[i % per_epoch])
    t0 = clock()
    for i in range(steps):
        engine.step(*batches[i % per_epoch])
    return (clock() - t0) / steps * 1e6


def _round(seed: int) -> float:
    from search_speed import hpspec_round

    t0 = clock()
    hpspec_round(seed, 32, 2)
    return clock() - t0


def _grid() -> float:
    from grid_speed import cells, hpspec_experiment

    from hpspec.engine.probes import PROBE_CACHE
    from hpspec.engine.runner import run_stacked

    exp = hpspec_experiment(cells(64))
    PROBE_CACHE.clear()
    t0 = clock()
    done, why = run_stacked(exp, list(exp.cells), "cpu", threads=1)
    spent = clock() - t0
    assert len(done) == 16 and not why, (len(done), why)
    return spent


CASES = ["step K=4 h32 b32 L1 (us)", "step K=4 h32 b32 L2 (us)",
         "step K=64 h128x2 b64 mom (us)", "round 32 trials (s)", "grid 64 members (s)"]


def worker(root: str) -> dict[str, float]:
    """One process's measurement of every case, on the hpspec at ``root``."""
    _setup(root)
    import torch

    torch.set_num_threads(1)
    _round(7)  # warm-up: imports, the probe cache, torch's first calls
    out = {
        CASES[0]: _step_case(4, [32], 32, 0.0, 2000),
        CASES[1]: _step_case(4, [32, 32], 32, 0.0, 2000),
        CASES[2]: _step_case(64, [128, 128], 64, 0.9, 200),
        CASES[3]: statistics.median(_round(seed) for seed in (1, 2, 3)),
        CASES[4]: _grid(),
    }
    return out


def _spawn(root: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, str(HERE), "--worker", root], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--against", default=None, help="another hpspec checkout (the 'before')")
    ap.add_argument("--json", default=str(HERE.with_name("step_overhead_cpu.json")))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    here = str(HERE.parents[1])
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for rep in range(args.reps):
        order = [("before", args.against), ("after", here)] if args.against else [
            ("after", here)]
        if rep % 2:
            order.reverse()
        for name, root in order:
            runs[name].append(_spawn(root))
            print(f"rep {rep + 1} {name}: {runs[name][-1]}", file=sys.stderr)
    med = {name: {c: statistics.median(r[c] for r in rs) for c in CASES}
           for name, rs in runs.items() if rs}
    rows = []
    for c in CASES:
        after = med["after"][c]
        if "before" in med:
            before = med["before"][c]
            rows.append(f"{c:32s} {before:10.3f} {after:10.3f} {after / before:7.2f}")
        else:
            rows.append(f"{c:32s} {after:10.3f}")
    head = (f"{'case':32s} {'before':>10s} {'after':>10s} {'ratio':>7s}" if "before" in med
            else f"{'case':32s} {'time':>10s}")
    print(head)
    print("\n".join(rows))
    Path(args.json).write_text(json.dumps(
        {"reps": args.reps, "threads": 1, "clock": "process_time", "median": med,
         "runs": runs, "against": args.against}, indent=1) + "\n")


if __name__ == "__main__":
    main()
