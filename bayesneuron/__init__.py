"""bayesneuron: Bayesian inference on differentiable multicompartment neuron models."""

import atexit as _atexit
import gc as _gc

from .calibration import SbcResult, sbc
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
from .design import Design, design_grid
from .errors import (
    BayesneuronError,
    ChannelError,
    DataError,
    DesignError,
    FitError,
    MorphologyError,
    ParameterError,
    SolverError,
    StimulusError,
)
from .fit import MapFit, fit_map, fit_map_designs
from .geometry import Section, from_sections
from .laplace import LocalPosterior, UnconstrainedLaplace, laplace, laplace_map
from .metrics import Identifiability, identifiability
from .model import NeuronModel
from .morphology import Morphology, chain, paper_chain
from .nuts import NutsRun, run_nuts
from .oed import expected_information_gain
from .paper import (
    paper_currents,
    paper_designs,
    paper_experiment,
    paper_ground_truth,
    paper_loss,
    paper_time_grid,
    paper_toy_cell,
)
from .priors import LogNormalPrior, Prior, ScaledUniformPrior
from .profile import Profile, profile_likelihood
from .simulate import Reset, Trace, sensitivities, simulate
from .solvers import BackwardEuler, CrankNicolson, Torchdiffeq
from .stimulus import Stimulus, step_current
from .svi import SviFit, fit_svi
from .swc import load_swc, read_swc_sections
from .synthetic import draw_truth, synthetic_data

__version__ = "0.1.0"

__all__ = [
    "Profile",
    "SbcResult",
    "expected_information_gain",
    "profile_likelihood",
    "sbc",
    "Identifiability",
    "LocalPosterior",
    "NutsRun",
    "SviFit",
    "UnconstrainedLaplace",
    "fit_svi",
    "identifiability",
    "laplace",
    "laplace_map",
    "run_nuts",
    "BackwardEuler",
    "BayesneuronError",
    "Cell",
    "Channel",
    "ChannelError",
    "CrankNicolson",
    "DataError",
    "Design",
    "DesignError",
    "FitError",
    "HHPotassium",
    "HHSodium",
    "Leak",
    "LogNormalPrior",
    "MapFit",
    "Morphology",
    "MorphologyError",
    "NeuronModel",
    "PaperLeak",
    "PaperPotassium",
    "PaperSodium",
    "ParameterError",
    "Prior",
    "Reset",
    "ScaledUniformPrior",
    "Section",
    "SolverError",
    "Stimulus",
    "StimulusError",
    "Torchdiffeq",
    "Trace",
    "sensitivities",
    "chain",
    "design_grid",
    "draw_truth",
    "fit_map",
    "fit_map_designs",
    "from_sections",
    "hh_channels",
    "hh_tree_cell",
    "l23_cell",
    "load_swc",
    "paper_chain",
    "paper_channels",
    "paper_currents",
    "paper_designs",
    "paper_experiment",
    "paper_ground_truth",
    "paper_loss",
    "paper_time_grid",
    "paper_toy_cell",
    "read_swc_sections",
    "simulate",
    "step_current",
    "synthetic_data",
]

# At interpreter exit, exempt every object from the final garbage collections: with torch loaded
# they traverse ~200k objects and take ≈ 1 s per process here; the process is ending and the OS
# reclaims its memory. (Objects in reference cycles then skip ``__del__`` at exit, which Python
# never guaranteed.) Registered at import, so it runs after the handlers registered later.
_atexit.register(_gc.freeze)
