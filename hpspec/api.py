"""The Python front-end: :func:`run` an experiment from a script or a notebook and get its
results as data, or :func:`load` a finished run from the store.

:func:`run` drives pytest in-process with hpspec's plugin, so it runs exactly what
``pytest TARGET`` runs (same collection, cache and store, stacking, verdicts); the results come
back as a :class:`Run` instead of a terminal report. Nothing here imports torch or pytest at
module level.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from hpspec.claims import PASS
from hpspec.errors import HpspecError
from hpspec.results import CellResult

__all__ = ["Run", "RunCell", "RunVerdict", "load", "run"]


@attrs.frozen
class RunVerdict:
    """One claim's verdict: ``cell_id`` is None for a claim across cells."""

    experiment: str
    cell_id: str | None
    claim: str
    outcome: str
    p_pass: float | None
    p_fail: float | None
    message: str

    @property
    def passed(self) -> bool:
        return self.outcome == PASS


@attrs.frozen
class RunCell:
    """One grid cell of a run: its parameters, outcome and result (None when it failed)."""

    experiment: str
    cell_id: str
    params: Mapping[str, Any]
    outcome: str
    result: CellResult | None

    @property
    def curves(self) -> dict[int, Mapping[str, Sequence[float]]]:
        """Per seed, its curves by metric (index 0 is epoch 1)."""
        return {s.seed: s.curves for s in self.result.seeds} if self.result else {}

    @property
    def measurements(self) -> dict[int, Mapping[str, float]]:
        """Per seed, its measurements (throughput, memory, FLOPs, ...)."""
        return {s.seed: s.measurements for s in self.result.seeds} if self.result else {}


@attrs.frozen
class Run:
    """A finished run: ``document`` is its ``hpspec-run`` document (as ``--hpspec-json``
    writes it), from which everything else is read."""

    document: Mapping[str, Any]
    text: str = ""  #: the terminal tables (see :meth:`table`)
    exitstatus: int | None = None  #: pytest's exit status (None for a loaded run)
    output: str = ""  #: what pytest printed (hp.run only)

    @property
    def cells(self) -> list[RunCell]:
        return [RunCell(e["key"], c["cell_id"], dict(c["params"]), c["outcome"],
                        CellResult.from_dict(c["result"]) if c.get("result") else None)
                for e in self.document.get("experiments", []) for c in e["cells"]]

    @property
    def verdicts(self) -> list[RunVerdict]:
        """Every verdict: the per-cell claims' (by cell), then the claims across cells."""
        out = []
        for e in self.document.get("experiments", []):
            for c in e["cells"]:
                out += [_verdict(e["key"], c["cell_id"], v) for v in c.get("verdicts", [])]
            out += [_verdict(e["key"], None, v) for v in e.get("claims", [])]
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One dict per cell and seed, the rows ``--hpspec-csv`` writes (see
        :func:`hpspec.export.seed_rows`)."""
        from hpspec.export import seed_rows

        return seed_rows(self.document)

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame (``pip install hpspec[pandas]``)."""
        try:
            import pandas as pd
        except ImportError:
            raise HpspecError("Run.to_pandas() needs pandas; fix: pip install "
                              "'hpspec[pandas]' (or use Run.rows(), plain dicts)") from None
        return pd.DataFrame(self.rows())

    def table(self) -> str:
        """The cell tables and claims as the terminal summary prints them."""
        return self.text

    def _repr_html_(self) -> str:
        from hpspec.html import render_html

        return render_html(self.document)

    def __repr__(self) -> str:
        outcomes: dict[str, int] = {}
        for c in self.cells:
            outcomes[c.outcome] = outcomes.get(c.outcome, 0) + 1
        counts = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))
        verdicts: dict[str, int] = {}
        for v in self.verdicts:
            verdicts[v.outcome] = verdicts.get(v.outcome, 0) + 1
        vcounts = ", ".join(f"{n} {k}" for k, n in sorted(verdicts.items()))
        status = "" if self.exitstatus in (None, 0) else f", pytest exit status {self.exitstatus}"
        return (f"<hpspec.Run: {len(self.cells)} cells ({counts}), {len(self.verdicts)} verdicts"
                f"{f' ({vcounts})' if vcounts else ''}{status}>")


