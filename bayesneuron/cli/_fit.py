"""``bayesneuron fit``: a MAP fit of the paper's cell (or hh_tree) under one design."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bayesneuron.cli._common import (
    backend,
    check_args,
    check_device,
    check_out,
    config,
    design,
    free_names,
    model_sigma,
    say,
    staged,
    write_provenance,
)
from bayesneuron.studies.output import write_csv, write_json

__all__ = ["cmd_fit"]


def cmd_fit(args) -> int:
    from bayesneuron.studies.config import build_experiment

    if args.config:
        from bayesneuron.cli._config import run_config

        return run_config(args, "map")
    check_args(args)
    out = Path(args.out)
    check_out(out)
    check_device(args.device)
    d = design(args.design, args.preset)
    study = _study(args)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    say(args, f"[fit] {d.label}: simulating {args.traces} synthetic traces …")
    model, v, truth = build_experiment(study, d, args.priors, args.device)
    fit, n_starts = _fit(args, model, v, truth, d.label)
    wall = time.perf_counter() - start
    _write(args, out, study, model, fit, n_starts, wall)
    gte = ", ".join(f"{k} {x:.3g}" for k, x in fit.gte().items())
    gte += " (mean over compartments)"
    if "sigma" in fit.params:
        gte += f", noise sd {float(fit.params['sigma']):.3g} mV (data: {args.noise:g} mV)"
    print(
        f"MAP fit of {d.label}: ground-truth error {gte} after "
        f"{fit.steps} steps in {wall:.1f} s; results in {out}/"
    )
    return 0


def _study(args):
    from bayesneuron.reference.presets import get_preset
    from bayesneuron.studies.config import Study

    return Study(
        folder=Path("."),
        name="fit",
        question="",
        seed=args.seed,
        n_traces=args.traces,
        noise_sigma=args.noise,
        sigma=model_sigma(args),
        priors=args.priors,
        dt=args.dt or get_preset(args.preset).dt,
        backend=backend(args),
        preset=args.preset,
        free=free_names(args),
    )


def _fit(args, model, v, truth, label: str):
    """The MAP fit and its number of starts (``--init truth``: start 0 at the ground truth)."""
    from bayesneuron.inference.fit import fit_map, start_points

    n_starts = args.starts or (4 if args.protocol == "bayesneuron" else 1)
    init, horizons = None, None
    if args.init == "truth":  # start 0 at the ground truth, the others as usual
        init = {k: x.cpu().numpy() for k, x in start_points(model, n_starts, args.seed).items()}
        for k in model.free:
            init[k][0] = truth[k]
        horizons = () if args.protocol == "bayesneuron" else None  # no continuation needed
    say(args, f"[fit] {label}: {args.protocol} protocol, {n_starts} start(s) …")
    fit = fit_map(
        model,
        v,
        protocol=args.protocol,
        truth=truth,
        n_starts=n_starts,
        max_steps=args.steps,
        seed=args.seed,
        init=init,
        horizons=horizons,
        progress=not args.quiet,
    )
    return fit, n_starts


def _write(args, out: Path, study, model, fit, n_starts: int, wall: float) -> None:
    """``fit.json``, ``table.csv``, ``fit_parameters.csv``, ``history.npz``, figures and
    provenance, staged so that a failure leaves no results folder."""

    from bayesneuron import reports
    from bayesneuron.studies.tables import fit_parameter_rows, fit_row

    row = fit_row(
        fit,
        model,
        args.protocol,
        run="fit",
        priors=args.priors,
        noise_sigma=args.noise,
        dt=study.dt,
        seed=study.seed,
    )
    sigma = float(fit.params["sigma"]) if "sigma" in fit.params else args.sigma
    row |= {"init": args.init, "n_traces": args.traces, "sigma_mv": sigma}
    with staged(out) as tmp:
        write_json(tmp / "fit.json", fit.to_dict())
        write_csv(tmp / "table.csv", [row])
        write_csv(tmp / "fit_parameters.csv", fit_parameter_rows(fit, "fit"))
        np.savez_compressed(tmp / "history.npz", **fit.history)
        fig = reports.plot_loss_and_gte([fit], title=f"{fit.design}: {args.protocol} protocol")
        fig.savefig(tmp / "loss_gte.png", dpi=110)
        fig = reports.plot_trajectories(fit)
        fig.savefig(tmp / "trajectories.png", dpi=100)
        cfg = config(
            args,
            backend=study.backend,
            free=list(model.free),
            n_starts=n_starts,
            solver=repr(model.solver),
            wall_s=wall,
        )
        write_provenance(tmp, cfg)
