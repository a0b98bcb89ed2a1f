"""Optimal stimulus design on the paper's 6-compartment cell (issue 16, first slice).

For each design (stim|rec), 20 traces, the paper's amplitude range [0, 19] µA/cm² and its
4.8 ms sweep of 48 × 0.1 ms bins (first and last bin zero): Bayesian D-optimality (nats) of

* ``crit_paper`` — the paper's currents (seed 20230619, first ``n_traces`` traces, the
  stimulated sites only);
* ``crit_steps`` — fresh draws of the same random-step protocol (the authors' next seeds),
  the mean over ``--step-draws`` draws;
* ``crit_optimised`` — the stimulus optimised by :func:`bayesneuron.optimal_design.optimize_stimulus`
  (Adam on the fused kernel at ``--dt-opt``, the criterion averaged over ``--theta-opt``
  prior draws);

all three judged on the same ``--theta-eval`` *held-out* prior draws (not those the
optimiser saw, never the truth) with the fused kernel's exact sensitivities at ``--dt-eval``
(the identifiability study's 0.004 ms), σ = 1 mV, prior base × U(0.7, 1.3). The ``_truth``
columns give the same criteria at the paper's ground truth; ``contraction_*`` the mean
posterior contraction (Gaussian surrogate); ``*_opt5`` the best 5 of the optimised traces
(greedy by D-optimality) against all 20 paper traces.

    OMP_NUM_THREADS=1 python studies/optimal_design/run.py --out results/optimal_design
    python studies/optimal_design/run.py --out /tmp/od --designs "all|all" --steps 2  # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from bayesneuron import Design
from bayesneuron.inference.criteria import posterior_contraction
from bayesneuron.optimal_design import (
    FAMILIES,
    OptimizeConfig,
    criterion_values,
    exact_fisher,
    optimize_stimulus,
    problem_from_model,
)
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.reference.paper import (
    PAPER_SEEDS,
    paper_currents,
    paper_design_grid,
    paper_experiment,
    paper_ground_truth,
)
from bayesneuron.reports.figures import subplots
from bayesneuron.simulation.solvers import CrankNicolson
from bayesneuron.studies.output import write_csv

FIVE = "all|all;[0,1,-1]|all;[0]|[0];[0]|all;all|[0]"


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--designs", default=FIVE, help="';'-separated labels, or 'grid25'")
    p.add_argument("--family", default="bins", choices=sorted(FAMILIES))
    p.add_argument("--n-traces", type=int, default=20)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--n-starts", type=int, default=1)
    p.add_argument("--theta-opt", type=int, default=4)
    p.add_argument("--theta-eval", type=int, default=10)
    p.add_argument("--dt-opt", type=float, default=0.02)
    p.add_argument("--dt-eval", type=float, default=0.004)
    p.add_argument("--step-draws", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resample",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fresh prior draws at every step (robust)",
    )
    p.add_argument(
        "--init",
        default="paper,ladder,random",
        help="','-separated starts among random, paper (the paper's currents), ladder "
        "(a constant level per trace, evenly spaced in the bounds); more --n-starts are random",
    )
    return p.parse_args()


def _designs(spec: str) -> list[Design]:
    if spec == "grid25":
        return [Design(s, r) for s, r in paper_design_grid()]
    return [Design.from_label(s.strip()) for s in spec.split(";")]


def _crits(problem, stimulus, solver) -> tuple[float, float, torch.Tensor]:
    """(mean D-opt, mean contraction, per-trace Fisher [n, trace, P, P]) at ``problem``'s θ."""
    f = exact_fisher(problem, stimulus, solver)
    total = f.sum(1)
    d = criterion_values(problem, total).mean()
    c = posterior_contraction(total, problem.prior_var).mean()
    return float(d), float(c), f


def _best_subset(problem, f_trace: torch.Tensor, k: int) -> list[int]:
    """Greedy ``k`` traces maximising mean D-optimality over θ (``f_trace`` [n, trace, P, P])."""
    chosen: list[int] = []
    for _ in range(min(k, f_trace.shape[1])):
        rest = [t for t in range(f_trace.shape[1]) if t not in chosen]
        vals = [
            float(criterion_values(problem, f_trace[:, chosen + [t]].sum(1)).mean()) for t in rest
        ]
        chosen.append(rest[int(np.argmax(vals))])
    return chosen


def _starts(a, fam, paper) -> list[torch.Tensor]:
    """Starting parameters per ``--init`` entry (``random``: the family's seeded draw)."""
    out = []
    for k, name in enumerate(a.init.split(",")):
        if name == "random":
            out.append(fam.init(seed=a.seed + k))
        elif name in ("paper", "ladder") and hasattr(fam, "fit"):
            if name == "ladder":
                levels = torch.linspace(0.5, 18.5, a.n_traces, dtype=torch.float64)
                paper = Stimulus(levels[:, None, None].expand(-1, 6, 48).clone(), 0.1)
            out.append(fam.fit(paper))
        else:
            raise SystemExit(f"--init {name!r}: use random, paper or ladder (bins family)")
    return out


