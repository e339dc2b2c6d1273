"""hpspec's command-line and ini options: their parsers (plain functions, also used by
:func:`hpspec.run`) and their registration with pytest (:func:`add_options`).

Imports neither pytest nor torch: :func:`add_options` receives pytest's parser.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpspec.measures import COLUMNS as MEASURE_COLUMNS
from hpspec.vocabulary import CACHE_MODES, HOLM_SCOPES, INCONCLUSIVE_AS, TABLE_STYLES

TABLE_CHOICES = TABLE_STYLES
INCONCLUSIVE_CHOICES = INCONCLUSIVE_AS
HOLM_CHOICES = HOLM_SCOPES


def parse_device(value: str) -> str:
    value = value.strip().lower()
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        return value
    raise argparse.ArgumentTypeError(
        f"--hpspec-device: {value!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
    )


def parse_table(value: str) -> str:
    value = value.strip().lower()
    if value in TABLE_CHOICES:
        return value
    raise argparse.ArgumentTypeError(
        f"--hpspec-table: {value!r} is not one of {', '.join(TABLE_CHOICES)}"
    )


def parse_columns(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z_][\w.<>=+-]*", n)]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"--hpspec-columns: {value!r} is not a comma-separated list of column names; "
            "e.g. --hpspec-columns=verdict,val_acc,samples_per_s,peak_memory"
        )
    return names


def _choice(flag: str, choices: tuple[str, ...]) -> Any:
    def parse(value: str) -> str:
        value = value.strip().lower()
        if value in choices:
            return value
        raise argparse.ArgumentTypeError(f"{flag}: {value!r} is not one of {', '.join(choices)}")

    return parse


parse_cache = _choice("--hpspec-cache", CACHE_MODES)
parse_stack = _choice("--hpspec-stack", ("on", "off"))
parse_inconclusive = _choice("--hpspec-inconclusive", INCONCLUSIVE_CHOICES)
parse_holm = _choice("--hpspec-holm", HOLM_CHOICES)


def parse_threads_option(value: str) -> Any:
    from hpspec.threads import parse_threads

    try:
        return parse_threads(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_timeout(value: str) -> float | None:
    if value.strip().lower() in ("", "none", "0"):
        return None
    try:
        t = float(value)
    except ValueError:
        t = math.nan
    if not 0 < t < math.inf:
        raise argparse.ArgumentTypeError(
            f"--hpspec-timeout: {value!r} is not a positive number of seconds; e.g. 600")
    return t


def parse_limits_option(value: str) -> Any:
    from hpspec.gate import parse_limits

    try:
        return parse_limits(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--hpspec-compare-fail: {e}") from None


def parse_confidence(value: str) -> float:
    try:
        c = float(value)
    except ValueError:
        c = math.nan
    if not 0.5 <= c < 1:
        raise argparse.ArgumentTypeError(
            f"--hpspec-confidence: {value!r} is not a probability in [0.5, 1); e.g. 0.95"
        )
    return c


def _file_path(text: str) -> str:
    """A file hpspec writes: not empty, not an existing directory."""
    if not text or Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} must be a file path (it names a directory "
                                         "or nothing), e.g. results/run.csv")
    return text


def _dir_path(text: str) -> str:
    """A directory hpspec writes into: not empty, not an existing file."""
    if not text or Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} must be a directory (it names a file or "
                                         "nothing), e.g. runs/tb")
    return text


def run_options_problem(cache: str, save: str | None, compare: str | None,
                        compare_fail: bool, outputs: Mapping[str, str | None]) -> str | None:
    """What is wrong with this combination of run options, as a usage error's text; None
    when nothing is. ``outputs``: report flag -> path."""
    if cache == "off" and (save or compare):
        if save or not (compare and compare.endswith(".json")):
            return ("--hpspec-cache=off turns the store off, so there is nothing to save to or "
                    "compare with; drop --hpspec-cache=off (or compare with an exported .json)")
    from hpspec.outputs import output_path_problem

    for flag, value in outputs.items():
        problem = output_path_problem(flag, value) if value is not None else None
        if problem:
            return problem
    if compare_fail and not compare:
        return "--hpspec-compare-fail needs a baseline: add --hpspec-compare NAME|latest|FILE.json"
    return None


def add_options(parser: Any) -> None:
    """Register every --hpspec-* option and hpspec_* ini value with pytest's ``parser``."""
    group = parser.getgroup("hpspec", "hpspec: hyperparameter experiments")
    group.addoption(
        "--hpspec-device",
        type=parse_device,
        default=None,
        help="device to train on: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps. "
        "ini: hpspec_device. Default auto.",
    )
    group.addoption(
        "--hpspec-table",
        type=parse_table,
        default=None,
        help="summary table per experiment at the end of the run: full (every column, with "
        "a legend), short (verdict, validation metrics, samples/s, peak memory) or none. "
        "ini: hpspec_table. Default full.",
    )
    group.addoption(
        "--hpspec-columns",
        type=parse_columns,
        default=None,
        metavar="NAMES",
        help="comma-separated columns of the summary table (the grid's axes always come "
        "first): verdict, a metric name (val_loss, ...), diverged, time_to_<metric><op><target>, "
        f"{', '.join(m.name for m in MEASURE_COLUMNS)}. ini: hpspec_columns.",
    )
    group.addoption(
        "--hpspec-confidence",
        type=parse_confidence,
        default=None,
        help="confidence of statistical verdicts (compare, trend, best, mean claims). "
        "ini: hpspec_confidence. Default 0.95.",
    )
    group.addoption(
        "--hpspec-inconclusive",
        type=parse_inconclusive,
        default=None,
        help="what an undecided statistical claim does: fail, skip or xfail. "
        "ini: hpspec_inconclusive. Default fail.",
    )
    group.addoption(
        "--hpspec-holm",
        type=parse_holm,
        default=None,
        help="Holm correction of cross-cell claims: off, experiment (over each experiment's "
        "selected claims) or run (over all selected claims). ini: hpspec_holm. Default off.",
    )
    group.addoption(
        "--hpspec-stack",
        type=parse_stack,
        default=None,
        help="on: cells that differ only in optimizer hyperparameters or seed train together "
        "as one stacked model (same results, much faster for grids of small models); off: one "
        "by one. An experiment can say stack=False. ini: hpspec_stack. Default on.",
    )
    group.addoption(
        "--hpspec-threads",
        type=parse_threads_option,
        default=None,
        metavar="auto|N",
        help="torch intra-op threads per run on the CPU: auto (one thread when the model's "
        "parameters x batch size is under 2**23, else torch's default) or N. Recorded in "
        "the environment and part of the cache key. ini: hpspec_threads. Default auto.",
    )
    group.addoption(
        "--hpspec-full-curves",
        action="store_true",
        default=None,
        help="train every seed for all its epochs, even when its claims are decided early.",
    )
    group.addoption(
        "--hpspec-timeout",
        type=parse_timeout,
        default=None,
        metavar="SECONDS",
        help="time budget per cell (all its seeds); a cell past it stops between steps and "
        "fails. An experiment's own timeout= wins. ini: hpspec_timeout. Default none.",
    )
    group.addoption(
        "--hpspec-workers-per-gpu",
        type=int,
        default=1,
        metavar="K",
        help="under pytest-xdist: K workers share each GPU (small models gain from it); "
        "-n auto then starts GPUs x K workers.",
    )
    group.addoption(
        "--hpspec-ray",
        default=None,
        metavar="ADDRESS",
        help="train cells as Ray tasks: local (a private local cluster), auto (the running "
        "cluster this machine belongs to) or ray://HOST:10001. Needs pip install "
        "'hpspec[ray]'. ini: hpspec_ray.",
    )
    group.addoption("--hpspec-ray-gpus", type=float, default=0.0, metavar="N",
                    help="GPUs per Ray task (fractions share a GPU: 0.25). Default 0.")
    group.addoption("--hpspec-ray-cpus", type=int, default=None, metavar="N",
                    help="CPUs of the local cluster --hpspec-ray=local starts (default: all).")
    group.addoption(
        "--hpspec-store",
        default=None,
        metavar="PATH",
        help="the SQLite results store (default .hpspec/results.sqlite under the rootdir). "
        "ini: hpspec_store.",
    )
    group.addoption(
        "--hpspec-cache",
        type=parse_cache,
        default=None,
        help="use: a cell whose cache key has stored results is not retrained; refresh: "
        "retrain and store; off: no store at all. ini: hpspec_cache. Default use.",
    )
    group.addoption("--hpspec-save", default=None, metavar="NAME",
                    help="name this run in the store, as a baseline to compare with later.")
    group.addoption(
        "--hpspec-compare",
        default=None,
        metavar="NAME|latest|ID|FILE.json",
        help="compare this run's numbers with a baseline: a saved name, latest (the newest "
        "finished run), a run id, or a file written by --hpspec-export.",
    )
    group.addoption(
        "--hpspec-compare-fail",
        type=parse_limits_option,
        default=None,
        metavar="LIMITS",
        help="fail the run when a cell moved past a limit against the baseline: "
        "METRIC:+AMOUNT (a rise fails) or METRIC:-AMOUNT%% (a fall fails), comma-separated, "
        "e.g. val_loss:+0.02,throughput:-10%%.",
    )
    group.addoption("--hpspec-compare-force", action="store_true", default=False,
                    help="compare timings even when the baseline ran on another environment.")
    group.addoption("--hpspec-export", default=None, metavar="FILE",
                    help="write the run as JSON for a CI artifact (the --hpspec-json document "
                    "plus the environment fingerprint); --hpspec-compare FILE reads it back.")
    group.addoption(
        "--hpspec-profile",
        default=None,
        metavar="NAME",
        help="apply a profile: overrides registered with hp.register_profile or given in an "
        "experiment's profiles= (fewer epochs or seeds, a sub-grid). ini: hpspec_profile.",
    )
    group.addoption(
        "--hpspec-inference",
        action="store_true",
        default=None,
        help="after training, profile each cell's model for inference with pytorch-benchmark "
        "(latency at batch 1 and at the batch size, MACs, CUDA inference memory); needs "
        "pip install 'hpspec[inference]'.",
    )
    group.addoption(
        "--hpspec-html",
        default=None,
        metavar="PATH",
        help="write the run as one self-contained HTML file (curves per cell, a heatmap over "
        "two grid axes, the tables; no scripts, no network) to PATH.",
    )
    group.addoption(
        "--hpspec-json",
        default=None,
        metavar="PATH",
        help="write every cell, seed, curve, measurement and verdict, with the environment, "
        "as JSON (schema hpspec-run, version 1) to PATH.",
    )
    group.addoption("--hpspec-csv", default=None, metavar="PATH", type=_file_path,
                    help="write one row per cell and seed (hyperparameters, final metrics, "
                    "measurements) as CSV to PATH.")
    group.addoption("--hpspec-tensorboard", default=None, metavar="DIR", type=_dir_path,
                    help="write each cell's curves as TensorBoard scalars, with its "
                    "hyperparameters and final metrics for the HParams dashboard, under DIR "
                    "(one run per cell and seed); needs pip install 'hpspec[tensorboard]'.")
    group.addoption("--hpspec-grade", default=None, metavar="PATH", type=_file_path,
                    help="grade the run by the claims' points= (1 when not given) and write "
                    "Gradescope's results.json to PATH; the summary shows the scores.")
    parser.addini("hpspec_confidence", "default for --hpspec-confidence", default="0.95")
    parser.addini("hpspec_inconclusive", "default for --hpspec-inconclusive", default="fail")
    parser.addini("hpspec_holm", "default for --hpspec-holm", default="off")
    parser.addini("hpspec_files", "glob patterns of experiment files", type="args",
                  default=["exp_*.py"])
    parser.addini("hpspec_device", "default for --hpspec-device", default="auto")
    parser.addini("hpspec_table", "default for --hpspec-table", default="full")
    parser.addini("hpspec_columns", "default for --hpspec-columns", default="")
    parser.addini("hpspec_stack", "default for --hpspec-stack", default="on")
    parser.addini("hpspec_threads", "default for --hpspec-threads", default="auto")
    parser.addini("hpspec_store", "default for --hpspec-store", default="")
    parser.addini("hpspec_timeout", "default for --hpspec-timeout", default="")
    parser.addini("hpspec_ray", "default for --hpspec-ray", default="")
    parser.addini("hpspec_cache", "default for --hpspec-cache", default="use")
    parser.addini("hpspec_profile", "default for --hpspec-profile", default="")

