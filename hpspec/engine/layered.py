"""Stacking small CNNs by hand, on a CPU: grouped convolutions on channels-last tensors.

Under ``torch.func.vmap`` (:mod:`hpspec.engine.vmapped`) a stack of K convolutional models
runs each convolution as one grouped convolution (the members folded into the channels) and
each pooling with the members folded into the batch: every convolution and pooling then
copies its input between layouts, and torch's CPU pooling of many small planes in the
default (NCHW) layout is slow. A profile of the 64-member digits CNN of
``benchmarks/grid_shapes.py`` (conv 1->4, 3x3, ReLU, max-pool 2, linear; batch 64) spent a
quarter of each step in max-pooling and another two fifths in the convolution and its
backward.

This engine computes the same models itself, for ``nn.Sequential`` CNNs built from
``Conv2d`` (zero padding), ``Linear``, ``Flatten``/``Unflatten``, pooling and padding that act
on each channel's plane alone (``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``,
``AdaptiveMaxPool2d``, ``ZeroPad2d``), element-wise activations and ``Dropout(p=0)`` /
``Identity``, all with torch's own forwards. The members' images are one tensor
[batch, K x channels, H, W] in channels-last memory, so a convolution is one grouped
convolution (groups = K x the layer's groups) and a pooling is torch's pooling over it, both
without a copy; flat tensors are [K, batch, features] and a linear layer is one batched
matrix product. Autograd gives each member the gradient of its own loss; the update is the
stacked optimizers' (:mod:`hpspec.engine.stacked`).

Two exact rewrites: an in-place activation on a convolution's or a linear layer's output
(neither backward reads its output), and ``ReLU`` then ``MaxPool2d`` computed as the pooling
then the ReLU, on a quarter of the numbers: the maximum of ReLUs is the ReLU of the maximum,
and the gradient reaches the same element (the first maximum of a window; where the maximum
is not positive, both give every element of the window a zero gradient).

Before training, the stack's output for two rows is checked against each member's own
model; a model this engine would compute differently goes to ``vmap``. On CUDA and MPS
stacks keep ``vmap`` (this engine was measured on a CPU only).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpspec.datasets import CLASSIFICATION
from hpspec.engine.common import ELEMENTWISE
from hpspec.engine.common import plain as _plain

__all__ = ["LayeredEngine", "supports"]

#: Parameter-free modules that act on each channel's plane alone, so they apply to the
#: members' planes side by side in one [batch, K x channels, H, W] tensor unchanged.
_PLANE = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
          nn.ZeroPad2d)

#: In-place versions of activations whose backward reads their output only.
_INPLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_}

#: Numbers (over all members) of the widest activation of one evaluation block: as the
#: hand-written engine's blocks (cache-sized on a CPU).
EVAL_NUMBERS = 2**21


def _flat_layers(model: nn.Module) -> list[nn.Module] | None:
    """The model's layers in order, if every one is a kind this engine computes."""
    if not _plain(model, nn.Sequential):
        return None
    out: list[nn.Module] = []
    for m in model:
        if isinstance(m, nn.Sequential):
            inner = _flat_layers(m)
            if inner is None:
                return None
            out += inner
        elif _plain(m, nn.Conv2d):
            assert isinstance(m, nn.Conv2d)
            if m.padding_mode != "zeros":
                return None
            out.append(m)
        elif _plain(m, nn.Linear):
            out.append(m)
        elif _plain(m, nn.Flatten):
            assert isinstance(m, nn.Flatten)
            if m.start_dim != 1 or m.end_dim != -1:
                return None
            out.append(m)
        elif _plain(m, nn.Unflatten):
            assert isinstance(m, nn.Unflatten)
            if m.dim != 1 or len(m.unflattened_size) != 3:
                return None
            out.append(m)
        elif any(_plain(m, kind) for kind in _PLANE):
            if getattr(m, "return_indices", False):
                return None
            out.append(m)
        elif any(_plain(m, kind) for kind in ELEMENTWISE) and not list(m.parameters()):
            out.append(m)
        elif (_plain(m, nn.Dropout) and m.p == 0) or _plain(m, nn.Identity):
            continue
        else:
            return None
    return out


