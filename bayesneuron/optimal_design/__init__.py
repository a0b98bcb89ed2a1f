"""Optimal experimental design: stimulus waveforms that maximise a design criterion.

A stimulus family (:mod:`.families`; an amplifier's epochs in :mod:`.epochs`) maps
unconstrained parameters to bounded currents; the criterion (:mod:`.objective`) is the
Bayesian D-optimality (or contraction, or Laplace EIG) of the Fisher information at
parameter points drawn from the prior, differentiable in the currents; :mod:`.optimize`
runs multi-start Adam/L-BFGS on it with checkpoints, and :mod:`.sites` selects electrode
sites around that (greedy, then exchange); :mod:`.traces` chooses the most informative
sweeps from a pool of candidate stimuli.

Example:
    >>> from bayesneuron.optimal_design import PiecewiseConstant, problem_from_model, optimize_stimulus
    >>> problem = problem_from_model(model, n_theta=2)
    >>> fam = PiecewiseConstant(n_traces=5, sites=(0,), lo=0.0, hi=19.0)
    >>> result = optimize_stimulus(problem, fam)
"""

from bayesneuron.optimal_design.epochs import Ramps, Steps
from bayesneuron.optimal_design.families import (
    Chirp,
    PiecewiseConstant,
    SineSum,
    StimulusFamily,
)
from bayesneuron.optimal_design.objective import (
    CRITERIA,
    DesignProblem,
    criterion_values,
    exact_fisher,
    fisher,
    objective,
    problem_from_model,
)
from bayesneuron.optimal_design.optimize import DesignResult, OptimizeConfig, optimize_stimulus
from bayesneuron.optimal_design.sites import (
    SiteResults,
    exchange_sites,
    greedy_sites,
    optimized_site_set,
)
from bayesneuron.optimal_design.traces import select_traces, set_value

FAMILIES = {
    "bins": PiecewiseConstant,
    "sines": SineSum,
    "chirp": Chirp,
    "steps": Steps,
    "ramps": Ramps,
}
"""Family name (as the study's ``family`` column writes it) → class."""

__all__ = [
    "CRITERIA",
    "FAMILIES",
    "Chirp",
    "DesignProblem",
    "DesignResult",
    "OptimizeConfig",
    "PiecewiseConstant",
    "Ramps",
    "SineSum",
    "Steps",
    "SiteResults",
    "StimulusFamily",
    "criterion_values",
    "exact_fisher",
    "exchange_sites",
    "fisher",
    "greedy_sites",
    "optimized_site_set",
    "objective",
    "optimize_stimulus",
    "problem_from_model",
    "select_traces",
    "set_value",
]
