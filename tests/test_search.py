"""Search: trials as cells, successive halving and Hyperband on the stacked population, claims
judged on fresh seeds, importance."""

from __future__ import annotations

import attrs
import pytest
from scenarios import session_with

import hpspec as hp
from hpspec.claims import FAIL, PASS
from hpspec.results import CellResult, SeedResult
from hpspec.search import (
    PRUNED,
    importance,
    plan_brackets,
    pruned_at,
    ranked,
    run_brackets,
    rungs,
    search_document,
    search_table,
    successive_halving,
    trials,
)
from hpspec.spec import build

SPACE = hp.space(lr=hp.loguniform(1e-3, 1.0), layers=hp.intrange(1, 3),
                 act=hp.choice(["relu", "tanh"]), wd=hp.uniform(0.0, 0.1), hidden=16)


@pytest.mark.parametrize("make", [hp.random, hp.sobol])
def test_trials_are_deterministic_in_range_and_rounded(make):
    a = trials(make(SPACE, trials=20, seed=3), "w")
    assert a == trials(make(SPACE, trials=20, seed=3), "w")
    assert a != trials(make(SPACE, trials=20, seed=4), "w")
    assert [label for label, _ in a] == [f"t{i:02d}" for i in range(20)]
    for _, p in a:
        assert set(p) == {"lr", "layers", "act", "wd"}  # hidden is fixed, not searched
        assert 1e-3 <= p["lr"] <= 1.0 and p["lr"] == float(f"{p['lr']:.3g}")
        assert p["layers"] in (1, 2, 3) and p["act"] in ("relu", "tanh")
        assert 0.0 <= p["wd"] <= 0.1
    # log scale: about half the draws below the geometric middle (0.0316)
    low = sum(p["lr"] < 10 ** -1.5 for _, p in a)
    assert 4 <= low <= 16
    assert {p["layers"] for _, p in a} == {1, 2, 3}


def test_search_cells_have_readable_stable_ids_and_fixed_values():
    def fn(case):
        return None

    exp = build(hp.experiment(search=hp.random(SPACE, trials=12, seed=0), epochs=2,
                              data=hp.datasets.digits())(fn))
    assert len(exp.cells) == 12 and exp.axes == ("lr", "layers", "act", "wd")
    c = exp.cells[7]
    assert c.id.startswith("t07-lr=") and "-layers=" in c.id and "hidden" not in c.id
    assert c.get("hidden") == 16
    assert len({c.id for c in exp.cells}) == 12


def _result(cid, params, accs, seeds=(0,), pruned=None):
    return CellResult("e", cid, params, "cpu", tuple(
        SeedResult(seed=s, curves={"val_acc": list(a), "val_loss": [1 - x for x in a]},
                   measurements={PRUNED: float(pruned)} if pruned else {})
        for s, a in zip(seeds, accs, strict=True)))


def test_importance_finds_the_hyperparameter_that_matters():
    s = hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0), act=hp.choice(["relu", "tanh"])),
                  trials=12, seed=0, metric="val_acc")
    params, results = {}, {}
    for i, (label, p) in enumerate(trials(s, "w")):
        cid = f"{label}"
        params[cid] = p
        results[cid] = _result(cid, p, [[0.5, 0.9 if p["act"] == "relu" else 0.6 + 0.001 * i]])
    imp = dict(importance(s, results, params))
    assert imp["act"] > 0.9 and imp["lr"] < imp["act"]


def test_found_is_judged_on_fresh_seeds_only_and_says_so():
    def fn(case):
        return None

    claim = hp.found(hp.metric("val_acc").final() >= 0.9, seeds=2)
    cmp = hp.compare(hp.metric("val_acc").final(), higher="found", than={"lr": 0.001}, seeds=3)
    exp = build(hp.experiment(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)),
                                               trials=3, seed=0, metric="val_acc"),
                              epochs=2, data=hp.datasets.digits(), claims=[claim, cmp])(fn))
    ids = [c.id for c in exp.cells]
    # in the search, trial 1 looks best (0.99, a lucky seed); on fresh seeds it is 0.85
    results = {ids[0]: _result(ids[0], {}, [[0.8]]), ids[1]: _result(ids[1], {}, [[0.99]]),
               ids[2]: _result(ids[2], {}, [[0.7]], )}
    assert claim.best(exp, results) == [ids[1]]
    seeds = claim.fresh_seeds(exp)
    assert seeds == (1000, 1001) and not set(seeds) & set(exp.seeds)
    fresh = {ids[1]: _result(ids[1], {}, [[0.85], [0.86]], seeds=seeds)}
    v = claim.judge_fresh(exp, results, fresh, 0.05)
    assert v.outcome == FAIL and "fresh seeds [1000, 1001] only" in v.message
    fresh = {ids[1]: _result(ids[1], {}, [[0.95], [0.96]], seeds=seeds)}
    assert claim.judge_fresh(exp, results, fresh, 0.05).outcome == PASS
    base = cmp.baseline_cell(exp)
    assert base.id == "baseline-lr=0.001"
    s3 = cmp.fresh_seeds(exp)
    fresh = {ids[1]: _result(ids[1], {}, [[0.95], [0.96], [0.955]], seeds=s3),
             base.id: _result(base.id, {}, [[0.80], [0.82], [0.81]], seeds=s3)}
    v = cmp.judge_fresh(exp, results, fresh, 0.05)
    assert v.outcome == PASS and "best found" in v.message and "fresh seeds" in v.message


