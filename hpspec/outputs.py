"""Writing the run's report files, and reading a baseline document back. Pure (no torch, no
pytest): paths and plain data in, problems as lines of text out.

A report that cannot be written costs only itself: the table is printed, the store is
finished and the other reports are written, each failure becoming one warning line. Each file
is written to a temporary name beside it and renamed into place, so Ctrl-C or a full disk
never leaves half a JSON document under the user's name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "MAX_DEPTH",
    "BaselineDocumentError",
    "Report",
    "baseline_numbers",
    "output_path_problem",
    "write_reports",
]


def output_path_problem(flag: str, value: str) -> str | None:
    """Why ``value`` cannot be the file ``flag`` writes, or None. A missing parent directory is
    fine (it is made when the report is written)."""
    path = Path(value)
    if not value.strip():
        return f"{flag}: an empty path; fix: {flag}=report.json"
    if path.is_dir():
        return (f"{flag}={value} is a directory; give a file name, e.g. "
                f"{flag}={path / ('report.html' if 'html' in flag else 'report.json')}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return (f"{flag}={value}: {parent} is a file, so no directory can be made "
                        "there; fix: choose another path")
            break
    return None


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        # mkstemp makes the file 0600; a report gets the mode any new file gets (the umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)  # our own temporary file, never the user's
        except OSError:
            pass
        raise


@attrs.frozen
class Report:
    """One file to write: which option asked for it, where, and how to make its text."""

    flag: str
    path: str
    render: Callable[[], str]


def write_reports(reports: Sequence[Report]) -> list[str]:
    """Write each report; returns one warning line per report that was not written.

    Ctrl-C while writing abandons that report and the ones after it (nothing half-written is
    left) and says so, instead of a traceback from deep inside a JSON encoder.
    """
    problems: list[str] = []
    for i, r in enumerate(reports):
        try:
            _write_atomic(Path(r.path), r.render())
        except KeyboardInterrupt:
            skipped = ", ".join(f"{x.flag}={x.path}" for x in reports[i:])
            problems.append(f"interrupted: not written: {skipped}")
            break
        except (OSError, ValueError, TypeError, RecursionError) as e:
            problems.append(f"{r.flag}={r.path}: not written ({type(e).__name__}: {e})")
    return problems


# ------------------------------------------------------------------------- baseline documents


class BaselineDocumentError(ValueError):
    """A ``--hpspec-compare FILE`` document that is not an ``hpspec-run`` export."""


#: Deeper than any real export (document > experiments > cell > result > seeds > curves).
MAX_DEPTH = 12


def _depth(obj: Any, limit: int) -> int:
    # Iterative, so a hostile 100,000-deep list cannot blow the stack while we measure it.
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            return d
        if isinstance(node, Mapping):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def _is_number(x: Any) -> bool:
    # json_number writes NaN and infinities as these strings
    return x is None or x in ("nan", "inf", "-inf") or (
        isinstance(x, (int, float)) and not isinstance(x, bool))


def _need(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise BaselineDocumentError(f"{where} {what}")


def baseline_numbers(
    doc: Any, cell_numbers: Callable[[Sequence[Mapping[str, Any]]], dict[str, float]]
) -> tuple[dict[tuple[str, str], dict[str, float]], str | None]:
    """Per (experiment key, cell id) mean final numbers of an exported run, and its environment
    fingerprint. Raises BaselineDocumentError naming the first part that is not as
    ``--hpspec-export`` writes it (schema ``hpspec-run``)."""
    _need(isinstance(doc, dict), "the document", f"is a {type(doc).__name__}, not an object "
          "written by --hpspec-export")
    _need(_depth(doc, MAX_DEPTH) <= MAX_DEPTH, "the document",
          f"is nested deeper than {MAX_DEPTH} levels; an export never is")
    _need(doc.get("schema") == "hpspec-run", "'schema'",
          f"is {doc.get('schema')!r}, not 'hpspec-run'")
    fp = doc.get("fingerprint")
    _need(fp is None or isinstance(fp, str), "'fingerprint'", "is not a string")
    exps = doc.get("experiments")
    _need(isinstance(exps, list), "'experiments'", "is missing or not a list")
    out: dict[tuple[str, str], dict[str, float]] = {}
    for i, exp in enumerate(exps):
        at = f"experiments[{i}]"
        _need(isinstance(exp, dict), at, "is not an object")
        _need(isinstance(exp.get("key"), str), f"{at}.key", "is missing or not a string")
        cells = exp.get("cells", [])
        _need(isinstance(cells, list), f"{at}.cells", "is not a list")
        for j, c in enumerate(cells):
            cat = f"{at}.cells[{j}]"
            _need(isinstance(c, dict), cat, "is not an object")
            _need(isinstance(c.get("cell_id"), str), f"{cat}.cell_id",
                  "is missing or not a string")
            result = c.get("result")
            if result is None:
                continue
            _need(isinstance(result, dict) and isinstance(result.get("seeds"), list),
                  f"{cat}.result.seeds", "is missing or not a list")
            for k, s in enumerate(result["seeds"]):
                sat = f"{cat}.result.seeds[{k}]"
                _need(isinstance(s, dict), sat, "is not an object")
                for part in ("curves", "measurements"):
                    block = s.get(part, {})
                    _need(isinstance(block, dict), f"{sat}.{part}", "is not an object")
                    for name, v in block.items():
                        values = v if part == "curves" else [v]
                        _need(isinstance(values, list) and all(_is_number(x) for x in values),
                              f"{sat}.{part}.{name}", "holds something other than numbers")
            out[(exp["key"], c["cell_id"])] = cell_numbers(result["seeds"])
    return out, fp
