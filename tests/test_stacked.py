"""Stacked training of compatible cells: same results as one by one, fallbacks, early stop."""

from __future__ import annotations

import pytest
import torch

import hpspec as hp
from hpspec.engine.runner import run_cell, run_stacked
from hpspec.plan import stop_rule, timing_claim
from hpspec.spec import build

DATA = hp.datasets.digits(n_train=400)


def _close(a, b, rtol=2e-4):
    assert a.keys() == b.keys()
    for k in a:
        assert len(a[k]) == len(b[k]), k
        for x, y in zip(a[k], b[k], strict=True):
            assert x == pytest.approx(y, rel=rtol, abs=1e-6), (k, a[k], b[k])


def _stacked_equals_sequential(exp, device="cpu", rtol=2e-4):
    """Every cell of ``exp`` stacked, and each seed's curves equal to its one-by-one run."""
    stacked, why = run_stacked(exp, list(exp.cells), device)
    assert not why and set(stacked) == {c.id for c in exp.cells}, why
    for cell in exp.cells:
        for a, b in zip(run_cell(exp, cell, device).seeds, stacked[cell.id].seeds, strict=True):
            assert a.seed == b.seed
            _close(a.curves, b.curves, rtol=rtol)
    return stacked


OPTIMIZERS = {
    "sgd": lambda p, c: torch.optim.SGD(p, lr=c.lr),
    "momentum": lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=0.5, nesterov=True,
                                            dampening=0.0),
    "dampening": lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=0.8, dampening=0.3),
    "adam": lambda p, c: torch.optim.Adam(p, lr=c.lr / 30, betas=(0.8, 0.99), weight_decay=1e-3),
    "adamw": lambda p, c: torch.optim.AdamW(p, lr=c.lr / 30, weight_decay=0.05),
}


@pytest.mark.slow
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_stacked_cells_equal_their_sequential_runs(opt):
    def recipe(case):
        model = hp.models.mlp(64, [32, 16], 10, activation=case.act)
        return model, OPTIMIZERS[opt](model.parameters(), case)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.03, 0.1, 0.2], act=["relu", "tanh"]),
                              epochs=3, seeds=2, batch_size=32, data=DATA)(recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert not why and set(stacked) == {c.id for c in exp.cells}
    for cell in exp.cells:
        alone = run_cell(exp, cell, "cpu")
        for a, b in zip(alone.seeds, stacked[cell.id].seeds, strict=True):
            assert a.seed == b.seed
            _close(a.curves, b.curves)
            _close({k: [v] for k, v in a.initial.items()}, {k: [v] for k, v in b.initial.items()})
            assert b.measurements["stacked"] == 12.0  # both activations share one stack
            for key in ("params", "flops_per_sample"):
                assert b.measurements[key] == a.measurements[key]


def test_a_diverging_cell_does_not_disturb_the_others():
    def recipe(case):
        model = hp.models.mlp(64, [16], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.1, 1e4]), epochs=3, seeds=1,
                              data=DATA)(recipe))
    stacked, _ = run_stacked(exp, list(exp.cells), "cpu")
    wild = stacked["lr=10000.0"].seeds[0]
    assert wild.diverged is not None and wild.diverged.epoch == 1
    assert len(wild.curves["train_loss"]) == 1  # stopped, as when trained alone
    calm_alone = run_cell(exp, exp.cells[0], "cpu").seeds[0]
    _close(calm_alone.curves, stacked["lr=0.1"].seeds[0].curves)
    assert run_cell(exp, exp.cells[1], "cpu").seeds[0].diverged == wild.diverged


