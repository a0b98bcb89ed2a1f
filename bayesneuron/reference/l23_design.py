"""Electrode placement on the real L2/3 geometry: the ``"l23"`` preset of ``studies/l23_design``.

The human L2/3 pyramidal cell 171122005 (:func:`~bayesneuron.reference.cells.l23_cell`, one
compartment per section: 184) with cortical channels from the library at 34 °C — transient Na
(:class:`~bayesneuron.channels.NaT`), delayed-rectifier K (:class:`~bayesneuron.channels.Kdr`)
and a leak (0.03 mS/cm², −70 mV) — whose g_Na and g_Kdr are shared by five regions
(:func:`l23_regions`): soma, axon, basal, apical proximal (path distance < 300 µm) and apical
distal (the tuft and the distal trunk). Each region's base values (:data:`L23_BASE`) follow the
order of Hay et al.'s (2011) L5 model — perisomatic Na and K of hundreds of mS/cm², apical Na
≈ 20 mS/cm² — scaled so that this one-compartment-per-section cell, with no axon initial
segment of its own, fires in about half of the traces under 0–2 nA at the soma; the distal
apical values are 0.6 of the proximal ones (Na decreasing along the apical dendrite).

Electrodes (:func:`l23_sites`, chosen from the geometry, not by hand): the soma; the tuft tip
(the apical compartment farthest from the soma, ``apic[55]``, 965 µm); the apical trunk (the
compartment on the soma → tuft-tip path closest to 200 µm, ``apic[45]``, 197 µm); the basal tip
(the basal compartment farthest from the soma, ``dend[57]``, 275 µm). Designs
(:func:`l23_designs`): each electrode set ``E`` of :data:`L23_ELECTRODE_SETS` stimulating and
recording (``E|E``), and soma-only stimulation recorded at ``E`` (``[soma]|E``): 9 designs.

Units: nA, mV, ms, mS/cm², µm.
"""

from __future__ import annotations

import numpy as np
import torch

from bayesneuron.cell import Cell
from bayesneuron.errors import StimulusError
from bayesneuron.morphology.regions import Region
from bayesneuron.morphology.tree import Morphology
from bayesneuron.protocol.design import Design
from bayesneuron.protocol.stimulus import Stimulus

__all__ = [
    "L23_APICAL_SPLIT",
    "L23_BASE",
    "L23_CELSIUS",
    "L23_ELECTRODE_SETS",
    "L23_FREE",
    "L23_I_MAX",
    "L23_T_STOP",
    "l23_currents",
    "l23_design_cell",
    "l23_designs",
    "l23_experiment",
    "l23_free",
    "l23_regions",
    "l23_sites",
    "l23_truth",
]

L23_CELSIUS = 34.0
"""°C: the temperature of Hay et al.'s (2011) L5 model and of many slice recordings."""
L23_APICAL_SPLIT = 300.0
"""µm of path distance from the soma separating the apical proximal and distal regions."""
L23_FREE = ("g_na", "g_kdr")
"""The free conductances, each shared by the five regions of :func:`l23_regions`."""
L23_BASE = {
    "g_na": {"soma": 250.0, "axon": 100.0, "basal": 25.0, "apical_prox": 30.0, "apical_dist": 18.0},
    "g_kdr": {"soma": 100.0, "axon": 40.0, "basal": 12.0, "apical_prox": 15.0, "apical_dist": 9.0},
}
"""Base values per region (mS/cm²): the cell's values, the priors' centres (base × U(0.7, 1.3))
and the first MAP start; the ground truth is base × U(0.7, 1.3), seeded."""
L23_T_STOP = 25.0
"""ms of simulated time per trace."""
L23_BIN = 0.5
"""ms per current bin."""
L23_OUT_DT = 0.2
"""ms between outputs (0.2 … 25 ms: 125 outputs)."""
L23_I_MAX = 2.0
"""nA: exclusive upper current level at every stimulated site."""
L23_ELECTRODE_SETS = (
    ("soma",),
    ("soma", "trunk"),
    ("soma", "basal_tip"),
    ("soma", "tuft"),
    ("soma", "trunk", "basal_tip", "tuft"),
)
"""The electrode sets compared (names of :func:`l23_sites`)."""


