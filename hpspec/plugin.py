"""pytest glue: options, collection of ``exp_*.py`` files, one item per grid cell, summary.

Thin on purpose: validation lives in :mod:`hpspec.spec`, judgement in :mod:`hpspec.claims`,
training in :mod:`hpspec.engine.runner` (imported only when a cell runs, so this module does not
import torch), text in :mod:`hpspec.report`.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import inspect
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from _pytest._code.code import ExceptionInfo, TerminalRepr

from hpspec.claims import INCONCLUSIVE, CellClaim, Reaches, Verdict, judge_cell_claim
from hpspec.cross import CrossClaim, decide, judge_adaptive
from hpspec.errors import CellError, HpspecError, SpecError
from hpspec.report import CellRecord, render_claims, render_experiment
from hpspec.results import CellResult
from hpspec.spec import Cell, Experiment, RawSpec, build

_HPSPEC_DIR = os.path.dirname(os.path.abspath(__file__))
TABLE_CHOICES = ("full", "short", "none")
INCONCLUSIVE_CHOICES = ("fail", "skip", "xfail")
HOLM_CHOICES = ("off", "experiment", "run")


# ----------------------------------------------------------------------------------- options


def parse_device(value: str) -> str:
    value = value.strip().lower()
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        return value
    raise argparse.ArgumentTypeError(
        f"--hpspec-device: {value!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
    )


def parse_table(value: str) -> str:
    value = value.strip().lower()
    if value in TABLE_CHOICES:
        return value
    raise argparse.ArgumentTypeError(
        f"--hpspec-table: {value!r} is not one of {', '.join(TABLE_CHOICES)}"
    )


def parse_columns(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z_][\w.<>=+-]*", n)]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"--hpspec-columns: {value!r} is not a comma-separated list of column names; "
            "e.g. --hpspec-columns=verdict,val_acc,samples_per_s,peak_memory"
        )
    return names


def _choice(flag: str, choices: tuple[str, ...]) -> Any:
    def parse(value: str) -> str:
        value = value.strip().lower()
        if value in choices:
            return value
        raise argparse.ArgumentTypeError(f"{flag}: {value!r} is not one of {', '.join(choices)}")

    return parse


parse_cache = _choice("--hpspec-cache", ("use", "refresh", "off"))
parse_stack = _choice("--hpspec-stack", ("on", "off"))
parse_inconclusive = _choice("--hpspec-inconclusive", INCONCLUSIVE_CHOICES)
parse_holm = _choice("--hpspec-holm", HOLM_CHOICES)


def parse_threads_option(value: str) -> Any:
    from hpspec.threads import parse_threads

    try:
        return parse_threads(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_timeout(value: str) -> float | None:
    if value.strip().lower() in ("", "none", "0"):
        return None
    try:
        t = float(value)
    except ValueError:
        t = math.nan
    if not 0 < t < math.inf:
        raise argparse.ArgumentTypeError(
            f"--hpspec-timeout: {value!r} is not a positive number of seconds; e.g. 600")
    return t


def parse_limits_option(value: str) -> Any:
    from hpspec.gate import parse_limits

    try:
        return parse_limits(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--hpspec-compare-fail: {e}") from None


def parse_confidence(value: str) -> float:
    try:
        c = float(value)
    except ValueError:
        c = math.nan
    if not 0.5 <= c < 1:
        raise argparse.ArgumentTypeError(
            f"--hpspec-confidence: {value!r} is not a probability in [0.5, 1); e.g. 0.95"
        )
    return c


def _file_path(text: str) -> str:
    """A file hpspec writes: not empty, not an existing directory."""
    if not text or Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} must be a file path (it names a directory "
                                         "or nothing), e.g. results/run.csv")
    return text


def _dir_path(text: str) -> str:
    """A directory hpspec writes into: not empty, not an existing file."""
    if not text or Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} must be a directory (it names a file or "
                                         "nothing), e.g. runs/tb")
    return text


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hpspec", "hpspec: hyperparameter experiments")
    group.addoption(
        "--hpspec-device",
        type=parse_device,
        default=None,
        help="device to train on: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps. "
        "ini: hpspec_device. Default auto.",
    )
    group.addoption(
        "--hpspec-table",
        type=parse_table,
        default=None,
        help="summary table per experiment at the end of the run: full (every column, with "
        "a legend), short (verdict, validation metrics, samples/s, peak memory) or none. "
        "ini: hpspec_table. Default full.",
    )
    group.addoption(
        "--hpspec-columns",
        type=parse_columns,
        default=None,
        metavar="NAMES",
        help="comma-separated columns of the summary table (the grid's axes always come "
        "first): verdict, a metric name (val_loss, ...), diverged, time_to_<metric><op><target>, "
        "time_per_epoch, samples_per_s, steps_per_s, peak_memory, params, flops_per_sample, "
        "mfu. ini: hpspec_columns.",
    )
    group.addoption(
        "--hpspec-confidence",
        type=parse_confidence,
        default=None,
        help="confidence of statistical verdicts (compare, trend, best, mean claims). "
        "ini: hpspec_confidence. Default 0.95.",
    )
    group.addoption(
        "--hpspec-inconclusive",
        type=parse_inconclusive,
        default=None,
        help="what an undecided statistical claim does: fail, skip or xfail. "
        "ini: hpspec_inconclusive. Default fail.",
    )
    group.addoption(
        "--hpspec-holm",
        type=parse_holm,
        default=None,
        help="Holm correction of cross-cell claims: off, experiment (over each experiment's "
        "selected claims) or run (over all selected claims). ini: hpspec_holm. Default off.",
    )
    group.addoption(
        "--hpspec-stack",
        type=parse_stack,
        default=None,
        help="on: cells that differ only in optimizer hyperparameters or seed train together "
        "as one stacked model (same results, much faster for grids of small models); off: one "
        "by one. An experiment can say stack=False. ini: hpspec_stack. Default on.",
    )
    group.addoption(
        "--hpspec-threads",
        type=parse_threads_option,
        default=None,
        metavar="auto|N",
        help="torch intra-op threads per run on the CPU: auto (one thread when the model's "
        "parameters x batch size is under 2**23, else torch's default) or N. Recorded in "
        "the environment and part of the cache key. ini: hpspec_threads. Default auto.",
    )
    group.addoption(
        "--hpspec-full-curves",
        action="store_true",
        default=None,
        help="train every seed for all its epochs, even when its claims are decided early.",
    )
    group.addoption(
        "--hpspec-timeout",
        type=parse_timeout,
        default=None,
        metavar="SECONDS",
        help="time budget per cell (all its seeds); a cell past it stops between steps and "
        "fails. An experiment's own timeout= wins. ini: hpspec_timeout. Default none.",
    )
    group.addoption(
        "--hpspec-workers-per-gpu",
        type=int,
        default=1,
        metavar="K",
        help="under pytest-xdist: K workers share each GPU (small models gain from it); "
        "-n auto then starts GPUs x K workers.",
    )
    group.addoption(
        "--hpspec-ray",
        default=None,
        metavar="ADDRESS",
        help="train cells as Ray tasks: local (a private local cluster), auto (the running "
        "cluster this machine belongs to) or ray://HOST:10001. Needs pip install "
        "'hpspec[ray]'. ini: hpspec_ray.",
    )
    group.addoption("--hpspec-ray-gpus", type=float, default=0.0, metavar="N",
                    help="GPUs per Ray task (fractions share a GPU: 0.25). Default 0.")
    group.addoption("--hpspec-ray-cpus", type=int, default=None, metavar="N",
                    help="CPUs of the local cluster --hpspec-ray=local starts (default: all).")
    group.addoption(
        "--hpspec-store",
        default=None,
        metavar="PATH",
        help="the SQLite results store (default .hpspec/results.sqlite under the rootdir). "
        "ini: hpspec_store.",
    )
    group.addoption(
        "--hpspec-cache",
        type=parse_cache,
        default=None,
        help="use: a cell whose cache key has stored results is not retrained; refresh: "
        "retrain and store; off: no store at all. ini: hpspec_cache. Default use.",
    )
    group.addoption("--hpspec-save", default=None, metavar="NAME",
                    help="name this run in the store, as a baseline to compare with later.")
    group.addoption(
        "--hpspec-compare",
        default=None,
        metavar="NAME|latest|ID|FILE.json",
        help="compare this run's numbers with a baseline: a saved name, latest (the newest "
        "finished run), a run id, or a file written by --hpspec-export.",
    )
    group.addoption(
        "--hpspec-compare-fail",
        type=parse_limits_option,
        default=None,
        metavar="LIMITS",
        help="fail the run when a cell moved past a limit against the baseline: "
        "METRIC:+AMOUNT (a rise fails) or METRIC:-AMOUNT% (a fall fails), comma-separated, "
        "e.g. val_loss:+0.02,throughput:-10%.",
    )
    group.addoption("--hpspec-compare-force", action="store_true", default=False,
                    help="compare timings even when the baseline ran on another environment.")
    group.addoption("--hpspec-export", default=None, metavar="FILE",
                    help="write the run as JSON for a CI artifact (the --hpspec-json document "
                    "plus the environment fingerprint); --hpspec-compare FILE reads it back.")
    group.addoption(
        "--hpspec-profile",
        default=None,
        metavar="NAME",
        help="apply a profile: overrides registered with hp.register_profile or given in an "
        "experiment's profiles= (fewer epochs or seeds, a sub-grid). ini: hpspec_profile.",
    )
    group.addoption(
        "--hpspec-inference",
        action="store_true",
        default=None,
        help="after training, profile each cell's model for inference with pytorch-benchmark "
        "(latency at batch 1 and at the batch size, MACs, CUDA inference memory); needs "
        "pip install 'hpspec[inference]'.",
    )
    group.addoption(
        "--hpspec-html",
        default=None,
        metavar="PATH",
        help="write the run as one self-contained HTML file (curves per cell, a heatmap over "
        "two grid axes, the tables; no scripts, no network) to PATH.",
    )
    group.addoption(
        "--hpspec-json",
        default=None,
        metavar="PATH",
        help="write every cell, seed, curve, measurement and verdict, with the environment, "
        "as JSON (schema hpspec-run, version 1) to PATH.",
    )
    group.addoption("--hpspec-csv", default=None, metavar="PATH", type=_file_path,
                    help="write one row per cell and seed (hyperparameters, final metrics, "
                    "measurements) as CSV to PATH.")
    group.addoption("--hpspec-tensorboard", default=None, metavar="DIR", type=_dir_path,
                    help="write each cell's curves as TensorBoard scalars, with its "
                    "hyperparameters and final metrics for the HParams dashboard, under DIR "
                    "(one run per cell and seed); needs pip install 'hpspec[tensorboard]'.")
    group.addoption("--hpspec-grade", default=None, metavar="PATH", type=_file_path,
                    help="grade the run by the claims' points= (1 when not given) and write "
                    "Gradescope's results.json to PATH; the summary shows the scores.")
    parser.addini("hpspec_confidence", "default for --hpspec-confidence", default="0.95")
    parser.addini("hpspec_inconclusive", "default for --hpspec-inconclusive", default="fail")
    parser.addini("hpspec_holm", "default for --hpspec-holm", default="off")
    parser.addini("hpspec_files", "glob patterns of experiment files", type="args",
                  default=["exp_*.py"])
    parser.addini("hpspec_device", "default for --hpspec-device", default="auto")
    parser.addini("hpspec_table", "default for --hpspec-table", default="full")
    parser.addini("hpspec_columns", "default for --hpspec-columns", default="")
    parser.addini("hpspec_stack", "default for --hpspec-stack", default="on")
    parser.addini("hpspec_threads", "default for --hpspec-threads", default="auto")
    parser.addini("hpspec_store", "default for --hpspec-store", default="")
    parser.addini("hpspec_timeout", "default for --hpspec-timeout", default="")
    parser.addini("hpspec_ray", "default for --hpspec-ray", default="")
    parser.addini("hpspec_cache", "default for --hpspec-cache", default="use")
    parser.addini("hpspec_profile", "default for --hpspec-profile", default="")


def _option(config: pytest.Config, name: str, parse: Any) -> Any:
    value = config.getoption(f"--hpspec-{name}")
    if value is not None:
        return value
    raw = config.getini(f"hpspec_{name}")
    try:
        return parse(raw)
    except argparse.ArgumentTypeError as e:
        raise pytest.UsageError(f"{e} (from the ini option hpspec_{name})") from None


# ------------------------------------------------------------------------------------- state


@attrs.define
class State:
    """Everything hpspec keeps for one pytest session (in ``config.stash``)."""

    device_option: str
    table: str
    columns: tuple[str, ...] | None = None
    inference: bool = False
    stack: bool = True
    full_curves: bool = False
    cache: str = "use"
    timeout: float | None = None
    store_path: Path | None = None
    save_name: str | None = None
    profile: str | None = None
    store: Any = None  # hpspec.store.Store, opened on first use
    run_id: int | None = None
    store_error: str | None = None
    cached_cells: set[tuple[str, str]] = attrs.field(factory=set)
    gate_rows: list[Any] = attrs.field(factory=list)
    gate_warnings: list[str] = attrs.field(factory=list)
    gate_baseline: str | None = None
    #: Per experiment key: name, axes and time-to-target claims (from collection, or from
    #: xdist workers' payloads on the controller, which collects nothing).
    info: dict[str, Any] = attrs.field(factory=dict)
    #: Under xdist: this process's worker id and the number of workers (None on controller).
    worker: str | None = None
    workers: int = 1
    stack_off_reason: str | None = None
    #: Stack a cell's seeds, never several cells (an xdist worker without --dist loadgroup).
    stack_alone: bool = False
    #: The module attribute each experiment's function is bound to (for Ray tasks).
    attrs_of: dict[str, tuple[str, str]] = attrs.field(factory=dict)
    ray: Any = None
    #: (key, cell id) -> index of its Ray task; answers by task index once fetched.
    ray_jobs: dict[tuple[str, str], int] = attrs.field(factory=dict)
    ray_refs: list[Any] = attrs.field(factory=list)
    ray_answers: dict[int, Any] = attrs.field(factory=dict)
    confidence: float = 0.95
    inconclusive: str = "fail"
    holm: str = "off"
    device: str | None = None
    experiments: dict[str, Experiment] = attrs.field(factory=dict)
    records: dict[str, dict[str, CellRecord]] = attrs.field(factory=dict)
    results: dict[tuple[str, str], CellResult] = attrs.field(factory=dict)
    spec_errors: list[str] = attrs.field(factory=list)
    failures: dict[tuple[str, str], str] = attrs.field(factory=dict)
    cross: dict[str, dict[str, Verdict]] = attrs.field(factory=dict)
    selected_claims: set[tuple[str, str]] = attrs.field(factory=set)
    #: Cells each experiment's selected items need (their own, and their claims').
    wanted: dict[str, set[str]] = attrs.field(factory=dict)
    #: Cells already offered to stacked training (trained, or left to run one by one).
    stack_tried: set[tuple[str, str]] = attrs.field(factory=set)
    #: One line per experiment about how it was trained (stacked, or why not).
    notes: dict[str, list[str]] = attrs.field(factory=dict)
    #: Intra-op threads: "auto" (the rule in hpspec.threads) or a count.
    threads: Any = "auto"

    def resolve_device(self) -> str:
        if self.device is None:
            from hpspec.engine.runner import select_device

            self.device = select_device(self.device_option)
            if self.worker is not None and self.workers > 1 and self.device == "cpu":
                # n workers with all cores each oversubscribe the CPU (-n 2 was slower than
                # serial on 2 cores): each takes its share.
                import torch

                torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.workers))
        return self.device

    def result(self, key: str, exp: Experiment, cell: Cell, progress: Any = None) -> CellResult:
        """The cell's result, training it the first time it is asked for."""
        __tracebackhide__ = True
        found = self.results.get((key, cell.id))
        if self.stack_off_reason and exp.mode == "recipe" and exp.stack:
            self.note(key, self.stack_off_reason)
        cached: list[Any] = []
        if found is None and self.cache == "use":
            cached = self.cached_seeds(exp, cell, exp.seeds)
            if len(cached) == len(exp.seeds):
                found = self._from_cache(key, exp, cell, cached)
        if found is None and not cached and (key, cell.id) in self.ray_jobs:
            found = self._from_ray(key, exp, cell)
        if found is None and not cached and self.stack and (key, cell.id) not in self.stack_tried:
            self._train_stacked(key, exp, cell, progress)
            found = self.results.get((key, cell.id))
        if found is None:
            from hpspec.plan import stop_rule
            from hpspec.engine.runner import run_cell

            have = {s.seed for s in cached}
            try:
                fresh = run_cell(exp, cell, self.resolve_device(), progress=progress,
                                 inference=self.inference,
                                 seeds=tuple(x for x in exp.seeds if x not in have),
                                 stop=stop_rule(exp, cell.as_dict(), self.full_curves),
                                 on_seed=lambda r: self.save_seed(key, exp, cell, r),
                                 timeout=self.timeout, threads=self.threads)
                found = attrs.evolve(fresh, seeds=tuple(sorted(
                    (*cached, *fresh.seeds), key=lambda r: exp.seeds.index(r.seed))))
            except BaseException as e:
                self.failures[(key, cell.id)] = f"{type(e).__name__}: {e}"
                raise
            self._store(key, cell, found)
        return found

    # ------------------------------------------------------------------ store and cache

    def open_store(self) -> Any:
        """The results store, opened (and this run recorded) on first use; None when off
        or unusable (the reason goes to the summary, the run goes on)."""
        if self.store is not None or self.cache == "off" or self.store_error:
            return self.store
        from hpspec.store import Store

        try:
            self.store = Store.open(self.store_path or Path(".hpspec/results.sqlite"))
            if self.run_id is None and self.worker is None:
                self.run_id = self.store.begin_run(environment(self.device, self.threads),
                                                   self.save_name)
        except Exception as e:  # a read-only disk, say: results still reach the report
            self.store_error = f"store {self.store_path}: {type(e).__name__}: {e}"
            self.store = None
        return self.store

    def seed_key(self, exp: Experiment, cell: Cell, seed: int) -> str:
        from hpspec.plan import stop_rule
        from hpspec.engine.runner import data_digest
        from hpspec.spec import source_digest
        from hpspec.store import cache_key
        from hpspec.threads import threads_key

        import hpspec

        torch = __import__("torch")
        return cache_key({
            "source": source_digest(exp.fn),
            "experiment": exp.name,
            "params": {k: repr(v) for k, v in cell.as_dict().items()},
            "seed": seed,
            "data": data_digest(exp.data) if exp.data is not None else None,
            "epochs": exp.epochs_for(cell) if exp.mode == "recipe" or exp.epochs else None,
            "batch_size": exp.batch_size_for(cell),
            "mode": exp.mode,
            "versions": {"hpspec": hpspec.__version__, "torch": torch.__version__},
            "device": self.resolve_device(),
            # curves differ between thread counts in the last digits: the setting, and the
            # count "auto" starts from, are part of what produced a result
            "threads": threads_key(self.threads, torch.get_num_threads()),
            # a seed that may stop early has a shorter curve: part of what it is
            "stops_early": getattr(stop_rule(exp, cell.as_dict(), self.full_curves),
                                   "targets", None),
        })

    def cached_seeds(self, exp: Experiment, cell: Cell, seeds: tuple[int, ...]) -> list[Any]:
        store = self.open_store()
        if store is None:
            return []
        out = []
        for seed in seeds:
            hit = store.cached_seed(self.seed_key(exp, cell, seed))
            if hit is not None:
                out.append(hit)
        return out

    def _from_cache(self, key: str, exp: Experiment, cell: Cell, seeds: list[Any]) -> CellResult:
        result = CellResult(experiment=exp.name, cell_id=cell.id, params=cell.as_dict(),
                            device=self.resolve_device(), seeds=tuple(seeds))
        self.cached_cells.add((key, cell.id))
        self.records[key][cell.id].note = "cached"
        for r in seeds:
            self.save_seed(key, exp, cell, r, cached=True)
        self._store(key, cell, result)
        return result

    def save_seed(self, key: str, exp: Experiment, cell: Cell, result: Any,
                  cached: bool = False) -> None:
        """Commit one finished seed (called the moment it finishes)."""
        store = self.open_store()
        if store is None or self.run_id is None:
            return
        try:
            store.put_seed(self.run_id, self.seed_key(exp, cell, result.seed), key, cell.id,
                           cell.as_dict(), self.resolve_device(), result, cached=cached)
        except Exception as e:
            self.store_error = f"store {store.path}: {type(e).__name__}: {e}"

    def _from_ray(self, key: str, exp: Experiment, cell: Cell) -> CellResult:
        """This cell's result from its Ray task (waiting for it), storing every cell the
        task trained; a cell the task could not train raises its error here."""
        __tracebackhide__ = True
        from hpspec.ray_backend import collect

        index = self.ray_jobs[(key, cell.id)]
        if index not in self.ray_answers:
            try:
                self.ray_answers[index] = collect(self.ray, self.ray_refs[index],
                                                  f"{exp.where}[{cell.id}]")
            except CellError as e:
                self.ray_answers[index] = {"results": {}, "errors": {
                    cid: str(e) for (k, cid), i in self.ray_jobs.items() if i == index},
                    "notes": []}
            answer = self.ray_answers[index]
            for line in answer["notes"]:
                self.note(key, line)
            for cid, data in answer["results"].items():
                target = next(c for c in exp.cells if c.id == cid)
                result = CellResult.from_dict(data)
                self.device = self.device or result.device
                for r in result.seeds:
                    self.save_seed(key, exp, target, r)
                self._store(key, target, result)
            for cid, text in answer["errors"].items():
                self.failures[(key, cid)] = text
        found = self.results.get((key, cell.id))
        if found is None:
            error = self.ray_answers[index]["errors"].get(cell.id, "no result came back")
            raise CellError(error if error.startswith(exp.where) else
                            f"{exp.where}[{cell.id}] (on Ray): {error}")
        return found

    def submit_to_ray(self, config: pytest.Config) -> None:
        """Submit every wanted, uncached cell as Ray tasks, up front."""
        from hpspec.plan import timing_claim
        from hpspec.ray_backend import connect, submit
        from hpspec.engine.runner import stackable_cells
        from hpspec.spec import PROFILES

        address = config.getoption("--hpspec-ray") or config.getini("hpspec_ray")
        self.ray = connect(address, Path(config.rootpath), config.getoption("--hpspec-ray-cpus"))
        jobs: list[dict[str, Any]] = []
        for key, wanted in self.wanted.items():
            exp = self.experiments[key]
            cells = [c for c in exp.cells if c.id in wanted and not (
                self.cache == "use" and len(self.cached_seeds(exp, c, exp.seeds)) == len(
                    exp.seeds))]
            stack = (self.stack and exp.stack and exp.mode == "recipe"
                     and timing_claim(exp) is None and exp.timeout is None
                     and self.timeout is None and not self.inference)
            buckets = stackable_cells(exp, cells) if stack else [[c] for c in cells]
            path, attr = self.attrs_of[key]
            try:
                rel = os.path.relpath(path, config.rootpath)
            except ValueError:
                rel = path
            for bucket in buckets:
                for c in bucket:
                    self.ray_jobs[(key, c.id)] = len(jobs)
                jobs.append({"path": path, "rel": rel, "attr": attr,
                             "cell_ids": [c.id for c in bucket], "seeds": None,
                             "device": self.device_option,
                             "options": {"stack": stack, "full_curves": self.full_curves,
                                         "timeout": self.timeout, "profile": self.profile,
                                         "profiles": dict(PROFILES)}})
        self.ray_refs = submit(self.ray, jobs, config.getoption("--hpspec-ray-gpus"),
                               retries=1)

    def _wait_for_peers(self, key: str, exp: Experiment, cell: Cell,
                        patience: float = 30.0) -> None:
        """On an xdist worker, a claim's cell may be training on another worker: wait for its
        seeds to reach the store (while any seed keeps arriving, up to ``patience`` seconds
        without one) rather than train it twice."""
        import time

        if (key, cell.id) in self.results or self.cache != "use" or self.open_store() is None:
            return
        last, seen = time.monotonic(), -1
        while time.monotonic() - last < patience:
            have = len(self.cached_seeds(exp, cell, exp.seeds))
            if have == len(exp.seeds):
                return
            if have != seen:
                last, seen = time.monotonic(), have
            time.sleep(0.2)

    def note(self, key: str, line: str) -> None:
        lines = self.notes.setdefault(key, [])
        if line not in lines:
            lines.append(line)

    def _train_stacked(self, key: str, exp: Experiment, cell: Cell, progress: Any) -> None:
        """Train ``cell`` with every pending cell it can share a stacked model with."""
        __tracebackhide__ = True
        from hpspec.plan import stop_rule, timing_claim
        from hpspec.engine.runner import run_stacked, stackable_cells

        if exp.mode != "recipe" or self.inference:
            return
        if not exp.stack:
            self.note(key, "trained one by one: the experiment says stack=False")
            return
        if exp.timeout is not None or self.timeout is not None:
            self.note(key, "trained one by one: each cell has its own time budget")
            return
        timing = timing_claim(exp)
        if timing is not None:
            self.note(key, f"trained one by one, so that each cell's timing is its own: "
                      f"claim {timing!r} times the training")
            return
        wanted = (self.wanted.get(key) or {c.id for c in exp.cells}) | {cell.id}  # once: linear
        pending = [c for c in exp.cells
                   if c.id in wanted and (key, c.id) not in self.results
                   and (key, c.id) not in self.failures and (key, c.id) not in self.stack_tried
                   and (c.id == cell.id or self.cache != "use"
                        or not self.cached_seeds(exp, c, exp.seeds))]
        bucket = (next(b for b in stackable_cells(exp, pending) if cell in b)
                  if not self.stack_alone else [cell])
        self.stack_tried.update((key, c.id) for c in bucket)
        rules = {c.id: stop_rule(exp, c.as_dict(), self.full_curves) for c in bucket}
        report = None
        if progress is not None:
            def report(epoch: int, epochs: int, loss: float) -> None:
                progress(1, 1, epoch, epochs, loss)
        try:
            results, why = run_stacked(exp, bucket, self.resolve_device(), progress=report,
                                       stop_rules=rules, threads=self.threads)
        except Exception as e:  # the cells then run one by one and report their own errors
            self.note(key, f"stacked training failed ({type(e).__name__}: {e}); trained one "
                      "by one")
            return
        by_id = {c.id: c for c in bucket}  # a dict, not a search per result: linear in K
        for cell_id, result in results.items():
            target = by_id[cell_id]
            for r in result.seeds:
                self.save_seed(key, exp, target, r)
            self._store(key, target, result)
        if results and not self.stack_alone:  # (stack_off_reason says it for a worker)
            sizes = sorted({int(r.seeds[0].measurements.get("stacked", 1))
                            for r in results.values()})
            self.note(key, f"stacked: {len(results)} cell(s) trained in groups of "
                      f"{', '.join(map(str, sizes))} (cells x seeds as one model); their "
                      "samples/s is each cell's samples over the group's time; "
                      "--hpspec-stack=off trains them one by one")
        if why:
            reason = next(iter(why.values()))
            self.note(key, f"trained one by one ({len(why)} cells): {reason}")

    def _store(self, key: str, cell: Cell, result: CellResult) -> None:
        self.results[(key, cell.id)] = result
        record = self.records[key][cell.id]
        record.result = result
        if record.outcome == "not run":  # trained for a claim, its own item not selected
            record.outcome = "for claims"

    def with_seeds(self, key: str, exp: Experiment, cell: Cell, n: int) -> CellResult:
        """The cell's result with at least ``n`` seeds (adaptive seeding trains the rest)."""
        __tracebackhide__ = True
        have = self.result(key, exp, cell)
        if len(have.seeds) >= n:
            return have
        from hpspec.engine.runner import PROBED, run_cell

        start = max(s.seed for s in have.seeds) + 1
        probed = {m: v for m, v in have.seeds[0].measurements.items()
                  if m in PROBED or m.startswith("inference_")}
        extra = tuple(range(start, start + n - len(have.seeds)))
        cached = self.cached_seeds(exp, cell, extra) if self.cache == "use" else []
        for r in cached:
            self.save_seed(key, exp, cell, r, cached=True)
        done = {r.seed for r in cached}
        todo = tuple(x for x in extra if x not in done)
        more = run_cell(exp, cell, self.resolve_device(), seeds=todo, probed=probed,
                        on_seed=lambda r: self.save_seed(key, exp, cell, r),
                        timeout=self.timeout, threads=self.threads).seeds if todo else ()
        grown = attrs.evolve(have, seeds=tuple(sorted((*have.seeds, *cached, *more),
                                                      key=lambda r: r.seed)))
        self._store(key, cell, grown)
        return grown

    def needed_results(self, key: str, exp: Experiment, claim: CrossClaim,
                       n: int | None = None) -> dict[str, CellResult]:
        """Results of every cell a cross-cell claim needs; a failed cell is named."""
        __tracebackhide__ = True
        out = {}
        for cell in exp.cells:
            if not claim.selects(cell.as_dict()):
                continue
            failed = self.failures.get((key, cell.id))
            if failed is None:
                try:
                    if self.worker is not None and not n:
                        self._wait_for_peers(key, exp, cell)
                    out[cell.id] = (self.with_seeds(key, exp, cell, n) if n
                                    else self.result(key, exp, cell))
                    continue
                except Exception:
                    failed = self.failures.get((key, cell.id), "it raised while training")
            raise NeededCellFailed(
                f"{exp.where}: claim {claim.slug()!r} needs cell {exp.name}[{cell.id}], which "
                f"failed: {failed.splitlines()[0] if failed else ''}"
            )
        return out

    def cross_verdict(self, key: str, exp: Experiment, claim: CrossClaim) -> Verdict:
        """Judge a cross-cell claim (with adaptive seeds and Holm's correction when on)."""
        __tracebackhide__ = True
        cache = self.cross.setdefault(key, {})
        if claim.slug() in cache:
            return cache[claim.slug()]
        family = [(key, exp, claim)]
        if self.holm != "off":
            family += [
                (k, e, c)
                for k, e in self.experiments.items()
                if self.holm == "run" or k == key
                for c in e.claims
                if isinstance(c, CrossClaim) and (k, c.slug()) in self.selected_claims
                and (k, c.slug()) != (key, claim.slug())
            ]
        judged: dict[tuple[str, str], tuple[CrossClaim, Verdict]] = {}
        for k, e, c in family:
            try:
                judged[(k, c.slug())] = (c, self._judge_one(k, e, c))
            except NeededCellFailed:
                if c is claim:
                    raise
                # That claim errors in its own item; it leaves the family.
        if len(judged) > 1:
            judged = _holm(judged, self.confidence)
        for (k, slug), (_, verdict) in judged.items():
            self.cross.setdefault(k, {})[slug] = verdict
        return cache[claim.slug()]

    def _judge_one(self, key: str, exp: Experiment, claim: CrossClaim) -> Verdict:
        __tracebackhide__ = True
        alpha = claim.alpha(1 - self.confidence)
        if exp.adaptive is None:
            return claim.judge(self.needed_results(key, exp, claim), alpha)
        return judge_adaptive(
            claim, lambda n: self.needed_results(key, exp, claim, n), exp.adaptive, alpha
        )


