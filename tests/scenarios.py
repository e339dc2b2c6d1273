"""Experiment files shared by the multi-process tests (pytest-xdist and Ray), and a Session
set up with one experiment for the run-layer tests."""

from __future__ import annotations

import json

import pytest


def session_with(exp, key="k", **options):
    """A CPU Session that holds ``exp`` under ``key``, with a record per cell, as the plugin
    sets one up at collection (``options``: Session's own, e.g. cache="off")."""
    from hpspec.report import CellRecord
    from hpspec.session import Session

    s = Session(device_option="cpu", table="auto", **options)
    s.experiments[key] = exp
    s.records[key] = {c.id: CellRecord(exp.name, c.id, c.as_dict()) for c in exp.cells}
    return s


GRID = """
import os, signal
import torch
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.5, 0.1, 0.01], width=[8, 16]), epochs=3, seeds=3,
               data=hp.datasets.digits(n_train=300),
               claims=[hp.where(lr=0.5).expect(hp.metric("val_acc").final() > 0.5),
                       hp.compare(hp.metric("val_loss"), lower={"lr": 0.5}, than={"lr": 0.01}),
                       hp.trend(hp.metric("train_loss"), over="lr", increasing=False)])
def grid(case):
    model = hp.models.mlp(64, [case.width], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)

@hp.experiment(grid=hp.grid(k=[1, 2, 3]), epochs=2)
def threads(case):
    for _ in range(case.epochs):
        yield {"threads": torch.get_num_threads()}
"""

CRASH = """
import os, signal
import torch
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.3, 0.2, 0.1, 0.05]), epochs=1,
               data=hp.datasets.digits(n_train=200), stack=False)
def crashy(case):
    if case.lr == 0.2:
        os.kill(os.getpid(), signal.SIGKILL)
    model = hp.models.mlp(64, [8], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""


def _outcomes(path):
    doc = json.loads(path.read_text())
    out = {}
    for exp in doc["experiments"]:
        for c in exp["cells"]:
            out[(exp["name"], c["cell_id"])] = (
                c["outcome"], [v["outcome"] for v in c["verdicts"]],
                [s["curves"] for s in c["result"]["seeds"]] if c["result"] else None)
        for v in exp["claims"]:
            out[(exp["name"], v["claim"])] = v["outcome"]
    return out, doc


def assert_same_runs(a: dict, b: dict) -> None:
    """Same cells, same verdicts, curves equal within float tolerance (threads may differ)."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], tuple):
            assert a[k][:2] == b[k][:2], k
            for sa, sb in zip(a[k][2], b[k][2], strict=True):
                for m in sa:
                    assert sa[m] == pytest.approx(sb[m], rel=1e-4), (k, m)
        else:
            assert a[k] == b[k], k

SEARCH = """
import os
import torch
import hpspec as hp

SPACE = hp.space(lr=hp.loguniform(1e-3, 1.0), batch_size=hp.choice([32, 128]))

def recipe(case):
    with open(os.environ["HPSPEC_CALLS"], "a") as f:  # one line per seed trained
        f.write(f"{case.experiment} {case.cell_id} {case.seed}\\n")
    model = hp.models.mlp(64, [8], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)

@hp.experiment(search=hp.random(SPACE, trials=6, seed=1,
                                halving=hp.halving(min_epochs=1, eta=2, metric="val_acc")),
               epochs=3, data=hp.datasets.digits(n_train=200),
               claims=[hp.found(hp.metric("val_acc").final() >= 0.1, seeds=2)])
def halved(case):
    return recipe(case)

@hp.experiment(search=hp.random(SPACE, trials=6, seed=2,
                                halving=hp.hyperband(min_epochs=1, eta=2, metric="val_acc")),
               epochs=3, data=hp.datasets.digits(n_train=200))
def banded(case):
    return recipe(case)
"""