def _channels():
    from bayesneuron.channels.base import Leak
    from bayesneuron.channels.cortical import Kdr, NaT

    return (NaT(celsius=L23_CELSIUS), Kdr(celsius=L23_CELSIUS), Leak(g=0.03, e=-70.0))


def l23_regions(morph: Morphology) -> tuple[Region, ...]:
    """The five regions of the free conductances: ``soma``, ``axon``, ``basal``,
    ``apical_prox`` (apical compartments < :data:`L23_APICAL_SPLIT` µm from the soma by path)
    and ``apical_dist`` (the other apical ones); together every compartment, once."""
    apical = np.asarray(Region("apical").indices(morph))
    near = morph.distance[apical] < L23_APICAL_SPLIT
    return (
        Region("soma"),
        Region("axon"),
        Region("basal"),
        Region("apical_prox", compartments=tuple(int(i) for i in apical[near])),
        Region("apical_dist", compartments=tuple(int(i) for i in apical[~near])),
    )


def l23_design_cell() -> Cell:
    """The preset's cell: :func:`~bayesneuron.reference.cells.l23_cell` (one compartment per
    section, Ra 35.4 Ω·cm, cm 1 µF/cm², V0 −70 mV) with NaT, Kdr and a leak at 34 °C and
    g_Na, g_Kdr at :data:`L23_BASE` in each region.

    Example:
        >>> cell = l23_design_cell()
        >>> cell.n_comp, float(cell.params["g_na"][0])
        (184, 250.0)
    """
    from bayesneuron.reference.cells import l23_cell

    cell = l23_cell(nseg=1, channels=_channels(), v0=-70.0)
    values = {k: np.zeros(cell.n_comp) for k in L23_FREE}
    for reg in l23_regions(cell.morphology):
        idx = list(reg.indices(cell.morphology))
        for k in L23_FREE:
            values[k][idx] = L23_BASE[k][reg.name]
    return cell.with_params(**values)


def l23_free(cell: Cell) -> list:
    """The free parameters: g_Na and g_Kdr shared by :func:`l23_regions`."""
    from bayesneuron.inference.forms import Shared

    regs = l23_regions(cell.morphology)
    return [Shared(k, regions=regs) for k in L23_FREE]


def _path_to_soma(morph: Morphology, comp: int) -> list[int]:
    """The compartments from ``comp`` up to the root (junctions skipped)."""
    out, node = [], comp
    while node >= 0:
        if node < morph.n_comp:
            out.append(int(node))
        node = int(morph.parents[node])
    return out


def l23_sites(morph: Morphology) -> dict[str, str]:
    """The electrode sites by name → compartment name (see the module docstring): ``soma``,
    ``trunk``, ``basal_tip``, ``tuft``."""
    d = morph.distance
    apical = np.asarray(Region("apical").indices(morph))
    basal = np.asarray(Region("basal").indices(morph))
    tuft = int(apical[np.argmax(d[apical])])
    path = [i for i in _path_to_soma(morph, tuft) if i in set(apical.tolist())]
    trunk = min(path, key=lambda i: abs(d[i] - 200.0))
    return {
        "soma": morph.names[Region("soma").indices(morph)[0]],
        "trunk": morph.names[trunk],
        "basal_tip": morph.names[int(basal[np.argmax(d[basal])])],
        "tuft": morph.names[tuft],
    }


def l23_designs() -> list[Design]:
    """The 9 designs: ``E|E`` for each set of :data:`L23_ELECTRODE_SETS`, then ``[soma]|E``
    for each set but the soma alone (sites as compartment names)."""
    sites = l23_sites(l23_design_cell().morphology)
    sets = [[sites[s] for s in e] for e in L23_ELECTRODE_SETS]
    return [Design(e, e) for e in sets] + [Design(sets[0], e) for e in sets[1:]]


