"""Protocol layer: injected currents (:class:`Stimulus`, or :class:`ElectrodeStimulus` for one
electrode) and which compartments are stimulated and recorded (:class:`Design`)."""

from bayesneuron.protocol.design import Design, design_grid, format_sites, parse_sites
from bayesneuron.protocol.electrode import ElectrodeStimulus
from bayesneuron.protocol.stimulus import Stimulus, step_current

__all__ = [
    "Design",
    "ElectrodeStimulus",
    "Stimulus",
    "design_grid",
    "format_sites",
    "parse_sites",
    "step_current",
]
