"""``run_study``: every ``[[run]]`` (MAP fits), ``[laplace]``, ``[expected]`` (designs ranked in
expectation, :mod:`bayesneuron.studies.expected`) and ``[[infer]]`` of a study into
its results folder (the config's schema: :mod:`bayesneuron.studies.config`; the tables'
columns, named after the model's free parameters: :mod:`bayesneuron.studies.tables`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bayesneuron.studies.config import build_experiment, load_study
from bayesneuron.studies.output import (
    environment,
    json_default,
    safe_label,
    write_csv,
    write_json,
)
from bayesneuron.studies.tables import (
    fit_parameter_rows,
    fit_row,
    laplace_parameter_rows,
    laplace_row,
)

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
    ``executor`` (:mod:`bayesneuron.studies.executors`) runs the ``[[infer]]`` designs
    (default: here, in order). ``table.csv`` is written after every run and ``designs.csv``
    after every design, so an interrupted study keeps what it finished (``resume=True``
    continues it); ``config.json`` and ``environment.json`` at the end.

    A config with ``[cell]`` and ``[data]`` (your own cell and recording,
    :mod:`bayesneuron.studies.recording_config`) runs :func:`.recording_run.run_recording_study`
    instead; its rows are under ``"predictive"``."""
    from bayesneuron.studies.recording_config import is_recording_config, read_config

    if Path(folder).is_dir() and (Path(folder) / "config.toml").is_file():
        if is_recording_config(read_config(folder)):
            from bayesneuron.studies.recording_run import run_recording_study

            res = run_recording_study(folder, out, smoke=smoke, progress=progress)
            return {"fits": [], "designs": [], "predictive": res["predictive"]}
    study = load_study(folder, smoke=smoke)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    t_study = time.perf_counter()
    rows = _run_fits(study, out, device, resume, progress)
    _run_laplace(study, out, device)
    if study.expected is not None:  # before [[infer]]: its report.html shows the ranking
        from bayesneuron.studies.expected import run_expected

        run_expected(study, out, device=device, progress=progress)
    design_rows = []
    if study.infers:
        from bayesneuron.studies.posteriors import run_infers

        design_rows = run_infers(
            study, out, device=device, resume=resume, progress=progress, executor=executor
        )
    resolved = _resolved(study, smoke, device) | {"wall_s": time.perf_counter() - t_study}
    write_json(out / "config.json", resolved)
    write_json(out / "environment.json", environment())
    return {"fits": rows, "designs": design_rows}


def _run_fits(study, out: Path, device: str, resume: bool, progress: bool) -> list[dict]:
    """Every ``[[run]]``: one batched MAP fit of its designs per seed, its rows and figures;
    the tables are written after each fit, so partial results are usable."""
    rows, params, fits_json, hist = [], [], [], {}
    for run in study.runs:
        seeds = run.seeds or (study.seed,)
        for seed in seeds:
            tag = run.name if run.seeds is None else f"{run.name}_seed{seed}"
            models, fits = _fit_run(study, run, out, device, resume, progress, seed, tag)
            for m, f in zip(models, fits):
                rows.append(
                    fit_row(
                        f,
                        m,
                        run.protocol,
                        run=run.name,
                        priors=run.priors or study.priors,
                        noise_sigma=study.noise_sigma
                        if run.noise_sigma is None
                        else run.noise_sigma,
                        dt=run.dt or study.dt,
                        seed=seed,
                        variant=run.variant or "",
                    )
                    | {"designs_in_batch": len(models)}
                )
                params += fit_parameter_rows(f, tag)
                fits_json.append({"run": run.name, "seed": seed, **f.to_dict()})
                hist.update({f"{tag}/{f.design}/{k}": v for k, v in f.history.items()})
            _fit_figures(study, run, fits, out, tag)
            write_csv(out / "table.csv", rows)
            write_csv(out / "fit_parameters.csv", params)
    if study.runs:
        np.savez_compressed(out / "histories.npz", **hist)
        (out / "fits.json").write_text(json.dumps(fits_json, indent=1, default=json_default))
    return rows


