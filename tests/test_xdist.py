"""pytest-xdist: the same verdicts and complete tables as a serial run, a crashed worker fails
only its cell, CPU threads shared out, GPUs lent from a pool, a halving search trained once."""

from __future__ import annotations

import pytest
from scenarios import CRASH, GRID, SEARCH, _outcomes, assert_same_runs

from hpspec.distributed import GpuPool, run_once

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
        # every arm draws the same noise per seed, so a paired test would decide at once
        hp.compare(hp.metric("loss").final(), lower={"arm": "a"}, than={"arm": "c"},
                   name="a-vs-c", paired=False),
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


KILLED_ONCE = """
import os, signal
import torch
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.3, 0.2, 0.1]), epochs=1, stack=False, seeds=5,
               data=hp.datasets.digits(n_train=200),
               claims=[hp.compare(hp.metric("val_loss").final(), lower={"lr": 0.3},
                                  than={"lr": 0.2}, name="fast-beats-mid")])
def killed(case):
    if case.lr == 0.2:
        with open(os.environ["HPSPEC_STARTS"], "a") as f:
            f.write("start\\n")
        if not os.path.exists(os.environ["HPSPEC_STARTS"] + ".killed"):
            open(os.environ["HPSPEC_STARTS"] + ".killed", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)  # once: a retraining elsewhere would pass
    model = hp.models.mlp(64, [8], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""


@pytest.mark.slow
def test_a_cell_whose_worker_died_is_recorded_and_not_retrained_for_a_claim(pytester,
                                                                            monkeypatch):
    import json

    from hpspec.store import Store

    starts = pytester.path / "starts.txt"
    monkeypatch.setenv("HPSPEC_STARTS", str(starts))
    pytester.makepyfile(exp_killed=KILLED_ONCE)
    result = pytester.runpytest_subprocess("-n", "2", "--hpspec-json=run.json")
    out = result.stdout.str()
    import re

    result.stdout.fnmatch_lines(["*killed[[]lr=0.2[]]*crashed*"])
    # the claim was not judged on a retraining of the killed cell: it says the worker died
    assert starts.read_text().count("start") == 1, out
    assert re.search(r"(FAILED|ERROR) \S*killed\[fast-beats-mid\]", out), out
    assert "its worker died while training it" in out, out
    result.assert_outcomes(passed=2, failed=1, errors=1)
    doc = json.loads((pytester.path / "run.json").read_text())
    cells = {c["cell_id"]: c for c in doc["experiments"][0]["cells"]}
    assert cells["lr=0.2"]["outcome"] == "crashed"
    assert cells["lr=0.2"]["params"] == {"lr": "0.2"}
    store = Store.open_readonly(pytester.path / ".hpspec" / "results.sqlite")
    run = store.runs()[0]
    got = {cell: entry["outcome"] for (_, cell), entry in store.run_cells(run.id).items()}
    store.close()
    assert got["lr=0.2"] == "crashed" and got["lr=0.3"] == "passed"
    store = Store.open_readonly(pytester.path / ".hpspec" / "results.sqlite")
    counted = {cell: len(e["seeds"]) for (_, cell), e in store.run_cells(run.id).items()}
    store.close()
    assert counted["lr=0.3"] == 5 and counted["lr=0.1"] == 5  # each seed recorded once
    assert "fast-beats-mid" not in got  # a claim is never recorded as a cell
    # item 3: the controller records torch and the device, taken from a worker's payload
    import torch

    assert doc["environment"]["torch"] == torch.__version__
    assert doc["environment"]["device"] == "cpu"
    assert run.environment["torch"] == torch.__version__ and run.environment["device"] == "cpu"


def test_crashed_items_are_settled_into_records_and_claim_messages():
    # The controller hears only a node id and xdist's reason; at the end a crashed cell is a
    # record, a crashed claim a failed verdict, and a claim judged with a retraining of a
    # crashed cell (no store to warn its worker: --hpspec-cache=off) says so.
    from hpspec.claims import PASS, Verdict
    from hpspec.crashes import is_crash_report, parse_cell_id, split_nodeid
    from hpspec.distributed import ExpInfo
    from hpspec.session import Session

    assert is_crash_report("???", "worker 'gw0' crashed while running 'a.py::x[lr=1]'")
    assert not is_crash_report("call", "worker 'gw0' crashed while running 'a.py::x[lr=1]'")
    assert split_nodeid("d/exp_a.py::grid[lr=0.1-bs=8]") == ("d/exp_a.py::grid", "lr=0.1-bs=8")
    assert split_nodeid("exp_a.py::g[1]x[lr=1]", ["exp_a.py::g[1]x"]) == ("exp_a.py::g[1]x",
                                                                        "lr=1")
    assert parse_cell_id("lr=1e-3-bs=8", ("lr", "bs")) == {"lr": "1e-3", "bs": "8"}
    assert parse_cell_id("lower-than-lr=0.3", ("lr", "bs")) is None
    s = Session(device_option="cpu", table="full", cache="off")
    key = "exp_a.py::grid"
    s.info[key] = ExpInfo("grid", ("lr",))
    s.record_crash(f"{key}[lr=0.2]", "worker 'gw1' crashed while running it")
    s.record_crash(f"{key}[mid-wins]", "worker 'gw0' crashed while running it")
    s.cross[key] = {"fast-wins": Verdict("fast-wins", PASS, "lr=0.3 lower")}
    s.claim_cells[(key, "fast-wins")] = {"lr=0.3", "lr=0.2"}
    s.settle_crashes()
    s.settle_crashes()  # idempotent: the summary and the record may both settle
    record = s.records[key]["lr=0.2"]
    assert record.outcome == "crashed" and "gw1" in record.note and record.params == {"lr": "0.2"}
    assert s.cross[key]["mid-wins"].outcome == "fail" and "gw0" in s.cross[key]["mid-wins"].message
    message = s.cross[key]["fast-wins"].message
    assert s.cross[key]["fast-wins"].outcome == PASS
    assert message.count("trained on another worker") == 1 and "lr=0.2" in message
    assert any("trained on another worker" in line for line in s.notes[key])
    doc = s.run_document()
    cells = {c["cell_id"]: c["outcome"] for c in doc["experiments"][0]["cells"]}
    assert cells == {"lr=0.2": "crashed"}
    from hpspec.html import render_html

    assert "crashed" in render_html(doc)  # the HTML report shows it as well


@pytest.mark.slow
def test_a_halving_search_trains_once_with_two_workers_and_as_serially(pytester, monkeypatch):
    # A halving search ranks all its trials together, whichever worker their items land on:
    # it trains once, on the first worker that needs it, and the other takes its results
    # (without that, each worker trained the whole search: 38 seed trainings against 20).
    # Serially, with -n 2 and with --dist loadgroup: the same seeds trained, the same pruning,
    # outcomes and curves, and the Hyperband brackets in the summary.
    pytester.makepyfile(exp_search=SEARCH)
    tmp = pytester.mkdir("tmp")
    monkeypatch.setenv("TMPDIR", str(tmp))  # where the controller makes the shared folder
    runs = {}
    for name, (calls, outcomes, doc, out) in _ways(
            pytester, monkeypatch, 13, serial=(), par=("-n", "2"),
            group=("-n", "2", "--dist", "loadgroup")).items():
        pruned = {(e["name"], c["cell_id"]): c["result"]["seeds"][0]["measurements"].get(
            "pruned_at_epoch") for e in doc["experiments"] for c in e["cells"]}
        runs[name] = calls, outcomes, pruned, out
    calls, outcomes, pruned, out = runs["serial"]
    assert len(calls) == 20 and sum(v is not None for v in pruned.values()) == 7
    assert "Hyperband bracket 0: 2 trial(s) t00..t01, ranked at epochs 1, 2" in out
    for name in ("par", "group"):
        assert runs[name][0] == calls, name  # each seed trained as often as serially
        assert_same_runs(outcomes, runs[name][1])
        assert runs[name][2] == pruned, name
        assert runs[name][3].count("Hyperband bracket 0: 2 trial(s) t00..t01, ranked at "
                                   "epochs 1, 2") == 1
        # the search stacked its trials on its worker: no "each cell stacked alone" note
        assert "stacked with its own seeds only" not in runs[name][3].split("::halved")[1]
    assert not list(tmp.glob("hpspec-xdist-*"))  # the controller removed its folder


def test_run_once_does_the_work_once_and_a_failed_worker_leaves_it_to_the_next(tmp_path):
    import threading
    import time

    done: list[str] = []
    started = threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(0.3)
        done.append("work")
        return "answer"

    got: list[str | None] = []
    first = threading.Thread(target=lambda: got.append(run_once(tmp_path, "s", slow)))
    first.start()
    assert started.wait(10)
    # asked while the first is working: waits for it (a lock of its own open file, as
    # another process would), then takes its answer instead of working
    assert run_once(tmp_path, "s", lambda: "again") == "answer"
    first.join()
    assert got == [None] and done == ["work"]
    assert run_once(tmp_path, "s", lambda: "again") == "answer"  # asked later: the same

    def dies() -> str:
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        run_once(tmp_path, "other", dies)
    assert run_once(tmp_path, "other", lambda: "second") is None  # the next one works
    assert run_once(tmp_path, "other", lambda: "third") == "second"


OPTUNA_SEARCH = """
import os
import torch
import hpspec as hp

