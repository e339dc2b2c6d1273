"""How fast does hpspec train a grid, against the loops its users write by hand?

    python benchmarks/grid_speed.py [--device cpu|cuda] [--cells 1,4,16,64] [--quick]
                                    [--reps 3] [--hpspec-threads auto|N] [--json PATH]

The grid: the digits MLP 64-128-128-10 (ReLU), SGD with momentum 0.9, batch 64, 5 epochs;
cell k has lr = (0.03, 0.01, 0.1, 0.003)[k % 4], seed (k // 4) % 4 and weight decay
(0, 1e-4, 1e-3, 1e-2)[(k // 16) % 4] (K=64 is 4 lr x 4 seeds x 4 weight decays). The same work
three ways, side by side in one process (each cell: initial evaluation of train and validation
loss, 5 epochs, validation loss and accuracy after every epoch):

  naive   a DataLoader(TensorDataset, shuffle=True) loop with loss.item() every step, one cell
          after the other (how most students write it)
  lean    data on the device, randperm batches, losses summed on the device and read once per
          epoch, torch.optim(foreach=True), one cell after the other
  hpspec  the plugin's own path (hpspec.session.Session, as its pytest items call it): cells
          stacked where they can be, every measurement taken (FLOPs, memory probes), and the
          experiment's claim judged for every cell

Times run from the first cell's start to the last cell's end (imports, data loading and
interpreter start excluded for all three); the median of --reps runs.

--reference PATH adds a fourth column, interleaved with the other three: the stacked ``bmm``
variant of the stand-alone prototype the issue measured (``../shared/reference/grid_bench.py``
in this workplace; not part of hpspec), on the same grid, imported from PATH and called as
that script calls it. It evaluates once, after the last epoch; the three above evaluate every
epoch.
"""

from __future__ import annotations

import argparse
import importlib.util
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
from hpspec.claims import CellClaim, judge_cell_claim  # noqa: E402
from hpspec.engine.runner import device_data, select_device  # noqa: E402
from hpspec.report import CellRecord  # noqa: E402
from hpspec.spec import build  # noqa: E402

LRS = (0.03, 0.01, 0.1, 0.003)
WDS = (0.0, 1e-4, 1e-3, 1e-2)
EPOCHS, BATCH, HIDDEN = 5, 64, 128


