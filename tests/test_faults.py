"""Faults inside cells: divergence, out of memory, time budgets, user exceptions, Ctrl-C,
and isolation (global torch state, cell order)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import weakref

import pytest
import torch

import hpspec as hp
from hpspec.errors import BudgetExceeded, CellError
from hpspec.runner import run_cell
from hpspec.spec import build

FAULTS = """
import time
import torch
import hpspec as hp

class Hungry(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)
    def forward(self, x):
        if x.shape[0] == 256:  # a training batch of the big cell only
            raise MemoryError("injected: cannot allocate 2.0 GiB")
        return self.fc(x)

@hp.experiment(grid=hp.grid(batch_size=[256, 32]), epochs=1, data=hp.datasets.digits(n_train=300))
def oom(case):
    model = Hungry()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)

@hp.experiment(grid=hp.grid(lr=[0.1]), epochs=50, timeout=0.3,
               data=hp.datasets.digits(n_train=300))
def slow(case):
    model = hp.models.mlp(64, [512, 512], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)

@hp.experiment(grid=hp.grid(lr=[0.1, 0.2]), epochs=20, timeout=0.2)
def slow_loop(case):
    for epoch in range(case.epochs):
        time.sleep(0.05)
        yield {"loss": 1.0 / (epoch + 1)}

class Broken(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)
    def forward(self, x):
        return self.fc(x) + undefined_name_in_my_model

@hp.experiment(epochs=1, data=hp.datasets.digits(n_train=300))
def user_bug(case):
    model = Broken()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)

@hp.experiment(grid=hp.grid(lr=[0.1, 1e6]), epochs=3, data=hp.datasets.digits(n_train=300),
               claims=[hp.where(lr=1e6).expect(hp.diverges()),
                       hp.where(lr=0.1).expect(~hp.diverges())])
def blowup(case):
    model = hp.models.mlp(64, [16], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)

@hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, data=hp.datasets.digits(n_train=300))
def after_all_that(case):
    model = hp.models.mlp(64, [16], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""


def test_faults_fail_their_cell_and_the_session_goes_on(pytester):
    pytester.makepyfile(exp_faults=FAULTS)
    result = pytester.runpytest("--hpspec-cache=off", "-p", "no:randomly")
    out = result.stdout.str()
    result.assert_outcomes(passed=4, failed=5)
    # out of memory: batch size and memory figures, and the next cell passes
    result.stdout.fnmatch_lines([
        "*oom*batch_size=256*out of memory on cpu at batch_size=256 (seed 0): injected: "
        "cannot allocate 2.0 GiB [[]* MiB free of * MiB RAM[]]; fix: lower batch_size*",
    ])
    assert "oom[batch_size=32] PASSED" in pytester.runpytest(
        "--hpspec-cache=off", "-v", "-k", "oom").stdout.str()
    # time budgets, recipe and loop mode
    result.stdout.fnmatch_lines(["*slow[[]lr=0.1[]]: budget exceeded after * epochs: the "
                                 "cell's time budget is 0.3 s; fix: raise timeout=*"])
    assert out.count("budget exceeded after") >= 3
    # the user's own bug: their traceback and line, none of hpspec's frames
    result.stdout.fnmatch_lines(["*return self.fc(x) + undefined_name_in_my_model*",
                                 "*NameError: name 'undefined_name_in_my_model' is not defined"])
    assert "hpspec/runner.py" not in out and "hpspec/plugin.py" not in out
    # divergence: passes where claimed, and the rest runs
    assert "blowup[lr=1000000.0]" not in out.split("short test summary")[-1]


def test_budget_exceeded_is_a_cell_error_with_epochs_done():
    def slow(case):
        model = hp.models.mlp(64, [512, 512], 10)
        return model, torch.optim.SGD(model.parameters(), lr=0.01)

    # One epoch is ~1400 single-sample steps (most of a second or more): a 0.1 s budget runs
    # out inside epoch 1, so "after 0 epochs" shows it stopped between steps, not at the
    # end of an epoch (asserted on what was done, not on the clock, which load stretches).
    exp = build(hp.experiment(epochs=3, batch_size=1, timeout=0.1,
                              data=hp.datasets.digits())(slow))
    with pytest.raises(BudgetExceeded, match=r"budget exceeded after 0 epochs") as info:
        run_cell(exp, exp.cells[0], "cpu")
    assert isinstance(info.value, CellError)


def test_out_of_memory_frees_what_the_cell_held():
    held = []

    class Hoarder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            big = torch.empty(10_000_000)  # 40 MB that only the failing frame holds
            held.append(weakref.ref(big))
            raise MemoryError("injected")

    def f(case):
        model = Hoarder()
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    exp = build(hp.experiment(epochs=1, data=hp.datasets.digits(n_train=100))(f))
    with pytest.raises(CellError, match="out of memory"):
        run_cell(exp, exp.cells[0], "cpu")
    assert held and held[0]() is None


SLOW_GRID = """
import time
import torch
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.3, 0.1, 0.03, 0.01, 0.003, 0.001]), epochs=2,
               data=hp.datasets.digits(n_train=200), stack=False)
def slow_grid(case):
    time.sleep(0.6)
    model = hp.models.mlp(64, [8], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""


@pytest.mark.slow
def test_ctrl_c_keeps_finished_cells_and_prints_their_table(pytester):
    pytester.makepyfile(exp_slow=SLOW_GRID)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "exp_slow.py"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    time.sleep(0.1)
    buf = b""
    deadline = time.time() + 60
    while b".." not in buf and time.time() < deadline:  # two cells done
        buf += proc.stdout.read1(100)  # type: ignore[union-attr]
    proc.send_signal(signal.SIGINT)
    out = (buf + proc.communicate(timeout=60)[0]).decode()
    assert "KeyboardInterrupt" in out
    assert "hpspec: exp_slow.py::slow_grid" in out
    import re

    assert re.search(r"^0\.3 +passed", out, re.M) and re.search(r"^0\.1 +passed", out, re.M), out


ORDER = """
import torch
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.3, 0.1], act=["relu", "tanh"]), epochs=2, seeds=2,
               data=hp.datasets.digits(n_train=300), stack=False)