def _plot(label, res, paper, path):
    stim = res.stimulus.values.detach().numpy()  # [trace, site, bins]
    sites = res.stimulus.sites
    t = np.arange(stim.shape[-1] + 1) * res.stimulus.dt
    fig, axes = subplots(len(sites), 2, figsize=(10, 1.6 * len(sites) + 0.8), squeeze=False)
    for i, s in enumerate(sites):
        for j, (vals, name) in enumerate(((paper[:, s], "paper"), (stim[:, i], "optimised"))):
            ax = axes[i, j]
            for tr in vals[:5]:
                ax.stairs(tr, t, lw=1)
            ax.set_ylim(-1, 20)
            ax.set_ylabel(f"comp {s}\nµA/cm²")
            if i == 0:
                ax.set_title(f"{label}: {name} currents (first 5 traces)")
    for ax in axes[-1]:
        ax.set_xlabel("t (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _one(design: Design, a, out: Path) -> dict:
    t0 = time.perf_counter()
    eval_solver = CrankNicolson(dt=a.dt_eval)
    model, _, _ = paper_experiment(design, n_traces=a.n_traces, solver=eval_solver)
    opt_solver = CrankNicolson(dt=a.dt_opt)
    problem = problem_from_model(model, n_theta=a.theta_opt, seed=a.seed, solver=opt_solver)
    held_out = problem_from_model(model, n_theta=a.theta_eval, seed=a.seed + 1000)
    truth = dataclasses.replace(
        held_out,
        theta={k: v[None] for k, v in paper_ground_truth().items()},
        dg_du=None,
        prior_hessian_u=None,
    )
    sites = model.stim_index
    fam = FAMILIES[a.family](n_traces=a.n_traces, sites=sites, lo=0.0, hi=19.0)
    tag = design.label.replace("|", "_").replace(",", "").replace("[", "").replace("]", "")
    cfg = OptimizeConfig(
        steps=a.steps,
        lr=a.lr,
        n_starts=max(a.n_starts, len(a.init.split(","))),
        seed=a.seed,
        resample_theta=a.resample,
        checkpoint=out / f"checkpoint_{tag}_{a.family}.pt",
        progress=True,
    )
    paper = model.stimulus  # the paper's currents at the stimulated sites
    res = optimize_stimulus(problem, fam, cfg, init=_starts(a, fam, paper))
    d_paper, c_paper, _ = _crits(held_out, paper, eval_solver)
    d_opt, c_opt, f_opt = _crits(held_out, res.stimulus, eval_solver)
    steps = []
    for s in PAPER_SEEDS[1 : 1 + a.step_draws]:
        cur = paper_currents(s, n_traces=a.n_traces, stim=design.stim)
        steps.append(_crits(held_out, cur, eval_solver)[0])
    five = _best_subset(held_out, f_opt, 5)
    f5 = f_opt[:, five].sum(1)
    torch.save(
        {"values": res.stimulus.values, "sites": sites, "dt": 0.1, "unit": "uA/cm2"},
        out / f"stimulus_{tag}_{a.family}.pt",
    )
    _plot(design.label, res, paper.values.numpy(), out / f"waveforms_{tag}_{a.family}.png")
    stim_label, rec_label = design.label.split("|")
    return {
        "stim": stim_label,
        "rec": rec_label,
        "family": a.family,
        "crit_paper": d_paper,
        "crit_steps": float(np.mean(steps)),
        "crit_optimised": d_opt,
        "gain_nats_per_trace": (d_opt - d_paper) / a.n_traces,
        "crit_paper_truth": _crits(truth, paper, eval_solver)[0],
        "crit_optimised_truth": _crits(truth, res.stimulus, eval_solver)[0],
        "crit_optimised_on_opt_theta": res.value,
        "contraction_paper": c_paper,
        "contraction_optimised": c_opt,
        "crit_opt5": float(criterion_values(held_out, f5).mean()),
        "contraction_opt5": float(posterior_contraction(f5, held_out.prior_var).mean()),
        "crit_steps_sd": float(np.std(steps, ddof=1)) if len(steps) > 1 else 0.0,
        "wall_s": time.perf_counter() - t0,
    }


def main():
    a = _args()
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for design in _designs(a.designs):
        rows.append(_one(design, a, a.out))
        r = rows[-1]
        print(
            f"{design.label:>16} paper {r['crit_paper']:7.2f}  steps {r['crit_steps']:7.2f}  "
            f"optimised {r['crit_optimised']:7.2f}  gain/trace {r['gain_nats_per_trace']:+.2f}  "
            f"({r['wall_s']:.0f} s)",
            flush=True,
        )
        write_csv(a.out / "optimal_design.csv", rows)
    meta = vars(a) | {"out": str(a.out), "wall_s": time.perf_counter() - t0}
    (a.out / "run.json").write_text(json.dumps(meta, indent=1))
    print(f"total {meta['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