SPACE = hp.space(lr=hp.loguniform(1e-3, 1.0), batch_size=hp.choice([32, 128]))

@hp.experiment(search=hp.optuna(SPACE, trials=6, sampler="tpe", seed=3, batch=3),
               epochs=2, data=hp.datasets.digits(n_train=200),
               claims=[hp.expect(~hp.diverges())])
def asked(case):
    with open(os.environ["HPSPEC_CALLS"], "a") as f:  # one line per seed trained
        f.write(f"{case.cell_id} {case.lr} {case.seed}\\n")
    model = hp.models.mlp(64, [8], 10)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""


@pytest.mark.slow
def test_an_optuna_search_runs_once_with_two_workers_and_as_serially(pytester, monkeypatch):
    # An Optuna search's trials depend on each other: under -n 2 (without --dist loadgroup,
    # so both workers get trials) the first worker that needs one runs the search and the
    # other takes its results; with the cache off, each worker ran it itself before.
    pytest.importorskip("optuna")
    pytester.makepyfile(exp_asked=OPTUNA_SEARCH)
    tmp = pytester.mkdir("tmp")
    monkeypatch.setenv("TMPDIR", str(tmp))
    runs = {}
    for name, (calls, outcomes, doc, _) in _ways(pytester, monkeypatch, 6, serial=(),
                                                 par=("-n", "2")).items():
        params = {c["cell_id"]: c["params"] for e in doc["experiments"] for c in e["cells"]}
        runs[name] = calls, outcomes, params
    calls, outcomes, params = runs["serial"]
    assert len(calls) >= 6
    assert runs["par"][0] == calls  # each trial's seed trained once, with the same values
    assert_same_runs(outcomes, runs["par"][1])
    assert runs["par"][2] == params and all("lr" in p for p in params.values())


