"""Running under pytest-xdist: what crosses from a worker to the controller, and the GPU pool.

Pure and torch-free. A worker attaches one JSON payload per hpspec item (plain types only:
xdist's serializer refuses numpy and torch scalars); the controller takes it off the report
before any other plugin (junit XML) sees it, and rebuilds its records, results and verdicts
from it, so the summary tables and the JSON are written once, by the controller, complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, overload

import attrs

from hpspec.claims import Effect, Reaches, SeedCheck, Verdict
from hpspec.report import CellRecord
from hpspec.results import CellResult, json_number

__all__ = ["PAYLOAD", "ExpInfo", "cell_payload", "claim_payload", "read_payload", "more_seeds",
           "GpuPool"]

#: The user_properties key of the payload (removed on the controller before junit sees it).
PAYLOAD = "hpspec._payload"


@attrs.frozen
class ExpInfo:
    """What the summary needs to know of an experiment: name, axes, time-to-target claims."""

    name: str
    axes: tuple[str, ...]
    targets: tuple[Reaches, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "axes": list(self.axes),
                "targets": [attrs.asdict(t) for t in self.targets]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExpInfo:
        return cls(d["name"], tuple(d["axes"]), tuple(Reaches(**t) for t in d["targets"]))


def _verdict(v: Verdict) -> dict[str, Any]:
    return {"claim": v.claim, "outcome": v.outcome, "message": v.message,
            "checks": [{**attrs.asdict(c), "value": json_number(c.value)} for c in v.checks],
            "p_pass": v.p_pass, "p_fail": v.p_fail, "points": v.points,
            "target": None if v.target is None else list(v.target),
            "effect": None if v.effect is None else attrs.asdict(v.effect)}


def _unverdict(d: Mapping[str, Any]) -> Verdict:
    checks = tuple(SeedCheck(c["seed"], c["ok"], None if c["value"] is None else
                             float(c["value"]), c["note"]) for c in d["checks"])
    return Verdict(d["claim"], d["outcome"], d["message"], checks, d["p_pass"], d["p_fail"],
                   d.get("points"), None if d.get("target") is None else tuple(d["target"]),
                   None if d.get("effect") is None else Effect(**d["effect"]))


def cell_payload(key: str, info: ExpInfo, record: CellRecord, notes: Sequence[str],
                 environment: Mapping[str, Any] | None = None) -> str:
    """A cell's record; ``environment``: the worker's torch, CUDA and device, which the
    controller (it never imports torch) records as the run's."""
    return json.dumps({
        "kind": "cell", "key": key, "info": info.to_dict(), "cell_id": record.cell_id,
        "params": {k: json_number(v) if isinstance(v, float) else v
                   for k, v in record.params.items()},
        "outcome": record.outcome, "note": record.note,
        "result": record.result.to_dict() if record.result else None,
        "verdicts": [_verdict(v) for v in record.verdicts], "notes": list(notes),
        "order": record.order, "environment": dict(environment or {}),
    }, allow_nan=False, default=repr)


def claim_payload(key: str, info: ExpInfo, slug: str, verdict: Verdict | None,
                  results: Mapping[str, CellResult] | None = None) -> str:
    """A claim's verdict, with the results of the cells it judged: adaptive seeding may have
    grown them on this worker after their own items reported, and the controller's tables
    must show every seed the claim used."""
    return json.dumps({"kind": "claim", "key": key, "info": info.to_dict(), "slug": slug,
                       "verdict": _verdict(verdict) if verdict else None,
                       "results": {c: r.to_dict() for c, r in (results or {}).items()}},
                      allow_nan=False, default=repr)


@overload
def more_seeds(have: CellResult | None, new: CellResult) -> CellResult: ...
@overload
def more_seeds(have: CellResult | None, new: CellResult | None) -> CellResult | None: ...
def more_seeds(have: CellResult | None, new: CellResult | None) -> CellResult | None:
    """Of two results of one cell (from different workers), the one with more seeds: seeds
    are deterministic, so the longer list holds the shorter one."""
    if new is None:
        return have
    if have is None or len(new.seeds) > len(have.seeds):
        return new
    return have


def read_payload(text: str) -> dict[str, Any]:
    d = json.loads(text)
    d["info"] = ExpInfo.from_dict(d["info"])
    if d["kind"] == "cell":
        d["params"] = {k: float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v
                       for k, v in d["params"].items()}
        d["result"] = CellResult.from_dict(d["result"]) if d["result"] else None
        d["verdicts"] = [_unverdict(v) for v in d["verdicts"]]
    else:
        if d["verdict"] is not None:
            d["verdict"] = _unverdict(d["verdict"])
        d["results"] = {c: CellResult.from_dict(r) for c, r in d.get("results", {}).items()}
    return d


class GpuPool:
    """GPUs lent to xdist workers, ``per_gpu`` workers on each; a crashed worker's GPU goes
    back only when its node is down, so a replacement never lands on a GPU still in use."""

    def __init__(self, gpus: Sequence[int], per_gpu: int = 1) -> None:
        self.free: list[int] = [g for g in gpus for _ in range(max(1, per_gpu))]
        self.lent: dict[str, int] = {}

    def lend(self, worker: str) -> int | None:
        if worker in self.lent:
            return self.lent[worker]
        if not self.free:
            return None
        # the GPU with the most free slots first, so workers spread over the cards
        best = max(set(self.free), key=lambda g: (self.free.count(g), -g))
        self.free.remove(best)
        self.lent[worker] = best
        return best

    def give_back(self, worker: str) -> None:
        gpu = self.lent.pop(worker, None)
        if gpu is not None:
            self.free.append(gpu)
