"""End-to-end MAP fit timings: the paper's all|all fit (its protocol: Adam lr 0.5, 200 steps)
and bayesneuron's Levenberg–Marquardt MAP, each in a fresh process, wall clock from process
start (imports, data generation, JIT or compilation and the fit all included).

    python benchmarks/fit.py [--backends defaults,fused,torch] [--dt 0.0037]
                             [--threads 2] [--repeat 3] [--json FILE]

Backends: ``defaults`` is the API with every default (``paper_experiment(Design())`` and
``fit_map(model, v, protocol=...)``: no solver, dt or backend given — what a new user runs);
``fused`` and ``torch`` pass ``CrankNicolson(dt=--dt, backend=...)``. The fused kernel is C,
compiled at first use: each fused configuration runs in fresh processes ``cold`` (the C build's
cache emptied first) and ``warm``, so compilation cost is visible apart;
``--repeat N`` runs each N times, alternating cold and warm, and the table shows the median
(a shared VM's timings vary by ±10 %); the JSON keeps every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[4]))
from bayesneuron import CrankNicolson, Design, fit_map, paper_experiment
backend, dt, protocol = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if backend == "defaults":  # the API as a new user calls it; truth only scores (GTE)
    model, v, truth = paper_experiment(Design())
    t1 = time.perf_counter()
    fit = fit_map(model, v, protocol=protocol, truth=truth, progress=False)
else:
    solver = CrankNicolson(dt=dt, backend=backend)
    model, v, truth = paper_experiment(Design(), solver=solver)
    t1 = time.perf_counter()
    fit = fit_map(model, v, protocol=protocol, truth=truth, n_starts=1, progress=False)
t2 = time.perf_counter()
print(json.dumps({"L0": float(fit.history["mse"][0, 0]), "L_final": float(fit.history["mse"][-1, 0]),
  "gte": fit.gte(), "steps": fit.steps, "n_simulations": fit.n_simulations,
  "setup_s": t1 - t0, "fit_s": t2 - t1, "total_s": t2 - t0}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="defaults,fused,torch")
    ap.add_argument("--protocols", default="paper,bayesneuron")
    ap.add_argument(
        "--dt",
        type=float,
        default=0.0037,
        help="ms (0.0037: < 0.3 mV, the paper's own error, and L0 34.2647, within 0.01 of the paper's)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch/kernel threads (2 cores here)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration (median shown)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    backends = args.backends.split(",")
    configs = [
        (protocol, backend, state)
        for protocol in args.protocols.split(",")
        for backend in backends
        for state in (("cold", "warm") if backend in ("defaults", "fused") else ("-",))
    ]
    c_cache = Path(tempfile.mkdtemp(prefix="bayesneuron-bench-"))
    for rep in range(args.repeat):
        for protocol, backend, state in configs:
            if state == "cold":
                shutil.rmtree(c_cache, ignore_errors=True)
            env = dict(os.environ, PYTHONPATH=str(ROOT), BAYESNEURON_CACHE_DIR=str(c_cache))
            t0 = time.perf_counter()
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    backend,
                    str(args.dt),
                    protocol,
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                rows.append(
                    {
                        "protocol": protocol,
                        "backend": backend,
                        "cache": state,
                        "error": out.stderr.strip().splitlines()[-1],
                    }
                )
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "protocol": protocol,
                    "backend": backend,
                    "cache": state,
                    "repeat": rep,
                    "dt": args.dt,
                    "process_wall_s": wall,
                    **res,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(
        f"{'protocol':<12}{'backend':<14}{'cache':<6}{'L0':>9}{'GTE Na':>9}{'GTE K':>9}"
        f"{'fit s':>8}{'total s':>9}"
    )
    for protocol, backend, state in configs:
        runs = [
            r
            for r in rows
            if (r["protocol"], r["backend"], r["cache"]) == (protocol, backend, state)
        ]
        if any("error" in r for r in runs):
            err = next(r["error"] for r in runs if "error" in r)
            print(f"{protocol:<12}{backend:<14}{state:<6} error: {err}")
            continue
        r = runs[0]
        fit_s = statistics.median(x["fit_s"] for x in runs)
        wall = [x["process_wall_s"] for x in runs]
        spread = f"  ({min(wall):.1f}–{max(wall):.1f})" if len(wall) > 1 else ""
        print(
            f"{protocol:<12}{backend:<14}{state:<6}{r['L0']:9.4f}"
            f"{r['gte']['g_na']:9.4f}{r['gte']['g_k']:9.4f}{fit_s:8.1f}"
            f"{statistics.median(wall):9.1f}{spread}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    shutil.rmtree(ROOT / "benchmarks" / "__pycache__", ignore_errors=True)
    shutil.rmtree(c_cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
