"""Choose, don't design: the best 20 of 500 sweeps of the paper's own protocol (issue 16).

Per design of the grid: the per-sweep Fisher information of 500 sweeps of the paper's
random-step protocol (seeds 20230620–24, 100 sweeps each: the protocol draws ``crit_steps``
takes its 20-sweep sets from) at the study's 32 ``theta_select`` prior draws (seed 2000,
dt 0.02 ms); ``select_traces`` (greedy, then exchange, Bayesian D-optimality) picks 20; they
are judged, like every stimulus of ``reference/optimal_design.csv``, on the study's 10
held-out prior draws (seed 1000, dt 0.004 ms), next to the paper's first 20 sweeps and the
optimised stimulus of that table. No new waveform: an amplifier already plays these sweeps.

    OMP_NUM_THREADS=1 python studies/optimal_design/chosen.py \\
        --out studies/optimal_design/reference/chosen          # ≈ 10 min, one thread
    python studies/optimal_design/chosen.py --out /tmp/chosen --designs 'all|[0]' \\
        --pool-seeds 1 --select 3 --held 2 --n-traces 4 --dt 0.05        # smoke, seconds
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path

import torch

from bayesneuron import Design
from bayesneuron.optimal_design import (
    criterion_values,
    exact_fisher,
    problem_from_model,
    select_traces,
)
from bayesneuron.reference.paper import PAPER_SEED, paper_experiment
from bayesneuron.reference.presets import get_preset
from bayesneuron.simulation.solvers import CrankNicolson
from bayesneuron.studies.output import write_csv

HERE = Path(__file__).parent
REFERENCE = HERE / "reference" / "optimal_design.csv"


def _reference_rows() -> dict:
    with REFERENCE.open(newline="") as fh:
        return {(r["stim"], r["rec"]): r for r in csv.DictReader(fh)}


def choose(design: Design, a) -> dict:
    """One design's row: the paper's first ``n_traces`` sweeps and the chosen ones, judged."""
    fine = CrankNicolson(dt=a.dt_eval)
    model, _, _ = paper_experiment(design, n_traces=a.n_traces, solver=fine)
    paper = model.stimulus
    select = problem_from_model(model, a.select, 2000, solver=CrankNicolson(dt=a.dt))
    held = problem_from_model(model, a.held, 1000, solver=fine)
    seeds = range(PAPER_SEED + 1, PAPER_SEED + 1 + a.pool_seeds)
    values = torch.cat([paper_experiment(design, seed=s)[0].stimulus.values for s in seeds])
    pool = dataclasses.replace(paper, values=values)
    chosen = select_traces(select, exact_fisher(select, pool), a.n_traces)

    def judged(stimulus) -> float:
        f = exact_fisher(held, stimulus).sum(1)
        return float(criterion_values(held, f).mean())

    crit_paper = judged(paper)
    crit_chosen = judged(dataclasses.replace(pool, values=values[chosen]))
    return {
        "crit_paper": crit_paper,
        "crit_chosen": crit_chosen,
        "gain_chosen_nats_per_trace": (crit_chosen - crit_paper) / a.n_traces,
        "chosen": " ".join(f"{seeds[i // 100]}:{i % 100}" for i in chosen),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--designs", default="grid25", help="grid25 or labels separated by commas")
    p.add_argument("--pool-seeds", type=int, default=5, help="× 100 protocol sweeps")
    p.add_argument("--select", type=int, default=32, help="prior draws the choice is made on")
    p.add_argument("--held", type=int, default=10, help="held-out prior draws (seed 1000)")
    p.add_argument("--n-traces", type=int, default=20)
    p.add_argument("--dt", type=float, default=0.02, help="ms, while choosing")
    p.add_argument("--dt-eval", type=float, default=0.004, help="ms, when judging")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    designs = (
        get_preset("paper_toy").designs("grid25")
        if a.designs == "grid25"
        else [Design.from_label(x) for x in a.designs.split(",")]
    )
    ref = _reference_rows()
    rows, t0 = [], time.perf_counter()
    for design in designs:
        t = time.perf_counter()
        stim, rec = design.label.split("|")
        row = {"stim": stim, "rec": rec, **choose(design, a)}
        opt = ref.get((stim, rec)) if a.n_traces == 20 else None
        if opt is not None:  # the optimised stimulus of the study's table, same draws
            row["crit_optimised"] = float(opt["crit_optimised"])
            gained = row["crit_optimised"] - row["crit_paper"]
            row["share_of_optimised_gain"] = (row["crit_chosen"] - row["crit_paper"]) / gained
            row["crit_paper_in_table"] = float(opt["crit_paper"])
        row["wall_s"] = time.perf_counter() - t
        rows.append(row)
        print(f"{design.label:>18}: paper {row['crit_paper']:6.2f}  chosen {row['crit_chosen']:6.2f}"
              f"  optimised {row.get('crit_optimised', float('nan')):6.2f}  ({row['wall_s']:.0f} s)")  # fmt: skip
        write_csv(a.out / "chosen.csv", rows)
    meta = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    (a.out / "chosen.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
