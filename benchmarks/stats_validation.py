"""How honest are hpspec's statistical verdicts? A/A and A/B runs on synthetic seeds.

    python benchmarks/stats_validation.py [--trials 2000] [--json PATH]

A/A (effect 0): two cells with the same distribution (independent seeds, unpaired tests); a
"pass" of "a is lower than b" is a false positive and must stay at or below alpha (0.05). A/B
(effect d, in units of the per-seed standard deviation): the pass rate is the power. Adaptive
rows use seeds=hp.adaptive(min=3, max=20, step=2) and report the mean number of seeds per cell used.

Paired vs unpaired: the two sides share seed ids and their values for one seed correlate by
``--rho`` (default 0.5, a deliberately modest value: ``benchmarks/real_aa.py`` measures 0.999
for lr 0.1 vs 0.11 on digits, where pairing helps far more). Equivalence / non-inferiority
rows put the true difference exactly on the margin, where every pass is false. "seeds for a
0.5-sd effect" is the smallest seeds per cell that reach 80% power (t-based formula, then
checked by simulation).
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

from hpspec.simulate import compare_trials, margin_trials  # noqa: E402
from hpspec.stats import adaptive, seeds_needed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rho", type=float, default=0.5)
    ap.add_argument("--designs-only", action="store_true",
                    help="only the paired / unpaired / equivalence / non-inferiority rows")
    args = ap.parse_args()

    plans = [("fixed 3", 3), ("fixed 5", 5), ("fixed 10", 10), ("fixed 20", 20),
             ("adaptive 3..20", adaptive(3, 20, 2))]
    rows = []
    t0 = time.perf_counter()
    for effect in () if args.designs_only else (0.0, 1.0, 2.0):
        for label, seeds in plans:
            r = compare_trials(args.trials, effect, seeds, args.alpha, seed=1, paired=False)
            rows.append({"effect_sd": effect, "seeds": label, "trials": r.trials,
                         "pass": r.passed, "fail": r.failed, "inconclusive": r.inconclusive,
                         "mean_seeds_per_cell": r.mean_seeds})
    margin = 3 * math.sqrt(args.alpha * (1 - args.alpha) / args.trials)
    rho = args.rho
    design = []
    for label, paired in (("paired t", True), ("unpaired Welch", False)):
        aa = compare_trials(args.trials, 0.0, 5, args.alpha, seed=2, rho=rho, paired=paired)
        sd = math.sqrt(2 * (1 - rho))
        n = seeds_needed(0.5, sd, None, args.alpha) if paired else \
            seeds_needed(0.5, 1.0, 1.0, args.alpha)
        power = compare_trials(args.trials, 0.5, n, args.alpha, seed=3, rho=rho,
                               paired=paired).passed
        design.append({"test": f"compare, {label} (rho={rho})", "false_pass": aa.passed,
                       "false_fail": aa.failed, "seeds_0.5sd": n, "power_at_those_seeds": power})
    for kind, diff in (("equivalent", 0.5), ("noninferior", -0.5)):
        for label, paired in (("paired", True), ("unpaired", False)):
            r = margin_trials(kind, args.trials, diff, 0.5, 10, args.alpha, seed=4, rho=rho,
                              paired=paired)
            design.append({"test": f"{kind}, margin 0.5 sd = true difference, 10 seeds, "
                           f"{label}", "false_pass": r.passed, "false_fail": None,
                           "seeds_0.5sd": None, "power_at_those_seeds": None})
    print(tabulate(
        [[d["test"], f"{d['false_pass']:.3f}",
          "-" if d["false_fail"] is None else f"{d['false_fail']:.3f}",
          d["seeds_0.5sd"] or "-",
          "-" if d["power_at_those_seeds"] is None else f"{d['power_at_those_seeds']:.2f}"]
         for d in design],
        headers=["claim, test", "false pass", "false fail (A/A)", "seeds for 0.5 sd",
                 "power there"], disable_numparse=True))
    print()
    print(tabulate(
        [[r["effect_sd"], r["seeds"], f"{r['pass']:.3f}", f"{r['fail']:.3f}",
          f"{r['inconclusive']:.3f}", f"{r['mean_seeds_per_cell']:.1f}"] for r in rows],
        headers=["effect (sd)", "seeds", "pass", "fail", "inconclusive", "seeds/cell"],
    ))
    print(f"\nalpha={args.alpha}, {args.trials} trials per row, 3-sigma sampling margin "
          f"{margin:.3f}; effect 0 rows: 'pass' is the false-positive rate; "
          f"{time.perf_counter() - t0:.1f}s")
    if args.json:
        args.json.write_text(json.dumps({"alpha": args.alpha, "margin": margin, "rows": rows,
                                         "designs": design, "rho": rho},
                                        indent=2))


if __name__ == "__main__":
    main()
