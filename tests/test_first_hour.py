"""A new user's first hour (issue 13): `pytest --help`, progress, collect-only, summaries."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import hpspec.plugin

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


class _Recorder:
    """Stands in for pytest's parser and group: records what the plugin registers."""

    def __init__(self) -> None:
        self.options: list[str] = []
        self.inis: list[str] = []

    def getgroup(self, *args, **kwargs) -> _Recorder:
        return self

    def addoption(self, *names, **kwargs) -> None:
        self.options.extend(names)

    def addini(self, name, *args, **kwargs) -> None:
        self.inis.append(name)


def test_pytest_help_lists_every_option_and_ini_key(tmp_path):
    recorder = _Recorder()
    hpspec.plugin.pytest_addoption(recorder)
    assert len(recorder.options) > 20 and len(recorder.inis) > 10
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--help"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    missing = [n for n in recorder.options + recorder.inis if n not in proc.stdout]
    assert not missing, f"not in pytest --help: {missing}"


BROKEN = """
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.1, 0.5]), epochs=2)
def fine(case):
    yield {"loss": 1.0}

@hp.experiment(grid=hp.grid(lr=0.1), epochs=2)
def broken(case):
    yield {"loss": 1.0}
"""


def test_collect_only_shows_a_spec_error_as_a_collection_error(pytester):
    pytester.makepyfile(exp_mixed=BROKEN)
    result = pytester.runpytest("--collect-only")
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*ERROR collecting exp_mixed.py*",
        "hpspec spec error: exp_mixed.py::broken: grid[[]'lr'[]] = 0.1 must be a list of values;*",
        "*short test summary info*",
        "ERROR exp_mixed.py::broken",
    ])
    assert "SpecErrorItem" not in out
    assert "<CellItem fine[lr=0.5]>" in out  # the file's good experiment is still listed
    assert "Traceback" not in out and "hpspec/spec.py" not in out
    assert result.ret == pytest.ExitCode.INTERRUPTED  # as pytest does for a collection error


PROGRESS_RECIPE = """
import torch
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.3]), epochs=3, seeds=1,
               data=hp.datasets.digits(n_train=200))
def digits(case):
    model = hp.models.mlp(64, [8], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""


def _run_on_a_pty(args: list[str], cwd: Path) -> str:
    """Run pytest with its stdout on a pseudo-terminal (what a user's shell gives it)."""
    pty = pytest.importorskip("pty")
    import select

    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=cwd, env=_env(),
                            stdin=child_fd, stdout=child_fd, stderr=child_fd)
    os.close(child_fd)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([main_fd], [], [], 300)
            if not ready:
                break
            try:
                data = os.read(main_fd, 65536)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main_fd)
        proc.wait(timeout=60)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_live_progress_shows_on_a_terminal_under_default_capture(tmp_path):
    (tmp_path / "exp_progress.py").write_text(PROGRESS_RECIPE)
    # every epoch shows a line (the default interval would hide a cell this short)
    (tmp_path / "conftest.py").write_text(
        "import hpspec.plugin\nhpspec.plugin.PROGRESS_INTERVAL = 0.0\n")
    out = _run_on_a_pty(["-p", "no:cacheprovider", "--hpspec-cache=off"], tmp_path)
    assert "1 passed" in out, out[-3000:]
    assert "digits[lr=0.3] epoch 3/3 loss " in out, out[-3000:]


def _linear(case):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(64, 10))  # stackable: a plain Sequential
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


@pytest.mark.parametrize("engine", ["one by one", "stacked"])
def test_peak_memory_when_the_batch_holds_the_whole_training_set(engine):
    import hpspec as hp
    from hpspec.engine.runner import run_cell, run_stacked
    from hpspec.spec import build

    exp = build(hp.experiment(epochs=2, seeds=1, batch_size=512,
                              data=hp.datasets.digits(n_train=100))(_linear))
    if engine == "stacked":
        results, why = run_stacked(exp, list(exp.cells), "cpu")
        assert not why
        m = results[exp.cells[0].id].seeds[0].measurements
    else:
        m = run_cell(exp, exp.cells[0], "cpu").seeds[0].measurements
    data = exp.data.load()
    # parameters, their gradients and momentum (3 x 2600 B), data (train and validation)
    floor = 3 * 650 * 4 + sum(t.numel() * t.element_size()
                              for t in (data.x_train, data.y_train, data.x_val, data.y_val))
    assert floor <= m.get("peak_memory", 0) < floor + 64 * 1024


