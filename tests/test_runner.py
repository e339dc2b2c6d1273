from __future__ import annotations

import math
import random

import pytest
import torch

import hpspec as hp
from hpspec.engine.runner import run_cell, run_seed, select_device
from hpspec.spec import build

DATA = hp.datasets.digits(n_train=256)


def recipe(lr=0.1, **extra):
    def fn(case):
        model = hp.models.mlp(64, [32], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    return hp.experiment(grid=hp.grid(lr=[lr]), epochs=3, seeds=2, data=DATA, **extra)(fn)


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    mps = getattr(torch.backends, "mps", None)

    def machine(cuda: bool, has_mps: bool) -> str:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        if mps is not None:
            monkeypatch.setattr(mps, "is_available", lambda: has_mps)
        return select_device("auto")

    assert machine(cuda=False, has_mps=False) == "cpu"
    assert machine(cuda=True, has_mps=True) == "cuda"
    if mps is not None:
        assert machine(cuda=False, has_mps=True) == "mps"
    assert select_device("cpu") == "cpu"


def test_same_seed_gives_the_same_curve_bit_for_bit():
    e = build(recipe())
    a = run_seed(e, e.cells[0], 0, "cpu")
    b = run_seed(e, e.cells[0], 0, "cpu")
    c = run_seed(e, e.cells[0], 1, "cpu")
    assert a.curves == b.curves
    assert a.curves != c.curves


def test_results_do_not_depend_on_cell_order():
    fn = recipe()
    fn.__hpspec__ = hp.experiment(grid=hp.grid(lr=[0.05, 0.2]), epochs=2, data=DATA)(
        lambda case: None
    ).__hpspec__
    e = build(fn)
    forward = [run_cell(e, c, "cpu") for c in e.cells]
    backward = [run_cell(e, c, "cpu") for c in reversed(e.cells)][::-1]
    assert [r.seeds[0].curves for r in forward] == [r.seeds[0].curves for r in backward]


def test_global_torch_state_is_put_back():
    torch.manual_seed(1234)
    random.seed(99)
    before = (torch.get_rng_state(), random.getstate(), torch.get_num_threads(),
              torch.get_default_dtype())

    def messy(case):
        torch.set_num_threads(1)
        torch.set_default_dtype(torch.float64)
        model = hp.models.mlp(64, [8], 10).float()
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    e = build(hp.experiment(epochs=1, data=DATA)(messy))
    run_cell(e, e.cells[0], "cpu")
    after = (torch.get_rng_state(), random.getstate(), torch.get_num_threads(),
             torch.get_default_dtype())
    assert torch.equal(before[0], after[0])
    assert before[1:] == after[1:]


def test_records_curves_initial_values_and_timing():
    e = build(recipe())
    r = run_seed(e, e.cells[0], 0, "cpu")
    assert set(r.curves) == {"train_loss", "val_loss", "val_acc"}
    assert all(len(v) == 3 for v in r.curves.values())
    assert r.initial["train_loss"] == pytest.approx(math.log(10), rel=0.2)
    assert len(r.epoch_seconds) == 3 and all(s > 0 for s in r.epoch_seconds)
    m = r.measurements
    assert m["samples_per_s"] == pytest.approx(256 / m["time_per_epoch"])
    assert m["steps_per_s"] == pytest.approx(4 / m["time_per_epoch"])  # 256 / 64 steps


def test_huge_lr_is_recorded_as_diverged_and_stops():
    e = build(recipe(lr=50.0))
    r = run_seed(e, e.cells[0], 0, "cpu")
    assert r.diverged is not None
    assert r.diverged.epoch == 1 and r.diverged.step >= 1
    assert r.epochs_run == 1


def test_user_tensors_regression_with_1d_targets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5])

    def linreg(case):
        model = torch.nn.Linear(3, 1)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    e = build(hp.experiment(epochs=20, data=((x[:150], y[:150]), (x[150:], y[150:])),
                            claims=[hp.expect(hp.metric("val_loss") < 1e-3)])(linreg))
    assert e.data.task == "regression"
    r = run_seed(e, e.cells[0], 0, "cpu")
    assert r.curves["val_loss"][-1] < 1e-3


