"""The ``[[infer]]`` part of a study: a posterior per design, its metrics, a ranking, a report.

Per design: MAP fits (every design in one batch, multi-start Levenberg–Marquardt), the Laplace
approximation at the MAP, then the run's method (SVI with a guide, NUTS, or the Laplace draws
themselves); identifiability metrics (:mod:`.metrics`) against the ground truth; the log-det
Fisher information at the MAP; an InferenceData (posterior, prior, posterior predictive,
per-trace log-likelihood, observed data, truth) saved as netCDF. Then ``designs.csv``,
``parameters.csv``, ``ranking.csv``, heatmaps, forest plots and ``report.html``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .fit import fit_map_designs
from .laplace import laplace, laplace_map
from .metrics import identifiability
from .nuts import run_nuts
from .svi import fit_svi

__all__ = ["run_infers", "rank_designs"]

CRITERIA = (  # column, better, what it measures
    ("logdet_fisher", "max", "log-det Fisher information (volume of information)"),
    ("max_rel_sd", "min", "worst-case relative posterior sd (the least determined parameter)"),
    ("mean_contraction", "max", "mean posterior contraction"),
)


def _safe(label: str) -> str:
    return label.replace("|", "__").replace("[", "").replace("]", "").replace(",", "_")


def _prior_draws(model, n: int, seed: int) -> dict[str, np.ndarray]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {k: model.priors[k].sample((n,)).cpu().numpy() for k in model.free}


def _predictions(model, v, samples: dict, seed: int, chunk: int = 100):
    """Posterior predictive draws ``[draw, trace, n_rec, time]`` and the per-trace
    log-likelihood ``[draw, trace]``, from one simulation per draw."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.as_tensor(v, dtype=model.dtype, device=model.device)
    ppc, ll = [], []
    n = len(next(iter(samples.values())))
    for i in range(0, n, chunk):
        part = {k: torch.as_tensor(x[i : i + chunk], dtype=model.dtype) for k, x in samples.items()}
        with torch.no_grad():
            sim = model.simulate(part)
        r = (sim - v) / model.sigma
        m = r.shape[-1] * r.shape[-2]
        ll.append(
            -0.5 * r.pow(2).sum((-1, -2)) - m * math.log(model.sigma * math.sqrt(2 * math.pi))
        )
        noise = torch.randn(sim.shape, generator=gen, dtype=sim.dtype).to(sim.device)
        ppc.append(sim + model.sigma * noise)
    return torch.cat(ppc).cpu().numpy(), torch.cat(ll).cpu().numpy()


