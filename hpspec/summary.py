"""What a run says at its end, and the report files it writes: from a
:class:`~hpspec.session.Session`, with no pytest in sight.

The terminal summary is a list of :class:`Line` (text, whether it is a section rule, its
colour) that any front-end prints: the pytest plugin through its terminal reporter, a script
with ``print``. Neither torch nor pytest is imported here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from hpspec.results import CellResult

if TYPE_CHECKING:
    from hpspec.session import Session

__all__ = ["Line", "store_lines", "summary_lines", "key_numbers", "REPORT_FLAGS",
           "write_reports"]


@attrs.frozen
class Line:
    """One line of the summary: a section rule (``sep``) or a line, with its colour."""

    text: str
    sep: bool = False
    color: Literal["", "yellow", "red"] = ""
    bold: bool = False

    def markup(self) -> dict[str, bool]:
        """Keyword arguments of pytest's ``TerminalReporter.write_line``."""
        out: dict[str, bool] = {}
        if self.color:
            out[self.color] = True
        if self.bold:
            out["bold"] = True
        return out


def store_lines(state: Session) -> list[Line]:
    """The store, the reports, the gate and the cache: what the run did besides training."""
    from hpspec.report import render_gate

    out = []
    if state.store_error:
        out.append(Line(f"hpspec: {state.store_error}; results were not stored", color="yellow"))
    out += [Line(f"hpspec: {line}", color="yellow") for line in state.report_warnings]
    if state.gate_rows or state.gate_warnings:
        out.append(Line(f"hpspec: compared with {state.gate_baseline}", sep=True))
        out += [Line(f"warning: {w}", color="yellow") for w in state.gate_warnings]
        if state.gate_rows:
            out.append(Line(render_gate(state.gate_rows)))
        failed = [r for r in state.gate_rows if r.failed]
        if failed:
            out.append(Line(f"hpspec: {len(failed)} number(s) moved past --hpspec-compare-fail: "
                            "the run fails", color="red", bold=True))
    if state.cached_cells:
        out.append(Line(
            f"hpspec: {len(state.cached_cells)} cell(s) from the cache in {state.store_path} "
            "(--hpspec-cache=refresh retrains them)"))
    return out


def summary_lines(state: Session, grade: bool) -> list[Line]:
    """The whole end-of-run summary: :func:`store_lines`, then per experiment its table,
    notes, cross-cell claims and (``grade``, or points in the spec) its score."""
    from hpspec.grade import score_line

    out = store_lines(state)
    if state.table == "none":
        return out
    grades = state.grades(grade)
    for key, table, notes, claims in state.tables():
        out += [Line(f"hpspec: {key}", sep=True), Line(table)]
        out += [Line(f"  {line}") for line in notes]
        if claims:
            out.append(Line(claims))
        for e in grades["experiments"] if grades is not None else ():
            if e["key"] == key:
                out.append(Line(f"{state.info[key].name}: "
                                f"{score_line(e['score'], e['max_score'])}"))
    if grades is not None:
        out.append(Line(f"hpspec: run {score_line(grades['score'], grades['max_score'])}",
                        bold=True))
    return out


def key_numbers(result: CellResult) -> dict[str, float]:
    """Means over seeds of the final metrics and measurements, as plain floats (junit-safe)."""
    out: dict[str, list[float]] = {}
    for s in result.seeds:
        for name, curve in s.curves.items():
            if curve:
                out.setdefault(f"{name}", []).append(float(curve[-1]))
        for name, value in s.measurements.items():
            out.setdefault(name, []).append(float(value))
    return {k: sum(v) / len(v) for k, v in out.items()}


#: The report options, each naming the file it writes.
REPORT_FLAGS = ("--hpspec-json", "--hpspec-export", "--hpspec-html", "--hpspec-csv",
                "--hpspec-grade")


def write_reports(state: Session, paths: Mapping[str, str | None],
                  tensorboard: str | None) -> None:
    """Every report asked for (``paths``: flag -> file, from :data:`REPORT_FLAGS`), each
    written atomically and on its own: one that cannot be written is a warning line in
    ``state.report_warnings``, never the table or the other reports."""
    from hpspec.outputs import Report
    from hpspec.outputs import write_reports as write_all
    from hpspec.store import fingerprint

    if not (any(paths.values()) or tensorboard):
        return
    doc: dict[str, Any] = {}

    def document() -> dict[str, Any]:
        if not doc:
            doc.update(state.run_document())
        return doc

    def html() -> str:
        from hpspec.html import render_html

        return render_html(document())

    def csv() -> str:
        from hpspec.export import csv_text

        return csv_text(document())

    render = {
        "--hpspec-json": lambda: json.dumps(document(), indent=1, allow_nan=False),
        "--hpspec-export": lambda: json.dumps(
            {**document(), "fingerprint": fingerprint(document()["environment"])}, indent=1,
            allow_nan=False),
        "--hpspec-html": html,
        "--hpspec-csv": csv,
        "--hpspec-grade": lambda: json.dumps(state.grades(True), indent=1, allow_nan=False),
    }
    state.report_warnings += write_all(
        [Report(f, p, render[f]) for f, p in paths.items() if p])
    if tensorboard:
        from hpspec.export import write_tensorboard

        try:
            write_tensorboard(document(), tensorboard)
        except (RuntimeError, OSError) as e:  # tensorboard missing: the rest of the run stands
            state.report_warnings.append(f"--hpspec-tensorboard={tensorboard}: not written "
                                         f"({e})")