def _holm(
    judged: dict[tuple[str, str], tuple[CrossClaim, Verdict]], confidence: float
) -> dict[tuple[str, str], tuple[CrossClaim, Verdict]]:
    from hpspec.stats import holm

    names = list(judged)
    ps = [judged[n][1] for n in names]
    adj_pass = holm([v.p_pass if v.p_pass is not None else 1.0 for v in ps])
    adj_fail = holm([v.p_fail if v.p_fail is not None else 1.0 for v in ps])
    out = {}
    for n, pp, pf in zip(names, adj_pass, adj_fail):
        claim, v = judged[n]
        alpha = claim.alpha(1 - confidence)
        out[n] = claim, attrs.evolve(
            v,
            outcome=decide(pp, pf, alpha),
            message=v.message + f"\nHolm-adjusted over {len(names)} claims: p = {pp:.3g} "
            f"for, {pf:.3g} against",
            p_pass=pp,
            p_fail=pf,
        )
    return out


class NeededCellFailed(HpspecError):
    """A cross-cell claim cannot be judged because a cell it needs failed to train."""


STATE = pytest.StashKey[State]()


# ---------------------------------------------------------------------------- pytest-xdist


def _configure_xdist(config: pytest.Config, state: State) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # a worker
        state.worker = workerinput.get("workerid")
        state.workers = int(workerinput.get("workercount", 1))
        state.run_id = workerinput.get("hpspec_run_id")
        if not workerinput.get("hpspec_stack_ok", True) and state.stack:
            # Items of one stacked group would be spread over workers, and each would
            # train the whole group: each cell stacks only its own seeds instead.
            state.stack_alone = True
            state.stack_off_reason = ("each cell stacked with its own seeds only: under -n, "
                                      "stacked groups need --dist loadgroup to stay on one "
                                      "worker")
        gpu = workerinput.get("hpspec_gpu")
        if gpu is not None:  # before anything initialises CUDA in this process
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        return
    dist = getattr(config.option, "dist", "no")
    n = getattr(config.option, "numprocesses", None)
    if dist in ("loadscope", "loadfile") and n not in (None, 0, 1):
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            f"hpspec: --dist {dist} sends a whole experiment file to one worker, so a grid "
            "trains on one worker while the others idle; use the default (-n N), or "
            "--dist loadgroup to keep stacked cells together"), stacklevel=2)