def _table_search(trials, pruned_from):
    """A halving search's experiment of ``trials`` trials and made-up results: trial i
    scores 0.5 + 0.05 i, and those from ``pruned_from`` on are pruned at epoch 1."""
    def fn(case):
        return None

    exp = build(hp.experiment(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)),
                                               trials=trials, seed=0, metric="val_acc",
                                               halving=hp.halving(metric="val_acc")),
                              epochs=9, data=hp.datasets.digits())(fn))
    results = {}
    for i, c in enumerate(exp.cells):
        pr = 1 if i >= pruned_from else None
        results[c.id] = _result(c.id, c.as_dict(), [[0.5 + 0.05 * i] * (1 if pr else 9)],
                                pruned=pr)
    return exp, results


def test_search_table_shows_top_trials_and_pruned_count():
    exp, results = _table_search(8, pruned_from=4)
    text = search_table(exp, results, top=3)
    lines = text.splitlines()
    assert "sorted by val_acc (higher is better)" in lines[0]
    assert exp.cells[3].id in lines[2]  # best finished trial first, pruned ones after
    assert "... 5 more trial(s) not shown; 4 pruned in all" in text
    # the pruned trials score higher (0.7..0.85) than every finished one yet rank after them:
    # the header says so rather than only "sorted by val_acc"
    assert "sorted by val_acc (higher is better), pruned trials after finished ones by the " \
        "epoch they reached; successive halving" in lines[0]
    unpruned = {c: attrs.evolve(r, seeds=tuple(attrs.evolve(
        x, measurements={k: v for k, v in x.measurements.items() if k != PRUNED})
        for x in r.seeds)) for c, r in results.items()}
    assert "pruned trials after" not in search_table(exp, unpruned, top=3).splitlines()[0]


def test_successive_halving_ranks_all_trials_together_with_a_fake_trainer():
    """Pure: trials ranked at each rung over the whole search; pruned ones cut and marked;
    survivors' final results are the full runs; a trial that ends within a rung is finished."""
    full = {c: [0.1 * i + 0.01 * e for e in range(1, 9)] for i, c in enumerate("abcdefgh")}
    epochs = {c: 8 for c in full}
    epochs["a"] = 2  # ends at the first rung: finished, never ranked
    calls = []

    def train(targets):
        (stop_at,) = set(targets.values())  # one bracket: one target per call
        calls.append((tuple(targets), stop_at))
        n = stop_at or 8
        return {c: _result(c, {}, [full[c][:min(n, epochs[c])]]) for c in targets}

    log = []
    out = successive_halving(hp.halving(min_epochs=2, eta=2, metric="val_acc"),
                                       epochs, train, log)
    assert calls[0] == (tuple("abcdefgh"), 2)
    assert calls[1] == (("h", "g", "f"), 4)  # 7 ranked at epoch 2 -> 3 kept, best first
    assert calls[2] == (("h",), None)
    assert len(calls) == 3  # one survivor left: it trains to the end, no more rungs
    assert {c: pruned_at(r) for c, r in out.items()} == {
        "a": None, "b": 2, "c": 2, "d": 2, "e": 2, "f": 4, "g": 4, "h": None}
    assert out["g"].seeds[0].curves["val_acc"] == full["g"][:4]
    assert out["h"].seeds[0].curves["val_acc"] == full["h"]
    assert log[0].startswith("halving at epoch 2: 7 trial(s) ranked on val_acc across all")


