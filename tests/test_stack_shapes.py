"""Stacking beyond one architecture and epoch count: cells that differ only in epochs share a
run, mixed activations share one MLP stack, other models stack through torch.func.vmap.

Every path is checked against one-by-one runs of the same cells: curves equal within a
relative 2e-4 (float32 sums in another order; observed about 1e-6)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hpspec as hp
from hpspec.engine.runner import run_cell, run_stacked
from hpspec.plan import StackGroup, stacked_note
from hpspec.spec import build

DATA = hp.datasets.digits(n_train=256)
RTOL = 2e-4


def _close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert len(a[k]) == len(b[k]), (k, a[k], b[k])
        for x, y in zip(a[k], b[k], strict=True):
            assert x == pytest.approx(y, rel=RTOL, abs=1e-6, nan_ok=True), (k, a[k], b[k])


def _equal_alone(exp, stacked):
    for cell in exp.cells:
        alone = run_cell(exp, cell, "cpu")
        for a, b in zip(alone.seeds, stacked[cell.id].seeds, strict=True):
            assert a.seed == b.seed and a.epochs_planned == b.epochs_planned
            _close(a.curves, b.curves)
            assert (a.diverged is None) == (b.diverged is None)
            assert len(b.epoch_seconds) == len(b.curves["train_loss"])


def _mlp_recipe(case):
    model = hp.models.mlp(64, [16], 10, activation=case.get("act", "relu"))
    return model, torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9)


def test_cells_differing_in_epochs_share_one_run_and_read_their_prefix():
    exp = build(hp.experiment(grid=hp.grid(lr=[0.05, 0.2], epochs=[1, 3]), seeds=2,
                              batch_size=32, data=DATA)(_mlp_recipe))
    groups: list[StackGroup] = []
    stacked, why = run_stacked(exp, list(exp.cells), "cpu", groups=groups)
    assert not why
    assert {r.seeds[0].measurements["stacked"] for r in stacked.values()} == {8.0}
    assert [(g.members, g.epochs, len(g.cells)) for g in groups] == [(8, (1, 3), 4)]
    assert stacked_note(groups, {}).startswith(
        "stacked: 4 cells in 1 group of 8 (cells x seeds as one model); epoch counts 1, 3 "
        "shared a run (each cell reads its own prefix); "), stacked_note(groups, {})
    for cell in exp.cells:
        assert len(stacked[cell.id].seeds[0].curves["val_loss"]) == exp.epochs_for(cell)
    _equal_alone(exp, stacked)


def test_a_recipe_that_reads_the_epoch_count_trains_apart_and_says_why():
    def recipe(case):
        model = hp.models.mlp(64, [16], 10)
        return model, torch.optim.SGD(model.parameters(), lr=0.3 / case.epochs)

    exp = build(hp.experiment(grid=hp.grid(epochs=[1, 3]), seeds=1, batch_size=32,
                              data=DATA)(recipe))
    groups: list[StackGroup] = []
    stacked, why = run_stacked(exp, list(exp.cells), "cpu", groups=groups)
    assert not why
    assert {r.seeds[0].measurements["stacked"] for r in stacked.values()} == {1.0}
    note = stacked_note(groups, {})
    assert note.startswith("stacked: 2 cells in 2 groups of 1 (cells x seeds as one model); "
                           "groups apart by a recipe that reads case.epochs; "), note
    assert ("trained apart from other epoch counts: its recipe depends on case.epochs "
            "(its optimizer's settings differ)") in note, note
    _equal_alone(exp, stacked)


def _hooked(kind):
    """A recipe that hooks into its training with code reading case.epochs (no setting shows
    it): ``kind`` says where."""
    def recipe(case):
        model = hp.models.mlp(64, [16], 10)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = nn.CrossEntropyLoss()
        shrink = 1 - 0.2 / case.epochs

        def decay(*_):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(shrink)

        if kind == "step post hook":
            opt.register_step_post_hook(decay)
        elif kind == "step pre hook":
            opt.register_step_pre_hook(decay)
        elif kind == "replaced step":
            step = opt.step

            def stepped(closure=None):
                out = step(closure)
                decay()
                return out

            opt.step = stepped
        elif kind == "gradient hook":
            model[0].weight.register_hook(lambda g: g * shrink)
        elif kind == "forward hook":
            model.register_forward_hook(lambda m, a, out: out * shrink)
        elif kind == "loss hook":
            loss.register_forward_hook(lambda m, a, out: out * shrink)
        return hp.Recipe(model, opt, loss=loss)

    return recipe


HOOKS = ["step post hook", "step pre hook", "replaced step", "gradient hook", "forward hook",
         "loss hook"]


@pytest.mark.parametrize("kind", HOOKS)
def test_a_recipe_with_hooks_is_not_the_same_recipe_at_another_epoch_count(kind):
    from hpspec.engine.runner import _epoch_bound

    exp = build(hp.experiment(grid=hp.grid(epochs=[2, 4]), seeds=1, batch_size=32,
                              data=DATA)(_hooked(kind)))
    why = _epoch_bound(exp, exp.cells[0], 0, "cpu", DATA.load(), 4)
    assert why is not None and why.startswith("it has hooks: its "), why


def test_whether_a_recipe_depends_on_the_epoch_count_is_asked_once_per_cell_and_seed():
    """A halving search stacks the same cells again at every rung: the answer (two builds of
    the recipe each) is remembered, not rebuilt."""
    builds = []

    def recipe(case):
        builds.append(case.epochs)
        model = hp.models.mlp(64, [16], 10)
        return model, torch.optim.SGD(model.parameters(), lr=0.05)

    exp = build(hp.experiment(grid=hp.grid(epochs=[1, 2], lr=[0.1, 0.2]), seeds=1,
                              batch_size=64, data=DATA)(recipe))
    first, _ = run_stacked(exp, list(exp.cells), "cpu")
    per_run = len(builds)
    again, _ = run_stacked(exp, list(exp.cells), "cpu")
    assert len(builds) - per_run == len(exp.cells)  # this time only the members' own builds
    assert per_run == 3 * len(exp.cells)  # own build + two to compare, the first time
    assert all(first[c.id].seeds[0].curves == again[c.id].seeds[0].curves for c in exp.cells)


@pytest.mark.parametrize("reads", ["nothing", "epochs", "params", "get", "item", "cell_id",
                                   "repr"])
def test_a_recipe_that_never_sees_the_epoch_count_is_not_built_again_to_compare(reads):
    builds = []

    def recipe(case):
        builds.append(1)
        seen = {"nothing": lambda: None, "epochs": lambda: case.epochs,
                "params": lambda: case.params, "get": lambda: case.get("epochs"),
                "item": lambda: case["epochs"], "cell_id": lambda: case.cell_id,
                "repr": lambda: repr(case)}[reads]()
        del seen
        model = hp.models.mlp(64, [16], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    exp = build(hp.experiment(grid=hp.grid(epochs=[1, 2], lr=[0.1, 0.2]), seeds=1,
                              batch_size=64, data=DATA)(recipe))
    shared, _ = run_stacked(exp, list(exp.cells), "cpu")
    # each cell's own build, plus two to compare for cells whose recipe saw the count
    assert len(builds) == len(exp.cells) * (1 if reads == "nothing" else 3)
    for c in exp.cells:  # the shared run's prefix is each cell's own run
        alone = run_cell(exp, c, "cpu").seeds[0].curves
        got = shared[c.id].seeds[0].curves
        assert got.keys() == alone.keys()
        for key in alone:
            assert got[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-6), key


def test_a_groups_probe_is_remembered_across_calls_by_what_decides_it(monkeypatch):
    from hpspec.engine import probes, stacked

    probed = []
    real = stacked._probe

    def counting(m, data, batch_size, device):
        probed.append((m.cell_id, batch_size))
        return real(m, data, batch_size, device)

    monkeypatch.setattr(stacked, "_probe", counting)
    monkeypatch.setattr(probes, "PROBE_CACHE", {})

    def recipe(case):
        model = hp.models.mlp(64, [24], 10)
        return model, torch.optim.SGD(model.parameters(), lr=case.lr, momentum=case.momentum)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.05, 0.1], momentum=[0.0, 0.9]), seeds=1,
                              batch_size=64, epochs=1, data=DATA)(recipe))
    first, _ = run_stacked(exp, list(exp.cells), "cpu")
    # one probe per momentum (its buffer is memory); the learning rate changes no figure
    assert len(probed) == 2
    again, _ = run_stacked(exp, list(exp.cells), "cpu")
    assert len(probed) == 2  # remembered: a search's next rung probes nothing again
    for c in exp.cells:
        m1, m2 = first[c.id].seeds[0].measurements, again[c.id].seeds[0].measurements
        assert m1["peak_memory"] == m2["peak_memory"] > 0
        assert m1["flops_per_sample"] == m2["flops_per_sample"] > 0
    other = build(hp.experiment(grid=hp.grid(lr=[0.05, 0.1], momentum=[0.0]), seeds=1,
                                batch_size=32, epochs=1, data=DATA)(recipe))
    run_stacked(other, list(other.cells), "cpu")
    assert len(probed) == 3 and probed[-1][1] == 32  # another batch size: probed anew


def _session_like(exp):
    """Each cell's result as the session trains it: stacked where it can, else one by one."""
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    return {c.id: stacked.get(c.id) or run_cell(exp, c, "cpu") for c in exp.cells}, why