def _gpu_ids() -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(x) for x in visible.split(",") if x.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except Exception:
        return []


GPU_POOL = pytest.StashKey[Any]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Controller, for each worker it starts: the run id, and a GPU from the pool."""
    config = node.config
    state = config.stash[STATE]
    if state.cache != "off":
        state.open_store()
    node.workerinput["hpspec_run_id"] = state.run_id
    node.workerinput["hpspec_stack_ok"] = getattr(config.option, "dist", "no") == "loadgroup"
    if config.stash.get(GPU_POOL, None) is None:
        from hpspec.distributed import GpuPool

        config.stash[GPU_POOL] = GpuPool(_gpu_ids(), config.getoption("--hpspec-workers-per-gpu"))
    gpu = config.stash[GPU_POOL].lend(node.gateway.id)
    if gpu is not None:
        node.workerinput["hpspec_gpu"] = gpu


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    pool = node.config.stash.get(GPU_POOL, None)
    if pool is not None:
        pool.give_back(node.gateway.id)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # the user's explicit choice, which xdist reads
    gpus = _gpu_ids()
    if not gpus:
        return None  # xdist's own choice: the CPU count
    return len(gpus) * max(1, config.getoption("--hpspec-workers-per-gpu"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Controller: take hpspec's payload off a worker's report (before junit XML sees it)
    and merge it into this session's state."""
    config = _CONTROLLER_CONFIG[0] if _CONTROLLER_CONFIG else None
    if config is None or hasattr(config, "workerinput"):
        return  # a worker: the payload travels on with the report
    props = getattr(report, "user_properties", None)
    if not props or not any(k == PAYLOAD_KEY for k, _ in props):
        return
    texts = [v for k, v in props if k == PAYLOAD_KEY]
    report.user_properties = [(k, v) for k, v in props if k != PAYLOAD_KEY]
    from hpspec.distributed import read_payload

    state = config.stash[STATE]
    for text in texts:
        d = read_payload(text)
        key = d["key"]
        state.info[key] = d["info"]
        if d["kind"] == "cell":
            record = CellRecord(d["info"].name, d["cell_id"], d["params"], d["outcome"],
                                d["result"], d["verdicts"], d["note"] or "", d["order"])
            state.records.setdefault(key, {})[d["cell_id"]] = record
            if d["result"] is not None:
                state.results[(key, d["cell_id"])] = d["result"]
                state.device = state.device or d["result"].device
            if d["note"] == "cached":
                state.cached_cells.add((key, d["cell_id"]))
            for line in d["notes"]:
                state.note(key, line)
        elif d["verdict"] is not None:
            state.records.setdefault(key, {})
            state.cross.setdefault(key, {})[d["slug"]] = d["verdict"]


