"""CSV rows, TensorBoard event files and Gradescope grading, from real runs of the
examples/assignment folder (a good and a broken student submission)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from hpspec.claims import SpecContext, validate_claim
from hpspec.errors import SpecError
from hpspec.export import seed_rows
from hpspec.grade import GradeItem, grade

import hpspec as hp

ASSIGNMENT = Path(__file__).resolve().parents[1] / "examples" / "assignment"

BROKEN = '''
import torch
import hpspec as hp

def build(case):
    # ignores case.lr: both cells train at the same tiny rate
    model = hp.models.mlp(64, [32], 10)
    return model, torch.optim.SGD(model.parameters(), lr=1e-4)
'''


def _run(pytester, student: str | None) -> tuple[dict, Path]:
    shutil.copy(ASSIGNMENT / "exp_assignment.py", pytester.path / "exp_assignment.py")
    if student is None:
        shutil.copy(ASSIGNMENT / "student.py", pytester.path / "student.py")
    else:
        (pytester.path / "student.py").write_text(student)
    out = pytester.path
    res = pytester.runpytest_subprocess(
        "--hpspec-grade=results.json", "--hpspec-csv=run.csv", "--hpspec-json=run.json",
        "--hpspec-tensorboard=tb", "-p", "no:cacheprovider")
    doc = json.loads((out / "run.json").read_text())
    return {"res": res, "doc": doc, "grade": json.loads((out / "results.json").read_text())}, out


def test_good_submission_full_marks_and_files(pytester):
    run, out = _run(pytester, None)
    g = run["grade"]
    assert (g["score"], g["max_score"]) == (6, 6)
    assert [t["max_score"] for t in g["tests"]] == [2, 1, 3]
    for t in g["tests"]:
        assert set(t) == {"name", "score", "max_score", "output", "visibility"}
        assert t["visibility"] == "visible" and t["output"]
    run["res"].stdout.fnmatch_lines(["assignment: score 6/6 (100%)", "hpspec: run score 6/6*"])

    # CSV: one row per cell and seed, the same numbers as the JSON document
    with open(out / "run.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["cell_id"], r["seed"]) for r in rows] == [
        (c, s) for c in ("lr=0.01", "lr=0.3") for s in ("0", "1", "2")]
    cells = {c["cell_id"]: c for c in run["doc"]["experiments"][0]["cells"]}
    for r in rows:
        seed = cells[r["cell_id"]]["result"]["seeds"][int(r["seed"])]
        assert float(r["val_acc_final"]) == pytest.approx(seed["curves"]["val_acc"][-1])
        assert float(r["lr"]) == cells[r["cell_id"]]["params"]["lr"]
        assert float(r["samples_per_s"]) == pytest.approx(
            seed["measurements"]["samples_per_s"])
        assert r["epochs"] == "4" and r["diverged_epoch"] == ""

    # TensorBoard: the curves as scalars and the hparams summary, read back by tensorboard
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(out / "tb" / "assignment" / "lr=0.3" / "seed1"))
    acc.Reload()
    assert {"train_loss", "val_loss", "val_acc"} <= set(acc.Tags()["scalars"])
    got = [(e.step, e.value) for e in acc.Scalars("val_acc")]
    want = cells["lr=0.3"]["result"]["seeds"][1]["curves"]["val_acc"]
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert [v for _, v in got] == pytest.approx(want, rel=1e-6)
    assert "_hparams_/session_start_info" in acc.summary_metadata


def test_broken_submission_loses_the_points_it_should(pytester):
    run, _ = _run(pytester, BROKEN)
    g = run["grade"]
    by = {t["name"].split(": ", 1)[1]: t for t in g["tests"]}
    assert by["where lr=0.3: val_acc final >= 0.85 (every seed)"]["score"] == 0
    assert by["every cell: not (diverges) (every seed)"]["score"] == 1  # it does not blow up
    assert by["val_loss final is lower for lr=0.3 than for lr=0.01"]["score"] == 0
    assert (g["score"], g["max_score"]) == (1, 6)
    run["res"].stdout.fnmatch_lines(["hpspec: run score 1/6 (17%)"])


def test_grade_counts_cells_that_failed_to_train_and_gives_partial_credit():
    ok = {"claim": "c", "outcome": "pass", "message": "fine"}
    doc = {"experiments": [{"key": "k", "name": "e", "axes": ["lr"], "claims": [], "cells": [
        {"cell_id": "lr=1", "params": {"lr": 1}, "outcome": "passed", "verdicts": [ok],
         "result": None},
        {"cell_id": "lr=2", "params": {"lr": 2}, "outcome": "error", "verdicts": [],
         "result": None}]}]}
    items = [GradeItem("k", "e", "c", 4.0, ("lr=1", "lr=2")),
             GradeItem("k", "e", "x beats y", 3.0, None)]
    g = grade(doc, items)
    assert [t["score"] for t in g["tests"]] == [2, 0]
    assert "outcome is error" in g["tests"][0]["output"]
    assert "not judged" in g["tests"][1]["output"]
    assert (g["score"], g["max_score"]) == (2, 7)


def test_seed_rows_keep_a_cell_without_result_and_nan_as_float():
    doc = {"experiments": [{"key": "k", "name": "e", "axes": ["lr"], "claims": [], "cells": [
        {"cell_id": "lr=1", "params": {"lr": 1.0}, "outcome": "error", "verdicts": [],
         "result": None},
        {"cell_id": "lr=9", "params": {"lr": 9.0}, "outcome": "passed", "verdicts": [],
         "result": {"seeds": [{"seed": 0, "curves": {"val_loss": [2.0, "nan"]},
                               "epoch_seconds": [1.0, 1.0], "diverged": {"epoch": 2},
                               "measurements": {"samples_per_s": 5.0}}]}}]}]}
    rows = seed_rows(doc)
    assert rows[0] == {"experiment": "k", "cell_id": "lr=1", "seed": None, "outcome": "error",
                       "lr": 1.0}
    assert math.isnan(rows[1]["val_loss_final"]) and rows[1]["diverged_epoch"] == 2
    assert rows[1]["samples_per_s"] == 5.0 and rows[1]["epochs"] == 2


def test_seed_rows_one_row_per_seed_and_hyperparameters_never_clash_with_columns():
    # a grid over epochs and seed: the hyperparameters keep their values beside the
    # epochs trained and the seed (the old builder let one overwrite the other)
    doc = {"experiments": [{"key": "k", "name": "e", "cells": [
        {"cell_id": "c", "params": {"epochs": 10, "seed": 7, "lr": 0.1}, "outcome": "passed",
         "result": {"seeds": [{"seed": s, "curves": {"loss": [2.0, 1.0 + s]},
                               "diverged": None, "measurements": {"mfu": 0.1}}
                              for s in (0, 1)]}}]}]}
    rows = seed_rows(doc)
    assert [(r["seed"], r["param_seed"], r["param_epochs"], r["epochs"]) for r in rows] == [
        (0, 7, 10, 2), (1, 7, 10, 2)]
    assert rows[1]["lr"] == 0.1 and rows[1]["loss_final"] == 2.0 and rows[1]["mfu"] == 0.1
    assert "seed" in doc["experiments"][0]["cells"][0]["params"]  # the document is untouched


@pytest.mark.parametrize("points", [-1, True, "2", math.inf])
def test_points_must_be_a_number_at_least_zero(points):
    ctx = SpecContext("exp_x.py::f", {"lr": [0.1, 0.2]}, None, 2,
                      cells=({"lr": 0.1}, {"lr": 0.2}))
    for claim in (hp.where(lr=0.1).expect(hp.diverges(), points=points),
                  hp.compare(hp.metric("val_loss").final(), lower={"lr": 0.1},
                             than={"lr": 0.2}, points=points)):
        with pytest.raises(SpecError, match="points"):
            validate_claim(claim, ctx, "claims[0]")