def _raises_cell_error(fn, match, **kw):
    kw.setdefault("epochs", 1)
    e = build(hp.experiment(data=DATA, **kw)(fn))
    with pytest.raises(hp.CellError, match=match):
        run_cell(e, e.cells[0], "cpu")


def test_wrong_output_width_names_the_fix():
    def f(case):
        m = hp.models.mlp(64, [8], 5)
        return m, torch.optim.SGD(m.parameters(), lr=0.1)

    _raises_cell_error(f, r"output has shape \(64, 5\) but the data has 10 classes.*"
                          r"out_features 10")


def test_non_scalar_loss_is_refused():
    def f(case):
        m = hp.models.mlp(64, [8], 10)
        loss = torch.nn.CrossEntropyLoss(reduction="none")
        return hp.Recipe(m, torch.optim.SGD(m.parameters(), lr=0.1), loss=loss)

    _raises_cell_error(f, r"loss must be a scalar tensor, got \(64,\)")


def test_returning_something_else_is_explained():
    _raises_cell_error(lambda case: "model", r"returned str, not a recipe.*\(model, optimizer\)")


def test_optimizer_must_be_an_optimizer():
    def f(case):
        m = hp.models.mlp(64, [8], 10)
        return m, 0.1

    _raises_cell_error(f, "optimizer is a float, not a torch.optim.Optimizer")


def test_out_of_memory_fails_the_cell_with_batch_size():
    class Hungry(torch.nn.Module):
        def forward(self, x):
            raise MemoryError("injected")

    def f(case):
        m = Hungry()
        return m, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    _raises_cell_error(f, r"out of memory on cpu at batch_size=64.*lower batch_size")


def test_recipe_with_scheduler_and_custom_loss():
    calls = []

    def f(case):
        m = hp.models.mlp(64, [8], 10)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

        def loss(out, y):
            calls.append(1)
            return torch.nn.functional.cross_entropy(out, y)

        return hp.Recipe(m, opt, loss=loss, scheduler=sched)

    e = build(hp.experiment(epochs=2, data=DATA)(f))
    run_cell(e, e.cells[0], "cpu")
    assert len(calls) > 8


def loop_exp(body, **kw):
    kw.setdefault("epochs", 3)
    return build(hp.experiment(grid=hp.grid(lr=[0.1]), **kw)(body))


def test_loop_mode_records_yielded_metrics_and_stops_at_epochs():
    def body(case):
        for i in range(100):
            yield {"loss": 1.0 / (i + 1), "acc": torch.tensor(0.5)}

    e = loop_exp(body)
    r = run_seed(e, e.cells[0], 0, "cpu")
    assert r.curves == {"loss": [1.0, 0.5, 1 / 3], "acc": [0.5, 0.5, 0.5]}


def test_loop_mode_nan_loss_diverges():
    def body(case):
        yield {"loss": 1.0}
        yield {"loss": float("nan")}
        yield {"loss": 0.1}

    e = loop_exp(body)
    r = run_seed(e, e.cells[0], 0, "cpu")
    assert r.diverged is not None and r.diverged.epoch == 2


def test_loop_mode_non_numbers_are_refused():
    def body(case):
        yield {"loss": "low"}

    e = loop_exp(body)
    with pytest.raises(hp.CellError, match=r"epoch 1 yielded 'loss': 'low', which is not a number"):
        run_seed(e, e.cells[0], 0, "cpu")


def test_loop_mode_declared_metric_never_yielded():
    def body(case):
        yield {"loss": 1.0}

    e = loop_exp(body, metrics=["loss", "acc"])
    with pytest.raises(hp.CellError, match=r"declared metrics \['acc'\] were never yielded"):
        run_seed(e, e.cells[0], 0, "cpu")


def test_loop_mode_gets_data_on_the_device():
    seen = {}

    def body(case):
        seen["n"] = case.data.n_train
        seen["device"] = str(case.data.x_train.device)
        yield {"loss": 1.0}

    e = loop_exp(body, data=DATA)
    run_seed(e, e.cells[0], 0, "cpu")
    assert seen == {"n": 256, "device": "cpu"}
