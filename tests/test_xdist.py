"""pytest-xdist: the same verdicts and complete tables as a serial run, a crashed worker fails
only its cell, CPU threads shared out, GPUs lent from a pool."""

from __future__ import annotations

import pytest
from scenarios import CRASH, GRID, _outcomes, assert_same_runs

from hpspec.distributed import GpuPool

pytest.importorskip("xdist")


@pytest.mark.slow
def test_same_verdicts_and_tables_serial_and_with_two_workers(pytester):
    pytester.makepyfile(exp_grid=GRID)
    serial = pytester.runpytest("--hpspec-cache=off", "--hpspec-json=serial.json")
    serial.assert_outcomes(passed=11)
    par = pytester.runpytest_subprocess("-n", "2", "--hpspec-cache=off",
                                        "--hpspec-json=par.json", "--junitxml=par.xml")
    par.assert_outcomes(passed=11)
    a, _ = _outcomes(pytester.path / "serial.json")
    b, doc = _outcomes(pytester.path / "par.json")
    threads = {k: v for k, v in b.items() if k[0] == "threads"}
    for k in threads:
        a.pop(k), b.pop(k)
    assert_same_runs(a, b)
    # the controller printed the complete table and the claims, once
    out = par.stdout.str()
    assert out.count("hpspec: exp_grid.py::grid") == 1
    assert "val_loss final is lower for lr=0.5 than for lr=0.01" in out
    import re

    table = out.split("hpspec: exp_grid.py::grid")[1]
    rows = re.findall(r"^(0\.5|0\.1|0\.01) +(8|16) +passed", table, re.M)
    assert len(rows) == 6, table
    # each of the 2 workers uses its share of the CPU's threads
    import os

    share = max(1, (os.cpu_count() or 1) // 2)
    for c in next(e for e in doc["experiments"] if e["name"] == "threads")["cells"]:
        assert c["result"]["seeds"][0]["curves"]["threads"] == [share, share]
    # without --dist loadgroup a worker stacks each cell with its own 3 seeds, never with others
    for c in next(e for e in doc["experiments"] if e["name"] == "grid")["cells"]:
        assert c["result"]["seeds"][0]["measurements"]["stacked"] == 3.0
    xml = (pytester.path / "par.xml").read_text()
    assert "hpspec._payload" not in xml and 'name="hpspec.val_acc"' in xml




@pytest.mark.slow
def test_a_killed_worker_fails_only_its_cell(pytester):
    pytester.makepyfile(exp_crash=CRASH)
    result = pytester.runpytest_subprocess("-n", "2", "--hpspec-cache=off")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*crashy[[]lr=0.2[]]*crashed*"])
    assert "hpspec: exp_crash.py::crashy" in result.stdout.str()


@pytest.mark.slow
def test_loadscope_is_warned_about(pytester):
    pytester.makepyfile(exp_grid=GRID)
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadscope",
                                           "--hpspec-cache=off", "-k", "threads")
    result.stdout.fnmatch_lines(["*--dist loadscope sends a whole experiment file to one "
                                 "worker*"])


def test_gpu_pool_lends_spreads_and_takes_back():
    pool = GpuPool([0, 1], per_gpu=2)
    lent = [pool.lend(w) for w in ("gw0", "gw1", "gw2", "gw3")]
    assert sorted(lent) == [0, 0, 1, 1] and lent[:2] == [0, 1]  # spread first
    assert pool.lend("gw4") is None  # full: no GPU rather than an overbooked one
    assert pool.lend("gw1") == lent[1]  # a worker keeps its GPU
    pool.give_back("gw1")  # its node went down (crashed): the slot is free again
    assert pool.lend("gw5") == lent[1]


GPU_SEEN = """
import os
import hpspec as hp

@hp.experiment(grid=hp.grid(k=list(range(8))), epochs=1)
def seen(case):
    yield {"gpu": int(os.environ.get("CUDA_VISIBLE_DEVICES", "-1"))}
"""


@pytest.mark.slow
def test_auto_workers_and_gpu_pool_without_a_gpu(pytester, monkeypatch):
    # Two "GPUs" by CUDA_VISIBLE_DEVICES: -n auto starts 2 x 2 workers, each is lent one of
    # them (set in its environment before CUDA could start); torch itself sees no CUDA here.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    pytester.makepyfile(exp_gpu=GPU_SEEN)
    result = pytester.runpytest_subprocess("-n", "auto", "--hpspec-workers-per-gpu", "2",
                                           "--hpspec-cache=off", "--hpspec-json=run.json")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["*4 workers*"])
    import json

    doc = json.loads((pytester.path / "run.json").read_text())
    seen = {c["result"]["seeds"][0]["curves"]["gpu"][0] for c in doc["experiments"][0]["cells"]}
    assert seen <= {0, 1} and seen  # every worker had a GPU of the pool, none the default


ADAPTIVE = """
import random
import hpspec as hp

MEANS = {"a": 1.0, "b": 2.0, "c": 1.4}

@hp.experiment(
    grid=hp.grid(arm=["a", "b", "c"]),
    epochs=1,
    seeds=hp.adaptive(min=2, max=30),
    claims=[
        hp.compare(hp.metric("loss").final(), lower={"arm": "a"}, than={"arm": "c"},
                   name="a-vs-c"),
    ],
)
def arms(case):
    rng = random.Random(case.seed)
    yield {"loss": MEANS[case.arm] + rng.gauss(0, 0.3)}
"""


@pytest.mark.slow
def test_adaptive_seeds_reported_in_full_with_workers(pytester):
    # The claim grows cells a and c past their 2 seeds on whichever worker judges it; the
    # controller's table, JSON and HTML must show every seed it used, as a serial run does.
    pytester.makepyfile(exp_arms=ADAPTIVE)
    serial = pytester.runpytest("--hpspec-cache=off", "--hpspec-json=serial.json",
                                "--hpspec-html=serial.html")
    serial.assert_outcomes(passed=4)
    par = pytester.runpytest_subprocess("-n", "2", "--hpspec-cache=off",
                                        "--hpspec-json=par.json", "--hpspec-html=par.html")
    par.assert_outcomes(passed=4)
    import json
    import re

    def seeds(name):
        doc = json.loads((pytester.path / name).read_text())
        return {c["cell_id"]: len(c["result"]["seeds"]) for c in doc["experiments"][0]["cells"]}

    a, b = seeds("serial.json"), seeds("par.json")
    assert a["arm=a"] > 2 and a["arm=c"] > 2  # the claim did need more seeds
    assert a == b
    line = re.compile(r"arms on \w+, [^\n]*seeds[^\n]*")
    assert line.findall(serial.stdout.str()) == line.findall(par.stdout.str())
    html_seeds = re.compile(r"seed \d+")
    in_html = [sorted(html_seeds.findall((pytester.path / f).read_text()))
               for f in ("serial.html", "par.html")]
    assert f"seed {a['arm=a'] - 1}" in in_html[0] and in_html[0] == in_html[1]
