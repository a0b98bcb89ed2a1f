"""Generate ``dopri5_paper.npz``: tight dopri5 solutions the solver-accuracy tests compare with.

Two problems, both the paper's (``paper-model.md``), solved with torchdiffeq's dopri5:

* ``toy_v [param, trace, comp, time]`` mV: the 6-compartment cell under the first 20 of the
  paper's currents (seed 20230619), at the paper's ground truth and at its initial values
  (``param`` 0 and 1), rtol = atol = 1e-10, at the paper's 48 output times
  (``tests/test_paper_solver.py``);
* ``graph_v [trace, comp, time]`` mV: the 184-compartment L2/3 graph of the paper's second
  experiment (ax = 0.01, cm = 0.45, i_max = 10, every 18th compartment stimulated, seed
  20230619), first 2 traces at its ground truth, rtol = atol = 1e-11
  (``tests/test_graphs.py``).

13 s on 2 cores. The tests build their problems with this file's ``toy_problem`` and
``graph_problem`` and check one trace of the first live, so a reference that no longer matches
the code fails there.

Run from the repository root:  python tests/reference/generate_dopri5_references.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bayesneuron import Cell, Morphology, Torchdiffeq, simulate
from bayesneuron.channels import paper_channels
from bayesneuron.reference import paper_currents, paper_ground_truth, paper_time_grid
from bayesneuron.reference.paper import paper_toy_cell
from bayesneuron.reference.paper_l23 import paper_l23_graph

OUT = Path(__file__).with_name("dopri5_paper.npz")
TOY_TRACES, TOY_TOL = 20, 1e-10
GRAPH_TRACES, GRAPH_TOL = 2, 1e-11


def toy_problem(n_traces: int = TOY_TRACES, stim=None):
    """``(cell, params [2: truth, init], currents, t)`` of the 6-compartment problem
    (``stim``: the stimulated compartments, default all)."""
    cell, t = paper_toy_cell(), paper_time_grid()
    cur = paper_currents(stim=stim)
    cur = type(cur)(cur.values[:n_traces], dt=cur.dt)
    gt = paper_ground_truth()
    init = {k: torch.tensor(v) for k, v in cell.params.items() if k in gt}
    return cell, {k: torch.stack([gt[k], init[k]]) for k in gt}, cur, t


def paper_graph() -> Morphology:
    """The paper's 184-node graph (loops and detached parts) with its ax and cm."""
    names, a = paper_l23_graph()
    return Morphology.from_adjacency(a, ax=0.01, cm=0.45, names=names, tree_only=False)


def graph_problem(n_traces: int = GRAPH_TRACES):
    """``(cell, params, currents, t)`` of the 184-compartment graph problem."""
    cell = Cell(paper_graph(), paper_channels(), v0=-60.0)
    stim = paper_currents(
        20230619, n_comp=184, i_max=10, stim=list(range(0, 184, 18)), n_traces=n_traces
    )
    return cell, paper_ground_truth(20230619, n_comp=184), stim, paper_time_grid()


def main() -> None:
    cell, p, cur, t = toy_problem()
    toy = simulate(cell, p, cur, t, Torchdiffeq("dopri5", rtol=TOY_TOL, atol=TOY_TOL)).v
    cell, p, cur, t = graph_problem()
    graph = simulate(cell, p, cur, t, Torchdiffeq(rtol=GRAPH_TOL, atol=GRAPH_TOL)).v
    np.savez_compressed(
        OUT,
        toy_v=toy.numpy(),
        graph_v=graph.numpy(),
        t=np.asarray(t, dtype=np.float64),
        toy_tol=TOY_TOL,
        graph_tol=GRAPH_TOL,
        torch_version=torch.__version__,
    )
    print(f"wrote {OUT}: toy {tuple(toy.shape)}, graph {tuple(graph.shape)}")


if __name__ == "__main__":
    main()