def test_halving_prunes_across_stacked_groups_and_survivors_equal_unpruned_runs():
    """Through the session: trials with different batch sizes train in different stacked
    groups, yet are ranked together; a survivor's curves are bit for bit its unpruned run's,
    a pruned trial keeps its curve so far and is shown as pruned at its rung."""
    torch = pytest.importorskip("torch")
    from hpspec.engine.runner import run_cell

    def recipe(case):
        model = hp.models.mlp(64, [16], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    space = hp.space(lr=hp.loguniform(1e-3, 1.0), batch_size=hp.choice([32, 128]))
    exp = build(hp.experiment(search=hp.random(
        space, trials=6, seed=1, halving=hp.halving(min_epochs=1, eta=2, metric="val_acc")),
        epochs=4, seeds=2, data=hp.datasets.digits(n_train=300))(recipe))
    assert len({c.get("batch_size") for c in exp.cells}) == 2  # two stacked groups at least
    s = session_with(exp, cache="off")
    first = s.result("k", exp, exp.cells[0])
    got = {c.id: s.results[("k", c.id)] for c in exp.cells}
    assert got[exp.cells[0].id] is first
    stopped = {cid: pruned_at(r) for cid, r in got.items()}
    # rungs at epochs 1 and 2 over all 6 trials: 6 -> 3 -> 1
    assert sorted(v for v in stopped.values() if v) == [1, 1, 1, 2, 2]
    pruned_sizes = {got[c].params["batch_size"] for c, v in stopped.items() if v}
    assert len(pruned_sizes) == 2  # pruning reached both groups
    for c in exp.cells:
        plain = run_cell(exp, c, "cpu")  # unpruned, one by one
        for a, b in zip(got[c.id].seeds, plain.seeds, strict=True):
            n = stopped[c.id] or 4
            assert len(a.curves["val_loss"]) == n and a.seed == b.seed
            for k in a.curves:
                assert list(a.curves[k]) == pytest.approx(list(b.curves[k][:n]), abs=1e-6)
    text = search_table(exp, got)
    assert "pruned at epoch 1" in text and "pruned at epoch 2" in text
    assert any("across all groups" in line for line in s.notes["k"])


def test_html_shows_a_search_by_hyperparameter_on_log_axes_and_only_the_best_curves():
    from hpspec.html import render_html
    from hpspec.report import CellRecord, run_document
    from hpspec.search import search_document

    def fn(case):
        return None

    space = hp.space(lr=hp.loguniform(1e-3, 1.0), width=hp.intrange(10, 20))
    exp = build(hp.experiment(search=hp.random(space, trials=8, seed=0, metric="val_acc",
                                               halving=hp.halving(metric="val_acc")),
                              epochs=9, data=hp.datasets.digits())(fn))
    results, records = {}, []
    for i, c in enumerate(exp.cells):
        pr = 1 if i >= 4 else None
        results[c.id] = _result(c.id, c.as_dict(), [[0.5 + 0.05 * i] * (1 if pr else 9)],
                                pruned=pr)
        records.append(CellRecord(exp.name, c.id, c.as_dict(), "passed", results[c.id]))
    info = search_document(exp, results, top=2)
    assert info["log"] == ["lr"] and info["metric"] == "val_acc" and len(info["pruned"]) == 4
    assert info["best"] == [exp.cells[3].id, exp.cells[2].id]
    doc = run_document([("k", exp.name, exp.axes, records, [])], {}, {"k": {"search": info}})
    html = render_html(doc)
    assert "lr (log scale)" in html and "val_acc (final) by width" in html
    assert "width (log scale)" not in html  # an int range sampled linearly stays linear
    assert "best 2 of 8 trials by val_acc" in html
    legend = html.split('class="legend-key">', 1)[1].split("</div>", 1)[0]
    assert exp.cells[3].id in legend and exp.cells[0].id not in legend
    plain = render_html(run_document([("k", exp.name, exp.axes, records, [])], {}))
    assert "best 2 of 8" not in plain  # without the search field: the grid layout


def _narrow(case):
    """The search tests' recipe: a narrow digits MLP, SGD at the trial's lr."""
    import torch

    model = hp.models.mlp(64, [8], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)


@pytest.mark.parametrize("schedule, pruned", [
    (hp.halving(min_epochs=1, eta=2, metric="val_acc"), 2),
    # 2 brackets of 2 trials: one pruned in the first, none in the second
    (hp.hyperband(min_epochs=1, eta=2, metric="val_acc"), 1)], ids=["halving", "hyperband"])
def test_a_halving_search_run_again_is_served_from_the_cache_pruned_trials_included(
        tmp_path, monkeypatch, schedule, pruned):
    pytest.importorskip("torch")
    from hpspec.engine import runner

    exp = build(hp.experiment(search=hp.random(
        hp.space(lr=hp.loguniform(1e-3, 1.0), batch_size=hp.choice([32, 128])), trials=4,
        seed=2, halving=schedule),
        epochs=2, data=hp.datasets.digits(n_train=200))(_narrow))

    def session():
        return session_with(exp, store_path=tmp_path / "r.sqlite")

    first = session()
    first.result("k", exp, exp.cells[0])
    before = {c.id: first.results[("k", c.id)] for c in exp.cells}
    assert sum(pruned_at(r) is not None for r in before.values()) == pruned

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(runner, "run_stacked", no_training)
    monkeypatch.setattr(runner, "run_cell", no_training)
    again = session()
    for c in exp.cells:
        r = again.result("k", exp, c)
        assert pruned_at(r) == pruned_at(before[c.id])
        assert [list(x.curves["val_acc"]) for x in r.seeds] == [
            list(x.curves["val_acc"]) for x in before[c.id].seeds]


def test_a_halving_search_stopped_half_way_keeps_the_trials_it_decided(tmp_path, monkeypatch):
    """Ctrl-C after the first rung: the trials pruned there were saved as they were decided,
    so the next run serves them from the cache, retrains only the rest, and ends where an
    uninterrupted search ends."""
    pytest.importorskip("torch")
    from hpspec.session import Session

    exp = build(hp.experiment(search=hp.random(
        hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=8, seed=3,
        halving=hp.halving(min_epochs=1, eta=2, metric="val_acc")),
        epochs=4, data=hp.datasets.digits(n_train=200))(_narrow))
    whole = session_with(exp, cache="off")
    whole.result("k", exp, exp.cells[0])
    expected = {c.id: whole.results[("k", c.id)] for c in exp.cells}
    first_rung = {c for c, r in expected.items() if pruned_at(r) == 1}
    assert len(first_rung) == 4

    real = Session._train_to
    calls: list[set[str]] = []

    def stop_at_the_second_rung(self, key, exp_, cells, cached, targets, report):
        calls.append(set(targets))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, key, exp_, cells, cached, targets, report)

    monkeypatch.setattr(Session, "_train_to", stop_at_the_second_rung)
    with pytest.raises(KeyboardInterrupt):
        session_with(exp, store_path=tmp_path / "r.sqlite").result("k", exp, exp.cells[0])
    monkeypatch.setattr(Session, "_train_to", real)

    trained: list[str] = []
    real_trials = Session._train_trials

    def counting(self, key, exp_, cells, *a, **k):
        trained.extend(c.id for c in cells)
        return real_trials(self, key, exp_, cells, *a, **k)

    monkeypatch.setattr(Session, "_train_trials", counting)
    again = session_with(exp, store_path=tmp_path / "r.sqlite")
    again.result("k", exp, exp.cells[0])
    assert first_rung.isdisjoint(trained) and set(trained) == set(expected) - first_rung
    assert "(4 served from the cache, 4 trained" in " ".join(again.notes["k"])
    for cid, r in expected.items():
        got = again.results[("k", cid)]
        assert pruned_at(got) == pruned_at(r)
        assert got.seeds[0].curves["val_acc"] == pytest.approx(r.seeds[0].curves["val_acc"])


