"""Is the posterior of the paper's 6-compartment cell calibrated when it is computed from the
data only? Simulation-based calibration (:func:`bayesneuron.inference.calibration.sbc`).

    python benchmarks/sbc.py [--method laplace|escalating|svi] [--runs 100] [--traces 5]
        [--dt 0.004] [--draws 99] [--starts 4] [--steps 30] [--design "all|all"]
        [--noise 1.0] [--data-noise SD] [--seed 0] [--smoke] [--json FILE] [--figures PREFIX]

Per run: truths g_Na, g_K [6 each] from the prior base · U(0.7, 1.3); data on the paper's
48-point grid, ``--traces`` of the paper's currents (seed 20230619), Crank–Nicolson ``--dt``,
plus N(0, ``--noise``²) mV; a Levenberg–Marquardt MAP from ``--starts`` starts (the base values
and prior draws — never the truth); then the posterior at that MAP (``laplace``), or the
escalating ladder svi:mvn → svi:iaf → importance (``escalating``). Prints per-parameter χ²
p-values and ECDF-band checks, failure counts, methods used, pass/fail and the wall time;
``--json`` writes it all, ``--figures PREFIX`` writes ``PREFIX_ranks.png`` and
``PREFIX_ecdf.png``. ``--smoke``: 3 runs on 2 traces, dt 0.02 ms, 19 draws (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def _model(args):
    from bayesneuron.inference.priors import ScaledUniformPrior
    from bayesneuron.protocol.design import Design
    from bayesneuron.reference.presets import get_preset
    from bayesneuron.simulation.solvers import CrankNicolson

    model, _, _ = get_preset("paper_toy").experiment(
        Design.from_label(args.design),
        n_traces=args.traces,
        noise_sigma=0.0,
        sigma=args.noise,
        priors=ScaledUniformPrior(0.7, 1.3),
        solver=CrankNicolson(dt=args.dt),
    )
    return model  # only the model: sbc simulates every run's data from its own truth


def _fit_kwargs(args) -> dict | None:
    if args.method == "escalating":
        return dict(svi=dict(max_steps=args.svi_steps), psis_samples=args.psis)
    if args.method == "svi":
        return dict(max_steps=args.svi_steps)
    return None


def run(args) -> dict:
    import torch

    from bayesneuron.inference.calibration import sbc

    torch.set_num_threads(args.threads)
    model = _model(args)
    res = sbc(
        model,
        args.runs,
        method=args.method,
        n_draws=args.draws,
        noise_sigma=args.data_noise,
        seed=args.seed,
        map_starts=args.starts,
        map_steps=args.steps,
        fit_kwargs=_fit_kwargs(args),
        progress=not args.quiet,
    )
    out = res.summary(args.alpha)
    out["settings"] |= {
        "cell": "paper_toy (6 compartments)",
        "design": args.design,
        "n_traces": args.traces,
        "dt_ms": args.dt,
        "n_times": len(model.t_eval),
        "threads": args.threads,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    out["ranks"] = res.ranks.tolist()
    out["labels"] = res.labels
    out["methods"] = res.methods
    out["posterior_ok"] = res.posterior_ok.tolist()
    if args.figures and res.n_ok:
        _figures(res, args)
    return out


def _figures(res, args) -> None:
    from bayesneuron.reports.calibration_plots import (
        ecdf_difference_figure,
        rank_histogram_figure,
    )

    args.figures.parent.mkdir(parents=True, exist_ok=True)
    rank_histogram_figure(res).savefig(f"{args.figures}_ranks.png", dpi=110)
    ecdf_difference_figure(res, args.alpha).savefig(f"{args.figures}_ecdf.png", dpi=110)


def _table(out: dict) -> str:
    lines = [f"{'parameter':10s} {'chi2_p':>8s} {'holm':>5s} {'ecdf_band':>9s}"]
    for lab, p in out.get("parameters", {}).items():
        lines.append(
            f"{lab:10s} {p['chi2_p']:8.3f} {'rej' if p['holm_reject'] else 'ok':>5s} "
            f"{'inside' if p['inside_ecdf_band'] else 'OUTSIDE':>9s}"
        )
    s = out["settings"]
    lines += [
        f"method {s['method']} (init {s['init']}), {out['n_runs']} runs: {out['n_ok']} ranked, "
        f"{out['n_failed']} failed, {out['n_posterior_not_ok']} posteriors not ok, "
        f"{out['n_map_unconverged']} MAPs unconverged; methods used {out['methods_used']}",
        f"SBC {'PASSES' if out['passes'] else 'FAILS'} at family-wise α = {out['alpha']}; "
        f"wall {out['wall_s']:.1f} s",
    ]
    lines += [f"  failed: {f}" for f in out["failures"]]
    lines += [f"  posterior not ok: {f}" for f in out["posterior_not_ok"]]
    if "passes_ok_only" in out:
        lines.append(f"  without the not-ok posteriors: passes = {out['passes_ok_only']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="laplace", choices=("laplace", "escalating", "svi"))
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--traces", type=int, default=5)
    ap.add_argument("--dt", type=float, default=0.004, help="Crank–Nicolson step (ms)")
    ap.add_argument("--draws", type=int, default=99, help="posterior draws per run (L)")
    ap.add_argument("--starts", type=int, default=4, help="MAP starts (base + prior draws)")
    ap.add_argument("--steps", type=int, default=30, help="LM iterations per stage")
    ap.add_argument("--svi-steps", type=int, default=300, help="SVI step limit")
    ap.add_argument("--psis", type=int, default=2000, help="draws for PSIS k̂ (escalating)")
    ap.add_argument("--design", default="all|all")
    ap.add_argument("--noise", type=float, default=1.0, help="noise sd, mV (data and model)")
    ap.add_argument(
        "--data-noise",
        type=float,
        help="noise sd of the simulated data, mV, if not --noise (a deliberately wrong model: "
        "a negative control that SBC must fail)",
    )
    ap.add_argument("--alpha", type=float, default=0.05, help="family-wise level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="3 runs, 2 traces, dt 0.02, L 19")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--figures", type=Path, help="prefix of the two PNG files")
    args = ap.parse_args(argv)
    if args.smoke:
        args.runs, args.traces, args.dt, args.draws, args.svi_steps = 3, 2, 0.02, 19, 100
        args.psis = min(args.psis, 500)
    t0 = time.perf_counter()
    out = run(args)
    out["total_wall_s"] = round(time.perf_counter() - t0, 1)
    print(_table(out))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