@pytest.mark.parametrize("kind", ["step post hook", "loss hook"])
def test_cells_with_an_epoch_dependent_hook_train_apart_and_equal_separate_runs(kind):
    recipe = _hooked(kind)
    exp = build(hp.experiment(grid=hp.grid(epochs=[2, 4]), seeds=1, batch_size=32,
                              data=DATA)(recipe))
    got, why = _session_like(exp)
    assert set(why) == {"epochs=2", "epochs=4"}, why  # each trained one by one, saying why
    assert all("hooks" in w for w in why.values()), why
    for epochs in (2, 4):
        alone = build(hp.experiment(grid=hp.grid(epochs=[epochs]), seeds=1, batch_size=32,
                                    data=DATA)(recipe))
        separate = run_cell(alone, alone.cells[0], "cpu")
        _close(separate.seeds[0].curves, got[f"epochs={epochs}"].seeds[0].curves)
    # the hook's behaviour depends on case.epochs: a shared run's prefix would differ
    short, long_ = (got[f"epochs={e}"].seeds[0].curves["train_loss"] for e in (2, 4))
    assert short != long_[:2]


def test_mixed_activations_share_one_stack_on_both_gradient_paths():
    # relu/tanh/sigmoid: hand-written gradients; with gelu: autograd
    for acts in (["relu", "tanh", "sigmoid"], ["relu", "gelu"]):
        exp = build(hp.experiment(grid=hp.grid(lr=[0.05, 0.1], act=acts), epochs=2, seeds=1,
                                  batch_size=32, data=DATA)(_mlp_recipe))
        stacked, why = run_stacked(exp, list(exp.cells), "cpu")
        assert not why
        assert {r.seeds[0].measurements["stacked"] for r in stacked.values()} == {
            2.0 * len(acts)}
        _equal_alone(exp, stacked)


