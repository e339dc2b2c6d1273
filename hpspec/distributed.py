"""Running under pytest-xdist: what crosses from a worker to the controller, the GPU pool, and
work that one worker does for all (a halving search, :func:`run_once`).

Pure and torch-free. A worker attaches one JSON payload per hpspec item (plain types only:
xdist's serializer refuses numpy and torch scalars); the controller takes it off the report
before any other plugin (junit XML) sees it, and rebuilds its records, results and verdicts
from it, so the summary tables and the JSON are written once, by the controller, complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, overload

import attrs

from hpspec.claims import Reaches, Verdict
from hpspec.report import CellRecord
from hpspec.results import CellResult, json_number
from hpspec.vocabulary import CellOutcome

if TYPE_CHECKING:
    from hpspec.session import Session

__all__ = ["PAYLOAD", "ExpInfo", "CellPayload", "ClaimPayload", "Payload", "encode_payload",
           "cell_payload", "claim_payload", "read_payload", "more_seeds", "GpuPool", "gpu_ids",
           "configure_worker", "run_once", "encode_results", "decode_results"]

#: The user_properties key of the payload (removed on the controller before junit sees it).
PAYLOAD = "hpspec._payload"


@attrs.frozen
class ExpInfo:
    """What the summary needs to know of an experiment: name, axes, time-to-target claims,
    and for a search its sampler and trials (:func:`hpspec.search.search_info`; a worker sends
    it with its first payload of the experiment only, see :meth:`without_search`)."""

    name: str
    axes: tuple[str, ...]
    targets: tuple[Reaches, ...] = ()
    search: Mapping[str, Any] | None = attrs.field(default=None, eq=False)

    def without_search(self) -> ExpInfo:
        return attrs.evolve(self, search=None) if self.search is not None else self

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "axes": list(self.axes),
                "targets": [attrs.asdict(t) for t in self.targets],
                **({"search": self.search} if self.search is not None else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExpInfo:
        return cls(d["name"], tuple(d["axes"]), tuple(Reaches(**t) for t in d["targets"]),
                   d.get("search"))


def _number_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: json_number(v) if isinstance(v, float) else v for k, v in params.items()}


def _unnumber_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v
            for k, v in params.items()}


@attrs.frozen
class CellPayload:
    """A cell item's report from a worker: its record, with the result and verdicts."""

    key: str
    info: ExpInfo
    cell_id: str
    params: Mapping[str, Any]
    outcome: CellOutcome
    note: str
    result: CellResult | None
    verdicts: tuple[Verdict, ...]
    notes: tuple[str, ...] = ()
    order: int = 0
    #: The worker's torch, CUDA and device (the controller records them as the run's).
    environment: Mapping[str, Any] = attrs.field(factory=dict)

    kind: ClassVar[str] = "cell"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "info": self.info.to_dict(),
                "cell_id": self.cell_id, "params": _number_params(self.params),
                "outcome": self.outcome, "note": self.note,
                "result": self.result.to_dict() if self.result else None,
                "verdicts": [v.to_dict() for v in self.verdicts], "notes": list(self.notes),
                "order": self.order, "environment": dict(self.environment)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CellPayload:
        return cls(d["key"], ExpInfo.from_dict(d["info"]), d["cell_id"],
                   _unnumber_params(d["params"]), d["outcome"], d["note"] or "",
                   CellResult.from_dict(d["result"]) if d["result"] else None,
                   tuple(Verdict.from_dict(v) for v in d["verdicts"]), tuple(d["notes"]),
                   int(d["order"]), dict(d.get("environment") or {}))


