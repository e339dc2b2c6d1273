"""Hyperband with the brackets one after the other against the brackets advancing together.

    python benchmarks/hyperband_speed.py [--reps 3] [--trials 27] [--eta 3] [--epochs 9]
                                         [--threads 1] [--json PATH]

One Hyperband search (hp.sobol, --trials trials, hp.hyperband(min_epochs=1, eta=--eta,
brackets=None), --epochs epochs, one seed per trial) on digits, an MLP of hidden width 32,
SGD; the space: lr loguniform(1e-2, 1), layers {1, 2}, activation {relu, tanh}, batch size 32.
Two ways, run by hpspec's Session with the cache off:

  sequential  the brackets one after the other (how run_brackets worked before): each
              bracket's rung trains stacked on its own (successive_halving per bracket)
  together    hpspec.search.run_brackets now: each round, every bracket's next training (a
              rung, or its survivors to the end) in one trainer call, so trials of different
              brackets that share an architecture stack in one run, each leaving at its own
              epoch

Interleaved (ABAB.., the order flipped every repetition) after an untimed warm-up; per way
the CPU seconds of this process (time.process_time, --threads torch threads), median over
--reps repetitions, with the trainer calls and stacked runs made. Both ways must prune the
same trials at the same epochs with the same final val_acc (checked every repetition: the
script stops otherwise). CPU time, not wall time: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import hpspec as hp
import hpspec.search as search_mod
from hpspec.report import CellRecord
from hpspec.search import plan_brackets, pruned_at, successive_halving
from hpspec.spec import build

clock = time.process_time


def recipe(case):
    model = hp.models.mlp(64, [32] * case.layers, 10, activation=case.activation)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)


def sequential(h, epochs, train, log=None, final=None):
    """run_brackets as it was: each bracket's halving to its end before the next starts
    (each bracket's trials told to ``final`` when it ends)."""
    plan = plan_brackets(h, epochs)
    out = {}
    for b in plan:
        own = {c: epochs[c] for c in b.trials}
        if len(plan) == 1:
            got = successive_halving(h, own, train, log)
        else:
            got = successive_halving(h, own, train, log, at=b.rungs,
                                     prefix=f"bracket {b.index}: ")
        for cid, result in got.items():
            final(cid, result)
        out.update(got)
    return out


TOGETHER = search_mod.run_brackets


def run(way: str, trials: int, eta: int, epochs: int, seed: int = 0) -> dict:
    from hpspec.session import Session

    exp = build(hp.experiment(
        search=hp.sobol(hp.space(lr=hp.loguniform(1e-2, 1.0), layers=hp.choice([1, 2]),
                                 activation=hp.choice(["relu", "tanh"]), batch_size=32),
                        trials=trials, seed=seed,
                        halving=hp.hyperband(min_epochs=1, eta=eta, metric="val_acc")),
        epochs=epochs, seeds=1, data=hp.datasets.digits())(recipe))
    s = Session(device_option="cpu", table="full", cache="off")
    key = "bench"
    s.experiments[key] = exp
    s.records[key] = {c.id: CellRecord(exp.name, c.id, c.as_dict()) for c in exp.cells}
    calls = []
    inner = TOGETHER if way == "together" else sequential

    def counting(h, epochs, train, log=None, final=None):  # one per trainer call
        def counted(targets):
            calls.append(len(targets))
            return train(targets)
        return inner(h, epochs, counted, log, final)

    search_mod.run_brackets = counting
    try:
        t0 = clock()
        s.result(key, exp, exp.cells[0])
        took = clock() - t0
    finally:
        search_mod.run_brackets = TOGETHER
    got = {c.id: s.results[(key, c.id)] for c in exp.cells}
    return {"cpu_s": took, "trainer_calls": len(calls),
            "stacked_runs": len(s.stacked_groups.get(key, [])),
            "brackets": len(plan_brackets(exp.search.halving,
                                          {c.id: epochs for c in exp.cells})),
            "pruned": {c: pruned_at(r) for c, r in got.items()},
            "final": {c: r.seeds[0].curves["val_acc"][-1] for c, r in got.items()},
            "notes": [n for n in s.notes[key] if n.startswith(("stacked:", "Hyperband over"))]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--trials", type=int, default=27)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(Path(__file__).with_name("hyperband_speed_cpu.json")))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run("together", 6, a.eta, a.epochs, seed=99)  # warm-up, untimed (one-time torch costs)
    runs: dict[str, list[dict]] = {"sequential": [], "together": []}
    for rep in range(a.reps):
        order = ["sequential", "together"] if rep % 2 == 0 else ["together", "sequential"]
        for way in order:
            runs[way].append(run(way, a.trials, a.eta, a.epochs))
        seq, tog = runs["sequential"][-1], runs["together"][-1]
        if seq["pruned"] != tog["pruned"] or seq["final"] != tog["final"]:
            raise SystemExit(f"rep {rep}: the two ways differ: {seq['pruned']} "
                             f"against {tog['pruned']}")
        print(f"rep {rep}: " + "; ".join(f"{w} {runs[w][-1]['cpu_s']:.2f} CPU s"
                                         for w in order), flush=True)
    rows = [{"way": way, "cpu_s_median": statistics.median(r["cpu_s"] for r in rs),
             "cpu_s": [r["cpu_s"] for r in rs], "trainer_calls": rs[0]["trainer_calls"],
             "stacked_runs": rs[0]["stacked_runs"],
             "pruned": sum(p is not None for p in rs[0]["pruned"].values())}
            for way, rs in runs.items()]
    first = runs["together"][0]
    print(f"\nHyperband on digits: {a.trials} trials, eta={a.eta}, {a.epochs} epochs, "
          f"{first['brackets']} brackets, {a.threads} torch thread(s); CPU seconds "
          f"(time.process_time), median of {a.reps}, interleaved")
    print(f"{'way':<11} {'CPU s':>7} {'trainer calls':>14} {'stacked runs':>13} {'pruned':>7}")
    for r in rows:
        print(f"{r['way']:<11} {r['cpu_s_median']:>7.2f} {r['trainer_calls']:>14} "
              f"{r['stacked_runs']:>13} {r['pruned']:>7}")
    print(f"sequential / together: {rows[0]['cpu_s_median'] / rows[1]['cpu_s_median']:.2f}x "
          "(same trials pruned at the same epochs, same final val_acc)")
    for n in first["notes"]:
        print(f"  {n}")
    Path(a.json).write_text(json.dumps(
        {"args": vars(a), "rows": rows, "torch_threads": torch.get_num_threads(),
         "notes": {w: rs[0]["notes"] for w, rs in runs.items()},
         "pruned": first["pruned"]}, indent=1, default=str))


if __name__ == "__main__":
    main()
