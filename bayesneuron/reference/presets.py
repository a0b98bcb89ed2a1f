"""Experiment presets: a cell, its stimulus protocol, time grid, ground truth and designs.

A study's ``[experiment] preset`` names one of :data:`PRESETS`:

* ``"paper_toy"`` — Jones & Kording's 6-compartment chain, bit for bit (:mod:`.paper`);
* ``"hh_tree"`` — :func:`~bayesneuron.cells.hh_tree_cell`, a branched cell with NEURON's ``hh``
  in every compartment, driven by random piecewise-constant currents (:func:`hh_tree_currents`);
* ``"paper_l23"`` — the paper's 184-compartment experiment (:mod:`.paper_l23`), with its
  ``variant``: ``"faithful"``, ``"graph"`` or ``"right"``;
* ``"l23"`` — electrode placement on the real L2/3 geometry (:mod:`.l23_design`): NaT, Kdr
  and a leak at 34 °C, g_Na and g_Kdr shared by five regions; its ``"placements"`` are the 9
  designs of ``studies/l23_design``.

Each preset gives ``experiment(design, n_traces=…, seed=…, noise_sigma=…, sigma=…, priors=…,
solver=…, device=…) → (model, v_obs, truth)`` and its named design lists (``"grid"``: every
stim × rec pair of the preset's site sets).

Example:
    >>> from bayesneuron.reference import get_preset
    >>> p = get_preset("hh_tree")
    >>> len(p.designs("grid")), p.site_sets[1]
    (25, [0, 1])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from bayesneuron.cell import Cell
from bayesneuron.errors import BayesneuronError, StimulusError
from bayesneuron.protocol.design import Design, design_grid
from bayesneuron.protocol.stimulus import Stimulus

__all__ = ["PRESETS", "Preset", "get_preset", "hh_tree_currents", "hh_tree_experiment"]

#: Site sets of the hh_tree grid: soma; soma + the branching dendrite dend[0]; soma + the thin
#: distal tip dend[4]; soma + every tip (dend[1…4]); every compartment.
HH_TREE_SITES = ([0], [0, 1], [0, 5], [0, 2, 3, 4, 5], None)
HH_TREE_T_STOP = 20.0
"""ms of simulated time per hh_tree trace."""
HH_TREE_BIN = 0.5
"""ms per current bin of the hh_tree protocol."""


def hh_tree_currents(
    cell: Cell,
    seed: int = 0,
    n_traces: int = 20,
    density: float = 20.0,
    t_stop: float = HH_TREE_T_STOP,
    bin_dt: float = HH_TREE_BIN,
    n_changes: int = 2,
) -> Stimulus:
    """Random piecewise-constant currents for a geometric cell, the paper's recipe in nA.

    Per trace and compartment: ``n_changes + 1`` levels drawn uniformly from
    ``[0, density)`` µA/cm² and ``n_changes`` distinct change points among the bins; the level
    becomes a current in nA through the compartment's membrane area, so every compartment,
    thick or thin, gets the same range of current *density* (the paper's 0–19 µA/cm²). The first
    bin is zero: every trace starts at rest.

    Args:
        cell: a geometric cell (currents in nA).
        seed: seed of the draws (a numpy ``Generator``; the global RNGs are not touched).
        n_traces: number of traces.
        density: exclusive upper level in µA/cm².
        t_stop: length in ms (a multiple of ``bin_dt``).
        bin_dt: bin width in ms.
        n_changes: change points per trace and compartment.

    Returns:
        A :class:`Stimulus` ``[n_traces, n_comp, t_stop / bin_dt]`` in nA (float64).
    """
    morph = cell.morphology
    if not morph.geometric:
        raise StimulusError(
            "hh_tree_currents needs a geometric cell (areas in cm², currents in nA)"
        )
    n_bins = int(round(t_stop / bin_dt))
    if n_bins < 2 or abs(n_bins * bin_dt - t_stop) > 1e-9 * t_stop:
        raise StimulusError(f"t_stop = {t_stop} ms must be a multiple ≥ 2 of bin_dt = {bin_dt} ms")
    if not 1 <= n_changes <= n_bins - 1:
        raise StimulusError(f"n_changes = {n_changes} must be in 1 … {n_bins - 1}")
    if not (np.isfinite(density) and density > 0):
        raise StimulusError(f"density = {density} µA/cm² must be finite and > 0")
    if isinstance(n_traces, bool) or not isinstance(n_traces, (int, np.integer)) or n_traces < 1:
        raise StimulusError(f"n_traces = {n_traces!r} must be an int ≥ 1")
    rng = np.random.default_rng(seed)
    n_comp = cell.n_comp
    levels = rng.uniform(0.0, density, size=(n_traces, n_comp, n_changes + 1))
    cps = np.sort(
        np.stack(
            [
                rng.choice(np.arange(1, n_bins), n_changes, replace=False)
                for _ in range(n_traces * n_comp)
            ]
        ).reshape(n_traces, n_comp, n_changes),
        axis=-1,
    )
    seg = (np.arange(n_bins)[None, None, :, None] >= cps[:, :, None, :]).sum(-1)
    values = np.take_along_axis(levels, seg, axis=-1)
    values[..., 0] = 0.0
    values *= morph.area[None, :, None] * 1e3  # µA/cm² · cm² = µA → nA
    return Stimulus(torch.from_numpy(values), dt=bin_dt, unit="nA")


def hh_tree_experiment(
    design=None,
    *,
    n_traces: int = 20,
    seed: int = 0,
    noise_sigma: float = 0.0,
    sigma: float = 1.0,
    priors="paper",
    solver=None,
    data_solver=None,
    dtype: torch.dtype = torch.float64,
    device=None,
):
    """The hh_tree experiment under ``design``: ``(model, v_obs, truth)``.

    :func:`~bayesneuron.cells.hh_tree_cell` at 6.3 °C; :func:`hh_tree_currents` (seed
    ``seed``) at the stimulated sites; outputs every 0.25 ms from 0.25 to 20 ms (80 times);
    ground truth g_Na, g_K = hh defaults (120, 36 mS/cm²) × U(0.7, 1.3) per compartment
    (:func:`~bayesneuron.synthetic.draw_truth`, seed ``seed``); data simulated by
    ``data_solver`` (default: the model's) plus noise of sd ``noise_sigma`` mV (seed
    ``seed + 1``). ``priors="paper"`` is the target distribution base × U(0.7, 1.3).
    """
    from bayesneuron.inference.model import NeuronModel
    from bayesneuron.inference.synthetic import draw_truth, synthetic_data
    from bayesneuron.reference.cells import hh_tree_cell
    from bayesneuron.reference.paper import preset_priors
    from bayesneuron.simulation.solvers import CrankNicolson

    design = Design() if design is None else design
    cell = hh_tree_cell()
    model = NeuronModel(
        cell,
        hh_tree_currents(cell, seed, n_traces=n_traces),
        np.arange(1, int(round(HH_TREE_T_STOP / 0.25)) + 1) * 0.25,
        design,
        priors=preset_priors(priors),
        sigma=sigma,
        solver=solver or CrankNicolson(dt=0.025),
        dtype=dtype,
        device=device,
    )
    truth = draw_truth(cell, ("g_na", "g_k"), seed=seed)
    v_obs = synthetic_data(model, truth, noise_sigma=noise_sigma, seed=seed + 1, solver=data_solver)
    return model, v_obs, truth


@dataclass(frozen=True)
class Preset:
    """A named experiment (see the module docstring).

    Attributes:
        name: the ``[experiment] preset`` value.
        description: one sentence for reports.
        cell: builds the preset's cell.
        experiment: ``(design, **kw) → (model, v_obs, truth)``.
        site_sets: the stim/rec site sets of the ``"grid"`` designs (``None`` = all).
        dt: default Crank–Nicolson step in ms.
        named: other design lists by name (e.g. the paper's ``"paper9"``).
        variants: the values of ``experiment``'s ``variant`` argument, the default first
            (empty: it has none).
        sections: the reconstructed cell's sections with 3-D points, for morphology figures
            (compartment ``"<section>(x)"`` belongs to section ``<section>``); None: none.
    """

    name: str
    description: str
    cell: Callable[[], Cell]
    experiment: Callable[..., tuple]
    site_sets: Sequence
    dt: float
    named: Mapping[str, Callable[[], list[Design]]] = field(default_factory=dict)
    variants: tuple[str, ...] = ()
    sections: Callable[[], list] | None = None

    def designs(self, spec: str) -> list[Design]:
        """The design list named ``spec`` (``"grid"`` or one of :attr:`named`)."""
        if spec == "grid":
            return design_grid(self.site_sets)
        if spec in self.named:
            return self.named[spec]()
        raise BayesneuronError(
            f"design list {spec!r} unknown for preset {self.name!r}; use one of "
            f"{['grid', *self.named]} or a list of labels like ['all|all', '[0,1]|all']"
        )


def _paper_toy() -> Preset:
    from bayesneuron.reference.paper import (
        PAPER_SITES,
        paper_design_grid,
        paper_designs,
        paper_experiment,
        paper_toy_cell,
    )

    return Preset(
        name="paper_toy",
        description="Jones & Kording's 6-compartment chain (paper channels, V0 = −60 mV), "
        "the paper's random step currents (µA/cm²), 48 outputs over 5 ms",
        cell=paper_toy_cell,
        experiment=paper_experiment,
        site_sets=PAPER_SITES,
        dt=0.004,
        named={
            "paper9": lambda: [Design(s, r) for s, r in paper_designs()],
            "grid25": lambda: [Design(s, r) for s, r in paper_design_grid()],
        },
    )


def _hh_tree() -> Preset:
    from bayesneuron.reference.cells import hh_tree_cell

    return Preset(
        name="hh_tree",
        description="a branched 6-compartment cell (soma + 5 dendrites, 100–200 µm) with "
        "NEURON's hh at 6.3 °C, random step currents of 0–20 µA/cm² (nA by area), 80 outputs "
        "over 20 ms",
        cell=hh_tree_cell,
        experiment=hh_tree_experiment,
        site_sets=HH_TREE_SITES,
        dt=0.025,
    )


def _paper_l23() -> Preset:
    from bayesneuron.reference.paper_l23 import (
        PAPER_L23_STIM,
        PAPER_L23_VARIANTS,
        paper_l23_cell,
        paper_l23_experiment,
    )

    stim18 = list(PAPER_L23_STIM)
    return Preset(
        name="paper_l23",
        description="Jones & Kording's 184-compartment experiment on the human L2/3 cell "
        "171122005 (paper channels, ax = 0.01, currents 0–9 µA/cm² every 18th compartment, 48 "
        "outputs over 5 ms); variants: the paper's chain-data/graph-learner mismatch "
        "(faithful), data and learner on the paper's graph, or on the real geometry (right)",
        cell=paper_l23_cell,
        experiment=paper_l23_experiment,
        site_sets=([0], stim18, None),
        dt=0.005,
        named={"paper": lambda: [Design(stim18, None)]},
        variants=PAPER_L23_VARIANTS,
        sections=_l23_sections,
    )


def _l23() -> Preset:
    from bayesneuron.reference.l23_design import (
        L23_ELECTRODE_SETS,
        l23_design_cell,
        l23_designs,
        l23_experiment,
        l23_sites,
    )

    sites = l23_sites(l23_design_cell().morphology)
    return Preset(
        name="l23",
        description="the human L2/3 cell 171122005 on its real geometry (one compartment per "
        "section), NaT + Kdr + leak at 34 °C, g_Na and g_Kdr shared by soma, axon, basal, "
        "apical < 300 µm and apical ≥ 300 µm; random step currents of 0–2 nA at the "
        "stimulated sites, 125 outputs over 25 ms",
        cell=l23_design_cell,
        experiment=l23_experiment,
        site_sets=tuple([sites[s] for s in e] for e in L23_ELECTRODE_SETS),
        dt=0.025,
        named={"placements": l23_designs},
        sections=_l23_sections,
    )


def _l23_sections() -> list:
    from importlib import resources

    from bayesneuron.morphology.swc import read_swc_sections
    from bayesneuron.reference.cells import L23_SWC

    return read_swc_sections(resources.files("bayesneuron").joinpath("data").joinpath(L23_SWC))


PRESETS: dict[str, Callable[[], Preset]] = {
    "paper_toy": _paper_toy,
    "hh_tree": _hh_tree,
    "paper_l23": _paper_l23,
    "l23": _l23,
}
"""Preset name → constructor."""


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise BayesneuronError(f"preset {name!r} unknown; available: {sorted(PRESETS)}")
    return PRESETS[name]()
