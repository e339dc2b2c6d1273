"""Statistics on real training: the within-seed correlation on digits, and a real A/A run.

    python benchmarks/real_aa.py [--trials 200] [--seeds 5] [--json PATH]

Thousands of tiny MLPs (64-32-10, SGD, batch 64, 3 epochs) train on scikit-learn's bundled
digits at once as one batched computation on the CPU (a hand-stacked loop: every model has
its own seed's initial weights and data order, exactly as one model per seed would).

1. Within-seed correlation: lr=0.1 and lr=0.11 trained from the same seeds (same initial
   weights, same data order); the Pearson correlation of their final val_loss across seeds
   is what pairing by seed exploits (``benchmarks/stats_validation.py --rho``).
2. Real A/A: two identical configurations under two names, each trial giving each name its
   own ``--seeds`` seeds (so the two sides differ only by seed, as two separate runs of the
   same thing would); hpspec's ``compare`` ("a lower val_loss than b") must pass in at most
   alpha of the trials. Judged by the same Compare code the plugin uses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from sklearn.datasets import load_digits
from tabulate import tabulate

from hpspec.claims import metric
from hpspec.cross import compare
from hpspec.results import CellResult, SeedResult


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(1234)  # one fixed split for every model
    perm = torch.randperm(len(x), generator=g)
    cut = int(0.8 * len(x))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def train(seeds: list[int], lrs: list[float], epochs: int = 3, batch: int = 64,
          hidden: int = 32) -> list[float]:
    """Final val_loss of one MLP per (seed, lr), trained together (bmm over models)."""
    torch.set_num_threads(1)
    xt, yt, xv, yv = digits()
    k = len(seeds)
    w1, b1, w2, b2, orders = [], [], [], [], []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        bound1, bound2 = 1 / 64**0.5, 1 / hidden**0.5
        w1.append((torch.rand(64, hidden, generator=g) * 2 - 1) * bound1)
        b1.append((torch.rand(hidden, generator=g) * 2 - 1) * bound1)
        w2.append((torch.rand(hidden, 10, generator=g) * 2 - 1) * bound2)
        b2.append((torch.rand(10, generator=g) * 2 - 1) * bound2)
        orders.append(torch.stack([torch.randperm(len(xt), generator=g)
                                   for _ in range(epochs)]))
    params = [torch.stack(p).requires_grad_() for p in (w1, b1, w2, b2)]
    order = torch.stack(orders)  # (k, epochs, n)
    lr = torch.tensor(lrs).view(k, 1, 1)
    steps = len(xt) // batch
    for e in range(epochs):
        for i in range(steps):
            idx = order[:, e, i * batch:(i + 1) * batch]  # (k, batch)
            xb, yb = xt[idx], yt[idx]
            h = torch.relu(torch.bmm(xb, params[0]) + params[1].unsqueeze(1))
            out = torch.bmm(h, params[2]) + params[3].unsqueeze(1)
            # Sum over models of each model's mean loss: each gradient is its own model's.
            loss = torch.nn.functional.cross_entropy(out.reshape(-1, 10), yb.reshape(-1),
                                                     reduction="sum") / batch
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, gr in zip(params, grads, strict=True):
                    p -= lr.view(k, *([1] * (p.dim() - 1))) * gr
    with torch.no_grad():
        xs = xv.unsqueeze(0).expand(k, -1, -1)
        h = torch.relu(torch.bmm(xs, params[0]) + params[1].unsqueeze(1))
        out = torch.bmm(h, params[2]) + params[3].unsqueeze(1)
        losses = torch.nn.functional.cross_entropy(
            out.reshape(-1, 10), yv.repeat(k), reduction="none").view(k, -1).mean(1)
    return [float(v) for v in losses]


def _cell(arm: str, values: list[float], seeds: list[int]) -> CellResult:
    return CellResult("aa", f"name={arm}", {"name": arm}, "cpu",
                      tuple(SeedResult(seed=s, curves={"val_loss": [v]})
                            for s, v in zip(seeds, values, strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--corr-seeds", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()

    n = args.corr_seeds
    seeds = list(range(n))
    both = train(seeds + seeds, [0.1] * n + [0.11] * n)
    lo, hi = both[:n], both[n:]
    rho = statistics.correlation(lo, hi)
    diffs = [a - b for a, b in zip(hi, lo, strict=True)]
    same_sign = max(sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)) / n

    k = args.seeds
    total = 2 * k * args.trials
    losses = train(list(range(10_000, 10_000 + total)), [0.1] * total)
    claim = compare(metric("val_loss").final(), lower={"name": "a"}, than={"name": "b"})
    counts = {"pass": 0, "fail": 0, "inconclusive": 0}
    for t in range(args.trials):
        base = 10_000 + 2 * k * t
        va, vb = losses[2 * k * t: 2 * k * t + k], losses[2 * k * t + k: 2 * k * (t + 1)]
        sa, sb = list(range(base, base + k)), list(range(base + k, base + 2 * k))
        verdict = claim.judge({"a": _cell("a", va, sa), "b": _cell("b", vb, sb)}, args.alpha)
        counts[verdict.outcome] += 1
    rates = {o: c / args.trials for o, c in counts.items()}
    seconds = time.perf_counter() - t0

    print(tabulate([
        ["correlation of final val_loss, lr 0.1 vs 0.11, same seeds", f"{rho:.3f}", n],
        ["share of seeds where lr 0.11 - lr 0.1 has the majority sign", f"{same_sign:.2f}", n],
        [f"real A/A compare, {k} seeds a side: false pass", f"{rates['pass']:.3f}",
         args.trials],
        ["real A/A compare: fail (also false)", f"{rates['fail']:.3f}", args.trials],
    ], headers=["measure", "value", "seeds / trials"], disable_numparse=True))
    print(f"\nalpha={args.alpha}; tiny MLPs on digits, 3 epochs, batch 64; {seconds:.1f}s")
    if args.json:
        args.json.write_text(json.dumps({
            "alpha": args.alpha, "rho_lr_0.1_vs_0.11": rho, "corr_seeds": n,
            "same_sign_share": same_sign, "aa_trials": args.trials, "aa_seeds_per_side": k,
            "aa_rates": rates, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
