"""A run's fixed costs, each in a fresh interpreter, for one hpspec checkout.

    python benchmarks/fixed_cost.py [--root PATH] [--json PATH]

--root is the checkout to measure (default: this one), so that two checkouts (before and
after a change) can be measured side by side. Rows:

  seed_state      entering and leaving torch_state(0) once (what every seed pays first)
  digits_load     hp.datasets.digits().load(), first call (files, split, scaling, imports)
  digest_1024     runner.data_digest(digits) 1,024 times (part of every seed's cache key)
  build_1000      spec.build of a 1,000-value one-axis grid
  build_10000     spec.build of a 10,000-value one-axis grid
  wal_bytes       the store's -wal file after 200 seeds written and the store closed while
                  a second connection (another process, say) still has it open
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SNIPPETS = {
    "seed_state": """
import torch
from hpspec.engine.runner import torch_state
t = time.perf_counter()
with torch_state(0):
    pass
print(time.perf_counter() - t)
""",
    "digits_load": """
import torch, numpy
import hpspec as hp
t = time.perf_counter()
hp.datasets.digits().load()
print(time.perf_counter() - t)
""",
    "digest_1024": """
import hpspec as hp
from hpspec.engine.runner import data_digest
spec = hp.datasets.digits()
t = time.perf_counter()
for _ in range(1024):
    data_digest(spec)
print(time.perf_counter() - t)
""",
    "build_1000": """
import hpspec as hp
from hpspec.spec import build
@hp.experiment(grid=hp.grid(lr=[round(1e-4 * (i + 1), 6) for i in range(1000)]), epochs=1,
               data=hp.datasets.digits(), claims=[hp.expect(~hp.diverges())])
def big(case):
    pass
t = time.perf_counter()
build(big)
print(time.perf_counter() - t)
""",
    "wal_bytes": """
import tempfile
from pathlib import Path
from hpspec.results import SeedResult
from hpspec.store import Store
d = Path(tempfile.mkdtemp())
w, r = Store.open(d / "s.sqlite"), Store.open(d / "s.sqlite")
run = w.begin_run({"device": "cpu"})
for i in range(200):
    w.put_seed(run, f"k{i}", "e", "c", {"lr": 0.1}, "cpu",
               SeedResult(seed=i, curves={"train_loss": [1.0] * 10}))
w.close()
wal = d / "s.sqlite-wal"
print(wal.stat().st_size if wal.exists() else 0)
r.close()
""",
}
SNIPPETS["build_10000"] = SNIPPETS["build_1000"].replace("range(1000)", "range(10000)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.root.resolve())}
    out = {}
    for name, code in SNIPPETS.items():
        # from a neutral directory: `python -c` puts the current one ahead of PYTHONPATH
        run = subprocess.run([sys.executable, "-c", "import time\n" + code], env=env,
                             capture_output=True, text=True, cwd=tempfile.gettempdir())
        if run.returncode != 0:
            sys.exit(f"{name}: {run.stderr[-2000:]}")
        out[name] = float(run.stdout.split()[-1])
        unit = "bytes" if name == "wal_bytes" else "s"
        print(f"{name:<14} {out[name]:10.3f} {unit}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"root": str(args.root), "results": out}, indent=1))


if __name__ == "__main__":
    main()
