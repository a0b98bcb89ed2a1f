"""Ready-made geometric cells: reference problems shared by tests, notebooks and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

from bayesneuron.cell import Cell
from bayesneuron.channels import Channel, hh_channels
from bayesneuron.morphology.geometry import Section, from_sections
from bayesneuron.morphology.swc import load_swc

__all__ = ["hh_tree_cell", "hh_tree_sections", "l23_cell", "L23_SWC"]

#: File name of the bundled human L2/3 pyramidal cell (Gidon et al. 2020), in ``bayesneuron/data``.
L23_SWC = "gidon2020_L23_171122005.swc"


def hh_tree_sections() -> list[Section]:
    """The sections of :func:`hh_tree_cell` (cylinders, µm)."""
    return [
        Section("soma", None, length=20.0, diam=20.0),
        Section("dend[0]", 0, 1.0, length=200.0, diam=2.0),
        Section("dend[1]", 0, 1.0, length=150.0, diam=1.5),
        Section("dend[2]", 0, 0.0, length=100.0, diam=1.0),
        Section("dend[3]", 1, 1.0, length=120.0, diam=1.0),
        Section("dend[4]", 1, 1.0, length=180.0, diam=0.8),
    ]


def hh_tree_cell(celsius: float = 6.3) -> Cell:
    """A small branched cell with NEURON's ``hh`` in every compartment; NEURON reference problem.

    Soma (L = diam = 20 µm); dend[0] (200 × 2 µm) and dend[1] (150 × 1.5 µm) at soma(1);
    dend[2] (100 × 1 µm) at soma(0); dend[3] (120 × 1 µm) and dend[4] (180 × 0.8 µm) at
    dend[0](1). One segment per section, Ra = 100 Ω·cm, cm = 1 µF/cm², ``v0 = −65`` mV: six
    compartments (``soma(0.5)``, ``dend[0](0.5)``, …) and three internal junctions.

    Args:
        celsius: temperature in °C (HH rates scale by ``3^((celsius − 6.3)/10)``).

    Example:
        >>> cell = hh_tree_cell()
        >>> cell.n_comp, cell.morphology.n_nodes
        (6, 9)
    """
    morph = from_sections(hh_tree_sections(), ra=100.0, cm=1.0, nseg=1)
    return Cell(morph, hh_channels(celsius), v0=-65.0)


def l23_cell(
    nseg: int = 1,
    d_lambda: float | None = None,
    channels: Sequence[Channel] = hh_channels(),
    ra: float = 35.4,
    cm: float = 1.0,
    v0: float = -65.0,
) -> Cell:
    """The human L2/3 pyramidal cell 171122005 of Gidon et al. (2020), 184 sections.

    Morphology from the bundled SWC (``bayesneuron/data``; loaded as NEURON's Import3d does,
    see :func:`bayesneuron.swc.read_swc_sections`), total area 106620.5 µm². Every channel is
    placed in every compartment with its default parameters.

    Args:
        nseg: segments per section (ignored when ``d_lambda`` is given).
        d_lambda: NEURON's d_lambda rule at 100 Hz (e.g. 0.1), instead of ``nseg``.
        channels: membrane channels (default: NEURON's ``hh``).
        ra: axial resistivity in Ω·cm.
        cm: specific membrane capacitance in µF/cm².
        v0: initial voltage in mV.

    Example:
        >>> cell = l23_cell()
        >>> cell.n_comp
        184
    """
    swc = resources.files("bayesneuron").joinpath("data").joinpath(L23_SWC)
    morph = load_swc(swc, ra=ra, cm=cm, nseg=nseg, d_lambda=d_lambda)
    return Cell(morph, tuple(channels), v0=v0)
