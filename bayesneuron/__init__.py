"""bayesneuron: Bayesian inference on differentiable multicompartment neuron models."""

from .cell import Cell
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
from .morphology import Morphology, chain, paper_chain
from .simulate import Trace, simulate
from .solvers import BackwardEuler, CrankNicolson, Torchdiffeq
from .stimulus import Stimulus, step_current

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
    "Stimulus",
    "StimulusError",
    "Torchdiffeq",
    "Trace",
    "chain",
    "hh_channels",
    "paper_chain",
    "paper_channels",
    "simulate",
    "step_current",
]
