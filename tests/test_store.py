"""The results store, the cache, resume, baselines, gates, profiles and the command line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpspec.results import SeedResult
from hpspec.store import Store, StoreMoved, StorePathError, check_store_path

COUNTED = """
import os, time
import torch
import hpspec as hp

def _count(case):
    with open(os.environ["HPSPEC_CALLS"], "a") as f:
        f.write(f"{case.cell_id} {case.seed}\\n")

@hp.experiment(grid=hp.grid(lr=LRS), epochs=2, seeds=2, data=hp.datasets.digits(n_train=200),
               claims=[hp.where(lr=0.3).expect(hp.metric("val_acc").final() > 0.2)])
def counted(case):
    _count(case)
    time.sleep(SLEEP)
    model = hp.models.mlp(64, [16], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""


def _calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def counted(pytester, monkeypatch):
    calls = pytester.path / "calls.txt"
    monkeypatch.setenv("HPSPEC_CALLS", str(calls))

    def write(lrs="[0.3, 0.03, 0.003]", sleep="0"):
        pytester.makepyfile(exp_counted=COUNTED.replace("LRS", lrs).replace("SLEEP", sleep))
        return calls

    return write


def test_second_identical_run_trains_nothing_and_gives_the_same_verdicts(pytester, counted):
    calls = counted()
    first = pytester.runpytest("--hpspec-json=a.json")
    first.assert_outcomes(passed=3)
    trained = len(_calls(calls))
    assert trained == 3 * 2  # stacked: each (cell, seed) builds its recipe once
    second = pytester.runpytest("--hpspec-json=b.json")
    second.assert_outcomes(passed=3)
    assert len(_calls(calls)) == trained  # no training call at all
    second.stdout.fnmatch_lines(["*3 cell(s) from the cache*", "*passed (cached)*"])
    a, b = (json.loads((pytester.path / f).read_text()) for f in ("a.json", "b.json"))
    va = [(c["cell_id"], [v["outcome"] for v in c["verdicts"]])
          for c in a["experiments"][0]["cells"]]
    vb = [(c["cell_id"], [v["outcome"] for v in c["verdicts"]])
          for c in b["experiments"][0]["cells"]]
    assert va == vb
    refresh = pytester.runpytest("--hpspec-cache=refresh")
    refresh.assert_outcomes(passed=3)
    assert len(_calls(calls)) == 2 * trained


def test_editing_one_grid_value_retrains_only_that_cell(pytester, counted):
    calls = counted("[0.3, 0.03, 0.003]")
    pytester.runpytest().assert_outcomes(passed=3)
    before = len(_calls(calls))
    counted("[0.3, 0.03, 0.001]")
    pytester.runpytest().assert_outcomes(passed=3)
    new = _calls(calls)[before:]
    assert sorted(new) == ["lr=0.001 0", "lr=0.001 1"]


def test_editing_the_function_body_retrains_but_editing_a_claim_does_not(pytester, counted):
    calls = counted()
    pytester.runpytest().assert_outcomes(passed=3)
    n = len(_calls(calls))
    src = (pytester.path / "exp_counted.py").read_text()
    (pytester.path / "exp_counted.py").write_text(src.replace("final() > 0.2", "final() > 0.1"))
    pytester.runpytest().assert_outcomes(passed=3)
    assert len(_calls(calls)) == n
    (pytester.path / "exp_counted.py").write_text(src.replace("[16]", "[17]"))
    pytester.runpytest().assert_outcomes(passed=3)
    assert len(_calls(calls)) == 2 * n


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_run_killed_mid_grid_keeps_finished_seeds_and_resumes(pytester, counted, sig):
    calls = counted("[0.3, 0.03, 0.01, 0.003]", sleep="0.4")
    env = {**os.environ, "HPSPEC_CALLS": str(calls)}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--hpspec-stack=off",
           str(pytester.path / "exp_counted.py")]
    proc = subprocess.Popen(cmd, cwd=pytester.path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while len(_calls(calls)) < 4 and time.time() < deadline:  # two cells' seeds started
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(sig)
    out = proc.communicate(timeout=60)[0].decode()
    started = _calls(calls)
    assert 4 <= len(started) < 8, out
    store = Store.open(pytester.path / ".hpspec" / "results.sqlite")
    kept = store.conn.execute("SELECT count(*) FROM seeds").fetchone()[0]
    store.close()
    assert kept >= len(started) - 1  # all finished seeds (one may have been mid-training)
    resumed = subprocess.run(cmd, cwd=pytester.path, env=env, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stdout
    again = _calls(calls)[len(started):]
    assert len(again) == 8 - kept  # only what was not stored
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in out or "Interrupted" in out


def _seed(seed: int) -> SeedResult:
    return SeedResult(seed=seed, curves={"val_loss": [1.0 / (seed + 1)]}, epochs_planned=1)


WRITER = """
import sys
from hpspec.results import SeedResult
from hpspec.store import Store
store = Store.open(sys.argv[1])
run = store.begin_run({"device": "cpu"})
for i in range(int(sys.argv[2])):
    r = SeedResult(seed=i, curves={"val_loss": [float(i)]}, epochs_planned=1)
    store.put_seed(run, f"{sys.argv[3]}-{i}", "exp", f"c{i}", {"i": i}, "cpu", r)
store.finish_run(run, "passed")
"""


@pytest.mark.slow
def test_two_processes_write_concurrently_without_loss(tmp_path):
    path = tmp_path / "results.sqlite"
    Store.open(path).close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(path), "300", name])
             for name in ("a", "b", "c")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    store = Store.open(path)
    assert store.conn.execute("SELECT count(*) FROM seeds").fetchone()[0] == 900
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r.status for r in store.runs()] == ["passed"] * 3
    assert store.cached_seed("b-299").curves["val_loss"] == [299.0]


