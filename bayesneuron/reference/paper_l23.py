"""The Jones & Kording 184-compartment experiment (human L2/3 cell 171122005, Gidon et al. 2020).

The paper's second experiment fits per-compartment g_Na and g_K of a 184-compartment cell, one
compartment per NEURON section, coupled by the paper's abstract rule
``I_ax,i = ax · Σ_k A_ik (V_k − V_i)`` with ``ax = 0.01`` mS/cm², stimulated every 18th
compartment with currents of 0–9 µA/cm² and recorded everywhere. Two things in the authors' code
decide its outcome (``../shared/paper-model.md`` §2.2, §8):

* the learner's graph (:func:`paper_l23_graph`) is the authors' buggy conversion of the cell:
  33 apical sections cut off from the soma and one 5-cycle;
* the ground truth was simulated on a 184-compartment *chain*, not on that graph.

Units: V mV, t ms, g mS/cm², current µA/cm².
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch

from bayesneuron.cell import Cell
from bayesneuron.errors import BayesneuronError
from bayesneuron.morphology.tree import Morphology

__all__ = [
    "PAPER_L23_AX",
    "PAPER_L23_GRAPH",
    "PAPER_L23_I_MAX",
    "PAPER_L23_N",
    "PAPER_L23_SEEDS",
    "PAPER_L23_STIM",
    "PAPER_L23_VARIANTS",
    "paper_l23_cell",
    "paper_l23_experiment",
    "paper_l23_graph",
    "swc_name",
]

PAPER_L23_N = 184
"""Compartments: one per NEURON section of 171122005.hoc."""
PAPER_L23_AX = 0.01
"""The paper's axial coupling of the test model in mS/cm² (0.5 in the toy)."""
PAPER_L23_I_MAX = 10
"""Exclusive upper current level in µA/cm² (20 in the toy)."""
PAPER_L23_STIM = tuple(range(0, PAPER_L23_N, 18))
"""The stimulated compartments: every 18th, 0 … 180 (11 sites; 4 in the isolated part)."""
PAPER_L23_SEEDS = (20230619, 20230620, 20230622)
"""The paper's three seeds (``SEEDS[0, 1, 3]``): targets, currents and model."""
PAPER_L23_VARIANTS = ("faithful", "graph", "right")
"""Ground truth and learner of :func:`paper_l23_experiment`:

* ``"faithful"`` — the paper's: data from a 184-compartment chain, learner on the authors'
  graph (:func:`paper_l23_graph`);
* ``"graph"`` — data and learner on the authors' graph (the mismatch removed, the broken
  graph kept);
* ``"right"`` — data and learner on the cell's real geometry (the bundled SWC, one
  compartment per section, NEURON's cable equation) with the paper's channels, ``Cm`` and
  ``V0``; currents are the same densities (µA/cm²) as nA through each compartment's area.
"""

#: File name of the learner's 184-node graph in ``bayesneuron/data`` (see its README).
PAPER_L23_GRAPH = "jones_kording_184_graph.txt"


def paper_l23_graph() -> tuple[tuple[str, ...], np.ndarray]:
    """The graph the paper's learner used: ``(names, adjacency)``.

    Returns:
        ``names``: the 184 node names (``"Soma"``, ``"Axon"``, ``"Dend_16"``, …) in the
        authors' node order; ``adjacency``: symmetric 0/1 matrix ``[184, 184]`` (int64) with
        183 undirected edges — two connected components and one cycle, as the authors had it.

    Example:
        >>> names, a = paper_l23_graph()
        >>> names[18], int(a.sum()) // 2
        ('Dend_16', 183)
    """
    text = resources.files("bayesneuron").joinpath("data").joinpath(PAPER_L23_GRAPH).read_text()
    names: dict[int, str] = {}
    edges: list[tuple[int, int]] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if parts[0] == "node":
            names[int(parts[1])] = parts[2]
        elif parts[0] == "edge":
            edges.append((int(parts[1]), int(parts[2])))
    n = len(names)
    adjacency = np.zeros((n, n), dtype=np.int64)
    for i, j in edges:
        adjacency[i, j] = adjacency[j, i] = 1
    return tuple(names[k] for k in range(n)), adjacency


def swc_name(name: str) -> str:
    """The SWC cell's compartment name of a node of the authors' graph.

    Example:
        >>> swc_name("Dend_16"), swc_name("Apical_4"), swc_name("Soma")
        ('dend[16](0.5)', 'apic[4](0.5)', 'soma(0.5)')
    """
    if name in ("Soma", "Axon"):
        return f"{name.lower()}(0.5)"
    kind, _, k = name.partition("_")
    return {"Dend": "dend", "Apical": "apic"}[kind] + f"[{int(k)}](0.5)"


