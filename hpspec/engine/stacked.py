"""Training many compatible cells at once, as one stacked model.

A grid of small models is launch- and sync-bound: one cell at a time leaves most of a GPU (and
much of a CPU) idle. Cells whose recipes share an architecture, a batch size and an optimizer
class, and differ only in optimizer hyperparameters (lr, momentum, weight decay, betas...),
initial weights or seed, are trained together: parameters stacked on a leading dimension K,
forward with batched matrix products, the sum of the per-cell mean losses back-propagated (each
cell's gradient is its own loss's), and an update written out for stacked tensors in which
every cell keeps its own hyperparameters. Each cell keeps its own data order (its seed's
permutations) and its own initial weights (built by the user's function under its seed), so a
stacked cell's curve equals its sequential run within float tolerance (tests check it).

What stacks: ``nn.Sequential`` of ``nn.Linear`` and element-wise activations (what
``hp.models.mlp`` builds, and what most grids of small models are) with torch's own forwards
(no overriding subclass, hook, parametrization or frozen parameter), the default loss or
``CrossEntropyLoss`` / ``MSELoss`` with mean reduction (members of different hidden widths
zero-padded into one stack where that pays, :func:`width_buckets`), and ``SGD``
(momentum, dampening, nesterov, weight decay), ``Adam`` and ``AdamW`` with one parameter
group and no scheduler. A recipe with hooks into its training (optimizer step hooks, a
replaced ``opt.step``, gradient hooks on parameters, module forward/backward hooks:
:func:`hooks`) trains sequentially too, where they run.
Anything else trains sequentially; :func:`plan` says why.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import attrs
import torch
from torch import nn

from hpspec.datasets import CLASSIFICATION, Data
from hpspec.engine.common import (
    ELEMENTWISE,
    WARMUP_STEPS,
    StopRule,
    TimedSteps,
    default_loss,
    divergence,
    probe_memory,
    sync,
    train_step,
)
from hpspec.engine.common import plain as _plain
from hpspec.engine.probes import (
    device_peak_flops,
    model_size,
    probe_key,
    recall_probe,
    remember_probe,
)
from hpspec.results import Divergence, SeedResult

__all__ = ["Member", "hooks", "plan", "split", "chunk_size", "train_group", "width_buckets",
           "ELEMENTWISE"]

@attrs.define
class Member:
    """One (cell, seed) of a group: its recipe, built under its seed."""

    cell_id: str
    seed: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Any
    #: this member's own epoch count (0: the group's); members of one group may differ in it
    epochs: int = 0
    #: set when the recipe changes with the total epoch count (then only equal counts share)
    epoch_bound: bool = False
    scheduler: bool = False
    #: torch's CPU generator state right after the recipe was built (dropout masks start here)
    rng_state: Any = None


_F = TypeVar("_F", bound=Callable[..., Any])


def _no_grad(fn: _F) -> _F:
    """``fn`` run with autograd off, as ``@torch.no_grad()`` does, without its context
    object each call (a step calls two or three such functions: a few microseconds each, a
    measurable share of a small stack's step)."""
    set_grad = torch._C._set_grad_enabled

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        before = torch.is_grad_enabled()
        set_grad(False)
        try:
            return fn(*args, **kwargs)
        finally:
            set_grad(before)

    return cast(_F, inner)


def _layers(model: nn.Module) -> list[nn.Module] | None:
    """The model's layers in order, if it is a plain Sequential of plain Linear layers and
    element-wise activations (the only models the stacked engine computes as torch would)."""
    if not _plain(model, nn.Sequential):
        return None
    out: list[nn.Module] = []
    for m in model:
        if isinstance(m, nn.Sequential):
            inner = _layers(m)
            if inner is None:
                return None
            out += inner
        elif _plain(m, nn.Linear):
            out.append(m)
        elif any(_plain(m, kind) for kind in ELEMENTWISE) and not list(m.parameters()):
            out.append(m)
        elif _plain(m, nn.Dropout) and m.p == 0:
            continue
        else:
            return None
    return out


_SGD_KEYS = {"lr", "momentum", "dampening", "weight_decay", "nesterov"}
_ADAM_KEYS = {"lr", "betas", "eps", "weight_decay"}


def _optimizer_kind(opt: torch.optim.Optimizer, model: nn.Module) -> str | None:
    if len(opt.param_groups) != 1:
        return None
    group = opt.param_groups[0]
    if [id(p) for p in group["params"]] != [id(p) for p in model.parameters()]:
        return None
    if any(isinstance(group.get(k), torch.Tensor) for k in ("lr", "momentum", "weight_decay")):
        return None
    if type(opt) is torch.optim.SGD:
        if group.get("maximize") or group.get("differentiable"):
            return None
        return "sgd"
    if type(opt) in (torch.optim.Adam, torch.optim.AdamW):
        if (group.get("amsgrad") or group.get("maximize") or group.get("capturable")
                or group.get("differentiable") or isinstance(group.get("betas", (0,))[0],
                                                              torch.Tensor)):
            return None
        kind = "adamw" if type(opt) is torch.optim.AdamW else "adam"
        # torch >= 2.x: Adam(decoupled_weight_decay=True) is AdamW
        if group.get("decoupled_weight_decay"):
            kind = "adamw"
        return kind
    return None


def _loss_kind(loss: Any, task: str) -> str | None:
    if loss is None:
        return "ce" if task == CLASSIFICATION else "mse"
    if type(loss) is nn.CrossEntropyLoss:
        if (loss.reduction == "mean" and loss.weight is None and loss.label_smoothing == 0
                and loss.ignore_index == -100):
            return "ce"
        return None
    if type(loss) is nn.MSELoss and loss.reduction == "mean":
        return "mse"
    return None


def hooks(model: nn.Module, opt: torch.optim.Optimizer, loss: Any = None) -> str | None:
    """Why user code hooked into the training would be skipped by a stacked run (which
    computes forward, backward, the loss and the update itself), or None when there is none:
    step hooks on the optimizer (its own or torch's global ones), a ``step`` replaced on the
    instance (an LR scheduler's own wrapper aside), gradient hooks on a parameter, forward or
    backward hooks on a module of the model or of the loss (their own or torch's global
    ones)."""
    from torch.nn.modules import module as nn_module

    from hpspec.engine.compiler import replaced_step, step_hooks

    if step_hooks(opt):
        return "its optimizer has step hooks"
    if replaced_step(opt):
        return "its optimizer's step is replaced on the instance (opt.step = ...)"
    if any(p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None)
           for p in model.parameters()):
        return "its parameters have gradient hooks"
    globals_ = ("_global_forward_hooks", "_global_forward_pre_hooks",
                "_global_backward_hooks", "_global_backward_pre_hooks")
    if any(getattr(nn_module, name, None) for name in globals_):
        return "torch has global module forward/backward hooks"
    for name, mod in model.named_modules():
        if (mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks
                or getattr(mod, "_backward_pre_hooks", None)):
            return f"its model has forward/backward hooks (on {name or 'the model'})"
    if isinstance(loss, nn.Module) and any(
            mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks
            or getattr(mod, "_backward_pre_hooks", None) for mod in loss.modules()):
        return "its loss has forward/backward hooks"
    return None