DAMAGED = b"SQLite format 3\x00" + b"\xff" * 5000


@pytest.mark.parametrize("content", [DAMAGED, "foreign"], ids=["damaged", "foreign"])
def test_a_damaged_or_foreign_sqlite_file_is_moved_aside_with_a_clear_message(tmp_path, content):
    path = tmp_path / "results.sqlite"
    if content == "foreign":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE invoices (id INTEGER)")
        conn.commit()
        conn.close()
        original = path.read_bytes()
    else:
        path.write_bytes(content)
        original = content
    assert check_store_path(path) is None  # usable: it is SQLite's, so it may move aside
    with pytest.warns(StoreMoved, match="moved it to .*unreadable.*fresh store"):
        store = Store.open(path)
    assert store.moved is not None and store.moved.read_bytes() == original
    run = store.begin_run({"device": "cpu"})
    store.put_seed(run, "k", "exp", "c", {}, "cpu", _seed(0))
    assert store.cached_seed("k").to_dict() == _seed(0).to_dict()


def test_a_file_that_is_not_sqlite_or_a_directory_is_never_moved(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("my notes, not a database\n" * 10)
    d = tmp_path / ".hpspec"
    (d / "inside").mkdir(parents=True)
    (d / "inside" / "keep.txt").write_text("keep")
    before = sorted(p.name for p in tmp_path.iterdir())
    for path, says in ((text, "that is not a SQLite database"), (d, "is a directory")):
        assert says in (check_store_path(path) or ""), path
        with pytest.raises(StorePathError, match=says):
            Store.open(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert text.read_text().startswith("my notes") and (d / "inside" / "keep.txt").exists()
    under_file = text / "results.sqlite"
    assert "is a file" in (check_store_path(under_file) or "")


def test_schema_is_versioned_and_a_newer_store_is_not_overwritten(tmp_path):
    path = tmp_path / "results.sqlite"
    store = Store.open(path)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == 1
    store.conn.execute("PRAGMA user_version = 99")
    store.close()
    with pytest.warns(StoreMoved, match="newer hpspec"):
        Store.open(path)


GATED = """
import torch
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.3, 0.1]), epochs=3, seeds=2,
               data=hp.datasets.digits(n_train=300))
def gated(case):
    model = hp.models.mlp(64, [16], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr * FACTOR)
"""


def test_a_planted_regression_fails_the_gate_and_noise_does_not(pytester):
    pytester.makepyfile(exp_gated=GATED.replace("FACTOR", "1.0"))
    pytester.runpytest("--hpspec-save=main").assert_outcomes(passed=2)
    # noise: the same experiment retrained (refresh). Its timings are not gated here: 15
    # steps of a 16-unit MLP take about a millisecond, which a busy test machine can double.
    same = pytester.runpytest("--hpspec-cache=refresh", "--hpspec-compare=main",
                              "--hpspec-compare-fail=val_loss:+0.05,val_acc:-5%")
    assert same.ret == 0, same.stdout.str()
    same.stdout.fnmatch_lines(["*hpspec: compared with run 1 (main)*", "*val_loss*ok*"])
    # a regression: the learning rate silently divided by 10
    pytester.makepyfile(exp_gated=GATED.replace("FACTOR", "0.1"))
    bad = pytester.runpytest("--hpspec-compare=main", "--hpspec-compare-fail=val_loss:+0.05")
    assert bad.ret == pytest.ExitCode.TESTS_FAILED
    bad.assert_outcomes(passed=2)  # the cells pass; the gate fails the run
    bad.stdout.fnmatch_lines(["*lr=0.3*val_loss*REGRESSED*",
                              "*number(s) moved past --hpspec-compare-fail: the run fails*"])


def test_export_and_compare_against_a_file(pytester):
    pytester.makepyfile(exp_gated=GATED.replace("FACTOR", "1.0"))
    pytester.runpytest("--hpspec-export=base.json", "--hpspec-cache=off").assert_outcomes(
        passed=2)
    doc = json.loads((pytester.path / "base.json").read_text())
    assert doc["schema"] == "hpspec-run" and len(doc["fingerprint"]) == 16
    pytester.makepyfile(exp_gated=GATED.replace("FACTOR", "0.1"))
    bad = pytester.runpytest("--hpspec-compare=base.json", "--hpspec-compare-fail=val_acc:-5%",
                             "--hpspec-cache=off")
    assert bad.ret == pytest.ExitCode.TESTS_FAILED
    bad.stdout.fnmatch_lines(["*compared with base.json*", "*val_acc*REGRESSED*"])


def test_timings_are_not_compared_across_environments(pytester):
    pytester.makepyfile(exp_gated=GATED.replace("FACTOR", "1.0"))
    pytester.runpytest("--hpspec-export=base.json", "--hpspec-cache=off")
    doc = json.loads((pytester.path / "base.json").read_text())
    doc["fingerprint"] = "another-machine"
    for c in doc["experiments"][0]["cells"]:
        for s in c["result"]["seeds"]:
            s["measurements"]["samples_per_s"] *= 100  # would be a huge "regression"
    (pytester.path / "base.json").write_text(json.dumps(doc))
    result = pytester.runpytest("--hpspec-compare=base.json", "--hpspec-cache=off",
                                "--hpspec-compare-fail=throughput:-10%")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*timings were not compared: the baseline ran on another "
                                 "environment*--hpspec-compare-force*"])
    forced = pytester.runpytest("--hpspec-compare=base.json", "--hpspec-cache=off",
                                "--hpspec-compare-fail=throughput:-10%",
                                "--hpspec-compare-force")
    assert forced.ret == pytest.ExitCode.TESTS_FAILED