def ordered(case):
    torch.set_num_threads(1)                  # global state a cell changes ...
    torch.set_default_dtype(torch.float32)
    model = hp.models.mlp(64, [16], 10, activation=case.act, dropout=0.1)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""

REVERSE = """
def pytest_collection_modifyitems(items):
    items.reverse()
"""


def test_reversed_cell_order_gives_the_same_results(pytester):
    pytester.makepyfile(exp_order=ORDER)
    first = pytester.runpytest("--hpspec-cache=off", "--hpspec-json=forward.json", "-v")
    pytester.makeconftest(REVERSE)
    second = pytester.runpytest("--hpspec-cache=off", "--hpspec-json=reverse.json", "-v")

    def ran(result):
        return [line.split("::")[1].split(" ")[0] for line in result.stdout.lines
                if " PASSED" in line]

    assert ran(first) == list(reversed(ran(second))) and len(ran(first)) == 4

    def curves(name):
        doc = json.loads((pytester.path / name).read_text())
        return {c["cell_id"]: [s["curves"] for s in c["result"]["seeds"]]
                for c in doc["experiments"][0]["cells"]}

    assert curves("forward.json") == curves("reverse.json")  # bit for bit


def test_global_torch_state_is_restored_even_when_a_cell_fails():
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    rng = torch.get_rng_state()

    def meddler(case):
        torch.set_float32_matmul_precision("medium")
        torch.backends.cudnn.benchmark = True
        torch.set_num_threads(1)
        torch.set_default_dtype(torch.float64)
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(1234)
        raise RuntimeError("my bug")

    exp = build(hp.experiment(epochs=1, data=hp.datasets.digits(n_train=100))(meddler))
    with pytest.raises(RuntimeError, match="my bug"):
        run_cell(exp, exp.cells[0], "cpu")
    assert torch.get_num_threads() == threads
    assert torch.get_default_dtype() == dtype
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.benchmark is False


def test_nothing_hpspec_reads_back_can_execute_code():
    """No pickle, no torch.load, no eval/exec in the package: the store and the exported
    files are JSON, read with json."""
    import pathlib
    import re

    root = pathlib.Path(hp.__file__).parent
    for path in root.glob("*.py"):
        text = path.read_text()
        code = re.sub(r'"""[\s\S]*?"""|#.*', "", text)  # docstrings and comments aside
        for bad in (r"import pickle", r"pickle\.", r"torch\.load\(", r"(?<![.\w])eval\(",
                    r"(?<![.\w])exec\(", r"marshal\.", r"shelve"):
            assert not re.search(bad, code), (path.name, bad)
