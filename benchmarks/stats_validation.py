"""How honest are hpspec's statistical verdicts? A/A and A/B runs on synthetic seeds.

    python benchmarks/stats_validation.py [--trials 2000] [--json PATH]

A/A (effect 0): two cells with the same distribution; a "pass" of "a is lower than b" is a
false positive and must stay at or below alpha (0.05). A/B (effect d, in units of the
per-seed standard deviation): the pass rate is the power. Adaptive rows use
seeds=hp.adaptive(min=3, max=20, step=2) and report the mean number of seeds per cell used.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tabulate import tabulate  # noqa: E402

from hpspec.simulate import compare_trials  # noqa: E402
from hpspec.stats import adaptive  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    plans = [("fixed 3", 3), ("fixed 5", 5), ("fixed 10", 10), ("fixed 20", 20),
             ("adaptive 3..20", adaptive(3, 20, 2))]
    rows = []
    t0 = time.perf_counter()
    for effect in (0.0, 1.0, 2.0):
        for label, seeds in plans:
            r = compare_trials(args.trials, effect, seeds, args.alpha, seed=1)
            rows.append({"effect_sd": effect, "seeds": label, "trials": r.trials,
                         "pass": r.passed, "fail": r.failed, "inconclusive": r.inconclusive,
                         "mean_seeds_per_cell": r.mean_seeds})
    margin = 3 * math.sqrt(args.alpha * (1 - args.alpha) / args.trials)
    print(tabulate(
        [[r["effect_sd"], r["seeds"], f"{r['pass']:.3f}", f"{r['fail']:.3f}",
          f"{r['inconclusive']:.3f}", f"{r['mean_seeds_per_cell']:.1f}"] for r in rows],
        headers=["effect (sd)", "seeds", "pass", "fail", "inconclusive", "seeds/cell"],
    ))
    print(f"\nalpha={args.alpha}, {args.trials} trials per row, 3-sigma sampling margin "
          f"{margin:.3f}; effect 0 rows: 'pass' is the false-positive rate; "
          f"{time.perf_counter() - t0:.1f}s")
    if args.json:
        args.json.write_text(json.dumps({"alpha": args.alpha, "margin": margin, "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
