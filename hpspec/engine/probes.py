"""Measurements of a training run that need torch: live tensor memory on any device, FLOPs per
training sample, model size, MFU, and the optional inference profile (pytorch-benchmark).

The runner calls these around a few warm-up steps, so the timed steps pay nothing for them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import sys
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from hpspec.errors import HpspecError

__all__ = [
    "PROBE_CACHE",
    "probe_key",
    "recall_probe",
    "remember_probe",
    "LiveMemory",
    "count_flops",
    "model_size",
    "peak_flops",
    "inference_profile",
    "InferenceUnavailable",
]

#: Size, FLOPs and peak memory by what decides them (:func:`probe_key`), for every engine:
#: equal for every cell, seed, rung and round that share them, so probed once per process.
#: At most :data:`PROBES_KEPT` entries, the oldest dropped. Cleared by benchmarks that want
#: every run to pay for its probes.
PROBE_CACHE: dict[tuple[Any, ...], dict[str, float]] = {}
PROBES_KEPT = 512


def probe_key(engine: str, model: Any, opt: Any, loss: Any, data: Any, batch_size: int,
              device: str) -> tuple[Any, ...] | None:
    """What a model's size, FLOPs and peak memory depend on, for ``engine`` (its own way of
    probing): the model (its modules' classes, which hold their forwards: two classes of one
    name print one repr; its structure; its parameters' and buffers' shapes and dtypes), the
    optimizer's kind and settings other than the learning rate (which changes neither), the
    loss, the batch, the device and the data's shapes and dtypes. None: something in it could
    not be read (the figures are then probed every time)."""
    try:
        params = tuple((tuple(p.shape), p.dtype) for p in model.parameters())
        buffers = tuple((tuple(b.shape), b.dtype) for b in model.buffers())
        settings = tuple(tuple(sorted((k, repr(v)) for k, v in g.items()
                                      if k not in ("params", "lr", "initial_lr")))
                         for g in opt.param_groups)
        return (engine, tuple(map(type, model.modules())), repr(model), params, buffers,
                type(opt), settings, type(loss), repr(loss), data.task,
                tuple(data.x_train.shape), data.x_train.dtype, tuple(data.y_train.shape),
                data.y_train.dtype, batch_size, device)
    except Exception:  # noqa: BLE001 - an exotic model or optimizer: probe it every time
        return None


def recall_probe(key: tuple[Any, ...] | None) -> dict[str, float] | None:
    """The figures remembered under ``key`` (a copy), or None."""
    found = PROBE_CACHE.get(key) if key is not None else None
    return dict(found) if found is not None else None


def remember_probe(key: tuple[Any, ...] | None, figures: dict[str, float]) -> None:
    """Remember ``figures`` under ``key`` (nothing for None), dropping the oldest past
    :data:`PROBES_KEPT`."""
    if key is None:
        return
    PROBE_CACHE[key] = dict(figures)
    while len(PROBE_CACHE) > PROBES_KEPT:
        del PROBE_CACHE[next(iter(PROBE_CACHE))]



def _storages(tensors: Iterable[Any]) -> Iterator[torch.UntypedStorage]:
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.layout == torch.strided:
            yield t.untyped_storage()


class LiveMemory(TorchDispatchMode):
    """Bytes of live tensor storages, and their peak, on every device (CPU included).

    ``tracemalloc`` and RSS sampling do not see torch's allocator; this mode sees every tensor
    an operator returns, counts its storage once and subtracts it when the storage is freed.
    Storages that already exist (parameters, optimizer state, data) are counted through
    :meth:`add`. On CUDA, ``torch.cuda.max_memory_allocated`` is the better number (it also
    sees the allocator's rounding); this one counts the bytes the tensors hold.
    """

    def __init__(self, count_flops: bool = False) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        #: With ``count_flops``: the FLOPs of the operators run inside (as :class:`FlopCount`),
        #: so one pass of the dispatch mode gives both probes.
        self.flops = 0
        self._count_flops = count_flops
        # storage id -> (weak reference whose callback subtracts its bytes, bytes)
        self._seen: dict[int, tuple[weakref.ref[Any], int]] = {}
        self._used = False
        self._open = True

    def __enter__(self) -> LiveMemory:
        if self._used:
            raise RuntimeError("a LiveMemory counts one block; make a new one for another")
        self._used = True
        return super().__enter__()

    def add(self, tensors: Iterable[Any]) -> None:
        for storage in _storages(tensors):
            self._count(storage)

    def _count(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata
        if key in self._seen:
            return
        n = storage.nbytes()
        # A bare weak reference with a callback: several times cheaper than weakref.finalize
        # on this path, which runs for every operator's output.
        def on_free(_: object, key: int = key) -> None:
            self._freed(key)

        self._seen[key] = (weakref.ref(storage, on_free), n)
        self.live += n
        if self.live > self.peak:
            self.peak = self.live

    def _freed(self, key: int) -> None:
        entry = self._seen.pop(key, None) if self._open else None
        if entry is not None:
            self.live -= entry[1]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._count_flops:
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.flops += formula(*args, **kwargs, out_val=out)
        if isinstance(out, torch.Tensor):  # the common case, without flattening
            if out.layout == torch.strided:
                self._count(out.untyped_storage())
        else:
            for storage in _storages(tree_flatten(out)[0]):
                self._count(storage)
        return out

    def __exit__(self, *exc: Any) -> Any:
        # Stop watching: storages that outlive the block must not count any more.
        self._open = False
        self._seen.clear()
        return super().__exit__(*exc)


def optimizer_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for state in opt.state.values():
        out += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return out


class FlopCount(TorchDispatchMode):
    """FLOPs of the operators run inside (``.flops``), by torch's own formulas
    (``torch.utils.flop_counter.flop_registry``), without the per-module attribution that
    makes ``FlopCounterMode`` several times slower."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out

    def get_total_flops(self) -> int:
        return self.flops


def count_flops() -> FlopCount:
    """A FLOP counter; read ``.flops`` (or ``.get_total_flops()``) after the block."""
    return FlopCount()


def model_size(model: torch.nn.Module) -> dict[str, float]:
    """Parameters (trainable and not, shared ones once) and the bytes they and buffers take."""
    params = {id(p): p for p in model.parameters()}.values()
    buffers = {id(b): b for b in model.buffers()}.values()
    return {
        "params": float(sum(p.numel() for p in params)),
        "param_bytes": float(sum(p.numel() * p.element_size() for p in params)
                             + sum(b.numel() * b.element_size() for b in buffers)),
    }


#: Dense peak FLOP/s of cards by name, for float32 without tensor cores (the default of
#: torch's matmul precision "highest") and for TF32/bf16 tensor cores. Sources: the vendors'
#: data sheets (SXM parts; PCIe parts are slower, matched first where named).
_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H100 PCIe", 51e12, 378e12),
    ("H100", 67e12, 494e12),
    ("H200", 67e12, 494e12),
    ("A100", 19.5e12, 156e12),
    ("L40S", 91.6e12, 183e12),
    ("L4", 30.3e12, 60e12),
    ("A10G", 31.2e12, 62.5e12),
    ("V100", 15.7e12, 15.7e12),
    ("T4", 8.1e12, 8.1e12),
)