# ------------------------------------------------------------------------------ Hyperband


def test_brackets_are_planned_deterministically_with_li_et_al_shares():
    h = hp.hyperband(min_epochs=1, eta=3)
    assert rungs(h, 9) == [1, 3] and rungs(h, 3) == [1] and rungs(h, 1) == []
    ids = [f"t{i:02d}" for i in range(27)]
    plan = plan_brackets(h, dict.fromkeys(ids, 9))
    assert plan == plan_brackets(h, dict.fromkeys(ids, 9))  # the same plan every time
    # shares eta**s / (s + 1) for s = 2, 1, 0 rankings: 3 : 1.5 : 1 of 27 trials
    assert [len(b.trials) for b in plan] == [15, 7, 5]
    assert [b.rungs for b in plan] == [(1, 3), (3,), ()]
    # contiguous blocks in trial order, every trial in exactly one bracket
    assert [t for b in plan for t in b.trials] == ids
    assert plan[1].describe() == "bracket 1: 7 trial(s) t15..t21, ranked at epoch 3"
    assert plan[2].describe().endswith("never pruned")
    # brackets=2 keeps the two that start earliest; brackets=1 is plain successive halving
    two = plan_brackets(hp.hyperband(min_epochs=1, eta=3, brackets=2), dict.fromkeys(ids, 9))
    assert [(len(b.trials), b.rungs) for b in two] == [(18, (1, 3)), (9, (3,))]
    one = plan_brackets(hp.halving(min_epochs=1, eta=3), dict.fromkeys(ids, 9))
    assert [(len(b.trials), b.rungs) for b in one] == [(27, (1, 3))]
    # few trials: at least one each, the rest by largest remainder
    few = plan_brackets(h, dict.fromkeys(ids[:4], 9))
    assert [len(b.trials) for b in few] == [2, 1, 1]


