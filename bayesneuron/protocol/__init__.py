"""Protocol layer: injected currents (:class:`Stimulus`) and which compartments are stimulated
and recorded (:class:`Design`)."""

from bayesneuron.protocol.design import Design, design_grid, format_sites, parse_sites
from bayesneuron.protocol.stimulus import Stimulus, step_current

__all__ = ["Design", "Stimulus", "design_grid", "format_sites", "parse_sites", "step_current"]
