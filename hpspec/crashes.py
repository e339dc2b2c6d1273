"""Under pytest-xdist, items whose worker died (os._exit, SIGKILL, the OOM killer).

Pure and torch-free. The controller collects nothing, so a crashed item is known only by its
node id (``<file>::<experiment>[<cell id or claim slug>]``) and xdist's one-line reason; these
helpers turn that into what the records need: which experiment, whether a cell or a claim,
and the cell's hyperparameters where the experiment's axes are known.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

__all__ = ["CRASH_MARK", "is_crash_report", "parse_cell_id", "retrained_line", "split_nodeid"]

#: The outcome a crashed cell gets in the records, the JSON and the store's ``cells`` table
#: (written the moment the controller hears of it, so that claims on other workers see it).
CRASH_MARK: Final = "crashed"


def is_crash_report(when: str, longrepr: Any) -> bool:
    """xdist reports an item whose worker died with ``when == "???"`` and a one-line reason."""
    return when == "???" and "crashed while running" in str(longrepr)


def split_nodeid(nodeid: str, keys: Iterable[str] = ()) -> tuple[str, str] | None:
    """(experiment key, the text in brackets) of an hpspec item's node id; a key already known
    wins (an experiment name may itself hold ``[``). None when it is not an hpspec-shaped id."""
    if not nodeid.endswith("]"):
        return None
    for key in sorted(keys, key=len, reverse=True):
        if nodeid.startswith(key + "["):
            return key, nodeid[len(key) + 1:-1]
    head, sep, _ = nodeid.rpartition("::")
    name_and_id = nodeid[len(head) + len(sep):]
    name, bracket, rest = name_and_id.partition("[")
    if not (sep and bracket and name):
        return None
    return f"{head}::{name}", rest[:-1]


def parse_cell_id(text: str, axes: Sequence[str]) -> dict[str, str] | None:
    """The hyperparameters (as shown, text) of a cell id over ``axes``, or None when ``text``
    is not a cell id of them (a claim's slug, say)."""
    if not axes:
        return None
    pattern = "-".join(f"{re.escape(a)}=(.+?)" for a in axes)
    m = re.fullmatch(pattern, text)
    return None if m is None else dict(zip(axes, m.groups(), strict=True))


def retrained_line(claim: str, cells: Mapping[str, str]) -> str:
    """What a claim's message says when it was judged with cells whose own items crashed their
    worker: it used a retraining of them on another worker, not the run the table shows."""
    names = ", ".join(sorted(cells))
    why = "; ".join(sorted(set(cells.values())))
    return (f"claim {claim!r} used cell(s) {names} trained on another worker: the cell's own "
            f"item crashed its worker ({why}), so that training is not the one the table "
            "records")