def _fit_run(study, run, out: Path, device: str, resume: bool, progress: bool, seed, tag):
    """The models of a run's designs and their MAP fits, all designs in one batch."""
    from bayesneuron.inference.fit import fit_map_designs

    priors = run.priors or study.priors
    exps = [
        build_experiment(study, d, priors, device, run.noise_sigma, run.dt, seed, run.variant)
        for d in run.designs
    ]
    models, data, truth = [e[0] for e in exps], [e[1] for e in exps], exps[0][2]
    if progress:
        print(
            f"[{study.name}] {tag}: {run.protocol} protocol, {len(models)} design(s) "
            f"in one batch, free {', '.join(models[0].free)} …",
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
        seed=seed,
        horizons=run.horizons if run.protocol == "bayesneuron" else None,
        windows=run.windows,
        checkpoint=out / "checkpoints" / f"{tag}.pt",
        resume=resume,
        progress=progress,
    )
    return models, fits


def _fit_figures(study, run, fits, out: Path, tag: str) -> None:
    """Loss and ground-truth errors, per-design trajectories (≤ 9 designs) and, for the
    preset's full grid, a stim × rec heatmap of each free parameter's final error."""

    from bayesneuron import reports
    from bayesneuron.reference.presets import get_preset

    fig = reports.plot_loss_and_gte(fits, title=f"{tag}: {run.protocol} protocol")
    fig.savefig(out / f"{tag}_loss_gte.png", dpi=110)
    if len(fits) <= 9:
        for f in fits:
            fig = reports.plot_trajectories(f)
            fig.savefig(out / f"{tag}_trajectories_{safe_label(f.design)}.png", dpi=100)
    preset = get_preset(study.preset)
    if [d.label for d in run.designs] == [d.label for d in preset.designs("grid")]:
        for k in fits[0].free:
            vals = {f.design: f.history[f"gte_{k}"][-1, f.best] for f in fits}
            fig = reports.plot_design_heatmap(
                vals, preset.site_sets, f"GTE {k}", f"{tag}: final GTE of {k}"
            )
            fig.savefig(out / f"{tag}_gte_grid_{k}.png", dpi=110)


def _run_laplace(study, out: Path, device: str) -> None:
    """``[laplace]``: the Laplace/Fisher analysis at the ground truth of each design (and
    variant): ``laplace.csv`` (a row per design) and ``laplace_parameters.csv`` (a row per
    parameter: prior and posterior sd, contraction)."""
    from bayesneuron.inference.laplace import laplace

    rows, long = [], []
    for variant in study.laplace_variants or (None,):
        for d in study.laplace:
            model, _, truth = build_experiment(study, d, "paper", device, variant=variant)
            lp = laplace(model, truth)
            tag = {} if variant is None else {"variant": variant}
            rows.append(tag | laplace_row(lp, d.label, study.sigma))
            long += [tag | r for r in laplace_parameter_rows(lp, model, truth, d.label)]
            _laplace_morphology(study, model, lp, d, variant, out)
            if rows:
                write_csv(out / "laplace.csv", rows)
                write_csv(out / "laplace_parameters.csv", long)


def _laplace_morphology(study, model, lp, design, variant, out: Path) -> None:
    from bayesneuron.studies.morphology import laplace_morphology

    laplace_morphology(study, model, lp, design, variant, out)


def _resolved(study, smoke: bool, device: str) -> dict:
    """``config.json``: the config as given and the settings in effect."""
    return {
        "folder": str(study.folder),
        "smoke": smoke,
        "device": device,
        "config": study.raw,
        "effective": {
            "preset": study.preset,
            "free": list(study.free) if study.free else None,
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
                    "windows": list(r.windows),
                    "variant": r.variant,
                    "seeds": list(r.seeds) if r.seeds else None,
                }
                for r in study.runs
            ],
            "infers": [
                {**r.__dict__, "designs": [d.label for d in r.designs]} for r in study.infers
            ],
            "expected": None
            if study.expected is None
            else {**study.expected.__dict__, "designs": [d.label for d in study.expected.designs]},
        },
    }
