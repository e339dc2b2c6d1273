"""Ray: a local cluster with 2 CPUs gives the serial run's verdicts and tables; a task whose
worker dies fails only its cell."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from scenarios import CRASH, GRID, _outcomes, assert_same_runs  # noqa: E402


@pytest.mark.slow
def test_ray_local_gives_the_serial_verdicts(pytester):
    pytester.makepyfile(exp_grid=GRID)
    serial = pytester.runpytest("--hpspec-cache=off", "--hpspec-json=serial.json",
                                "-k", "not threads")
    serial.assert_outcomes(passed=8)
    on_ray = pytester.runpytest_subprocess("--hpspec-ray=local", "--hpspec-ray-cpus=2",
                                           "--hpspec-cache=off", "--hpspec-json=ray.json",
                                           "-k", "not threads", timeout=300)
    on_ray.assert_outcomes(passed=8)
    a, _ = _outcomes(pytester.path / "serial.json")
    b, _ = _outcomes(pytester.path / "ray.json")
    assert_same_runs(a, b)
    out = on_ray.stdout.str()
    assert out.count("hpspec: exp_grid.py::grid") == 1
    assert "val_loss final is lower for lr=0.5 than for lr=0.01" in out


@pytest.mark.slow
def test_a_ray_task_whose_worker_dies_fails_only_its_cell(pytester):
    pytester.makepyfile(exp_crash=CRASH)
    result = pytester.runpytest_subprocess("--hpspec-ray=local", "--hpspec-ray-cpus=2",
                                           "--hpspec-cache=off", timeout=300)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*crashy[[]lr=0.2[]]*its Ray task failed*"])


def test_ray_without_a_cluster_is_a_usage_error(pytester):
    pytester.makepyfile(exp_grid=GRID)
    result = pytester.runpytest_subprocess("--hpspec-ray=ray://127.0.0.1:1", "-k", "threads",
                                           timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--hpspec-ray=ray://127.0.0.1:1: cannot reach the cluster*"])