def test_bad_gate_options_are_usage_errors(pytester):
    pytester.makepyfile(exp_gated=GATED.replace("FACTOR", "1.0"))
    r = pytester.runpytest("--hpspec-compare=main", "--hpspec-compare-fail=val_loss+2")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--hpspec-compare-fail: 'val_loss+2' is not METRIC:+AMOUNT*"])
    r = pytester.runpytest("--hpspec-compare-fail=val_loss:+0.1")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--hpspec-compare-fail needs a baseline*"])
    r = pytester.runpytest("--hpspec-compare=nosuchrun", "--hpspec-compare-fail=val_loss:+0.1")
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.stdout.fnmatch_lines(["*--hpspec-compare nosuchrun: no such run*"])


PROFILED = """
import torch
import hpspec as hp

hp.register_profile("ci", epochs=1, seeds=1, grid={"lr": [0.3]})

@hp.experiment(grid=hp.grid(lr=[0.3, 0.1, 0.01]), epochs=4, seeds=3,
               data=hp.datasets.digits(n_train=200),
               profiles={"tiny": dict(seeds=1, grid={"lr": [0.3, 0.1]})},
               claims=[hp.where(lr=0.01).expect(hp.metric("val_loss").final() > 1),
                       hp.compare(hp.metric("val_loss"), lower={"lr": 0.3}, than={"lr": 0.1})])
def profiled(case):
    model = hp.models.mlp(64, [8], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""


def test_profiles_shrink_the_grid_and_drop_claims_they_cannot_judge(pytester):
    pytester.makepyfile(exp_profiled=PROFILED)
    ci = pytester.runpytest("--hpspec-profile=ci", "--hpspec-json=ci.json", "-v")
    ci.assert_outcomes(passed=1)
    ci.stdout.fnmatch_lines(["*profiled[[]lr=0.3[]] PASSED*",
                             "*profile 'ci': 1 of 3 cells, 1 seed(s), 1 epochs*",
                             "*left out (its cells are not in the profile's grid)*"])
    doc = json.loads((pytester.path / "ci.json").read_text())
    (cell,) = doc["experiments"][0]["cells"]
    assert len(cell["result"]["seeds"]) == 1 and cell["result"]["seeds"][0]["epochs_planned"] == 1
    tiny = pytester.runpytest("--hpspec-profile=tiny", "--hpspec-cache=off")
    tiny.assert_outcomes(passed=2)
    tiny.stdout.fnmatch_lines(["*left out (a statistical claim cannot be decided with one seed)"])
    assert "profile 'tiny': 2 of 3 cells, 1 seed(s), 4 epochs" in tiny.stdout.str()


def test_a_profile_naming_a_value_the_grid_lacks_is_a_spec_error(pytester):
    pytester.makepyfile(exp_profiled=PROFILED.replace('grid={"lr": [0.3]}', 'grid={"lr": [9]}'))
    r = pytester.runpytest("--hpspec-profile=ci")
    r.stdout.fnmatch_lines(["*profile 'ci': grid[[]'lr'[]] = 9 is not a value of that axis*"])


def test_command_line_lists_shows_and_diffs_runs(pytester):
    pytester.makepyfile(exp_gated=GATED.replace("FACTOR", "1.0"))
    pytester.runpytest("--hpspec-save=main")
    pytester.makepyfile(exp_gated=GATED.replace("FACTOR", "0.1"))
    pytester.runpytest()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "hpspec", *args], cwd=pytester.path,
                              capture_output=True, text=True, timeout=60)

    runs = cli("runs")
    assert runs.returncode == 0 and "main" in runs.stdout and "passed" in runs.stdout
    show = cli("show", "main")
    assert "lr=0.3" in show.stdout and "val_loss=" in show.stdout
    diff = cli("diff", "main", "latest")
    assert "val_loss" in diff.stdout and "lr=0.1" in diff.stdout
    assert cli("show", "nope").returncode != 0
    # a reader that stops early (`hpspec runs | head -1`) gets no BrokenPipeError traceback
    # (stdout is a pipe whose reader is gone: the first write raises BrokenPipeError)
    piped = subprocess.run(
        [sys.executable, "-c", "import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); "
         "from hpspec.cli import main; sys.exit(main(['show', 'main']))"],
        cwd=pytester.path, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr
    prune = cli("prune", "--keep", "0")
    assert "deleted 1 run(s)" in prune.stdout
    assert "main" in cli("runs").stdout


def test_a_run_whose_process_is_gone_is_marked_interrupted_on_the_next_open(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "results.sqlite"
    store = Store.open(path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is now free: the run below was "killed"
    killed = store.begin_run({"device": "cpu"})
    store.conn.execute("UPDATE runs SET environment = json_set(environment, '$.pid', ?) "
                       "WHERE id = ?", (dead.pid, killed))
    alive = store.begin_run({"device": "cpu"})  # this process: still running
    finished = store.begin_run({"device": "cpu"})
    store.finish_run(finished, "passed")
    store.close()
    again = Store.open(path)
    assert again.mark_interrupted() == [killed]
    status = {r.id: r.status for r in again.runs()}
    assert status == {killed: "interrupted", alive: "running", finished: "passed"}


def test_the_cache_key_covers_module_constants_and_same_file_helpers(tmp_path):
    from hpspec.spec import source_digest

    src = '''
import torch
WIDTH = {width}

def helper(n):
    return torch.nn.Linear(64, n + {extra})

class Net(torch.nn.Module):
    def forward(self, x):
        return x * {scale}

def exp(case):
    return helper(WIDTH), Net()
'''

    import importlib.util

    counter = iter(range(100))

    def digest(**kw):  # a real file each time, imported as a module (as pytest does)
        path = tmp_path / f"exp_mod{next(counter)}.py"
        path.write_text(src.format(**kw))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return source_digest(mod.exp)

    base = dict(width=10, extra=0, scale=1)
    d0 = digest(**base)
    assert digest(**base) == d0  # stable for the same file
    for change in (dict(width=12), dict(extra=1), dict(scale=2)):
        assert digest(**{**base, **change}) != d0, change

# ------------------------------------------------------------- the command line on bad stores


def _small_store(path: Path, runs: int = 2) -> None:
    store = Store.open(path)
    for n in range(runs):
        run = store.begin_run({"device": "cpu"}, name="base" if n == 0 else None)
        store.put_seed(run, f"k{n}", "exp_a.py::a", "lr=0.1", {"lr": 0.1}, "cpu", _seed(n))
        store.put_cell(run, "exp_a.py::a", "lr=0.1", {"lr": 0.1}, "passed")
        store.finish_run(run, "passed")
    store.close()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "hpspec", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_store_option_is_accepted_before_and_after_the_command(tmp_path):
    path = tmp_path / "s.sqlite"
    _small_store(path)
    for args in (["--store", str(path), "show", "latest"], ["show", "latest", "--store", str(path)],
                 ["runs", "--store", str(path)]):
        out = _cli(*args, cwd=tmp_path)
        assert out.returncode == 0, (args, out.stderr)
        assert "lr=0.1" in out.stdout or "base" in out.stdout


def _damage_a_page(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = 4096 if len(data) > 8192 else len(data) // 2
    data[page:page + 512] = b"\xff" * 512
    path.write_bytes(bytes(data))


def _bad_json_row(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE seeds SET result = '{not json' WHERE id = 1")
    conn.commit()
    conn.close()


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a database" * 500)


@pytest.mark.parametrize("damage", [_damage_a_page, _bad_json_row, _garbage])
@pytest.mark.parametrize("command", [["runs"], ["show", "1"], ["diff", "1", "2"]])
def test_look_only_commands_on_a_damaged_store_say_one_line_and_change_nothing(
        tmp_path, damage, command):
    folder = tmp_path / "store"
    folder.mkdir()
    path = folder / "results.sqlite"
    _small_store(path)
    # a clean checkpoint, so that the damage is in the main file
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    damage(path)
    before = _snapshot(folder)
    out = _cli("--store", str(path), *command, cwd=tmp_path)
    assert "Traceback" not in out.stderr + out.stdout
    assert _snapshot(folder) == before  # nothing moved aside, created or rewritten
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0], out.stderr


def test_a_bad_json_row_names_the_file_and_row(tmp_path):
    path = tmp_path / "results.sqlite"
    _small_store(path)
    _bad_json_row(path)
    out = _cli("--store", str(path), "show", "1", cwd=tmp_path)
    assert out.returncode == 1 and "seed row 1" in out.stderr and str(path) in out.stderr


def test_a_read_only_file_system_is_read_without_writing(tmp_path, monkeypatch):
    # As root a chmod does not stop writes; emulate a read-only mount by refusing every open
    # that is not immutable (what SQLite says when it cannot make the -shm file).
    path = tmp_path / "results.sqlite"
    _small_store(path)
    real = sqlite3.connect

    def connect(target, *a, **kw):
        if "immutable=1" not in str(target):
            raise sqlite3.OperationalError("unable to open database file")
        return real(target, *a, **kw)

    monkeypatch.setattr(sqlite3, "connect", connect)
    from hpspec.cli import main

    assert main(["--store", str(path), "runs"]) == 0
    before = _snapshot(tmp_path)
    assert main(["--store", str(path), "prune", "--keep", "0"]) == 1  # one line, no traceback
    assert _snapshot(tmp_path) == before


def test_prune_with_a_negative_count_is_a_usage_error_and_deletes_nothing(tmp_path):
    path = tmp_path / "results.sqlite"
    _small_store(path, runs=4)
    out = _cli("--store", str(path), "prune", "--keep", "-3", cwd=tmp_path)
    assert out.returncode == 2 and "negative" in out.stderr
    assert len(Store.open_readonly(path).runs()) == 4
    with pytest.raises(ValueError, match="keep = -3"):
        Store.open(path).prune(-3)


def _run_seeds(path: Path) -> dict[str, list[int]]:
    """Per cell, the seeds the newest run's record lists (what `hpspec show` counts)."""
    store = Store.open_readonly(path)
    try:
        run = store.runs()[0].id
        return {cell: sorted(s["seed"] for s in entry["seeds"])
                for (_, cell), entry in store.run_cells(run).items()}
    finally:
        store.close()


