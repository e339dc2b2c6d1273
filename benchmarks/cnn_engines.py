"""A step and an evaluation of a stacked small CNN, under ``vmap`` and laid out by hand.

    python benchmarks/cnn_engines.py [--members 64] [--reps 5] [--threads 1] [--json PATH]

The CNN of ``benchmarks/grid_shapes.py`` (digits as 1x8x8 images, conv 1->4 3x3, ReLU,
max-pool 2, linear 64->10), SGD momentum 0.9, batch 64: K members built as one stack by
``hpspec.engine.vmapped.FuncEngine`` (``torch.func.vmap``) and by
``hpspec.engine.layered.LayeredEngine`` (grouped/depthwise convolutions on channels-last
tensors), on the CPU. Times, interleaved, the median of --reps rounds of: 20 training steps
(each member its own batch) and 3 evaluations of the validation set (360 rows), per step and
per evaluation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from grid_shapes import cnn  # noqa: E402

import hpspec as hp  # noqa: E402
from hpspec.engine.layered import LayeredEngine  # noqa: E402
from hpspec.engine.stacked import Member, _per_cell_loss, _stacked_optimizer  # noqa: E402
from hpspec.engine.vmapped import FuncEngine  # noqa: E402


def members(k: int) -> list[Member]:
    out = []
    for i in range(k):
        torch.manual_seed(i)
        model = cnn()
        out.append(Member("cnn", i, model,
                          torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = hp.datasets.digits().load()
    k = args.members

    def opt(params, groups):
        return _stacked_optimizer("sgd", params, groups)

    engines = {
        "vmap": FuncEngine(members(k), "cpu", opt, _per_cell_loss, "ce", data.task,
                           first_batch=data.x_train[:64]),
        "by hand": LayeredEngine(members(k), "cpu", opt, _per_cell_loss, "ce", data.task,
                                 data.x_train[:2]),
    }
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, data.x_train.shape[0], (k, 64), generator=g)
    xb, yb = data.x_train[idx], data.y_train[idx]
    times: dict[str, dict[str, list[float]]] = {n: {"step": [], "eval": []} for n in engines}
    for e in engines.values():  # warm-up
        e.step(xb, yb)
        e.evaluate(data.x_val, data.y_val)
    for _ in range(args.reps):
        for name, e in engines.items():
            t = time.perf_counter()
            for _ in range(20):
                e.step(xb, yb)
            times[name]["step"].append((time.perf_counter() - t) / 20)
            t = time.perf_counter()
            for _ in range(3):
                e.evaluate(data.x_val, data.y_val)
            times[name]["eval"].append((time.perf_counter() - t) / 3)
    med = {n: {w: statistics.median(v) * 1000 for w, v in d.items()} for n, d in times.items()}
    print(f"cpu, {torch.get_num_threads()} thread(s); torch {torch.__version__}; {k} members; "
          f"median of {args.reps}")
    for name, d in med.items():
        print(f"{name:8s} step {d['step']:7.2f} ms   evaluation (360 rows) {d['eval']:7.2f} ms")
    print(f"vmap / by hand: step {med['vmap']['step'] / med['by hand']['step']:.1f}x, "
          f"evaluation {med['vmap']['eval'] / med['by hand']['eval']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "reps": args.reps,
                                         "members": k, "torch": torch.__version__,
                                         "ms": med}, indent=1))


if __name__ == "__main__":
    main()
