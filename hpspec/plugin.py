"""pytest glue: options, collection of ``exp_*.py`` files, one item per grid cell, summary.

Thin on purpose: the options live in :mod:`hpspec.options`, the run (cache, Ray, stacked or
one-by-one training, adaptive seeds, Holm) in :mod:`hpspec.session`, validation in
:mod:`hpspec.spec`, judgement in :mod:`hpspec.claims`, training in :mod:`hpspec.engine`
(imported only when a cell runs, so this module does not import torch), text in
:mod:`hpspec.report`. The hooks that need the run's state are methods of
:class:`SessionPlugin`, registered for each pytest session.
"""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from hpspec._pytest_compat import FailureRepr, TerminalRepr, current_line
from hpspec.claims import INCONCLUSIVE, CellClaim, Verdict, judge_cell_claim
from hpspec.cross import CrossClaim
from hpspec.distributed import PAYLOAD, read_payload
from hpspec.errors import CellError, HpspecError, SpecError
from hpspec.options import (  # noqa: F401  (the parsers stay importable from here)
    HOLM_CHOICES,
    INCONCLUSIVE_CHOICES,
    TABLE_CHOICES,
    add_options,
    parse_cache,
    parse_columns,
    parse_confidence,
    parse_device,
    parse_holm,
    parse_inconclusive,
    parse_limits_option,
    parse_stack,
    parse_table,
    parse_threads_option,
    parse_timeout,
    run_options_problem,
)
from hpspec.report import CellRecord
from hpspec.session import Session
from hpspec.spec import Cell, Experiment, RawSpec, build
from hpspec.summary import key_numbers

_HPSPEC_DIR = os.path.dirname(os.path.abspath(__file__))


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def _option(config: pytest.Config, name: str, parse: Any) -> Any:
    value = config.getoption(f"--hpspec-{name}")
    if value is not None:
        return value
    raw = config.getini(f"hpspec_{name}")
    try:
        return parse(raw)
    except argparse.ArgumentTypeError as e:
        raise pytest.UsageError(f"{e} (from the ini option hpspec_{name})") from None


STATE = pytest.StashKey[Session]()


# ---------------------------------------------------------------------------- pytest-xdist


def _configure_xdist(config: pytest.Config, state: Session) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # a worker
        from hpspec.distributed import configure_worker

        configure_worker(state, workerinput)
        return
    dist = getattr(config.option, "dist", "no")
    n = getattr(config.option, "numprocesses", None)
    if dist in ("loadscope", "loadfile") and n not in (None, 0, 1):
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            f"hpspec: --dist {dist} sends a whole experiment file to one worker, so a grid "
            "trains on one worker while the others idle; use the default (-n N), or "
            "--dist loadgroup to keep stacked cells together"), stacklevel=2)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # the user's explicit choice, which xdist reads
    from hpspec.distributed import gpu_ids

    gpus = gpu_ids()
    if not gpus:
        return None  # xdist's own choice: the CPU count
    return len(gpus) * max(1, config.getoption("--hpspec-workers-per-gpu"))


def _store_path(config: pytest.Config) -> Path:
    raw = config.getoption("--hpspec-store") or config.getini("hpspec_store") or ""
    path = Path(raw) if raw else Path(".hpspec") / "results.sqlite"
    return path if path.is_absolute() else Path(config.rootpath) / path


