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
