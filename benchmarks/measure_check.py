"""Do hpspec's measurements agree with an independent, hand-written measurement?

    python benchmarks/measure_check.py [--device cpu|cuda] [--epochs 5] [--json PATH]

Same training (digits MLP 64-128-128-10, SGD, batch 64) measured twice, side by side:
- samples/s: hpspec's runner against a hand-written loop timed with perf_counter around
  epochs 2..N (device synchronised), runs interleaved so both see the same machine;
- peak memory: hpspec's live-tensor tracker (CPU) or max_memory_allocated (CUDA) against
  torch.profiler's per-operator memory (profile_memory=True: each operator's allocations less
  its frees, summed in order) over the same first two steps, plus the tensors that existed
  before them;
- FLOPs per training sample: against the count by hand, 3 x 2 x MACs less the first layer's
  input gradient.
Agreement means a ratio within 0.9 .. 1.1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

import hpspec as hp  # noqa: E402
from hpspec.engine.runner import device_data, run_cell, select_device  # noqa: E402
from hpspec.spec import build  # noqa: E402

SIZES = (64, 128, 128, 10)
BATCH = 64


def _model() -> torch.nn.Module:
    return hp.models.mlp(SIZES[0], list(SIZES[1:-1]), SIZES[-1])


def spec(case):  # the experiment hpspec runs
    model = _model()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def hand_throughput(x, y, epochs: int, device: str, seed: int) -> float:
    """A lean loop written out by hand: samples/s over epochs 2..N."""
    torch.manual_seed(seed)
    model = _model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = x.shape[0]
    timed, samples = 0.0, 0
    for epoch in range(epochs):
        perm = torch.randperm(n).to(device)
        _sync(device)
        t0 = time.perf_counter()
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        _sync(device)
        if epoch > 0:
            timed += time.perf_counter() - t0
            samples += n
    return samples / timed


def hand_peak_memory(data, device: str) -> float:
    """torch.profiler's allocation events over two training steps, plus what existed."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = _model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    before = sum(t.numel() * t.element_size() for t in
                 (*model.parameters(), data.x_train, data.y_train, data.x_val, data.y_val))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                          if device.startswith("cuda") else [])
    with profile(activities=activities, profile_memory=True) as prof:
        for i in range(2):
            idx = torch.arange(i * BATCH, (i + 1) * BATCH, device=device)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
    # Each operator's own allocations less its frees, in the order the operators started.
    attr = "self_cpu_memory_usage" if device == "cpu" else "self_device_memory_usage"
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += getattr(e, attr, 0) or 0
        peak = max(peak, live)
    return float(before + peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2: the hand-written loop times epochs 2 and on")
    device = select_device(args.device)
    exp = build(hp.experiment(epochs=args.epochs, batch_size=BATCH,
                              data=hp.datasets.digits())(spec))
    data = device_data(exp.data, device)
    ours, theirs = [], []
    for r in range(args.repeats):  # interleaved: both see the same machine state
        res = run_cell(exp, exp.cells[0], device, seeds=(r,))
        ours.append(res.seeds[0].measurements)
        theirs.append(hand_throughput(data.x_train, data.y_train, args.epochs, device, r))
    m = ours[0]
    macs = sum(a * b for a, b in itertools.pairwise(SIZES))
    flops_hand = 3 * 2 * macs - 2 * SIZES[0] * SIZES[1]
    rows = [
        ("samples/s (median)", statistics.median(o["samples_per_s"] for o in ours),
         statistics.median(theirs)),
        ("peak memory (bytes)", m.get("peak_memory", float("nan")),
         hand_peak_memory(data, device)),
        ("FLOPs per training sample", m["flops_per_sample"], float(flops_hand)),
    ]
    table = [(name, f"{a:,.0f}", f"{b:,.0f}", f"{a / b:.3f}",
              "yes" if 0.9 <= a / b <= 1.1 else "NO")
             for name, a, b in rows]
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}")
    print(tabulate(table, headers=["measure", "hpspec", "by hand", "ratio", "within 10%"],
                   disable_numparse=True))
    if args.json:
        args.json.write_text(json.dumps({
            "device": device, "device_name": name,
            "rows": [{"measure": n, "hpspec": a, "by_hand": b, "ratio": a / b}
                     for n, a, b in rows]}, indent=1))


if __name__ == "__main__":
    main()