def test_hyperband_keeps_a_slow_starter_that_halving_prunes_and_found_takes_the_best():
    """Pure, with a fake trainer: trial h starts worst and ends best. Successive halving
    prunes it at the first rung; Hyperband's last bracket never prunes, so it finishes and is
    the best found across the brackets."""
    fast = {c: [0.5 + 0.01 * i + 0.001 * e for e in range(1, 10)] for i, c in enumerate("abcdefg")}
    full = {**fast, "h": [0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]}
    epochs = dict.fromkeys(full, 9)
    calls = []

    def train(targets):
        calls.append(dict(targets))
        return {c: _result(c, {}, [full[c][:stop or 9]]) for c, stop in targets.items()}

    h = hp.hyperband(min_epochs=1, eta=3, metric="val_acc")
    plan = plan_brackets(h, epochs)
    assert [b.trials for b in plan] == [tuple("abcd"), tuple("ef"), tuple("gh")]
    log: list[str] = []
    out = run_brackets(h, epochs, train, log)
    assert set(out) == set(full)
    assert pruned_at(out["h"]) is None and out["h"].seeds[0].curves["val_acc"] == full["h"]
    # bracket 0 ranks a..d at epoch 1 (keeps 1) and stops; bracket 1 ranks e, f at epoch 3
    assert {c: pruned_at(r) for c, r in out.items() if pruned_at(r)} == {
        "a": 1, "b": 1, "c": 1, "e": 3}
    # the brackets advance together: one call per round, each trial to its own target
    assert calls == [{**dict.fromkeys("abcd", 1), **dict.fromkeys("ef", 3),
                      **dict.fromkeys("gh")}, {"d": None, "f": None}]
    assert log[0].startswith("bracket 0: halving at epoch 1: 4 trial(s) ranked on val_acc")
    assert log[1].startswith("bracket 1: halving at epoch 3: 2 trial(s)")
    # plain successive halving over the same trials prunes h at epoch 1
    plain = run_brackets(hp.halving(min_epochs=1, eta=3, metric="val_acc"), epochs, train)
    assert pruned_at(plain["h"]) == 1
    # hp.found takes the best across the brackets: h, from the last bracket

    def fn(case):
        return None

    exp = build(hp.experiment(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)),
                                               trials=8, seed=0, halving=h),
                              epochs=9, data=hp.datasets.digits(),
                              claims=[hp.found(hp.metric("val_acc").final() >= 0.9)])(fn))
    ids = [c.id for c in exp.cells]
    named = {cid: attrs.evolve(out[c], cell_id=cid) for cid, c in zip(ids, "abcdefgh",
                                                                         strict=True)}
    assert exp.claims[0].best(exp, named) == [ids[7]]


