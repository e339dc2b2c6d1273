"""A run pays for what it uses, once: no compiler import, versions read once, the store
closed with its log folded in, linear bookkeeping, and a recorded, keyed thread count."""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import hpspec as hp
from hpspec.report import CellRecord
from hpspec.results import CellResult, SeedResult
from hpspec.session import Session
from hpspec.spec import build
from hpspec.threads import SMALL_WORK, choose_threads, parse_threads, threads_key

LOOP_CELL = textwrap.dedent("""
    import sys, torch
    import hpspec as hp
    from hpspec.spec import build
    from hpspec.engine.runner import run_cell

    @hp.experiment(grid=hp.grid(lr=[0.1]), epochs=2)
    def loop(case):
        w = torch.zeros(3, requires_grad=True)
        for _ in range(2):
            loss = ((w - 1) ** 2).sum()
            loss.backward()
            with torch.no_grad():
                w -= case.lr * w.grad
            yield {"loss": loss.item()}

    exp = build(loop)
    result = run_cell(exp, exp.cells[0], "cpu", seeds=(0, 1, 2))
    print(len(result.seeds), [m for m in ("torch._dynamo", "torch._inductor") if m in sys.modules])
""")


def test_hpspecs_own_seeding_imports_no_compiler():
    # torch.use_deterministic_algorithms, which torch_state called after every seed, imports
    # torch._inductor and torch._dynamo (seconds on a small CPU). A loop-mode cell, whose
    # training is the user's own, now trains without them. (torch.optim's step() imports
    # torch._dynamo itself, in hpspec as in any plain training script; see the README.)
    out = subprocess.run([sys.executable, "-c", LOOP_CELL], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "3 []", out.stdout


RECIPE_CELLS = textwrap.dedent("""
    import sys, torch
    import hpspec as hp
    from hpspec.spec import build
    from hpspec.engine.runner import run_cell, run_stacked

    @hp.experiment(grid=hp.grid(lr=[0.05, 0.1], opt=["sgd", "adam"]), epochs=2,
                   data=hp.datasets.iris())
    def recipe(case):
        model = hp.models.mlp(4, [8], 3)
        make = torch.optim.SGD if case.opt == "sgd" else torch.optim.Adam
        return model, make(model.parameters(), lr=case.lr)

    exp = build(recipe)
    alone = run_cell(exp, exp.cells[0], "cpu", seeds=(0,))
    stacked, why = run_stacked(exp, list(exp.cells), "cpu")
    print(len(alone.seeds), len(stacked), "torch._dynamo" in sys.modules)
    opt = torch.optim.SGD(hp.models.mlp(4, [8], 3).parameters(), lr=0.1)
    print("torch._dynamo" in sys.modules)
""")


def test_recipe_runs_import_no_compiler_and_leave_torch_as_it_was():
    # Building and stepping torch.optim optimizers imports torch._dynamo (about 1.3 s) through
    # torch's _disable_dynamo wrappers; hpspec's recipe runs, alone and stacked, skip that
    # import. Afterwards torch is as before: the next optimizer built outside a run imports
    # the compiler as torch always does.
    out = subprocess.run([sys.executable, "-c", RECIPE_CELLS], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "4", "False", "True"], out.stdout


def _twin_models(kind):
    import torch

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    b = copy.deepcopy(a)
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
            "adam": lambda p: torch.optim.Adam(p, lr=0.01),
            "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
            "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01)}[kind]
    return a, make(a.parameters()), b, make(b.parameters())


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw", "rmsprop"])
def test_the_plain_optimizer_step_equals_step(kind):
    # hpspec steps torch's optimizers through their inner step (engine.compiler): the same
    # parameters, bit for bit, and the grad mode put back.
    import torch

    from hpspec.engine.compiler import plain_step, step_plainly

    a, opt_a, b, opt_b = _twin_models(kind)
    inner = plain_step(opt_b)
    assert inner is not None
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    for _ in range(3):
        for model, opt, step in ((a, opt_a, lambda o: o.step()),
                                 (b, opt_b, lambda o: step_plainly(o, inner))):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            step(opt)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert opt_a.state_dict()["state"].keys() == opt_b.state_dict()["state"].keys()
    assert torch.is_grad_enabled()


def test_an_optimizer_with_step_hooks_steps_as_it_is():
    import torch

    from hpspec.engine.compiler import optimizer_step, plain_step

    _, _, model, opt = _twin_models("sgd")
    assert plain_step(opt) is not None
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    assert plain_step(opt) is None
    torch.nn.functional.mse_loss(model(torch.randn(4, 5)), torch.randn(4, 2)).backward()
    optimizer_step(opt)
    assert calls == ["pre", "post"]


def test_a_step_replaced_on_the_instance_is_called():
    # opt.step = ... (the user's own step, e.g. clipping first) runs, one by one as stacked
    import torch

    from hpspec.engine.compiler import optimizer_step, plain_step, replaced_step

    _, _, model, opt = _twin_models("sgd")
    calls = []
    orig = opt.step

    def step(*args, **kwargs):
        calls.append("user")
        return orig(*args, **kwargs)

    opt.step = step
    assert replaced_step(opt) and plain_step(opt) is None
    torch.nn.functional.mse_loss(model(torch.randn(4, 5)), torch.randn(4, 2)).backward()
    optimizer_step(opt)
    assert calls == ["user"]


def test_an_lr_schedulers_own_step_wrapper_is_not_a_users_step():
    # torch's LRScheduler sets opt.step on the instance to note the optimizer stepped: that is
    # not the user's step; stepping plainly still notes it (no "scheduler before optimizer"
    # warning) and gives the parameters opt.step() gives.
    import warnings

    import torch

    from hpspec.engine.compiler import optimizer_step, plain_step, replaced_step

    a, opt_a, b, opt_b = _twin_models("sgd")
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=1, gamma=0.5)
    assert "step" in vars(opt_b) and not replaced_step(opt_b)
    assert plain_step(opt_b) is not None
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            for model, opt, sched, step in ((a, opt_a, sched_a, lambda o: o.step()),
                                            (b, opt_b, sched_b, optimizer_step)):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                step(opt)
                sched.step()
    assert opt_b._opt_called
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_deterministic_flags_changed_by_a_run_are_put_back():
    import torch

    from hpspec.engine.runner import torch_state

    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    with torch_state(0):
        torch._C._set_deterministic_algorithms(not before[0], warn_only=True)
    assert (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled()) == before


