from __future__ import annotations

import math

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


def seeded(values, seeds, name="val_acc", **params):
    ss = tuple(SeedResult(seed=s, curves={name: [v]}) for s, v in zip(seeds, values, strict=True))
    cid = "-".join(f"{k}={v}" for k, v in params.items())
    return cid, CellResult("e", cid, params, "cpu", ss)


ACC = hp.metric("val_acc").final()


def test_flagged_diverged_seed_counts_as_worst_even_with_a_finite_value():
    from hpspec.results import Divergence

    div = Divergence(2, 10, "loss 1e9")
    seeds = tuple(SeedResult(seed=i, curves={"m": [0.01]}, diverged=div if i < 3 else None)
                  for i in range(5))
    unstable = CellResult("e", "c=u", {"c": "u"}, "cpu", seeds)
    c = hp.compare(M, lower={"c": "u"}, than={"c": "s"})
    v = c.judge({"c=u": unstable, **results(cell([0.5, 0.51, 0.49, 0.52, 0.5], c="s"))}, 0.05)
    assert v.outcome != PASS
    assert "3 of 5 seeds diverged" in v.message and "diverged seeds: 3 vs 0" in v.message


def test_best_and_trend_rank_diverged_seeds_worst():
    nan = math.nan
    b = hp.best(M, cell={"lr": 1}, lower=True)
    r = results(cell([0.01, 0.02, nan, nan, nan], lr=1), cell([0.5, 0.5, 0.51, 0.49, 0.5], lr=2))
    assert b.judge(r, 0.05).outcome != PASS
    t = hp.trend(M, over="lr", increasing=True)
    assert t.judge(r, 0.05).outcome != FAIL  # lr=2's finite 0.5 is not "lower" than NaNs
    assert "diverged" in t.judge(r, 0.05).message


def test_equivalent_pass_fail_inconclusive_and_relative_margin():
    e = hp.equivalent(ACC, a={"bs": 1}, b={"bs": 2}, margin=0.01)
    same = results(seeded([0.9, 0.901, 0.899, 0.9005], range(4), bs=1),
                   seeded([0.9002, 0.9008, 0.8995, 0.9], range(4), bs=2))
    far = results(seeded([0.8, 0.801, 0.799, 0.8005], range(4), bs=1),
                  seeded([0.9002, 0.9008, 0.8995, 0.9], range(4), bs=2))
    noisy = results(seeded([0.9, 0.95, 0.85], range(3), bs=1),
                    seeded([0.9, 0.86, 0.93], range(3), bs=2))
    assert e.judge(same, 0.05).outcome == PASS
    assert e.judge(far, 0.05).outcome == FAIL
    v = e.judge(noisy, 0.05)
    assert v.outcome == INCONCLUSIVE and "seeds per cell" in v.message
    assert hp.equivalent(ACC, a={"bs": 1}, b={"bs": 2}, margin="1%").judge(
        same, 0.05).outcome == PASS
    assert hp.equivalent(ACC, a={"bs": 1}, b={"bs": 2}, margin="0.01%").judge(
        far, 0.05).outcome == FAIL


def test_equivalent_never_passes_with_a_diverged_seed():
    e = hp.equivalent(ACC, a={"bs": 1}, b={"bs": 2}, margin=0.5)
    r = results(seeded([0.9, 0.9, math.nan, 0.9], range(4), bs=1),
                seeded([0.9, 0.9, 0.9, 0.9], range(4), bs=2))
    v = e.judge(r, 0.05)
    assert v.outcome == INCONCLUSIVE and "cannot pass" in v.message


def test_noninferior_direction_margin_and_divergence():
    base = seeded([0.90, 0.91, 0.92, 0.905, 0.915], range(5), bs=2)
    slightly_worse = seeded([0.895, 0.906, 0.914, 0.9, 0.91], range(5), bs=1)
    much_worse = seeded([0.8, 0.81, 0.82, 0.805, 0.815], range(5), bs=1)
    n = hp.noninferior(ACC, {"bs": 1}, than={"bs": 2}, margin=0.02)
    assert n.judge(results(slightly_worse, base), 0.05).outcome == PASS
    assert n.judge(results(much_worse, base), 0.05).outcome == FAIL
    assert hp.noninferior(ACC, {"bs": 1}, than={"bs": 2}, margin="2%").judge(
        results(slightly_worse, base), 0.05).outcome == PASS
    # Lower-is-better read off the name: a loss 0.01 higher is within a 0.02 margin.
    loss = hp.metric("val_loss").final()
    lb = seeded([0.30, 0.31, 0.32, 0.305, 0.315], range(5), "val_loss", bs=2)
    la = seeded([0.31, 0.32, 0.33, 0.315, 0.325], range(5), "val_loss", bs=1)
    nl = hp.noninferior(loss, {"bs": 1}, than={"bs": 2}, margin=0.02)
    assert nl.judge({"a": la[1], "b": lb[1]}, 0.05).outcome == PASS
    assert hp.noninferior(loss, {"bs": 1}, than={"bs": 2}, margin=0.001).judge(
        {"a": la[1], "b": lb[1]}, 0.05).outcome == FAIL
    # A diverged seed is the worst accuracy: all five diverged cannot be non-inferior.
    dead = seeded([math.nan] * 5, range(5), bs=1)
    assert n.judge(results(dead, base), 0.05).outcome == FAIL


def _spec(claims, seeds=3, grid=None):
    def loop(case):
        yield {"val_acc": 0.5, "m": 1.0}
    hp.experiment(grid=hp.grid(**(grid or {"bs": [1, 2]})), epochs=1, seeds=seeds,
                  claims=claims, metrics=["val_acc", "m"])(loop)
    return build(loop)


def test_margins_directions_and_one_seed_compares_are_spec_errors():
    with pytest.raises(hp.SpecError, match="margin"):
        _spec([hp.equivalent(ACC, a={"bs": 1}, b={"bs": 2}, margin="one percent")])
    with pytest.raises(hp.SpecError, match="better='lower'"):
        _spec([hp.noninferior(M, {"bs": 1}, than={"bs": 2}, margin=0.1)])
    with pytest.raises(hp.SpecError, match="one seed on each side.*seeds=5"):
        _spec([hp.compare(M, lower={"bs": 1}, than={"bs": 2})], seeds=1)
    _spec([hp.noninferior(M, {"bs": 1}, than={"bs": 2}, margin=0.1, better="lower"),
           hp.equivalent(ACC, a={"bs": 1}, b={"bs": 2}, margin="1%")])


def test_compare_where_narrows_both_sides():
    c = hp.compare(M, lower={"lr": 1}, than={"lr": 2}, where={"layers": 2})
    r = results(cell([0.1, 0.1, 0.1], lr=1, layers=2), cell([0.9, 0.9, 0.9], lr=2, layers=2),
                cell([5.0, 5.0, 5.0], lr=1, layers=1))
    v = c.judge(r, 0.05)
    assert v.outcome == PASS and "layers=2" in v.claim


def test_render_gate_says_diverged_not_nan():
    from hpspec.gate import GateRow
    from hpspec.report import render_gate

    text = render_gate([GateRow("e", "lr=1", "val_loss", 0.5, math.nan, math.nan, None,
                                "val_loss +10%", True)])
    assert "nan" not in text and "diverged" in text