def paper_l23_cell(variant: str = "faithful", *, data: bool = False) -> Cell:
    """The cell of :func:`paper_l23_experiment`: the learner's, or with ``data=True`` the one
    that simulates the ground truth.

    Every variant numbers its compartments as the authors' graph does (0 = soma, 1 = axon,
    then their ``Dend_*`` and ``Apical_*`` order; names are the SWC's, e.g. ``dend[16](0.5)``),
    so designs, conductances and currents mean the same sections in all of them. Channels: the
    paper's (:func:`~bayesneuron.channels.paper_channels`), base g_Na 100, g_K 45 mS/cm²;
    ``V0 = −60`` mV.

    Args:
        variant: one of :data:`PAPER_L23_VARIANTS`.
        data: the ground truth's cell (the chain for ``"faithful"``).
    """
    from bayesneuron.channels import paper_channels

    _check_variant(variant)
    graph_names, adjacency = paper_l23_graph()
    names = tuple(swc_name(n) for n in graph_names)
    if variant == "right":
        from bayesneuron.reference.cells import l23_cell

        cell = l23_cell(nseg=1, channels=paper_channels(), cm=0.45, v0=-60.0)
        morph = _renumbered(cell.morphology, [cell.morphology.index(n) for n in names])
    elif variant == "faithful" and data:
        morph = Morphology.from_parents(
            np.arange(PAPER_L23_N) - 1, ax=PAPER_L23_AX, cm=0.45, names=names
        )
    else:
        morph = Morphology.from_adjacency(
            adjacency, ax=PAPER_L23_AX, cm=0.45, names=names, tree_only=False
        )
    return Cell(morph, paper_channels(), v0=-60.0)


def paper_l23_experiment(
    design=None,
    *,
    n_traces: int = 100,
    seed: int = PAPER_L23_SEEDS[0],
    noise_sigma: float = 0.0,
    sigma: float = 1.0,
    priors="paper",
    solver=None,
    data_solver=None,
    dtype: torch.dtype = torch.float64,
    device=None,
    variant: str = "faithful",
):
    """The paper's 184-compartment experiment: ``(model, v_obs, truth)``.

    The paper's currents (:func:`~bayesneuron.reference.paper_currents` with 184 compartments,
    levels 0–9 µA/cm², seed ``seed``) at the design's stimulated sites, its 48-point grid and
    its targets ``base · U(0.7, 1.3)`` (:func:`~bayesneuron.reference.paper_ground_truth`,
    seed ``seed``); noise of sd ``noise_sigma`` mV (seed ``seed + 1``). ``variant`` (see
    :data:`PAPER_L23_VARIANTS`) decides which cell simulates the data and which one learns.

    Args:
        design: stim/rec sites in the authors' numbering; default the paper's: every 18th
            compartment stimulated, all recorded.
        variant: ``"faithful"`` (default), ``"graph"`` or ``"right"``.
        Other arguments as :func:`~bayesneuron.reference.paper_experiment`.
    """
    from bayesneuron.inference.model import NeuronModel
    from bayesneuron.inference.synthetic import synthetic_data
    from bayesneuron.protocol.design import Design
    from bayesneuron.reference.paper import (
        paper_currents,
        paper_ground_truth,
        paper_time_grid,
        preset_priors,
    )

    design = Design(list(PAPER_L23_STIM), None) if design is None else design
    cell = paper_l23_cell(variant)
    stim_sites = design.stim_index(cell.morphology)
    stim = paper_currents(
        seed, n_traces=n_traces, n_comp=PAPER_L23_N, i_max=PAPER_L23_I_MAX, stim=list(stim_sites)
    )
    if cell.morphology.geometric:  # the same densities, as nA through each area
        area = torch.tensor(cell.morphology.area, dtype=stim.values.dtype)
        stim = type(stim)(stim.values * (area[:, None] * 1e3), dt=stim.dt, t0=stim.t0, unit="nA")
    prior = preset_priors(priors)

    def model_of(c):
        return NeuronModel(
            c,
            stim,
            paper_time_grid(),
            design,
            priors=prior,
            sigma=sigma,
            solver=solver,
            dtype=dtype,
            device=device,
        )

    model = model_of(cell)
    data_model = model_of(paper_l23_cell(variant, data=True)) if variant == "faithful" else model
    truth = {k: v.numpy() for k, v in paper_ground_truth(seed, n_comp=PAPER_L23_N).items()}
    v_obs = synthetic_data(
        data_model, truth, noise_sigma=noise_sigma, seed=seed + 1, solver=data_solver
    )
    return model, v_obs, truth


def _check_variant(variant: str) -> None:
    if variant not in PAPER_L23_VARIANTS:
        raise BayesneuronError(
            f"variant {variant!r} unknown; use one of {list(PAPER_L23_VARIANTS)}"
        )


def _renumbered(morph: Morphology, order: Sequence[int]) -> Morphology:
    """``morph`` with compartment ``k`` = old compartment ``order[k]`` (junctions keep their
    places after the compartments)."""
    n_comp, n = morph.n_comp, morph.n_nodes
    order = np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(n_comp)):
        raise BayesneuronError("order must be a permutation of the compartments")
    old_of = np.concatenate([order, np.arange(n_comp, n)])  # new node → old node
    new_of = np.empty(n, dtype=np.int64)
    new_of[old_of] = np.arange(n)
    parents = morph.parents[old_of]
    parents = np.where(parents >= 0, new_of[np.maximum(parents, 0)], -1)

    def comp(x):
        return None if x is None else np.asarray(x)[order]

    return Morphology(
        names=tuple(morph.names[i] for i in order),
        parents=parents,
        axial=morph.axial[old_of],
        area=morph.area[order],
        cm=morph.cm[order],
        geometric=morph.geometric,
        _junction_names=morph._junction_names,
        distance=comp(morph.distance),
        ra=comp(morph.ra),
        ra_pieces=None if morph.ra_pieces is None else morph.ra_pieces[old_of],
    )
