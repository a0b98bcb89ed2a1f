"""Fresh-data validation of optimised stimuli (issue 16, must-show 2).

"With the optimised stimulus, 5 traces give mean posterior contraction at least that of 20
paper-current traces on all|all and [0,1,−1]|all, with calibrated coverage."

Per design:

1. optimise a ``--n-opt``-trace :class:`~bayesneuron.optimal_design.PiecewiseConstant` stimulus
   (bounds [0, 19] µA/cm², the paper's 48 × 0.1 ms bins, the design's stimulated
   compartments only) for Bayesian D-optimality (``--criterion``; ``contraction``: the
   Gaussian-surrogate mean posterior contraction) averaged over ``--theta-opt`` prior draws,
   new draws at every step (Adam on the fused kernel at ``--dt-opt``, starts ``--init``);
   with ``--refine-steps N > 0`` a second stage of ``N`` steps then optimises the
   Gaussian-surrogate mean posterior contraction from the first stage's best point (the
   D-optimal stimulus finds an informative region from several starts; the contraction, set by
   the worst-determined conductances, then moves information into them);
   the reference stimulus is the paper's first ``--n-paper`` traces (seed 20230619);
2. draw ``--replicates`` ground truths from the prior (seed ``--truth-seed``: not the
   optimiser's draws) plus the paper's ground truth as one more replicate; simulate each
   under both stimuli with σ = ``--noise`` mV (fresh noise seeds) by the model's own solver
   (Crank–Nicolson at ``--dt``);
3. per replicate × stimulus: MAP by Levenberg–Marquardt from the base values and prior draws
   (never the truth), the posterior by the first method of ``--ladder`` that passes its
   checks (:func:`~bayesneuron.inference.posterior.checked_posterior`), and its
   identifiability metrics against that replicate's truth.

Outputs in ``--out``: ``validation.csv`` (one row per design × stimulus × replicate),
``validation_summary.csv`` (per design × stimulus, over the posteriors that passed their
checks), ``validation_contraction.png``, ``stimulus_<design>_opt<n>.pt``, ``validate.json``.

    OMP_NUM_THREADS=1 python studies/optimal_design/validate.py \
        --out studies/optimal_design/reference/validation
    python studies/optimal_design/validate.py --out /tmp/odv --designs "all|all" \
        --replicates 0 --n-opt 1 --n-paper 1 --steps 2 --dt 0.05   # smoke, seconds

``--stimulus FILE.pt`` validates a stimulus designed elsewhere (``design optimize``'s
``stimulus_<design>_<family>.pt``) instead of optimising one; ``--paper-noise K`` makes the
paper's ground truth K replicates, each with fresh noise (a design for that one cell, e.g.
``for_a_cell.toml``, is validated on new recordings of the same cell).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import beta

from bayesneuron import Design
from bayesneuron.inference.fit import fit_map
from bayesneuron.inference.metrics import identifiability
from bayesneuron.inference.model import NeuronModel
from bayesneuron.inference.posterior import checked_posterior
from bayesneuron.inference.space import prior_draws
from bayesneuron.inference.synthetic import synthetic_data
from bayesneuron.optimal_design import (
    OptimizeConfig,
    PiecewiseConstant,
    criterion_values,
    exact_fisher,
    optimize_stimulus,
    problem_from_model,
)
from bayesneuron.reference.paper import paper_experiment, paper_ground_truth, preset_priors
from bayesneuron.reports.figures import subplots
from bayesneuron.simulation.solvers import CrankNicolson
from bayesneuron.studies.design_inputs import initial_parameters, load_stimulus
from bayesneuron.studies.optimal_design import design_tag, refine_on_contraction
from bayesneuron.studies.output import write_csv

TWO = "all|all;[0,1,-1]|all"
LO, HI = 0.0, 19.0  # the paper's amplitude range, µA/cm²


@dataclasses.dataclass
class Settings:
    """Everything the validation depends on (``--`` options of the same names)."""

    out: Path
    designs: str = TWO
    n_opt: int = 5
    n_paper: int = 20
    steps: int = 80
    lr: float = 0.1
    theta_opt: int = 8
    criterion: str = "bayes_d_opt"
    refine_steps: int = 0
    init: str = "ladder,paper,random"
    dt_opt: float = 0.02
    dt: float = 0.004
    replicates: int = 8
    paper_truth: bool = True
    truth_seed: int = 20261204
    noise_seed: int = 7000
    noise: float = 1.0
    map_starts: int = 4
    map_steps: int = 15
    map_windows: str = "8,12,16,20,24,28,32,36,40,44"
    ladder: str = "laplace,svi:mvn,importance"
    num_samples: int = 1000
    psis_samples: int = 2000
    seed: int = 0
    progress: bool = False
    stimulus: str = ""
    paper_noise: int = 1


def _args() -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(Settings):
        name = "--" + f.name.replace("_", "-")
        if f.name == "out":
            p.add_argument(name, type=Path, required=True)
        elif f.type == "bool":
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(name, type=type(f.default), default=f.default)
    return Settings(**vars(p.parse_args()))


def optimised_model(design: Design, s: Settings, out: Path | None = None):
    """``(model on the optimised stimulus, model on the paper's currents, info)``: both at
    ``s.dt``, σ = 1 mV, the paper's prior; ``info`` the criterion ``s.criterion`` of both
    stimuli on the optimiser's fixed prior draws and the optimiser's best start."""
    solver = CrankNicolson(dt=s.dt)
    paper, _, _ = paper_experiment(design, n_traces=s.n_paper, solver=solver)
    if s.stimulus:  # a stimulus designed elsewhere (design optimize's stimulus_<design>.pt)
        stim = load_stimulus(s.stimulus)
        if stim.values.shape[0] != s.n_opt:
            raise SystemExit(f"--stimulus has {stim.values.shape[0]} traces; pass --n-opt to match")
        model = NeuronModel(
            paper.cell, stim, paper.t_eval, design, priors=preset_priors("paper"), sigma=1.0,
            solver=solver,
        )  # fmt: skip
        return model, paper, {"stimulus": s.stimulus, "n_traces": stim.values.shape[0]}
    base, _, _ = paper_experiment(design, n_traces=max(s.n_opt, 1), solver=solver)
    problem = problem_from_model(
        base,
        n_theta=s.theta_opt,
        seed=s.seed,
        solver=CrankNicolson(dt=s.dt_opt),
        criterion=s.criterion,
    )
    fam = PiecewiseConstant(n_traces=s.n_opt, sites=base.stim_index, lo=LO, hi=HI)
    ckpt = None if out is None else out / f"checkpoint_{design_tag(design.label)}_opt{s.n_opt}.pt"
    init = initial_parameters(fam, s.init.split(","), s.seed, paper.stimulus, (LO, HI))
    cfg = OptimizeConfig(
        steps=s.steps,
        lr=s.lr,
        n_starts=len(init),
        seed=s.seed,
        resample_theta=True,
        checkpoint=ckpt,
        progress=s.progress,
    )
    res = optimize_stimulus(problem, fam, cfg, init=init)
    best_start = s.init.split(",")[res.best_start]
    if s.refine_steps:  # second stage from the first one's best point (module docstring)
        res, problem = refine_on_contraction(
            base, fam, cfg, res, steps=s.refine_steps, n_theta=s.theta_opt, seed=s.seed,
            solver=problem.solver, checkpoint=None if ckpt is None else ckpt.with_suffix(".refine.pt"),
        )  # fmt: skip
    stim = dataclasses.replace(res.stimulus, values=res.stimulus.values.detach().clone())
    model = NeuronModel(
        base.cell, stim, base.t_eval, design, priors=preset_priors("paper"), sigma=1.0,
        solver=solver,
    )  # fmt: skip
    f_paper = exact_fisher(problem, paper.stimulus).sum(1)
    info = {
        "criterion": problem.criterion,
        "crit_opt": res.value,
        "crit_paper": float(criterion_values(problem, f_paper).mean()),
        "best_start": best_start,
        "opt_wall_s": res.wall_s,
    }
    if out is not None:
        torch.save(
            {"values": stim.values, "sites": stim.sites, "dt": stim.dt, "unit": "uA/cm2"} | info,
            out / f"stimulus_{design_tag(design.label)}_opt{s.n_opt}.pt",
        )
    return model, paper, info


def replicate_truths(model, s: Settings) -> list[tuple[str, dict[str, np.ndarray]]]:
    """``[(label, truth)]``: ``s.replicates`` prior draws (seed ``s.truth_seed``), then the
    paper's ground truth when ``s.paper_truth``."""
    draws = prior_draws(model, s.replicates, seed=s.truth_seed)
    out = [(f"prior{r}", {k: draws[k][r].numpy() for k in model.free}) for r in range(s.replicates)]
    if s.paper_truth:  # ``paper_noise`` datasets of it, each with fresh noise
        truth = {k: v.numpy() for k, v in paper_ground_truth().items()}
        out += [("paper" if j == 0 else f"paper_n{j}", truth) for j in range(s.paper_noise)]
    return out


def infer_one(model, truth: dict, noise_seed: int, s: Settings) -> dict:
    """Fresh data at ``truth``, MAP (never from the truth), checked posterior, metrics."""
    t0 = time.perf_counter()
    v = synthetic_data(model, truth, noise_sigma=s.noise, seed=noise_seed)
    windows = tuple(int(w) for w in s.map_windows.split(",") if w)
    mp = fit_map(
        model,
        v,
        n_starts=s.map_starts,
        max_steps=s.map_steps,
        windows=windows,
        horizons=() if windows else None,  # as the identifiability study
        seed=s.seed,
        truth=truth,  # scores only (GTE); the starts are the base values and prior draws
        progress=False,
    )
    # validation only: ½ (SSE(MAP) − SSE(truth)) / σ² > 0 means the MAP missed the global
    # optimum (flat priors: the MAP objective is the SSE inside the bounds)
    sse_truth = float(((v - synthetic_data(model, truth)) ** 2).sum())
    sse_map = float(mp.mse[mp.best]) * v.numel()
    res = checked_posterior(
        model,
        v,
        mp.modes(max_modes=4, within=5.0),
        ladder=tuple(s.ladder.split(",")),
        num_samples=s.num_samples,
        psis_samples=s.psis_samples,
        seed=noise_seed,
    )
    met = identifiability(res.samples, model, truth)
    summ = met.summary()
    diag = res.diagnostics
    gte = mp.gte()
    return {
        "posterior_method": res.method,
        "posterior_ok": bool(res.ok),
        "mean_contraction": summ["mean_contraction"],
        "min_contraction": summ["min_contraction"],
        "mean_sd_ratio": float(np.mean(met.sd / met.prior_sd)),
        "max_abs_z": summ["max_abs_z"],
        "coverage_90": summ["coverage_90"],
        "n_covered_90": int(np.sum(met.covered_90)),
        "n_params": int(met.covered_90.size),
        "khat": diag.get("khat", math.nan),
        "attempts": diag["attempts"],
        "n_modes": res.n_modes,
        "map_gte_max": float(max(gte.values())),
        "map_minus_truth_nats": 0.5 * (sse_map - sse_truth) / model.sigma**2,
        "noise_seed": noise_seed,
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def validate_design(design: Design, s: Settings, out: Path | None = None) -> tuple[list, dict]:
    """Rows of ``validation.csv`` for one design and the optimisation's info."""
    opt, paper, info = optimised_model(design, s, out)
    stim_label, rec_label = design.label.split("|")
    rows = []
    for r, (label, truth) in enumerate(replicate_truths(paper, s)):
        for j, (name, model) in enumerate(((f"opt{s.n_opt}", opt), (f"paper{s.n_paper}", paper))):
            row = infer_one(model, truth, s.noise_seed + 10 * r + j, s)
            rows.append(
                {"stim": stim_label, "rec": rec_label, "stimulus": name, "n_traces": model.n_trace}
                | {"replicate": label}
                | row
            )
            if s.progress or out is not None:
                print(
                    f"{design.label:>14} {name:>8} {label:>7}: {row['posterior_method']:>10} "
                    f"ok={row['posterior_ok']!s:5} c̄={row['mean_contraction']:.6f} "
                    f"|z|max={row['max_abs_z']:.2f} cov90={row['coverage_90']:.2f} "
                    f"({row['wall_s']:.0f} s)",
                    flush=True,
                )
    return rows, info


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for ``k`` successes in ``n`` trials."""
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def summarise(rows: list[dict]) -> list[dict]:
    """Per design × stimulus, over the posteriors that passed their checks: contraction
    mean ± sd, pooled 90 % coverage with its 95 % Clopper–Pearson interval, max |z|."""
    out = []
    keys = dict.fromkeys((r["stim"], r["rec"], r["stimulus"]) for r in rows)
    for stim, rec, name in keys:
        grp = [r for r in rows if (r["stim"], r["rec"], r["stimulus"]) == (stim, rec, name)]
        ok = [r for r in grp if r["posterior_ok"]]
        c = np.array([r["mean_contraction"] for r in ok])
        k, n = sum(r["n_covered_90"] for r in ok), sum(r["n_params"] for r in ok)
        lo, hi = clopper_pearson(k, n) if n else (math.nan, math.nan)
        out.append(
            {
                "stim": stim,
                "rec": rec,
                "stimulus": name,
                "n_traces": grp[0]["n_traces"],
                "n_replicates": len(grp),
                "n_ok": len(ok),
                "frac_ok": len(ok) / len(grp),
                "mean_contraction_mean": float(c.mean()) if len(c) else math.nan,
                "mean_contraction_sd": float(c.std(ddof=1)) if len(c) > 1 else math.nan,
                "min_contraction_min": min((r["min_contraction"] for r in ok), default=math.nan),
                "mean_sd_ratio_mean": float(np.mean([r["mean_sd_ratio"] for r in ok]))
                if ok
                else math.nan,
                "coverage_90_pooled": k / n if n else math.nan,
                "coverage_90_lo95": lo,
                "coverage_90_hi95": hi,
                "n_covered": k,
                "n_params_pooled": n,
                "max_abs_z": max((r["max_abs_z"] for r in ok), default=math.nan),
                "n_ok_map_missed": sum(r["map_minus_truth_nats"] > 0 for r in ok),
                "wall_s": round(sum(r["wall_s"] for r in grp), 1),
            }
        )
    return out


def verdict(summary: list[dict], n_opt: int, n_paper: int) -> list[dict]:
    """Per design: does ``opt<n_opt>`` reach ``paper<n_paper>``'s mean contraction (posteriors
    that passed only) and is its pooled 90 % coverage compatible with 0.9?"""
    out = []
    for stim, rec in dict.fromkeys((r["stim"], r["rec"]) for r in summary):
        by = {r["stimulus"]: r for r in summary if (r["stim"], r["rec"]) == (stim, rec)}
        o, p = by[f"opt{n_opt}"], by[f"paper{n_paper}"]
        more = o["mean_contraction_mean"] >= p["mean_contraction_mean"]
        calibrated = o["coverage_90_lo95"] <= 0.9 <= o["coverage_90_hi95"]
        out.append(
            {
                "design": f"{stim}|{rec}",
                "contraction_opt": o["mean_contraction_mean"],
                "contraction_paper": p["mean_contraction_mean"],
                "contraction_ok": bool(more),
                "coverage_opt": o["coverage_90_pooled"],
                "coverage_paper": p["coverage_90_pooled"],
                "coverage_ok": bool(calibrated),
                "failed_posteriors": (o["n_replicates"] - o["n_ok"], p["n_replicates"] - p["n_ok"]),
                "pass": bool(more and calibrated),
            }
        )
    return out


def plot(rows: list[dict], path: Path, n_opt: int, n_paper: int) -> None:
    """Per design: 1 − mean contraction (log scale) per replicate, paper vs optimised, paired
    by replicate; hollow markers: posteriors that failed their checks."""
    designs = list(dict.fromkeys(f"{r['stim']}|{r['rec']}" for r in rows))
    fig, axes = subplots(1, len(designs), figsize=(4.5 * len(designs), 4), squeeze=False)
    names = (f"paper{n_paper}", f"opt{n_opt}")
    for ax, d in zip(axes[0], designs, strict=True):
        grp = [r for r in rows if f"{r['stim']}|{r['rec']}" == d]
        for rep in dict.fromkeys(r["replicate"] for r in grp):
            pair = {r["stimulus"]: r for r in grp if r["replicate"] == rep}
            y = [1 - pair[n]["mean_contraction"] for n in names]
            ax.plot([0, 1], y, color="0.7", lw=0.8, zorder=1)
            for x, n in enumerate(names):
                ok = pair[n]["posterior_ok"]
                face = f"C{x}" if ok else "none"
                ax.scatter(x, y[x], s=30, zorder=2, edgecolors=f"C{x}", facecolors=face)
        ax.set_xticks([0, 1], [f"paper, {n_paper} traces", f"optimised, {n_opt} traces"])
        ax.set_yscale("log")
        ax.set_xlim(-0.4, 1.4)
        ax.set_title(d)
        ax.set_ylabel("1 − mean posterior contraction (lower: better)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _print(summary: list[dict], verdicts: list[dict]) -> None:
    print(
        "\ndesign           stimulus  ok   contraction (mean ± sd)     coverage90 [95% CI]  max|z|"
    )
    for r in summary:
        print(
            f"{r['stim'] + '|' + r['rec']:>16} {r['stimulus']:>8} {r['n_ok']}/{r['n_replicates']}  "
            f"{r['mean_contraction_mean']:.6f} ± {r['mean_contraction_sd']:.6f}  "
            f"{r['coverage_90_pooled']:.3f} [{r['coverage_90_lo95']:.3f}, "
            f"{r['coverage_90_hi95']:.3f}]  {r['max_abs_z']:.2f}"
        )
    for v in verdicts:
        print(
            f"{v['design']}: contraction opt ≥ paper: {v['contraction_ok']} "
            f"({v['contraction_opt']:.6f} vs {v['contraction_paper']:.6f}); coverage "
            f"compatible with 0.9: {v['coverage_ok']} ({v['coverage_opt']:.3f}); failed "
            f"posteriors (opt, paper): {v['failed_posteriors']} → "
            f"{'PASS' if v['pass'] else 'FAIL'}"
        )


def main():
    s = _args()
    torch.set_num_threads(1)
    s.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, infos = [], {}
    for label in s.designs.split(";"):
        design = Design.from_label(label.strip())
        got, infos[design.label] = validate_design(design, s, s.out)
        rows += got
        print(f"{design.label}: {infos[design.label]}", flush=True)
        write_csv(s.out / "validation.csv", rows)
    summary = summarise(rows)
    write_csv(s.out / "validation_summary.csv", summary)
    verdicts = verdict(summary, s.n_opt, s.n_paper)
    plot(rows, s.out / "validation_contraction.png", s.n_opt, s.n_paper)
    _print(summary, verdicts)
    meta = {k: str(v) if isinstance(v, Path) else v for k, v in vars(s).items()}
    meta |= {"optimisation": infos, "verdict": verdicts, "wall_s": time.perf_counter() - t0}
    (s.out / "validate.json").write_text(json.dumps(meta, indent=1))
    print(f"total {meta['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
