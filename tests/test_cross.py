from __future__ import annotations

import pytest

import hpspec as hp
from hpspec.claims import FAIL, INCONCLUSIVE, PASS
from hpspec.results import CellResult, SeedResult
from hpspec.spec import build


def cell(values, **params):
    seeds = tuple(SeedResult(seed=i, curves={"m": [v]}, measurements={"samples_per_s": v})
                  for i, v in enumerate(values))
    cid = "-".join(f"{k}={v}" for k, v in params.items())
    return cid, CellResult("e", cid, params, "cpu", seeds)


def results(*cells):
    return dict(cells)


M = hp.metric("m").final()


def test_compare_pass_fail_inconclusive():
    c = hp.compare(M, lower={"lr": 0.1}, than={"lr": 0.01})
    lo, hi, mid = [0.1, 0.12, 0.11], [0.5, 0.52, 0.49], [0.3, 0.1, 0.6]
    assert c.judge(results(cell(lo, lr=0.1), cell(hi, lr=0.01)), 0.05).outcome == PASS
    assert c.judge(results(cell(hi, lr=0.1), cell(lo, lr=0.01)), 0.05).outcome == FAIL
    v = c.judge(results(cell(mid, lr=0.1), cell([0.35, 0.2, 0.5], lr=0.01)), 0.05)
    assert v.outcome == INCONCLUSIVE
    assert ("seeds per cell would decide" in v.message or "will not decide" in v.message
            or "too small to decide within" in v.message)


def test_compare_message_gives_effect_interval_and_p():
    c = hp.compare(M, higher={"a": 1}, than={"a": 2})
    v = c.judge(results(cell([0.9, 0.92, 0.91], a=1), cell([0.5, 0.55, 0.52], a=2)), 0.05)
    assert v.outcome == PASS
    assert "a=1: 0.91 ± 0.01 over 3 seeds" in v.message
    assert "90% interval [" in v.message and "p = " in v.message


def test_compare_with_margin():
    c = hp.compare(M, lower={"x": 1}, than={"x": 2}, margin=0.5)
    # 10% lower is not "at least 50% lower": refuted
    v = c.judge(results(cell([0.9, 0.91, 0.89], x=1), cell([1.0, 1.01, 0.99], x=2)), 0.05)
    assert v.outcome == FAIL


def test_trend_every_step_must_hold():
    t = hp.trend(hp.throughput(), over="bs", increasing=True)
    up = results(cell([1, 1.1, 0.9], bs=16), cell([2, 2.1, 1.9], bs=64),
                 cell([3, 3.1, 2.9], bs=256))
    assert t.judge(up, 0.05).outcome == PASS
    dip = results(cell([1, 1.1, 0.9], bs=16), cell([3, 3.1, 2.9], bs=64),
                  cell([2, 2.1, 1.9], bs=256))
    v = t.judge(dip, 0.05)
    assert v.outcome == FAIL
    assert "bs=64 -> 256: 3 -> 2" in v.message


def test_trend_holds_other_axes_fixed():
    t = hp.trend(M, over="bs", increasing=False)
    r = results(cell([3, 3.1, 2.9], bs=16, act="relu"), cell([1, 1.1, 0.9], bs=64, act="relu"),
                cell([5, 5.1, 4.9], bs=16, act="tanh"), cell([4, 4.1, 3.9], bs=64, act="tanh"))
    assert [len(g) for g in t.groups(r)] == [2, 2]
    assert t.judge(r, 0.05).outcome == PASS


def test_best_must_beat_every_other_cell():
    b = hp.best(M, cell={"lr": 0.3})
    r = results(cell([0.9, 0.91, 0.92], lr=0.3), cell([0.5, 0.51, 0.52], lr=0.1),
                cell([0.7, 0.71, 0.72], lr=1.0))
    assert b.judge(r, 0.05).outcome == PASS
    r2 = results(cell([0.9, 0.91, 0.92], lr=0.3), cell([0.95, 0.96, 0.97], lr=0.1))
    assert b.judge(r2, 0.05).outcome == FAIL


def spec(claims, **kw):
    def f(case):
        return None

    kw.setdefault("grid", hp.grid(lr=[0.1, 0.01], layers=[1, 2]))
    return build(hp.experiment(epochs=1, data=hp.datasets.digits(), claims=claims, **kw)(f))


@pytest.mark.parametrize(
    "claim, text",
    [
        (hp.compare(hp.metric("val_los").final(), lower={"lr": 0.1}, than={"lr": 0.01}),
         "'val_los' is a metric this experiment never produces"),
        (hp.compare(hp.metric("val_loss").final(), lower={"lr": 0.3}, than={"lr": 0.01}),
         "= 0.3 matches no cell"),
        (hp.compare(hp.metric("val_loss").final(), lower={"lr": 0.1}, than={"layers": 1}),
         "selects the same cell on both sides"),
        (hp.trend(hp.throughput(), over="batch"), "over = 'batch' is not a hyperparameter"),
        (hp.best(hp.metric("val_acc").final(), cell={"lr": 0.1}),
         "must select exactly one cell, selects 2"),
        (hp.compare(hp.metric("val_loss").final(), lower={"lr": 0.1}, than={"lr": 0.01},
                    confidence=1.5), "confidence = 1.5 must be a probability"),
    ],
)
def test_cross_claim_spec_errors(claim, text):
    with pytest.raises(hp.SpecError, match=None) as info:
        spec([claim])
    assert text in str(info.value)
    assert "test_cross.py::spec.<locals>.f" in str(info.value)


def test_mean_with_confidence_claim(run):
    from hpspec.claims import judge_cell_claim

    claim = hp.expect(hp.metric("val_acc").final() >= 0.9, confidence=0.95)
    good = [run(i, val_acc=[v]) for i, v in enumerate([0.95, 0.96, 0.955, 0.958])]
    assert judge_cell_claim(claim, good).outcome == PASS
    bad = [run(i, val_acc=[v]) for i, v in enumerate([0.80, 0.82, 0.81])]
    assert judge_cell_claim(claim, bad).outcome == FAIL
    close = [run(i, val_acc=[v]) for i, v in enumerate([0.85, 0.95, 0.91])]
    v = judge_cell_claim(claim, close)
    assert v.outcome == INCONCLUSIVE and "interval" in v.message