def test_mixed_activation_gradients_equal_autograd():
    from hpspec.engine.stacked import _Stacked

    torch.manual_seed(0)
    models = [hp.models.mlp(6, [5, 4], 3, activation=a)
              for a in ("relu", "relu", "tanh", "sigmoid")]
    models += [nn.Sequential(nn.Linear(6, 5), act, nn.Linear(5, 4), act, nn.Linear(4, 3))
               for act in (nn.LeakyReLU(0.1), nn.Identity())]
    manual, reference = _Stacked(models, "cpu"), _Stacked(models, "cpu")
    assert manual.backward is not None
    reference.backward = None
    x, y = torch.randn(6, 7, 6), torch.randint(0, 3, (6, 7))
    l1, g1 = manual.loss_and_grads(x, y, "ce")
    l2, g2 = reference.loss_and_grads(x, y, "ce")
    torch.testing.assert_close(l1, l2)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)
    # into momentum buffers (beta * buffer + gradient, in place), as SGD's plain path asks
    bufs = [torch.randn_like(p) for p in manual.params]
    expected = [0.9 * b + g for b, g in zip(bufs, g2, strict=True)]
    _, g3 = manual.loss_and_grads(x, y, "ce", into=bufs, beta=0.9)
    assert all(a is b for a, b in zip(g3, bufs, strict=True))
    for a, b in zip(g3, expected, strict=True):
        torch.testing.assert_close(a, b)
    # and each member's slice is its own model's gradient
    for k, m in enumerate(models):
        loss = nn.functional.cross_entropy(m(x[k]), y[k])
        ref = torch.autograd.grad(loss, [m[0].weight])[0]
        torch.testing.assert_close(g1[0][k], ref.t())


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_the_buffered_step_equals_the_plain_hand_written_one(loss):
    """Kept buffers per batch size (a full and a last, shorter batch, then a full one again),
    padded widths and mixed activations: the same losses and gradients as the step that
    allocates its own, and the gradients handed out are never the buffers of a later step."""
    from hpspec.engine.stacked import _Stacked

    torch.manual_seed(0)
    models = [hp.models.mlp(6, [w, 4], 3, activation=a)
              for w, a in ((5, "relu"), (7, "relu"), (5, "tanh"), (7, "sigmoid"))]
    buffered, plain = _Stacked(models, "cpu"), _Stacked(models, "cpu")
    assert buffered.chained and buffered.masks is not None
    plain.chained = False
    handed: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    for rows in (7, 3, 7):
        x = torch.randn(4, rows, 6)
        y = torch.randint(0, 3, (4, rows)) if loss == "ce" else torch.randn(4, rows, 3)
        l1, g1 = buffered.loss_and_grads(x, y, loss)
        l2, g2 = plain.loss_and_grads(x, y, loss)
        torch.testing.assert_close(l1, l2, rtol=0, atol=0)
        for a, b in zip(g1, g2, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        handed.append((g1, [g.clone() for g in g1]))
    for grads, copies in handed:
        assert all(torch.equal(a, b) for a, b in zip(grads, copies, strict=True))
    # a model with an activation that follows an activation keeps the plain step
    chain = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Tanh(), nn.Linear(5, 3))
    assert not _Stacked([chain], "cpu").chained


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.inp, self.fc, self.out = nn.Linear(64, width), nn.Linear(width, width), nn.Linear(
            width, 10)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(h + torch.relu(self.fc(self.norm(h))))


