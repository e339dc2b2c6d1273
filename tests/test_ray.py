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


def test_a_local_cluster_without_token_authentication_is_refused(monkeypatch, tmp_path):
    from hpspec.ray_backend import RayUnavailable, connect

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(RayUnavailable, match="RAY_AUTH_MODE=disabled turns off Ray's token"):
        connect("local", tmp_path, num_cpus=1)


LISTENERS = """
import json, sys
import psutil
from pathlib import Path
from hpspec.ray_backend import connect, shutdown
from ray._private.authentication.authentication_utils import is_token_auth_enabled

ray = connect("local", Path("."), num_cpus=1)
ray.get(ray.remote(lambda: 1).remote())
out = []
for p in psutil.Process().children(recursive=True):
    try:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                out.append([p.name(), c.laddr.ip, c.laddr.port])
    except psutil.Error:
        pass
print(json.dumps({"listeners": out, "token": is_token_auth_enabled(),
                  "dashboard": any("dashboard" in n for n, _, _ in out)}))
shutdown(ray)
"""


@pytest.mark.slow
def test_a_local_cluster_is_reachable_only_with_its_token(tmp_path):
    """Ray cannot bind its gRPC servers to the loopback address (see ray_backend's docstring):
    whatever listens beyond 127.0.0.1 must be guarded by Ray's token authentication."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("psutil")
    script = tmp_path / "listeners.py"
    script.write_text(LISTENERS)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["listeners"], report  # the cluster started and was inspected
    assert not report["dashboard"]
    exposed = [x for x in report["listeners"] if x[1] not in ("127.0.0.1", "::1")]
    assert not exposed or report["token"], exposed


@pytest.mark.slow
def test_a_halving_search_on_ray_prunes_as_serially(pytester, monkeypatch):
    """Under --hpspec-ray a halving (and a Hyperband) search ranks its trials in the
    controller and sends each rung's trials as Ray tasks: the same trials pruned at the same
    epochs as a serial run, the same seeds trained as often, the same outcomes and curves
    (within float tolerance: a Ray worker may run other torch threads), and the summary
    says where it ran."""
    from scenarios import SEARCH

    pytester.makepyfile(exp_search=SEARCH)
    runs = {}
    for name, args in (("serial", ()), ("ray", ("--hpspec-ray=local", "--hpspec-ray-cpus=2"))):
        monkeypatch.setenv("HPSPEC_CALLS", str(pytester.path / f"{name}.calls"))
        result = pytester.runpytest_subprocess(*args, "--hpspec-cache=off",
                                               f"--hpspec-json={name}.json", timeout=300)
        result.assert_outcomes(passed=13)
        outcomes, doc = _outcomes(pytester.path / f"{name}.json")
        pruned = {(e["name"], c["cell_id"]): c["result"]["seeds"][0]["measurements"].get(
            "pruned_at_epoch") for e in doc["experiments"] for c in e["cells"]}
        calls = sorted((pytester.path / f"{name}.calls").read_text().splitlines())
        runs[name] = calls, outcomes, pruned, result.stdout.str()
    calls, outcomes, pruned, _ = runs["serial"]
    assert sum(v is not None for v in pruned.values()) == 7  # both searches pruned
    assert runs["ray"][2] == pruned
    assert runs["ray"][0] == calls  # no trial trained fully behind the search's back
    assert_same_runs(outcomes, runs["ray"][1])
    out = runs["ray"][3]
    assert "--hpspec-ray: halving ranks the trials in this process; each rung's trials " \
           "trained as Ray tasks" in out
    assert "Hyperband bracket 0: 2 trial(s) t00..t01, ranked at epochs 1, 2" in out
