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
