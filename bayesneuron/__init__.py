"""bayesneuron: Bayesian inference on differentiable multicompartment neuron models."""

from .cell import Cell
from .cells import hh_tree_cell, l23_cell
from .channels import (
    Channel,
    HHPotassium,
    HHSodium,
    Leak,
    PaperLeak,
    PaperPotassium,
    PaperSodium,
    hh_channels,
    paper_channels,
)
from .errors import (
    BayesneuronError,
    ChannelError,
    MorphologyError,
    ParameterError,
    SolverError,
    StimulusError,
)
from .geometry import Section, from_sections
from .morphology import Morphology, chain, paper_chain
from .paper import (
    paper_currents,
    paper_designs,
    paper_ground_truth,
    paper_loss,
    paper_time_grid,
    paper_toy_cell,
)
from .simulate import Trace, simulate
from .solvers import BackwardEuler, CrankNicolson, Torchdiffeq
from .stimulus import Stimulus, step_current
from .swc import load_swc, read_swc_sections

__version__ = "0.1.0"

__all__ = [
    "BackwardEuler",
    "BayesneuronError",
    "Cell",
    "Channel",
    "ChannelError",
    "CrankNicolson",
    "HHPotassium",
    "HHSodium",
    "Leak",
    "Morphology",
    "MorphologyError",
    "PaperLeak",
    "PaperPotassium",
    "PaperSodium",
    "ParameterError",
    "SolverError",
    "Section",
    "Stimulus",
    "StimulusError",
    "Torchdiffeq",
    "Trace",
    "chain",
    "from_sections",
    "hh_channels",
    "hh_tree_cell",
    "l23_cell",
    "load_swc",
    "paper_chain",
    "paper_channels",
    "paper_currents",
    "paper_designs",
    "paper_ground_truth",
    "paper_loss",
    "paper_time_grid",
    "paper_toy_cell",
    "read_swc_sections",
    "simulate",
    "step_current",
]