class Branchy(nn.Module):
    """Data-dependent control flow: vmap cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)


MODELS = {
    "cnn": lambda: nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1),
                                 nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10)),
    "residual-layernorm": lambda: Residual(16),
    "batchnorm": lambda: nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                       nn.Linear(16, 10)),
    "dropout": lambda: hp.models.mlp(64, [16], 10, dropout=0.3),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_beyond_mlps_stack_through_vmap_and_equal_their_runs(name):
    def recipe(case):
        model = MODELS[name]()
        return model, torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.05, 0.1]), epochs=2, seeds=2, batch_size=32,
                              data=DATA)(recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert not why
    assert {r.seeds[0].measurements["stacked"] for r in stacked.values()} == {4.0}
    _equal_alone(exp, stacked)


def _adam_mlp():
    return hp.models.mlp(64, [16], 10, activation="tanh")


@pytest.mark.parametrize("name", ["mlp", "cnn", "batchnorm", "dropout"])
def test_stopped_members_leave_the_stack_and_the_others_train_on_unchanged(name, monkeypatch):
    """Cells of 1 and 3 epochs share a run; after epoch 1 the short ones leave the stack
    (their rows of weights, buffers, optimizer state and generators dropped) and the long
    ones' curves still equal their own runs."""
    from hpspec.engine import stacked as st

    make = _adam_mlp if name == "mlp" else MODELS[name]

    def recipe(case):
        model = make()
        opt = (torch.optim.AdamW(model.parameters(), lr=case.lr, weight_decay=0.1)
               if name == "mlp" else torch.optim.SGD(model.parameters(), lr=case.lr,
                                                       momentum=0.9))
        return model, opt

    sizes: list[int] = []
    real = st._engine

    def spy(*args, **kwargs):
        engine = real(*args, **kwargs)
        keep = engine.keep

        def kept(idx):
            sizes.append(len(idx))
            keep(idx)

        engine.keep = kept
        return engine

    monkeypatch.setattr(st, "_engine", spy)
    exp = build(hp.experiment(grid=hp.grid(lr=[0.01, 0.05], epochs=[1, 3]), seeds=2,
                              batch_size=32, data=DATA)(recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert not why
    assert {r.seeds[0].measurements["stacked"] for r in stacked.values()} == {8.0}
    assert sizes == [4], sizes  # the four 1-epoch members left after epoch 1
    _equal_alone(exp, stacked)


def test_batchnorm_members_keep_their_own_running_statistics():
    from hpspec.engine.stacked import Member, _per_cell_loss, _stacked_optimizer
    from hpspec.engine.vmapped import FuncEngine

    torch.manual_seed(0)
    models = [MODELS["batchnorm"]() for _ in range(2)]
    members = [Member("c", i, m, torch.optim.SGD(m.parameters(), lr=0.1), None)
               for i, m in enumerate(models)]
    engine = FuncEngine(members, "cpu", lambda p, g: _stacked_optimizer("sgd", p, g),
                        _per_cell_loss, "ce", "classification")
    x = torch.randn(2, 8, 64)
    x[1] += 3.0  # member 1's batch only
    engine.step(x, torch.randint(0, 10, (2, 8)))
    means = engine.buffers["1.running_mean"]
    assert not torch.equal(means[0], means[1])
    alone = MODELS["batchnorm"]()
    alone.load_state_dict(models[0].state_dict())
    alone(x[0])  # a training-mode forward moves its statistics as the stack moved member 0's
    torch.testing.assert_close(alone[1].running_mean, means[0])


def test_a_diverging_vmap_member_leaves_the_others_alone():
    def recipe(case):
        model = MODELS["cnn"]()
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.1, 1e4], epochs=[2, 3]), seeds=1,
                              batch_size=32, data=DATA)(recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert not why
    assert stacked["lr=10000.0-epochs=3"].seeds[0].diverged is not None
    _equal_alone(exp, stacked)  # the calm ones, short and long, equal their own runs


def test_a_diverging_activation_slice_and_an_early_stop_leave_the_others_alone():
    from hpspec.plan import stop_rule

    exp = build(hp.experiment(
        grid=hp.grid(lr=[0.1, 1e4], act=["relu", "tanh"]), epochs=3, seeds=1, batch_size=32,
        data=DATA,
        claims=[hp.where(lr=0.1, act="tanh").expect(
            hp.metric("train_loss").below(10.0).within(epochs=3))])(_mlp_recipe))
    rules = {c.id: stop_rule(exp, c.as_dict(), False) for c in exp.cells}
    stacked, _ = run_stacked(exp, list(exp.cells), "cpu", stop_rules=rules)
    assert len(stacked["lr=0.1-act=tanh"].seeds[0].curves["train_loss"]) == 1  # stopped early
    for cid in ("lr=10000.0-act=relu", "lr=10000.0-act=tanh"):
        assert stacked[cid].seeds[0].diverged is not None
    for cell in exp.cells:
        if cell.id == "lr=0.1-act=relu":
            _close(run_cell(exp, cell, "cpu").seeds[0].curves,
                   stacked[cell.id].seeds[0].curves)


def test_a_model_vmap_cannot_run_trains_one_by_one_with_the_reason():
    def recipe(case):
        model = Branchy()
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.1, 0.2]), epochs=1, seeds=1,
                              data=DATA)(recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert stacked == {}
    assert all("vmap could not run the model" in w for w in why.values()), why


def test_modules_with_different_settings_do_not_share_a_vmap_stack():
    class Scaled(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.fc, self.scale = nn.Linear(64, 10), scale

        def forward(self, x):
            return self.fc(x) * self.scale

    def recipe(case):
        model = Scaled(case.scale)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    exp = build(hp.experiment(grid=hp.grid(scale=[0.5, 2.0]), epochs=2, seeds=1,
                              data=DATA)(recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert not why
    assert {r.seeds[0].measurements["stacked"] for r in stacked.values()} == {1.0}
    _equal_alone(exp, stacked)


# ------------------------------------------------------------------------- mixed widths


def _width_recipe(case):
    model = hp.models.mlp(64, [case.hidden] * case.get("layers", 1), 10,
                          activation=case.get("act", "relu"))
    if case.get("opt") == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=case.lr / 10, weight_decay=0.1)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9, weight_decay=1e-3)
    return model, opt


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_mixed_widths_share_one_padded_stack_and_equal_their_runs(opt):
    # sigmoid(0) = 0.5 and softplus(0) = log 2: a padded unit's activation is not 0, so this
    # fails unless the weights out of padded units stay exactly zero (gradient masks)
    # (narrow enough that padding pays on a CPU too, see PAD_SLACK)
    exp = build(hp.experiment(grid=hp.grid(hidden=[4, 8, 12], lr=[0.05, 0.2],
                                           act=["sigmoid", "softplus"]),
                              fixed={"layers": 2, "opt": opt}, epochs=2, seeds=1,
                              batch_size=32, data=DATA)(_width_recipe))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    assert not why
    assert {r.seeds[0].measurements["stacked"] for r in stacked.values()} == {12.0}
    # each member's size is its own, not the group's first member's
    params = {c.id: stacked[c.id].seeds[0].measurements["params"] for c in exp.cells}
    assert params["hidden=4-lr=0.05-act=sigmoid"] == 64 * 4 + 4 + 4 * 4 + 4 + 4 * 10 + 10
    assert params["hidden=12-lr=0.05-act=sigmoid"] == (64 * 12 + 12 + 12 * 12 + 12
                                                      + 12 * 10 + 10)
    _equal_alone(exp, stacked)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_padded_weights_gradients_and_optimizer_state_stay_exactly_zero(kind):
    from hpspec.engine.stacked import _Stacked, _stacked_optimizer

    torch.manual_seed(0)
    widths = [3, 7, 5]
    models = [hp.models.mlp(6, [h, h], 4, activation="sigmoid") for h in widths]
    model = _Stacked(models, "cpu")
    assert model.masks is not None
    group = ({"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.01,
              "nesterov": False} if kind == "sgd" else
             {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01})
    opt = _stacked_optimizer(kind, model.params, [group] * 3)
    x, y = torch.randn(3, 9, 6), torch.randint(0, 4, (3, 9))
    for _ in range(3):
        opt.train_step(model, x, y, "ce")
    state = [opt.bufs] if kind == "sgd" else [opt.m, opt.v]
    for tensors in (model.params, *state):
        for t, mask in zip(tensors, model.masks, strict=True):
            assert torch.count_nonzero(t.detach()[mask == 0]) == 0
    # and a member's gradient is its own model's, on its own (unpadded) entries
    losses, grads = model.loss_and_grads(x, y, "ce")
    for k, m in enumerate(models):
        m.load_state_dict({  # the stacked member's current weights, unpadded
            "0.weight": model.params[0][k, :, : widths[k]].t().detach(),
            "0.bias": model.params[1][k, 0, : widths[k]].detach(),
            "2.weight": model.params[2][k, : widths[k], : widths[k]].t().detach(),
            "2.bias": model.params[3][k, 0, : widths[k]].detach(),
            "4.weight": model.params[4][k, : widths[k]].t().detach(),
            "4.bias": model.params[5][k, 0].detach()})
        loss = nn.functional.cross_entropy(m(x[k]), y[k])
        ref = torch.autograd.grad(loss, [m[2].weight])[0]
        torch.testing.assert_close(losses[k], loss.detach())
        torch.testing.assert_close(grads[2][k, : widths[k], : widths[k]], ref.t())


def test_widths_pad_together_only_where_the_padding_pays():
    from hpspec.engine.stacked import Member, plan

    members = []
    for h in (256, 32, 128, 64, 32, 30):
        model = hp.models.mlp(64, [h], 10)
        members.append(Member(f"h{h}", 0, model, torch.optim.SGD(model.parameters(), lr=0.1),
                              None))
    def widths(groups):
        return sorted(sorted(members[i].model[0].out_features for i in g) for g in groups)

    # a CPU is compute-bound here: 30 and 32 pad together (6% more work), the rest apart
    groups, why = plan(members, "classification", False, 64, "cpu")
    assert not why
    assert widths(groups) == [[30, 32, 32], [64], [128], [256]]
    # a GPU's step is launch-bound: one padded stack
    assert widths(plan(members, "classification", False, 64, "cuda")[0]) == [
        [30, 32, 32, 64, 128, 256]]
    # depths never share a stack (grouping by depth measured faster than identity padding)
    deep = hp.models.mlp(64, [32, 32], 10)
    members.append(Member("deep", 0, deep, torch.optim.SGD(deep.parameters(), lr=0.1), None))
    assert len(plan(members, "classification", False, 64, "cuda")[0]) == 2


# ------------------------------------------------------------- CNNs laid out by hand (CPU)

CNNS = {
    # ReLU then max-pooling (computed as pooling then ReLU), strides, padding, bias-free
    "conv-relu-pool": lambda: nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 2, stride=2, bias=False), nn.Tanh(), nn.Flatten(), nn.Linear(24, 10)),
    # grouped and dilated convolutions, average pooling, an out-of-place activation
    "groups-dilation-avgpool": lambda: nn.Sequential(
        nn.Unflatten(1, (4, 4, 4)), nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2),
        nn.GELU(), nn.AvgPool2d(2), nn.Conv2d(6, 4, 1, groups=2), nn.Sigmoid(), nn.Flatten(),
        nn.Linear(16, 10)),
    # one input channel per group (depthwise, with and without repeating the input), then
    # a grouped convolution of several
    "depthwise": lambda: nn.Sequential(
        nn.Unflatten(1, (4, 4, 4)), nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU(),
        nn.Conv2d(4, 8, 3, groups=4), nn.Tanh(), nn.Conv2d(8, 4, 2, groups=2),
        nn.Flatten(), nn.Linear(4, 10)),
    # a linear layer into an image (gradients through the unflattening), padding, global
    # pooling, leaky ReLU, a nested Sequential, Identity and Dropout(p=0)
    "linear-into-image": lambda: nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Unflatten(1, (2, 4, 4)), nn.ZeroPad2d(1),
        nn.Sequential(nn.Conv2d(2, 3, 3), nn.LeakyReLU(0.1)), nn.Identity(),
        nn.AdaptiveAvgPool2d(1), nn.Dropout(0.0), nn.Flatten(), nn.Linear(3, 10)),
}