def test_a_partly_cached_cell_records_every_seed_its_verdicts_used(pytester, counted):
    # Seed 1 of lr=0.03 is lost (a run stopped mid-cell): the next run trains only it, and
    # its record must still list both seeds the cell's verdicts used, the cached one too.
    calls = counted()
    pytester.runpytest("--hpspec-stack=off").assert_outcomes(passed=3)
    db = pytester.path / ".hpspec" / "results.sqlite"
    store = Store.open(db)
    store.conn.execute("DELETE FROM seeds WHERE cell_id = 'lr=0.03' AND seed = 1")
    store.close()
    before = len(_calls(calls))
    pytester.runpytest("--hpspec-stack=off").assert_outcomes(passed=3)
    assert _calls(calls)[before:] == ["lr=0.03 1"]  # resumed: only the missing seed trained
    assert _run_seeds(db) == {"lr=0.3": [0, 1], "lr=0.03": [0, 1], "lr=0.003": [0, 1]}
    show = subprocess.run([sys.executable, "-m", "hpspec", "show", "latest"], cwd=pytester.path,
                          capture_output=True, text=True, timeout=60)
    row = next(line for line in show.stdout.splitlines() if "lr=0.03 " in line)
    assert " 2 " in row, show.stdout


def test_an_xdist_run_row_is_completed_with_torch_and_device(tmp_path):
    # A run row begun before torch was loaded (the xdist controller) gets torch, device and a
    # fingerprint that matches a serial run's once they are known.
    store = Store.open(tmp_path / "s.sqlite")
    serial = {"hpspec": "1", "python": "3", "cpu_count": 2, "device": "cpu", "torch": "2.13.0",
              "cuda": None}
    a = store.begin_run(serial)
    b = store.begin_run({**serial, "device": None, "torch": None})
    assert store.find_run(str(a)).fingerprint != store.find_run(str(b)).fingerprint
    store.update_environment(b, {"device": "cpu", "torch": "2.13.0"})
    row = store.find_run(str(b))
    assert row.environment["torch"] == "2.13.0" and row.environment["device"] == "cpu"
    assert "pid" in row.environment  # what begin_run recorded stays
    assert row.fingerprint == store.find_run(str(a)).fingerprint


