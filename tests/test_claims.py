from __future__ import annotations

import math

import pytest

import hpspec as hp
from hpspec.claims import FAIL, PASS, format_curve, judge_cell_claim
from hpspec.results import Divergence


def test_final_threshold_every_seed(run):
    claim = hp.expect(hp.metric("val_acc").final() >= 0.9)
    ok = judge_cell_claim(claim, [run(0, val_acc=[0.5, 0.91]), run(1, val_acc=[0.5, 0.95])])
    assert ok.outcome == PASS
    bad = judge_cell_claim(claim, [run(0, val_acc=[0.5, 0.91]), run(1, val_acc=[0.95, 0.89])])
    assert bad.outcome == FAIL
    assert "held for 1 of 2 seeds, needed 2" in bad.message


def test_at_least_k_of_n(run):
    claim = hp.expect(hp.metric("val_acc") >= 0.9, at_least=2)
    runs = [run(0, val_acc=[0.95]), run(1, val_acc=[0.5]), run(2, val_acc=[0.93])]
    assert judge_cell_claim(claim, runs).passed
    runs[2] = run(2, val_acc=[0.1])
    assert not judge_cell_claim(claim, runs).passed


@pytest.mark.parametrize(
    "quantity, expected",
    [
        (hp.metric("m").final(), 0.45),
        (hp.metric("m").min(), 0.45),
        (hp.metric("m").max(), 2.3),
        (hp.metric("m").first(), 2.3),
        (hp.metric("m").at(2), 1.1),
        (hp.metric("m").argmin(), 4.0),
        (hp.metric("m").argmax(), 1.0),
        (hp.metric("m").mean(), (2.3 + 1.1 + 0.61 + 0.45) / 4),
        (hp.metric("m").min() * 2, 0.9),
        (hp.metric("m").max() - hp.metric("m").min(), 2.3 - 0.45),
    ],
)
def test_quantities(run, quantity, expected):
    assert quantity.evaluate(run(m=[2.3, 1.1, 0.61, 0.45])) == pytest.approx(expected)


def test_at_beyond_the_run_is_not_measured(run):
    check = (hp.metric("m").at(9) < 1).check(run(m=[1.0, 0.5]))
    assert not check.ok and check.note == "not measured"


def test_below_within_epochs_and_curve_in_message(run):
    claim = hp.expect(hp.metric("val_loss").below(0.3).within(epochs=3))
    v = judge_cell_claim(claim, [run(0, val_loss=[2.30, 1.10, 0.61, 0.25])])
    assert v.outcome == FAIL
    assert "reached at epoch 4" in v.message
    assert "val_loss by epoch: 2.3 1.1 0.61 0.25 (needed < 0.3 by epoch 3)" in v.message
    assert judge_cell_claim(claim, [run(0, val_loss=[2.3, 0.2])]).passed


def test_above_never_reached(run):
    c = hp.metric("val_acc").above(0.9).check(run(val_acc=[0.1, 0.5]))
    assert not c.ok and c.note == "never above 0.9"


def test_diverges_and_not_diverges(run):
    d = run(diverged=Divergence(2, 5, "loss nan is not finite"), train_loss=[2.0, math.nan])
    calm = run(train_loss=[2.0, 1.0])
    assert hp.diverges().check(d).ok
    assert not hp.diverges().check(calm).ok
    assert hp.diverges().within(epochs=2).check(d).ok
    assert not hp.diverges().within(epochs=1).check(d).ok
    assert (~hp.diverges()).check(calm).ok
    assert not (~hp.diverges()).check(d).ok
    assert ~~hp.diverges() == hp.diverges()


def test_converges_against_the_start_before_training(run):
    good = run(initial={"train_loss": 2.3}, train_loss=[1.5, 1.0])
    slow = run(initial={"train_loss": 2.3}, train_loss=[2.2, 2.0])
    assert hp.converges().check(good).ok
    assert not hp.converges().check(slow).ok
    d = run(diverged=Divergence(1, 3, "x"), train_loss=[math.nan])
    assert not hp.converges().check(d).ok