def test_hyperband_through_the_session_survivors_equal_unpruned_runs_and_brackets_shown():
    """Real training: 8 trials in 3 brackets (epochs 4, min_epochs 1, eta 2), two batch sizes
    so each bracket's population trains in more than one stacked group. A survivor's curves
    equal its unpruned one-by-one run; a pruned trial keeps its curve so far; the table and
    the notes say which trial is in which bracket; the JSON lists the brackets."""
    torch = pytest.importorskip("torch")
    from hpspec.engine.runner import run_cell

    def recipe(case):
        model = hp.models.mlp(64, [16], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    space = hp.space(lr=hp.loguniform(1e-3, 1.0), batch_size=hp.choice([32, 128]))
    exp = build(hp.experiment(search=hp.random(
        space, trials=8, seed=1, halving=hp.hyperband(min_epochs=1, eta=2, metric="val_acc")),
        epochs=4, seeds=2, data=hp.datasets.digits(n_train=300))(recipe))
    ids = [c.id for c in exp.cells]
    s = session_with(exp, cache="off")
    s.result("k", exp, exp.cells[0])
    got = {c.id: s.results[("k", c.id)] for c in exp.cells}
    stopped = {cid: pruned_at(r) for cid, r in got.items()}
    # shares 4/3 : 1 : 1 of 8 -> brackets of 3, 3, 2 trials ranked at (1, 2), (2,), ()
    assert [b.trials for b in plan_brackets(exp.search.halving, dict.fromkeys(ids, 4))] == [
        tuple(ids[:3]), tuple(ids[3:6]), tuple(ids[6:])]
    # bracket 0: 3 -> 1 at epoch 1 (then one left: no more ranking); bracket 1: 3 -> 1 at
    # epoch 2; bracket 2 never prunes
    assert sorted(stopped[c] for c in ids[:3] if stopped[c]) == [1, 1]
    assert sorted(stopped[c] for c in ids[3:6] if stopped[c]) == [2, 2]
    assert all(stopped[c] is None for c in ids[6:])
    for c in exp.cells:
        plain = run_cell(exp, c, "cpu")  # unpruned, one by one
        n = stopped[c.id] or 4
        for a, b in zip(got[c.id].seeds, plain.seeds, strict=True):
            assert len(a.curves["val_loss"]) == n and a.seed == b.seed
            for k in a.curves:
                assert list(a.curves[k]) == pytest.approx(list(b.curves[k][:n]), abs=1e-6)
    text = search_table(exp, got)
    assert "Hyperband eta=2, 3 brackets" in text.splitlines()[0]
    assert "bracket 1: 3 trial(s) t03..t05, ranked at epoch 2" in text
    assert "bracket 2: 2 trial(s) t06..t07, never pruned" in text
    row = next(line for line in text.splitlines() if ids[6] in line)
    assert row.split()[-2:] == ["2", "finished"]  # the bracket column
    notes = s.notes["k"]
    assert any(line.startswith("Hyperband over all 8 trials in 3 brackets") for line in notes)
    assert "Hyperband bracket 0: 3 trial(s) t00..t02, ranked at epochs 1, 2" in notes
    assert any(line.startswith("bracket 1: halving at epoch 2: 3 trial(s)") for line in notes)
    doc = search_document(exp, got)
    assert doc["brackets"][2] == {"rungs": [], "trials": list(ids[6:])}
    # the best found is the best finished trial of any bracket
    finished = [c for c in ids if stopped[c] is None]
    assert ranked(exp.search, got)[0] in finished


# ------------------------------------------------------------------------------ review fixes


def test_search_trials_never_stop_early_on_decided_within_claims():
    """A search whose only claim is "reaches ... within N epochs": its trials still train to
    each rung (and survivors to the end), so halving ranks them on curves as long as the rung,
    not on curves cut when the claim was decided (all then scored infinity)."""
    pytest.importorskip("torch")
    from hpspec.plan import stop_rule

    claim = hp.expect(hp.metric("val_acc").above(0.2).within(epochs=4))
    exp = build(hp.experiment(search=hp.random(
        hp.space(lr=hp.loguniform(1e-1, 1.0)), trials=4, seed=0,
        halving=hp.halving(min_epochs=1, eta=2, metric="val_acc")),
        epochs=4, data=hp.datasets.digits(n_train=200), claims=[claim])(_narrow))
    assert all(stop_rule(exp, c.as_dict(), False) is None for c in exp.cells)
    s = session_with(exp, cache="off")
    s.result("k", exp, exp.cells[0])
    got = {c.id: s.results[("k", c.id)] for c in exp.cells}
    for r in got.values():
        n = pruned_at(r) or 4
        assert all(len(x.curves["val_acc"]) == n for x in r.seeds)
    assert sum(pruned_at(r) is None for r in got.values()) == 1
    # the one stacking line counts groups over the rungs, not "apart by the size limit"
    line = next(n for n in s.notes["k"] if n.startswith("stacked: "))
    assert "over the halving rungs" in line and "size limit" not in line, line


def test_a_pruned_trials_claims_are_skipped_not_judged_on_its_cut_curve(pytester):
    pytester.makepyfile(exp_cut="""
        import torch
        import hpspec as hp

        @hp.experiment(
            search=hp.random(hp.space(lr=hp.loguniform(1e-2, 1.0)), trials=4, seed=0,
                             halving=hp.halving(min_epochs=1, eta=2, metric="val_acc")),
            epochs=2, data=hp.datasets.digits(n_train=100),
            claims=[hp.expect(hp.metric("val_loss").final() >= 0.0)])
        def cut(case):
            model = hp.models.mlp(64, [8], 10)
            return model, torch.optim.SGD(model.parameters(), lr=case.lr)
    """)
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider", "--hpspec-cache=off")
    # one rung at epoch 1: 4 -> 2; the 2 pruned trials' "final" would be epoch 1's value
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["*pruned at epoch 1 by successive halving: its claims are "
                                 "not judged on a cut curve*"])


def test_a_halving_search_trains_its_trials_under_the_budget_and_inference_as_a_grid_does(
        monkeypatch):
    """_train_search trains through _train_trials: --hpspec-timeout and --hpspec-inference
    reach every trial at every rung (they did not: a copy of the trainer ignored them)."""
    pytest.importorskip("torch")
    from hpspec.engine import runner

    exp = build(hp.experiment(search=hp.random(
        hp.space(lr=hp.loguniform(1e-2, 1.0)), trials=4, seed=0,
        halving=hp.halving(min_epochs=1, eta=2, metric="val_acc")),
        epochs=2, data=hp.datasets.digits(n_train=100))(_narrow))
    seen = []
    real = runner.run_cell

    def spy(*a, **k):
        seen.append((k.get("timeout"), k.get("inference")))
        return real(*a, **k)

    monkeypatch.setattr(runner, "run_cell", spy)
    s = session_with(exp, cache="off", timeout=600.0)
    s.result("k", exp, exp.cells[0])
    assert len(seen) == 6  # 4 trials to epoch 1, 2 survivors to the end
    assert set(seen) == {(600.0, False)}