def _posterior(inf, model, v, mp_params, seed: int, progress: bool):
    """Draws name → ``[chain, draw, comp]`` for the metrics, sample stats, extras."""
    lap = laplace_map(model, v, mp_params)
    extras = {"laplace_hessian": lap.hessian}
    if inf.method == "svi":
        fit = fit_svi(
            model,
            v,
            mp_params,
            guide=inf.guide,
            num_particles=inf.num_particles,
            max_steps=inf.max_steps,
            min_steps=min(100, inf.max_steps),
            window=min(50, max(1, inf.max_steps // 2)),
            num_samples=max(2000, inf.num_samples),
            laplace=lap,
            seed=seed,
            progress=progress,
        )
        draws = {k: x[None] for k, x in fit.samples.items()}
        extras.update(
            elbo=fit.elbo_final,
            iw_elbo=fit.iw_elbo,
            khat=fit.khat,
            svi_steps=fit.steps,
            svi_converged=int(fit.converged),
            svi_skipped=fit.skipped,
        )
        return draws, {}, extras, fit.elbo
    if inf.method == "laplace":
        draws = {k: x[None] for k, x in lap.sample(max(2000, inf.num_samples), seed).items()}
        return draws, {}, {**extras, "elbo": math.nan}, None
    run = run_nuts(
        model,
        v,
        mp_params,
        num_samples=inf.num_samples,
        warmup_steps=inf.warmup_steps,
        num_chains=inf.num_chains,
        laplace=lap,
        seed=seed,
        progress=progress,
    )
    extras.update(elbo=math.nan, divergences=run.num_divergences)
    return run.samples, run.sample_stats, extras, None


def _truth_init(model, truth, n_starts: int, seed: int) -> dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k in model.free:
        d = model.priors[k]
        rows = [np.asarray(truth[k], dtype=np.float64)]
        for _ in range(n_starts - 1):
            u = torch.rand(model.n_comp, generator=gen, dtype=torch.float64)
            rows.append(d.icdf(u.to(model.dtype)).cpu().numpy())
        out[k] = np.stack(rows)
    return out


def rank_designs(rows: list[dict]) -> list[dict]:
    """Per design its rank (1 = most informative) under each criterion of :data:`CRITERIA`."""
    out = [{"design": f"{r['stim']}|{r['rec']}", "run": r.get("run", "")} for r in rows]
    for col, better, _ in CRITERIA:
        vals = np.array([float(r[col]) for r in rows])
        vals = np.where(np.isfinite(vals), vals, -np.inf if better == "max" else np.inf)
        order = np.argsort(-vals if better == "max" else vals, kind="stable")
        ranks = np.empty(len(rows), dtype=int)
        ranks[order] = np.arange(1, len(rows) + 1)
        for o, r, k in zip(out, rows, ranks):
            o[col] = r[col]
            o[f"rank_{col}"] = int(k)
    return out


def run_infers(study, out: Path, *, device="cpu", resume=False, progress=True) -> list[dict]:
    """Run every ``[[infer]]`` of ``study`` into ``out``; returns the ``designs.csv`` rows."""
    from . import reports
    from .study import DESIGN_COLUMNS, _experiment, _write_csv

    rows, param_rows, idatas, elbos = [], [], {}, {}
    for inf in study.infers:
        priors = inf.priors or study.priors
        exps = [_experiment(study, d, priors, device, inf.noise_sigma) for d in inf.designs]
        models, data, truth = [e[0] for e in exps], [e[1] for e in exps], exps[0][2]
        if progress:
            print(
                f"[{study.name}] {inf.name}: MAP of {len(models)} design(s) in one batch, then "
                f"{inf.method}{' (' + inf.guide + ')' if inf.method == 'svi' else ''} per design",
                file=sys.stderr,
                flush=True,
            )
        init = None
        if inf.map_init == "truth":  # start 0 at the truth, the others at prior draws
            init = _truth_init(models[0], truth, inf.map_starts, study.seed)
        maps = fit_map_designs(
            models,
            data,
            protocol="bayesneuron",
            truth=truth,
            init=init,
            horizons=() if init is not None else None,  # from the truth: no continuation
            n_starts=inf.map_starts,
            max_steps=inf.map_steps,
            seed=study.seed,
            checkpoint=out / "checkpoints" / f"{inf.name}_map.pt",
            resume=resume,
            progress=progress,
        )
        folder = out / "idata" / inf.name
        folder.mkdir(parents=True, exist_ok=True)
        for j, (model, v, mp) in enumerate(zip(models, data, maps)):
            label = model.design.label
            nc, done = folder / f"{_safe(label)}.nc", folder / f"{_safe(label)}.json"
            if resume and nc.is_file() and done.is_file():
                saved = json.loads(done.read_text())
                rows.append(saved["row"])
                param_rows.extend(saved["parameters"])
                idatas[(inf.name, label)] = reports.load_inference_data(nc)
                continue
            t0 = time.perf_counter()
            draws, stats, extras, elbo_hist = _posterior(
                inf, model, v, mp.params, study.seed + j, progress
            )
            met = identifiability(draws, model, truth)
            fisher = laplace(model, mp.params).logdet_fisher
            keep = {k: x[:, : inf.num_samples] for k, x in draws.items()}
            flat = {k: x.reshape(-1, model.n_comp) for k, x in keep.items()}
            n_chain, n_draw = next(iter(keep.values())).shape[:2]
            ppc, ll = _predictions(model, v, flat, study.seed + j)
            ppc = ppc.reshape(n_chain, n_draw, *model.obs_shape)
            ll = ll.reshape(n_chain, n_draw, model.n_trace)
            stats = {k: np.asarray(x)[:, : inf.num_samples] for k, x in stats.items()}
            wall = time.perf_counter() - t0 + mp.wall_s / len(models)
            stim, rec = label.split("|")
            row = {
                "stim": stim,
                "rec": rec,
                "guide": inf.guide if inf.method == "svi" else inf.method,
                **{k: met.summary()[k] for k in DESIGN_COLUMNS if k in met.summary()},
                "logdet_fisher": fisher,
                "elbo": extras.pop("elbo"),
                "wall_s": round(wall, 2),
                "run": inf.name,
                "method": inf.method,
                "max_rel_sd": met.summary()["max_rel_sd"],
                "sloppiest_sd": met.summary()["sloppiest_sd"],
                **{
                    f"contraction_{k}_{i}": float(c)
                    for k, cs in _split(met, model).items()
                    for i, c in enumerate(cs)
                },
                "map_gte_na": mp.gte()["g_na"] if "g_na" in mp.gte() else math.nan,
                "map_gte_k": mp.gte()["g_k"] if "g_k" in mp.gte() else math.nan,
                "n_traces": model.n_trace,
                "sigma_mv": model.sigma,
                **extras,
            }
            row = {
                k: (float(x) if isinstance(x, (np.floating, np.integer)) else x)
                for k, x in row.items()
            }
            params = [{"run": inf.name, "design": label, **p} for p in met.per_parameter()]
            idata = reports.to_inference_data(
                model,
                keep,
                prior={k: x[None] for k, x in _prior_draws(model, n_draw, study.seed).items()},
                posterior_predictive={"v_obs": ppc},
                log_likelihood={"v_obs": ll},
                observed=v,
                sample_stats=stats or None,
                truth=truth,
                attrs={
                    "inference": f"{inf.method}:{inf.guide}" if inf.method == "svi" else inf.method,
                    "study": study.name,
                    "run": inf.name,
                    **{k: row[k] for k in DESIGN_COLUMNS[3:]},
                },
            )
            reports.save_inference_data(idata, nc)
            done.write_text(json.dumps({"row": row, "parameters": params}, default=_num))
            rows.append(row)
            param_rows.extend(params)
            idatas[(inf.name, label)] = idata
            if elbo_hist is not None:
                elbos[(inf.name, label)] = elbo_hist
            if progress:
                print(
                    f"  {label:>16}  contraction mean {row['mean_contraction']:.3f} min "
                    f"{row['min_contraction']:.3f}  max|z| {row['max_abs_z']:.2f}  "
                    f"{row['wall_s']:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
            _write_csv(out / "designs.csv", rows)  # partial results stay usable
    _write_csv(out / "parameters.csv", param_rows)
    ranking = rank_designs(rows)
    _write_csv(out / "ranking.csv", ranking)
    _figures_and_report(study, out, rows, ranking, idatas, elbos)
    return rows


def _split(met, model) -> dict[str, np.ndarray]:
    return dict(zip(model.free, np.split(met.contraction, len(model.free))))


def _num(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


def _figures_and_report(study, out: Path, rows, ranking, idatas, elbos) -> None:
    import matplotlib.pyplot as plt
    import pandas as pd

    from . import reports
    from .reports import Figure, Table, Text

    table = pd.DataFrame(rows)
    sections = [
        Text("Question", study.question or study.name),
        Text(
            "Setting",
            f"The paper's 6-compartment cell, {rows[0]['n_traces']} input traces, observation "
            f"noise σ = {rows[0]['sigma_mv']} mV, prior {study.priors}. Per design: MAP "
            "(multi-start Levenberg–Marquardt), Laplace at the MAP, then the posterior method "
            "named in the table. Contraction = 1 − Var_post/Var_prior; z = (mean − truth)/sd.",
        ),
    ]
    for run in dict.fromkeys(r["run"] for r in rows):
        sub = table[table["run"] == run]
        cols = [c for c in (*_design_cols(), "max_rel_sd", "khat", "map_gte_na") if c in sub]
        sections.append(Table(f"{run}: designs", sub[cols], caption="one row per design"))
        rk = pd.DataFrame([r for r in ranking if r["run"] == run])
        best = []
        for col, _better, what in CRITERIA:
            top = rk.sort_values(f"rank_{col}").iloc[0]
            best.append(f"By {what}: {top['design']} ({col} = {float(top[col]):.4g}).")
        sections.append(Text(f"{run}: the most informative design", "\n\n".join(best)))
        sections.append(Table(f"{run}: ranking", rk, caption="rank 1 = most informative"))
        if len(sub) == 25:
            for value in ("mean_contraction", "min_contraction"):
                fig = reports.plot_contraction_heatmap(
                    sub,
                    value=value,
                    title=f"{run}: {value.replace('_', ' ')}",
                    path=out / f"{run}_{value}.png",
                )
                sections.append(Figure(f"{run}: {value.replace('_', ' ')}", fig))
                plt.close(fig)
        labels = [lab for (r, lab) in idatas if r == run]
        for var in ("g_na", "g_k"):
            fig = reports.plot_forest_designs(
                {lab: idatas[(run, lab)] for lab in labels},
                var,
                path=out / f"{run}_forest_{var}.png",
            )
            sections.append(Figure(f"{run}: {var} across designs", fig))
            plt.close(fig)
        for lab in _highlights(labels):
            idata = idatas[(run, lab)]
            safe = _safe(lab)
            for name, fn in (
                ("posterior vs prior", reports.plot_posterior_vs_prior),
                ("posterior predictive", reports.plot_ppc_traces),
            ):
                fig = fn(idata, path=out / f"{run}_{safe}_{name.split()[1]}.png")
                sections.append(Figure(f"{run} {lab}: {name}", fig))
                plt.close(fig)
            if (run, lab) in elbos:
                fig, ax = plt.subplots(figsize=(5, 2.6))
                ax.plot(elbos[(run, lab)])
                ax.set_xlabel("SVI step")
                ax.set_ylabel("ELBO (nats)")
                ax.set_title(f"{run} {lab}")
                fig.tight_layout()
                sections.append(Figure(f"{run} {lab}: ELBO", fig))
                plt.close(fig)
    reports.write_html_report(out / "report.html", f"{study.name}: identifiability", sections)


def _design_cols():
    from .study import DESIGN_COLUMNS

    return DESIGN_COLUMNS


def _highlights(labels: list[str]) -> list[str]:
    """The designs that get their own figures: all of ≤ 4, else all|all, [0]|all and ≤ 2 more."""
    if len(labels) <= 4:
        return labels
    keep = [lab for lab in ("all|all", "[0]|all") if lab in labels]
    return keep + [lab for lab in labels if lab not in keep][: 4 - len(keep)]
