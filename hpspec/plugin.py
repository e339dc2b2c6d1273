"""pytest glue: options, collection of ``exp_*.py`` files, one item per grid cell, summary.

Thin on purpose: validation lives in :mod:`hpspec.spec`, judgement in :mod:`hpspec.claims`,
training in :mod:`hpspec.runner` (imported only when a cell runs, so this module does not
import torch), text in :mod:`hpspec.report`.
"""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from _pytest._code.code import ExceptionInfo, TerminalRepr

from hpspec.claims import CellClaim, Verdict, judge_cell_claim
from hpspec.errors import CellError, HpspecError, SpecError
from hpspec.report import CellRecord, render_experiment
from hpspec.results import CellResult
from hpspec.spec import Cell, Experiment, RawSpec, build

_HPSPEC_DIR = os.path.dirname(os.path.abspath(__file__))
TABLE_CHOICES = ("full", "none")


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
        help="summary table per experiment at the end of the run: full or none. "
        "ini: hpspec_table. Default full.",
    )
    parser.addini("hpspec_files", "glob patterns of experiment files", type="args",
                  default=["exp_*.py"])
    parser.addini("hpspec_device", "default for --hpspec-device", default="auto")
    parser.addini("hpspec_table", "default for --hpspec-table", default="full")


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
    device: str | None = None
    experiments: dict[str, Experiment] = attrs.field(factory=dict)
    records: dict[str, dict[str, CellRecord]] = attrs.field(factory=dict)
    results: dict[tuple[str, str], CellResult] = attrs.field(factory=dict)
    spec_errors: list[str] = attrs.field(factory=list)

    def resolve_device(self) -> str:
        if self.device is None:
            from hpspec.runner import select_device

            self.device = select_device(self.device_option)
        return self.device

    def result(self, key: str, exp: Experiment, cell: Cell) -> CellResult:
        """The cell's result, training it the first time it is asked for."""
        __tracebackhide__ = True
        found = self.results.get((key, cell.id))
        if found is None:
            from hpspec.runner import run_cell

            found = run_cell(exp, cell, self.resolve_device())
            self.results[(key, cell.id)] = found
        return found


STATE = pytest.StashKey[State]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hpspec: a hyperparameter cell or claim run by hpspec")
    config.stash[STATE] = State(
        device_option=_option(config, "device", parse_device),
        table=_option(config, "table", parse_table),
    )


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
            state.experiments[key] = exp
            records = state.records.setdefault(key, {})
            for cell in exp.cells:
                records[cell.id] = CellRecord(exp.name, cell.id, cell.as_dict())
                name = f"{exp.name}[{cell.id}]"
                # The id is given as text so pytest parses its "[params]" part the way it
                # does for parametrized tests (--lf and the cache compare parsed ids).
                yield CellItem.from_parent(
                    self, name=name, nodeid=f"{self.nodeid}::{name}", exp=exp, cell=cell, key=key
                )


def _fn_location(fn: Any) -> tuple[int | None]:
    try:
        return (inspect.getsourcelines(fn)[1] - 1,)
    except (OSError, TypeError):
        return (None,)


class _HpspecItem(pytest.Item):
    fn: Any

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

    def repr_failure(self, excinfo: ExceptionInfo[BaseException], style: Any = None) -> str:  # type: ignore[override]
        return f"hpspec spec error: {excinfo.value}"

    # pytest renders errors raised in setup through this method, not repr_failure; the
    # message says everything, hpspec's validation frames would only bury it.
    _repr_failure_py = repr_failure  # type: ignore[assignment]


class ClaimsFailed(HpspecError):
    def __init__(self, verdicts: list[Verdict]) -> None:
        super().__init__("\n\n".join(v.message for v in verdicts))
        self.verdicts = verdicts


class CellItem(_HpspecItem):
    """One grid cell: trains its seeds, then judges the per-cell claims that select it."""

    def __init__(self, *, exp: Experiment, cell: Cell, key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.exp = exp
        self.cell = cell
        self.key = key
        self.fn = exp.fn
        self.add_marker(pytest.mark.hpspec)

    def runtest(self) -> None:
        __tracebackhide__ = True
        state = self.config.stash[STATE]
        record = state.records[self.key][self.cell.id]
        record.outcome = "error"
        result = state.result(self.key, self.exp, self.cell)
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
            raise ClaimsFailed(failed)

    def repr_failure(  # type: ignore[override]
        self, excinfo: ExceptionInfo[BaseException], style: Any = None
    ) -> str | TerminalRepr:
        if isinstance(excinfo.value, (ClaimsFailed, CellError, SpecError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


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
    # Resolve the device before anything trains, so a bad --hpspec-device is one usage error
    # rather than one failure per cell; only when cells will run (torch loads here).
    if config.option.collectonly or not any(isinstance(i, CellItem) for i in items):
        return
    try:
        config.stash[STATE].resolve_device()
    except CellError as e:
        raise pytest.UsageError(str(e)) from None


# ----------------------------------------------------------------------------------- summary


def pytest_terminal_summary(
    terminalreporter: Any, exitstatus: int, config: pytest.Config
) -> None:
    state = config.stash.get(STATE, None)
    if state is None or state.table == "none":
        return
    for key, records in state.records.items():
        ran = [r for r in records.values() if r.outcome != "not run"]
        if not ran:
            continue
        exp = state.experiments[key]
        terminalreporter.write_sep("-", f"hpspec: {key}")
        terminalreporter.write_line(
            render_experiment(exp.name, exp.axes, ran, device=state.device)
        )