def l23_currents(
    n_comp: int, seed: int = 0, n_traces: int = 10, i_max: float = L23_I_MAX
) -> Stimulus:
    """Random piecewise-constant currents in nA, the paper's recipe: per trace and
    compartment 3 levels from U(0, ``i_max``) nA and 2 distinct change points among the
    :data:`L23_BIN`-ms bins of :data:`L23_T_STOP` ms; the first bin is zero (rest). Drawn for
    every compartment in one order, so a site's current is the same in every design (the
    model keeps the stimulated sites').

    Returns:
        A :class:`Stimulus` ``[n_traces, n_comp, 50]`` in nA (float64).
    """
    if isinstance(n_traces, bool) or not isinstance(n_traces, (int, np.integer)) or n_traces < 1:
        raise StimulusError(f"n_traces = {n_traces!r} must be an int ≥ 1")
    rng = np.random.default_rng(seed)
    n_bins = int(round(L23_T_STOP / L23_BIN))
    levels = rng.uniform(0.0, i_max, size=(n_traces, n_comp, 3))
    cps = np.sort(
        np.stack(
            [rng.choice(np.arange(1, n_bins), 2, replace=False) for _ in range(n_traces * n_comp)]
        ).reshape(n_traces, n_comp, 2),
        axis=-1,
    )
    seg = (np.arange(n_bins)[None, None, :, None] >= cps[:, :, None, :]).sum(-1)
    values = np.take_along_axis(levels, seg, axis=-1)
    values[..., 0] = 0.0
    return Stimulus(torch.from_numpy(values), dt=L23_BIN, unit="nA")


def l23_truth(seed: int) -> dict[str, np.ndarray]:
    """Ground truth per region (order of :func:`l23_regions`): base × U(0.7, 1.3), seeded."""
    rng = np.random.default_rng([seed, 23])
    return {
        k: np.array(list(L23_BASE[k].values())) * rng.uniform(0.7, 1.3, len(L23_BASE[k]))
        for k in L23_FREE
    }


def l23_experiment(
    design=None,
    *,
    n_traces: int = 10,
    seed: int = 0,
    noise_sigma: float = 0.0,
    sigma: float = 1.0,
    priors="paper",
    solver=None,
    data_solver=None,
    dtype: torch.dtype = torch.float64,
    device=None,
):
    """The l23 experiment under ``design``: ``(model, v_obs, truth)``.

    :func:`l23_design_cell`; :func:`l23_currents` (seed ``seed``) at the stimulated sites;
    outputs every 0.2 ms from 0.2 to 25 ms (125 times); free g_Na, g_Kdr shared by the five
    regions (:func:`l23_free`); ground truth :func:`l23_truth` (seed ``seed``); data simulated by
    ``data_solver`` (default: the model's) plus noise of sd ``noise_sigma`` mV (seed
    ``seed + 1``). ``priors="paper"``: base × U(0.7, 1.3) per region. Default design: the soma
    stimulated, every compartment recorded.
    """
    from bayesneuron.inference.model import NeuronModel
    from bayesneuron.inference.synthetic import synthetic_data
    from bayesneuron.reference.paper import preset_priors
    from bayesneuron.simulation.solvers import CrankNicolson

    cell = l23_design_cell()
    design = Design(["soma(0.5)"], None) if design is None else design
    n_out = int(round(L23_T_STOP / L23_OUT_DT))
    model = NeuronModel(
        cell,
        l23_currents(cell.n_comp, seed, n_traces=n_traces),
        np.arange(1, n_out + 1) * L23_OUT_DT,
        design,
        free=l23_free(cell),
        priors=preset_priors(priors),
        sigma=sigma,
        solver=solver or CrankNicolson(dt=0.025),
        dtype=dtype,
        device=device,
    )
    truth = l23_truth(seed)
    v_obs = synthetic_data(model, truth, noise_sigma=noise_sigma, seed=seed + 1, solver=data_solver)
    return model, v_obs, truth