@attrs.frozen
class ClaimPayload:
    """A cross-cell claim item's report: its verdict, with the results of the cells it
    judged (adaptive seeding may have grown them on this worker after their own items
    reported, and the controller's tables must show every seed the claim used)."""

    key: str
    info: ExpInfo
    slug: str
    verdict: Verdict | None
    results: Mapping[str, CellResult] = attrs.field(factory=dict)

    kind: ClassVar[str] = "claim"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "info": self.info.to_dict(),
                "slug": self.slug,
                "verdict": self.verdict.to_dict() if self.verdict else None,
                "results": {c: r.to_dict() for c, r in self.results.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClaimPayload:
        return cls(d["key"], ExpInfo.from_dict(d["info"]), d["slug"],
                   Verdict.from_dict(d["verdict"]) if d["verdict"] is not None else None,
                   {c: CellResult.from_dict(r) for c, r in d.get("results", {}).items()})


Payload = CellPayload | ClaimPayload


def encode_payload(payload: Payload) -> str:
    """The one serialiser of a payload: JSON of its ``to_dict`` (plain types only)."""
    return json.dumps(payload.to_dict(), allow_nan=False, default=repr)


def read_payload(text: str) -> Payload:
    d = json.loads(text)
    return CellPayload.from_dict(d) if d["kind"] == CellPayload.kind else (
        ClaimPayload.from_dict(d))


def cell_payload(key: str, info: ExpInfo, record: CellRecord, notes: Sequence[str],
                 environment: Mapping[str, Any] | None = None) -> str:
    """A cell's record; ``environment``: the worker's torch, CUDA and device, which the
    controller (it never imports torch) records as the run's."""
    return encode_payload(CellPayload(
        key, info, record.cell_id, record.params, record.outcome, record.note, record.result,
        tuple(record.verdicts), tuple(notes), record.order, dict(environment or {})))


def claim_payload(key: str, info: ExpInfo, slug: str, verdict: Verdict | None,
                  results: Mapping[str, CellResult] | None = None) -> str:
    return encode_payload(ClaimPayload(key, info, slug, verdict, dict(results or {})))


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


def gpu_ids() -> list[int]:
    """The GPUs this process may lend to workers: CUDA_VISIBLE_DEVICES when set, else every
    card torch sees (torch imported only here, and only on the xdist controller)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(x) for x in visible.split(",") if x.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except Exception:
        return []


def configure_worker(state: Session, workerinput: Mapping[str, Any]) -> None:
    """On an xdist worker: take the run id, the stacking rule and the GPU the controller
    sent (``pytest_configure_node``)."""
    state.worker = workerinput.get("workerid")
    state.workers = int(workerinput.get("workercount", 1))
    state.run_id = workerinput.get("hpspec_run_id")
    if not workerinput.get("hpspec_stack_ok", True) and state.stack:
        # Items of one stacked group would be spread over workers, and each would
        # train the whole group: each cell stacks only its own seeds instead.
        state.stack_alone = True
        state.stack_off_reason = ("each cell stacked with its own seeds only: under -n, "
                                  "stacked groups need --dist loadgroup to stay on one "
                                  "worker")
    gpu = workerinput.get("hpspec_gpu")
    if gpu is not None:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    state.shared = workerinput.get("hpspec_shared")


# ------------------------------------------------------------------ work done once per run


def run_once(shared: str | os.PathLike[str], name: str, work: Callable[[], str]) -> str | None:
    """Under xdist: ``work()`` runs on the first worker that asks for ``name`` in this run; a
    worker asking while it runs waits, and every later one gets its answer (the text
    ``work`` returned, kept in ``shared``, a folder all the run's workers see). Returns None
    on the worker that did the work, else that text. A worker that dies while working
    releases its lock with its process, and the next worker that asks does the work.

    For a halving search: ranking trials against each other is one computation over all of
    them, whichever worker their items land on; run twice, it would cost twice and could
    rank differently (threads, a crash on one worker)."""
    try:
        import fcntl
    except ImportError:  # Windows: no coordination, each worker does the work (as it did)
        work()
        return None
    base = Path(shared) / hashlib.sha256(name.encode()).hexdigest()[:24]
    done = base.with_suffix(".json")
    fd = os.open(base.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another worker works
        if done.exists():
            return done.read_text()
        text = work()
        part = base.with_suffix(f".{os.getpid()}.part")
        part.write_text(text)
        os.replace(part, done)  # whole or absent: never read half written
        return None
    finally:
        os.close(fd)  # (releases the lock)


def encode_results(results: Mapping[str, CellResult], notes: Sequence[str],
                   cached: Sequence[str] = ()) -> str:
    """Cells' results, the summary's notes about them and which were served from the cache,
    as :func:`run_once` keeps them."""
    return json.dumps({"results": {c: r.to_dict() for c, r in results.items()},
                       "notes": list(notes), "cached": list(cached)},
                      allow_nan=False, default=repr)


def decode_results(text: str) -> tuple[dict[str, CellResult], list[str], set[str]]:
    d = json.loads(text)
    return ({c: CellResult.from_dict(r) for c, r in d["results"].items()}, list(d["notes"]),
            set(d["cached"]))


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
