"""hp.run / hp.load: the Python front-end gives what pytest gives."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import pytest

import hpspec as hp
from hpspec.errors import HpspecError

SMALL = textwrap.dedent("""
    import torch
    import hpspec as hp

    @hp.experiment(
        grid=hp.grid(lr=[0.3, 0.01]),
        epochs=2,
        seeds=2,
        data=hp.datasets.digits(n_train=200),
        claims=[
            hp.where(lr=0.3).expect(hp.metric("val_acc").final() >= 0.1),
            hp.compare(hp.metric("val_loss").final(), lower={"lr": 0.3}, than={"lr": 0.01}),
        ],
    )
    def small(case):
        model = hp.models.mlp(64, [8], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)
""")


def _by_cell(doc):
    cells = {c["cell_id"]: c for e in doc["experiments"] for c in e["cells"]}
    curves = {cid: [s["curves"] for s in c["result"]["seeds"]] for cid, c in cells.items()}
    verdicts = sorted((cid, v["claim"], v["outcome"]) for cid, c in cells.items()
                      for v in c["verdicts"])
    claims = sorted((v["claim"], v["outcome"], v["p_pass"], v["p_fail"])
                    for e in doc["experiments"] for v in e["claims"])
    return curves, verdicts, claims


def test_hp_run_gives_the_curves_and_verdicts_pytest_gives(tmp_path, monkeypatch):
    exp = tmp_path / "exp_small.py"
    exp.write_text(SMALL)
    out = tmp_path / "run.json"
    subprocess.run([sys.executable, "-m", "pytest", str(exp), "-q", "-p", "no:cacheprovider",
                    "--hpspec-cache=off", f"--hpspec-json={out}"], cwd=tmp_path, check=False,
                   capture_output=True)
    by_pytest = json.loads(out.read_text())
    assert all(c["result"] for e in by_pytest["experiments"] for c in e["cells"])
    monkeypatch.chdir(tmp_path)
    run = hp.run(exp, cache="off", csv=tmp_path / "rows.csv")
    assert run.exitstatus in (0, 1), run.output  # 1: a claim may fail; it must fail alike
    curves, verdicts, claims = _by_cell(run.document)
    assert (curves, verdicts, claims) == _by_cell(by_pytest)
    assert len(claims) == 1 and claims[0][2] is not None  # the compare claim, with its p
    # the API's views of the same document
    assert {c.cell_id for c in run.cells} == {"lr=0.3", "lr=0.01"}
    cell = next(c for c in run.cells if c.cell_id == "lr=0.3")
    assert sorted(cell.curves) == [0, 1] and len(cell.curves[0]["val_loss"]) == 2
    assert any(v.cell_id is None and v.p_pass is not None for v in run.verdicts)
    assert "0.01" in run.table() and "claim across cells" in run.table()
    assert "<html" in run._repr_html_().lower()
    frame = run.to_pandas()
    assert frame.shape[0] == 4  # 2 cells x 2 seeds
    assert set(frame["lr"]) == {0.3, 0.01}
    assert "val_loss_final" in frame.columns
    # one row builder: the CSV the same run wrote holds the same rows, column for column
    with open(tmp_path / "rows.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert written == [{k: "" if v is None else str(v) for k, v in r.items()}
                       for r in run.rows()]
    assert list(frame.columns) == list(written[0])


def test_hp_load_reads_the_run_back_from_the_store(tmp_path, monkeypatch):
    exp = tmp_path / "exp_small.py"
    exp.write_text(SMALL)
    monkeypatch.chdir(tmp_path)
    first = hp.run(exp, save="mine", stack="off")
    store = tmp_path / ".hpspec" / "results.sqlite"
    for ref in ("latest", "mine"):
        loaded = hp.load(ref, store=store)
        assert _by_cell(loaded.document)[1:] == _by_cell(first.document)[1:]
        assert _by_cell(loaded.document)[0] == _by_cell(first.document)[0]
    assert "lr" in loaded.table()
    with pytest.raises(HpspecError, match="no such run"):
        hp.load("nope", store=store)
    with pytest.raises(HpspecError, match="no results store"):
        hp.load(store=tmp_path / "missing.sqlite")


def test_bad_targets_are_named():
    with pytest.raises(HpspecError, match="no such file or folder"):
        hp.run("does/not/exist.py")
    with pytest.raises(HpspecError, match="not a target"):
        hp.run(42)


def test_hp_run_twice_in_one_process_sees_each_file_as_it_is_now(tmp_path, monkeypatch):
    # a notebook: the same file name in two folders, then one file edited and run again.
    # pytest imports an experiment file under its bare name; hp.run used to leave it in
    # sys.modules, so the second folder failed with "import file mismatch" and the edit
    # was never seen.
    loop = textwrap.dedent("""
        import hpspec as hp

        @hp.experiment(grid=hp.grid(lr=[0.5]), epochs=2)
        def loop(case):
            loss = 1.0
            for _ in range(2):
                loss *= STEP
                yield {"loss": loss}
    """)
    monkeypatch.chdir(tmp_path)
    finals = []
    for folder, step in (("a", 0.5), ("b", 0.25), ("b", 0.1)):
        (tmp_path / folder).mkdir(exist_ok=True)
        exp = tmp_path / folder / "exp_loop.py"
        exp.write_text(f"STEP = {step}\n" + loop)
        run = hp.run(exp, cache="off")
        assert run.exitstatus == 0, run.output
        finals.append(run.rows()[0]["loss_final"])
    assert finals == pytest.approx([0.25, 0.0625, 0.01])
