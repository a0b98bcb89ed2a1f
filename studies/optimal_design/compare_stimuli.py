"""Score stimuli side by side on the paper's cell (issue 16): 1 − mean posterior contraction
and Bayesian D-optimality (Gaussian surrogate, exact sensitivities at dt 0.004 ms, σ = 1 mV),
on the held-out draws of a fitted cell's posterior (the same split as ``design optimize
--theta``), on 20 prior draws (seed 1000) and at the paper's ground truth.

    python studies/optimal_design/compare_stimuli.py --design "[0,1,-1]|all" \\
        --theta results/cell/posterior.nc --paper 5 --paper 20 \\
        --stimulus prior5=results/prior5/stimulus_01-1_all_bins.pt \\
        --stimulus cell5=results/cell5/stimulus_01-1_all_bins.pt --out results/compare.csv
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from bayesneuron import Design
from bayesneuron.inference.criteria import bayesian_d_optimality
from bayesneuron.optimal_design import criterion_values, exact_fisher, problem_from_model
from bayesneuron.reference.paper import paper_experiment, paper_ground_truth
from bayesneuron.simulation.solvers import CrankNicolson
from bayesneuron.studies.design_config import load_design_study
from bayesneuron.studies.design_inputs import cell_draws, load_stimulus
from bayesneuron.studies.output import write_csv

FINE = CrankNicolson(dt=0.004)
CONFIG = Path(__file__).parent / "config.toml"


def points(design: Design, theta: str | None) -> dict:
    """Scoring name → design problem (contraction) at its points."""
    model, _, _ = paper_experiment(design, n_traces=1, solver=FINE)
    prior = problem_from_model(model, 20, 1000, solver=FINE, criterion="contraction")
    truth = {
        k: torch.as_tensor(np.asarray(v), dtype=torch.float64)[None]
        for k, v in paper_ground_truth().items()
        if k in prior.free
    }
    out = {}
    if theta is not None:
        _, held = cell_draws(load_design_study(CONFIG, theta=theta), model)
        n = len(next(iter(held.values())))
        out["cell's held-out posterior draws"] = problem_from_model(
            model, n, 0, solver=FINE, criterion="contraction", draws=held
        )
    out["20 prior draws"] = prior
    out["the truth"] = dataclasses.replace(prior, theta=truth, sampler=None)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--design", required=True)
    p.add_argument("--theta", help="the fitted cell's posterior .nc (as design optimize --theta)")
    p.add_argument("--paper", type=int, action="append", default=[], help="the paper's first N")
    p.add_argument("--stimulus", action="append", default=[], metavar="NAME=PT")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    design = Design.from_label(a.design)
    stimuli = {}
    for n in a.paper:
        stimuli[f"paper {n}"] = paper_experiment(design, n_traces=n, solver=FINE)[0].stimulus
    for item in a.stimulus:
        name, path = item.split("=", 1)
        stimuli[name] = load_stimulus(path)
    rows = []
    for where, problem in points(design, a.theta).items():
        for name, stim in stimuli.items():
            f = exact_fisher(problem, stim, FINE).sum(1)
            rows.append(
                {
                    "stimulus": name,
                    "n_traces": stim.values.shape[0],
                    "scored_on": where,
                    "one_minus_contraction": 1.0 - float(criterion_values(problem, f).mean()),
                    "bayes_d_opt": float(bayesian_d_optimality(f, problem.prior_var).mean()),
                }
            )
            r = rows[-1]
            print(
                f"{where:>32}  {name:>24}  1 − contraction {r['one_minus_contraction']:.3e}  "
                f"D-opt {r['bayes_d_opt']:.2f} nats"
            )
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(a.out, rows)


if __name__ == "__main__":
    main()
