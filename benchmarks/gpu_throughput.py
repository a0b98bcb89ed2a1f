"""GPU throughput against the fused CPU kernel, in one run on one machine.

Three problems (issue "184-compartment experiment … scale", GPU part):

* ``paper_particles`` — the paper's 6-compartment cell, 1000 parameter particles × 20 of the
  paper's traces (its currents and 48-point grid), Crank–Nicolson dt 0.004 ms, forward and the
  gradient of a summed MSE w.r.t. every particle's g_Na, g_K (what SVI, SMC or importance
  sampling needs per step);
* ``l23_gradient`` — the human L2/3 cell at d_lambda 0.04 (≥ 1000 compartments), 10 soma steps,
  50 ms, dt 0.025 ms, forward and the gradient w.r.t. every compartment's g_Na;
* ``l23_particles`` — the same cell and traces for ``--l23-particles`` parameter particles (every
  compartment's g_Na drawn from base × U(0.7, 1.3)), the gradient w.r.t. all of them: the batch
  a sampler or a design criterion evaluates on a large cell. The CPU kernel runs
  ``--cpu-particles`` of them (its time grows linearly in the traces it is given, one thread
  per trace block; the full batch would take minutes), so here the speed-up is a ratio of
  throughputs (traces per second), not of times.

Rows: ``fused-cpu`` (the C kernel, float64, ``--threads`` threads), ``torch-cuda`` (the
torch backend on the GPU, float64 and float32, and float32 with every step fused by
``torch.compile``: its warm-up call compiles) and ``triton-cuda`` (the whole-trajectory Triton
kernels, :mod:`bayesneuron.simulation.gpu_kernel`: forward, and the adjoint for gradients).
Every row's forward voltages are compared with the CPU kernel's (``max_abs_vs_cpu_mv``, on the
traces both ran). Times are best of ``--repeat`` after a warm-up; the speed-up is the row's
throughput (traces per second) over fused-cpu's (> 1: faster than the CPU kernel); where both
ran the same batch, that is fused-cpu time / row time.

    python benchmarks/gpu_throughput.py [--cases paper_particles,l23_gradient,l23_particles] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time

import numpy as np
import torch


def _paper(device, dtype, n_particles: int, n_traces: int):
    from bayesneuron.reference.paper import paper_currents, paper_time_grid, paper_toy_cell

    cell = paper_toy_cell()
    stim = paper_currents(n_traces=n_traces)
    stim = type(stim)(stim.values.to(device=device, dtype=dtype), dt=stim.dt, t0=stim.t0)
    rng = np.random.default_rng(0)
    base = {"g_na": 100.0, "g_k": 45.0}
    params = {
        k: torch.tensor(b * rng.uniform(0.7, 1.3, (n_particles, 1, 6)), dtype=dtype, device=device)
        for k, b in base.items()
    }  # [particle, 1 (broadcast over traces), comp]
    return cell, stim, paper_time_grid(), params, 0.004


def _l23(device, dtype, n_particles: int | None = None):
    """The L2/3 cell's 10 soma steps; ``g_na`` ``[comp]`` (the cell's), or ``[particle, 1,
    comp]`` drawn from base × U(0.7, 1.3) (seeded: the CPU's particles are the GPU's first)."""
    from bayesneuron import step_current
    from bayesneuron.reference.cells import l23_cell

    cell = l23_cell(d_lambda=0.04)
    amps = np.linspace(0.1, 1.0, 10)
    stim = step_current(amps, 0, cell.n_comp, 1.0, 40.0, 50.0, dt=1.0)
    stim = type(stim)(stim.values.to(device=device, dtype=dtype), dt=stim.dt, t0=stim.t0, unit="nA")
    g = np.asarray(cell.params["g_na"], dtype=float)
    if n_particles is not None:
        scale = np.random.default_rng(0).uniform(0.7, 1.3, (1024, 1, cell.n_comp))
        g = g * scale[:n_particles]
    g = torch.tensor(g, dtype=dtype, device=device)
    return cell, stim, np.arange(2001) * 0.025, {"g_na": g}, 0.025


def _problem(case: str, dev, dtype, args, cpu: bool):
    """``(cell, stimulus, t_eval, params, dt, traces)`` of a case; ``traces``: the simulations
    (particles × traces) one call runs."""
    if case == "paper_particles":
        return (*_paper(dev, dtype, args.particles, args.traces), args.particles * args.traces)
    if case == "l23_particles":
        n = args.cpu_particles if cpu else args.l23_particles
        return (*_l23(dev, dtype, n), 10 * n)
    return (*_l23(dev, dtype), 10)


def _measure(
    case: str, device: str, dtype, backend: str, repeat: int, args, compile_=False, ref_v=None
) -> tuple[dict, torch.Tensor]:
    """Best-of-``repeat`` times of the forward and the forward + gradient; the forward's
    voltages (CPU, float64) and their largest difference from ``ref_v`` (mV)."""
    from bayesneuron import CrankNicolson, simulate

    dev = torch.device(device)
    cell, stim, t, params, dt, traces = _problem(case, dev, dtype, args, dev.type == "cpu")
    solver = CrankNicolson(dt=dt, backend=backend, compile=compile_)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def fwd():
        with torch.no_grad():
            return simulate(cell, params, stim, t, solver=solver, dtype=dtype, device=dev).v

    def fwd_bwd():
        p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        v = simulate(cell, p, stim, t, solver=solver, dtype=dtype, device=dev).v
        ((v + 65.0) ** 2).mean().backward()
        return p

    out = {"traces": traces}
    if dev.type == "cuda" and backend == "auto":  # the Triton kernels must take this row
        from bayesneuron.simulation.gpu_kernel import supported

        reason = supported(cell, solver, dev, None, [x.requires_grad_() for x in params.values()])
        if reason is not None:
            raise RuntimeError(reason)
    jobs = (("fwd_s", fwd), ("fwd_bwd_s", fwd_bwd))
    v = fwd().detach().to("cpu", torch.float64)
    if ref_v is not None:  # the CPU's batch is this one's first particles
        out["max_abs_vs_cpu_mv"] = float((v[: len(ref_v)] - ref_v).abs().max())
    for name, fn in jobs:
        fn()
        sync()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        out[name] = min(times)
        out[name + "_range"] = [min(times), max(times)]
        out[name[:-2] + "_traces_per_s"] = traces / min(times)
    if dev.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out, v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="paper_particles,l23_gradient,l23_particles")
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--traces", type=int, default=20)
    ap.add_argument("--l23-particles", type=int, default=128)
    ap.add_argument("--cpu-particles", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--skip",
        default="l23_.*/torch-cuda",
        help="regex on 'case/impl' of rows not to run (default: the torch backend on the L2/3 "
        "cell, 0.03x the CPU kernel on an H200, benchmarks/README.md; '' runs every row)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    impls = [("fused-cpu", "cpu", torch.float64, "fused", False)]
    if torch.cuda.is_available():
        impls += [  # the Triton kernels first: the rows the GPU is measured by
            ("triton-cuda-f64", "cuda", torch.float64, "auto", False),
            ("triton-cuda-f32", "cuda", torch.float32, "auto", False),
            ("torch-cuda-f64", "cuda", torch.float64, "torch", False),
            ("torch-cuda-f32", "cuda", torch.float32, "torch", False),
            ("torch-cuda-f32-compiled", "cuda", torch.float32, "torch", True),
        ]
    for case in args.cases.split(","):
        ref, ref_v = None, None
        for impl, device, dtype, backend, compile_ in impls:
            if args.skip and re.search(args.skip, f"{case}/{impl}"):
                continue
            r = {"case": case, "impl": impl}
            try:
                res, v = _measure(case, device, dtype, backend, args.repeat, args, compile_, ref_v)
                r |= res
            except Exception as e:  # noqa: BLE001 — a failed row is reported, not fatal
                r["error"] = f"{type(e).__name__}: {e}"[:300]
            if impl == "fused-cpu" and "error" not in r:
                ref, ref_v = r, v
            if ref is not None and "error" not in r:
                for k in ("fwd", "fwd_bwd"):
                    r[f"speedup_{k}"] = r[f"{k}_traces_per_s"] / ref[f"{k}_traces_per_s"]
            rows.append(r)
            _write(args.json, rows, args)
            print(
                f"{case:16s} {impl:24s} "
                + (
                    f"{r['traces']:6d} traces  "
                    f"fwd {r['fwd_s']:8.3f} s  fwd+bwd {r['fwd_bwd_s']:8.3f} s  "
                    f"speedup {r.get('speedup_fwd', float('nan')):6.2f} / "
                    f"{r.get('speedup_fwd_bwd', float('nan')):6.2f}  "
                    f"max|ΔV| vs cpu {r.get('max_abs_vs_cpu_mv', float('nan')):.1e} mV"
                    if "error" not in r
                    else r["error"]
                ),
                flush=True,
            )


def _write(path, rows: list, args) -> None:
    """The JSON file, rewritten after every row (a run cut short keeps what it measured)."""
    if not path:
        return
    machine = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": args.threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with open(path, "w") as fh:
        json.dump({"machine": machine, "args": vars(args), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
