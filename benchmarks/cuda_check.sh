#!/usr/bin/env bash
# The CUDA checks in one short script: the CUDA tests, then the GPU throughput and simulator benchmarks.
# Usage (repository root, on a machine with a CUDA GPU and torch installed; on the lent
# machines carry .whl from benchmarks/gpu_wheels.sh):
#   bash benchmarks/cuda_check.sh [OUTDIR]
# Writes OUTDIR/pytest-gpu.log, OUTDIR/gpu_throughput.json, OUTDIR/simulator-cuda.json and
# OUTDIR/bench.log.
# The benchmark skips what is slow and uninformative on a GPU at these sizes (first-order and
# rk4 rows, torch.compile's Triton builds, the hh_tree case whose peers are CPU programs).
# Only the test files with gpu tests are collected: the others import packages (pyabf, NEURON)
# a GPU image may lack, and one collection error would stop the whole run.
set -uo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (benchmarks/gpu_wheels.sh): pyro, arviz
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
python3 -m pytest -q -m gpu -p no:cacheprovider $(grep -l 'mark.gpu' tests/test_*.py) 2>&1 | tee "$out/pytest-gpu.log"
# the GPU must-show first (throughput against the CPU kernel), then the simulator table
python3 benchmarks/gpu_throughput.py --threads 2 --repeat 2 --json "$out/gpu_throughput.json" \
    2>&1 | tee "$out/bench.log"
python3 benchmarks/simulator.py --device cuda --cases paper_toy,l23_cell --repeat 2 --budget 10 \
    --skip 'be-|rk4|compiled' --timeout 100 --json "$out/simulator-cuda.json" 2>&1 | tee -a "$out/bench.log"