PAYLOAD_KEY = "hpspec._payload"
_CONTROLLER_CONFIG: list[pytest.Config] = []


def _store_path(config: pytest.Config) -> Path:
    raw = config.getoption("--hpspec-store") or config.getini("hpspec_store") or ""
    path = Path(raw) if raw else Path(".hpspec") / "results.sqlite"
    return path if path.is_absolute() else Path(config.rootpath) / path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hpspec: a hyperparameter cell or claim run by hpspec")
    # hpspec marks stackable cells for --dist loadgroup, with or without xdist installed
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist's loadgroup group")
    config.stash[STATE] = State(
        device_option=_option(config, "device", parse_device),
        table=_option(config, "table", parse_table),
        confidence=_option(config, "confidence", parse_confidence),
        inconclusive=_option(config, "inconclusive", parse_inconclusive),
        holm=_option(config, "holm", parse_holm),
        columns=_option(config, "columns", lambda v: parse_columns(v) if v.strip() else None),
        inference=bool(config.getoption("--hpspec-inference")),
        stack=_option(config, "stack", parse_stack) == "on",
        full_curves=bool(config.getoption("--hpspec-full-curves")),
        cache=_option(config, "cache", parse_cache),
        timeout=_option(config, "timeout", parse_timeout),
        threads=_option(config, "threads", parse_threads_option),
        store_path=_store_path(config),
        save_name=config.getoption("--hpspec-save"),
        profile=config.getoption("--hpspec-profile") or config.getini("hpspec_profile") or None,
    )
    state = config.stash[STATE]
    _CONTROLLER_CONFIG[:] = [config]
    _configure_xdist(config, state)
    if state.cache == "off" and (state.save_name or config.getoption("--hpspec-compare")):
        ref = config.getoption("--hpspec-compare")
        if state.save_name or not (ref and ref.endswith(".json")):
            raise pytest.UsageError(
                "--hpspec-cache=off turns the store off, so there is nothing to save to or "
                "compare with; drop --hpspec-cache=off (or compare with an exported .json)")
    if config.getoption("--hpspec-compare-fail") and not config.getoption("--hpspec-compare"):
        raise pytest.UsageError("--hpspec-compare-fail needs a baseline: add "
                                "--hpspec-compare NAME|latest|FILE.json")
    if config.stash[STATE].inference:
        from hpspec.engine.probes import InferenceUnavailable, _benchmark_module

        try:
            _benchmark_module()
        except InferenceUnavailable as e:
            raise pytest.UsageError(str(e)) from None


