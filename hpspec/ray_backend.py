"""Training cells on a Ray cluster (``--hpspec-ray ADDRESS``).

Every cell (or group of cells that stack) becomes one Ray task, all submitted up front so the
cluster stays busy; pytest still reports item by item, each item waiting for its own task.
A task rebuilds the experiment from its file (shipped to remote nodes as the runtime
environment's working directory), trains with hpspec's own runner and returns plain data
(``CellResult.to_dict``) or the text of the error. A task that dies, or a node that leaves,
fails that cell's item with a message; the run goes on.

Defaults that do not surprise: the address is always explicit (``local`` starts a private
local cluster, never the one a stale ``/tmp/ray`` file points at), and no dashboard is started.

Exposure: Ray (2.60 checked) cannot be confined to the loopback address: ``ray.init`` turns a
``_node_ip_address`` of 127.0.0.1 into the machine's external address, and its GCS, raylet and
worker gRPC servers listen on every interface. What keeps a private local cluster private is
Ray's token authentication (on by default since Ray 2.5x): hpspec refuses to start a local
cluster with ``RAY_AUTH_MODE=disabled``, and the README says what a real cluster needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from hpspec.errors import CellError, HpspecError
from hpspec.results import CellResult

__all__ = ["RayUnavailable", "RayJob", "RayAnswer", "connect", "submit", "collect", "shutdown"]

#: Paths a remote node does not need (the working directory is uploaded to it).
EXCLUDES = [".git", ".hpspec", ".ci-venv", ".venv", "__pycache__", "*.sqlite*", "*.whl"]


class RayUnavailable(HpspecError):
    """``--hpspec-ray`` was asked for without Ray installed, or the cluster is unreachable."""


@attrs.frozen
class RayJob:
    """One task: the cells of one experiment (a stack, or one cell) and how to train them.
    ``rel`` is ``path`` relative to the working directory a remote node receives."""

    path: str
    rel: str
    attr: str
    cell_ids: tuple[str, ...]
    seeds: tuple[int, ...] | None
    device: str
    options: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rel": self.rel, "attr": self.attr,
                "cell_ids": list(self.cell_ids),
                "seeds": None if self.seeds is None else list(self.seeds),
                "device": self.device, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RayJob:
        return cls(d["path"], d["rel"], d["attr"], tuple(d["cell_ids"]),
                   None if d["seeds"] is None else tuple(d["seeds"]), d["device"],
                   dict(d["options"]))


@attrs.frozen
class RayAnswer:
    """What a task sends back: a result per cell it trained, the error text per cell it
    could not, and notes for the summary. Crosses Ray as ``to_dict`` (plain data)."""

    results: Mapping[str, CellResult] = attrs.field(factory=dict)
    errors: Mapping[str, str] = attrs.field(factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"results": {c: r.to_dict() for c, r in self.results.items()},
                "errors": dict(self.errors), "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RayAnswer:
        return cls({c: CellResult.from_dict(r) for c, r in d["results"].items()},
                   dict(d["errors"]), tuple(d["notes"]))


def connect(address: str, root: Path, num_cpus: int | None = None) -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise RayUnavailable(
            "--hpspec-ray needs Ray; fix: pip install 'hpspec[ray]' (or pip install ray)"
        ) from None
    if ray.is_initialized():
        return ray
    if address == "local" and os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        raise RayUnavailable(
            "--hpspec-ray=local: RAY_AUTH_MODE=disabled turns off Ray's token authentication, "
            "and Ray's processes listen on every network interface, so anyone who can reach "
            "this machine could run code in them; fix: unset RAY_AUTH_MODE (or run without "
            "--hpspec-ray)")
    common: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                  configure_logging=False, ignore_reinit_error=True)
    try:
        if address == "local":
            # A private cluster on this machine: same files, no upload needed.
            ray.init(address="local", num_cpus=num_cpus, **common)
        else:
            ray.init(address=address, runtime_env={"working_dir": str(root),
                                                    "excludes": EXCLUDES}, **common)
    except Exception as e:  # ConnectionError, RuntimeError, ... from ray.init
        raise RayUnavailable(f"--hpspec-ray={address}: cannot reach the cluster: "
                             f"{type(e).__name__}: {e}") from None
    return ray


def _train(path: str, rel: str, attr: str, cell_ids: Sequence[str], seeds: Sequence[int] | None,
           device: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The task: rebuild the experiment from its file, train the cells, return plain data."""
    import importlib.util
    import sys
    import traceback

    from hpspec import spec as spec_mod
    from hpspec.engine.runner import run_cell, run_stacked, select_device
    from hpspec.plan import stop_after, stop_rule

    file = path if os.path.exists(path) else rel
    name = f"hpspec_ray_{abs(hash(file))}"
    module = sys.modules.get(name)
    if module is None:
        loader = importlib.util.spec_from_file_location(name, file)
        assert loader is not None and loader.loader is not None
        module = importlib.util.module_from_spec(loader)
        sys.modules[name] = module
        loader.loader.exec_module(module)
    spec_mod.PROFILES.update(options.get("profiles", {}))
    exp = spec_mod.build(getattr(module, attr))
    if options.get("profile"):
        exp, _ = spec_mod.apply_profile(exp, options["profile"])
    cells = [c for c in exp.cells if c.id in set(cell_ids)]
    dev = select_device(device)
    full = bool(options.get("full_curves"))
    stops: Mapping[str, int] = options.get("stops") or {}  # a halving rung's epoch, per cell
    rules = {c.id: stop_after(stop_rule(exp, c.as_dict(), full), stops.get(c.id))
             for c in cells}
    results: dict[str, CellResult] = {}
    errors: dict[str, str] = {}
    notes: list[str] = []
    todo = list(cells)
    if options.get("stack"):  # a lone cell too: the stacked engine trains it faster
        try:
            stacked, why = run_stacked(exp, cells, dev, tuple(seeds) if seeds else None,
                                       stop_rules=rules)
            results.update(stacked)
            todo = [c for c in cells if c.id not in stacked]
            if stacked:
                notes.append(f"stacked on Ray: {len(stacked)} cell(s) in one task")
            if why:
                notes.append(f"trained one by one ({len(why)} cells): "
                                    f"{next(iter(why.values()))}")
        except Exception:
            todo = list(cells)
    for cell in todo:
        try:
            res = run_cell(exp, cell, dev, seeds=tuple(seeds) if seeds else None,
                           stop=rules[cell.id],
                           timeout=options.get("timeout"))
            results[cell.id] = res
        except Exception as e:
            text = str(e) if isinstance(e, HpspecError) else "".join(
                traceback.format_exception(type(e), e, e.__traceback__)[-6:])
            errors[cell.id] = text
    return RayAnswer(results, errors, tuple(notes)).to_dict()


def submit(ray: Any, jobs: Sequence[RayJob], num_gpus: float, retries: int) -> list[Any]:
    """One Ray task per job; returns their object refs, in order."""
    task = ray.remote(num_gpus=num_gpus, max_retries=retries)(_train)
    return [task.remote(j.path, j.rel, j.attr, list(j.cell_ids),
                        None if j.seeds is None else list(j.seeds), j.device, dict(j.options))
            for j in jobs]


def collect(ray: Any, ref: Any, what: str) -> RayAnswer:
    """The task's answer, or a CellError that says what happened to it."""
    try:
        return RayAnswer.from_dict(ray.get(ref))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CellError(
            f"{what}: its Ray task failed ({type(e).__name__}: {first}); the worker or its "
            "node died, or the task could not run there. The run goes on; fix: look at the "
            "Ray logs (ray logs / the dashboard of your cluster), or run without --hpspec-ray"
        ) from None


def shutdown(ray: Any) -> None:
    try:
        ray.shutdown()
    except Exception:
        pass
