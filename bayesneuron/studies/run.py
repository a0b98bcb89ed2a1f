"""``run_study``: every ``[[run]]`` (MAP fits), ``[laplace]`` and ``[[infer]]`` of a study into
its results folder (the config's schema: :mod:`bayesneuron.studies.config`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bayesneuron.studies.config import build_experiment, load_study
from bayesneuron.studies.output import environment, json_default, write_csv

__all__ = ["run_study"]


def run_study(
    folder: str | Path,
    out: str | Path,
    *,
    smoke: bool = False,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    executor=None,
) -> dict[str, list[dict]]:
    """Run every ``[[run]]`` and ``[[infer]]`` of the study; returns the rows of
    ``table.csv`` (``"fits"``) and ``designs.csv`` (``"designs"``), also written to disk.
    ``executor`` (:mod:`.executors`) runs the ``[[infer]]`` designs (default: here, in order)."""
    from bayesneuron import reports
    from bayesneuron.inference.fit import fit_map_designs
    from bayesneuron.inference.laplace import laplace
    from bayesneuron.reference.presets import get_preset

    study = load_study(folder, smoke=smoke)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    rows, fits_json, hist = [], [], {}
    t_study = time.perf_counter()
    for run in study.runs:
        priors = run.priors or study.priors
        exps = [
            build_experiment(study, d, priors, device, run.noise_sigma, run.dt) for d in run.designs
        ]
        models, data, truth = [e[0] for e in exps], [e[1] for e in exps], exps[0][2]
        if progress:
            print(
                f"[{study.name}] {run.name}: {run.protocol} protocol, {len(models)} design(s) "
                "in one batch …",
                file=sys.stderr,
                flush=True,
            )
        fits = fit_map_designs(
            models,
            data,
            protocol=run.protocol,
            truth=truth,
            n_starts=run.n_starts,
            max_steps=run.max_steps,
            seed=study.seed,
            horizons=run.horizons if run.protocol == "bayesneuron" else None,
            checkpoint=out / "checkpoints" / f"{run.name}.pt",
            resume=resume,
            progress=progress,
        )
        for m, f in zip(models, fits):
            frac = len(m.rec_index) / m.n_comp  # paper loss = MSE over recorded · |rec| / n
            stim, rec = f.design.split("|")
            rows.append(
                {
                    "stim": stim,
                    "rec": rec,
                    "protocol": run.protocol,
                    "L0": f.history["mse"][0, 0] * frac,  # start 0 is at the base values
                    "L_final": f.history["mse"][-1, f.best] * frac,
                    "gte_na_final": f.history["gte_g_na"][-1, f.best],
                    "gte_k_final": f.history["gte_g_k"][-1, f.best],
                    "steps": f.steps,
                    "wall_s": round(f.wall_s, 2),
                    "run": run.name,
                    "priors": priors,
                    "noise_sigma": study.noise_sigma
                    if run.noise_sigma is None
                    else run.noise_sigma,
                    "horizons": " ".join(map(str, f.settings.get("horizons", []))),
                    "dt": run.dt or study.dt,
                    "n_starts": len(f.objective),
                    "converged": int(f.converged.sum()),
                    "spread_na_max": float(f.spread()["g_na"].max()),
                    "spread_k_max": float(f.spread()["g_k"].max()),
                    "designs_in_batch": len(models),
                }
            )
            fits_json.append({"run": run.name, **f.to_dict()})
            for k, v in f.history.items():
                hist[f"{run.name}/{f.design}/{k}"] = v
        fig = reports.plot_loss_and_gte(fits, title=f"{run.name}: {run.protocol} protocol")
        fig.savefig(out / f"{run.name}_loss_gte.png", dpi=110)
        if len(fits) <= 9:
            for f in fits:
                fig = reports.plot_trajectories(f)
                safe = f.design.replace("|", "_").replace("[", "").replace("]", "").replace(",", "")
                fig.savefig(out / f"{run.name}_trajectories_{safe}.png", dpi=100)
        preset = get_preset(study.preset)
        if [d.label for d in run.designs] == [d.label for d in preset.designs("grid")]:
            vals = {f.design: f.history["gte_g_na"][-1, f.best] for f in fits}
            fig = reports.plot_design_heatmap(
                vals, preset.site_sets, "GTE g_na (mS/cm²)", f"{run.name}: final GTE of g_na"
            )
            fig.savefig(out / f"{run.name}_gte_grid.png", dpi=110)
        import matplotlib.pyplot as plt

        plt.close("all")
        write_csv(out / "table.csv", rows)  # after every run: partial results are usable
    lap_rows = []
    for d in study.laplace:
        model, _, truth = build_experiment(study, d, "paper", device)
        lp = laplace(model, truth)
        c = lp.per_param(lp.contraction)
        stim, rec = d.label.split("|")
        lap_rows.append(
            {
                "stim": stim,
                "rec": rec,
                "min_contraction": float(lp.contraction.min()),
                "mean_contraction": float(lp.contraction.mean()),
                **{f"contraction_na_{i}": float(x) for i, x in enumerate(c["g_na"])},
                **{f"contraction_k_{i}": float(x) for i, x in enumerate(c["g_k"])},
                "logdet_fisher": lp.logdet_fisher,
                "fisher_condition": float(
                    lp.fisher_eigvals.max() / max(lp.fisher_eigvals.min(), 1e-300)
                ),
                "sigma_mv": study.sigma,
            }
        )
    if lap_rows:
        write_csv(out / "laplace.csv", lap_rows)
    if study.runs:
        np.savez_compressed(out / "histories.npz", **hist)
        (out / "fits.json").write_text(json.dumps(fits_json, indent=1, default=json_default))
    if study.infers:
        from bayesneuron.studies.posteriors import run_infers

        design_rows = run_infers(
            study, out, device=device, resume=resume, progress=progress, executor=executor
        )
    else:
        design_rows = []
    resolved = {
        "folder": str(study.folder),
        "smoke": smoke,
        "device": device,
        "config": study.raw,
        "effective": {
            "preset": study.preset,
            "n_traces": study.n_traces,
            "n_times": study.n_times,
            "dt": study.dt,
            "runs": [
                {
                    "name": r.name,
                    "protocol": r.protocol,
                    "designs": [d.label for d in r.designs],
                    "n_starts": r.n_starts,
                    "max_steps": r.max_steps,
                    "priors": r.priors or study.priors,
                    "noise_sigma": r.noise_sigma,
                    "horizons": r.horizons,
                }
                for r in study.runs
            ],
            "infers": [
                {**r.__dict__, "designs": [d.label for d in r.designs]} for r in study.infers
            ],
        },
        "wall_s": time.perf_counter() - t_study,
    }
    (out / "config.json").write_text(json.dumps(resolved, indent=2, default=json_default))
    (out / "environment.json").write_text(json.dumps(environment(), indent=2))
    return {"fits": rows, "designs": design_rows}
