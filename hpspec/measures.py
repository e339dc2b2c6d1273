"""The one registry of measurements: what hpspec measures besides the per-epoch metrics.

Every module that names a measurement reads this table rather than its own list: the
summary table's columns and legend (report, and through it the HTML report), the gate's
friendly names and its machine-dependent set (gate), the claim helpers ``throughput()``,
``measure(...)`` (claims), the stacking decision (plan), the probes copied across seeds
(engine) and the CLI's ``show``. Adding a measurement is one entry here. Pure: no imports
beyond the standard library and attrs, so every other module may import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import attrs

__all__ = [
    "Format", "Measurement", "REGISTRY", "BY_NAME", "ALIASES", "TIMING", "TIMES_TRAINING",
    "PROBED", "CLAIMABLE", "SHORT", "COLUMNS", "DESCRIPTIONS", "FORMATTERS", "get",
    "INFERENCE_PREFIX", "is_measurement", "is_probed",
    "human_rate", "human_bytes", "human_seconds", "human_count", "human_percent",
]

#: How a measurement's mean is written in a table cell.
Format = Literal["rate", "bytes", "seconds", "count", "percent"]


def human_rate(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.1f}"


def human_bytes(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{int(x)} B"


def human_seconds(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if x < 1e-3:
        return f"{x * 1e6:.0f} us"
    if x < 1:
        return f"{x * 1e3:.1f} ms"
    return f"{x:.2f} s"


def human_count(x: float | None) -> str:
    return "-" if x is None else human_rate(x).replace(".0", "") if x >= 1e3 else f"{x:.0f}"


def human_percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2g}%"


FORMATTERS: dict[str, Callable[[float | None], str]] = {
    "rate": human_rate, "bytes": human_bytes, "seconds": human_seconds, "count": human_count,
    "percent": human_percent,
}


@attrs.frozen
class Measurement:
    """One measurement: its name in results and the store, and how each front-end shows it."""

    name: str
    #: What it is, with its unit (``hpspec.results.MEASUREMENTS``, the docs).
    description: str
    #: How a claim about it reads (``throughput() > 1000`` says "samples/s > 1000").
    label: str
    #: The unit comparisons take: "bytes" also accepts text such as "2 GiB".
    unit: Literal["", "bytes"] = ""
    #: Header of its column in the summary table; None: it has no column.
    header: str | None = None
    format: Format = "rate"
    #: The legend line under the table (and in the HTML report).
    legend: str = ""
    #: False: its column shows only when --hpspec-columns names it.
    in_full: bool = True
    #: Depends on the machine: the gate compares it only between equal environments.
    timing: bool = False
    #: Times the training itself: stacking cells would change what it means.
    times_training: bool = False
    #: Depends on the model and batch, not the seed: probed on a cell's first seed, copied.
    probed: bool = False
    #: ``measure(name)`` may claim it.
    claimable: bool = True
    #: The gate's friendly name (``throughput:-10%``).
    alias: str | None = None
    #: In ``--hpspec-table=short`` and ``hpspec show``.
    short: bool = False
    #: Taken in loop mode too (hpspec times the generator's epochs but owns no model there).
    in_loop_mode: bool = False


# Order matters: it is the order of the table's columns and of the names an error lists.
REGISTRY: tuple[Measurement, ...] = (
    Measurement(
        "time_per_epoch", "seconds of training per epoch (evaluation excluded)",
        "s/epoch", header="time/epoch", format="seconds",
        legend="time/epoch: training seconds per epoch, evaluation excluded",
        timing=True, times_training=True, alias="epoch_time", in_loop_mode=True),
    Measurement(
        "samples_per_s",
        "training samples per second over the timed steps (warm-up excluded)",
        "samples/s", header="samples/s", format="rate",
        legend="samples/s: training samples per second over the timed steps (the first "
        "steps are warm-up, left out; the device is synchronised before each clock read)",
        timing=True, times_training=True, alias="throughput", short=True),
    Measurement(
        "steps_per_s", "optimizer steps per second over the timed steps",
        "steps/s", header="steps/s", format="rate",
        legend="steps/s: optimizer steps per second", in_full=False,
        timing=True, times_training=True),
    Measurement(
        "peak_memory",
        "bytes: peak of live tensor memory while training (parameters, gradients, "
        "optimizer state, activations, data on the device); CUDA: max_memory_allocated",
        "peak memory", unit="bytes", header="peak mem", format="bytes",
        legend="peak mem: peak bytes of live tensors while training (parameters, "
        "gradients, optimizer state, activations, data on the device); on CUDA "
        "torch.cuda.max_memory_allocated",
        probed=True, alias="memory", short=True),
    Measurement(
        "params", "number of model parameters", "parameters", header="params",
        format="count", legend="params: trainable and frozen parameters", probed=True),
    Measurement(
        "param_bytes", "bytes of the model's parameters and buffers", "parameter bytes",
        unit="bytes", probed=True),
    Measurement(
        "flops_per_sample",
        "FLOPs of one training sample, forward plus backward (torch.utils.flop_counter)",
        "FLOPs per training sample", header="FLOPs/sample", format="rate",
        legend="FLOPs/sample: forward plus backward FLOPs per training sample "
        "(torch.utils.flop_counter)", probed=True),
    Measurement(
        "mfu",
        "model FLOPs utilisation: flops_per_sample x samples/s over the card's peak (CUDA)",
        "MFU", header="MFU", format="percent",
        legend="MFU: FLOPs/sample x samples/s over the card's float32 peak",
        timing=True, times_training=True),
    # The inference profile (--hpspec-inference) runs once on the trained model, after the
    # timed training: the latency depends on the machine but not on how cells were stacked.
    Measurement(
        "inference_latency_b1", "seconds per inference batch of 1 (pytorch-benchmark)",
        "inference latency at batch 1", header="infer b=1", format="seconds",
        legend="infer b=1: inference latency at batch 1 (pytorch-benchmark)",
        timing=True, probed=True, claimable=False),
    Measurement(
        "inference_macs", "multiply-adds of one inference sample (pytorch-benchmark, ptflops)",
        "inference MACs", header="MACs", format="rate",
        legend="MACs: multiply-adds per inference sample (pytorch-benchmark, ptflops)",
        probed=True, claimable=False),
    Measurement(
        "stacked", "cells trained together in this cell's stack (1: trained alone)",
        "cells stacked", claimable=False),
    Measurement(
        "threads", "torch intra-op threads the seed trained with (--hpspec-threads)",
        "threads", claimable=False),
)

BY_NAME: dict[str, Measurement] = {m.name: m for m in REGISTRY}
#: The gate's friendly names for measurements.
ALIASES: dict[str, str] = {m.alias: m.name for m in REGISTRY if m.alias}
TIMING: frozenset[str] = frozenset(m.name for m in REGISTRY if m.timing)
TIMES_TRAINING: frozenset[str] = frozenset(m.name for m in REGISTRY if m.times_training)
PROBED: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.probed)
CLAIMABLE: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.claimable)
SHORT: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.short)
#: Measurements with a column in the summary table, in column order.
COLUMNS: tuple[Measurement, ...] = tuple(m for m in REGISTRY if m.header is not None)
DESCRIPTIONS: dict[str, str] = {m.name: m.description for m in REGISTRY}


#: The inference profile's numbers (--hpspec-inference) start with this. Besides the two
#: registered above it yields a latency and a memory per batch size (``inference_latency_b32``,
#: ``inference_memory_b1``): a family of names rather than entries.
INFERENCE_PREFIX = "inference_"


def is_measurement(name: str) -> bool:
    """Whether ``name`` is a measurement (registered, or of the inference family)."""
    return name in BY_NAME or name.startswith(INFERENCE_PREFIX)


def is_probed(name: str) -> bool:
    """Whether ``name`` is probed on a cell's first seed and copied to its other seeds."""
    return name in PROBED or name.startswith(INFERENCE_PREFIX)


def get(name: str) -> Measurement | None:
    """The measurement called ``name`` or by its gate alias; None if hpspec takes none."""
    return BY_NAME.get(ALIASES.get(name, name))