def _check_store_option(config: pytest.Config, state: Session) -> None:
    """A store path that is a directory, not a SQLite file, or not writable is a usage
    error now, before anything trains (and before anything could be moved)."""
    if state.cache == "off":
        return
    from hpspec.store import check_store_path

    # The session's path is None only when built outside pytest; here it is always set.
    problem = check_store_path(state.store_path or _store_path(config))
    if problem:
        opt = config.getoption("--hpspec-store")
        name = (f"--hpspec-store={opt}" if opt else
                "hpspec_store" if config.getini("hpspec_store") else
                "--hpspec-store (default .hpspec/results.sqlite)")
        raise pytest.UsageError(f"{name}: {problem}; fix: pass --hpspec-store=PATH/results.sqlite "
                                "(a file path), or --hpspec-cache=off")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hpspec: a hyperparameter cell or claim run by hpspec")
    # hpspec marks stackable cells for --dist loadgroup, with or without xdist installed
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist's loadgroup group")
    config.stash[STATE] = Session(
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
    _check_store_option(config, state)
    config.pluginmanager.register(SessionPlugin(config, state), "hpspec-session")
    _configure_xdist(config, state)
    problem = run_options_problem(
        state.cache, state.save_name, config.getoption("--hpspec-compare"),
        bool(config.getoption("--hpspec-compare-fail")),
        {f: config.getoption(f, None) for f in ("--hpspec-json", "--hpspec-html",
                                                 "--hpspec-export")})
    if problem:
        raise pytest.UsageError(problem)
    if config.stash[STATE].inference:
        from hpspec.engine.probes import InferenceUnavailable, benchmark_module

        try:
            benchmark_module()
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

    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
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
                key = f"{self.nodeid}::{exp.name}"
                exp = state.register(key, exp, str(self.path), attr)
            except SpecError as e:
                yield self._spec_error(attr, e, fn)
                continue
            for cell in exp.cells:
                name = f"{exp.name}[{cell.id}]"  # (cell.id formats the params: read once)
                # The id is given as text so pytest parses its "[params]" part the way it
                # does for parametrized tests (--lf and the cache compare parsed ids).
                item = CellItem.from_parent(
                    self, name=name, nodeid=f"{self.nodeid}::{name}", exp=exp, cell=cell, key=key
                )
                if exp.search is not None and (exp.search.halving is not None
                                               or getattr(exp.search, "asked", False)):
                    # A halving search trains once, all its trials ranked together, and an
                    # Optuna search runs whole wherever one of its trials is wanted: under
                    # --dist loadgroup all its cells go to one worker.
                    item.add_marker(pytest.mark.xdist_group(f"hpspec:{key}"))
                elif exp.mode == "recipe" and exp.stack:
                    # Cells that may train as one stacked model stay on one xdist worker
                    # under --dist loadgroup.
                    item.add_marker(pytest.mark.xdist_group(
                        f"hpspec:{key}:{exp.batch_size_for(cell)}"))
                yield item
            for claim in exp.claims:
                if isinstance(claim, CrossClaim):
                    name = f"{exp.name}[{claim.slug()}]"
                    yield ClaimItem.from_parent(
                        self, name=name, nodeid=f"{self.nodeid}::{name}", exp=exp, claim=claim,
                        key=key,
                    )

    def _spec_error(self, attr: str, error: SpecError, fn: Any) -> pytest.Item | pytest.Collector:
        # --collect-only runs no item, so an error item would show as a bare name: there the
        # broken spec is a collection error, which pytest prints with its message. A real run
        # keeps the error item, so the rest of the session still runs.
        if self.config.option.collectonly:
            return SpecErrorCollector.from_parent(self, name=attr, error=error)
        return SpecErrorItem.from_parent(self, name=attr, error=error, fn=fn)


def _fn_location(fn: Any) -> tuple[int | None]:
    """The 0-based line where ``fn``'s definition starts (its first decorator), as
    ``inspect.getsourcelines`` says, without reading the file for a plain function."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is not None:
        return (code.co_firstlineno - 1,)
    try:
        return (inspect.getsourcelines(fn)[1] - 1,)
    except (OSError, TypeError):
        return (None,)


# (mypy: FailureRepr's _repr_failure_py may return hpspec's message as a str, which pytest
# renders; Node's is typed TerminalRepr only)
class _HpspecItem(FailureRepr, pytest.Item):  # type: ignore[misc]
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
    def failure_text(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
        return str(excinfo.value) if isinstance(excinfo.value, HpspecError) else None


    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, _fn_location(self.fn)[0], self.name

    def keep_frame(self, path: str) -> bool:
        # Show the user's code, not hpspec's or pytest's: cut every frame that lives in
        # hpspec, pluggy or _pytest.
        return not (
            path.startswith(_HPSPEC_DIR)
            or f"{os.sep}_pytest{os.sep}" in path
            or f"{os.sep}pluggy{os.sep}" in path
        )


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

    def failure_text(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
        return f"hpspec spec error: {excinfo.value}"


class SpecErrorCollector(pytest.Collector):
    """A broken spec under --collect-only: collecting it fails with the spec error's message."""

    def __init__(self, *, error: SpecError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def collect(self) -> Iterator[pytest.Item]:
        raise self.error

    def repr_failure(  # type: ignore[override]
        self, excinfo: pytest.ExceptionInfo[BaseException]
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
                from hpspec.distributed import cell_payload

                self.user_properties.append((PAYLOAD, cell_payload(
                    self.key, state.payload_info(self.key), record, state.notes.get(self.key, []),
                    state.worker_environment())))

    def _run(self, state: Session, record: CellRecord) -> None:
        __tracebackhide__ = True
        progress, done = _live_progress(self.config, self.name)
        try:
            result = state.result(self.key, self.exp, self.cell, progress)
        finally:
            done()
        record.result = result
        params = self.cell.as_dict()
        claims = [c for c in self.exp.claims
                  if isinstance(c, CellClaim) and c.applies_to(params)]
        why = pruned_reason(self.exp, result) if claims else None
        if why is not None:  # its curve stops at the rung: "final" would be the rung's value
            record.outcome = "pruned"
            pytest.skip(why)
        verdicts = [judge_cell_claim(c, result.seeds) for c in claims]
        record.verdicts = verdicts
        for name, value in key_numbers(result).items():
            self.user_properties.append((f"hpspec.{name}", value))
        failed = [v for v in verdicts if not v.passed]
        if failed and getattr(self.exp.search, "asked", False):
            from hpspec.search import trial_name

            # the id is the trial's number: its message says the values Optuna asked
            name = trial_name(self.exp, self.cell.id, result.params)
            failed[0] = attrs.evolve(failed[0], message=f"trial {name}\n{failed[0].message}")
        record.outcome = "FAILED" if failed else "passed"
        if failed:
            if all(v.outcome == INCONCLUSIVE for v in failed):
                record.outcome = "inconclusive"
                _inconclusive(state, failed)
            raise ClaimsFailed(failed)


def pruned_reason(exp: Experiment, result: Any) -> str | None:
    """Why a search trial's per-cell claims are not judged (halving pruned it: its curve is cut
    at the rung), or None when they are."""
    if exp.search is None or getattr(exp.search, "halving", None) is None:
        return None
    from hpspec.search import pruned_at

    epoch = pruned_at(result)
    if epoch is None:
        return None
    return (f"pruned at epoch {epoch} by {exp.search.halving.name()}: its claims are not "
            "judged on a cut curve")


#: Seconds between two progress lines (cells shorter than this never show one).
PROGRESS_INTERVAL = 0.5


def _live_progress(config: pytest.Config, name: str) -> tuple[Any, Any]:
    """On an interactive terminal, a status line (cell, seed, epoch k/N, loss) that the cell's
    result replaces; nothing on CI logs, pipes, or xdist workers."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if (reporter is None or not getattr(reporter, "isatty", False)
            or hasattr(config, "workerinput") or config.option.verbose < 0):
        return None, lambda: None
    import contextlib
    import time

    saved = current_line(reporter)
    if saved is None:  # the line pytest wrote could not be read back: leave it alone
        return None, lambda: None
    last = [time.monotonic()]  # cells shorter than the interval never show a line
    shown = [False]
    # The cell trains inside pytest's output capture, which would swallow the line: write it
    # with capture suspended, as pytest's own live logging does.
    capman = config.pluginmanager.get_plugin("capturemanager")

    def uncaptured() -> Any:
        if capman is None:
            return contextlib.nullcontext()
        return capman.global_and_fixture_disabled()

    def progress(k: int, n: int, epoch: int, epochs: int, loss: float) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_INTERVAL:
            return
        last[0] = now
        shown[0] = True
        seeds = f" seed {k}/{n}" if n > 1 else ""
        with uncaptured():
            reporter.rewrite(f"{saved} {name}{seeds} epoch {epoch}/{epochs} loss {loss:.4g}",
                             erase=True)

    def done() -> None:
        if shown[0]:
            with uncaptured():
                reporter.rewrite(saved, erase=True)

    return progress, done


def _inconclusive(state: Session, verdicts: list[Verdict]) -> None:
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
                from hpspec.distributed import claim_payload

                verdict = state.cross.get(self.key, {}).get(self.claim.slug())
                judged = {c.id: state.results[(self.key, c.id)] for c in self.exp.cells
                          if self.claim.selects(c.as_dict())
                          and (self.key, c.id) in state.results}
                self.user_properties.append((PAYLOAD, claim_payload(
                    self.key, state.payload_info(self.key), self.claim.slug(), verdict,
                    judged)))

    def _run(self, state: Session) -> None:
        __tracebackhide__ = True
        verdict = state.cross_verdict(self.key, self.exp, self.claim)
        if verdict.p_pass is not None:
            self.user_properties.append(("hpspec.p_value", float(verdict.p_pass)))
        self.user_properties.append(("hpspec.verdict", verdict.outcome))
        if verdict.outcome == INCONCLUSIVE:
            _inconclusive(state, [verdict])
        if not verdict.passed:
            raise ClaimsFailed([verdict])


# ------------------------------------------------------------------------ the session plugin


class SessionPlugin:
    """The hooks that need this pytest session's :class:`~hpspec.session.Session`: registered
    by :func:`pytest_configure`, so each reads its own state (no module global)."""

    def __init__(self, config: pytest.Config, state: Session) -> None:
        self.config = config
        self.state = state
        self.gpu_pool: Any = None
        #: Controller under xdist: the workers' shared folder (made here, removed at the end).
        self.shared: str | None = None

    # -- pytest-xdist, on the controller

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """For each worker the controller starts: the run id, a GPU from the pool, and the
        folder where work done once for all workers is kept (a halving search's results)."""
        state, config = self.state, self.config
        if state.cache != "off":
            state.open_store()
        node.workerinput["hpspec_run_id"] = state.run_id
        if self.shared is None:
            import tempfile

            self.shared = tempfile.mkdtemp(prefix="hpspec-xdist-")
        node.workerinput["hpspec_shared"] = self.shared
        node.workerinput["hpspec_stack_ok"] = getattr(config.option, "dist", "no") == "loadgroup"
        if self.gpu_pool is None:
            from hpspec.distributed import GpuPool, gpu_ids

            self.gpu_pool = GpuPool(gpu_ids(), config.getoption("--hpspec-workers-per-gpu"))
        gpu = self.gpu_pool.lend(node.gateway.id)
        if gpu is not None:
            node.workerinput["hpspec_gpu"] = gpu

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        if self.gpu_pool is not None:
            self.gpu_pool.give_back(node.gateway.id)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Controller: take hpspec's payload off a worker's report (before junit XML sees it)
        and merge it into this session's state."""
        if hasattr(self.config, "workerinput"):
            return  # a worker: the payload travels on with the report
        from hpspec.crashes import is_crash_report

        if is_crash_report(report.when, report.longrepr):
            self.state.record_crash(report.nodeid, str(report.longrepr))
            return
        props = getattr(report, "user_properties", None)
        if not props or not any(k == PAYLOAD for k, _ in props):
            return
        texts = [v for k, v in props if k == PAYLOAD]
        report.user_properties = [(k, v) for k, v in props if k != PAYLOAD]

        for text in texts:
            self.state.merge_payload(read_payload(text))

    # -- collection and summary

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        state = self.state
        state.selected_claims = {(i.key, i.claim.slug()) for i in items
                                 if isinstance(i, ClaimItem)}
        state.wanted = {}
        for i in items:
            if isinstance(i, CellItem):
                state.wanted.setdefault(i.key, set()).add(i.cell.id)
            elif isinstance(i, ClaimItem):
                state.wanted.setdefault(i.key, set()).update(
                    c.id for c in i.exp.cells if i.claim.selects(c.as_dict()))
        # Resolve the device before anything trains, so a bad --hpspec-device is one usage
        # error rather than one failure per cell; only when cells will run (torch loads here).
        if config.option.collectonly or not any(isinstance(i, CellItem) for i in items):
            return
        address = config.getoption("--hpspec-ray") or config.getini("hpspec_ray")
        if address and state.worker is None:
            from hpspec.ray_backend import RayUnavailable

            try:
                state.submit_to_ray(address, Path(config.rootpath),
                                    config.getoption("--hpspec-ray-cpus"),
                                    config.getoption("--hpspec-ray-gpus"))
            except RayUnavailable as e:
                raise pytest.UsageError(str(e)) from None
            return  # the device is chosen where the tasks run
        try:
            state.resolve_device()
        except CellError as e:
            raise pytest.UsageError(str(e)) from None

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int,
                                config: pytest.Config) -> None:
        try:
            self._summary(terminalreporter, config)
        except KeyboardInterrupt:  # a second Ctrl-C while the tables print: stop, quietly
            terminalreporter.write_line("hpspec: summary interrupted", yellow=True)

    def _summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        from hpspec.summary import summary_lines

        for line in summary_lines(self.state, bool(config.getoption("--hpspec-grade", None))):
            if line.sep:
                terminalreporter.write_sep("-", line.text)
            else:
                terminalreporter.write_line(line.text, **line.markup())

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """The store closed once the summary is written, its WAL folded into the file; the
        workers' shared folder removed (the controller made it)."""
        state = self.state
        if self.shared is not None:
            import shutil

            shutil.rmtree(self.shared, ignore_errors=True)
            self.shared = None
        if state.store is not None:
            store, state.store = state.store, None
            store.close()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config, state = self.config, self.state
        if hasattr(config, "workerinput"):
            return
        if state.ray is not None:
            from hpspec.ray_backend import shutdown

            shutdown(state.ray)
        try:
            try:
                if state.compare(config.getoption("--hpspec-compare"),
                                 config.getoption("--hpspec-compare-fail") or [],
                                 config.getoption("--hpspec-compare-force")):
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED
            except Exception as e:  # the gate must never cost the table or leave it running
                state.gate_warnings.append(
                    f"--hpspec-compare: not compared ({type(e).__name__}: {e})")
            state.record_run(session.exitstatus)
            from hpspec.summary import REPORT_FLAGS, write_reports

            write_reports(state, {f: config.getoption(f, None) for f in REPORT_FLAGS},
                          config.getoption("--hpspec-tensorboard", None))
        except KeyboardInterrupt:  # Ctrl-C at the very end: every seed is stored already
            state.report_warnings.append("interrupted while finishing the run; every finished "
                                         "seed is in the store, reports not yet written are not")
