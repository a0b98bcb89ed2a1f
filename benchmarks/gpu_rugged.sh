#!/usr/bin/env bash
# Issue 13 on a GPU: HMC-within-SMC on the rugged soma-recorded design [0,-1]|[0] of
# studies/paper_toy_identifiability, the populations simulated on CUDA (the MAP and Laplace
# on the CPU, never from the truth), then compared with the study's reported posterior.
# Usage (repository root, a CUDA GPU, torch and Triton installed; on the lent machines
# carry .whl from benchmarks/gpu_wheels.sh):
#   bash benchmarks/gpu_rugged.sh [OUTDIR] [PARTICLES] [SECONDS]
# Writes OUTDIR/smc/<design>.{npz,json} (R̂, ESS, truth |z|, wall time), OUTDIR/compare.json
# and OUTDIR/rugged.log. On 2 CPU cores 2 × 256 particles took ≈ 100 core-minutes (session 14).
set -uo pipefail
out=${1:-benchmarks/results/rugged_posteriors/gpu}
particles=${2:-1024}
seconds=${3:-420}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (benchmarks/gpu_wheels.sh): pyro, arviz
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
# SECONDS is the SMC's own budget (--max-seconds: it stops where it is and writes what it
# reached, not ok); the MAP and Laplace before it take ≈ 1-2 min more on the CPU.
timeout $((seconds + 240)) python3 benchmarks/rugged_posteriors.py run --method smc --kernel hmc \
    --max-moves 6 --particles "$particles" --settle 30 --designs "[0,-1]|[0]" \
    --max-seconds "$seconds" --device cuda --out "$out" 2>&1 | tee "$out/rugged.log"
python3 benchmarks/rugged_posteriors.py compare --reference smc --designs "[0,-1]|[0]" \
    --study-reference studies/paper_toy_identifiability/reference --out "$out" \
    --json "$out/compare.json" 2>&1 | tee -a "$out/rugged.log"
