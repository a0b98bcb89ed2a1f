"""Reference layer: the paper's toy experiment, ready-made cells and experiment presets."""

from bayesneuron.reference.cells import L23_SWC, hh_tree_cell, hh_tree_sections, l23_cell
from bayesneuron.reference.paper import (
    PAPER_DT,
    PAPER_SEED,
    PAPER_SEEDS,
    paper_currents,
    paper_design_grid,
    paper_designs,
    paper_experiment,
    paper_ground_truth,
    paper_loss,
    paper_time_grid,
    paper_toy_cell,
)
from bayesneuron.reference.presets import PRESETS, Preset, get_preset

__all__ = [
    "L23_SWC",
    "PAPER_DT",
    "PAPER_SEED",
    "PAPER_SEEDS",
    "PRESETS",
    "Preset",
    "get_preset",
    "hh_tree_cell",
    "hh_tree_sections",
    "l23_cell",
    "paper_currents",
    "paper_design_grid",
    "paper_designs",
    "paper_experiment",
    "paper_ground_truth",
    "paper_loss",
    "paper_time_grid",
    "paper_toy_cell",
]