def _engine_of(exp, monkeypatch):
    from hpspec.engine import stacked as st

    kinds: list[str] = []
    real = st._engine

    def spy(*args, **kwargs):
        engine = real(*args, **kwargs)
        kinds.append(type(engine).__name__)
        return engine

    monkeypatch.setattr(st, "_engine", spy)
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    return stacked, why, kinds


@pytest.mark.parametrize("name", sorted(CNNS))
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_cnns_stack_laid_out_by_hand_and_equal_their_runs(name, opt, monkeypatch):
    def recipe(case):
        model = CNNS[name]()
        return model, (torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9,
                                       weight_decay=1e-3) if opt == "sgd" else
                       torch.optim.Adam(model.parameters(), lr=case.lr / 10))

    exp = build(hp.experiment(grid=hp.grid(lr=[0.05, 0.1], epochs=[1, 2]), seeds=2,
                              batch_size=32, data=DATA)(recipe))
    stacked, why, kinds = _engine_of(exp, monkeypatch)
    assert not why and kinds == ["LayeredEngine"]
    assert {r.seeds[0].measurements["stacked"] for r in stacked.values()} == {8.0}
    _equal_alone(exp, stacked)


def test_a_cnn_on_image_shaped_data_stacks_by_hand(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 2, 6, 6, generator=g)
    y = (x[:, 0, :3].mean(dim=(1, 2)) > 0).long()
    data = hp.datasets.tensors((x[:64], y[:64]), (x[64:], y[64:]))

    def recipe(case):
        model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(12, 2))
        return model, torch.optim.SGD(model.parameters(), lr=case.lr)

    exp = build(hp.experiment(grid=hp.grid(lr=[0.1, 0.3]), epochs=2, seeds=2, batch_size=16,
                              data=data)(recipe))
    stacked, why, kinds = _engine_of(exp, monkeypatch)
    assert not why and kinds == ["LayeredEngine"]
    _equal_alone(exp, stacked)