# -------------------------------------------------------------------------------- collection


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".py":
        return None
    patterns = parent.config.getini("hpspec_files")
    if any(fnmatch.fnmatch(file_path.name, p) for p in patterns):
        return ExperimentFile.from_parent(parent, path=file_path)
    return None


class ExperimentFile(pytest.Module):
    """An experiment file: imported like a test module, it yields one item per grid cell."""

    def collect(self) -> Iterator[pytest.Item]:  # type: ignore[override]
        module = self.obj
        state = self.config.stash[STATE]
        seen: set[int] = set()
        for attr, fn in list(vars(module).items()):
            raw = getattr(fn, "__hpspec__", None)
            if not isinstance(raw, RawSpec) or id(fn) in seen:
                continue
            if getattr(fn, "__module__", module.__name__) != module.__name__:
                continue  # imported from another experiment file: collected there
            seen.add(id(fn))
            try:
                exp = build(fn)
            except SpecError as e:
                state.spec_errors.append(str(e))
                yield SpecErrorItem.from_parent(self, name=attr, error=e, fn=fn)
                continue
            key = f"{self.nodeid}::{exp.name}"
            if state.profile:
                from hpspec.spec import apply_profile

                try:
                    exp, notes = apply_profile(exp, state.profile)
                except SpecError as e:
                    state.spec_errors.append(str(e))
                    yield SpecErrorItem.from_parent(self, name=attr, error=e, fn=fn)
                    continue
                for line in notes:
                    state.note(key, line)
            state.experiments[key] = exp
            state.info[key] = _info(exp)
            state.attrs_of[key] = (str(self.path), attr)
            records = state.records.setdefault(key, {})
            for i, cell in enumerate(exp.cells):
                cid = cell.id  # formatted from the params on each access: once per cell
                records[cid] = CellRecord(exp.name, cid, cell.as_dict(), order=i)
                name = f"{exp.name}[{cid}]"
                # The id is given as text so pytest parses its "[params]" part the way it
                # does for parametrized tests (--lf and the cache compare parsed ids).
                item = CellItem.from_parent(
                    self, name=name, nodeid=f"{self.nodeid}::{name}", exp=exp, cell=cell, key=key
                )
                if exp.mode == "recipe" and exp.stack:
                    # Cells that may train as one stacked model stay on one xdist worker
                    # under --dist loadgroup.
                    item.add_marker(pytest.mark.xdist_group(
                        f"hpspec:{key}:{exp.batch_size_for(cell)}:{exp.epochs_for(cell)}"))
                yield item
            for claim in exp.claims:
                if isinstance(claim, CrossClaim):
                    name = f"{exp.name}[{claim.slug()}]"
                    yield ClaimItem.from_parent(
                        self, name=name, nodeid=f"{self.nodeid}::{name}", exp=exp, claim=claim,
                        key=key,
                    )


