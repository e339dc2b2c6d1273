"""hp.optuna: trials listed by number at collection, values asked from Optuna in batches when the
search runs, each batch trained as one stacked population, results told back; a second run
replays the search from the cache and trains nothing."""

from __future__ import annotations

import json
import math
import statistics
import sys

import pytest
from scenarios import session_with

import hpspec as hp
from hpspec.search import pruned_at, search_table
from hpspec.spec import build

pytest.importorskip("optuna")

SPACE = hp.space(lr=hp.loguniform(1e-3, 1.0), layers=hp.intrange(1, 3),
                 act=hp.choice(["relu", "tanh"]), hidden=16)


def _fn(case):
    return None


def test_trials_are_listed_by_number_and_the_values_are_not_known_at_collection():
    exp = build(hp.experiment(search=hp.optuna(SPACE, trials=12, sampler="tpe"), epochs=2,
                              data=hp.datasets.digits())(_fn))
    assert [c.id for c in exp.cells] == [f"t{i:02d}" for i in range(12)]
    assert exp.axes == ("lr", "layers", "act")  # the searched names
    assert exp.cells[0].as_dict() == {"hidden": 16}  # fixed values only, until asked


def _fake_trainer(seen):
    """A deterministic stand-in for training: val_loss is a smooth function of the values."""

    def train(batch):
        seen.append([cid for cid, _ in batch])
        out = {}
        for cid, v in batch:
            loss = ((math.log10(v["lr"]) + 1) ** 2 + 0.1 * v["layers"]
                    + (0.05 if v["act"] == "tanh" else 0))  # best at lr=0.1, layers=1, relu
            out[cid] = (loss, None)
        return out

    return train


@pytest.mark.parametrize("name", ["tpe", "cmaes", "random", "qmc"])
def test_the_same_search_asks_the_same_values_in_batches(name):
    from hpspec.optuna_search import run_asked

    if name == "cmaes":
        pytest.importorskip("cmaes")
    labels = [f"t{i:02d}" for i in range(10)]

    def run(seed):
        seen, log = [], []
        values = run_asked(hp.optuna(SPACE, trials=10, sampler=name, seed=seed, batch=4),
                           labels, _fake_trainer(seen), log)
        return values, seen, log

    a, seen, log = run(0)
    assert seen == [labels[:4], labels[4:8], labels[8:]]  # asked and trained batch by batch
    assert len(log) == 3 and log[0].startswith(f"optuna {name}: batch 1 of 3 (t00..t03)")
    assert run(0)[0] == a  # seeded: asked again, the same values
    assert run(1)[0] != a
    for v in a.values():
        assert 1e-3 <= v["lr"] <= 1.0 and v["lr"] == float(f"{v['lr']:.3g}")  # as trained
        assert v["layers"] in (1, 2, 3) and v["act"] in ("relu", "tanh")


def test_tpe_learns_from_the_batches_it_was_told():
    """After two batches, TPE's proposals gather near the told optimum (lr = 0.1): its last
    8 of 24 trials lie closer to it (in decades) than a random sampler's, over three seeds."""
    from hpspec.optuna_search import run_asked

    labels = [f"t{i:02d}" for i in range(24)]

    def spread(name):
        out = []
        for seed in range(3):
            values = run_asked(hp.optuna(SPACE, trials=24, sampler=name, seed=seed, batch=4),
                               labels, _fake_trainer([]))
            out.append(statistics.median(abs(math.log10(values[c]["lr"]) + 1)
                                         for c in labels[16:]))
        return statistics.fmean(out)

    assert spread("tpe") < 0.75 * spread("random")


def test_without_optuna_the_spec_error_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    with pytest.raises(hp.SpecError) as info:
        build(hp.experiment(search=hp.optuna(SPACE, trials=4), epochs=2,
                            data=hp.datasets.digits())(_fn))
    msg = str(info.value)
    assert "needs the optuna package" in msg and "pip install optuna" in msg, msg
    assert "pip install optuna" in msg


def test_a_loop_search_without_the_default_metric_must_name_the_one_optuna_is_told():
    def loop(case):
        yield {"loss": 1.0}

    with pytest.raises(hp.SpecError, match=r"search: metric = 'val_loss' is the metric Optuna "
                       r"would be told.*fix: pass metric= to hp.optuna, one of: loss"):
        build(hp.experiment(search=hp.optuna(SPACE, trials=4), epochs=2,
                            metrics=["loss"])(loop))
    exp = build(hp.experiment(search=hp.optuna(SPACE, trials=4, metric="loss"), epochs=2,
                              metrics=["loss"])(loop))
    assert exp.search.order_metric() == "loss"


def test_cmaes_without_its_package_is_a_spec_error_naming_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cmaes" else real(name, *a))
    with pytest.raises(hp.SpecError, match=r"search: sampler = 'cmaes' needs the cmaes "
                       r"package.*fix: pip install cmaes \(from a checkout"):
        build(hp.experiment(search=hp.optuna(SPACE, trials=4, sampler="cmaes"), epochs=2,
                            data=hp.datasets.digits())(_fn))