def signature(m: Member, task: str, has_scheduler: bool) -> tuple[Any, ...] | str:
    """What must be equal for members to stack, or the reason this member cannot.

    The first element names the engine: ``"mlp"`` (hand-written, :class:`_Stacked`) or
    ``"func"`` (``torch.func.vmap`` over the user's module, :mod:`hpspec.engine.vmapped`).
    Activations are not part of an MLP's signature: members with different element-wise
    activations share the matrix products and each applies its own to its slice."""
    if has_scheduler or m.scheduler:
        return "a learning-rate scheduler is not stacked"
    hooked = hooks(m.model, m.optimizer, m.loss)
    if hooked is not None:
        return hooked
    if not all(p.requires_grad for p in m.model.parameters()):
        return "a parameter is frozen (requires_grad=False)"
    layers = _layers(m.model)
    if layers is None or any(b is not None for b in m.model.buffers()):
        from hpspec.engine.vmapped import func_signature  # (vmapped imports nothing of ours)

        engine: tuple[Any, ...] | str = func_signature(m.model)
        if isinstance(engine, str):
            return engine
    elif not any(isinstance(layer, nn.Linear) for layer in layers):
        return "the model has no Linear layer"
    else:
        # Hidden widths are not part of it: members of different widths share a stack,
        # zero-padded to the widest (see _Stacked); the data's width and the output's are.
        linear = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear)]
        engine = ("mlp",) + tuple(
            ("linear", layer.in_features if i == linear[0] else None,
             layer.out_features if i == linear[-1] else None, layer.bias is not None,
             layer.weight.dtype)
            if isinstance(layer, nn.Linear) else ("act",)
            for i, layer in enumerate(layers)
        )
    kind = _optimizer_kind(m.optimizer, m.model)
    if kind is None:
        return (f"the optimizer ({type(m.optimizer).__name__}) is not a plain SGD, Adam or "
                "AdamW over model.parameters()")
    loss = _loss_kind(m.loss, task)
    if loss is None:
        return "the loss is not the default, CrossEntropyLoss or MSELoss with mean reduction"
    # a recipe that changes with the total epoch count shares a run only with equal counts
    return (engine, kind, loss, m.epochs if m.epoch_bound else None)


def _activations(m: Member) -> tuple[str, ...]:
    """A member's activations, in order (members are ordered by them within a group, so that
    equal activations form contiguous slices of the stack)."""
    return tuple(repr(layer) for layer in _layers(m.model) or ()
                 if not isinstance(layer, nn.Linear))


#: Padding members of different widths into one stack costs the padded units' arithmetic and
#: saves a group's per-step overhead (kernel launches, Python). A width joins a padded group
#: while the padding adds at most this share of the members' own work, or at most
#: :data:`PAD_SLACK` floating-point operations a step, whichever is more. Measured on a
#: 2-core CPU (``benchmarks/stack_layouts.py``): widths {32, 64, 128, 256} x 8 members,
#: batch 64, one epoch took 975 ms padded into one group and 501 ms as four groups, so a
#: CPU, compute-bound at these sizes, pads only where it is nearly free.
PAD_WASTE = 0.25
PAD_SLACK = {"cpu": 1e6, "mps": 1e9, "cuda": 1e10}


def _shapes(m: Member) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(p.shape) for p in m.model.parameters())


def width_buckets(group: Sequence[int], members: Sequence[Member], batch_size: int,
                  device: str) -> list[list[int]]:
    """``group`` (members of one MLP signature, any widths) as padded stacks that pay: from
    the narrowest up, a member joins the current stack while the padded work per step stays
    within :data:`PAD_WASTE` / :data:`PAD_SLACK` of the members' own (6 x weights x batch).

    Linear in the group's size: members of one shape (the common case: a grid over lr,
    seeds, activations) are one stack without a look at padding, and a growing stack keeps
    its padded shapes as it goes rather than padding its members again for each newcomer."""
    shapes = {i: _shapes(members[i]) for i in group}
    if len(set(shapes.values())) <= 1:
        return [list(group)] if group else []
    size = {i: sum(math.prod(s) for s in shape) for i, shape in shapes.items()}
    slack = PAD_SLACK.get(device.split(":")[0], PAD_SLACK["cpu"])
    out: list[list[int]] = []
    widest: list[tuple[int, ...]] = []  # the current stack's padded shapes
    own = 0  # the current stack's members' own weights
    for i in sorted(group, key=lambda j: size[j]):
        if out:
            grown = [tuple(map(max, a, b)) for a, b in zip(widest, shapes[i], strict=True)]
            padded = (len(out[-1]) + 1) * sum(math.prod(s) for s in grown)
            work, padded_work = 6.0 * batch_size * (own + size[i]), 6.0 * batch_size * padded
            if padded_work - work <= max(PAD_WASTE * work, slack):
                out[-1].append(i)
                widest, own = grown, own + size[i]
                continue
        out.append([i])
        widest, own = list(shapes[i]), size[i]
    return out


def plan(members: Sequence[Member], task: str, has_scheduler: bool,
         batch_size: int | None = None, device: str | None = None) -> tuple[
        list[list[int]], dict[int, str]]:
    """Groups of member indices that share a stacked model and, for the rest, why not.

    With ``batch_size`` and ``device``, MLP members of different widths are padded into one
    group only where that pays (:func:`width_buckets`); without, every width pads together.
    A group may hold one member: the stacked engine (hand-written gradients, no
    ``nn.Module`` or ``torch.optim`` overhead per step) trains a lone cell faster too."""
    groups: dict[Any, list[int]] = {}
    why: dict[int, str] = {}
    for i, m in enumerate(members):
        sig = signature(m, task, has_scheduler)
        if isinstance(sig, str):
            why[i] = sig
        else:
            groups.setdefault(sig, []).append(i)
    out: list[list[int]] = []
    for sig, g in groups.items():
        parts = ([g] if batch_size is None or device is None or sig[0][0] != "mlp"
                 else width_buckets(g, members, batch_size, device))
        out += [sorted(part, key=lambda i: _activations(members[i])) for part in parts]
    return out, why


#: Share of the device's free memory one stacked group may plan to use.
MEMORY_SHARE = 0.5


def _free_memory(device: str) -> float | None:
    """Free bytes on the device (CUDA: the driver's count; CPU: available RAM on Linux)."""
    try:
        if device.startswith("cuda"):
            return float(torch.cuda.mem_get_info(torch.device(device))[0])
        if device == "cpu":
            import os

            return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        pass
    return None


def member_bytes(m: Member, batch_size: int, rows: int) -> float:
    """What one member adds to a stacked group, roughly: its weights four times (weights,
    gradients and up to two optimizer states), its activations for a training batch three
    times (forward, backward, scratch) and for an evaluation block of ``rows``."""
    params = list(m.model.parameters())
    size = params[0].element_size() if params else 4
    weights = sum(p.numel() for p in params)
    widths = sum(layer.out_features for layer in _layers(m.model) or ()
                 if isinstance(layer, nn.Linear))
    return size * (4.0 * weights + widths * (3.0 * batch_size + rows))