def test_cnns_the_hand_layout_does_not_compute_go_to_vmap(monkeypatch):
    from hpspec.engine import layered

    def recipe(case):
        model = CNNS["conv-relu-pool"]() if case.kind == "plain" else nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(72, 10))
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    exp = build(hp.experiment(grid=hp.grid(kind=["plain", "batchnorm"]), epochs=1, seeds=2,
                              batch_size=32, data=DATA)(recipe))
    _, why, kinds = _engine_of(exp, monkeypatch)
    assert not why and sorted(kinds) == ["FuncEngine", "LayeredEngine"]  # BatchNorm: vmap
    # a stack whose output differs from its members' own models is not trained by hand
    monkeypatch.setattr(layered._Flatten, "forward",
                        staticmethod(lambda ctx, h, k: torch.zeros(k, h.shape[0], 24)))
    stacked, why, kinds = _engine_of(exp, monkeypatch)
    assert not why and kinds == ["FuncEngine", "FuncEngine"]
    _equal_alone(exp, stacked)


def test_hand_laid_out_cnn_gradients_equal_each_members_own():
    from hpspec.engine.layered import LayeredEngine
    from hpspec.engine.stacked import Member, _per_cell_loss

    torch.manual_seed(0)
    models = [CNNS["conv-relu-pool"]() for _ in range(3)]
    members = [Member("c", i, m, torch.optim.SGD(m.parameters(), lr=0.1), None)
               for i, m in enumerate(models)]
    seen: list[list[torch.Tensor]] = []

    class Spy:
        def __init__(self, params, groups):
            pass

        def step(self, grads):
            seen.append(grads)

    engine = LayeredEngine(members, "cpu", Spy, _per_cell_loss, "ce", "classification",
                           torch.randn(2, 64))
    x, y = torch.randn(3, 5, 64), torch.randint(0, 10, (3, 5))
    x[:, :, :8] = 0.0  # rows whose first pooled windows tie at zero after the ReLU
    losses = engine.step(x, y)
    for k, m in enumerate(models):
        loss = nn.functional.cross_entropy(m(x[k]), y[k])
        own = torch.autograd.grad(loss, list(m.parameters()))
        torch.testing.assert_close(losses[k], loss.detach())
        for a, b in zip(seen[0], own, strict=True):
            torch.testing.assert_close(a[k], b)