def test_a_profile_keeps_found_claims_of_a_one_seed_search_they_train_fresh_seeds():
    from hpspec.spec import apply_profile

    def fn(case):
        return None

    found = hp.found(hp.metric("val_loss").final() <= 0.6, seeds=2)
    cmp = hp.compare(hp.metric("val_acc").final(), higher="found", than={"lr": 0.1}, seeds=3)
    exp = build(hp.experiment(search=hp.random(hp.space(lr=hp.loguniform(1e-2, 1.0)),
                                               trials=4, seed=1), seeds=1,
                              epochs=4, profiles={"ci": dict(batch_size=64)},
                              data=hp.datasets.digits(), claims=[found, cmp])(fn))
    assert len(exp.seeds) == 1
    profiled, notes = apply_profile(exp, "ci")
    assert profiled.claims == exp.claims, notes
    assert not any("left out" in n for n in notes)


@pytest.mark.parametrize("halving", [hp.halving(min_epochs=2, eta=2),
                                     hp.hyperband(min_epochs=2, eta=2)])
def test_a_profile_whose_epochs_fall_below_the_first_rung_is_a_spec_error(halving):
    from hpspec.spec import apply_profile

    def fn(case):
        return None

    exp = build(hp.experiment(search=hp.random(hp.space(lr=hp.loguniform(1e-2, 1.0)),
                                               trials=4, seed=1, halving=halving),
                              epochs=8, profiles={"ci": dict(epochs=2), "ok": dict(epochs=4)},
                              data=hp.datasets.digits())(fn))
    assert apply_profile(exp, "ok")[0].epochs == 4
    with pytest.raises(hp.SpecError) as info:
        apply_profile(exp, "ci")
    msg = str(info.value)
    assert "profile 'ci': search: halving: min_epochs = 2 would never prune" in msg, msg
    assert "under profile 'ci'" in msg and "epochs=3" in msg, msg


def test_search_table_says_only_the_counts_that_are_not_zero():
    exp, results = _table_search(4, pruned_from=2)
    text = search_table(exp, results, top=10)
    assert "  ... 2 pruned in all" in text and "not shown" not in text
    text = search_table(exp, {k: v for k, v in results.items() if pruned_at(v) is None}, top=1)
    assert "  ... 1 more trial(s) not shown" in text and "pruned in all" not in text


# ------------------------------------------------------- brackets advancing together (rounds)