def _verdict(key: str, cell_id: str | None, v: Mapping[str, Any]) -> RunVerdict:
    return RunVerdict(key, cell_id, v["claim"], v["outcome"], v.get("p_pass"), v.get("p_fail"),
                      v.get("message", ""))


# ------------------------------------------------------------------------------------ run


def _target_args(target: Any) -> list[str]:
    """pytest arguments that select ``target``: a path (file or folder), a module, or an
    ``@hp.experiment`` function (which must live in a file)."""
    where = f"hp.run({target!r})"
    if isinstance(target, (str, os.PathLike)):
        path = Path(target)
        if not path.exists():
            raise HpspecError(f"{where}: no such file or folder {str(path)!r}; fix: pass the "
                              "path of an experiment file or folder, a module, or an "
                              "@hp.experiment function")
        if path.is_file():  # collect it whatever its name (the default pattern is exp_*.py)
            return [str(path), "-o", f"hpspec_files=exp_*.py {path.name}"]
        return [str(path)]
    if isinstance(target, types.ModuleType):
        file = getattr(target, "__file__", None)
        if not file:
            raise HpspecError(f"{where}: module {target.__name__} has no file to collect")
        return _target_args(file)
    raw = getattr(target, "__hpspec__", None)
    if raw is not None and callable(target):
        from hpspec.spec import build

        file = inspect.getsourcefile(target)
        if not file or not Path(file).is_file():
            raise HpspecError(f"{where}: {target.__name__} is not defined in a file (a "
                              "notebook cell?), and hp.run collects experiments from files; "
                              "fix: put it in an exp_*.py file and pass that file")
        return [f"{_target_args(file)[0]}::{build(target).name}", *_target_args(file)[1:]]
    raise HpspecError(f"{where}: {type(target).__name__} is not a target; fix: pass a path, a "
                      "module, or an @hp.experiment function")


def _option_args(options: Mapping[str, Any]) -> list[str]:
    """``device="cpu"`` -> ``--hpspec-device=cpu``; ``inference=True`` -> ``--hpspec-inference``."""
    args = []
    for name, value in options.items():
        flag = "--hpspec-" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            args.append(f"{flag}={','.join(map(str, value))}")
        else:
            args.append(f"{flag}={value}")
    return args


class _Grab:
    """A pytest plugin that keeps the session's hpspec state when the session ends."""

    def __init__(self) -> None:
        self.state: Any = None

    def pytest_sessionfinish(self, session: Any) -> None:
        from hpspec.plugin import STATE

        self.state = session.config.stash.get(STATE, None)


def _forget_collected(before: set[str], path: Path) -> None:
    """Drop the modules this run imported from the experiment files (and conftest.py) under
    ``path``: pytest imports them under their bare file name, so a later ``hp.run`` of another
    folder's ``exp_x.py`` would hit pytest's "import file mismatch", and of the same file after
    an edit would run the old code (a notebook does both)."""
    root = (path.parent if path.is_file() else path).resolve()
    for name in set(sys.modules) - before:
        file = getattr(sys.modules.get(name), "__file__", None)
        if (not file or name.split(".")[0] == "hpspec"  # hp.run(".") in hpspec's checkout
                or "site-packages" in file or "dist-packages" in file):
            continue
        if Path(file).resolve().is_relative_to(root):
            del sys.modules[name]


