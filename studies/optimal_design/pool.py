"""Is the 5-trace plateau on [0,1,−1]|all the gradient optimiser's, or the design's? (issue 16)

A second search, independent of the Adam optimiser: **choose** the k sweeps from a large pool
of candidate stimuli (``select_traces``: greedy, then exchange), on the Gaussian-surrogate
mean posterior contraction averaged over ``--select`` prior draws. The pool: the paper's
random-step protocol under ``--paper-seeds`` further seeds (100 sweeps each), random on/off
pulse trains at 0 or 19 µA/cm² per 0.1-ms bin (densities 0.1–0.65), uniform random levels, and
the committed two-stage optimised 5 traces — on the design's stimulated compartments only, the
paper's bounds and 48-bin sweep. Every chosen set is scored on 20 held-out prior draws (seed
1000, as ``plateau.py``) at dt 0.004 ms against the paper's first 20 traces; ``--refine-steps``
then runs the contraction optimiser (8 fresh prior draws per step) from the smallest
chosen set.

    OMP_NUM_THREADS=1 python studies/optimal_design/pool.py \\
        --out studies/optimal_design/reference/pool          # ≈ 6 min, one thread
    python studies/optimal_design/pool.py --out /tmp/pool --paper-seeds 1 --pulses 10 \\
        --uniform 10 --select 4 --held 2 --sizes 2 --refine-steps 2    # smoke, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bayesneuron import Design
from bayesneuron.optimal_design import (
    OptimizeConfig,
    PiecewiseConstant,
    criterion_values,
    exact_fisher,
    optimize_stimulus,
    problem_from_model,
    select_traces,
    set_value,
)
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.reference.paper import PAPER_SEED, paper_experiment
from bayesneuron.simulation.solvers import CrankNicolson
from bayesneuron.studies.design_inputs import load_stimulus
from bayesneuron.studies.output import write_csv

HERE = Path(__file__).parent
OPT5 = HERE / "reference/validation/refined/stimulus_01-1_all_opt5.pt"
FINE, COARSE = CrankNicolson(dt=0.004), CrankNicolson(dt=0.02)
DENSITIES = (0.1, 0.2, 0.35, 0.5, 0.65)


def _on_sites(values: torch.Tensor, sites, n_comp: int) -> torch.Tensor:
    """``[k, len(sites), bins]`` currents as ``[k, n_comp, bins]``, zero elsewhere."""
    out = torch.zeros(values.shape[0], n_comp, values.shape[-1], dtype=torch.float64)
    out[:, list(sites)] = values.to(torch.float64)
    return out


def candidate_pool(design: Design, a, n_comp: int, n_bins: int) -> tuple[torch.Tensor, list]:
    """``(values [N, n_comp, bins] µA/cm², kinds [N])``; the first and last bin are zero."""
    stim = list(range(n_comp)) if design.stim is None else [s % n_comp for s in design.stim]
    gen = torch.Generator().manual_seed(a.seed)
    blocks, kinds = [], []
    for s in range(PAPER_SEED + 1, PAPER_SEED + 1 + a.paper_seeds):
        blocks.append(paper_experiment(design, n_traces=100, seed=s)[0].stimulus.values)
        kinds += ["paper protocol"] * 100
    shape = (a.pulses, len(stim), n_bins)
    for p in DENSITIES:
        blocks.append(_on_sites((torch.rand(shape, generator=gen) < p) * 19.0, stim, n_comp))
        kinds += [f"pulses p={p}"] * a.pulses
    uni = torch.rand((a.uniform, len(stim), n_bins), generator=gen) * 19.0
    blocks.append(_on_sites(uni, stim, n_comp))
    kinds += ["uniform"] * a.uniform
    opt = load_stimulus(OPT5)
    blocks.append(_on_sites(opt.values, opt.sites, n_comp))
    kinds += ["optimised (two stages)"] * opt.values.shape[0]
    values = torch.cat(blocks).to(torch.float64)
    values[..., 0] = values[..., -1] = 0.0
    return values, kinds


def _score(problem, values, like: Stimulus) -> float:
    stim = Stimulus(values, like.dt, like.t0, like.unit, like.sites)
    f = exact_fisher(problem, stim, FINE).sum(1)
    return 1.0 - float(criterion_values(problem, f).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--design", default="[0,1,-1]|all")
    p.add_argument("--paper-seeds", type=int, default=60, help="× 100 paper-protocol sweeps")
    p.add_argument("--pulses", type=int, default=400, help="pulse trains per density")
    p.add_argument("--uniform", type=int, default=200)
    p.add_argument("--select", type=int, default=48, help="prior draws the choice is made on")
    p.add_argument("--held", type=int, default=20, help="held-out prior draws (seed 1000)")
    p.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 15])
    p.add_argument("--refine-steps", type=int, default=150)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    design = Design.from_label(a.design)
    m20, _, _ = paper_experiment(design, n_traces=20, solver=FINE)
    like = m20.stimulus
    n_comp, n_bins = like.values.shape[1:]
    held = problem_from_model(m20, a.held, 1000, solver=FINE, criterion="contraction")
    select = problem_from_model(m20, a.select, 2000, solver=COARSE, criterion="contraction")
    values, kinds = candidate_pool(design, a, n_comp, n_bins)
    f = torch.cat([exact_fisher(select, Stimulus(v, like.dt, like.t0, like.unit, like.sites))
                   for v in values.split(200)], 1)  # fmt: skip
    t_fisher = time.perf_counter() - t0
    print(f"pool {tuple(values.shape)}: per-trace Fisher at {a.select} draws in {t_fisher:.0f} s")
    paper20 = _score(held, like.values, like)
    rows = []

    def row(name, k, vals, sel_value, note=""):
        val = _score(held, vals, like)
        rows.append({"stimulus": name, "n_traces": k, "one_minus_contraction_select": sel_value,
                     "one_minus_contraction_held": val, "paper20_held": paper20,
                     "ratio_to_paper20": val / paper20, "note": note})  # fmt: skip
        print(f"{name:>34} ({k:2d}) held {val:.3e}  paper 20 {paper20:.3e}  ×{val / paper20:.2f}")

    for k in a.sizes:
        chosen = select_traces(select, f, k, max_rounds=3)
        picked = ", ".join(f"{kinds[i]}" for i in chosen)
        row("chosen from the pool", k, values[chosen], 1 - set_value(select, f, chosen), picked)
        if k == min(a.sizes):
            best = chosen
    n_opt = kinds.count("optimised (two stages)")
    row(
        "optimised (two stages)",
        n_opt,
        values[-n_opt:],
        1 - set_value(select, f, range(len(kinds))[-n_opt:]),
    )
    if a.refine_steps:
        sites = list(range(n_comp)) if design.stim is None else [s % n_comp for s in design.stim]
        m5, _, _ = paper_experiment(design, n_traces=len(best), solver=FINE)
        opt = problem_from_model(m5, 8, 0, solver=COARSE, criterion="contraction")
        fam = PiecewiseConstant(n_traces=len(best), sites=tuple(sites), lo=0.0, hi=19.0)
        start = Stimulus(values[best][:, sites], like.dt, like.t0, like.unit, tuple(sites))
        cfg = OptimizeConfig(steps=a.refine_steps, lr=0.05, n_starts=1, seed=0,
                             resample_theta=True, progress=False)  # fmt: skip
        res = optimize_stimulus(opt, fam, cfg, init=[fam.fit(start)])
        refined = _on_sites(res.stimulus.values.detach(), sites, n_comp)
        row(
            f"chosen {len(best)}, then refined",
            len(best),
            refined,
            float("nan"),
            f"{a.refine_steps} steps",
        )
    write_csv(a.out / "pool.csv", rows)
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    meta = {"design": a.design, "pool": counts, "select_draws": a.select, "held_draws": a.held,
            "seed": a.seed, "refine_steps": a.refine_steps, "fisher_s": round(t_fisher, 1),
            "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    (a.out / "pool.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wall {meta['wall_s']} s")


if __name__ == "__main__":
    main()