class Custom(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda c: (hp.models.mlp(64, [8], 10), "rmsprop"), "not a plain SGD, Adam or AdamW"),
        (lambda c: (nn.Sequential(nn.Linear(64, 8), nn.Dropout1d(0.2), nn.Linear(8, 10)), None),
         "Dropout1d"),
        (lambda c: (hp.models.mlp(64, [8], 10), "scheduler"), "scheduler"),
        (lambda c: (hp.models.mlp(64, [8], 10), "smooth"), "the loss"),
    ],
)
def test_recipes_that_cannot_stack_are_left_sequential_with_a_reason(make, reason):
    def recipe(case):
        model, extra = make(case)
        if extra == "rmsprop":
            return model, torch.optim.RMSprop(model.parameters(), lr=case.lr)
        opt = torch.optim.SGD(model.parameters(), lr=case.lr)
        if extra == "scheduler":
            return hp.Recipe(model, opt, scheduler=torch.optim.lr_scheduler.StepLR(opt, 1))
        if extra == "smooth":
            return hp.Recipe(model, opt, loss=torch.nn.CrossEntropyLoss(label_smoothing=0.1))
        return model, opt

    exp = build(hp.experiment(grid=hp.grid(lr=[0.1, 0.2]), epochs=1, seeds=2,
                              data=DATA)(recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert stacked == {}
    assert set(why) == {c.id for c in exp.cells}
    assert all(reason in w for w in why.values()), why


def test_cells_with_different_architectures_form_separate_groups():
    # (widths 8 and 256: padding the narrow ones would cost more than a group on a CPU;
    # widths that pad cheaply share one stack, see tests/test_stack_shapes.py)
    def recipe(case):
        model = hp.models.mlp(64, [case.width], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    exp = build(hp.experiment(grid=hp.grid(width=[8, 256], lr=[0.1, 0.2]), epochs=1,
                              data=DATA)(recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert not why
    assert {r.seeds[0].measurements["stacked"] for r in stacked.values()} == {2.0}


def test_timing_claims_keep_an_experiment_sequential():
    def recipe(case):
        model = hp.models.mlp(64, [8], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    grid = hp.grid(lr=[0.1, 0.2])
    plain = build(hp.experiment(grid=grid, epochs=1, data=DATA,
                                claims=[hp.expect(hp.peak_memory() < "1 GiB")])(recipe))
    assert timing_claim(plain) is None
    for claim in (hp.expect(hp.throughput() > 1), hp.trend(hp.epoch_time(), over="lr"),
                  hp.expect(hp.metric("val_loss").below(9).within(epochs=1, seconds=5))):
        exp = build(hp.experiment(grid=grid, epochs=1, data=DATA, claims=[claim])(recipe))
        assert timing_claim(exp) is not None


def test_stop_rule_only_for_within_claims_and_stops_when_decided():
    def recipe(case):
        model = hp.models.mlp(64, [8], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    grid = hp.grid(lr=[0.1, 0.2])
    within = hp.where(lr=0.1).expect(hp.metric("val_acc").above(0.5).within(epochs=4))
    exp = build(hp.experiment(grid=grid, epochs=10, data=DATA, claims=[within])(recipe))
    rule = stop_rule(exp, {"lr": 0.1}, full_curves=False)
    assert rule is not None
    assert not rule({"val_acc": [0.2, 0.3]})
    assert rule({"val_acc": [0.2, 0.6]})  # reached: decided pass
    assert rule({"val_acc": [0.2, 0.3, 0.3, 0.4]})  # epoch 4 passed: decided fail
    assert stop_rule(exp, {"lr": 0.2}, full_curves=False) is None  # no claim: full curve
    assert stop_rule(exp, {"lr": 0.1}, full_curves=True) is None
    final = hp.where(lr=0.1).expect(hp.metric("val_acc").final() > 0.5)
    both = build(hp.experiment(grid=grid, epochs=10, data=DATA,
                               claims=[within, final])(recipe))
    assert stop_rule(both, {"lr": 0.1}, full_curves=False) is None
    cross = build(hp.experiment(grid=grid, epochs=10, data=DATA, seeds=3, claims=[
        within, hp.compare(hp.metric("val_loss"), lower={"lr": 0.1}, than={"lr": 0.2})])(recipe))
    assert stop_rule(cross, {"lr": 0.1}, full_curves=False) is None


def test_early_stop_trains_fewer_epochs_and_keeps_the_verdict():
    def recipe(case):
        model = hp.models.mlp(64, [32], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    within = hp.expect(hp.metric("val_acc").above(0.5).within(epochs=8))
    exp = build(hp.experiment(grid=hp.grid(lr=[0.5]), epochs=20, data=DATA,
                              claims=[within])(recipe))
    rule = stop_rule(exp, exp.cells[0].as_dict(), full_curves=False)
    short = run_cell(exp, exp.cells[0], "cpu", stop=rule).seeds[0]
    full = run_cell(exp, exp.cells[0], "cpu").seeds[0]
    assert short.epochs_run < full.epochs_run == 20
    assert within.condition.check(short).ok == within.condition.check(full).ok is True


GRID = """
import torch
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.05, 0.3]), epochs=3, seeds=2,
               data=hp.datasets.digits(n_train=300), stack=STACK,
               claims=[hp.where(lr=0.3).expect(hp.metric("val_acc").final() > 0.6),
                       hp.compare(hp.metric("val_loss"), lower={"lr": 0.3}, than={"lr": 0.05})])
def grid(case):
    model = hp.models.mlp(64, [16], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""


def _finals(pytester, *args):
    import json

    result = pytester.runpytest("--hpspec-json=run.json", "--hpspec-cache=off", *args)
    doc = json.loads((pytester.path / "run.json").read_text())
    finals = {c["cell_id"]: [s["curves"]["val_loss"][-1] for s in c["result"]["seeds"]]
              for c in doc["experiments"][0]["cells"]}
    return result, finals


@pytest.mark.slow
def test_stacking_on_and_off_give_the_same_verdicts_and_numbers(pytester):
    pytester.makepyfile(exp_grid=GRID.replace("STACK", "True"))
    on, on_finals = _finals(pytester)
    on.assert_outcomes(passed=3)
    on.stdout.fnmatch_lines(
        ["*stacked: 2 cells in 1 group of 4 (cells x seeds as one model)*"])
    off, off_finals = _finals(pytester, "--hpspec-stack=off")
    off.assert_outcomes(passed=3)
    assert "stacked:" not in off.stdout.str()
    for cell, values in on_finals.items():
        assert values == pytest.approx(off_finals[cell], rel=1e-4)
    pytester.makepyfile(exp_grid=GRID.replace("STACK", "False"))
    spec_off, spec_finals = _finals(pytester)
    spec_off.stdout.fnmatch_lines(["*trained one by one: the experiment says stack=False*"])
    assert spec_finals == off_finals


# ---------------------------------------------------------------- the hand-written backward

from torch import nn  # noqa: E402

from hpspec.engine.stacked import _Stacked  # noqa: E402


def _models(make, k=3):
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(make())
    return out


MODELS = {
    "relu": lambda: hp.models.mlp(6, [5, 4], 3),
    "tanh-sigmoid": lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4),
                                          nn.Sigmoid(), nn.Linear(4, 3)),
    "leaky-identity-no-bias": lambda: nn.Sequential(
        nn.Linear(6, 5, bias=False), nn.LeakyReLU(0.1), nn.Identity(), nn.Linear(5, 3)),
    "activation-first": lambda: nn.Sequential(nn.ReLU(), nn.Linear(6, 5), nn.ReLU(),
                                              nn.Sigmoid(), nn.Linear(5, 3)),
    "linear": lambda: nn.Sequential(nn.Linear(6, 3)),
    "float64": lambda: hp.models.mlp(6, [5], 3).double(),
    "gelu-autograd": lambda: hp.models.mlp(6, [5], 3, activation="gelu"),
}


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_hand_written_gradients_equal_autograd(name, loss):
    models = _models(MODELS[name])
    dtype = next(models[0].parameters()).dtype
    manual, reference = _Stacked(models, "cpu"), _Stacked(models, "cpu")
    assert (manual.backward is None) == (name == "gelu-autograd")
    reference.backward = None  # force the autograd path on the same weights
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 6, generator=gen, dtype=dtype)
    y = (torch.randint(0, 3, (3, 7), generator=gen) if loss == "ce"
         else torch.randn(3, 7, 3, generator=gen, dtype=dtype))
    before = x.clone()
    l1, g1 = manual.loss_and_grads(x, y, loss)
    l2, g2 = reference.loss_and_grads(x, y, loss)
    assert torch.equal(x, before)  # the batch itself is never overwritten
    torch.testing.assert_close(l1, l2)
    assert len(g1) == len(g2) == len(manual.params)
    for a, b, p in zip(g1, g2, manual.params, strict=True):
        assert a.shape == p.shape
        torch.testing.assert_close(a, b)
    # and accumulated into buffers: buf = beta * buf + grad, in place
    bufs = [torch.ones_like(p) for p in manual.params]
    _, out = manual.loss_and_grads(x, y, loss, into=bufs, beta=0.5)
    assert all(o is b for o, b in zip(out, bufs, strict=True))
    for b, g in zip(bufs, g2, strict=True):
        torch.testing.assert_close(b, 0.5 + g)


def test_a_cells_gradient_depends_on_its_own_batch_only():
    models = _models(MODELS["relu"])
    net = _Stacked(models, "cpu")
    x, y = torch.randn(3, 4, 6), torch.randint(0, 3, (3, 4))
    _, g = net.loss_and_grads(x, y, "ce")
    x2 = x.clone()
    x2[1] += 5.0  # another batch for cell 1 only
    _, g2 = net.loss_and_grads(x2, y, "ce")
    for a, b in zip(g, g2, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
        assert not torch.equal(a[1], b[1])


def test_evaluation_leaves_the_data_alone_and_matches_each_model():
    models = _models(MODELS["activation-first"])
    net = _Stacked(models, "cpu")
    x = torch.randn(10, 6)
    before = x.clone()
    out = net(x)
    assert torch.equal(x, before)
    for k, m in enumerate(models):
        torch.testing.assert_close(out[k], m(x))


def test_evaluation_in_blocks_equals_one_block(monkeypatch):
    from hpspec.engine import stacked

    models = _models(MODELS["relu"])
    net = _Stacked(models, "cpu")
    x, y = torch.randn(50, 6), torch.randint(0, 3, (50,))
    whole = stacked._evaluate(net, x, y, 3, "ce", "classification")
    monkeypatch.setitem(stacked.EVAL_BLOCK, "cpu", 3 * 5 * 7)  # 7 rows a block
    blocks = stacked._evaluate(net, x, y, 3, "ce", "classification")
    torch.testing.assert_close(whole[0], blocks[0])
    assert torch.equal(whole[1], blocks[1])
    for k, m in enumerate(models):
        with torch.no_grad():
            out = m(x)
        assert float(blocks[0][k]) == pytest.approx(float(nn.functional.cross_entropy(out, y)),
                                                    rel=1e-5)
        assert float(blocks[1][k]) == pytest.approx(float((out.argmax(1) == y).float().mean()))


@pytest.mark.slow
@pytest.mark.parametrize("act", ["sigmoid", "leaky_relu", "gelu"])
def test_other_activations_and_mixed_momenta_equal_their_sequential_runs(act):
    def recipe(case):
        model = hp.models.mlp(64, [32], 10, activation=act)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr, momentum=case.mom,
                                      weight_decay=1e-3)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.05, 0.2], mom=[0.0, 0.9]), epochs=2, seeds=1,
                              batch_size=32, data=DATA)(recipe))
    _stacked_equals_sequential(exp)


@pytest.mark.slow
def test_regression_cells_equal_their_sequential_runs():
    def recipe(case):
        model = hp.models.mlp(10, [16], 1, activation="tanh")
        return model, torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.01, 0.03]), epochs=3, seeds=2, batch_size=16,
                              data=hp.datasets.diabetes())(recipe))
    _stacked_equals_sequential(exp)


@pytest.mark.slow
def test_a_lone_cell_trains_on_the_stacked_engine_with_its_sequential_results():
    def recipe(case):
        model = hp.models.mlp(64, [32, 32], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9,
                                      weight_decay=1e-4)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.05]), epochs=3, seeds=1, batch_size=32,
                              data=DATA)(recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert not why
    (result,) = stacked.values()
    alone = run_cell(exp, exp.cells[0], "cpu").seeds[0]
    engine = result.seeds[0]
    assert engine.measurements["stacked"] == 1.0
    _close(alone.curves, engine.curves)
    for key in ("params", "flops_per_sample", "peak_memory"):
        assert engine.measurements[key] == alone.measurements[key], key


# ------------------------------------------------------------ on a GPU (skipped without one)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_the_hand_written_step_on_cuda_equals_the_cpu(loss, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # float32 vs float32
    models = _models(MODELS["tanh-sigmoid"])
    on_cpu, on_gpu = _Stacked(models, "cpu"), _Stacked(models, "cuda")
    x = torch.randn(3, 7, 6)
    y = torch.randint(0, 3, (3, 7)) if loss == "ce" else torch.randn(3, 7, 3)
    l1, g1 = on_cpu.loss_and_grads(x, y, loss)
    l2, g2 = on_gpu.loss_and_grads(x.cuda(), y.cuda(), loss)
    torch.testing.assert_close(l1, l2.cpu(), rtol=1e-4, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@cuda
@pytest.mark.parametrize("opt", ["momentum", "adam"])
def test_stacked_cells_on_cuda_equal_their_sequential_runs(opt):
    def recipe(case):
        model = hp.models.mlp(64, [32], 10)
        return model, OPTIMIZERS[opt](model.parameters(), case)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.03, 0.1]), epochs=2, seeds=2, batch_size=32,
                              data=DATA)(recipe))
    stacked = _stacked_equals_sequential(exp, "cuda", rtol=1e-3)
    for result in stacked.values():
        for b in result.seeds:
            assert b.measurements["samples_per_s"] > 0 and "peak_memory" in b.measurements


def test_a_group_too_big_for_the_memory_trains_in_chunks(monkeypatch):
    from hpspec.engine import stacked as st

    def recipe(case):
        model = hp.models.mlp(64, [16], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.05, 0.1, 0.2]), epochs=2, seeds=2,
                              batch_size=32, data=DATA)(recipe))
    whole, _ = run_stacked(exp, list(exp.cells), "cpu")
    assert {r.seeds[0].measurements["stacked"] for r in whole.values()} == {6.0}
    # room for two members and a half, by the estimate itself
    one = st.member_bytes(st.Member("x", 0, hp.models.mlp(64, [16], 10), None, None), 32,
                          DATA.load().x_val.shape[0])
    monkeypatch.setattr(st, "_free_memory", lambda device: 2.5 * one / st.MEMORY_SHARE)
    chunked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert not why and set(chunked) == set(whole)
    assert {r.seeds[0].measurements["stacked"] for r in chunked.values()} == {2.0}
    for cid in whole:
        for a, b in zip(whole[cid].seeds, chunked[cid].seeds, strict=True):
            _close(a.curves, b.curves)


class WithExtraMethod(nn.Sequential):  # adds a method, computes what Sequential computes
    def describe(self):
        return "mlp"


class Doubled(nn.Sequential):
    def forward(self, x):
        return 2 * super().forward(x)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 0.5


def _hooked():
    m = hp.models.mlp(64, [8], 10)
    m[0].register_forward_hook(lambda mod, inp, out: out * 0)
    return m


def _frozen():
    m = hp.models.mlp(64, [8], 10)
    m[0].weight.requires_grad_(False)
    return m


def _parametrized():
    m = hp.models.mlp(64, [8], 10)
    torch.nn.utils.parametrizations.weight_norm(m[2])
    return m


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_hooked, "hook"),
        (_frozen, "frozen"),
        (_parametrized, "parametrization"),
    ],
)
def test_models_the_engine_would_compute_differently_are_not_stacked(make, reason):
    def recipe(case):
        model = make()
        return model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad]
                                      if reason == "frozen" else model.parameters(), lr=case.lr)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.1, 0.2]), epochs=1, seeds=1,
                              data=DATA)(recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert stacked == {}, "trained on the engine"
    assert all(reason in w for w in why.values()), why


@pytest.mark.slow
def test_a_sequential_subclass_that_only_adds_methods_still_stacks():
    def recipe(case):
        model = WithExtraMethod(nn.Linear(64, 8), nn.ReLU(inplace=True), nn.Linear(8, 10))
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.1, 0.2]), epochs=2, seeds=1,
                              data=DATA)(recipe))
    _stacked_equals_sequential(exp)


def test_an_in_place_activation_on_the_input_leaves_the_data_alone():
    from hpspec.engine.runner import device_data

    def recipe(case):
        model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(64, 10))
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, seeds=1, data=DATA,
                              stack=False)(recipe))
    data = device_data(exp.data, "cpu")
    before = data.x_val.clone(), data.x_train.clone()
    assert bool((before[0] < 0).any())  # there is something a ReLU would change
    run_cell(exp, exp.cells[0], "cpu")
    run_stacked(build(hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, seeds=1,
                                    data=DATA)(recipe)), list(exp.cells), "cpu")
    assert torch.equal(data.x_val, before[0]) and torch.equal(data.x_train, before[1])


@cuda
@pytest.mark.parametrize("opt", ["momentum", "adam", "nesterov"])
def test_a_stacked_step_on_cuda_never_waits_for_the_gpu(opt):
    from hpspec.engine.stacked import Member, _stacked_optimizer, signature

    models = _models(MODELS["relu"])
    optimizers = [OPTIMIZERS[opt](m.parameters(), type("C", (), {"lr": 0.1})) for m in models]
    kind = signature(Member("c", 0, models[0], optimizers[0], None),
                     "classification", False)[1]
    net = _Stacked(models, "cuda")
    step = _stacked_optimizer(kind, net.params, [o.param_groups[0] for o in optimizers])
    x, y = torch.randn(3, 7, 6, device="cuda"), torch.randint(0, 3, (3, 7), device="cuda")
    step.train_step(net, x, y, "ce")  # the first step makes the optimizer's buffers
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step.train_step(net, x, y, "ce")
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_a_cell_whose_recipe_raises_does_not_keep_the_others_from_stacking():
    def recipe(case):
        if case.lr == 0.2:
            raise ValueError("this cell is broken")
        model = hp.models.mlp(64, [8], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.05, 0.1, 0.2]), epochs=1, seeds=2,
                              data=DATA)(recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert set(stacked) == {"lr=0.05", "lr=0.1"}
    assert {r.seeds[0].measurements["stacked"] for r in stacked.values()} == {4.0}
    assert list(why) == ["lr=0.2"] and "recipe raised" in why["lr=0.2"]
    with pytest.raises(ValueError, match="this cell is broken"):
        run_cell(exp, exp.cells[2], "cpu")  # its own run says what went wrong


def test_a_large_group_is_built_and_trained_in_bounded_chunks_with_the_same_curves(monkeypatch):
    """A grid far larger than one chunk: never more than a chunk's models built at once, every
    chunk no bigger than the bound, and the curves those of one big group."""
    from hpspec.engine import stacked as st

    built = [0]

    def recipe(case):
        built[0] += 1
        model = hp.models.mlp(64, [8], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.02 * (i + 1) for i in range(7)]), epochs=2,
                              seeds=2, batch_size=64, data=DATA)(recipe))
    whole, _ = run_stacked(exp, list(exp.cells), "cpu")
    assert {r.seeds[0].measurements["stacked"] for r in whole.values()} == {14.0}

    real = st.train_group
    seen: list[tuple[int, int]] = []  # (members in this chunk, models built so far)

    def spy(group, *args, **kwargs):
        seen.append((len(group), built[0]))
        return real(group, *args, **kwargs)

    monkeypatch.setattr(st, "train_group", spy)
    monkeypatch.setattr(st, "MAX_MEMBERS", 4)
    built[0] = 0
    progress: list[tuple[int, int]] = []
    chunked, why = run_stacked(exp, list(exp.cells), "cpu",
                               progress=lambda e, n, loss: progress.append((e, n)))
    assert not why and set(chunked) == set(whole)
    assert [n for n, _ in seen] == [4, 4, 4, 2]
    # lazily: when the first chunk trains, only its cells' models exist (2 cells x 2 seeds)
    assert seen[0][1] == 4 and built[0] == 14
    # progress counts epochs across the chunks, so a long grid's line keeps moving
    assert progress[-1] == (8, 8) and len(progress) == 8
    for cid in whole:
        for a, b in zip(whole[cid].seeds, chunked[cid].seeds, strict=True):
            _close(a.curves, b.curves)


def test_a_chunk_is_sized_from_its_widest_member_not_its_first(monkeypatch):
    """A narrow first cell must not size the chunks for the wide cells that follow it."""
    from hpspec.engine import stacked as st

    narrow = st.Member("n", 0, hp.models.mlp(64, [4], 10), None, None)
    wide = st.Member("w", 0, hp.models.mlp(64, [64], 10), None, None)
    weights = sum(p.numel() for p in wide.model.parameters())
    # a step budget for two wide members at batch 32 (and some thirty narrow ones)
    monkeypatch.setitem(st.STEP_FLOPS, "cpu", 6.0 * weights * 32 * 2)
    assert st.chunk_size([narrow, wide], 32, 100, "cpu") == st.chunk_size(wide, 32, 100,
                                                                           "cpu") == 2
    assert st.chunk_size(narrow, 32, 100, "cpu") > 20

    def recipe(case):
        model = hp.models.mlp(64, [case.hidden], 10)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    exp = build(hp.experiment(grid=hp.grid(hidden=[4, 64]), epochs=1, seeds=4, batch_size=32,
                              data=DATA)(recipe))
    assert [c.as_dict()["hidden"] for c in exp.cells] == [4, 64]  # the narrow cell first
    sizes: list[int] = []
    real = st.train_group

    def spy(group, *args, **kwargs):
        sizes.append(len(group))
        return real(group, *args, **kwargs)

    monkeypatch.setattr(st, "train_group", spy)
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert not why and set(stacked) == {"hidden=4", "hidden=64"}
    assert sizes and max(sizes) <= 2, sizes  # the first member's size would allow 31


def test_equal_widths_are_one_bucket_without_padding_arithmetic(monkeypatch):
    from hpspec.engine import stacked as st

    members = [st.Member(f"c{i}", 0, hp.models.mlp(64, [32, 32], 10), None, None)
               for i in range(64)]
    calls = [0]
    real = st._shapes

    def counted(m):
        calls[0] += 1
        return real(m)

    monkeypatch.setattr(st, "_shapes", counted)
    group = list(range(63, -1, -1))
    assert st.width_buckets(group, members, 32, "cpu") == [group]  # one stack, order kept
    assert calls[0] == 64  # each member's shapes read once
    calls[0] = 0
    mixed = members + [st.Member("w", 0, hp.models.mlp(64, [256, 256], 10), None, None)]
    assert st.width_buckets(list(range(65)), mixed, 32, "cpu") == [list(range(64)), [64]]
    assert calls[0] == 65  # linear in the group, mixed widths too


def test_a_chunk_is_bounded_by_the_work_of_one_step():
    from hpspec.engine import stacked as st

    small = st.Member("a", 0, hp.models.mlp(64, [8], 10), None, None)
    big = st.Member("b", 0, hp.models.mlp(64, [2048, 2048], 10), None, None)
    assert st.chunk_size(small, 32, 100, "cpu") == st.MAX_MEMBERS
    n = st.chunk_size(big, 256, 100, "cpu")
    weights = sum(p.numel() for p in big.model.parameters())
    assert 1 <= n < st.MAX_MEMBERS and n * 6 * weights * 256 <= st.STEP_FLOPS["cpu"] or n == 1


def _zero_grads(params):
    for p in params:
        if p.grad is not None:
            p.grad.zero_()


def _zero_params(params):
    with torch.no_grad():
        for p in params:
            p.zero_()


def _replace_step(model, opt):
    orig = opt.step

    def step(*args, **kwargs):  # the user's own step: gradients cleared first
        _zero_grads(model.parameters())
        return orig(*args, **kwargs)

    opt.step = step


#: Hooks into a recipe's training, each of which stops it from learning, and the reason.
HOOKS = {
    "step pre hook": (lambda m, o: o.register_step_pre_hook(
        lambda opt, a, k: _zero_grads(m.parameters())), "its optimizer has step hooks"),
    "step post hook": (lambda m, o: o.register_step_post_hook(
        lambda opt, a, k: _zero_params(m.parameters())),
        "its optimizer has step hooks"),
    "replaced step": (_replace_step, "its optimizer's step is replaced"),
    "tensor hook": (lambda m, o: [p.register_hook(lambda g: g * 0) for p in m.parameters()],
                    "its parameters have gradient hooks"),
    "post-accumulate hook": (lambda m, o: [p.register_post_accumulate_grad_hook(
        lambda p: _zero_grads([p])) for p in m.parameters()], "its parameters have gradient hooks"),
    "forward pre hook": (lambda m, o: m[0].register_forward_pre_hook(
        lambda mod, inp: (inp[0] * 0,)), "its model has forward/backward hooks (on 0)"),
    "backward pre hook": (lambda m, o: m[-1].register_full_backward_pre_hook(
        lambda mod, g: (g[0] * 0,)), "its model has forward/backward hooks"),
}


@pytest.mark.parametrize("kind", sorted(HOOKS))
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_a_recipe_with_hooks_into_its_training_trains_alone_where_the_hooks_run(kind, arch):
    # The stacked engines compute forward, backward and the update themselves: a hook would be
    # skipped silently, so a hooked cell trains one by one, and the summary says why.
    hook, reason = HOOKS[kind]

    def recipe(case):
        model = (hp.models.mlp(64, [8], 10) if arch == "mlp" else nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(256, 10)))
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
        if case.hooked:
            hook(model, opt)
        return model, opt

    exp = build(hp.experiment(grid=hp.grid(hooked=[False, True]), epochs=2, seeds=1,
                              data=DATA)(recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert set(stacked) == {"hooked=False"} and list(why) == ["hooked=True"], why
    assert reason in why["hooked=True"]
    free = stacked["hooked=False"].seeds[0].curves["train_loss"]
    alone = run_cell(exp, exp.cells[1], "cpu").seeds[0].curves["train_loss"]
    assert free[-1] < 0.9 * alone[-1], (free, alone)  # the hook took effect


@pytest.mark.parametrize("kind", ["optimizer", "module"])
def test_torchs_global_hooks_keep_every_cell_from_stacking(kind):
    from torch.nn.modules import module as nn_module
    from torch.optim import optimizer as opt_module

    def recipe(case):
        model = hp.models.mlp(64, [8], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.1, 0.2]), epochs=1, seeds=1,
                              data=DATA)(recipe))
    handle = (opt_module.register_optimizer_step_pre_hook(lambda o, a, k: None)
              if kind == "optimizer" else
              nn_module.register_module_forward_hook(lambda m, i, o: None))
    try:
        stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    finally:
        handle.remove()
    assert stacked == {} and set(why) == {"lr=0.1", "lr=0.2"}
    assert all(("step hooks" if kind == "optimizer" else "global module") in w
               for w in why.values()), why


def test_an_lr_schedulers_step_wrapper_is_not_a_replaced_step():
    from hpspec.engine.stacked import hooks

    model = hp.models.mlp(64, [8], 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    assert "step" in vars(opt) and hooks(model, opt) is None