def cells(k: int) -> list[dict[str, float]]:
    return [dict(lr=LRS[i % 4], seed=(i // 4) % 4 + 4 * (i // 64), wd=WDS[(i // 16) % 4])
            for i in range(k)]


def model() -> nn.Module:
    return hp.models.mlp(64, [HIDDEN, HIDDEN], 10)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def evaluate(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        out = m(x)
        return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


def run_naive(grid, data, device: str) -> list[float]:
    finals = []
    xtr, ytr = data.x_train.cpu(), data.y_train.cpu()
    for c in grid:
        torch.manual_seed(int(c["seed"]))
        m = model().to(device)
        opt = torch.optim.SGD(m.parameters(), lr=c["lr"], momentum=0.9, weight_decay=c["wd"])
        loader = DataLoader(TensorDataset(xtr, ytr), batch_size=BATCH, shuffle=True,
                            generator=torch.Generator().manual_seed(int(c["seed"])))
        evaluate(m, data.x_train, data.y_train)
        evaluate(m, data.x_val, data.y_val)
        for _ in range(EPOCHS):
            losses = []
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                opt.zero_grad()
                loss = F.cross_entropy(m(xb), yb)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            val = evaluate(m, data.x_val, data.y_val)
        finals.append(val[0])
    return finals


def run_lean(grid, data, device: str) -> list[float]:
    finals = []
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    for c in grid:
        torch.manual_seed(int(c["seed"]))
        m = model().to(device)
        opt = torch.optim.SGD(m.parameters(), lr=c["lr"], momentum=0.9, weight_decay=c["wd"],
                              foreach=True)
        order = torch.Generator().manual_seed(int(c["seed"]))
        evaluate(m, x, y)
        evaluate(m, data.x_val, data.y_val)
        for _ in range(EPOCHS):
            perm = torch.randperm(n, generator=order).to(device)
            total = torch.zeros((), device=device)
            for s in range(0, n, BATCH):
                idx = perm[s : s + BATCH]
                loss = F.cross_entropy(m(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach()
            total.item()  # the epoch's one sync
            val = evaluate(m, data.x_val, data.y_val)
        finals.append(val[0])
    return finals


def hpspec_experiment(grid):
    params = [{"lr": c["lr"], "wd": c["wd"], "seed_of_cell": int(c["seed"])} for c in grid]

    def recipe(case):
        m = model()
        return m, torch.optim.SGD(m.parameters(), lr=case.lr, momentum=0.9,
                                  weight_decay=case.wd, foreach=True)  # as the lean loop

    # Each (lr, wd) is a cell and its seeds are the grid's seeds: the same K trainings.
    seeds = sorted({p["seed_of_cell"] for p in params})
    pairs = []
    for p in params:
        if (p["lr"], p["wd"]) not in pairs:
            pairs.append((p["lr"], p["wd"]))
    spec = hp.experiment(
        grid=hp.cells(*[dict(lr=lr, wd=wd) for lr, wd in pairs]),
        epochs=EPOCHS, batch_size=BATCH, seeds=seeds, data=hp.datasets.digits(),
        claims=[hp.expect(~hp.diverges())],
    )(recipe)
    spec.__module__ = "grid_speed"
    return build(spec)


def run_hpspec(exp, device: str, threads: str = "auto"):
    from hpspec.engine.probes import PROBE_CACHE
    from hpspec.session import Session as State

    PROBE_CACHE.clear()  # every run pays for its probes, as a fresh pytest session does

    state = State(device_option=device, table="full", cache="off",  # train, never reuse
                  threads=threads if threads == "auto" else int(threads))
    key = "grid_speed::recipe"
    state.experiments[key] = exp
    state.records[key] = {c.id: CellRecord(exp.name, c.id, c.as_dict()) for c in exp.cells}
    finals, verdicts = [], []
    for cell in exp.cells:  # what CellItem.runtest does, cell by cell
        result = state.result(key, exp, cell)
        for claim in exp.claims:
            if isinstance(claim, CellClaim):
                verdicts.append(judge_cell_claim(claim, result.seeds).passed)
        finals += [s.curves["val_loss"][-1] for s in result.seeds]
    return finals, all(verdicts)


def reference(path: Path, device: str):
    """The prototype's stacked variant as a function of K (its own data, grid and init)."""
    spec = importlib.util.spec_from_file_location("grid_bench_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines functions only: it parses arguments under __main__
    dev = torch.device(device)
    data = mod.load_data(dev)

    def run(k: int):
        return mod.run_bmm(mod.make_grid(k, "sgd", HIDDEN), data, EPOCHS, BATCH, "sgd", dev)
    return run


def timed(fn, device: str) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cells", default="1,4,16,64")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one repetition (under a minute "
                    "on a 2-core CPU)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--hpspec-threads", default="auto", help="hpspec's own thread setting "
                    "(--hpspec-threads: auto, the rule in hpspec/threads.py, or a count)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--reference", type=Path, help="the prototype grid_bench.py, to time its "
                    "stacked variant side by side")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 1 if args.quick else args.reps
    device = select_device(args.device)
    data = device_data(hp.datasets.digits(), device)
    # warm-up: first calls pay for kernels, allocator and lazy imports, for all three
    small = cells(2)
    run_naive(small, data, device), run_lean(small, data, device)
    run_hpspec(hpspec_experiment(small), device)
    proto = reference(args.reference, device) if args.reference else None
    if proto is not None:
        proto(2)
    rows = []
    for k in [int(v) for v in args.cells.split(",")]:
        grid = cells(k)
        exp = hpspec_experiment(grid)
        times: dict[str, list[float]] = {"naive": [], "lean": [], "hpspec": []}
        for _ in range(reps):  # interleaved, so the three see the same machine
            times["naive"].append(timed(lambda grid=grid: run_naive(grid, data, device), device)[0])
            times["lean"].append(timed(lambda grid=grid: run_lean(grid, data, device), device)[0])
            t, (finals, ok) = timed(lambda exp=exp: run_hpspec(exp, device, args.hpspec_threads),
                                    device)
            times["hpspec"].append(t)
            if proto is not None:
                times.setdefault("reference", []).append(
                    timed(lambda k=k: proto(k), device)[0])
        med = {name: statistics.median(v) for name, v in times.items()}
        row = {"cells": k, "naive_s": med["naive"], "lean_s": med["lean"],
               "hpspec_s": med["hpspec"], "claims_held": ok,
               "naive_over_hpspec": med["naive"] / med["hpspec"],
               "hpspec_over_lean": med["hpspec"] / med["lean"]}
        if proto is not None:
            row["reference_s"] = med["reference"]
            row["hpspec_over_reference"] = med["hpspec"] / med["reference"]
        rows.append(row)
        print(f"K={k}: " + ", ".join(f"{name} {v:.3f} s" for name, v in med.items()),
              file=sys.stderr)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else (
        f"cpu ({torch.get_num_threads()} threads)")
    print(f"device: {device}, {name}; torch {torch.__version__}; {EPOCHS} epochs, batch {BATCH}, "
          f"MLP 64-{HIDDEN}-{HIDDEN}-10, SGD momentum 0.9; median of {reps}")
    extra = ["reference s", "hpspec / reference"] if proto is not None else []
    print(tabulate(
        [[r["cells"], f"{r['naive_s']:.3f}", f"{r['lean_s']:.3f}", f"{r['hpspec_s']:.3f}",
          f"{r['naive_over_hpspec']:.1f}x", f"{r['hpspec_over_lean']:.2f}",
          *([f"{r['reference_s']:.3f}", f"{r['hpspec_over_reference']:.2f}"] if extra else [])]
         for r in rows],
        headers=["cells", "naive s", "lean s", "hpspec s", "naive / hpspec", "hpspec / lean",
                 *extra],
        disable_numparse=True))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "device_name": name,
                                         "torch": torch.__version__, "reps": reps,
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