def run(target: Any, *, quiet: bool = True, pytest_args: Sequence[str] = (),
        **options: Any) -> Run:
    """Run ``target`` (an experiment file or folder, a module, or an ``@hp.experiment``
    function) as ``pytest`` would, and return its results.

    ``options`` are hpspec's command-line options without the ``--hpspec-`` prefix
    (``device="cpu"``, ``stack="off"``, ``save="baseline"``, ``cache="refresh"``, ...).
    ``quiet`` keeps pytest's report off the screen (it is in :attr:`Run.output`).
    """
    import pytest

    args = [*_target_args(target), "-p", "no:cacheprovider", "-q", *_option_args(options),
            *pytest_args]
    grab = _Grab()
    out = io.StringIO()
    before = set(sys.modules)
    try:
        with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
            code = pytest.main(args, plugins=[grab])
    finally:
        _forget_collected(before, Path(args[0].split("::")[0]))
    state = grab.state
    if state is None or int(code) in (2, 3, 4):  # interrupted, internal or usage error
        raise HpspecError(f"hp.run({target!r}): pytest stopped (exit status {int(code)}): "
                          f"{out.getvalue().strip()[-2000:]}")
    tables = []
    for key, table, notes, claims in state.tables():
        tables.append("\n".join([f"hpspec: {key}", table, *(f"  {n}" for n in notes),
                                 *([claims] if claims else [])]))
    return Run(state.run_document(), "\n\n".join(tables), int(code), out.getvalue())


# ----------------------------------------------------------------------------------- load


def load(run: str | int = "latest", store: str | os.PathLike[str] | None = None) -> Run:
    """A run from the results store: ``"latest"`` (the newest finished), a saved name
    (``--hpspec-save``), or an id (``python -m hpspec runs`` lists them). ``store`` defaults to
    ``.hpspec/results.sqlite`` under the current directory."""
    from hpspec.html import records_from_document
    from hpspec.report import render_claims, render_experiment
    from hpspec.store import Store

    path = Path(store) if store is not None else Path(".hpspec") / "results.sqlite"
    if not path.is_file():
        raise HpspecError(f"hp.load(store={str(path)!r}): no results store there; fix: pass "
                          "store= the file --hpspec-store names (default .hpspec/results.sqlite "
                          "under the directory pytest ran in)")
    db = Store.open(path)
    try:
        row = db.find_run(str(run))
        if row is None:
            raise HpspecError(f"hp.load(run={run!r}): no such run in {path}; `python -m hpspec "
                              "runs` lists them")
        cells = db.run_cells(row.id)
        verdicts = db.verdicts(row.id)
    finally:
        db.close()
    device = row.environment.get("device")
    experiments: dict[str, dict[str, Any]] = {}
    for (key, cell_id), c in cells.items():
        exp = experiments.setdefault(key, {"key": key, "name": key.split("::")[-1],
                                           "axes": [], "cells": [], "claims": []})
        result = ({"experiment": exp["name"], "cell_id": cell_id, "params": c["params"],
                   "device": device, "seeds": c["seeds"]} if c["seeds"] else None)
        exp["cells"].append({"cell_id": cell_id, "params": c["params"], "outcome": c["outcome"],
                             "verdicts": [], "result": result})
    for v in verdicts:
        exp = experiments.setdefault(v["experiment"], {
            "key": v["experiment"], "name": v["experiment"].split("::")[-1], "axes": [],
            "cells": [], "claims": []})
        entry = {k: v[k] for k in ("claim", "outcome", "message", "p_pass", "p_fail")}
        if v["cell_id"] is None:
            exp["claims"].append(entry)
        else:
            cell = next((c for c in exp["cells"] if c["cell_id"] == v["cell_id"]), None)
            if cell is not None:
                cell["verdicts"].append(entry)
    tables = []
    for exp in experiments.values():
        # the axes: the parameters whose values differ between cells
        names = sorted({k for c in exp["cells"] for k in c["params"]})
        exp["axes"] = [k for k in names
                       if len({repr(c["params"].get(k)) for c in exp["cells"]}) > 1] or names
        records = records_from_document(exp)
        text = [f"hpspec: {exp['key']}",
                render_experiment(exp["name"], exp["axes"], records, device=device)]
        if exp["claims"]:
            from hpspec.claims import Verdict

            text.append(render_claims([Verdict(claim=c["claim"], outcome=c["outcome"],
                                               message=c["message"], p_pass=c["p_pass"],
                                               p_fail=c["p_fail"]) for c in exp["claims"]]))
        tables.append("\n".join(text))
    doc = {"schema": "hpspec-run", "version": 1, "environment": row.environment,
           "experiments": list(experiments.values())}
    return Run(doc, "\n\n".join(tables))