def test_a_seed_already_in_the_run_is_not_recorded_again_from_the_cache(tmp_path):
    # Under -n a claim's worker reads from the cache the seeds the cell's own worker stored in
    # this same run: recording them again doubled the run's seed count in `runs` and `show`.
    store = Store.open(tmp_path / "s.sqlite")
    run = store.begin_run({"device": "cpu"})
    store.put_seed(run, "k0", "e", "c", {"lr": 0.1}, "cpu", _seed(0))
    store.put_seed(run, "k0", "e", "c", {"lr": 0.1}, "cpu", _seed(0), cached=True)
    store.put_seed(run, "k0", "e", "c", {"lr": 0.1}, "cpu", _seed(0))  # refresh, twice
    assert len(store.run_cells(run)[("e", "c")]["seeds"]) == 1
    later = store.begin_run({"device": "cpu"})  # a later run's cache hit is recorded in it
    store.put_seed(later, "k0", "e", "c", {"lr": 0.1}, "cpu", _seed(0), cached=True)
    assert store.runs()[0].seeds == 1 and store.runs()[0].cached == 1


def test_a_null_number_in_stored_json_reads_back_as_nan_not_none():
    """hpspec marks a missing value with NaN (a curve's missing epoch); a null in a stored
    or hand-edited result reads back as that NaN, so every reader gets a float."""
    import math

    seed = SeedResult.from_dict({
        "seed": 0, "curves": {"val_loss": [1.0, None, "inf"]}, "initial": {"val_loss": None},
        "measurements": {"samples_per_s": None, "params": 10},
    })
    loss = seed.curve("val_loss")
    assert loss is not None and loss[0] == 1.0 and math.isnan(loss[1]) and loss[2] == math.inf
    assert math.isnan(seed.initial["val_loss"])
    assert math.isnan(seed.measurements["samples_per_s"]) and seed.measurements["params"] == 10.0
    assert SeedResult.from_dict(seed.to_dict()).to_dict() == seed.to_dict()
