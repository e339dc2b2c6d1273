"""Grids of the shapes people write, through hpspec stacked, hpspec one by one and a naive loop.

    python benchmarks/grid_shapes.py [--reps 3] [--epochs-scale 1.0] [--threads 1]
                                     [--only five,lr_seed,cnn,widths] [--json PATH]

Each row is one grid, timed three ways interleaved in one process (median of --reps):

  stacked  hpspec.session.Session as its pytest items call it, --hpspec-stack=on (default)
  off      the same with --hpspec-stack=off: every cell one by one on the recipe runner
  naive    a DataLoader(shuffle=True) loop with loss.item() every step, cell after cell

Grids (digits, SGD momentum 0.9, one seed per cell unless said):
  five     layers {1,2,3} x lr {0.01,0.1} x activation {relu,tanh} x batch {32,128} x
           epochs {3,10}, hidden 64 (48 cells)
  lr_seed  16 lr x 4 seeds, MLP 64-128-128-10, batch 64, 5 epochs (64 trainings)
  cnn      small CNN on 1x8x8 images (conv 4 channels, max-pool, linear), 16 lr x 4 seeds,
           batch 64, 3 epochs (64 trainings)
  widths   hidden {32,64,128,256} x 8 lr, one hidden layer, batch 64, 5 epochs (32 cells)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import hpspec as hp  # noqa: E402
from hpspec.engine.runner import device_data  # noqa: E402
from hpspec.report import CellRecord  # noqa: E402
from hpspec.spec import build  # noqa: E402

LRS16 = [round(0.005 * 1.25**i, 5) for i in range(16)]


def cnn(channels: int = 4) -> nn.Module:
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, channels, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(channels * 16, 10))


def grids() -> dict[str, dict]:
    def mlp_recipe(case):
        model = hp.models.mlp(64, [case.get("hidden", 64)] * case.get("layers", 1), 10,
                              activation=case.get("activation", "relu"))
        return model, torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9)

    def cnn_recipe(case):
        model = cnn()
        return model, torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9)

    return {
        "five": dict(fn=mlp_recipe, grid=hp.grid(layers=[1, 2, 3], lr=[0.01, 0.1],
                                                 activation=["relu", "tanh"],
                                                 batch_size=[32, 128], epochs=[3, 10]),
                     seeds=1, epochs=None, batch_size=None),
        "lr_seed": dict(fn=mlp_recipe, grid=hp.grid(lr=LRS16), fixed=dict(hidden=128, layers=2),
                        seeds=4, epochs=5, batch_size=64),
        "cnn": dict(fn=cnn_recipe, grid=hp.grid(lr=LRS16), seeds=4, epochs=3, batch_size=64),
        "widths": dict(fn=mlp_recipe, grid=hp.grid(hidden=[32, 64, 128, 256], lr=LRS16[::2]),
                       seeds=1, epochs=5, batch_size=64),
    }


def experiment(name: str, g: dict):
    kw = dict(grid=g["grid"], seeds=g["seeds"], data=hp.datasets.digits(),
              claims=[hp.expect(~hp.diverges())])
    if g.get("fixed"):
        kw["fixed"] = g["fixed"]
    if g["epochs"]:
        kw["epochs"] = g["epochs"]
    if g["batch_size"]:
        kw["batch_size"] = g["batch_size"]

    def recipe(case):
        return g["fn"](case)

    recipe.__name__ = name
    spec = hp.experiment(**kw)(recipe)
    spec.__module__ = "grid_shapes"
    return build(spec)


def run_hpspec(exp, stack: bool) -> int:
    from hpspec.engine.probes import PROBE_CACHE
    from hpspec.session import Session as State

    PROBE_CACHE.clear()
    state = State(device_option="cpu", table="full", cache="off", stack=stack)
    key = f"grid_shapes::{exp.name}"
    state.experiments[key] = exp
    state.records[key] = {c.id: CellRecord(exp.name, c.id, c.as_dict()) for c in exp.cells}
    for cell in exp.cells:
        state.result(key, exp, cell)
    return len(state.stacked_groups.get(key, []))


def run_naive(exp, data) -> None:
    from hpspec.spec import Case

    xtr, ytr = data.x_train, data.y_train
    for cell in exp.cells:
        for seed in exp.seeds:
            torch.manual_seed(seed)
            bs = exp.batch_size_for(cell)
            case = Case(cell.as_dict(), seed=seed, device="cpu", epochs=exp.epochs_for(cell),
                        batch_size=bs, data=data)
            model, opt = exp.fn(case)
            loader = DataLoader(TensorDataset(xtr, ytr), batch_size=bs, shuffle=True,
                                generator=torch.Generator().manual_seed(seed))
            for _ in range(case.epochs):
                for xb, yb in loader:
                    opt.zero_grad()
                    loss = F.cross_entropy(model(xb), yb)
                    loss.backward()
                    opt.step()
                    loss.item()
                with torch.no_grad():
                    out = model(data.x_val)
                    F.cross_entropy(out, data.y_val).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="five,lr_seed,cnn,widths")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = device_data(hp.datasets.digits(), "cpu")
    all_grids = grids()
    rows = []
    for name in args.only.split(","):
        exp = experiment(name, all_grids[name])
        run_hpspec(experiment(name, dict(all_grids[name], seeds=1)), True)  # warm-up
        times: dict[str, list[float]] = {"stacked": [], "off": [], "naive": []}
        for _ in range(args.reps):  # interleaved: the three see the same (shared) machine
            t = time.perf_counter()
            run_hpspec(exp, True)  # its stacked-group count is not reported here
            times["stacked"].append(time.perf_counter() - t)
            t = time.perf_counter()
            run_hpspec(exp, False)
            times["off"].append(time.perf_counter() - t)
            t = time.perf_counter()
            run_naive(exp, data)
            times["naive"].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(dict(grid=name, trainings=len(exp.cells) * len(exp.seeds),
                         stacked_s=med["stacked"], off_s=med["off"], naive_s=med["naive"],
                         off_over_stacked=med["off"] / med["stacked"],
                         naive_over_stacked=med["naive"] / med["stacked"], times=times))
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in med.items()),
              file=sys.stderr, flush=True)
    print(f"cpu, {torch.get_num_threads()} thread(s); torch {torch.__version__}; "
          f"median of {args.reps}, interleaved")
    print(tabulate([[r["grid"], r["trainings"], f"{r['stacked_s']:.2f}", f"{r['off_s']:.2f}",
                     f"{r['naive_s']:.2f}", f"{r['off_over_stacked']:.1f}x",
                     f"{r['naive_over_stacked']:.1f}x"] for r in rows],
                   headers=["grid", "trainings", "stacked s", "stack off s", "naive s",
                            "off / stacked", "naive / stacked"], disable_numparse=True))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "reps": args.reps,
                                         "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