def test_failed_claim_on_a_diverged_seed_says_so(run):
    claim = hp.expect(hp.metric("val_acc") > 0.5)
    v = judge_cell_claim(claim, [run(diverged=Divergence(1, 3, "loss nan is not finite"),
                                     val_acc=[0.1])])
    assert "diverged at epoch 1, step 3: loss nan is not finite" in v.message


def test_nan_never_satisfies_a_threshold(run):
    assert not (hp.metric("l") < 1).check(run(l=[math.nan])).ok
    assert not (hp.metric("l") > 1).check(run(l=[math.nan])).ok


def test_measure_claims(run):
    r = run(l=[1.0], measurements={"samples_per_s": 5000.0, "peak_memory": 2.0**20})
    assert (hp.throughput() > 1000).check(r).ok
    assert not (hp.peak_memory() < 2**19).check(r).ok
    assert not (hp.epoch_time() < 1).check(r).ok  # not measured -> fails, never passes


def test_where_matching():
    w = hp.where(lr=[0.1, 0.3], act="relu")
    assert w.matches({"lr": 0.3, "act": "relu"})
    assert not w.matches({"lr": 0.2, "act": "relu"})
    assert not hp.where(flag=1).matches({"flag": True})


def test_format_curve_keeps_both_ends():
    text = format_curve([float(i) for i in range(100)], limit=7)
    assert text.startswith("0 1 2 ") and text.endswith("97 98 99")
    assert "(94 more)" in text


def test_verdict_is_plain_data(run):
    import attrs

    v = judge_cell_claim(hp.expect(hp.metric("l") < 1), [run(l=[0.5])])
    d = attrs.asdict(v)
    assert d["outcome"] == "pass" and d["checks"][0]["value"] == 0.5


def test_equality_on_measurements_and_whole_number_quantities():
    import hpspec as hp
    from hpspec.results import SeedResult

    run = SeedResult(seed=0, curves={"val_loss": [0.5, 0.3, 0.4]},
                     measurements={"params": 26122.0})
    assert (hp.measure("params") == 26122).check(run).ok
    assert not (hp.measure("params") != 26122).check(run).ok
    assert (hp.metric("val_loss").argmin() == 2).check(run).ok
    # Between quantities == stays structural (claims compare and hash by it).
    assert hp.metric("a").final() == hp.metric("a").final()
    assert hp.metric("a").final() != hp.metric("a").min()
    assert len({hp.metric("a").final(), hp.metric("a").final()}) == 1


def test_equality_on_a_float_metric_is_a_spec_error():
    import hpspec as hp
    from hpspec.spec import build

    def loop(case):
        yield {"loss": 1.0}

    hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, seeds=2,
                  claims=[hp.metric("loss").final() == 0.5])(loop)
    with pytest.raises(hp.SpecError, match="rounding decides"):
        build(loop)


def test_where_cells_selects_an_explicit_list_not_the_product():
    import hpspec as hp

    w = hp.where(cells=[{"lr": 0.1, "bs": 32}, {"lr": 0.3, "bs": 256}])
    assert w.matches({"lr": 0.1, "bs": 32}) and w.matches({"lr": 0.3, "bs": 256})
    assert not w.matches({"lr": 0.1, "bs": 256})  # the product would pick this one
    assert not hp.where(lr=[0.1, 0.3], bs=[32, 256]).matches({"lr": 0.1, "bs": 64})
    assert "{lr=0.1, bs=32} or {lr=0.3, bs=256}" in w.describe()
    with pytest.raises(TypeError, match="list of dicts"):
        hp.where(cells={"lr": 0.1})


def test_where_cells_that_select_nothing_are_spec_errors():
    import hpspec as hp
    from hpspec.spec import build

    def loop(case):
        yield {"loss": 1.0}

    hp.experiment(grid=hp.grid(lr=[0.1, 0.3], bs=[32, 256]), epochs=1, seeds=2, claims=[
        hp.where(cells=[{"lr": 0.1, "bs": 32}, {"lr": 0.2, "bs": 32}]).expect(
            hp.metric("loss").final() < 2)])(loop)
    with pytest.raises(hp.SpecError, match=r"cells\[1\]"):
        build(loop)