def _info(exp: Experiment) -> Any:
    from hpspec.distributed import ExpInfo

    targets = tuple(c.condition for c in exp.claims
                    if isinstance(c, CellClaim) and isinstance(c.condition, Reaches))
    return ExpInfo(exp.name, exp.axes, targets)


def _fn_location(fn: Any) -> tuple[int | None]:
    try:
        return (inspect.getsourcelines(fn)[1] - 1,)
    except (OSError, TypeError):
        return (None,)


class _HpspecItem(pytest.Item):
    fn: Any
    exp: Experiment
    key: str

    def _bind(self, exp: Experiment, key: str) -> None:
        self.exp = exp
        self.key = key
        self.fn = exp.fn
        self.add_marker(pytest.mark.hpspec)

    # hpspec's own errors (false claims, spec and cell errors) carry a complete message; a
    # traceback would only show hpspec's insides. Anything else is the user's exception.
    def repr_failure(  # type: ignore[override]
        self, excinfo: ExceptionInfo[BaseException], style: Any = None
    ) -> str | TerminalRepr:
        if isinstance(excinfo.value, HpspecError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def _repr_failure_py(  # type: ignore[override]
        self, excinfo: ExceptionInfo[BaseException], style: Any = None
    ) -> str | TerminalRepr:
        # pytest renders errors raised in setup through this method, not repr_failure.
        if isinstance(excinfo.value, HpspecError):
            return str(excinfo.value)
        return super()._repr_failure_py(excinfo, style)


    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, _fn_location(self.fn)[0], self.name

    def _traceback_filter(self, excinfo: ExceptionInfo[BaseException]) -> Any:
        # Show the user's code, not hpspec's or pytest's: cut every frame that lives in
        # hpspec, pluggy or _pytest.
        tb = excinfo.traceback

        def keep(entry: Any) -> bool:
            path = str(entry.path)
            return not (
                path.startswith(_HPSPEC_DIR)
                or f"{os.sep}_pytest{os.sep}" in path
                or f"{os.sep}pluggy{os.sep}" in path
            )

        filtered = tb.filter(keep)
        return filtered if len(filtered) else tb


class SpecErrorItem(_HpspecItem):
    """Stands in for an experiment whose spec is broken: errors in setup with the message,
    while the rest of the session runs."""

    def __init__(self, *, error: SpecError, fn: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error
        self.fn = fn

    def setup(self) -> None:
        raise self.error

    def runtest(self) -> None:  # pragma: no cover - setup always raises
        raise self.error

    def _repr_failure_py(  # type: ignore[override]
        self, excinfo: ExceptionInfo[BaseException], style: Any = None
    ) -> str | TerminalRepr:
        return f"hpspec spec error: {excinfo.value}"


class ClaimsFailed(HpspecError):
    def __init__(self, verdicts: list[Verdict]) -> None:
        super().__init__("\n\n".join(v.message for v in verdicts))
        self.verdicts = verdicts


class CellItem(_HpspecItem):
    """One grid cell: trains its seeds, then judges the per-cell claims that select it."""

    def __init__(self, *, exp: Experiment, cell: Cell, key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bind(exp, key)
        self.cell = cell

    def runtest(self) -> None:
        __tracebackhide__ = True
        state = self.config.stash[STATE]
        record = state.records[self.key][self.cell.id]
        record.outcome = "error"
        try:
            self._run(state, record)
        finally:
            if state.worker is not None:
                from hpspec.distributed import PAYLOAD, cell_payload

                self.user_properties.append((PAYLOAD, cell_payload(
                    self.key, state.info[self.key], record, state.notes.get(self.key, []))))

    def _run(self, state: State, record: CellRecord) -> None:
        __tracebackhide__ = True
        progress, done = _live_progress(self.config, self.name)
        try:
            result = state.result(self.key, self.exp, self.cell, progress)
        finally:
            done()
        record.result = result
        params = self.cell.as_dict()
        verdicts = [
            judge_cell_claim(c, result.seeds)
            for c in self.exp.claims
            if isinstance(c, CellClaim) and c.applies_to(params)
        ]
        record.verdicts = verdicts
        for name, value in _key_numbers(result).items():
            self.user_properties.append((f"hpspec.{name}", value))
        failed = [v for v in verdicts if not v.passed]
        record.outcome = "FAILED" if failed else "passed"
        if failed:
            if all(v.outcome == INCONCLUSIVE for v in failed):
                record.outcome = "inconclusive"
                _inconclusive(state, failed)
            raise ClaimsFailed(failed)


#: Seconds between two progress lines (cells shorter than this never show one).
PROGRESS_INTERVAL = 0.5


def _live_progress(config: pytest.Config, name: str) -> tuple[Any, Any]:
    """On an interactive terminal, a status line (cell, seed, epoch k/N, loss) that the cell's
    result replaces; nothing on CI logs, pipes, or xdist workers."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if (reporter is None or not getattr(reporter, "isatty", False)
            or hasattr(config, "workerinput") or config.option.verbose < 0):
        return None, lambda: None
    import time

    writer = getattr(reporter, "_tw", None)
    saved = getattr(writer, "_current_line", "")
    last = [time.monotonic()]  # cells shorter than the interval never show a line
    shown = [False]

    def progress(k: int, n: int, epoch: int, epochs: int, loss: float) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_INTERVAL:
            return
        last[0] = now
        shown[0] = True
        seeds = f" seed {k}/{n}" if n > 1 else ""
        reporter.rewrite(f"{saved} {name}{seeds} epoch {epoch}/{epochs} loss {loss:.4g}",
                         erase=True)

    def done() -> None:
        if shown[0]:
            reporter.rewrite(saved, erase=True)

    return progress, done


def _inconclusive(state: State, verdicts: list[Verdict]) -> None:
    """Skip or xfail an undecided claim when asked to; by default it fails like a false one."""
    text = "\n\n".join(v.message for v in verdicts)
    if state.inconclusive == "skip":
        pytest.skip(f"inconclusive: {text}")
    if state.inconclusive == "xfail":
        pytest.xfail(f"inconclusive: {text}")


class ClaimItem(_HpspecItem):
    """A claim across cells (compare, trend, best): its own item, run after its cells."""

    def __init__(self, *, exp: Experiment, claim: CrossClaim, key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bind(exp, key)
        self.claim = claim

    def setup(self) -> None:
        # Training the cells this claim needs (when it runs alone) and naming a failed one
        # belong to setup: a failure here is an error of the claim, not a false claim.
        __tracebackhide__ = True
        self.config.stash[STATE].needed_results(self.key, self.exp, self.claim)

    def runtest(self) -> None:
        __tracebackhide__ = True
        state = self.config.stash[STATE]
        try:
            self._run(state)
        finally:
            if state.worker is not None:
                from hpspec.distributed import PAYLOAD, claim_payload

                verdict = state.cross.get(self.key, {}).get(self.claim.slug())
                self.user_properties.append((PAYLOAD, claim_payload(
                    self.key, state.info[self.key], self.claim.slug(), verdict)))

    def _run(self, state: State) -> None:
        __tracebackhide__ = True
        verdict = state.cross_verdict(self.key, self.exp, self.claim)
        if verdict.p_pass is not None:
            self.user_properties.append(("hpspec.p_value", float(verdict.p_pass)))
        self.user_properties.append(("hpspec.verdict", verdict.outcome))
        if verdict.outcome == INCONCLUSIVE:
            _inconclusive(state, [verdict])
        if not verdict.passed:
            raise ClaimsFailed([verdict])


def _key_numbers(result: CellResult) -> dict[str, float]:
    """Means over seeds of the final metrics and measurements, as plain floats (junit-safe)."""
    out: dict[str, list[float]] = {}
    for s in result.seeds:
        for name, curve in s.curves.items():
            if curve:
                out.setdefault(f"{name}", []).append(float(curve[-1]))
        for name, value in s.measurements.items():
            out.setdefault(name, []).append(float(value))
    return {k: sum(v) / len(v) for k, v in out.items()}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    state = config.stash[STATE]
    state.selected_claims = {(i.key, i.claim.slug()) for i in items if isinstance(i, ClaimItem)}
    state.wanted = {}
    for i in items:
        if isinstance(i, CellItem):
            state.wanted.setdefault(i.key, set()).add(i.cell.id)
        elif isinstance(i, ClaimItem):
            state.wanted.setdefault(i.key, set()).update(
                c.id for c in i.exp.cells if i.claim.selects(c.as_dict()))
    # Resolve the device before anything trains, so a bad --hpspec-device is one usage error
    # rather than one failure per cell; only when cells will run (torch loads here).
    if config.option.collectonly or not any(isinstance(i, CellItem) for i in items):
        return
    if (config.getoption("--hpspec-ray") or config.getini("hpspec_ray")) and state.worker is None:
        from hpspec.ray_backend import RayUnavailable

        try:
            state.submit_to_ray(config)
        except RayUnavailable as e:
            raise pytest.UsageError(str(e)) from None
        return  # the device is chosen where the tasks run
    try:
        config.stash[STATE].resolve_device()
    except CellError as e:
        raise pytest.UsageError(str(e)) from None


# ----------------------------------------------------------------------------------- summary


def pytest_terminal_summary(
    terminalreporter: Any, exitstatus: int, config: pytest.Config
) -> None:
    state = config.stash.get(STATE, None)
    if state is None:
        return
    _summary_store(terminalreporter, state)
    if state.table == "none":
        return
    from hpspec.grade import score_line

    grades = _grades(state, config)
    for key, records in state.records.items():
        ran = sorted((r for r in records.values() if r.outcome != "not run"),
                     key=lambda r: r.order)
        if not ran:
            continue
        info = state.info[key]
        terminalreporter.write_sep("-", f"hpspec: {key}")
        terminalreporter.write_line(
            render_experiment(info.name, info.axes, ran, device=state.device,
                              targets=info.targets, table=state.table, pick=state.columns)
        )
        for line in state.notes.get(key, []):
            terminalreporter.write_line(f"  {line}")
        cross = state.cross.get(key)
        if cross:
            terminalreporter.write_line(render_claims(list(cross.values())))
        if grades is not None:
            for e in grades["experiments"]:
                if e["key"] == key:
                    terminalreporter.write_line(f"{info.name}: {score_line(e['score'], e['max_score'])}")
    if grades is not None:
        terminalreporter.write_line(f"hpspec: run {score_line(grades['score'], grades['max_score'])}",
                                    bold=True)



def _grades(state: State, config: pytest.Config) -> dict[str, Any] | None:
    """The run graded by its claims' points (see hpspec.grade), when a claim has points= or
    --hpspec-grade was given; None otherwise."""
    from hpspec.grade import declared, grade

    claims = [c for k in state.records for c in state.experiments[k].claims]
    if not config.getoption("--hpspec-grade", None) and all(
            getattr(c, "points", None) is None for c in claims):
        return None
    items = []
    for key, records in state.records.items():
        ran = {r.cell_id: r.params for r in records.values() if r.outcome != "not run"}
        selected = [slug for k, slug in state.selected_claims if k == key]
        items += declared(key, state.info[key].name, state.experiments[key].claims, ran,
                          selected)
    return grade(run_document_of(state), items)


def _summary_store(terminalreporter: Any, state: State) -> None:
    from hpspec.report import render_gate

    if state.store_error:
        terminalreporter.write_line(f"hpspec: {state.store_error}; results were not stored",
                                    yellow=True)
    if state.gate_rows or state.gate_warnings:
        terminalreporter.write_sep("-", f"hpspec: compared with {state.gate_baseline}")
        for w in state.gate_warnings:
            terminalreporter.write_line(f"warning: {w}", yellow=True)
        if state.gate_rows:
            terminalreporter.write_line(render_gate(state.gate_rows))
        failed = [r for r in state.gate_rows if r.failed]
        if failed:
            terminalreporter.write_line(
                f"hpspec: {len(failed)} number(s) moved past --hpspec-compare-fail: the run "
                "fails", red=True, bold=True)
    if state.cached_cells:
        terminalreporter.write_line(
            f"hpspec: {len(state.cached_cells)} cell(s) from the cache in {state.store_path} "
            "(--hpspec-cache=refresh retrains them)")


def environment(device: str | None, threads: Any = "auto") -> dict[str, Any]:
    """What produced the numbers: versions, device, CPU count, threads, git commit when there
    is one."""
    import platform
    import sys

    from hpspec import __version__

    env: dict[str, Any] = {
        "hpspec": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": device,
        # the setting; each seed's measurements say the count it trained with ("threads")
        "threads": str(threads),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["intra_op_threads"] = torch.get_num_threads()  # what "auto" starts from
        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
        if device and device.startswith("cuda"):
            env["device_name"] = torch.cuda.get_device_name(device)
    env["git_commit"] = _git_commit()
    return env


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The checkout's commit, asked of git once per session (environment() is built at the
    run's start and again for its documents)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_document_of(state: State) -> dict[str, Any]:
    """The session's results as an ``hpspec-run`` document (plain data)."""
    from hpspec.report import run_document

    experiments = []
    for key, records in state.records.items():
        info = state.info[key]
        ran = sorted((r for r in records.values() if r.outcome != "not run"),
                     key=lambda r: r.order)
        if ran or state.cross.get(key):
            experiments.append(
                (key, info.name, info.axes, ran, list(state.cross.get(key, {}).values()))
            )
    return run_document(experiments, environment(state.device, state.threads))


def _record_run(state: State, exitstatus: int) -> None:
    """Cells' outcomes and verdicts into the store, and the run marked finished."""
    store = state.store
    if store is None or state.run_id is None:
        return
    try:
        for key, records in state.records.items():
            for r in records.values():
                if r.outcome == "not run":
                    continue
                store.put_cell(state.run_id, key, r.cell_id, r.params, r.outcome)
                for v in r.verdicts:
                    store.put_verdict(state.run_id, key, r.cell_id, v.claim, v.outcome,
                                      v.p_pass, v.p_fail, v.message)
            for v in state.cross.get(key, {}).values():
                store.put_verdict(state.run_id, key, None, v.claim, v.outcome, v.p_pass,
                                  v.p_fail, v.message)
        status = {0: "passed", 1: "failed", 2: "interrupted"}.get(int(exitstatus), "error")
        store.finish_run(state.run_id, status)
    except Exception as e:
        state.store_error = f"store {store.path}: {type(e).__name__}: {e}"


def _current_numbers(state: State) -> dict[tuple[str, str], dict[str, float]]:
    from hpspec.gate import cell_numbers

    return {k: cell_numbers([s.to_dict() for s in r.seeds]) for k, r in state.results.items()}


def _gate(state: State, config: pytest.Config) -> bool:
    """Compare with the baseline; True when a limit was passed (the run then fails)."""
    import json

    from hpspec.gate import cell_numbers, compare_runs
    from hpspec.store import fingerprint

    ref = config.getoption("--hpspec-compare")
    if not ref:
        return False
    baseline: dict[tuple[str, str], dict[str, float]] = {}
    if ref.endswith(".json"):
        try:
            doc = json.loads(Path(ref).read_text())
        except (OSError, ValueError) as e:
            state.gate_warnings.append(f"--hpspec-compare {ref}: cannot read it ({e})")
            return bool(config.getoption("--hpspec-compare-fail"))
        for exp in doc.get("experiments", []):
            for c in exp.get("cells", []):
                if c.get("result"):
                    baseline[(exp["key"], c["cell_id"])] = cell_numbers(c["result"]["seeds"])
        base_fp = doc.get("fingerprint")
        state.gate_baseline = ref
    else:
        store = state.open_store()
        row = store.find_run(ref, exclude=state.run_id) if store is not None else None
        if row is None:
            state.gate_warnings.append(
                f"--hpspec-compare {ref}: no such run in {state.store_path}; "
                "`python -m hpspec runs` lists them")
            return bool(config.getoption("--hpspec-compare-fail"))
        for k, cell in store.run_cells(row.id).items():
            if cell["seeds"]:
                baseline[k] = cell_numbers(cell["seeds"])
        base_fp = row.fingerprint
        state.gate_baseline = f"run {row.id}" + (f" ({row.name})" if row.name else "")
    limits = config.getoption("--hpspec-compare-fail") or []
    if not limits:  # compare without failing: show the usual suspects
        from hpspec.gate import parse_limits

        limits = parse_limits("val_loss:+0,val_acc:-0,samples_per_s:-0%")
    same = base_fp == fingerprint(environment(state.device, state.threads))
    rows, warnings = compare_runs(_current_numbers(state), baseline, limits, same,
                                  config.getoption("--hpspec-compare-force"))
    if not config.getoption("--hpspec-compare-fail"):
        rows = [attrs.evolve(r, failed=False) for r in rows]
    state.gate_rows, state.gate_warnings = rows, state.gate_warnings + warnings
    return any(r.failed for r in rows)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The store closed once the summary is written, its WAL folded into the file."""
    state = config.stash.get(STATE, None)
    if state is not None and state.store is not None:
        store, state.store = state.store, None
        store.close()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(STATE, None)
    if state is None or hasattr(config, "workerinput"):
        return
    if state.ray is not None:
        from hpspec.ray_backend import shutdown

        shutdown(state.ray)
    if _gate(state, config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    _record_run(state, session.exitstatus)
    json_path = config.getoption("--hpspec-json", None)
    html_path = config.getoption("--hpspec-html", None)
    export_path = config.getoption("--hpspec-export", None)
    csv_path = config.getoption("--hpspec-csv", None)
    tb_dir = config.getoption("--hpspec-tensorboard", None)
    grade_path = config.getoption("--hpspec-grade", None)
    if not (json_path or html_path or export_path or csv_path or tb_dir or grade_path):
        return
    import json

    from hpspec.store import fingerprint

    doc = run_document_of(state)
    if json_path:
        Path(json_path).write_text(json.dumps(doc, indent=1, allow_nan=False))
    if export_path:
        exported = {**doc, "fingerprint": fingerprint(doc["environment"])}
        Path(export_path).write_text(json.dumps(exported, indent=1, allow_nan=False))
    if html_path:
        from hpspec.html import render_html

        Path(html_path).write_text(render_html(doc), encoding="utf-8")
    if csv_path:
        from hpspec.export import write_csv

        write_csv(doc, csv_path)
    if tb_dir:
        from hpspec.export import write_tensorboard

        try:
            write_tensorboard(doc, tb_dir)
        except RuntimeError as e:  # tensorboard not installed: the rest of the run stands
            reporter = config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"hpspec: {e}", yellow=True)
    if grade_path:
        grades = _grades(state, config)
        Path(grade_path).write_text(json.dumps(grades, indent=1, allow_nan=False))