def _old_successive_halving(h, epochs, train, log=None, at=None, prefix=""):
    """The sequential implementation before the brackets advanced together, kept verbatim
    (with its old trainer shape, ``train(ids, stop_at)``) as the reference."""
    from hpspec.search import _rung_score, mark_pruned

    lower = h.lower_is_better()
    alive = list(epochs)
    out = {}
    for e in (rungs(h, max(epochs.values(), default=0)) if at is None else at):
        if len(alive) <= 1:
            break
        got = train(list(alive), e)
        going = []
        for cid in alive:
            r = got.get(cid)
            if r is None:
                continue
            if epochs[cid] <= e or any(s.diverged is not None for s in r.seeds):
                out[cid] = r
            else:
                going.append(cid)
        keep = max(1, len(going) // h.eta)
        order = sorted(going, key=lambda c: (_rung_score(got[c], h.metric, e, lower), c))
        for cid in order[keep:]:
            out[cid] = mark_pruned(got[cid], e)
        if log is not None and going:
            log.append(f"{prefix}halving at epoch {e}: {len(going)} trial(s) ranked on "
                       f"{h.metric} across all groups, {min(keep, len(going))} kept, "
                       f"{max(0, len(going) - keep)} pruned")
        alive = order[:keep]
    if alive:
        out.update(train(list(alive), None))
    return out


def _old_run_brackets(h, epochs, train, log=None):
    """The sequential Hyperband: one bracket after the other (the reference)."""
    plan = plan_brackets(h, epochs)
    out = {}
    for b in plan:
        own = {c: epochs[c] for c in b.trials}
        if len(plan) == 1:
            out.update(_old_successive_halving(h, own, train, log))
            continue
        out.update(_old_successive_halving(h, own, train, log, at=b.rungs,
                                           prefix=f"bracket {b.index}: "))
    return out


@pytest.mark.parametrize("case", range(40))
def test_brackets_together_rank_and_prune_exactly_as_one_after_the_other(case):
    """Pure, seeded: random curves (ties included), trials with fewer epochs, trials that
    diverge, trials that fail to train, two seeds each, every eta/brackets/min_epochs mix.
    Advancing the brackets together gives the sequential results exactly (every trial's
    result, pruned epochs and curves) and the same log, in fewer trainer calls, each call
    holding a round of every bracket with one left."""
    import random as _random

    from hpspec.results import Divergence

    rng = _random.Random(case)
    eta = rng.choice([2, 3, 4])
    top = rng.choice([4, 6, 9, 12, 27])
    h = hp.hyperband(min_epochs=rng.choice([1, 2]), eta=eta, metric=rng.choice(
        ["val_acc", "val_loss"]), brackets=rng.choice([None, 1, 2]))
    n = rng.randint(3, 30)
    ids = [f"t{i:02d}" for i in range(n)]
    epochs = {c: top if rng.random() < 0.8 else rng.randint(1, top) for c in ids}
    if max(epochs.values()) <= h.min_epochs:
        epochs[ids[0]] = top = max(top, h.min_epochs + 1)
    curves = {c: [[round(rng.random(), 1) for _ in range(top)] for _ in range(2)] for c in ids}
    blows = {c: rng.randint(1, top) for c in ids if rng.random() < 0.1}
    fails = {c for c in ids if rng.random() < 0.05}

    def one(c, stop):
        n_ep = min(stop or epochs[c], epochs[c])
        seeds = []
        for s, curve in enumerate(curves[c]):
            div = blows.get(c)
            cut_at = min(n_ep, div) if div is not None else n_ep
            seeds.append(SeedResult(
                seed=s, curves={h.metric: curve[:cut_at]},
                diverged=Divergence(div, 0, "nan") if div is not None and div <= n_ep
                else None))
        return CellResult("e", c, {}, "cpu", tuple(seeds))

    old_calls = []

    def old_train(ids_, stop_at):
        old_calls.append(len(ids_))
        return {c: one(c, stop_at) for c in ids_ if c not in fails}

    new_calls = []

    def new_train(targets):
        new_calls.append(dict(targets))
        return {c: one(c, stop) for c, stop in targets.items() if c not in fails}

    old_log, new_log = [], []
    old = _old_run_brackets(h, epochs, old_train, old_log)
    new = run_brackets(h, epochs, new_train, new_log)
    assert new == old
    assert {c: pruned_at(r) for c, r in new.items()} == {
        c: pruned_at(r) for c, r in old.items()}
    assert new_log == old_log
    # the same trainings, regrouped in rounds: every trial in the first call (each
    # bracket's first rung, or its end), and with brackets fewer calls than one by one
    assert sum(len(t) for t in new_calls) == sum(old_calls)
    assert set(new_calls[0]) == set(epochs)
    plan = plan_brackets(h, epochs)
    assert len(new_calls) < len(old_calls) if len(plan) > 1 else len(new_calls) == len(
        old_calls)


def test_hyperband_through_the_session_equals_the_brackets_one_after_the_other(monkeypatch):
    """Real training, 12 trials, 3 brackets, two batch sizes: the session's search with the
    brackets together (one stacked run per round and batch size, members leaving at their
    own bracket's epoch) prunes the same trials at the same epochs as the sequential
    brackets, and every curve is the same."""
    torch = pytest.importorskip("torch")
    import hpspec.search as search_mod

    def recipe(case):
        model = hp.models.mlp(64, [16], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    space = hp.space(lr=hp.loguniform(1e-3, 1.0), batch_size=hp.choice([32, 128]))
    exp = build(hp.experiment(search=hp.random(
        space, trials=12, seed=3, halving=hp.hyperband(min_epochs=1, eta=2, metric="val_acc")),
        epochs=4, seeds=2, data=hp.datasets.digits(n_train=300))(recipe))

    def run(session):
        session.result("k", exp, exp.cells[0])
        return {c.id: session.results[("k", c.id)] for c in exp.cells}

    together = session_with(exp, cache="off")
    new = run(together)

    def sequential(h, epochs, train, log=None, final=None):
        def old_train(ids, stop_at):
            return train(dict.fromkeys(ids, stop_at))
        out = _old_run_brackets(h, epochs, old_train, log)
        for cid, result in out.items():  # (the old code knew no final: told at the end)
            final(cid, result)
        return out

    monkeypatch.setattr(search_mod, "run_brackets", sequential)
    one_by_one = session_with(exp, cache="off")
    old = run(one_by_one)
    stopped = {c: pruned_at(r) for c, r in new.items()}
    assert stopped == {c: pruned_at(r) for c, r in old.items()}
    assert sorted(set(stopped.values()), key=str) == [1, 2, None]  # pruned at both rungs
    for c in new:
        for a, b in zip(new[c].seeds, old[c].seeds, strict=True):
            assert a.seed == b.seed and a.curves.keys() == b.curves.keys()
            for k in a.curves:
                assert list(a.curves[k]) == list(b.curves[k]), (c, k)
    # the logs read the same, bracket by bracket; fewer stacked runs
    keep = ("Hyperband", "bracket ")
    assert [n for n in together.notes["k"] if n.startswith(keep)] == [
        n for n in one_by_one.notes["k"] if n.startswith(keep)]
    assert len(together.stacked_groups["k"]) < len(one_by_one.stacked_groups["k"])
    assert any(n.startswith("Hyperband over all 12 trials in 3 brackets (0 served from the "
                            "cache, 12 trained; stacked per round, the brackets together)")
               for n in together.notes["k"])
