"""A study of your own recording (:mod:`.recording_config`): MAP from the cell's values and
prior draws, a checked posterior with inferred noise, and the posterior predictive on the
fitted and the held-out sweeps.

Outputs: ``predictive.csv`` (one row per sweep: ``sweep, held_out, rmse_mv, spikes_obs,
spikes_pred_median, spikes_pred_q05, spikes_pred_q95, first_spike_obs_ms,
first_spike_pred_median_ms``, then ``inside_90``, ``command_na``), ``parameters.csv`` (per
free value: MAP, posterior mean, sd, 5 % and 95 %), ``map.json``, ``posterior.json`` (method,
checks, every attempt), ``predictive_fit.png``, ``predictive_held_out.png``, ``report.html``,
``config.json`` (resolved, with ``wall_s``) and ``environment.json``.

Spike counts of the prediction come from the noise-free simulations of posterior draws: the
model's noise is measurement noise on the voltage, not a spike generator.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from bayesneuron.studies.output import environment, write_csv, write_json
from bayesneuron.studies.recording_config import load_recording_study
from bayesneuron.studies.recording_model import build_model, load_sweeps

__all__ = ["PREDICTIVE_COLUMNS", "count_spikes", "run_recording_study"]

PREDICTIVE_COLUMNS = (
    "sweep",
    "held_out",
    "rmse_mv",
    "spikes_obs",
    "spikes_pred_median",
    "spikes_pred_q05",
    "spikes_pred_q95",
    "first_spike_obs_ms",
    "first_spike_pred_median_ms",
)


def count_spikes(v: np.ndarray, t: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Upward crossings of ``threshold`` (mV) in ``v`` ``[…, time]``: counts ``[…]`` and the
    time of the first (ms, NaN without a spike)."""
    up = (v[..., 1:] >= threshold) & (v[..., :-1] < threshold)
    first = np.where(up.any(-1), t[1:][np.argmax(up, -1)], np.nan)
    return up.sum(-1), first


def run_recording_study(
    config, out, *, smoke: bool = False, stage: str = "posterior", progress: bool = True
) -> dict:
    """Run a study of your own recording; returns ``{"map": MapFit, "posterior":
    CheckedPosterior | None, "predictive": rows}`` and writes the outputs (module doc) to
    ``out``.

    Args:
        config: the ``config.toml`` or the study folder holding it.
        out: results folder (created).
        smoke: the config's ``[smoke]`` sizes.
        stage: ``"map"`` (the MAP only: ``bayesneuron fit --config``) or ``"posterior"``.
        progress: progress lines on stderr.
    """
    t_start = time.perf_counter()
    study = load_recording_study(config, smoke=smoke)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = _sayer(study.name, progress)
    fit_rec = load_sweeps(study, study.data["fit_sweeps"])
    model = build_model(study, fit_rec)
    v = model.check_data(fit_rec.observed())
    say(
        f"{model.n_comp} compartments, free {model.labels}, {v.shape[0]} sweeps × "
        f"{v.shape[-1]} times at {fit_rec.dt:g} ms"
    )
    fit = _map(study, model, v, progress)
    write_json(out / "map.json", fit.to_dict())
    say(f"MAP: objective {float(fit.objective[fit.best]):.4g} in {fit.wall_s:.0f} s")
    result = {"map": fit, "posterior": None, "predictive": []}
    draws = {k: np.asarray(x)[None] for k, x in fit.params.items()}
    if stage == "posterior":
        post = _posterior(study, model, v, fit, progress)
        result["posterior"] = post
        write_json(out / "posterior.json", post.diagnostics)
        say(f"posterior: {post.method} ({'passed' if post.ok else 'FAILED'} its checks)")
        draws = _thin(post.draws, study.posterior["predictive_draws"], study.fit["seed"])
    rows, panels = _predict(study, model, fit_rec, draws, say)
    write_csv(out / "predictive.csv", rows)
    write_csv(out / "parameters.csv", _parameter_rows(model, fit, result["posterior"]))
    result["predictive"] = rows
    wall = time.perf_counter() - t_start
    _report(study, out, model, fit, result["posterior"], rows, panels, wall)
    resolved = {k: getattr(study, k) for k in ("cell", "data", "parameters", "solver", "fit")}
    write_json(
        out / "config.json",
        {"config": study.raw, "source": str(study.source), "smoke": smoke, "stage": stage}
        | {"effective": resolved | {"posterior": study.posterior}, "wall_s": wall},
    )
    write_json(out / "environment.json", environment())
    say(f"done in {wall:.0f} s; results in {out}/")
    return result


