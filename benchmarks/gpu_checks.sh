#!/usr/bin/env bash
# Every GPU check in one prepared run, for a session lent a GPU machine:
#   OUT=gpu-out bash benchmarks/gpu_checks.sh
# The CUDA-only tests (skipped on a CPU), the grid benchmark on the card (K up to 256), and the
# measurement cross-check; outputs and JSON go to $OUT. Runs from the repository root without
# installing hpspec (PYTHONPATH), so the device image's torch, pytest and scikit-learn do.
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -m pytest -q -p no:cacheprovider tests/test_stacked.py -k cuda -rs 2>&1 | tee "$out/tests.txt"
ref=()
[ -f ../shared/reference/grid_bench.py ] && ref=(--reference ../shared/reference/grid_bench.py)
python benchmarks/grid_speed.py --device cuda --cells 1,16,64,256 --reps 3 "${ref[@]}" \
    --json "$out/grid_speed_cuda.json" 2>&1 | tee "$out/grid_speed.txt"
python benchmarks/measure_check.py --device cuda --json "$out/measure_check_cuda.json" 2>&1 \
    | tee "$out/measure_check.txt"