def _ways(pytester, monkeypatch, passed, **ways):
    """Run the pytester's files once per way (name -> pytest arguments), cache off, each
    seed training logged to HPSPEC_CALLS: per way, the sorted calls, the outcomes and JSON
    document (``_outcomes``) and the terminal output."""
    runs = {}
    for name, args in ways.items():
        monkeypatch.setenv("HPSPEC_CALLS", str(pytester.path / f"{name}.calls"))
        result = pytester.runpytest_subprocess(*args, "--hpspec-cache=off",
                                               f"--hpspec-json={name}.json")
        result.assert_outcomes(passed=passed)
        calls = sorted((pytester.path / f"{name}.calls").read_text().splitlines())
        outcomes, doc = _outcomes(pytester.path / f"{name}.json")
        runs[name] = calls, outcomes, doc, result.stdout.str()
    return runs


def _search_tables(out: str) -> dict[str, str]:
    """Each experiment's search table in a run's summary (from its "search:" line to its
    importance line), by experiment key."""
    import re

    parts = re.split(r"^-+ hpspec: (\S+) -+$", out, flags=re.M)
    tables = {}
    for key, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("search: ")), None)
        if start is None:
            continue
        end = next(i for i in range(start + 1, len(lines))
                   if not lines[i].startswith("  ") or lines[i].startswith("  stacked:"))
        tables[key] = "\n".join(lines[start:end])
    return tables