def supports(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether this engine computes ``model`` (a CNN of the kinds above, without buffers)
    on data shaped like ``x`` (flat [N, features] or images [N, C, H, W])."""
    layers = _flat_layers(model)
    return (layers is not None and any(isinstance(m, nn.Conv2d) for m in layers)
            and not list(model.buffers()) and x.dim() in (2, 4)
            and all(p.requires_grad for p in model.parameters()))


# ------------------------------------------------------------------------------ layouts


def _image(x: torch.Tensor, k: int, shape: Sequence[int]) -> torch.Tensor:
    """[K, B, C*H*W] (or [K, B, C, H, W]) as [B, K*C, H, W] in channels-last memory."""
    c, h, w = shape
    b = x.shape[1]
    nhwc = x.reshape(k, b, c, h, w).permute(1, 3, 4, 0, 2).contiguous()  # [B, H, W, K, C]
    return nhwc.permute(0, 3, 4, 1, 2).reshape(b, k * c, h, w)  # a view: channels last


class _Flatten(torch.autograd.Function):
    """[B, K*C, H, W] -> [K, B, C*H*W], with the gradient handed back in channels-last
    memory (autograd's own would be NCHW, and every convolution and pooling backward behind
    it would copy it again)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, k: int) -> torch.Tensor:
        b, kc, hh, ww = h.shape
        ctx.shape = (k, kc // k, hh, ww)
        return h.reshape(b, k, kc // k, hh, ww).permute(1, 0, 2, 3, 4).reshape(k, b, -1)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        k, c, h, w = ctx.shape
        return _image(g, k, (c, h, w)), None


# --------------------------------------------------------------------------------- engine


class LayeredEngine:
    """K members of one CNN architecture trained as one hand-laid-out model."""

    def __init__(self, members: Sequence[Any], device: str, make_optimizer: Any,
                 per_cell_loss: Any, loss_kind: str, task: str,
                 example: torch.Tensor) -> None:
        """``make_optimizer(params, groups)`` and ``per_cell_loss(out, y, kind)`` come from
        :mod:`hpspec.engine.stacked` (passed in, so this module does not import it back);
        ``example`` is a few rows of the training data."""
        models = [m.model for m in members]
        per_model = [_flat_layers(m) for m in models]
        assert all(layers is not None for layers in per_model)
        first: list[nn.Module] = per_model[0]  # type: ignore[assignment]
        self.k = self.k0 = len(models)
        self.loss_kind, self.task, self.device = loss_kind, task, device
        self.params: list[torch.Tensor] = []
        #: (kind, module, indices of its parameters in :attr:`params`) per step of the forward
        self.ops: list[tuple[str, nn.Module, tuple[int, ...]]] = []
        skip = False
        for j, layer in enumerate(first):
            if skip:
                skip = False
                continue
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                at = []
                for name in ("weight", "bias"):
                    if getattr(layer, name) is not None:
                        stacked = torch.stack([getattr(pm[j], name).detach()  # type: ignore[index]
                                               for pm in per_model]).to(device)
                        self.params.append(stacked.requires_grad_(True))
                        at.append(len(self.params) - 1)
                self.ops.append(("conv" if isinstance(layer, nn.Conv2d) else "linear", layer,
                                 tuple(at)))
            elif (_plain(layer, nn.ReLU) and j + 1 < len(first)
                  and _plain(first[j + 1], nn.MaxPool2d)):
                # ReLU then max-pooling: the pooling first, then the ReLU on its output
                self.ops.append(("plane", first[j + 1], ()))
                self.ops.append(("inplace", layer, ()))
                skip = True
            elif isinstance(layer, (nn.Flatten, nn.Unflatten)) or isinstance(layer, _PLANE):
                self.ops.append((type(layer).__name__.lower() if isinstance(
                    layer, (nn.Flatten, nn.Unflatten)) else "plane", layer, ()))
            else:  # an element-wise activation
                after = self.ops[-1][0] if self.ops else ""
                fresh = after in ("conv", "linear", "plane") and type(layer) in _INPLACE
                self.ops.append(("inplace" if fresh else "act", layer, ()))
        self.opt = make_optimizer(self.params, [m.optimizer.param_groups[0] for m in members])
        self._per_cell_loss = per_cell_loss
        self._widest = 1
        self._repeats: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        self._check(models, example[:2])

    # ------------------------------------------------------------------------- forward

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` is [K, B, ...] (each member its own rows); the output [K, B, classes]."""
        k = x.shape[0]
        image = x.dim() == 5
        h = _image(x, k, x.shape[2:]) if image else x

        def per_row() -> int:  # numbers per row and member
            return h.numel() // (h.shape[0] * k) if image else h.shape[-1]

        widest = per_row()
        for kind, layer, at in self.ops:
            if kind == "conv":
                assert isinstance(layer, nn.Conv2d)
                w = self.params[at[0]]
                b = self.params[at[1]] if len(at) > 1 else None
                groups = layer.groups * k
                if layer.in_channels == layer.groups:
                    # one input channel per group: as a depthwise convolution over each input
                    # channel repeated once per output channel of its group (the same sums;
                    # oneDNN's depthwise kernel is about 9x its grouped one here)
                    m = layer.out_channels // layer.groups
                    groups *= m
                    if m > 1:
                        bb, c, hh, ww = h.shape
                        h = (h.permute(0, 2, 3, 1).reshape(-1, c)  # (a view: channels last)
                             .index_select(1, self._repeat(c, m, h.device))
                             .view(bb, hh, ww, c * m).permute(0, 3, 1, 2))
                h = F.conv2d(h, w.reshape(-1, *w.shape[2:]),
                             None if b is None else b.reshape(-1), layer.stride,
                             layer.padding, layer.dilation, groups)
            elif kind == "linear":
                w = self.params[at[0]]
                h = (torch.baddbmm(self.params[at[1]].unsqueeze(1), h, w.transpose(1, 2))
                     if len(at) > 1 else torch.bmm(h, w.transpose(1, 2)))
            elif kind == "flatten":
                h = _Flatten.apply(h, k) if image else h
                image = False
            elif kind == "unflatten":
                assert isinstance(layer, nn.Unflatten)
                h = _image(h, k, layer.unflattened_size)
                image = True
            elif kind == "inplace":
                h = _INPLACE[type(layer)](h)
            else:  # "plane" (pooling, padding) or "act" (any element-wise activation)
                h = layer(h)
            widest = max(widest, per_row())
        if image:
            raise ValueError("the model's output is not flat")
        self._widest = max(self._widest, widest)
        return h

    def _repeat(self, c: int, m: int, device: torch.device) -> torch.Tensor:
        """0, 0, ..., 1, 1, ...: each of ``c`` channels ``m`` times (an index, made once)."""
        key = (c, m, device)
        if key not in self._repeats:
            self._repeats[key] = torch.arange(c, device=device).repeat_interleave(m)
        return self._repeats[key]

    def _check(self, models: Sequence[nn.Module], x: torch.Tensor) -> None:
        """The stack computes each member's own model (two rows, first and last member)."""
        with torch.no_grad():
            rows = x.to(self.device)
            out = self._forward(rows.unsqueeze(0).expand(self.k, *rows.shape))
            for i in {0, self.k - 1}:
                own = copy.deepcopy(models[i]).to(self.device)(rows.clone())
                if own.shape != out[i].shape or not torch.allclose(own, out[i], rtol=1e-4,
                                                                      atol=1e-5):
                    raise ValueError("the stacked CNN does not compute the member's model")

    # ------------------------------------------------------------------------ training

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = self._per_cell_loss(self._forward(x), y, self.loss_kind)
        grads = list(torch.autograd.grad(losses.sum(), self.params))
        self.opt.step(grads)
        return losses.detach()

    def keep(self, idx: Sequence[int]) -> None:
        """Only the members at positions ``idx`` train on."""
        at = torch.tensor(list(idx), device=self.params[0].device)
        self.params = [p.detach().index_select(0, at).requires_grad_(True) for p in self.params]
        self.opt.keep(idx, self.params)
        self.k = len(idx)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor,
                                                                  torch.Tensor | None]:
        """Per-member mean loss [K] (and accuracy) over all of ``x``, in row blocks whose
        widest activation stays cache-sized (sized for the group as it started, so the
        members' sums keep their order as it shrinks)."""
        n = x.shape[0]
        rows = max(1, min(n, EVAL_NUMBERS // (self.k0 * self._widest)))
        acc_dtype = torch.float64
        loss = torch.zeros(self.k, dtype=acc_dtype, device=x.device)
        correct = torch.zeros(self.k, dtype=acc_dtype, device=x.device)
        for s in range(0, n, rows):
            xb, yb = x[s : s + rows], y[s : s + rows]
            out = self._forward(xb.unsqueeze(0).expand(self.k, *xb.shape))
            yk = yb.unsqueeze(0).expand(self.k, *yb.shape)
            loss += (self._per_cell_loss(out, yk, self.loss_kind).to(acc_dtype)
                     * (xb.shape[0] / n))
            if self.task == CLASSIFICATION:
                correct += (out.argmax(dim=-1) == yk).sum(dim=1).to(acc_dtype)
        return loss, (correct / n if self.task == CLASSIFICATION else None)