def split(group: Sequence[int], members: Sequence[Member], batch_size: int, rows: int,
          device: str) -> list[list[int]]:
    """``group`` in chunks that fit :data:`MEMORY_SHARE` of the device's free memory (one
    chunk when it fits, or when the free memory is unknown)."""
    free = _free_memory(device)
    if free is None or not group:
        return [list(group)]
    # padded to the widest member: each costs what the widest costs
    widest = max(member_bytes(members[i], batch_size, rows) for i in group)
    most = max(1, int(MEMORY_SHARE * free // widest))
    return [list(group[i : i + most]) for i in range(0, len(group), most)]


#: Most members one stacked chunk trains at once, whatever the memory: beyond a few hundred a
#: step is already compute-bound, and a bigger chunk only delays results and progress.
MAX_MEMBERS = 512
#: Floating-point work one stacked step may do (forward and backward of a training batch for
#: every member, about 6 x weights x batch): bounds a step's time on each kind of device.
STEP_FLOPS = {"cpu": 2e9, "mps": 5e10, "cuda": 5e11}


def chunk_size(members: Member | Sequence[Member], batch_size: int, rows: int,
               device: str) -> int:
    """How many members like the widest of ``members`` one stacked chunk holds: bounded by
    :data:`MAX_MEMBERS`, by the work of one step (:data:`STEP_FLOPS`) and by
    :data:`MEMORY_SHARE` of free memory. The widest, because a padded stack costs every
    member what its widest costs, and a chunk sized from a narrow member would overrun both
    bounds once wider ones join it."""
    ms = [members] if isinstance(members, Member) else list(members)
    if not ms:
        return MAX_MEMBERS
    weights = max(sum(p.numel() for p in m.model.parameters()) for m in ms)
    budget = STEP_FLOPS.get(device.split(":")[0], STEP_FLOPS["cpu"])
    by_time = int(budget // max(6.0 * weights * batch_size, 1.0))
    free = _free_memory(device)
    by_memory = (int(MEMORY_SHARE * free // max(member_bytes(m, batch_size, rows) for m in ms))
                 if free is not None else MAX_MEMBERS)
    return max(1, min(MAX_MEMBERS, by_time, by_memory))


# ------------------------------------------------------------------------------ the model


_INPLACE: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_,
}


def _leaky_backward(layer: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    assert isinstance(layer, nn.LeakyReLU)  # _BACKWARD maps nn.LeakyReLU here
    slope = float(layer.negative_slope)
    return lambda g, out: torch.ops.aten.leaky_relu_backward.grad_input(
        g, out, slope, True, grad_input=g)


#: Activations whose gradient hpspec writes from their output (so the forward may overwrite
#: their input): with every activation of a model in here, a stacked step needs no autograd.
#: Each writes the gradient over ``g`` (a fresh tensor of the step; a slice of it for one run
#: of members), which saves the step an allocation, and a join, per activation.
_BACKWARD: dict[type, Callable[[nn.Module], Callable[[torch.Tensor, torch.Tensor],
                                                      torch.Tensor]]] = {
    nn.ReLU: lambda _: lambda g, out: torch.ops.aten.threshold_backward.grad_input(
        g, out, 0, grad_input=g),
    nn.Tanh: lambda _: lambda g, out: torch.ops.aten.tanh_backward.grad_input(
        g, out, grad_input=g),
    nn.Sigmoid: lambda _: lambda g, out: torch.ops.aten.sigmoid_backward.grad_input(
        g, out, grad_input=g),
    nn.Identity: lambda _: lambda g, out: g,
    nn.LeakyReLU: _leaky_backward,  # only with a positive slope: the output keeps the sign
}


def _manual_backward(layer: nn.Module) -> Callable[[torch.Tensor, torch.Tensor],
                                                   torch.Tensor] | None:
    make = _BACKWARD.get(type(layer))
    if make is None or (isinstance(layer, nn.LeakyReLU) and not layer.negative_slope > 0):
        return None
    return make(layer)


def _runs(acts: Sequence[nn.Module]) -> list[tuple[int, int, nn.Module]]:
    """The members' activations at one position as runs ``(start, end, module)`` of equal
    ones (members are ordered by activation, so a group has one run per distinct kind)."""
    out: list[tuple[int, int, nn.Module]] = []
    for k, layer in enumerate(acts):
        if out and repr(out[-1][2]) == repr(layer) and type(out[-1][2]) is type(layer):
            out[-1] = (out[-1][0], k + 1, out[-1][2])
            continue
        act = copy.deepcopy(layer)
        if getattr(act, "inplace", False):
            # in place only where _activate says it is safe (ignore: torch types every
            # Module attribute as Tensor | Module; only some activations have this flag)
            act.inplace = False  # type: ignore[assignment]
        out.append((k, k + 1, act))
    return out


def _in_place(act: nn.Module) -> Callable[[torch.Tensor], Any]:
    """``act`` applied in place (on a linear layer's output, which no backward reads)."""
    inplace = _INPLACE.get(type(act))
    if inplace is not None:
        return inplace
    if isinstance(act, nn.Identity):
        return lambda x: x
    return lambda x: x.copy_(act(x))


def _activate(runs: list[tuple[int, int, nn.Module]], x: torch.Tensor,
              after_linear: bool) -> torch.Tensor:
    """Each run of members' activation on its slice of ``x`` [K, B, H]. In place only on a
    linear layer's output, which no backward reads (ReLU, tanh and sigmoid backpropagate from
    their output); never on the data themselves."""
    if len(runs) == 1:
        act = runs[0][2]
        inplace = _INPLACE.get(type(act)) if after_linear else None
        return inplace(x) if inplace is not None else act(x)
    if torch.is_grad_enabled() and x.requires_grad:
        # autograd path: out of place, one slice per activation, joined
        return torch.cat([act(x[a:b]) for a, b, act in runs])
    if not after_linear:
        x = x.clone()
    for a, b, act in runs:
        inplace = _INPLACE.get(type(act))
        if inplace is not None:
            inplace(x[a:b])
        else:
            x[a:b] = act(x[a:b])
    return x


class _Stacked:
    """K copies of an MLP as stacked leaf tensors: weights [K, in, out], biases [K, 1, out].

    :meth:`loss_and_grads` is one training step's forward and backward. When every activation
    has a hand-written gradient (:data:`_BACKWARD`) and the loss is cross-entropy or MSE, it
    runs without autograd: the graph bookkeeping of a small model costs about as much as its
    arithmetic on a CPU, and a momentum buffer can take the weight gradient straight from the
    matrix product (``baddbmm_`` with ``beta=momentum``) instead of a separate pass.
    """

    def __init__(self, models: Sequence[nn.Module], device: str) -> None:
        self.layers: list[tuple[str, Any]] = []
        self.params: list[torch.Tensor] = []
        self._constants: dict[tuple[Any, ...], torch.Tensor] = {}
        #: per parameter, 1 where a member has a weight and 0 where it is padding (members of
        #: different hidden widths); None when no member is padded
        self.masks: list[torch.Tensor] | None = None
        # every member passed the stackability check, so each is a plain list of layers
        per_model = [layers for m in models if (layers := _layers(m)) is not None]
        assert len(per_model) == len(models)
        first = per_model[0]
        backward: list[list[tuple[int, int, Any]]] = []
        masks: list[torch.Tensor] = []
        for j, layer in enumerate(first):
            if isinstance(layer, nn.Linear):
                # stored as [K, in, out] (each weight transposed once, here), so the forward
                # is bmm(x, w) on contiguous operands; a narrower member's weights sit in the
                # top-left corner and the rest is zero
                # members of one group share the structure: layer j is a Linear in each
                linears = [cast(nn.Linear, pm[j]) for pm in per_model]
                ws = [lin.weight.detach().t() for lin in linears]
                rows = max(t.shape[0] for t in ws)
                cols = max(t.shape[1] for t in ws)
                w = torch.zeros(len(ws), rows, cols, dtype=ws[0].dtype)
                wm = torch.zeros(len(ws), rows, cols, dtype=ws[0].dtype)
                for k, t in enumerate(ws):
                    w[k, : t.shape[0], : t.shape[1]] = t
                    wm[k, : t.shape[0], : t.shape[1]] = 1
                w = w.to(device).requires_grad_(True)
                masks.append(wm.to(device))
                b = None
                if layer.bias is not None:
                    bs = [lin.bias.detach() for lin in linears]
                    b = torch.zeros(len(bs), 1, cols, dtype=bs[0].dtype)
                    bm = torch.zeros(len(bs), 1, cols, dtype=bs[0].dtype)
                    for k, t in enumerate(bs):
                        b[k, 0, : t.shape[0]] = t
                        bm[k, 0, : t.shape[0]] = 1
                    b = b.to(device).requires_grad_(True)
                    masks.append(bm.to(device))
                self.layers.append(("linear", (w, b)))
                self.params += [w] if b is None else [w, b]
            else:
                runs = _runs([pm[j] for pm in per_model])
                self.layers.append(("act", runs))
                backward.append([(a, b, _manual_backward(act)) for a, b, act in runs])
        if any(not bool(m.all()) for m in masks):
            # A padded hidden unit's input weights and bias are zero, so its pre-activation
            # is 0, but its activation need not be (sigmoid(0) = 0.5, softplus(0) = log 2):
            # the next layer's weights from it are zero, and stay zero because their
            # gradients are masked. With a zero gradient and a zero weight, weight decay,
            # momentum and Adam's moments stay zero too, so the update of a padded entry is
            # exactly 0 and each member trains as its own narrower model.
            self.masks = masks
        self.width = max(p.shape[-1] for p in self.params)
        self.first_linear = next(i for i, (kind, _) in enumerate(self.layers) if kind == "linear")
        #: the activations' gradients, when all of them are hand-written (else autograd)
        self.backward = (backward if all(f is not None for runs in backward for _, _, f in runs)
                         else None)
        #: every activation follows a linear layer (and the model starts with one): the
        #: hand-written step can run in kept buffers (:meth:`_buffered_step`)
        self.chained = self.backward is not None and self.first_linear == 0 and all(
            kind == "linear" or self.layers[i - 1][0] == "linear"
            for i, (kind, _) in enumerate(self.layers))
        self._spaces: dict[int, dict[str, Any]] = {}

    def keep(self, idx: Sequence[int]) -> None:
        """Only the members at positions ``idx`` train on (the others stopped): their rows of
        every stacked tensor, the rest dropped. Each kept member's arithmetic is unchanged
        (every member's slice is computed on its own), only the stack is smaller."""
        at = torch.tensor(list(idx), device=self.params[0].device)
        new = {id(p): p.detach().index_select(0, at).requires_grad_(True) for p in self.params}
        self.params = [new[id(p)] for p in self.params]
        if self.masks is not None:
            self.masks = [m.index_select(0, at) for m in self.masks]
        layers: list[tuple[str, Any]] = []
        backward: list[list[tuple[int, int, Any]]] = []
        for kind, obj in self.layers:
            if kind == "linear":
                w, b = obj
                layers.append((kind, (new[id(w)], None if b is None else new[id(b)])))
                continue
            each = [act for a, b_, act in obj for _ in range(b_ - a)]
            runs = _runs([each[i] for i in idx])
            layers.append((kind, runs))
            backward.append([(a, b_, _manual_backward(act)) for a, b_, act in runs])
        self.layers = layers
        if self.backward is not None:
            self.backward = backward
        self._spaces.clear()

    def _ones(self, k: int, rows: int, like: torch.Tensor, value: float = 1.0,
              dim: int = 1) -> torch.Tensor:
        """A constant [K, 1, rows] (``dim`` 1) or [K, rows, 1] (``dim`` 2) tensor, made once
        per shape and kept."""
        key = (k, rows, value, dim, like.dtype, like.device)
        found = self._constants.get(key)
        if found is None:
            shape = (k, 1, rows) if dim == 1 else (k, rows, 1)
            found = self._constants[key] = torch.full(shape, value, dtype=like.dtype,
                                                      device=like.device)
        return found

    def _zero(self, like: torch.Tensor) -> torch.Tensor:
        """A kept 0-dim zero: the ignored input (``beta=0``) of a ``baddbmm`` that scales its
        product (``alpha``) in the same kernel."""
        key = ("zero", like.dtype, like.device)
        found = self._constants.get(key)
        if found is None:
            found = self._constants[key] = torch.zeros((), dtype=like.dtype, device=like.device)
        return found

    def _forward(self, x: torch.Tensor, keep: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``x`` is [K, B, F]. ``keep`` collects what the backward needs: each linear layer's
        input and each activation's output."""
        after_linear = False
        for kind, obj in self.layers:
            if kind == "linear":
                if keep is not None:
                    keep.append(x)
                w, b = obj
                x = torch.bmm(x, w)
                if b is not None:
                    x = x.add_(b)  # a few % faster than baddbmm's copy of the broadcast bias
                after_linear = True
            else:
                x = _activate(obj, x, after_linear)
                if keep is not None:
                    keep.append(x)
                after_linear = False
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` is [K, B, F] (each cell its own batch) or [N, F] (one input for every cell)."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(len(self.params[0]), *x.shape)
        return self._forward(x)

    def loss_and_grads(self, x: torch.Tensor, y: torch.Tensor, loss_kind: str,
                       into: list[torch.Tensor] | None = None, beta: float = 0.0) -> tuple[
            torch.Tensor, list[torch.Tensor]]:
        """Per-cell losses [K] of a batch and the gradients of their sum (cell k's parameters
        get cell k's own gradient), in :attr:`params` order. With ``into``, each gradient is
        added to ``beta`` times that buffer, in place, and the buffers are returned."""
        out_shape = (*x.shape[:2], self.params[-1].shape[-1])
        if self.backward is None or (loss_kind == "mse" and tuple(y.shape) != out_shape):
            # (an MSE target that broadcasts against the output: autograd keeps torch's meaning)
            losses = _per_cell_loss(self._forward(x), y, loss_kind)
            grads = list(torch.autograd.grad(losses.sum(), self.params))
            if self.masks is not None:
                torch._foreach_mul_(grads, self.masks)
            if into is None:
                return losses.detach(), grads
            torch._foreach_mul_(into, beta)
            torch._foreach_add_(into, grads)
            return losses.detach(), into
        return self._hand_step(x, y, loss_kind, into, beta)

    @_no_grad
    def _hand_step(self, x: torch.Tensor, y: torch.Tensor, loss_kind: str,
                   into: list[torch.Tensor] | None, beta: float) -> tuple[
            torch.Tensor, list[torch.Tensor]]:
        if self.chained:
            return self._buffered_step(x, y, loss_kind, into, beta)
        return self._manual_step(x, y, loss_kind, into, beta)

    def _loss_grad(self, out: torch.Tensor, y: torch.Tensor, loss_kind: str) -> tuple[
            torch.Tensor, torch.Tensor, float]:
        """Per-cell losses [K], the gradient of their sum with respect to ``out`` divided by
        a scale, and that scale: the parameters' gradients are the products with ``g`` times
        the scale (:meth:`_linear_grads` folds it into their matrix products, which saves the
        step a pass over ``g``). ``out`` is overwritten where the model ends with a linear
        layer (no backward reads that layer's output; an activation's backward reads its own).

        A few small kernels: on a small stack each costs more than its arithmetic."""
        k, rows = out.shape[0], out.shape[1]
        mine = self.layers[-1][0] == "linear"
        if loss_kind == "ce":
            # (by hand: torch.log_softmax over 10 classes is several times slower on a CPU)
            top = out.amax(dim=2, keepdim=True)
            shifted = out.sub_(top) if mine else out - top
            exp = shifted.exp()
            total = exp.sum(dim=2, keepdim=True)
            target = y.unsqueeze(2)
            # each row's -log p(target); the mean over the batch as a product with a row of
            # 1 / rows (one kernel, not a squeeze, a mean's sum and its division)
            nll = total.log().sub_(shifted.gather(2, target))
            losses = torch.bmm(self._ones(k, rows, nll, 1.0 / rows), nll).view(k)
            g = exp.div_(total)  # softmax - one-hot: rows x d(mean CE)/d(logits)
            g.scatter_add_(2, target, self._ones(k, rows, g, -1.0, 2))
            return losses, g, 1.0 / rows
        diff = out.sub_(y) if mine and y.dtype == out.dtype else out - y
        per = diff[0].numel()
        flat = diff.view(k, 1, per)
        # each cell's mean square as one product (its sum of squares, times 1 / numel)
        losses = torch.baddbmm(self._zero(diff), flat, flat.transpose(1, 2), beta=0,
                               alpha=1.0 / per).view(k)
        return losses, diff, 2.0 / per

    def _space(self, rows: int) -> dict[str, Any]:
        """The buffers of :meth:`_buffered_step` for batches of ``rows``, made once per batch
        size (and group) and kept: each linear layer's output, with its activation applied
        in place, and its input's gradient, with the members' slices of both for the
        activations, and their transposes."""
        found = self._spaces.get(rows)
        if found is not None:
            return found
        p0 = self.params[0]
        k = p0.shape[0]
        outs: dict[int, torch.Tensor] = {}
        grad_in: dict[int, torch.Tensor] = {}
        source: dict[int, int | None] = {}  # linear layer -> the layer whose buffer feeds it
        current: int | None = None
        for i, (kind, obj) in enumerate(self.layers):
            if kind == "linear":
                w = obj[0]
                outs[i] = torch.empty(k, rows, w.shape[2], dtype=p0.dtype, device=p0.device)
                if i > self.first_linear:
                    grad_in[i] = torch.empty(k, rows, w.shape[1], dtype=p0.dtype,
                                             device=p0.device)
                source[i], current = current, i
        forward: dict[int, list[tuple[Any, torch.Tensor]]] = {}
        backward: dict[int, list[tuple[Any, int, int, torch.Tensor | None, torch.Tensor]]] = {}
        acts = iter(self.backward or ())
        for i, (kind, obj) in enumerate(self.layers):
            if kind != "act":
                continue
            out, g = outs[i - 1], grad_in.get(i + 1)
            forward[i] = [(_in_place(act), out[a:b]) for a, b, act in obj]
            backward[i] = [(f, a, b, None if g is None else g[a:b], out[a:b])
                           for a, b, f in next(acts)]
        found = dict(outs=outs, grad_in=grad_in, source=source, forward=forward,
                     backward=backward, t={i: o.transpose(1, 2) for i, o in outs.items()},
                     wt={i: obj[0].transpose(1, 2) for i, (kind, obj) in enumerate(self.layers)
                         if kind == "linear"})
        # The step as flat lists, read in order (no per-step lookups by layer): forward, per
        # linear layer, its weight, bias, output buffer and the activation after it; backward,
        # from the last linear layer down, the activation after it, its input's transpose
        # (None: the batch's), its weight's and bias's slots, its weight's transpose and its
        # input's gradient buffer (None for the first layer).
        slots: dict[int, tuple[int, int | None]] = {}
        at = 0
        for i, (kind, obj) in enumerate(self.layers):
            if kind == "linear":
                slots[i] = (at, None if obj[1] is None else at + 1)
                at += 1 if obj[1] is None else 2
        after = {i: i + 1 for i in outs if i + 1 in forward}
        found["fwd_plan"] = [(obj[0], obj[1], outs[i], forward.get(after.get(i, -1), []))
                             for i, (kind, obj) in enumerate(self.layers) if kind == "linear"]
        found["bwd_plan"] = [
            (backward.get(after.get(i, -1), []),
             None if source[i] is None else found["t"][source[i]], *slots[i],
             found["wt"][i], grad_in.get(i))
            for i in sorted(outs, reverse=True)]
        self._spaces[rows] = found
        return found

    def _linear_grads(self, grads: list[torch.Tensor], slot: int, bias: bool,
                      saved_t: torch.Tensor, g: torch.Tensor, into: list[torch.Tensor] | None,
                      beta: float, scale: float) -> int:
        """One linear layer's gradients into ``grads`` (or added to ``beta`` times the
        ``into`` buffers) from its output's gradient ``g`` [K, B, out] divided by ``scale``
        and its input's transpose ``saved_t`` [K, in, B]: the bias's at ``slot - 1`` (when
        ``bias``), then the weight's; returns the weight's slot."""
        k, rows = g.shape[0], g.shape[1]
        if bias:
            slot -= 1
            # the bias gradient (a sum over the batch) as a product with a row of ``scale``:
            # into the momentum buffer in one kernel instead of three
            ones = self._ones(k, rows, g, scale)
            grads[slot] = (torch.bmm(ones, g) if into is None else
                           into[slot].baddbmm_(ones, g, beta=beta))
        slot -= 1
        grads[slot] = (torch.baddbmm(self._zero(g), saved_t, g, beta=0, alpha=scale)
                       if into is None else
                       into[slot].baddbmm_(saved_t, g, beta=beta, alpha=scale))
        return slot

    def _buffered_step(self, x: torch.Tensor, y: torch.Tensor, loss_kind: str,
                       into: list[torch.Tensor] | None, beta: float) -> tuple[
            torch.Tensor, list[torch.Tensor]]:
        """:meth:`_manual_step` in kept buffers (:meth:`_space`), for models whose every
        activation follows a linear layer: the same arithmetic, without a step's
        allocations, slicing and transposes (a third of a small group's step on a CPU)."""
        space = self._space(x.shape[1])
        h = x
        for w, b, out, acts in space["fwd_plan"]:
            h = torch.bmm(h, w, out=out)
            if b is not None:
                h.add_(b)
            for f, view in acts:
                f(view)
        losses, g, scale = self._loss_grad(h, y, loss_kind)
        ones = self._ones(g.shape[0], g.shape[1], g, scale)  # the bias gradients' row
        zero = self._zero(g)
        grads: list[torch.Tensor] = [None] * len(self.params)  # type: ignore[list-item]
        for acts, saved_t, w_slot, b_slot, wt, g_in in space["bwd_plan"]:
            for f, a, b_, g_view, saved in acts:
                f(g[a:b_] if g_view is None else g_view, saved)
            if saved_t is None:
                saved_t = x.transpose(1, 2)
            # (:meth:`_linear_grads`, inlined)
            if into is None:
                if b_slot is not None:
                    grads[b_slot] = torch.bmm(ones, g)
                grads[w_slot] = torch.baddbmm(zero, saved_t, g, beta=0, alpha=scale)
            else:
                if b_slot is not None:
                    grads[b_slot] = into[b_slot].baddbmm_(ones, g, beta=beta)
                grads[w_slot] = into[w_slot].baddbmm_(saved_t, g, beta=beta, alpha=scale)
            if g_in is not None:
                g = torch.bmm(g, wt, out=g_in)
        if self.masks is not None:
            torch._foreach_mul_(grads, self.masks)
        return losses, grads

    def _manual_step(self, x: torch.Tensor, y: torch.Tensor, loss_kind: str,
                     into: list[torch.Tensor] | None, beta: float) -> tuple[
            torch.Tensor, list[torch.Tensor]]:
        keep: list[torch.Tensor] = []
        out = self._forward(x, keep)
        losses, g, scale = self._loss_grad(out, y, loss_kind)
        grads: list[torch.Tensor] = [None] * len(self.params)  # type: ignore[list-item]
        slot = len(self.params)
        acts = iter(reversed(self.backward))  # type: ignore[arg-type]
        first_linear = self.first_linear
        for i in range(len(self.layers) - 1, first_linear - 1, -1):
            kind, obj = self.layers[i]
            saved = keep[i]
            if kind == "act":
                runs = next(acts)
                if len(runs) == 1:
                    runs[0][2](g, saved)
                else:
                    for a, b, f in runs:
                        f(g[a:b], saved[a:b])
                continue
            w, b = obj
            slot = self._linear_grads(grads, slot, b is not None, saved.transpose(1, 2), g,
                                      into, beta, scale)
            if i > first_linear:
                g = torch.bmm(g, w.transpose(1, 2))
        if self.masks is not None:
            # (with ``into``, the buffers were zero at padded entries, so masking the sum
            # masks this step's gradient)
            torch._foreach_mul_(grads, self.masks)
        return losses, grads


def _per_cell_loss(out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Each cell's mean loss [K] over its rows of ``out`` [K, B, C]."""
    if kind == "ce":
        # log-sum-exp minus the target's logit: cross-entropy, five times faster on a CPU than
        # F.cross_entropy over a flattened [K * B, C] when C is small (10 classes: 1.1 ms vs
        # 0.22 ms for K=64, B=256)
        picked = out.gather(2, y.unsqueeze(2)).squeeze(2)
        return (torch.logsumexp(out, dim=2) - picked).mean(dim=1)
    return ((out - y) ** 2).reshape(out.shape[0], -1).mean(dim=1)


# -------------------------------------------------------------------------- the optimizers


def _hp(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    shape = (len(values),) + (1,) * (like.dim() - 1)
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(shape)


class _StackedOptimizer:
    """A stacked optimizer's training step: forward, backward and update of all K cells."""

    def train_step(self, model: _Stacked, x: torch.Tensor, y: torch.Tensor,
                   loss_kind: str) -> torch.Tensor:
        losses, grads = model.loss_and_grads(x, y, loss_kind)
        self.step(grads)
        return losses

    def step(self, grads: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def keep(self, idx: Sequence[int], params: list[torch.Tensor]) -> None:
        """Only the members at positions ``idx`` train on; ``params`` are the model's new
        (smaller) stacked tensors. Every per-member tensor of the state keeps their rows."""
        raise NotImplementedError


def _rows(t: Any, at: torch.Tensor) -> Any:
    """``t``'s rows ``at`` on its leading (member) dimension, through lists and dicts."""
    if isinstance(t, torch.Tensor):
        return t.index_select(0, at)
    if isinstance(t, list):
        return [_rows(x, at) for x in t]
    if isinstance(t, dict):
        return {k: _rows(v, at) for k, v in t.items()}
    return t


class _StackedSGD(_StackedOptimizer):
    """torch.optim.SGD's update with per-cell lr, momentum, dampening, nesterov, weight decay."""

    def __init__(self, params: list[torch.Tensor], groups: Sequence[dict[str, Any]]) -> None:
        self.params = params
        self.h = []
        for p in params:
            mom = [float(g["momentum"]) for g in groups]
            damp = [float(g["dampening"]) if float(g["momentum"]) else 0.0 for g in groups]
            self.h.append(dict(
                neg_lr=_hp([-float(g["lr"]) for g in groups], p),
                wd=_hp([float(g["weight_decay"]) for g in groups], p),
                mom=_hp(mom, p),
                keep=_hp([1 - d for d in damp], p),
                nesterov=_hp([float(bool(g["nesterov"])) for g in groups], p),
            ))
        self.use_wd = any(float(g["weight_decay"]) for g in groups)
        self.use_mom = any(float(g["momentum"]) for g in groups)
        self.use_damp = any(float(g["dampening"]) and float(g["momentum"]) for g in groups)
        self.use_nesterov = any(bool(g["nesterov"]) for g in groups)
        # The common case: buf = momentum * buf + grad + wd * p; p -= lr * buf
        self.plain = self.use_mom and not (self.use_damp or self.use_nesterov)
        momenta = {float(g["momentum"]) for g in groups}
        #: one momentum for every cell: the buffers take the gradients straight from the model
        self.momentum = momenta.pop() if self.plain and len(momenta) == 1 else None
        self.bufs: list[torch.Tensor] | None = None
        self._lists()

    def _lists(self) -> None:
        """The per-cell hyperparameters as one list per kind, for the foreach updates (made
        once, not each step)."""
        self.neg_lr = [h["neg_lr"] for h in self.h]
        self.wd = [h["wd"] for h in self.h]
        self.mom = [h["mom"] for h in self.h]

    def train_step(self, model: _Stacked, x: torch.Tensor, y: torch.Tensor,
                   loss_kind: str) -> torch.Tensor:
        if self.momentum is None or self.bufs is None:
            return super().train_step(model, x, y, loss_kind)
        losses, _ = model.loss_and_grads(x, y, loss_kind, into=self.bufs, beta=self.momentum)
        self._finish_plain()
        return losses

    def keep(self, idx: Sequence[int], params: list[torch.Tensor]) -> None:
        at = torch.tensor(list(idx), device=params[0].device)
        self.params = params
        self.h = _rows(self.h, at)
        if self.bufs is not None:
            self.bufs = _rows(self.bufs, at)
        self._lists()

    @_no_grad
    def _finish_plain(self) -> None:
        assert self.bufs is not None
        if self.use_wd:
            torch._foreach_addcmul_(self.bufs, self.params, self.wd)
        torch._foreach_addcmul_(self.params, self.bufs, self.neg_lr)

    @_no_grad
    def step(self, grads: list[torch.Tensor]) -> None:
        """``grads`` are fresh tensors of this step; the first step's become the buffers."""
        if self.plain:
            if self.bufs is None:
                self.bufs = list(grads)  # torch: the first buffer is the (decayed) gradient
            else:
                torch._foreach_mul_(self.bufs, self.mom)
                torch._foreach_add_(self.bufs, grads)
            self._finish_plain()
            return
        if not self.use_mom:
            # plain SGD (a search's common case): p -= lr * (g + wd * p), a kernel or two for
            # every tensor at once (the gradients are this step's: scratch)
            if self.use_wd:
                torch._foreach_addcmul_(grads, self.params, self.wd)
            torch._foreach_addcmul_(self.params, grads, self.neg_lr)
            return
        # Fused forms (addcmul) keep the update at a few kernels per tensor for all K cells.
        bufs: list[torch.Tensor | None] = ([*self.bufs] if self.bufs is not None
                                           else [None] * len(self.params))
        for i, p in enumerate(self.params):
            g = grads[i]
            h = self.h[i]
            if self.use_wd:
                g = torch.addcmul(g, h["wd"], p)
            if self.use_mom:
                buf = bufs[i]
                if buf is None:
                    buf = bufs[i] = g.clone()
                elif self.use_damp:
                    buf.mul_(h["mom"]).addcmul_(g, h["keep"])
                else:
                    buf.mul_(h["mom"]).add_(g)
                if self.use_nesterov:
                    g = torch.where(h["nesterov"] > 0, torch.addcmul(g, h["mom"], buf), buf)
                else:
                    g = buf
            p.addcmul_(h["neg_lr"], g)
        if self.use_mom:
            self.bufs = cast("list[torch.Tensor]", bufs)  # the loop above set every one


class _StackedAdam(_StackedOptimizer):
    """torch.optim.Adam / AdamW's update with per-cell lr, betas, eps and weight decay, in a
    few foreach kernels over all tensors and cells."""

    def __init__(self, params: list[torch.Tensor], groups: Sequence[dict[str, Any]],
                 decoupled: bool) -> None:
        self.params = params
        self.decoupled = decoupled
        p0 = params[0]
        self.device, self.dtype = p0.device, p0.dtype
        # Per-cell betas and lr on the device (float64 where it has it), so that the bias
        # corrections of each step are computed there: a host-made tensor copied to a GPU
        # every step would synchronise with it every step.
        wide = torch.float32 if p0.device.type == "mps" else torch.float64

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=wide).to(p0.device)

        self.b1 = column([float(g["betas"][0]) for g in groups])
        self.b2 = column([float(g["betas"][1]) for g in groups])
        self.lr = column([float(g["lr"]) for g in groups])
        wd = [float(g["weight_decay"]) for g in groups]
        self.use_wd = any(wd)
        self.wd = [_hp(wd, p) for p in params]
        # AdamW: p *= 1 - lr * wd before the update
        self.decay = [_hp([1 - float(g["lr"]) * float(g["weight_decay"]) for g in groups], p)
                      for p in params]
        self.one_minus_b1 = [_hp([1 - float(g["betas"][0]) for g in groups], p) for p in params]
        self.b2_views = [_hp([float(g["betas"][1]) for g in groups], p) for p in params]
        self.one_minus_b2 = [_hp([1 - float(g["betas"][1]) for g in groups], p) for p in params]
        self.eps = [_hp([float(g["eps"]) for g in groups], p) for p in params]
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def keep(self, idx: Sequence[int], params: list[torch.Tensor]) -> None:
        at = torch.tensor(list(idx), device=params[0].device)
        self.params = params
        for name in ("b1", "b2", "lr", "wd", "decay", "one_minus_b1", "b2_views",
                     "one_minus_b2", "eps", "m", "v"):
            setattr(self, name, _rows(getattr(self, name), at))

    def _per_step(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Per-cell values [K], computed on the device, as one view per parameter."""
        on = values.to(self.dtype)
        return [on.view((-1,) + (1,) * (p.dim() - 1)) for p in self.params]

    @_no_grad
    def step(self, grads: list[torch.Tensor]) -> None:
        """``grads`` are fresh tensors of this step (they are used as scratch space)."""
        self.t += 1
        params = self.params
        if self.use_wd:
            if self.decoupled:
                torch._foreach_mul_(params, self.decay)
            else:
                torch._foreach_addcmul_(grads, params, self.wd)  # g + wd * p
        torch._foreach_lerp_(self.m, grads, self.one_minus_b1)
        torch._foreach_mul_(self.v, self.b2_views)
        scaled = torch._foreach_mul(grads, self.one_minus_b2)
        torch._foreach_addcmul_(self.v, scaled, grads)
        # torch's Adam: p += -lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        neg_step = self._per_step(-self.lr / (1 - self.b1 ** self.t))
        root = self._per_step((1 - self.b2 ** self.t).sqrt())
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, root)
        torch._foreach_add_(denom, self.eps)
        update = torch._foreach_div(self.m, denom)
        torch._foreach_addcmul_(params, update, neg_step)


def _stacked_optimizer(kind: str, params: list[torch.Tensor],
                       groups: Sequence[dict[str, Any]]) -> Any:
    if kind == "sgd":
        return _StackedSGD(params, groups)
    return _StackedAdam(params, groups, decoupled=kind == "adamw")


# ------------------------------------------------------------------------------- training


def _probe_once(m: Member, data: Data, batch_size: int, device: str) -> dict[str, float]:
    """:func:`_probe`, remembered across groups and calls (see
    :func:`~hpspec.engine.probes.probe_key`): a search trains the same architectures again at
    every rung and round."""
    key = probe_key("stacked", m.model, m.optimizer, m.loss, data, batch_size, device)
    found = recall_probe(key)
    if found is None:
        found = _probe(m, data, batch_size, device)
        remember_probe(key, found)
    return found


def _probe(m: Member, data: Data, batch_size: int, device: str) -> dict[str, float]:
    """Size, FLOPs and peak live memory of one member trained alone, on a copy (the member's
    own weights are not touched), exactly as the one-by-one runner probes it: two steps of an
    epoch's permutation, the second one under the probes."""
    model, opt = copy.deepcopy((m.model, m.optimizer))
    model = model.to(device)
    loss_fn = m.loss or default_loss(data.task)
    out: dict[str, float] = dict(model_size(model))
    x, y = data.x_train, data.y_train
    perm = torch.arange(x.shape[0], device=x.device)

    def step(i: int) -> torch.Tensor:
        idx = perm[i * batch_size : (i + 1) * batch_size]
        return train_step(model, opt, loss_fn, x[idx], y[idx])

    if x.shape[0] <= batch_size:  # one step an epoch: the runner probes that step
        memory = probe_memory(model, opt, data)
        with memory:
            step(0)
        out["flops_per_sample"] = memory.flops / float(x.shape[0])
        out["peak_memory"] = float(memory.peak)
        return out
    losses = [step(0)]
    memory = probe_memory(model, opt, data)
    with memory:
        losses.append(step(1))
    out["flops_per_sample"] = memory.flops / float(min(batch_size, x.shape[0] - batch_size))
    out["peak_memory"] = float(memory.peak)
    return out


#: Evaluation goes through the data in row blocks whose widest activation, over all K cells,
#: holds about this many numbers: 2M (8 MB of float32) stays in a CPU's cache, which makes the
#: same forward about twice as fast as one block of the whole set; a GPU wants big blocks.
EVAL_BLOCK = {"cpu": 2**21, "gpu": 2**26}


@torch.no_grad()
def _evaluate(model: _Stacked, x: torch.Tensor, y: torch.Tensor, k: int, loss_kind: str,
              task: str, block_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-cell mean loss [K] (and accuracy, for classification) over all of ``x``, in row
    blocks sized for ``block_k`` members (default ``k``: a group that shrinks keeps its
    blocks, so each member's sums keep their order)."""
    n = x.shape[0]
    budget = EVAL_BLOCK["cpu" if x.device.type == "cpu" else "gpu"]
    rows = max(1, min(n, budget // ((block_k or k) * model.width)))
    acc_dtype = torch.float32 if x.device.type == "mps" else torch.float64  # MPS: no float64
    loss = torch.zeros(k, dtype=acc_dtype, device=x.device)
    correct = torch.zeros(k, dtype=acc_dtype, device=x.device)
    for s in range(0, n, rows):
        xb, yb = x[s : s + rows], y[s : s + rows]
        out = model(xb)
        yk = yb.unsqueeze(0).expand(k, *yb.shape)
        loss += _per_cell_loss(out, yk, loss_kind).to(acc_dtype) * (xb.shape[0] / n)
        if task == CLASSIFICATION:
            correct += (out.argmax(dim=2) == yk).sum(dim=1).to(acc_dtype)
    return loss, (correct / n if task == CLASSIFICATION else None)


class _MLPEngine:
    """The hand-written engine as the training loop sees it: a step and an evaluation."""

    def __init__(self, members: Sequence[Member], device: str, opt_kind: str,
                 loss_kind: str, task: str) -> None:
        self.model = _Stacked([m.model for m in members], device)
        self.opt = _stacked_optimizer(opt_kind, self.model.params,
                                      [m.optimizer.param_groups[0] for m in members])
        self.k, self.loss_kind, self.task = len(members), loss_kind, task
        self.k0 = self.k  # evaluation blocks stay sized for the group as it started

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.opt.train_step(self.model, x, y, self.loss_kind)

    def keep(self, idx: Sequence[int]) -> None:
        self.model.keep(idx)
        self.opt.keep(idx, self.model.params)
        self.k = len(idx)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor,
                                                                  torch.Tensor | None]:
        return _evaluate(self.model, x, y, self.k, self.loss_kind, self.task, self.k0)


def _engine(members: Sequence[Member], data: Data, device: str, batch_size: int) -> Any:
    sig = signature(members[0], data.task, False)
    assert not isinstance(sig, str)
    engine, opt_kind, loss_kind, _ = sig
    if engine[0] == "mlp":
        return _MLPEngine(members, device, opt_kind, loss_kind, data.task)
    if device == "cpu":
        from hpspec.engine.layered import LayeredEngine, supports

        if supports(members[0].model, data.x_train):
            try:
                return LayeredEngine(
                    members, device,
                    lambda params, groups: _stacked_optimizer(opt_kind, params, groups),
                    _per_cell_loss, loss_kind, data.task, data.x_train[:2])
            except (ValueError, RuntimeError, TypeError):  # a model it would compute
                pass  # differently, or not at all: vmap's
    from hpspec.engine.vmapped import FuncEngine

    return FuncEngine(members, device,
                      lambda params, groups: _stacked_optimizer(opt_kind, params, groups),
                      _per_cell_loss, loss_kind, data.task, first_batch=data.x_train[:batch_size])


#: Most numbers (features and targets, over all members) a stacked group gathers at once for
#: an epoch's data in its members' orders; beyond it each step gathers its own batch.
EPOCH_GATHER = 2**24


def train_group(
    members: Sequence[Member],
    data: Data,
    batch_size: int,
    epochs: int,
    device: str,
    divergence_factor: float,
    stop_rules: Sequence[StopRule | None] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> list[SeedResult]:
    """Train the members as one stacked model; one :class:`SeedResult` per member, in order.

    A member whose own ``epochs`` is smaller than ``epochs`` stops there: its curves, timings
    and final metrics are the prefix of the run, which equals its own shorter run exactly
    when its recipe does not depend on the total epoch count (the caller checks that)."""
    k = len(members)
    own_epochs = [m.epochs or epochs for m in members]
    epochs = max(own_epochs)
    # Size, FLOPs and memory are each member's own: probed once per architecture and
    # optimizer setting (members of different widths share a stack but not these figures)
    probes = [_probe_once(m, data, batch_size, device) for m in members]
    engine = _engine(members, data, device, batch_size)
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    steps = math.ceil(n / batch_size)
    sizes = torch.full((steps,), float(batch_size))
    sizes[-1] = n - batch_size * (steps - 1)
    orders = [torch.Generator(device="cpu").manual_seed(m.seed) for m in members]

    start_train, start_train_acc = engine.evaluate(x, y)
    start_val, start_acc = engine.evaluate(data.x_val, data.y_val)
    st, sv = start_train.tolist(), start_val.tolist()
    sa = start_acc.tolist() if start_acc is not None else None
    initial = [{"train_loss": st[i], "val_loss": sv[i], **({"val_acc": sa[i]} if sa else {})}
               for i in range(k)]
    limits = torch.tensor([divergence_factor * max(abs(v), 1e-8) for v in st])
    curves: list[dict[str, list[float]]] = [{key: [] for key in init} for init in initial]
    diverged: list[Divergence | None] = [None] * k
    stopped = [False] * k
    seconds: list[float] = []
    timed = TimedSteps(steps)
    rules = list(stop_rules) if stop_rules is not None else [None] * k

    #: the members still in the stack, by their index in ``members`` (stopped ones leave it)
    live = list(range(k))
    for epoch in range(1, epochs + 1):
        perms = torch.stack([torch.randperm(n, generator=orders[j]) for j in live]).to(device)
        # each member's epoch of data in its own order, gathered once: a step then takes a
        # slice (a view), not two gathers of its own (within EPOCH_GATHER numbers)
        whole = len(live) * (x.numel() + y.numel()) <= EPOCH_GATHER
        xs, ys = (x[perms], y[perms]) if whole else (x, y)
        # the steps' batches as views, cut in one call each (not two slicings a step)
        xb, yb = (xs.split(batch_size, dim=1), ys.split(batch_size, dim=1)) if whole else ((), ())
        step_losses: list[torch.Tensor] = []
        sync(device)
        t0 = time.perf_counter()
        first = min(WARMUP_STEPS, steps) if epoch == 1 else 0
        t1 = t0
        for i in range(steps):
            if i == first:
                if first:
                    sync(device)
                t1 = time.perf_counter()
            if whole:
                step_losses.append(engine.step(xb[i], yb[i]))
            else:
                idx = perms[:, i * batch_size : (i + 1) * batch_size]
                step_losses.append(engine.step(x[idx], y[idx]))
        sync(device)
        t2 = time.perf_counter()
        seconds.append(t2 - t0)
        timed.add(t2 - t1, first, sizes)
        host = torch.stack(step_losses).float().cpu()  # [steps, live members]
        # each member's sum over its own contiguous row: the same floats whatever the
        # number of members beside it (a column sum's order depends on the row width)
        train = (host.t().contiguous() * sizes).sum(dim=1) / n
        val_loss, val_acc = engine.evaluate(data.x_val, data.y_val)
        vl = val_loss.tolist()
        va = val_acc.tolist() if val_acc is not None else None
        bad = (~torch.isfinite(host)) | (host > limits[live])
        any_bad = bad.any(dim=0).tolist()
        tl = train.tolist()
        for pos, j in enumerate(live):
            if stopped[j]:
                continue
            curves[j]["train_loss"].append(tl[pos])
            curves[j]["val_loss"].append(vl[pos])
            if va is not None:
                curves[j]["val_acc"].append(va[pos])
            if any_bad[pos]:
                diverged[j] = divergence(host[:, pos], float(limits[j]), st[j], epoch,
                                         divergence_factor)
                stopped[j] = True
            elif epoch >= own_epochs[j]:
                stopped[j] = True  # its own epoch count: the rest of the run is not its own
            elif rules[j] is not None and rules[j](curves[j]):  # type: ignore[misc]
                stopped[j] = True
        if progress is not None:
            progress(epoch, epochs, float(train.nanmean()))
        if all(stopped):
            break
        if any(stopped[j] for j in live):
            # Stopped members leave the stack (their epoch count reached, diverged, decided
            # early, pruned): the rest train on without their arithmetic.
            kept = [pos for pos, j in enumerate(live) if not stopped[j]]
            engine.keep(kept)
            live = [live[pos] for pos in kept]

    shared: dict[str, float] = {"stacked": float(k), **timed.measurements()}
    peak = device_peak_flops(device)
    if peak and "samples_per_s" in shared:
        shared["mfu"] = (sum(p["flops_per_sample"] for p in probes)
                         * shared["samples_per_s"] / peak)
    own = [{**probes[j], **shared} for j in range(k)]
    return [
        SeedResult(
            seed=m.seed,
            curves=curves[j],
            epoch_seconds=seconds[: len(curves[j]["train_loss"])],
            initial=initial[j],
            diverged=diverged[j],
            measurements=own[j],
            epochs_planned=own_epochs[j],
            steps_per_epoch=steps,
        )
        for j, m in enumerate(members)
    ]