def _sayer(name: str, progress: bool):
    def say(msg: str) -> None:
        if progress:
            print(f"[{name}] {msg}", file=sys.stderr, flush=True)

    return say


def _map(study, model, v, progress: bool):
    from bayesneuron.inference.fit import fit_map

    f = study.fit
    return fit_map(
        model,
        v,
        n_starts=f["n_starts"],
        max_steps=f["max_steps"],
        seed=f["seed"],
        horizons=None if f["horizons"] is None else tuple(f["horizons"]),
        progress=progress,
    )


def _posterior(study, model, v, fit, progress: bool):
    from bayesneuron.inference.posterior import checked_posterior

    p = study.posterior
    return checked_posterior(
        model,
        v,
        fit.modes(max_modes=4, within=5.0),
        ladder=tuple(p["ladder"]),
        num_samples=p["num_samples"],
        psis_samples=p["psis_samples"],
        svi=dict(
            num_particles=p["num_particles"],
            max_steps=p["svi_steps"],
            min_steps=min(100, p["svi_steps"]),
            window=min(50, max(1, p["svi_steps"] // 2)),
        ),
        nuts=dict(warmup_steps=min(200, p["num_samples"]), num_chains=1),
        seed=study.fit["seed"],
        progress=progress,
    )


def _thin(draws: dict, n: int, seed: int) -> dict:
    total = len(next(iter(draws.values())))
    idx = np.random.default_rng(seed).choice(total, size=min(n, total), replace=False)
    return {k: np.asarray(x)[np.sort(idx)] for k, x in draws.items()}


def _predict(study, model, fit_rec, draws: dict, say):
    """Rows of ``predictive.csv`` and the figures' data, for the fitted and held-out sweeps."""
    sets = [(fit_rec, model, False)]
    if study.data.get("held_out"):
        held = load_sweeps(study, study.data["held_out"])
        sets.append((held, build_model(study, held, cell=model.cell), True))
    rows, panels = [], {}
    gen = torch.Generator().manual_seed(study.fit["seed"] + 7)
    thr = float(study.posterior["spike_threshold_mv"])
    for rec, m, held_out in sets:
        sim = _simulate(m, draws)  # [draw, sweep, time], noise-free
        sigma = np.asarray(draws["sigma"] if "sigma" in draws else m.sigma).reshape(-1, 1, 1)
        noise = torch.randn(sim.shape, generator=gen, dtype=torch.float64).numpy()
        band = np.quantile(sim + sigma * noise, [0.05, 0.5, 0.95], axis=0)
        band[1] = np.median(sim, axis=0)  # the line: the noise-free simulations' median
        n_pred, first_pred = count_spikes(sim, rec.time, thr)
        n_obs, first_obs = count_spikes(rec.voltage, rec.time, thr)
        for j, sweep in enumerate(rec.sweeps):
            q05, q50, q95 = np.quantile(n_pred[:, j], [0.05, 0.5, 0.95])
            fp = first_pred[:, j]
            rows.append(
                {
                    "sweep": sweep,
                    "held_out": held_out,
                    "rmse_mv": float(np.sqrt(np.mean((band[1, j] - rec.voltage[j]) ** 2))),
                    "spikes_obs": int(n_obs[j]),
                    "spikes_pred_median": float(q50),
                    "spikes_pred_q05": float(q05),
                    "spikes_pred_q95": float(q95),
                    "first_spike_obs_ms": float(first_obs[j]),
                    "first_spike_pred_median_ms": _nanmedian(fp),
                    "inside_90": bool(q05 <= n_obs[j] <= q95),
                    "command_na": _level(rec, j),
                }
            )
        panels["held_out" if held_out else "fit"] = (rec, band)
        say(f"predictive on {'held-out' if held_out else 'fitted'} sweeps {list(rec.sweeps)}")
    return sorted(rows, key=lambda r: r["sweep"]), panels


def _nanmedian(x: np.ndarray) -> float:
    return float(np.median(x[np.isfinite(x)])) if np.isfinite(x).any() else float("nan")


def _level(rec, j: int) -> float:
    """The command's level (nA) farthest from 0 in the window: the step's amplitude."""
    i = rec.current[j]
    return float(i[np.argmax(np.abs(i))])


def _simulate(model, draws: dict, chunk: int = 100) -> np.ndarray:
    n = len(next(iter(draws.values())))
    out = []
    for a in range(0, n, chunk):
        part = {k: torch.as_tensor(np.asarray(draws[k][a : a + chunk])) for k in model.free}
        with torch.no_grad():
            out.append(model.simulate(part)[..., 0, :].cpu().numpy())
    return np.concatenate(out)


def _parameter_rows(model, fit, post) -> list[dict]:
    rows = []
    d = post.draws if post is not None else {}
    for s in model.parametrisation.sites:
        for i, lab in enumerate(s.labels):
            x = d[s.name][:, i] if s.name in d else None
            rows.append(
                {"parameter": s.name, "region": lab, "unit": s.unit, "base": float(s.base[i])}
                | {"map": float(np.asarray(fit.params[s.name])[i])}
                | _stats(x)
            )
    if "sigma" in fit.params:
        x = d.get("sigma")
        rows.append(
            {"parameter": "sigma", "region": "", "unit": "mV", "base": np.nan}
            | {"map": float(fit.params["sigma"])}
            | _stats(None if x is None else np.asarray(x).reshape(-1))
        )
    return rows


def _stats(x) -> dict:
    if x is None:
        return dict.fromkeys(("mean", "sd", "q05", "q95"), np.nan)
    return {
        "mean": float(np.mean(x)),
        "sd": float(np.std(x)),
        "q05": float(np.quantile(x, 0.05)),
        "q95": float(np.quantile(x, 0.95)),
    }


def _report(study, out: Path, model, fit, post, rows, panels, wall: float) -> None:
    from bayesneuron import reports
    from bayesneuron.reports import Figure, Table, Text

    sections = [Text("Question", study.question), Text("Model", _describe(study, model))]
    if post is not None:
        ok = "passed" if post.ok else "did NOT pass"
        sections.append(
            Text(
                "Posterior",
                f"Method {post.method}: it {ok} its checks. Attempts: "
                f"{post.diagnostics['attempts']}.",
            )
        )
    sections.append(Table("Parameters", _records(out / "parameters.csv")))
    held = [r for r in rows if r["held_out"]]
    inside = sum(r["inside_90"] for r in held)
    sections.append(
        Table(
            "Posterior predictive per sweep",
            _records(out / "predictive.csv"),
            caption=f"observed spike count inside the 90 % predictive interval on {inside} of "
            f"{len(held)} held-out sweeps; wall time {wall:.0f} s",
        )
    )
    for key, title in (("fit", "fitted"), ("held_out", "held-out")):
        if key in panels:
            rec, band = panels[key]
            fig = reports.plot_recording_predictive(
                rec.time, rec.voltage, band, rec.sweeps, title=f"{title} sweeps", max_panels=12
            )
            fig.savefig(out / f"predictive_{key}.png", dpi=70)
            sections.append(
                Figure(
                    f"Recorded vs predicted: {title} sweeps",
                    out / f"predictive_{key}.png",
                    caption="black: recorded; blue: median of the noise-free simulations of "
                    "posterior draws; shaded: 90 % posterior predictive band (with the noise)",
                )
            )
    reports.write_html_report(out / "report.html", study.name, sections)


def _records(path: Path):
    import pandas as pd

    return pd.read_csv(path)


def _describe(study, model) -> str:
    d = study.data
    return (
        f"{model.n_comp} compartments ({', '.join(model.cell.morphology.names)}); channels "
        f"{', '.join(study.cell['channels'])} at {study.cell['celsius']} °C; free "
        f"{', '.join(model.labels)} and the noise sd. Data: {Path(d['path']).name}, fitted "
        f"sweeps {d['fit_sweeps']}, held out {d.get('held_out', [])}, window {d['window']} ms "
        f"at {d['dt']} ms; Crank–Nicolson dt {study.solver['dt']} ms."
    )