def test_package_versions_are_read_once(monkeypatch):
    import importlib.metadata

    from hpspec.engine import runner

    calls = []
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: calls.append(n) or real(n))
    runner.package_version.cache_clear()
    spec = hp.datasets.digits()
    keys = {runner.data_digest(spec) for _ in range(50)}
    assert len(keys) == 1 and calls == ["scikit-learn"]


def test_closing_the_store_folds_the_wal_in(tmp_path):
    from hpspec.store import Store

    path = tmp_path / "r.sqlite"
    writer, reader = Store.open(path), Store.open(path)  # a second process, say
    run = writer.begin_run({"device": "cpu"})
    for i in range(20):
        writer.put_seed(run, f"k{i}", "e", "c", {"lr": 0.1}, "cpu",
                        SeedResult(seed=i, curves={"train_loss": [1.0]}))
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 0
    writer.close()
    assert not wal.exists() or wal.stat().st_size == 0
    reader.close()
    assert sqlite3.connect(path).execute("SELECT count(*) FROM seeds").fetchone()[0] == 20


def test_the_session_closes_its_store(pytester):
    pytester.makepyfile(exp_tiny="""
        import torch
        import hpspec as hp

        @hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, data=hp.datasets.digits(n_train=64))
        def tiny(case):
            model = hp.models.mlp(64, [8], 10)
            return model, torch.optim.SGD(model.parameters(), lr=case.lr)
    """)
    closed = []
    from hpspec import store

    real = store.Store.close

    def spy(self):
        closed.append(self.path)
        real(self)

    store.Store.close = spy
    try:
        pytester.runpytest_inprocess("--hpspec-store=s.sqlite").assert_outcomes(passed=1)
    finally:
        store.Store.close = real
    assert [p.name for p in closed] == ["s.sqlite"]


# ------------------------------------------------------------------------- linear steps


def _grid(n: int):
    @hp.experiment(grid=hp.grid(lr=[round(1e-4 * (i + 1), 6) for i in range(n)]), epochs=1,
                   data=hp.datasets.digits(), claims=[hp.expect(~hp.diverges())])
    def big(case):
        raise AssertionError("never trained here")

    return big