def _net(twice: bool, buffer: int, wrap: bool = False):
    class Net(nn.Module):  # one name and repr, two forwards and buffers
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 64)
            self.out = nn.Linear(64, 10)
            self.register_buffer("table", torch.zeros(buffer))

        def forward(self, x):
            h = self.fc(x)
            if twice:
                h = self.fc(h)
            return self.out(h)

    return nn.Sequential(Net()) if wrap else Net()


def test_a_remembered_probe_is_not_served_to_another_class_or_buffer_of_one_repr(monkeypatch):
    """Two model classes of one name (two experiment files each with its own ``Net``, a
    notebook cell run again) print the same repr and have the same parameters: the second's
    FLOPs and bytes are its own, not the first's; so are a model's with bigger buffers."""
    from hpspec.engine import probes, stacked
    from hpspec.engine.stacked import Member

    monkeypatch.setattr(probes, "PROBE_CACHE", {})
    data = DATA.load()

    def probe(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return stacked._probe_once(Member("c", 0, model, opt, None), data, 32, "cpu")

    once, twice, wide = probe(_net(False, 4)), probe(_net(True, 4)), probe(_net(False, 4096))
    assert repr(_net(False, 4)) == repr(_net(True, 4)) == repr(_net(False, 4096))
    assert twice["flops_per_sample"] > once["flops_per_sample"]
    inner = probe(_net(False, 4, wrap=True)), probe(_net(True, 4, wrap=True))  # (a submodule)
    assert inner[1]["flops_per_sample"] > inner[0]["flops_per_sample"]
    assert wide["param_bytes"] > once["param_bytes"]


def test_a_remembered_epoch_answer_is_not_served_to_the_function_declared_again(monkeypatch):
    """One function declared again (a test, a notebook) with other fixed values: whether its
    recipe depends on the epoch count may change with them, so the first declaration's answer
    is not the second's (cell ids name only the grid's axes)."""
    from hpspec.engine import runner

    monkeypatch.setattr(runner, "_BOUND_ANSWERS", __import__("weakref").WeakKeyDictionary())

    def recipe(case):
        model = hp.models.mlp(64, [16], 10)
        return model, torch.optim.SGD(model.parameters(), lr=0.05,
                                      weight_decay=case.scale * 1e-3 * case.epochs)

    def bound(scale):
        exp = build(hp.experiment(grid=hp.grid(epochs=[1, 2]), fixed=dict(scale=scale),
                                  seeds=1, batch_size=64, data=DATA)(recipe))
        return runner._epoch_bound(exp, exp.cells[0], 0, "cpu", DATA.load(), 2)

    assert bound(0.0) is None  # no weight decay whatever the count
    assert bound(1.0) is not None  # weight decay by the count: bound to it
