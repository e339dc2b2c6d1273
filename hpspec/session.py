"""The run layer: "get this cell's result" and "judge this claim", for any front-end.

A :class:`Session` holds one run's options and state. It answers a cell's result from the
store's cache, a Ray task, a stacked group or one-by-one training (in that order), trains
more seeds for adaptive claims, gathers the cells a cross-cell claim needs, and applies Holm's
correction over a family of claims. The pytest plugin (:mod:`hpspec.plugin`) and
:func:`hpspec.run` both drive it. It imports neither pytest nor torch at module level.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from hpspec.claims import CellClaim, Reaches, Verdict
from hpspec.cross import CrossClaim, decide, judge_adaptive
from hpspec.errors import CellError, HpspecError
from hpspec.measures import is_probed
from hpspec.plan import StackGroup
from hpspec.report import CellRecord
from hpspec.results import CellResult
from hpspec.search import asked_key, search_key
from hpspec.spec import Cell, Experiment
from hpspec.vocabulary import CacheMode, HolmScope, InconclusiveAs, TableStyle

if TYPE_CHECKING:
    from hpspec.distributed import Payload
    from hpspec.ray_backend import RayAnswer, RayJob

# ------------------------------------------------------------------------------------- state


@attrs.define
class Session:
    """Everything hpspec keeps for one run: the options, the experiments, and every cell's
    result and verdict. The pytest plugin keeps one in ``config.stash``; :func:`hpspec.run`
    makes its own."""

    device_option: str
    table: TableStyle
    columns: tuple[str, ...] | None = None
    inference: bool = False
    stack: bool = True
    full_curves: bool = False
    cache: CacheMode = "use"
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
    #: Reports (--hpspec-json/-html/-export/...) that could not be written, one line each.
    report_warnings: list[str] = attrs.field(factory=list)
    #: Per experiment key: name, axes and time-to-target claims (from collection, or from
    #: xdist workers' payloads on the controller, which collects nothing).
    info: dict[str, Any] = attrs.field(factory=dict)
    #: Under xdist: this process's worker id and the number of workers (None on controller).
    worker: str | None = None
    workers: int = 1
    stack_off_reason: str | None = None
    #: Stack a cell's seeds, never several cells (an xdist worker without --dist loadgroup).
    stack_alone: bool = False
    #: Under xdist: a folder every worker of the run sees (work done once for all, such as a
    #: halving search; see hpspec.distributed.run_once). None serially.
    shared: str | None = None
    #: The module attribute each experiment's function is bound to (for Ray tasks).
    attrs_of: dict[str, tuple[str, str]] = attrs.field(factory=dict)
    ray: Any = None
    #: (key, cell id) -> index of its Ray task; answers by task index once fetched.
    ray_jobs: dict[tuple[str, str], int] = attrs.field(factory=dict)
    ray_refs: list[Any] = attrs.field(factory=list)
    ray_answers: dict[int, RayAnswer] = attrs.field(factory=dict)
    #: What a halving search's rung tasks need (sent when it runs, not up front): the
    #: directory paths are sent relative to, and --hpspec-ray-gpus.
    ray_root: Path | None = None
    ray_gpus: Any = 0
    #: Ray tasks a halving search sent so far, by experiment (for its note).
    ray_rung_tasks: dict[str, int] = attrs.field(factory=dict)
    confidence: float = 0.95
    inconclusive: InconclusiveAs = "fail"
    holm: HolmScope = "off"
    device: str | None = None
    experiments: dict[str, Experiment] = attrs.field(factory=dict)
    records: dict[str, dict[str, CellRecord]] = attrs.field(factory=dict)
    results: dict[tuple[str, str], CellResult] = attrs.field(factory=dict)
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
    #: Per experiment, the stacked groups trained and the cells offered to stacking that
    #: trained one by one (with why): the "stacked:" note tells every bucket, not the last.
    stacked_groups: dict[str, list[StackGroup]] = attrs.field(factory=dict)
    unstacked: dict[str, dict[str, str]] = attrs.field(factory=dict)
    #: Per search: fresh-seed results of the best trials and baselines (hp.found claims).
    found: dict[str, dict[str, CellResult]] = attrs.field(factory=dict)
    #: Controller under xdist: (key, cell id or claim slug) -> why its worker died.
    crashed: dict[tuple[str, str], str] = attrs.field(factory=dict)
    #: Controller under xdist: (key, claim slug) -> the cells the claim was judged with.
    claim_cells: dict[tuple[str, str], set[str]] = attrs.field(factory=dict)
    #: Controller under xdist: torch, CUDA and device as the first worker payload gave them
    #: (the controller itself never imports torch).
    worker_env: dict[str, Any] | None = None
    #: hp.optuna searches: each trial's cell with the values it was asked (once asked).
    asked_cells: dict[tuple[str, str], Cell] = attrs.field(factory=dict)
    #: hp.optuna searches that ran in this process: key -> why the search stopped (None: it
    #: asked every trial).
    asked_runs: dict[str, str | None] = attrs.field(factory=dict)
    #: Worker under xdist: the searches whose ExpInfo went to the controller with the search.
    search_sent: set[str] = attrs.field(factory=set)
    #: Controller under xdist: each search experiment as a worker described it (for the
    #: search table; hpspec.search.search_experiment).
    searches: dict[str, Experiment] = attrs.field(factory=dict)

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
        if getattr(exp.search, "asked", False):  # an Optuna trial: its values, asked now
            cell = self._asked_cell(key, exp, cell, progress)
        found = self.results.get((key, cell.id))
        halving = (exp.search is not None and exp.search.halving is not None
                   and exp.mode == "recipe")
        if self.stack_off_reason and exp.mode == "recipe" and exp.stack and not halving:
            self.note(key, self.stack_off_reason)  # (a halving search stacks on its worker)
        if (found is None and halving and (key, cell.id) not in self.stack_tried
                and (key, cell.id) not in self.ray_jobs):
            # Before the cache: the search serves its cached trials itself, and under xdist
            # another worker may be training it right now (this one then takes its results).
            self._search_once(key, exp, progress)
            found = self.results.get((key, cell.id))
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
            from hpspec.engine.runner import run_cell
            from hpspec.plan import stop_rule

            have = {s.seed for s in cached}
            # The run's record lists every seed the verdicts use, the cached ones too.
            for r in cached:
                self.save_seed(key, exp, cell, r, cached=True)
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
                self.store.mark_interrupted()
                self.run_id = self.store.begin_run(environment(self.device, self.threads),
                                                   self.save_name)
        except Exception as e:  # a read-only disk, say: results still reach the report
            self.store_error = f"store {self.store_path}: {type(e).__name__}: {e}"
            self.store = None
        return self.store

    def seed_key(self, exp: Experiment, cell: Cell, seed: int) -> str:
        import hpspec
        from hpspec.engine.runner import data_digest
        from hpspec.plan import stop_rule
        from hpspec.spec import source_digest
        from hpspec.store import cache_key
        from hpspec.threads import threads_key

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
            **search_key(exp, seed),
            **asked_key(exp, seed),
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
        from hpspec.ray_backend import RayAnswer, collect

        index = self.ray_jobs[(key, cell.id)]
        if index not in self.ray_answers:
            try:
                self.ray_answers[index] = collect(self.ray, self.ray_refs[index],
                                                  f"{exp.where}[{cell.id}]")
            except CellError as e:
                self.ray_answers[index] = RayAnswer(errors={
                    cid: str(e) for (k, cid), i in self.ray_jobs.items() if i == index})
            answer = self.ray_answers[index]
            for line in answer.notes:
                self.note(key, line)
            for cid, result in answer.results.items():
                target = next(c for c in exp.cells if c.id == cid)
                self.device = self.device or result.device
                for r in result.seeds:
                    self.save_seed(key, exp, target, r)
                self._store(key, target, result)
            for cid, text in answer.errors.items():
                self.failures[(key, cid)] = text
        found = self.results.get((key, cell.id))
        if found is None:
            error = self.ray_answers[index].errors.get(cell.id, "no result came back")
            raise CellError(error if error.startswith(exp.where) else
                            f"{exp.where}[{cell.id}] (on Ray): {error}")
        return found

    def submit_to_ray(self, address: str, root: Path, cpus: Any, gpus: Any) -> None:
        """Submit every wanted, uncached cell as Ray tasks, up front (``root``: the
        directory paths are sent relative to)."""
        from hpspec.engine.runner import stackable_cells
        from hpspec.plan import timing_claim
        from hpspec.ray_backend import connect, submit

        self.ray = connect(address, root, cpus)
        self.ray_root, self.ray_gpus = root, gpus
        jobs: list[RayJob] = []
        for key, wanted in self.wanted.items():
            exp = self.experiments[key]
            if getattr(exp.search, "asked", False):
                # Optuna asks the values as results come back: the search runs here
                self.note(key, "--hpspec-ray: an Optuna search runs in this process (each "
                          "batch's values depend on the results before it)")
                continue
            if (exp.search is not None and exp.search.halving is not None
                    and exp.mode == "recipe"):
                # the ranking needs every trial's rung: the halving loop runs here and sends
                # each rung's trials as Ray tasks when it gets to them (_train_on_ray)
                continue
            cells = [c for c in exp.cells if c.id in wanted and not (
                self.cache == "use" and len(self.cached_seeds(exp, c, exp.seeds)) == len(
                    exp.seeds))]
            stack = (self.stack and exp.stack and exp.mode == "recipe"
                     and timing_claim(exp) is None and exp.timeout is None
                     and self.timeout is None and not self.inference)
            buckets = stackable_cells(exp, cells) if stack else [[c] for c in cells]
            for bucket in buckets:
                for c in bucket:
                    self.ray_jobs[(key, c.id)] = len(jobs)
                jobs.append(self._ray_job(key, bucket, stack, {}))
        self.ray_refs = submit(self.ray, jobs, gpus,
                               retries=1)

    def _ray_job(self, key: str, cells: list[Cell], stack: bool,
                 stops: Mapping[str, int | None]) -> RayJob:
        """One Ray task's job: ``cells`` of experiment ``key`` (one stack, or one cell), each
        stopped after its ``stops`` epoch when it has one (a halving rung)."""
        from hpspec.ray_backend import RayJob
        from hpspec.spec import PROFILES

        path, attr = self.attrs_of[key]
        try:
            rel = os.path.relpath(path, self.ray_root or ".")
        except ValueError:
            rel = path
        options: dict[str, Any] = {"stack": stack, "full_curves": self.full_curves,
                                   "timeout": self.timeout, "profile": self.profile,
                                   "profiles": dict(PROFILES)}
        if any(stops.get(c.id) is not None for c in cells):
            options["stops"] = {c.id: stops[c.id] for c in cells if stops.get(c.id)}
        return RayJob(path, rel, attr, tuple(c.id for c in cells), None, self.device_option,
                      options)

    def _train_on_ray(self, key: str, exp: Experiment, cells: list[Cell],
                      stops: Mapping[str, int | None]) -> dict[str, CellResult]:
        """A halving search's training (a rung, or a round of every Hyperband bracket) under
        --hpspec-ray: one Ray task per stack of ``cells``, all sent at once, waited for here,
        where the ranking runs. The tasks train as this process would (the same stacked
        engine and stop epochs), so the search prunes the trials a serial run prunes. A
        trial whose task failed is left out of the ranking, as a trial that cannot train."""
        from hpspec.engine.runner import stackable_cells
        from hpspec.ray_backend import collect, submit

        stack = self._stacks_trials(exp)
        buckets = stackable_cells(exp, cells) if stack else [[c] for c in cells]
        jobs = [self._ray_job(key, bucket, stack, stops) for bucket in buckets]
        refs = submit(self.ray, jobs, self.ray_gpus, retries=1)
        got: dict[str, CellResult] = {}
        for job, ref in zip(jobs, refs, strict=True):
            try:
                answer = collect(self.ray, ref, f"{exp.where}[{job.cell_ids[0]}]")
            except CellError as e:
                self.note(key, f"halving: {len(job.cell_ids)} trial(s) lost with their Ray "
                          f"task, left out of the ranking ({e})")
                continue
            got.update(answer.results)
            for cid in answer.errors:
                self.note(key, f"halving: {cid} could not train (on Ray); left out of the "
                          "ranking")
        self.ray_rung_tasks[key] = self.ray_rung_tasks.get(key, 0) + len(jobs)
        lines = self.notes.setdefault(key, [])
        lines[:] = [line for line in lines if not line.startswith("--hpspec-ray: halving")]
        self.note(key, f"--hpspec-ray: halving ranks the trials in this process; each rung's "
                  f"trials trained as Ray tasks ({self.ray_rung_tasks[key]} task(s), "
                  f"{'one per batch size per round' if stack else 'one per trial'})")
        return got

    def _wait_for_peers(self, key: str, exp: Experiment, cell: Cell,
                        patience: float = 30.0) -> None:
        """On an xdist worker, a claim's cell may be training on another worker: wait for its
        seeds to reach the store (while any seed keeps arriving, up to ``patience`` seconds
        without one) rather than train it twice."""
        import time

        if (key, cell.id) in self.results or self.cache != "use" or self.open_store() is None:
            return
        if exp.search is not None and exp.search.halving is not None:
            return  # a halving search is trained once per run: result() waits for it
        last, seen = time.monotonic(), -1
        while time.monotonic() - last < patience:
            if self.crashed_elsewhere(key, cell):
                return
            have = len(self.cached_seeds(exp, cell, exp.seeds))
            if have == len(exp.seeds):
                return
            if have != seen:
                last, seen = time.monotonic(), have
            time.sleep(0.2)

    def crashed_elsewhere(self, key: str, cell: Cell) -> str | None:
        """On an xdist worker: why this cell's own item killed its worker in this run (the
        controller marks it in the store the moment it hears), or None."""
        store = self.open_store()
        if store is None or self.run_id is None:
            return None
        from hpspec.crashes import CRASH_MARK

        try:
            outcome = store.cell_outcome(self.run_id, key, cell.id)
        except Exception:
            return None
        return "its worker crashed" if outcome == CRASH_MARK else None

    def record_crash(self, nodeid: str, reason: str) -> None:
        """Controller: an item whose worker died. Marked in the store now (claims on other
        workers then refuse to retrain the cell); its record is settled at the end."""
        from hpspec.crashes import CRASH_MARK, split_nodeid

        parts = split_nodeid(nodeid, self.info)
        if parts is None:
            return
        self.crashed[parts] = reason
        if self.store is not None and self.run_id is not None:
            try:
                self.store.put_cell(self.run_id, parts[0], parts[1], {}, CRASH_MARK)
            except Exception as e:
                self.store_error = f"store {self.store.path}: {type(e).__name__}: {e}"

    def settle_crashes(self) -> None:
        """Controller, at the end: each crashed cell becomes a record (outcome ``crashed``,
        the reason as its note), a crashed claim a failed verdict, and a claim judged with a
        crashed cell (trained again on another worker) says so in its message and the notes."""
        from hpspec.claims import FAIL
        from hpspec.crashes import CRASH_MARK, parse_cell_id, retrained_line
        from hpspec.distributed import ExpInfo

        for (key, text), reason in self.crashed.items():
            info = self.info.get(key)
            params = parse_cell_id(text, info.axes) if info is not None else None
            if info is not None and params is None:  # not a cell id: the claim's own item
                self.cross.setdefault(key, {})[text] = Verdict(
                    text, FAIL, f"claim {text!r} was not judged: {reason}")
                self.records.setdefault(key, {})
                if self.store is not None and self.run_id is not None:
                    try:
                        self.store.drop_cell(self.run_id, key, text)
                    except Exception as e:
                        self.store_error = f"store {self.store.path}: {type(e).__name__}: {e}"
                continue
            if info is None:
                info = self.info[key] = ExpInfo(key.rpartition("::")[2], ())
            records = self.records.setdefault(key, {})
            old = records.get(text)
            if old is None or old.outcome in ("not run", "for claims", CRASH_MARK):
                result = self.results.get((key, text))
                note = reason + ("; numbers from its retraining for a claim" if result else "")
                order = max((r.order for r in records.values()), default=-1) + 1
                records[text] = CellRecord(info.name, text, params or {}, CRASH_MARK, result,
                                           [], note, old.order if old else order)
            self.failures[(key, text)] = reason
        for (key, slug), cells in self.claim_cells.items():
            used = {c: self.crashed[(key, c)] for c in cells if (key, c) in self.crashed}
            verdict = self.cross.get(key, {}).get(slug)
            if not used or verdict is None:
                continue
            line = retrained_line(slug, used)
            if line not in verdict.message:
                self.cross[key][slug] = attrs.evolve(verdict,
                                                     message=f"{verdict.message}\n{line}")
            self.note(key, line)

    def run_environment(self) -> dict[str, Any]:
        """The run's environment; under xdist the controller's, completed with torch, CUDA
        and device from a worker (so a serial and a -n run can compare timings)."""
        env = environment(self.device, self.threads)
        for k, v in (self.worker_env or {}).items():
            if env.get(k) is None:
                env[k] = v
        return env

    def payload_info(self, key: str) -> Any:
        """On a worker: the experiment's :class:`~hpspec.distributed.ExpInfo` for a payload;
        a search's first one in this process carries the search (the controller, which
        collects nothing, shows its search table from it: :meth:`search_experiment`)."""
        info = self.info[key]
        exp = self.experiments.get(key)
        if exp is None or exp.search is None or key in self.search_sent:
            return info
        from hpspec.search import search_info

        self.search_sent.add(key)
        return attrs.evolve(info, search=search_info(exp))

    def search_experiment(self, key: str) -> Experiment | None:
        """The search experiment of ``key`` for its table and document: the one collected
        here, or on an xdist controller the one a worker's payload described; None when
        ``key`` is no search."""
        exp = self.experiments.get(key)
        if exp is not None:
            return exp if exp.search is not None else None
        return self.searches.get(key)

    def worker_environment(self) -> dict[str, Any]:
        """On a worker: what the controller cannot know of the run's environment."""
        return torch_environment(self.device) if self.device else {}

    def note(self, key: str, line: str) -> None:
        lines = self.notes.setdefault(key, [])
        if line not in lines:
            lines.append(line)

    def _train_stacked(self, key: str, exp: Experiment, cell: Cell, progress: Any) -> None:
        """Train ``cell`` with every pending cell it can share a stacked model with."""
        __tracebackhide__ = True
        from hpspec.engine.runner import run_stacked, stackable_cells
        from hpspec.plan import stop_rule, timing_claim

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
            trained: list[StackGroup] = []
            results, why = run_stacked(exp, bucket, self.resolve_device(), progress=report,
                                       stop_rules=rules, groups=trained, threads=self.threads)
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
        if self.stack_alone:  # a worker stacks each cell's seeds alone (stack_off_reason)
            for reason in sorted(set(why.values())):
                cells = sorted(c for c, r in why.items() if r == reason)
                self.note(key, f"trained one by one ({len(cells)} cell(s), e.g. {cells[0]}): "
                          f"{reason}")
            return
        # one line for the experiment, over every bucket: groups, what kept them apart, and
        # why any cell trained alone
        from hpspec.plan import stacked_note

        groups = self.stacked_groups.setdefault(key, [])
        groups += trained
        alone = self.unstacked.setdefault(key, {})
        alone.update(why)
        lines = self.notes.setdefault(key, [])
        lines[:] = [line for line in lines if not line.startswith("stacked: ")]
        self.note(key, stacked_note(groups, alone))

    def _search_once(self, key: str, exp: Experiment, progress: Any,
                     search: Callable[[str, Experiment, Any], None] | None = None) -> None:
        """A halving search (or, with ``search=self._asked_search``, an Optuna search), run
        once per run: serially here; under xdist by the first worker that needs it, the
        others taking its results (the ranking is over all trials, wherever their items run,
        and an Optuna search's trials depend on each other, so each worker running it would
        double the work)."""
        __tracebackhide__ = True
        search = search or self._train_search
        if self.worker is None or not self.shared or not os.path.isdir(self.shared):
            search(key, exp, progress)
            return
        from hpspec.distributed import decode_results, encode_results, run_once

        def work() -> str:
            search(key, exp, progress)
            return encode_results({c.id: self.results[(key, c.id)] for c in exp.cells
                                   if (key, c.id) in self.results}, self.notes.get(key, []),
                                  [c.id for c in exp.cells if (key, c.id) in self.cached_cells])

        text = run_once(self.shared, f"search {key}", work)
        if text is None:  # this worker trained it
            return
        results, notes, cached = decode_results(text)
        asked = getattr(exp.search, "asked", False)
        self.stack_tried.update((key, c.id) for c in exp.cells)
        for c in exp.cells:
            if c.id in results:  # (its seeds are in the store already, from that worker)
                # an Optuna trial's cell carries the values that worker was asked
                cell = self._asked(key, exp, c.id, dict(results[c.id].params)) if asked else c
                if c.id in cached:
                    self.cached_cells.add((key, c.id))
                    self.records[key][c.id].note = "cached"
                self._store(key, cell, results[c.id])
        for line in notes:
            self.note(key, line)

    def _train_search(self, key: str, exp: Experiment, progress: Any) -> None:
        """Successive halving over every trial of the search (across stacked groups), in each
        Hyperband bracket: see :func:`hpspec.search.run_brackets`. A trial whose seeds are all
        cached is served from the cache at any rung it reached; the final results are stored
        and saved."""
        __tracebackhide__ = True
        from hpspec.search import run_brackets, search_brackets

        cells = {c.id: c for c in exp.cells}
        self.stack_tried.update((key, cid) for cid in cells)
        cached: dict[str, CellResult] = {}
        if self.cache == "use":
            for cid, c in cells.items():
                hit = self.cached_seeds(exp, c, exp.seeds)
                if len(hit) == len(exp.seeds):
                    cached[cid] = CellResult(experiment=exp.name, cell_id=cid,
                                             params=c.as_dict(), device=self.resolve_device(),
                                             seeds=tuple(hit))
        stack = self._stacks_trials(exp)
        report = None
        if progress is not None:
            def report(epoch: int, epochs: int, loss: float) -> None:
                progress(1, 1, epoch, epochs, loss)

        def train(targets: Mapping[str, int | None]) -> dict[str, CellResult]:
            # the one trainer of search trials (hp.optuna's too): budget, inference and
            # stacking as a grid cell has them; a round of every Hyperband bracket at once
            return self._train_to(key, exp, cells, cached, targets, report)

        def final(cid: str, result: CellResult) -> None:
            # saved as soon as it is decided: a search stopped half-way keeps these
            for r in result.seeds:  # (the run's record lists the cached seeds too)
                self.save_seed(key, exp, cells[cid], r, cached=cid in cached)
            if cid in cached:
                self.cached_cells.add((key, cid))
                self.records[key][cid].note = "cached"
            self._store(key, cells[cid], result)

        log: list[str] = []
        halving = exp.search.halving
        results = run_brackets(halving, {cid: exp.epochs_for(c) for cid, c in cells.items()},
                               train, log, final)
        trained = len([c for c in results if c not in cached])
        plan = search_brackets(exp)
        how = ("one by one" if not stack else "stacked per rung" if len(plan) == 1
               else "stacked per round, the brackets together")
        self.note(key, f"{halving.name()} over all {len(cells)} trials"
                  + (f" in {len(plan)} brackets" if len(plan) > 1 else "")
                  + f" ({len(cached)} served from the cache, {trained} trained"
                  + (f"; {how})" if trained else ")"))
        if len(plan) > 1:  # which trial is in which bracket: the summary says it, under -n too
            labels = {cid: c.label or cid for cid, c in cells.items()}
            for b in plan:
                self.note(key, f"Hyperband {b.describe(labels)}")
        for line in log:
            self.note(key, line)

    # ------------------------------------------------------------------ hp.optuna

    def _asked_cell(self, key: str, exp: Experiment, cell: Cell, progress: Any) -> Cell:
        """An Optuna trial's cell with the values it was asked. The first time any trial of
        the search is wanted, the whole search runs (:meth:`_asked_search`): a trial's values
        depend on every batch before it."""
        __tracebackhide__ = True
        if key not in self.asked_runs:
            self.asked_runs[key] = None
            try:
                self._search_once(key, exp, progress, self._asked_search)
            except Exception as e:  # noqa: BLE001 - each trial not asked says why
                self.asked_runs[key] = f"{type(e).__name__}: {e}"
                self.note(key, f"optuna: the search stopped ({type(e).__name__}: {e})")
        asked = self.asked_cells.get((key, cell.id))
        if asked is None:
            why = self.asked_runs.get(key) or "the search ended before it"
            raise CellError(f"{exp.where}[{cell.id}]: Optuna never asked this trial's values: "
                            f"{why}")
        return asked

    def _asked_search(self, key: str, exp: Experiment, progress: Any) -> None:
        """hp.optuna: ask a batch of trials, serve those whose values are cached, train the
        rest as one stacked population (ranked by successive halving within the batch when
        the search has one), tell Optuna every result, repeat (see
        :func:`hpspec.optuna_search.run_asked`). Every result is saved and stored as it
        comes, under the trial's values."""
        __tracebackhide__ = True
        from hpspec.optuna_search import run_asked
        from hpspec.search import asked_outcome, successive_halving

        s = exp.search
        self.stack_tried.update((key, c.id) for c in exp.cells)
        report = None
        if progress is not None:
            def report(epoch: int, epochs: int, loss: float) -> None:
                progress(1, 1, epoch, epochs, loss)
        served: list[str] = []
        trained: list[str] = []
        rungs_log: list[tuple[str, list[str]]] = []

        def train(batch: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
            cells = [self._asked(key, exp, cid, values) for cid, values in batch]
            by_id = {c.id: c for c in cells}
            cached: dict[str, CellResult] = {}
            for c in cells if self.cache == "use" else ():
                hit = self.cached_seeds(exp, c, exp.seeds)
                if len(hit) == len(exp.seeds):
                    cached[c.id] = CellResult(experiment=exp.name, cell_id=c.id,
                                              params=c.as_dict(), device=self.resolve_device(),
                                              seeds=tuple(hit))
            if s.halving is None:
                got = dict(cached)
                got.update(self._train_trials(key, exp, [c for c in cells if c.id not in cached],
                                              {}, report))
            else:
                def to(targets: Mapping[str, int | None]) -> dict[str, CellResult]:
                    return self._train_to(key, exp, by_id, cached, targets, report)

                log: list[str] = []
                got = successive_halving(s.halving, {c.id: exp.epochs_for(c) for c in cells},
                                         to, log)
                rungs_log.append((f"{cells[0].id}..{cells[-1].id}", log))
            for cid, result in got.items():
                c = by_id[cid]
                if cid in cached:
                    self.cached_cells.add((key, cid))
                    record = self.records.get(key, {}).get(cid)
                    if record is not None:
                        record.note = "cached"
                for r in result.seeds:
                    self.save_seed(key, exp, c, r, cached=cid in cached)
                self._store(key, c, result)
            served.extend(cid for cid in got if cid in cached)
            trained.extend(cid for cid in got if cid not in cached)
            return {cid: asked_outcome(s, r) for cid, r in got.items()}

        log: list[str] = []
        run_asked(s, [c.id for c in exp.cells], train, log)
        stack = self._stacks_trials(exp)
        self.note(key, f"optuna {s.kind.split(':', 1)[1]} (seed {s.seed}): {len(exp.cells)} "
                  f"trials asked in {len(log)} batch(es); {len(served)} served from the cache, "
                  f"{len(trained)} trained"
                  + (f" ({'stacked per batch' if stack else 'one by one'}"
                     f"{', successive halving within each batch' if s.halving else ''})"
                     if trained else ""))
        for line in log[:3]:
            self.note(key, line)
        if len(log) > 3:
            self.note(key, f"... {len(log) - 3} more batch(es)")
        for span, lines in rungs_log[:1]:
            for line in lines:
                self.note(key, f"batch {span}: {line.replace(' across all groups', '')}")
        if len(rungs_log) > 1:
            self.note(key, f"... the same rungs within each of the other {len(rungs_log) - 1} "
                      "batch(es)")

    def _asked(self, key: str, exp: Experiment, cid: str, values: dict[str, Any]) -> Cell:
        """Trial ``cid``'s cell with the values Optuna asked: same id (its number), the values
        in its params, so the cache key, the Case and the reports see them."""
        base = exp.cell(cid)
        cell = attrs.evolve(base, params=tuple({**values, **base.as_dict()}.items()))
        self.asked_cells[(key, cid)] = cell
        record = self.records.get(key, {}).get(cid)
        if record is not None:
            record.params = cell.as_dict()
        return cell

    def _stacks_trials(self, exp: Experiment) -> bool:
        from hpspec.plan import timing_claim

        return (self.stack and exp.stack and exp.mode == "recipe" and not self.inference
                and exp.timeout is None and self.timeout is None and timing_claim(exp) is None)

    def _train_to(self, key: str, exp: Experiment, cells: Mapping[str, Cell],
                  cached: Mapping[str, CellResult], targets: Mapping[str, int | None],
                  report: Any) -> dict[str, CellResult]:
        """A halving search's :data:`~hpspec.search.TrainTo`: each trial of ``targets`` to its
        own target epoch (None: its end), served from ``cached`` where that reaches the
        target, the rest trained in one :meth:`_train_trials` call; each result cut to its
        target, whatever served it."""
        from hpspec.search import cut

        got = {cid: cached[cid] for cid, stop in targets.items()
               if cid in cached and _serves(cached[cid], stop)}
        got.update(self._train_trials(key, exp, [cells[cid] for cid in targets
                                                 if cid not in got], targets, report))
        out = {}
        for cid, r in got.items():
            stop = targets[cid]
            out[cid] = r if stop is None else cut(r, stop)
        return out

    def _train_trials(self, key: str, exp: Experiment, cells: list[Cell],
                      stops: Mapping[str, int | None], report: Any) -> dict[str, CellResult]:
        """Train ``cells`` from scratch, each stopped after its own ``stops`` epoch (None or
        absent: its own count), in one go: stacked by batch size where they can be (members
        with different stops share a run, each leaving at its own), else one by one. A trial
        that cannot train is left out (its own item trains it again and reports the
        error)."""
        from hpspec.engine.runner import run_cell, run_stacked, stackable_cells
        from hpspec.plan import stacked_note, stop_after, stop_rule
        from hpspec.search import trial_name

        if cells and self.ray is not None and not getattr(exp.search, "asked", False):
            return self._train_on_ray(key, exp, cells, stops)
        rules = {c.id: stop_after(stop_rule(exp, c.as_dict(), self.full_curves),
                                  stops.get(c.id)) for c in cells}
        got: dict[str, CellResult] = {}
        if cells and self._stacks_trials(exp):
            trained: list[StackGroup] = []
            alone: dict[str, str] = {}
            for bucket in stackable_cells(exp, cells):
                try:
                    done, why = run_stacked(exp, bucket, self.resolve_device(),
                                            progress=report, stop_rules=rules, groups=trained,
                                            threads=self.threads)
                except Exception as e:  # those trials then train one by one
                    self.note(key, f"stacked training failed ({type(e).__name__}: {e}); "
                              "trained one by one")
                    done, why = {}, {}
                got.update(done)
                alone.update(why)
            # the experiment's one stacking line, over every batch asked so far
            self.stacked_groups.setdefault(key, []).extend(trained)
            self.unstacked.setdefault(key, {}).update(alone)
            if self.stacked_groups[key] or self.unstacked[key]:
                lines = self.notes.setdefault(key, [])
                lines[:] = [line for line in lines if not line.startswith("stacked: ")]
                self.note(key, stacked_note(self.stacked_groups[key], self.unstacked[key],
                                            rungs=getattr(exp.search, "halving", None)
                                            is not None))
        for c in cells:
            if c.id in got:
                continue
            try:
                got[c.id] = run_cell(exp, c, self.resolve_device(), stop=rules[c.id],
                                     inference=self.inference, timeout=self.timeout,
                                     threads=self.threads)
            except Exception as e:  # noqa: BLE001 - its own item trains it again and
                # reports the error with its traceback; the search goes on without it
                if getattr(exp.search, "asked", False):
                    self.note(key, f"{trial_name(exp, c.id, c.as_dict())} could not train "
                              f"({type(e).__name__}); told Optuna it failed (its own item "
                              "reports the error)")
                else:
                    self.note(key, f"halving: {c.id} could not train ({type(e).__name__}); "
                              "left out of the ranking")
        return got

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
        from hpspec.engine.runner import run_cell

        start = max(s.seed for s in have.seeds) + 1
        probed = {m: v for m, v in have.seeds[0].measurements.items() if is_probed(m)}
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
            if failed is None and self.worker is not None and (key, cell.id) not in self.results:
                if not n:
                    self._wait_for_peers(key, exp, cell)
                # Its own item killed its worker: training it again here would pass the claim
                # on a run the records say crashed (and may kill this worker too).
                died = self.crashed_elsewhere(key, cell)
                if died:
                    failed = f"its worker died while training it ({died}); not retrained"
            if failed is None:
                try:
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
            judged = holm_family(judged, self.confidence)
        for (k, slug), (_, verdict) in judged.items():
            self.cross.setdefault(k, {})[slug] = verdict
        return cache[claim.slug()]

    def _judge_one(self, key: str, exp: Experiment, claim: CrossClaim) -> Verdict:
        __tracebackhide__ = True
        alpha = claim.alpha(1 - self.confidence)
        if hasattr(claim, "judge_fresh"):
            return self._judge_found(key, exp, claim, alpha)
        if exp.adaptive is None:
            return claim.judge(self.needed_results(key, exp, claim), alpha)
        return judge_adaptive(
            claim, lambda n: self.needed_results(key, exp, claim, n), exp.adaptive, alpha
        )

    def _judge_found(self, key: str, exp: Experiment, claim: Any, alpha: float) -> Verdict:
        """A claim about a search's best trial(s): retrain them (and a baseline) on fresh
        seeds, stacked where they can be, and judge on those seeds only."""
        __tracebackhide__ = True
        from hpspec.engine.runner import run_cell, run_stacked, stackable_cells

        results = self.needed_results(key, exp, claim)
        seeds = claim.fresh_seeds(exp)
        todo = [self.asked_cells.get((key, cid)) or exp.cell(cid)
                for cid in claim.best(exp, results)]
        if hasattr(claim, "baseline_cell"):
            todo.append(claim.baseline_cell(exp))
        fresh: dict[str, CellResult] = {}
        for cell in todo:
            hit = self.cached_seeds(exp, cell, seeds) if self.cache == "use" else []
            if len(hit) == len(seeds):
                fresh[cell.id] = CellResult(experiment=exp.name, cell_id=cell.id,
                                            params=cell.as_dict(), device=self.resolve_device(),
                                            seeds=tuple(hit))
                for r in hit:  # the run's record lists the seeds this claim used
                    self.save_seed(key, exp, cell, r, cached=True)
        left = [c for c in todo if c.id not in fresh]
        if left and self.stack and exp.stack:
            for bucket in stackable_cells(exp, left):
                got, _ = run_stacked(exp, bucket, self.resolve_device(), seeds=seeds,
                                     threads=self.threads)
                fresh.update(got)
        for cell in todo:
            if cell.id not in fresh:
                fresh[cell.id] = run_cell(exp, cell, self.resolve_device(), seeds=seeds,
                                          timeout=self.timeout, threads=self.threads)
            if cell in left:
                for r in fresh[cell.id].seeds:
                    self.save_seed(key, exp, cell, r)
        self.found.setdefault(key, {}).update(fresh)
        return claim.judge_fresh(exp, results, fresh, alpha)

    def merge_payload(self, p: Payload) -> None:
        """Merge one xdist worker's payload (a cell's record or a claim's verdict, as
        :func:`hpspec.distributed.read_payload` returns it) into this, the controller's state."""
        from hpspec.distributed import CellPayload, more_seeds

        key = p.key
        self.info[key] = p.info.without_search()
        if p.info.search is not None and key not in self.searches:
            from hpspec.search import search_experiment

            self.searches[key] = search_experiment(p.info.name, p.info.search)
        if isinstance(p, CellPayload):
            if self.worker_env is None and p.environment:
                self.worker_env = dict(p.environment)
            # a claim on another worker may have reported this cell grown already
            result = more_seeds(p.result, self.results.get((key, p.cell_id)))
            record = CellRecord(p.info.name, p.cell_id, dict(p.params), p.outcome,
                                result, list(p.verdicts), p.note, p.order)
            self.records.setdefault(key, {})[p.cell_id] = record
            if result is not None:
                self.results[(key, p.cell_id)] = result
                self.device = self.device or result.device
            if p.note == "cached":
                self.cached_cells.add((key, p.cell_id))
            for line in p.notes:
                self.note(key, line)
        else:
            # Cells the claim grew with adaptive seeds: the tables show every seed it used.
            for cell_id, grown in p.results.items():
                kept = more_seeds(self.results.get((key, cell_id)), grown)
                assert kept is not None  # grown is a result
                self.results[(key, cell_id)] = kept
                grown_record = self.records.get(key, {}).get(cell_id)
                if grown_record is not None:
                    grown_record.result = kept
            self.claim_cells[(key, p.slug)] = set(p.results)
            if p.verdict is not None:
                self.records.setdefault(key, {})
                self.cross.setdefault(key, {})[p.slug] = p.verdict

    def register(self, key: str, exp: Experiment, path: str, attr: str) -> Experiment:
        """Add an experiment collected as ``key`` (``path``: its file, ``attr``: the name it
        is bound to there), with the active profile applied and an empty record per cell.
        Raises SpecError for a second experiment of that name or a profile that does not
        fit."""
        if key in self.experiments:
            from hpspec.spec import duplicate_name_error

            raise duplicate_name_error(exp, self.experiments[key])
        if self.profile:
            from hpspec.spec import apply_profile

            exp, notes = apply_profile(exp, self.profile)
            for line in notes:
                self.note(key, line)
        self.experiments[key] = exp
        self.info[key] = experiment_info(exp)
        self.attrs_of[key] = (path, attr)
        records = self.records.setdefault(key, {})
        for i, cell in enumerate(exp.cells):
            cid = cell.id  # formatted from the params on each access: once per cell
            records[cid] = CellRecord(exp.name, cid, cell.as_dict(), order=i)
        return exp

    def tables(self) -> list[tuple[str, str, list[str], str]]:
        """Per experiment that ran: (key, its cell table, its notes, its claims' text or
        ""), as the terminal summary shows them."""
        from hpspec.report import render_claims, render_experiment

        out = []
        for key, records in self.records.items():
            ran = sorted((r for r in records.values() if r.outcome != "not run"),
                         key=lambda r: r.order)
            if not ran:
                continue
            info = self.info[key]
            exp = self.search_experiment(key)
            if exp is not None:
                from hpspec.search import search_table

                table = search_table(exp, {r.cell_id: r.result for r in ran
                                           if r.result is not None})
            else:
                table = render_experiment(info.name, info.axes, ran, device=self.device,
                                          targets=info.targets, table=self.table,
                                          pick=self.columns)
            cross = self.cross.get(key)
            out.append((key, table, list(self.notes.get(key, [])),
                        render_claims(list(cross.values())) if cross else ""))
        return out

    # ------------------------------------------------------------------ the run's record

    def run_document(self) -> dict[str, Any]:
        """The session's results as an ``hpspec-run`` document (plain data)."""
        from hpspec.report import run_document

        experiments = []
        for key, records in self.records.items():
            info = self.info[key]
            ran = sorted((r for r in records.values() if r.outcome != "not run"),
                         key=lambda r: r.order)
            if ran or self.cross.get(key):
                experiments.append(
                    (key, info.name, info.axes, ran, list(self.cross.get(key, {}).values()))
                )
        from hpspec.search import search_document

        extras = {}
        for key, *_ in experiments:
            exp = self.search_experiment(key)
            if exp is not None:
                got = {c.id: self.results[(key, c.id)] for c in exp.cells
                       if (key, c.id) in self.results}
                extras[key] = {"search": search_document(exp, got)}
        return run_document(experiments, self.run_environment(), extras)

    def grades(self, asked: bool) -> dict[str, Any] | None:
        """The run graded by its claims' points (see hpspec.grade), when a claim has points=
        or ``asked`` (--hpspec-grade was given); None otherwise."""
        from hpspec.grade import declared, grade

        # (an xdist controller collects nothing: it knows no experiment's claims to grade)
        claims = [c for k in self.records if k in self.experiments
                  for c in self.experiments[k].claims]
        if not asked and all(getattr(c, "points", None) is None for c in claims):
            return None
        items = []
        for key, records in self.records.items():
            if key not in self.experiments:
                continue
            ran = {r.cell_id: r.params for r in records.values() if r.outcome != "not run"}
            selected = [slug for k, slug in self.selected_claims if k == key]
            items += declared(key, self.info[key].name, self.experiments[key].claims, ran,
                              selected)
        return grade(self.run_document(), items)

    def record_run(self, exitstatus: int) -> None:
        """Cells' outcomes and verdicts into the store, and the run marked finished."""
        self.settle_crashes()
        store = self.store
        if store is None or self.run_id is None:
            return
        try:
            # begun before anything trained (under xdist, before torch was ever imported)
            store.update_environment(self.run_id, self.run_environment())
            for key, records in self.records.items():
                for r in records.values():
                    if r.outcome == "not run":
                        continue
                    store.put_cell(self.run_id, key, r.cell_id, r.params, r.outcome)
                    for v in r.verdicts:
                        store.put_verdict(self.run_id, key, r.cell_id, v.claim, v.outcome,
                                          v.p_pass, v.p_fail, v.message)
                for v in self.cross.get(key, {}).values():
                    store.put_verdict(self.run_id, key, None, v.claim, v.outcome, v.p_pass,
                                      v.p_fail, v.message)
            status = {0: "passed", 1: "failed", 2: "interrupted"}.get(int(exitstatus), "error")
            store.finish_run(self.run_id, status)
        except Exception as e:
            self.store_error = f"store {store.path}: {type(e).__name__}: {e}"

    def current_numbers(self) -> dict[tuple[str, str], dict[str, float]]:
        from hpspec.gate import cell_numbers

        return {k: cell_numbers([s.to_dict() for s in r.seeds]) for k, r in self.results.items()}

    def compare(self, ref: str | None, limits: Any, force: bool) -> bool:
        """Compare with the baseline ``ref`` (a run's name or id, ``latest``, or an exported
        .json); True when a number moved past ``limits`` (the run then fails)."""
        import json

        from hpspec.gate import cell_numbers, compare_runs
        from hpspec.store import fingerprint

        if not ref:
            return False
        baseline: dict[tuple[str, str], dict[str, float]] = {}
        if ref.endswith(".json"):
            from hpspec.outputs import baseline_numbers

            try:
                baseline, base_fp = baseline_numbers(json.loads(Path(ref).read_text()),
                                                     cell_numbers)
            except (OSError, ValueError, RecursionError) as e:
                what = "nested too deeply to read" if isinstance(e, RecursionError) else str(e)
                self.gate_warnings.append(f"--hpspec-compare {ref}: not compared: {what}")
                return bool(limits)
            self.gate_baseline = ref
        else:
            store = self.open_store()
            row = store.find_run(ref, exclude=self.run_id) if store is not None else None
            if row is None:
                self.gate_warnings.append(
                    f"--hpspec-compare {ref}: no such run in {self.store_path}; "
                    "`python -m hpspec runs` lists them")
                return bool(limits)
            for k, cell in store.run_cells(row.id).items():
                if cell["seeds"]:
                    baseline[k] = cell_numbers(cell["seeds"])
            base_fp = row.fingerprint
            self.gate_baseline = f"run {row.id}" + (f" ({row.name})" if row.name else "")
        shown = limits
        if not shown:  # compare without failing: show the usual suspects
            from hpspec.gate import parse_limits

            shown = parse_limits("val_loss:+0,val_acc:-0,samples_per_s:-0%")
        same = base_fp == fingerprint(self.run_environment())
        rows, warnings = compare_runs(self.current_numbers(), baseline, shown, same, force)
        if not limits:
            rows = [attrs.evolve(r, failed=False) for r in rows]
        self.gate_rows, self.gate_warnings = rows, self.gate_warnings + warnings
        return any(r.failed for r in rows)



def _serves(result: CellResult, stop_at: int | None) -> bool:
    """Whether a cached trial result answers a halving rung at ``stop_at`` (None: the end):
    an unpruned result answers every rung, a pruned one the rungs up to where it stopped."""
    from hpspec.search import PRUNED

    marks = [x.measurements.get(PRUNED) for x in result.seeds]
    return all(m is None for m in marks) or (
        stop_at is not None and all(m is not None and m >= stop_at for m in marks))


def holm_family(
    judged: dict[tuple[str, str], tuple[CrossClaim, Verdict]], confidence: float
) -> dict[tuple[str, str], tuple[CrossClaim, Verdict]]:
    from hpspec.stats import holm

    names = list(judged)
    ps = [judged[n][1] for n in names]
    adj_pass = holm([v.p_pass if v.p_pass is not None else 1.0 for v in ps])
    adj_fail = holm([v.p_fail if v.p_fail is not None else 1.0 for v in ps])
    out = {}
    for n, pp, pf in zip(names, adj_pass, adj_fail, strict=True):
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



def experiment_info(exp: Experiment) -> Any:
    from hpspec.distributed import ExpInfo

    targets = tuple(c.condition for c in exp.claims
                    if isinstance(c, CellClaim) and isinstance(c.condition, Reaches))
    return ExpInfo(exp.name, exp.axes, targets)


def torch_environment(device: str | None) -> dict[str, Any]:
    """The device, and torch's version, CUDA and device name when torch is loaded."""
    import sys

    env: dict[str, Any] = {"device": device}
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
        if device and device.startswith("cuda"):
            env["device_name"] = torch.cuda.get_device_name(device)
    return env


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
    env.update(torch_environment(device))
    torch = sys.modules.get("torch")
    if torch is not None:
        env["intra_op_threads"] = torch.get_num_threads()  # what "auto" starts from
    env["git_commit"] = git_commit()
    return env


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit, asked of git once per session (environment() is built at the
    run's start and again for its documents)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None

