"""Step primitives that both engines (one-by-one :mod:`hpspec.engine.runner` and stacked
:mod:`hpspec.engine.stacked`) share: one definition of a training step, of the timer's
synchronisation, of divergence and of the warm-up, so the two engines measure the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard, TypeVar

import torch
from torch import nn

from hpspec.datasets import CLASSIFICATION, Data
from hpspec.engine.compiler import optimizer_step
from hpspec.engine.probes import LiveMemory, optimizer_tensors
from hpspec.results import Divergence

__all__ = [
    "ELEMENTWISE", "plain", "DIVERGENCE_FACTOR", "WARMUP_STEPS", "Progress", "StopRule",
    "TimedSteps", "default_loss", "divergence", "divergence_limit", "probe_memory", "sync",
    "train_step",
]

#: Activation modules that act element by element, so they apply to [K, B, H] unchanged.
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.SELU,
               nn.Softplus, nn.Mish, nn.Hardtanh, nn.Identity, nn.CELU, nn.Softsign)

_M = TypeVar("_M", bound=nn.Module)


def plain(m: nn.Module, base: type[_M]) -> TypeGuard[_M]:
    """``m`` computes what ``base`` computes: its forward is ``base``'s (a subclass may only add
    methods), and no hook or parametrization changes it (what the stacked engines require of
    a layer they compute themselves)."""
    from torch.nn.utils import parametrize

    return (isinstance(m, base) and type(m).forward is base.forward
            and not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
            and not parametrize.is_parametrized(m))


#: A loss this many times above its starting value counts as diverged.
DIVERGENCE_FACTOR = 100.0

#: Steps at the start of the first epoch that pay for warm-up (allocator, kernels, caches)
#: and carry the probes (FLOPs, live memory); they are left out of the throughput.
WARMUP_STEPS = 2

Progress = Callable[[int, int, float], None]  # (epoch, epochs, train loss so far)
StopRule = Callable[[Mapping[str, Any]], bool]  # curves so far -> may this seed stop?


def sync(device: str) -> None:
    """Wait for the device's queued work, so that a host clock read after it times the work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device.startswith("mps"):
        torch.mps.synchronize()


def default_loss(task: str) -> Callable[[Any, Any], Any]:
    return torch.nn.CrossEntropyLoss() if task == CLASSIFICATION else torch.nn.MSELoss()


class NoGradPath(Exception):
    """The loss of a training step does not depend on anything that requires grad."""


def train_step(model: Any, opt: Any, loss_fn: Any, xb: Any, yb: Any) -> torch.Tensor:
    """One optimizer step on a batch, as a hand-written loop does it; the loss, on the device."""
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(xb), yb)
    if not loss.requires_grad:  # a flag read, no device sync
        raise NoGradPath()
    loss.backward()
    optimizer_step(opt)  # opt.step(), without importing torch's compiler (engine.compiler)
    return loss.detach()


def probe_memory(model: Any, opt: Any, data: Data) -> LiveMemory:
    """A live-memory (and FLOP) probe for the next step, counting what is already held: the
    model, its optimizer state and gradients, and the data."""
    memory = LiveMemory(count_flops=True)
    memory.add([*model.parameters(), *model.buffers(), *optimizer_tensors(opt),
                *(p.grad for p in model.parameters() if p.grad is not None),
                data.x_train, data.y_train, data.x_val, data.y_val])
    return memory


def divergence_limit(start_loss: float, factor: float = DIVERGENCE_FACTOR) -> float:
    """The step loss above which a run counts as diverged."""
    return factor * max(abs(start_loss), 1e-8)


def divergence(steps: torch.Tensor, limit: float, start_loss: float, epoch: int,
               factor: float = DIVERGENCE_FACTOR) -> Divergence | None:
    """The first step of an epoch (``steps``: its per-step losses, on the host) whose loss is
    not finite or above ``limit``, as a :class:`Divergence`; None when there is none."""
    bad = (~torch.isfinite(steps)) | (steps > limit)
    if not bool(bad.any()):
        return None
    step_no = int(bad.nonzero()[0, 0]) + 1
    value = float(steps[step_no - 1])
    reason = (f"loss {value:g} is not finite" if not math.isfinite(value) else
              f"loss {value:.4g} > {factor:g}x its start {start_loss:.4g}")
    return Divergence(epoch, step_no, reason)


class TimedSteps:
    """Training time summed over the steps after warm-up, epoch by epoch, and the throughput
    it gives (the same bookkeeping for both engines)."""

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.seconds = 0.0
        self.steps = 0
        self.samples = 0.0

    def add(self, seconds: float, first: int, sizes: torch.Tensor) -> None:
        """An epoch's ``seconds`` over its steps ``first`` and on (``sizes``: every step's
        batch size, on the host)."""
        if first < len(sizes):
            self.seconds += seconds
            self.steps += len(sizes) - first
            self.samples += float(sizes[first:].sum())

    def measurements(self) -> dict[str, float]:
        """Throughput over the timed steps; an epoch's time from it."""
        if self.seconds <= 0 or self.steps <= 0:
            return {}
        out = {"time_per_epoch": self.seconds / self.steps * self.steps_per_epoch,
               "steps_per_s": self.steps / self.seconds}
        if self.samples > 0:
            out["samples_per_s"] = self.samples / self.seconds
        return out
