"""How to stack cells that differ in width, depth or batch size: one padded group or groups?

    python benchmarks/stack_layouts.py [--reps 3] [--threads 1] [--json PATH]

Times one epoch of stacked training steps (digits-sized: 1437 rows, 64 features, 10 classes,
SGD momentum 0.9, the hand-written engine) per layout, median of --reps, interleaved:

  widths   8 members at each hidden width {32, 64, 128, 256} (one hidden layer, batch 64):
           one group zero-padded to 256 with gradient masks (what hpspec does) against four
           groups, one per width, trained one after the other.
  depths   8 members at each depth {1, 2, 3} (hidden 64, batch 32): three groups, one per
           depth, against one group of 24 three-layer members: the compute of padding the
           shallower members with identity layers, without the masks' cost (a lower bound
           on what padding would cost), and against that padding as it would run: identity
           layers (weights I, no activation: a run of Identity beside the ReLUs) whose
           gradients are masked to zero.
  batches  24 members at batch 32 and 24 at batch 128 (two hidden layers of 64): two groups
           against one group of 48 stepping at batch 128 as often as the batch-32 members
           step (a per-member row mask over a shared larger batch: the batch-32 members
           would use 32 of its rows, the batch-128 members every fourth step), again a lower
           bound without the masks' cost.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

import hpspec as hp
from hpspec.engine.stacked import _Stacked, _StackedSGD

N, F, C = 1437, 64, 10


def member(hidden: list[int]) -> nn.Sequential:
    """An MLP; a hidden size 0 is an identity layer (weights I, bias 0, no activation): a
    shallower member padded to the stack's depth."""
    if all(hidden):
        return hp.models.mlp(F, hidden, C)
    layers: list[nn.Module] = []
    width = F
    for h in hidden:
        if h:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        else:
            same = nn.Linear(width, width)
            with torch.no_grad():
                same.weight.copy_(torch.eye(width))
                same.bias.zero_()
            layers += [same, nn.Identity()]
    return nn.Sequential(*layers, nn.Linear(width, C))


def group(hidden: list[list[int]], device: str = "cpu") -> tuple[_Stacked, _StackedSGD]:
    models = [member(h) for h in hidden]
    model = _Stacked(models, device)
    if not all(all(h) for h in hidden):
        # an identity layer's weights never move: its gradients masked to zero, as padded
        # widths' are
        masks = [torch.ones_like(p) for p in model.params]
        for k, h in enumerate(hidden):
            for j, v in enumerate(h):
                if not v:
                    masks[2 * j][k] = 0
                    masks[2 * j + 1][k] = 0
        model.masks = masks
    groups = [{"lr": 0.05, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0,
               "nesterov": False} for _ in models]
    return model, _StackedSGD(model.params, groups)


def epoch(parts: list[tuple[list[list[int]], int, int]]) -> float:
    """Seconds for one epoch of each part (members' hidden sizes, batch size, steps)."""
    built = [(group(hidden), batch, steps) for hidden, batch, steps in parts]
    x = torch.randn(N, F)
    y = torch.randint(0, C, (N,))
    t = time.perf_counter()
    for (model, opt), batch, steps in built:
        k = len(model.params[0])
        for _ in range(steps):
            idx = torch.randint(0, N, (k, batch))
            opt.train_step(model, x[idx], y[idx], "ce")
    return time.perf_counter() - t


def layouts() -> dict[str, dict[str, list[tuple[list[list[int]], int, int]]]]:
    s32, s64, s128 = math.ceil(N / 32), math.ceil(N / 64), math.ceil(N / 128)
    widths = [32, 64, 128, 256]
    return {
        "widths": {
            "padded (one group)": [([[w] for w in widths for _ in range(8)], 64, s64)],
            "grouped by width": [([[w]] * 8, 64, s64) for w in widths],
        },
        "depths": {
            "grouped by depth": [([[64] * d] * 8, 32, s32) for d in (1, 2, 3)],
            "identity-padded (lower bound)": [([[64] * 3] * 24, 32, s32)],
            "identity-padded (masks, identity runs)": [(
                [[64, 0, 0]] * 8 + [[64, 64, 0]] * 8 + [[64] * 3] * 8, 32, s32)],
        },
        "batches": {
            "grouped by batch size": [([[64, 64]] * 24, 32, s32), ([[64, 64]] * 24, 128, s128)],
            "shared batch 128 (lower bound)": [([[64, 64]] * 48, 128, s32)],
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out: dict[str, dict[str, float]] = {}
    for name, ways in layouts().items():
        times: dict[str, list[float]] = {w: [] for w in ways}
        for parts in ways.values():
            epoch(parts)  # warm-up
        for _ in range(args.reps):
            for w, parts in ways.items():
                times[w].append(epoch(parts))
        out[name] = {w: statistics.median(v) for w, v in times.items()}
        for w, v in out[name].items():
            print(f"{name:8s} {w:32s} {v * 1000:8.1f} ms/epoch")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "reps": args.reps,
                                         "torch": torch.__version__, "ms_per_epoch": {
                                             k: {w: v * 1000 for w, v in d.items()}
                                             for k, d in out.items()}}, indent=1))


if __name__ == "__main__":
    main()
