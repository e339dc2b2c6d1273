"""Stacking models that are not a plain MLP, through ``torch.func``.

The hand-written engine (:class:`hpspec.engine.stacked._Stacked`) computes ``nn.Sequential``
stacks of ``Linear`` layers and element-wise activations, and is the fast path. Any other
model without data-dependent control flow (convolutions, residual modules, LayerNorm,
BatchNorm, dropout...) stacks here: the members' parameters and buffers are stacked on a
leading dimension K (``torch.func.stack_module_state``) and one copy of the module, on the
``meta`` device, is called with each member's tensors under ``torch.func.vmap``
(``functional_call``). Autograd gives each member the gradient of its own loss; the update is
the stacked optimizers' of :mod:`hpspec.engine.stacked` (the same per-cell hyperparameters).

BatchNorm keeps per-member running statistics: they are stacked buffers, updated in place
under ``vmap`` as each member's own module would update them. Dropout draws each member's
mask from a generator started from the state torch's global generator had right after that
member's recipe was built (under its seed), with the draw a one-by-one run makes
(``bernoulli_(1 - p)`` of the input's shape, scaled by ``1 / (1 - p)``), in forward order: on
a CPU, each member's masks are the ones it would draw alone (tests check its curve). On a
GPU one-by-one runs use a fused kernel with its own random stream: the masks are then still
each member's own, from its seed, but not bitwise the ones it would draw alone.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hpspec.datasets import CLASSIFICATION

__all__ = ["FuncEngine", "func_signature"]

#: Dropout kinds whose masks are not drawn as ``nn.Dropout`` draws them (whole channels,
#: alpha dropout): such models train one by one.
_OTHER_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                  nn.FeatureAlphaDropout)

_MODULE_STATE = {"training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"}


def _settings(mod: nn.Module) -> str:
    """A module's own non-tensor settings (a custom module's ``self.scale = 0.5``): members
    whose modules differ in them compute different functions, so they must not share one
    module under ``vmap``."""
    items = sorted((k, repr(v)) for k, v in vars(mod).items()
                   if k not in _MODULE_STATE and not k.startswith("_")
                   and not isinstance(v, (torch.Tensor, nn.Module)))
    return repr(items)


def func_signature(model: nn.Module) -> tuple[Any, ...] | str:
    """What must be equal for two members to share a ``vmap`` stack, or why this model
    cannot stack at all."""
    from torch.nn.utils import parametrize

    for name, mod in model.named_modules():
        if (mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks
                or getattr(mod, "_backward_pre_hooks", None)):
            return f"the model has a hook (on {name or 'the model'}): not stacked"
        if parametrize.is_parametrized(mod):
            return f"the model has a parametrization (on {name or 'the model'}): not stacked"
        if isinstance(mod, _OTHER_DROPOUT):
            return (f"the model has {type(mod).__name__} (masks of whole channels or alpha "
                    "dropout): not stacked")
    params = list(model.named_parameters())
    if not params:
        return "the model has no parameters"
    if len(params) != len(list(model.named_parameters(remove_duplicate=False))):
        return "the model shares a parameter between layers: not stacked"
    return ("func", type(model), repr(model),
            tuple((type(m), _settings(m)) for m in model.modules()),
            tuple((n, tuple(p.shape), p.dtype) for n, p in params),
            tuple((n, tuple(b.shape), b.dtype) for n, b in model.named_buffers()))


class _Noise(nn.Module):
    """``nn.Dropout`` with its mask given: a buffer set to each member's own scaled mask."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.noise: torch.Tensor  # declared for the type checker; register_buffer sets it
        self.register_buffer("noise", torch.empty(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * self.noise


def _dropout_order(model: nn.Module, x: torch.Tensor) -> list[tuple[str, float, tuple[int, ...]]]:
    """The model's active dropouts in the order a forward calls them, each with its ``p`` and
    the shape of its input past the batch dimension (from one forward of a copy on two rows)."""
    probe = copy.deepcopy(model)
    seen: list[tuple[str, float, tuple[int, ...]]] = []
    handles = []
    for name, mod in probe.named_modules():
        if type(mod) is nn.Dropout and mod.p > 0:
            def hook(m: nn.Dropout, args: Any, name: str = name) -> None:
                seen.append((name, float(m.p), tuple(args[0].shape[1:])))
            handles.append(mod.register_forward_pre_hook(hook))
    if handles:
        probe.eval()  # no random draw, no running statistics moved
        with torch.no_grad():
            probe(x[:2].clone())
    return seen


class FuncEngine:
    """K members of one architecture trained as one ``vmap``-ed functional model."""

    def __init__(self, members: Sequence[Any], device: str, make_optimizer: Any,
                 per_cell_loss: Any, loss_kind: str, task: str,
                 first_batch: torch.Tensor | None = None) -> None:
        """``make_optimizer(params, groups)`` and ``per_cell_loss(out, y, kind)`` come from
        :mod:`hpspec.engine.stacked` (passed in, so this module does not import it back)."""
        from torch.func import functional_call, stack_module_state, vmap

        models = [m.model.to(device) for m in members]
        self.k, self.loss_kind, self.task, self.device = len(models), loss_kind, task, device
        params, buffers = stack_module_state(models)
        self.names = list(params)
        self.params = [params[n] for n in self.names]
        self.buffers = buffers
        base = copy.deepcopy(models[0]).to("meta")
        self.dropouts: list[tuple[str, float, tuple[int, ...]]] = []
        if first_batch is not None:
            self.dropouts = _dropout_order(models[0], first_batch)
        if len({d[0] for d in self.dropouts}) != len(self.dropouts):
            raise ValueError("a dropout module is called more than once per forward")
        for name, p, _ in self.dropouts:
            parent, _, leaf = name.rpartition(".")
            base.get_submodule(parent).register_module(leaf, _Noise(p))
        self.base = base
        self.gens: list[torch.Generator] = []
        if self.dropouts:
            for m in members:
                g = torch.Generator(device=device)
                if device == "cpu" and m.rng_state is not None:
                    g.set_state(m.rng_state)
                else:
                    g.manual_seed(m.seed)
                self.gens.append(g)
        self.opt = make_optimizer(self.params, [m.optimizer.param_groups[0] for m in members])
        self._per_cell_loss = per_cell_loss

        def loss_one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                     x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = functional_call(self.base, (p, b), (x,))
            return per_cell_loss(out.unsqueeze(0), y.unsqueeze(0), loss_kind)[0]

        def forward_one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                        x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (x,))

        self._loss = vmap(loss_one)
        self._forward = vmap(forward_one, in_dims=(0, 0, None))
        self._forward_each = vmap(forward_one)
        if first_batch is not None:
            # what a one-by-one run does before training: one batch through the model in
            # training mode, without gradients (its check of the model's output): BatchNorm
            # statistics move and dropout draws, so they must here too
            with torch.no_grad():
                self.base.train()
                xs = first_batch.unsqueeze(0).expand(self.k, *first_batch.shape)
                self._forward_each(self.params_dict(), self._with_noise(first_batch.shape[0]), xs)

    def keep(self, idx: Sequence[int]) -> None:
        """Only the members at positions ``idx`` train on: their rows of the stacked
        parameters, buffers (running statistics) and optimizer state, and their generators."""
        at = torch.tensor(list(idx), device=self.params[0].device)
        self.params = [p.detach().index_select(0, at).requires_grad_(True) for p in self.params]
        self.buffers = {n: b.index_select(0, at) for n, b in self.buffers.items()}
        if self.gens:
            self.gens = [self.gens[i] for i in idx]
        self.opt.keep(idx, self.params)
        self.k = len(idx)

    def params_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.params, strict=True))

    def _with_noise(self, rows: int) -> dict[str, torch.Tensor]:
        """The buffers plus each member's fresh dropout masks for a batch of ``rows``."""
        if not self.dropouts:
            return self.buffers
        out = dict(self.buffers)
        dtype = self.params[0].dtype
        masks: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in self.dropouts}
        for g in self.gens:  # each member's draws in its forward's order, as alone
            for name, p, shape in self.dropouts:
                noise = torch.empty((rows, *shape), dtype=dtype, device=self.device)
                noise.bernoulli_(1 - p, generator=g).div_(1 - p)
                masks[name].append(noise)
        for name, _, _ in self.dropouts:
            out[f"{name}.noise"] = torch.stack(masks[name])
        return out

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.base.train()
        losses = self._loss(self.params_dict(), self._with_noise(x.shape[1]), x, y)
        grads = list(torch.autograd.grad(losses.sum(), self.params))
        self.opt.step(grads)
        return losses.detach()

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor,
                                                                  torch.Tensor | None]:
        self.base.eval()
        n = x.shape[0]
        acc_dtype = torch.float32 if x.device.type == "mps" else torch.float64
        loss = torch.zeros(self.k, dtype=acc_dtype, device=x.device)
        correct = torch.zeros(self.k, dtype=acc_dtype, device=x.device)
        rows = 8192  # as the one-by-one evaluation's blocks
        for s in range(0, n, rows):
            xb, yb = x[s : s + rows], y[s : s + rows]
            out = self._forward(self.params_dict(), self.buffers, xb)
            yk = yb.unsqueeze(0).expand(self.k, *yb.shape)
            loss += self._per_cell_loss(out, yk, self.loss_kind).to(acc_dtype) * (xb.shape[0] / n)
            if self.task == CLASSIFICATION:
                correct += (out.argmax(dim=-1) == yk).sum(dim=1).to(acc_dtype)
        self.base.train()
        return loss, (correct / n if self.task == CLASSIFICATION else None)