def _collect_and_stack(n: int, monkeypatch) -> float:
    """Build the grid (what collection does per experiment) and run the plugin's stacked
    bookkeeping over all its cells with training replaced by ready-made results."""
    from hpspec.engine import runner
    from hpspec.plan import StackGroup

    def fake_run_stacked(exp, cells, device, seeds=None, progress=None, stop_rules=None,
                         groups=None, threads="auto"):
        seed = SeedResult(seed=0, curves={"train_loss": [1.0]}, measurements={"stacked": 8.0})
        if groups is not None:  # the summary's line is built over every cell too
            groups.append(StackGroup(exp.batch_size_for(cells[0]), 8,
                                     tuple(c.id for c in cells)))
        return {c.id: CellResult(exp.name, c.id, c.as_dict(), device, (seed,))
                for c in cells}, {}

    monkeypatch.setattr(runner, "run_stacked", fake_run_stacked)
    t0 = time.perf_counter()
    exp = build(_grid(n))
    state = Session(device_option="cpu", table="none", cache="off", device="cpu")
    key = "exp_big.py::big"
    state.records[key] = {c.id: CellRecord(exp.name, c.id, c.as_dict(), order=i)
                          for i, c in enumerate(exp.cells)}
    state.wanted[key] = {c.id for c in exp.cells}
    state._train_stacked(key, exp, exp.cells[0], None)
    assert len(state.results) == n
    return time.perf_counter() - t0


def test_collection_and_stacked_bookkeeping_grow_linearly(monkeypatch):
    # Quadratic steps (the grid's duplicate check, the claims' value lists, the stacked
    # result loop) made 10,000 cells 80x slower than 1,000; linear ones stay near 10x. The
    # best of three runs each, and a generous bound, so a loaded machine does not decide.
    small = min(_collect_and_stack(1_000, monkeypatch) for _ in range(3))
    large = min(_collect_and_stack(10_000, monkeypatch) for _ in range(2))
    assert large / small < 25, (small, large)


def test_duplicate_grid_values_still_caught_by_type_and_value():
    from hpspec.errors import SpecError

    @hp.experiment(grid=hp.grid(x=[1, 2.5, True, "one"]), epochs=1)
    def distinct(case):
        yield {"loss": 1.0}

    assert len(build(distinct).cells) == 4

    @hp.experiment(grid=hp.grid(x=[1, 1.0]), epochs=1)
    def equal(case):
        yield {"loss": 1.0}

    with pytest.raises(SpecError, match="two cells with equal values"):
        build(equal)

    @hp.experiment(grid=hp.grid(x=[0.5, 2, 0.5]), epochs=1)
    def twice(case):
        yield {"loss": 1.0}

    with pytest.raises(SpecError, match="lists 0.5 twice"):
        build(twice)


# ------------------------------------------------------------------------------- threads


def test_thread_rule():
    assert choose_threads("auto", "cpu", SMALL_WORK - 1, 2) == 1
    assert choose_threads("auto", "cpu", SMALL_WORK, 2) == 2
    assert choose_threads("auto", "cpu", None, 4) == 4
    assert choose_threads("auto", "cuda:0", 10, 8) == 8
    assert choose_threads(3, "cpu", 10, 8) == 3
    assert parse_threads("AUTO") == "auto" and parse_threads(" 2 ") == 2
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="auto or a positive whole number"):
            parse_threads(bad)


def test_cache_key_differs_by_thread_setting():

    @hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, data=hp.datasets.digits())
    def keyed(case):
        raise AssertionError

    exp = build(keyed)
    keys = {str(t): Session(device_option="cpu", table="none", threads=t, device="cpu")
            .seed_key(exp, exp.cells[0], 0) for t in ("auto", 1, 2)}
    assert len(set(keys.values())) == 3
    assert threads_key("auto", 2) != threads_key("auto", 1) != threads_key(1, 1)


def test_threads_option_reaches_the_environment_and_the_seeds(pytester):
    pytester.makepyfile(exp_tiny="""
        import torch
        import hpspec as hp

        @hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, data=hp.datasets.digits(n_train=64))
        def tiny(case):
            model = hp.models.mlp(64, [8], 10)
            return model, torch.optim.SGD(model.parameters(), lr=case.lr)
    """)
    result = pytester.runpytest_subprocess("--hpspec-threads=3", "--hpspec-cache=off",
                                           "--hpspec-json=run.json")
    result.assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "run.json").read_text())
    assert doc["environment"]["threads"] == "3"
    seeds = doc["experiments"][0]["cells"][0]["result"]["seeds"]
    assert [s["measurements"]["threads"] for s in seeds] == [3.0]


def test_bad_threads_ini_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nhpspec_threads = many\n")
    result = pytester.runpytest("--collect-only")
    result.stderr.fnmatch_lines(["*hpspec-threads='many' must be auto or a positive whole*"])