EXP = """
import torch
import hpspec as hp

SPACE = hp.space(lr=hp.loguniform(1e-2, 1.0), hidden=16)

@hp.experiment(
    search=hp.optuna(SPACE, trials=8, sampler="tpe", seed=0, batch=4, metric="val_acc"),
    epochs=2,
    data=hp.datasets.digits(n_train=300),
    claims=[hp.expect(hp.metric("val_loss").final() < 50),
            hp.found(hp.metric("val_acc").final() >= 0.2, seeds=2)],
)
def opt(case):
    model = hp.models.mlp(64, [case.hidden], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""


def test_an_optuna_search_runs_stacked_per_batch_and_a_second_run_trains_nothing(
        pytester, monkeypatch):
    pytester.makepyfile(exp_opt=EXP)
    collected = pytester.runpytest("--collect-only", "-q")
    collected.stdout.fnmatch_lines(["exp_opt.py::opt[[]t00[]]", "exp_opt.py::opt[[]t07[]]",
                                    "exp_opt.py::opt[[]found-*[]]", "9 tests collected*"])

    first = pytester.runpytest("--hpspec-json=one.json", "-p", "no:cacheprovider")
    first.assert_outcomes(passed=9)
    first.stdout.fnmatch_lines([
        "*search: optuna:tpe, 8 trials (seed 0, asked 4 at a time), sorted by val_acc*",
        "*t0?-lr=*",
        "*importance (fANOVA*",
        "*optuna tpe (seed 0): 8 trials asked in 2 batch(es); 0 served from the cache, "
        "8 trained (stacked per batch)*",
        "*optuna tpe: batch 1 of 2 (t00..t03) asked and told: 4 complete*",
    ])
    one = json.loads((pytester.path / "one.json").read_text())["experiments"][0]
    cells = {c["cell_id"]: c for c in one["cells"]}
    assert set(cells) == {f"t{i:02d}" for i in range(8)}
    for c in cells.values():
        assert 0.01 <= c["params"]["lr"] <= 1.0 and c["params"]["hidden"] == 16
        # the 4 trials of a batch (one seed each) trained as one stacked model
        assert c["result"]["seeds"][0]["measurements"]["stacked"] == 4.0

    from hpspec.engine import runner

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(runner, "run_stacked", no_training)
    monkeypatch.setattr(runner, "run_cell", no_training)
    second = pytester.runpytest("--hpspec-json=two.json", "-p", "no:cacheprovider")
    second.assert_outcomes(passed=9)
    second.stdout.fnmatch_lines(["hpspec: 8 cell(s) from the cache*",
                                 "*8 served from the cache, 0 trained*"])
    two = json.loads((pytester.path / "two.json").read_text())["experiments"][0]
    # asked again, Optuna proposed the same values (else the cache would have missed)
    assert {c["cell_id"]: c["params"] for c in two["cells"]} == {
        k: c["params"] for k, c in cells.items()}


def test_halving_ranks_each_batch_and_the_replay_serves_pruned_trials_from_the_cache(
        tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from hpspec.engine import runner

    def recipe(case):
        model = hp.models.mlp(64, [8], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    exp = build(hp.experiment(search=hp.optuna(
        hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=8, sampler="random", batch=4,
        halving=hp.halving(min_epochs=1, eta=2, metric="val_acc")),
        epochs=2, data=hp.datasets.digits(n_train=200))(recipe))

    def session():
        return session_with(exp, store_path=tmp_path / "r.sqlite")

    first = session()
    r3 = first.result("k", exp, exp.cells[3])
    assert "lr" in r3.params and first.records["k"]["t03"].params["lr"] == r3.params["lr"]
    before = {c.id: first.results[("k", c.id)] for c in exp.cells}
    # ranked within each batch of 4: 2 kept, 2 pruned at epoch 1, in each batch
    for batch in (exp.cells[:4], exp.cells[4:]):
        assert sorted(pruned_at(before[c.id]) or 0 for c in batch) == [0, 0, 1, 1]
    assert any("optuna random: batch 2 of 2 (t04..t07) asked and told: " in line
               and "2 pruned" in line for line in first.notes["k"])
    text = search_table(exp, before)
    assert "pruned at epoch 1" in text and "t0" in text and "-lr=" in text

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(runner, "run_stacked", no_training)
    monkeypatch.setattr(runner, "run_cell", no_training)
    again = session()
    for c in exp.cells:
        r = again.result("k", exp, c)
        assert r.params == before[c.id].params
        assert pruned_at(r) == pruned_at(before[c.id])
        assert [list(x.curves["val_acc"]) for x in r.seeds] == [
            list(x.curves["val_acc"]) for x in before[c.id].seeds]
    assert any("8 served from the cache, 0 trained" in line for line in again.notes["k"])


def test_a_failed_claim_on_a_trial_names_the_values_it_was_asked(pytester):
    pytester.makepyfile(exp_fail="""
        import torch
        import hpspec as hp

        @hp.experiment(
            search=hp.optuna(hp.space(lr=hp.loguniform(1e-2, 1.0)), trials=3, sampler="qmc"),
            epochs=1, data=hp.datasets.digits(n_train=100),
            claims=[hp.expect(hp.metric("val_loss").final() < 1e-6)])
        def never(case):
            model = hp.models.mlp(64, [8], 10)
            return model, torch.optim.SGD(model.parameters(), lr=case.lr)
    """)
    result = pytester.runpytest("-k", "t01", "-p", "no:cacheprovider", "--hpspec-cache=off")
    result.assert_outcomes(failed=1, deselected=2)
    # -k selects one trial; the search runs whole (its values depend on what came before)
    result.stdout.fnmatch_lines(["*trial t01-lr=0.*", "*3 trials asked in 1 batch(es)*"])


def test_the_example_collects_sixteen_trials_and_its_claim(pytester):
    import shutil
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "exp_optuna.py"
    shutil.copy(example, pytester.path / "exp_optuna.py")
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["exp_optuna.py::digits_optuna[[]t00[]]",
                                 "exp_optuna.py::digits_optuna[[]t15[]]",
                                 "exp_optuna.py::digits_optuna[[]found-*[]]",
                                 "17 tests collected*"])