@pytest.mark.slow
def test_the_controller_shows_a_search_table_as_a_serial_run_does(pytester, monkeypatch):
    # The controller collects nothing: it showed a search as a plain grid table (and its JSON
    # had no search summary) until the workers sent what the search table reads.
    pytest.importorskip("optuna")
    pytester.makepyfile(exp_search=SEARCH, exp_asked=OPTUNA_SEARCH)
    monkeypatch.setenv("TMPDIR", str(pytester.mkdir("tmp")))
    tables, searches = {}, {}
    for name, args in (("serial", ()), ("par", ("-n", "2"))):
        monkeypatch.setenv("HPSPEC_CALLS", str(pytester.path / f"{name}.calls"))
        result = pytester.runpytest_subprocess(*args, "--hpspec-cache=off",
                                               f"--hpspec-json={name}.json")
        result.assert_outcomes(passed=19)
        tables[name] = _search_tables(result.stdout.str())
        _, doc = _outcomes(pytester.path / f"{name}.json")
        searches[name] = {e["key"]: e.get("search") for e in doc["experiments"]}
    serial = tables["serial"]
    assert set(serial) == {"exp_search.py::halved", "exp_search.py::banded",
                           "exp_asked.py::asked"}, serial
    assert "pruned in all" in serial["exp_search.py::halved"]
    assert "bracket 2: 2 trial(s) t04..t05, never pruned" in serial["exp_search.py::banded"]
    assert "asked 3 at a time" in serial["exp_asked.py::asked"]
    assert tables["par"] == serial
    assert all(searches["serial"].values()) and searches["par"] == searches["serial"]


def test_a_worker_sends_a_search_once_and_the_controller_rebuilds_its_table():
    # (quick: no workers) what the controller's search table is made from, round-tripped
    # through the payload's JSON, gives the table and document of the collected experiment
    import importlib.util

    import hpspec as hp
    from hpspec.distributed import CellPayload, cell_payload, read_payload
    from hpspec.search import search_document, search_table
    from hpspec.session import Session
    from hpspec.spec import build

    space = hp.space(lr=hp.loguniform(1e-3, 1.0), act=hp.choice(["relu", "tanh"]), hidden=16)
    samplers = {
        "banded": hp.random(space, trials=6, seed=2,
                            halving=hp.hyperband(min_epochs=1, eta=2, metric="val_acc")),
        "halved": hp.sobol(space, trials=5, halving=hp.halving(min_epochs=1, eta=2)),
        "asked": hp.optuna(space, trials=4, sampler="random", metric="val_acc"),
    }
    if importlib.util.find_spec("optuna") is None:
        del samplers["asked"]
    for name, sampler in samplers.items():
        def recipe(case):
            return None

        recipe.__name__ = recipe.__qualname__ = name
        exp = build(hp.experiment(search=sampler, epochs=3,
                                  data=hp.datasets.digits(n_train=100))(recipe))
        key = f"exp_s.py::{name}"
        worker = Session(device_option="cpu", table="auto", cache="off", worker="gw0")
        worker.register(key, exp, "exp_s.py", name)
        record = worker.records[key][exp.cells[0].id]
        sent = [read_payload(cell_payload(key, worker.payload_info(key), record, []))
                for _ in range(2)]
        assert isinstance(sent[0], CellPayload) and sent[0].info.search is not None
        assert sent[1].info.search is None  # once per worker process
        controller = Session(device_option="cpu", table="auto", cache="off")
        for p in sent:
            controller.merge_payload(p)
        rebuilt = controller.search_experiment(key)
        assert rebuilt is not None and controller.info[key].search is None
        assert search_table(rebuilt, {}) == search_table(exp, {}), name
        assert search_document(rebuilt, {}) == search_document(exp, {}), name
        assert [c.id for c in rebuilt.cells] == [c.id for c in exp.cells]
