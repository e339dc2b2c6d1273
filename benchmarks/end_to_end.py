"""What a user feels: a whole grid from the shell, hpspec against the scripts people write.

    python benchmarks/end_to_end.py [--reps 3] [--json PATH] [--threads N] [--skip-collect]

Training. A 64-cell lr x init grid of the digits MLP (64-128-128-10, ReLU, SGD with momentum
0.9, batch 64, 5 epochs; 16 learning rates x 4 init seeds), each cell with one claim (it does
not diverge), run three ways, each as its own subprocess, wall time from start to exit:

  hpspec       ``pytest exp_e2e.py --hpspec-cache=off`` on an hpspec experiment file
  script       the same training as a plain Python for-loop script (data on the CPU as
               tensors, randperm batches, validation loss and accuracy after every epoch)
  parametrize  a ``@pytest.mark.parametrize`` test over lr and init with that same loop
               (run with ``-p no:hpspec``, as a project without hpspec would)

Collection. ``pytest --collect-only -q`` of a 10,000-cell one-axis hpspec grid against a
``@pytest.mark.parametrize`` of 10,000 values (``-p no:hpspec`` for the latter).

The ways are interleaved (rep 1 of each, then rep 2, ...) so that a loaded machine slows all
of them alike; the table shows the median of --reps, and the ratios are what to read.
Thread counts are each tool's own default unless --threads N sets OMP_NUM_THREADS for all.
Both pytest ways run with ``-p no:hypothesispytest``: hypothesis is one of hpspec's test
extras, not something a user's environment has, and its plugin costs a pytest run about a
second at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Learning rates where every cell's verdict is stable: above about 0.2 (momentum 0.9) this MLP's
# training turns chaotic, and whether a seed crosses the divergence line there depends on the
# last bits of the arithmetic, which the stacked engine's batched products and a one-by-one
# loop round differently (their curves agree below 0.2; tests/test_stacked.py).
LRS = [0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.007, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
       0.07, 0.1, 0.15]
INITS = [0, 1, 2, 3]
COLLECT_N = 10_000

EXPERIMENT = f'''
import torch
import hpspec as hp


@hp.experiment(
    grid=hp.grid(lr={LRS!r}, init={INITS!r}),
    epochs=5,
    batch_size=64,
    seeds=1,
    data=hp.datasets.digits(),
    claims=[hp.expect(~hp.diverges())],
)
def e2e(case):
    torch.manual_seed(case.init)
    model = hp.models.mlp(64, [128, 128], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9)
'''

# The loop a user writes by hand, shared by the script and the parametrize test.
LOOP = '''
import math

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F


def load():
    d = load_digits()
    x_tr, x_va, y_tr, y_va = train_test_split(d.data, d.target, test_size=0.2,
                                              random_state=0, stratify=d.target)
    sc = StandardScaler().fit(x_tr)
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)
    return (f(sc.transform(x_tr)), torch.as_tensor(y_tr), f(sc.transform(x_va)),
            torch.as_tensor(y_va))


def train(lr, init, data, epochs=5, batch=64):
    x, y, xv, yv = data
    torch.manual_seed(init)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    order = torch.Generator().manual_seed(0)
    with torch.no_grad():
        first = F.cross_entropy(model(x), y).item()
    losses = []
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        with torch.no_grad():
            out = model(xv)
            val_loss = F.cross_entropy(out, yv).item()
            val_acc = (out.argmax(1) == yv).float().mean().item()
    return first, losses, val_loss, val_acc


def diverged(first, losses):
    return any(not math.isfinite(v) or v > 1e3 * max(first, 1e-8) for v in losses)
'''

SCRIPT = LOOP + f'''

if __name__ == "__main__":
    data = load()
    failed = 0
    for lr in {LRS!r}:
        for init in {INITS!r}:
            first, losses, val_loss, val_acc = train(lr, init, data)
            bad = diverged(first, losses)
            failed += bad
            print(f"lr={{lr}} init={{init}} val_loss={{val_loss:.4f}} val_acc={{val_acc:.3f}}"
                  f" {{'DIVERGED' if bad else 'ok'}}")
    print(f"{{64 - failed}} passed, {{failed}} failed")
'''

PARAMETRIZE = LOOP + f'''

import functools

import pytest


@functools.lru_cache(maxsize=1)
def data():
    return load()


@pytest.mark.parametrize("init", {INITS!r})
@pytest.mark.parametrize("lr", {LRS!r})
def test_cell(lr, init):
    first, losses, val_loss, val_acc = train(lr, init, data())
    assert not diverged(first, losses)
'''

BIG_EXPERIMENT = f'''
import torch
import hpspec as hp


@hp.experiment(grid=hp.grid(lr=[round(1e-4 * (i + 1), 6) for i in range({COLLECT_N})]),
               epochs=1, data=hp.datasets.digits(),
               claims=[hp.expect(~hp.diverges())])
def big(case):
    model = hp.models.mlp(64, [32], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
'''

# It imports torch as the experiment file does (a real test module of training code would).
BIG_PARAMETRIZE = f'''
import pytest
import torch


@pytest.mark.parametrize("lr", [round(1e-4 * (i + 1), 6) for i in range({COLLECT_N})])
def test_big(lr):
    assert lr > 0
'''


def write_files(d: Path) -> None:
    (d / "pytest.ini").write_text("[pytest]\n")
    (d / "exp_e2e.py").write_text(EXPERIMENT)
    (d / "plain_script.py").write_text(SCRIPT)
    (d / "test_param.py").write_text(PARAMETRIZE)
    (d / "exp_big.py").write_text(BIG_EXPERIMENT)
    (d / "test_big.py").write_text(BIG_PARAMETRIZE)


def commands(d: Path) -> dict[str, list[str]]:
    py = sys.executable
    # hypothesis (a test extra of hpspec, not a dependency) adds its own pytest plugin, which
    # imports most of hypothesis at the terminal summary (about 0.9 s here): left out of both
    # pytest ways, as a user's environment without it would be.
    common = ["-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest"]
    return {
        "hpspec": [py, "-m", "pytest", str(d / "exp_e2e.py"), *common, "--hpspec-cache=off",
                   "--hpspec-table=short"],
        "script": [py, str(d / "plain_script.py")],
        "parametrize": [py, "-m", "pytest", str(d / "test_param.py"), *common, "-p",
                        "no:hpspec"],
        "collect_hpspec": [py, "-m", "pytest", str(d / "exp_big.py"), "--collect-only",
                           *common],
        "collect_parametrize": [py, "-m", "pytest", str(d / "test_big.py"), "--collect-only",
                                *common, "-p", "no:hpspec"],
    }


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-3000:]}\n"
                 f"{out.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for every way (default: each tool's own choice)")
    ap.add_argument("--skip-collect", action="store_true")
    args = ap.parse_args()

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("OMP_NUM_THREADS", None)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    ways = ["hpspec", "script", "parametrize"]
    if not args.skip_collect:
        ways += ["collect_hpspec", "collect_parametrize"]
    times: dict[str, list[float]] = {w: [] for w in ways}
    with tempfile.TemporaryDirectory(prefix="hpspec-e2e-") as tmp:
        d = Path(tmp)
        write_files(d)
        cmds = commands(d)
        for rep in range(args.reps):
            for w in ways:
                times[w].append(timed(cmds[w], d, env))
                print(f"rep {rep + 1}/{args.reps} {w:<20} {times[w][-1]:7.2f} s", flush=True)
            report(args, times, final=rep + 1 == args.reps)


def report(args: argparse.Namespace, times: dict[str, list[float]], final: bool) -> None:
    """The table (at the end) and the JSON (after every rep, so a stopped run keeps its
    finished reps)."""
    med = {w: statistics.median(v) for w, v in times.items()}
    per_rep = {w: [o / h for o, h in zip(times[w], times["hpspec"], strict=True)]
               for w in ("script", "parametrize")}
    if not args.skip_collect:
        per_rep["collect"] = [h / p for h, p in zip(times["collect_hpspec"],
                                                    times["collect_parametrize"], strict=True)]
    rows = [
        ("64-cell grid: hpspec (pytest, cache off)", med["hpspec"], 1.0),
        ("64-cell grid: plain for-loop script", med["script"], med["script"] / med["hpspec"]),
        ("64-cell grid: @pytest.mark.parametrize", med["parametrize"],
         med["parametrize"] / med["hpspec"]),
    ]
    if not args.skip_collect:
        rows += [
            (f"--collect-only, {COLLECT_N:,}-cell hpspec grid", med["collect_hpspec"], 1.0),
            (f"--collect-only, parametrize of {COLLECT_N:,}", med["collect_parametrize"],
             med["collect_parametrize"] / med["collect_hpspec"]),
        ]
    width = max(len(r[0]) for r in rows)
    if not final:
        rows = []
    if rows:
        print(f"\n{'what':<{width}}  {'median s':>9}  {'x hpspec':>9}")
    for name, s, ratio in rows:
        print(f"{name:<{width}}  {s:9.2f}  {ratio:9.2f}")
    if final:
        for w, ratios in per_rep.items():
            print(f"per rep, {w}: " + ", ".join(f"{r:.2f}x" for r in ratios)
                  + f" (median {statistics.median(ratios):.2f}x)")
        print(f"\nmedian of {args.reps}, interleaved; 'x hpspec' is that way's time over hpspec's "
              "(collection: hpspec's over parametrize's is "
              + (f"{med['collect_hpspec'] / med['collect_parametrize']:.2f}x)"
                 if not args.skip_collect else "not run)"))
    if args.json:
        from importlib.metadata import version

        doc = {
            "benchmark": "end_to_end",
            "command": "python benchmarks/end_to_end.py " + " ".join(sys.argv[1:]),
            "reps": args.reps,
            "reps_done": len(next(iter(times.values()))),
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
            "torch": version("torch"),
            "seconds": times,
            "median_s": med,
            # per rep (the ways of one rep ran back to back), then the median over reps
            "per_rep_speedup_vs_script": per_rep["script"],
            "per_rep_speedup_vs_parametrize": per_rep["parametrize"],
            "per_rep_collect_ratio": per_rep.get("collect"),
            "speedup_vs_script": med["script"] / med["hpspec"],
            "speedup_vs_parametrize": med["parametrize"] / med["hpspec"],
            "collect_ratio_hpspec_over_parametrize": (
                med["collect_hpspec"] / med["collect_parametrize"]
                if not args.skip_collect else None),
        }
        args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