def test_profile_note_names_the_epochs_of_a_grid_axis():
    import hpspec as hp
    from hpspec.spec import apply_profile, build

    def loop(case):
        yield {"loss": 1.0}

    exp = build(hp.experiment(grid=hp.grid(epochs=[1, 3, 5]), seeds=2,
                              profiles={"ci": dict(seeds=1, grid={"epochs": [1, 3]})})(loop))
    _, notes = apply_profile(exp, "ci")
    assert notes[0] == "profile 'ci': 2 of 3 cells, 1 seed(s), epochs 1, 3 (a grid axis)"
    fixed = build(hp.experiment(grid=hp.grid(lr=[0.1]), epochs=4,
                                profiles={"ci": dict(epochs=2)})(loop))
    assert apply_profile(fixed, "ci")[1][0] == "profile 'ci': 1 of 1 cells, 1 seed(s), 2 epochs"


def test_stacked_note_counts_every_bucket_and_says_why_cells_trained_alone():
    from hpspec.plan import StackGroup, stacked_note

    groups = [StackGroup(b, 9, tuple(f"lr={i}-bs={b}" for i in range(12)), model="mlp")
              for b in (16, 32, 64, 128)]
    note = stacked_note(groups, {})
    assert note.startswith("stacked: 48 cells in 4 groups of 9 (cells x seeds as one model); "
                           "groups apart by batch size; "), note
    groups.append(StackGroup(16, 3, ("lr=0-bs=16",), model="mlp"))  # a chunk of a bucket
    groups.append(StackGroup(16, 2, ("deep",), model="mlp, deeper"))
    note = stacked_note(groups, {"lr=9": "a learning-rate scheduler is not stacked",
                                 "lr=8": "a learning-rate scheduler is not stacked",
                                 "cm": "its recipe has custom metrics"})
    assert note.startswith(
        "stacked: 49 of 52 cells in 6 groups of 9, 3, 2 (cells x seeds as one model); groups "
        "apart by batch size, layer structure and the size limit (memory, work per step); "
        "2 cells trained alone, one by one, because a learning-rate scheduler is not stacked "
        "(e.g. lr=9); 1 cell trained alone, one by one, because its recipe has custom metrics "
        "(cm); "), note
    assert note.count("stacked: ") == 1 and "\n" not in note
    assert stacked_note([], {"a": "why"}) == ("stacked: 0 of 1 cell; 1 cell trained alone, one "
                                              "by one, because why (a)")
    # widths keep groups apart only where nothing else does (deeper models' shapes differ)
    deep = [StackGroup(32, 3, (f"d{d}",), model=f"depth {d}", widths=f"w{d}") for d in (1, 2)]
    assert "groups apart by layer structure; " in stacked_note(deep, {})
    wide = deep + [StackGroup(32, 3, ("wide",), model="depth 1", widths="w9")]
    assert "groups apart by layer structure and width (padding would not pay); " in (
        stacked_note(wide, {}))


STACKED_BUCKETS = """
import torch
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.1, 0.3], batch_size=[32, 64]), epochs=1, seeds=1,
               data=hp.datasets.digits(n_train=128))
def buckets(case):
    model = hp.models.mlp(64, [4], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""


def test_summary_counts_cells_of_every_stacked_bucket(pytester):
    # two buckets (one per batch size) of two cells: the line must say 4 cells, not 2, in
    # one line (not one per bucket)
    pytester.makepyfile(exp_buckets=STACKED_BUCKETS)
    result = pytester.runpytest("--hpspec-cache=off")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*stacked: 4 cells in 2 groups of 2 (cells x seeds as one "
                                 "model); groups apart by batch size; *"])
    assert result.stdout.str().count("stacked: ") == 1
    assert "stacked group" not in result.stdout.str()


def test_slow_marker_is_registered_and_selects_the_slow_tests():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow",
         "tests/test_faults.py", "tests/test_stacked.py"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    quick = proc.stdout
    assert "test_budget_exceeded_is_a_cell_error_with_epochs_done" in quick
    assert "test_ctrl_c_keeps_finished_cells_and_prints_their_table" not in quick
    assert "test_stacked_cells_equal_their_sequential_runs" not in quick
    assert "deselected" in quick
