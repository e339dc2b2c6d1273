"""A run's results as flat rows, one per cell and seed (for ``Run.to_pandas()`` and any other
table consumer). Pure: reads an ``hpspec-run`` document, imports neither pytest nor torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["seed_rows"]


def seed_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dict per (experiment, cell, seed): the experiment's key and name, the cell's id,
    parameters and outcome, the seed, every curve's last value (``final_<metric>``), the epochs
    run, the divergence reason (or None), every measurement, and the curves themselves
    (``curve_<metric>``, a list by epoch). A cell that produced no result gives one row with
    ``seed`` None, so failed cells stay visible."""
    rows: list[dict[str, Any]] = []
    for exp in doc.get("experiments", []):
        for cell in exp.get("cells", []):
            base = {"experiment": exp["key"], "name": exp["name"], "cell_id": cell["cell_id"],
                    **{f"param_{k}": v for k, v in cell["params"].items()},
                    "outcome": cell["outcome"]}
            result = cell.get("result")
            if not result or not result.get("seeds"):
                rows.append({**base, "seed": None})
                continue
            for s in result["seeds"]:
                row = {**base, "seed": s["seed"], "device": result.get("device")}
                curves = s.get("curves", {})
                row["epochs"] = max((len(c) for c in curves.values()), default=0)
                div = s.get("diverged")
                row["diverged"] = div.get("reason") if isinstance(div, Mapping) else None
                for m, c in curves.items():
                    row[f"final_{m}"] = c[-1] if c else None
                for m, v in s.get("measurements", {}).items():
                    row[m] = v
                for m, c in curves.items():
                    row[f"curve_{m}"] = list(c)
                rows.append(row)
    return rows
