"""A run as rows and files other tools read: one row per cell and seed (the CSV, and
``Run.rows()`` / ``Run.to_pandas()``), and TensorBoard event files.

Built from the ``--hpspec-json`` document (plain data), like the HTML report, so a stored or
exported run can be written again later. :func:`seed_rows` is pure; :func:`write_tensorboard`
imports torch's ``SummaryWriter`` (needs ``pip install 'hpspec[tensorboard]'``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpspec.results import MEASUREMENTS

__all__ = ["FIXED_COLUMNS", "csv_text", "seed_rows", "write_csv", "write_tensorboard"]


def _number(x: Any) -> Any:
    """The document writes NaN and infinity as strings; rows hold them as floats again."""
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    return x


def _final(curve: list[Any]) -> Any:
    return _number(curve[-1]) if curve else None


#: The columns every row has; a hyperparameter of the same name is written ``param_<name>``
#: (a grid over ``epochs`` or ``seed`` must not overwrite, or be overwritten by, these).
FIXED_COLUMNS = ("experiment", "cell_id", "seed", "outcome", "diverged_epoch", "epochs")


def _param_column(name: str) -> str:
    clash = name in FIXED_COLUMNS or name in MEASUREMENTS or name.endswith("_final")
    return f"param_{name}" if clash else name


def seed_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dict per cell and seed, in the run's order: ``experiment``, ``cell_id``, ``seed``,
    ``outcome``, each hyperparameter by its name (``param_<name>`` where the name is one of
    these columns, a measurement or ends in ``_final``), ``<metric>_final`` for each curve,
    ``diverged_epoch`` (None when it did not diverge), ``epochs`` (epochs trained) and each
    measurement by its name (``samples_per_s``, ``peak_memory``, ...). Cells without a result
    (a recipe that raised) give one row with the seed None, so nothing that ran is missing.

    The one row builder: ``--hpspec-csv`` writes these rows and ``Run.rows()`` /
    ``Run.to_pandas()`` return them."""
    rows: list[dict[str, Any]] = []
    for exp in document.get("experiments", []):
        for cell in exp.get("cells", []):
            base = {"experiment": exp["key"], "cell_id": cell["cell_id"]}
            seeds = (cell.get("result") or {}).get("seeds") or [None]
            for s in seeds:
                row: dict[str, Any] = {**base, "seed": None if s is None else s["seed"],
                                       "outcome": cell["outcome"]}
                row.update({_param_column(k): _number(v) for k, v in cell["params"].items()})
                if s is not None:
                    curves = s.get("curves") or {}
                    for metric, curve in curves.items():
                        row[f"{metric}_final"] = _final(curve)
                    row["diverged_epoch"] = (s.get("diverged") or {}).get("epoch")
                    # as SeedResult.epochs_run: the longest curve (a loaded run may carry no
                    # per-epoch timings)
                    row["epochs"] = max((len(c) for c in curves.values()), default=0)
                    row.update({k: _number(v) for k, v in s.get("measurements", {}).items()})
                rows.append(row)
    return rows


def csv_text(document: Mapping[str, Any]) -> str:
    """:func:`seed_rows` as CSV text (columns in first-seen order, blank where a row lacks
    one)."""
    rows = seed_rows(document)
    columns: dict[str, None] = {}
    for r in rows:
        columns.update(dict.fromkeys(r))
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, fieldnames=list(columns), restval="")
    w.writeheader()
    w.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return out.getvalue()


def write_csv(document: Mapping[str, Any], path: str | Path) -> int:
    """:func:`csv_text` written to ``path``; returns the number of rows."""
    Path(path).write_text(csv_text(document), encoding="utf-8", newline="")
    return len(seed_rows(document))


def _hparam(v: Any) -> Any:
    # The HParams plugin takes numbers, strings and booleans only.
    return v if isinstance(v, (bool, int, float, str)) else str(v)


def write_tensorboard(document: Mapping[str, Any], logdir: str | Path) -> list[Path]:
    """Each seed of each cell as a TensorBoard run ``<logdir>/<experiment>/<cell_id>/seed<k>``:
    its curves as scalars by epoch (non-finite values left out: TensorBoard cannot draw them)
    and, for the HParams dashboard, the cell's hyperparameters with its final metrics
    (``final/<metric>``). Returns the run directories written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # tensorboard is an optional extra
        raise RuntimeError("--hpspec-tensorboard needs tensorboard: "
                           "pip install 'hpspec[tensorboard]'") from e
    written: list[Path] = []
    for exp in document.get("experiments", []):
        for cell in exp.get("cells", []):
            for s in (cell.get("result") or {}).get("seeds", []):
                run = Path(logdir) / exp["name"] / cell["cell_id"] / f"seed{s['seed']}"
                with SummaryWriter(log_dir=str(run)) as w:
                    finals: dict[str, float] = {}
                    for metric, curve in s["curves"].items():
                        for epoch, v in enumerate(curve, start=1):
                            v = _number(v)
                            if isinstance(v, (int, float)) and math.isfinite(v):
                                w.add_scalar(metric, float(v), epoch)
                        last = _final(curve)
                        if isinstance(last, (int, float)):
                            finals[f"final/{metric}"] = float(last)
                    hp = {k: _hparam(v) for k, v in cell["params"].items()}
                    hp["seed"] = s["seed"]
                    # run_name="." keeps the hparams summary in this seed's run directory
                    # instead of a time-stamped subfolder.
                    w.add_hparams(hp, finals, run_name=".")
                written.append(run)
    return written