def peak_flops(device_name: str, tensor_cores: bool = False) -> float | None:
    """The card's dense peak FLOP/s for float32 math, or None for a card we do not know."""
    for name, fp32, tc in _PEAKS:
        if name.lower() in device_name.lower():
            return tc if tensor_cores else fp32
    return None


def device_peak_flops(device: str) -> float | None:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    tf32 = torch.get_float32_matmul_precision() != "highest"
    return peak_flops(torch.cuda.get_device_name(device), tensor_cores=tf32)


# ------------------------------------------------------------------------- inference profile


class InferenceUnavailable(HpspecError):
    """``--hpspec-inference`` was asked for without pytorch-benchmark installed."""


@functools.lru_cache(maxsize=1)
def benchmark_module() -> Any:
    try:
        import pytorch_benchmark.benchmark  # noqa: F401  (the module, not the function)
    except ModuleNotFoundError as e:
        if e.name in ("distutils",):
            raise InferenceUnavailable(
                "--hpspec-inference: pytorch-benchmark imports GPUtil, which needs distutils, "
                "gone from Python 3.12; fix: pip install setuptools (it provides distutils)"
            ) from None
        raise InferenceUnavailable(
            "--hpspec-inference needs pytorch-benchmark; fix: pip install 'hpspec[inference]' "
            "(or pip install pytorch-benchmark)"
        ) from None
    module: Any = sys.modules["pytorch_benchmark.benchmark"]  # untyped package (no stubs)
    # It reads the machine's details on every call (about a second); once is enough.
    module.get_machine_info = functools.lru_cache(maxsize=1)(module.get_machine_info)
    return module


def inference_profile(model: torch.nn.Module, sample: torch.Tensor,
                      runs: int = 50) -> dict[str, float]:
    """pytorch-benchmark's inference profile of a trained model, as flat numbers: latency at
    batch 1 and at the training batch size, its MAC count, and CUDA inference memory."""
    module = benchmark_module()
    was_training = model.training
    quiet = io.StringIO()
    # Its progress bars go to stderr, ptflops's notes to stdout, its warnings to a logger.
    log = logging.getLogger("torch-benchmark")
    was_disabled, log.disabled = log.disabled, True
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            raw = module.benchmark(model, sample, num_runs=runs, print_fn=lambda *_: None)
    finally:
        log.disabled = was_disabled
        model.train(was_training)
    n = sample.shape[0]
    out: dict[str, float] = {}
    if isinstance(raw.get("flops"), (int, float)):
        out["inference_macs"] = float(raw["flops"])  # ptflops counts multiply-adds
    for bs, name in ((1, "latency_b1"), (n, f"latency_b{n}")):
        timing = raw.get("timing", {}).get(f"batch_size_{bs}", {})
        metrics = timing.get("on_device_inference", {}).get("metrics", {})
        if "seconds_per_batch_mean" in metrics:
            out["inference_" + name] = float(metrics["seconds_per_batch_mean"])
        mem = raw.get("memory", {}).get(f"batch_size_{bs}", {})
        if "max_inference_bytes" in mem:
            out[f"inference_memory_b{bs}"] = float(mem["max_inference_bytes"])
    return out
