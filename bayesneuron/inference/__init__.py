"""Inference layer: the Pyro model, priors, one parameter space, MAP, Laplace, SVI, NUTS,
identifiability metrics, calibration and design criteria. Numeric only: no plotting.

No inference function changes global state: fits seed the global RNGs locally and restore
them, and Pyro's parameter store is left as the caller had it. Every result has ``draws``
(name → ``[draw, comp]``) and ``diagnostics`` (:class:`PosteriorResult`)."""

from bayesneuron.inference.calibration import SbcResult, sbc
from bayesneuron.inference.criteria import (
    bayesian_d_optimality,
    design_criteria,
    posterior_contraction,
)
from bayesneuron.inference.diagnostics import chain_diagnostics, khat_threshold, psis_khat
from bayesneuron.inference.fit import MapFit, fit_map, fit_map_designs
from bayesneuron.inference.forms import ExpDistance, Parametrisation, PerCompartment, Shared
from bayesneuron.inference.laplace import (
    LocalPosterior,
    UnconstrainedLaplace,
    fisher_information,
    laplace,
    laplace_map,
)
from bayesneuron.inference.metrics import Identifiability, identifiability
from bayesneuron.inference.model import NeuronModel
from bayesneuron.inference.nuts import NutsRun, run_nuts
from bayesneuron.inference.oed import expected_information_gain
from bayesneuron.inference.posterior import LADDER, CheckedPosterior, checked_posterior
from bayesneuron.inference.priors import LogNormalPrior, NormalPrior, Prior, ScaledUniformPrior
from bayesneuron.inference.profile import Profile, profile_likelihood
from bayesneuron.inference.results import PosteriorResult
from bayesneuron.inference.smc import tempered_smc
from bayesneuron.inference.space import ParameterSpace, prior_draws, start_points
from bayesneuron.inference.svi import SviFit, fit_svi
from bayesneuron.inference.synthetic import draw_truth, synthetic_data
from bayesneuron.inference.whitened import PosteriorGuide, WhitenedModel

__all__ = [
    "LADDER",
    "CheckedPosterior",
    "bayesian_d_optimality",
    "design_criteria",
    "posterior_contraction",
    "chain_diagnostics",
    "checked_posterior",
    "khat_threshold",
    "psis_khat",
    "ExpDistance",
    "Identifiability",
    "LocalPosterior",
    "LogNormalPrior",
    "NormalPrior",
    "Parametrisation",
    "PerCompartment",
    "Shared",
    "MapFit",
    "NeuronModel",
    "NutsRun",
    "ParameterSpace",
    "PosteriorGuide",
    "PosteriorResult",
    "Prior",
    "Profile",
    "SbcResult",
    "ScaledUniformPrior",
    "SviFit",
    "UnconstrainedLaplace",
    "WhitenedModel",
    "draw_truth",
    "expected_information_gain",
    "fisher_information",
    "fit_map",
    "fit_map_designs",
    "fit_svi",
    "identifiability",
    "laplace",
    "laplace_map",
    "prior_draws",
    "profile_likelihood",
    "run_nuts",
    "sbc",
    "start_points",
    "synthetic_data",
    "tempered_smc",
]
