"""A run graded from its claims' ``points=``: a score per experiment and per run, and
Gradescope's ``results.json``.

Pure: :func:`declared` lists what each claim is worth (from the spec, so a claim whose cell
failed to train still counts against the score), :func:`grade` scores the ``--hpspec-json``
document against it. A claim without ``points=`` is worth 1.

Scoring: a cross-cell claim earns its points when it passes. A cell claim selecting several
cells earns its points in proportion to the cells where it passed (a cell that failed to train
earns nothing). Inconclusive earns nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

__all__ = ["GradeItem", "declared", "grade", "score_line"]


@attrs.frozen
class GradeItem:
    """One claim of one experiment: its text (the verdicts' ``claim``), its points, and for a
    cell claim the ids of the cells it selects (None: a cross-cell claim)."""

    experiment: str
    name: str
    claim: str
    points: float
    cells: tuple[str, ...] | None


def declared(key: str, name: str, claims: Iterable[Any],
             cells: Mapping[str, Mapping[str, Any]],
             selected: Iterable[str] | None = None) -> list[GradeItem]:
    """What the experiment ``key`` can score: each cell claim over the ``cells`` that ran
    (id -> params), each cross-cell claim whose slug is in ``selected`` (None: all)."""
    from hpspec.claims import CellClaim

    picked = None if selected is None else set(selected)
    out: list[GradeItem] = []
    for c in claims:
        pts = 1.0 if getattr(c, "points", None) is None else float(c.points)
        if isinstance(c, CellClaim):
            ids = tuple(cid for cid, p in cells.items() if c.applies_to(p))
            if ids:
                out.append(GradeItem(key, name, c.describe(), pts, ids))
        elif picked is None or c.slug() in picked:
            out.append(GradeItem(key, name, c.describe(), pts, None))
    return out


def _num(points: float) -> float | int:
    return int(points) if float(points).is_integer() else round(points, 4)


def grade(document: Mapping[str, Any], items: Sequence[GradeItem]) -> dict[str, Any]:
    """Gradescope's ``results.json``: ``{"score", "max_score", "tests": [{"name", "score",
    "max_score", "output", "visibility"}], "experiments": [{"key", "score", "max_score"}]}``
    (Gradescope ignores the extra ``experiments`` key; the terminal summary reads it)."""
    exps = {e["key"]: e for e in document.get("experiments", [])}
    tests: list[dict[str, Any]] = []
    per_exp: dict[str, list[float]] = {}
    for it in items:
        exp = exps.get(it.experiment, {"cells": [], "claims": []})
        if it.cells is None:
            found = [v for v in exp.get("claims", []) if v["claim"] == it.claim]
            if found:
                v = found[0]
                score = it.points if v["outcome"] == "pass" else 0.0
                output = v["message"]
            else:
                score, output = 0.0, "not judged: a cell this claim needs failed to train"
        else:
            by_id = {c["cell_id"]: c for c in exp.get("cells", [])}
            held, notes = 0, []
            for cid in it.cells:
                cell = by_id.get(cid)
                v = next((v for v in (cell or {}).get("verdicts", []) if v["claim"] == it.claim),
                         None)
                if v is None:
                    outcome = cell["outcome"] if cell else "not run"
                    notes.append(f"[{cid}] not judged: the cell's outcome is {outcome}")
                    continue
                held += v["outcome"] == "pass"
                notes.append(f"[{cid}] {v['message']}")
            score = it.points * held / len(it.cells)
            output = "\n".join(notes)
        tests.append({"name": f"{it.name}: {it.claim}", "score": _num(score),
                      "max_score": _num(it.points), "output": output, "visibility": "visible"})
        acc = per_exp.setdefault(it.experiment, [0.0, 0.0])
        acc[0] += score
        acc[1] += it.points
    return {
        "score": _num(sum(t["score"] for t in tests)),
        "max_score": _num(sum(t["max_score"] for t in tests)),
        "tests": tests,
        "experiments": [{"key": k, "score": _num(s), "max_score": _num(m)}
                        for k, (s, m) in per_exp.items()],
    }


def score_line(score: float, max_score: float) -> str:
    pct = f" ({100 * score / max_score:.0f}%)" if max_score else ""
    return f"score {_num(score)}/{_num(max_score)}{pct}"
