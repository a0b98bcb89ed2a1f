"""Morphology layer: the compartment tree (parents, geometry or abstract coupling), builders from
sections and SWC files. Knows nothing of channels."""

from bayesneuron.morphology.geometry import Section, from_sections, section_nseg, segment_geometry
from bayesneuron.morphology.regions import Region
from bayesneuron.morphology.swc import load_swc, read_swc_sections
from bayesneuron.morphology.tree import Morphology, chain, paper_chain

__all__ = [
    "Morphology",
    "Region",
    "Section",
    "chain",
    "from_sections",
    "load_swc",
    "paper_chain",
    "read_swc_sections",
    "section_nseg",
    "segment_geometry",
]
