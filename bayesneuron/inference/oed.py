"""Expected information gain of a design, by Pyro's nested Monte Carlo estimator.

``EIG(d) = E_{θ, y ~ p(θ) p(y|θ, d)} [log p(y | θ, d) − log p(y | d)]`` — how many nats a
design's data are expected to teach about the free conductances, averaged over the prior
(``pyro.contrib.oed.eig.nmc_eig``: ``N`` outer draws ``(θ_n, y_n)``, the marginal
``p(y_n | d)`` from ``M`` fresh prior draws). Every draw of ``θ`` goes through the simulator in
one batch.

What the number is: Pyro's inner draws are fresh (they exclude ``θ_n``), so the inner mean is
an unbiased estimate of ``p(y_n | d)`` and, by Jensen's inequality, the estimator is biased
*upwards* (``E[estimate] ≥ EIG``), consistent as ``M → ∞`` but with a bias that becomes small
only once ``M ≫ e^EIG``. It has no ``log M`` ceiling: where no inner draw explains ``y_n`` its
term is enormous (on a linear-Gaussian toy with an exact EIG of 6.4 nats, ``M = 50`` gives
≈ 23). :func:`expected_information_gain` clips the estimate at ``log M``; so for every
informative design (EIG ≳ log M) it returns ≈ ``log M``, which is neither a bound nor an
estimate of the EIG and cannot rank such designs. Use it for weakly informative designs
(estimates well below ``log M``), and :mod:`bayesneuron.inference.criteria` (the Laplace EIG
``eig_laplace``, exact for linear-Gaussian models, no saturation) otherwise.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.contrib.oed.eig import nmc_eig

from bayesneuron.errors import FitError
from bayesneuron.inference._runtime import seeded
from bayesneuron.inference.space import ParameterSpace

__all__ = ["expected_information_gain"]


def _oed_model(model, space: ParameterSpace):
    """``model`` as ``pyro.contrib.oed`` wants it: a function of a design tensor whose batch
    shape (all but the last dim) is the batch of ``θ`` draws."""

    def fn(design: torch.Tensor):
        batch = design.shape[:-1]
        parts = []
        for k in model.free:
            d = model.priors[k].expand(batch + (model.base[k].shape[-1],)).to_event(1)
            parts.append(pyro.sample(k, d))
        v = model.simulate(dict(zip(model.free, parts)))  # [*batch, trace, n_rec, time]
        return pyro.sample("v_obs", dist.Normal(v, model.sigma).to_event(3))

    return fn


def expected_information_gain(model, *, N: int = 200, M: int = 200, seed: int = 0) -> float:
    """Nested Monte Carlo EIG (nats) of ``model``'s design about its free parameters (prior
    draws ``N`` outer, ``M`` inner), clipped at ``log M``: biased upwards, and ≈ ``log M`` for
    every design whose EIG is about ``log M`` or more (see the module docstring; for those use
    :func:`~bayesneuron.inference.criteria.design_criteria`'s ``eig_laplace``)."""
    if model.sigma is None:
        raise FitError("expected_information_gain needs a fixed sigma in the model")
    if N < 2 or M < 2:
        raise FitError(f"N = {N} and M = {M} must be ≥ 2")
    space = ParameterSpace(model)  # checks that every free parameter has a prior
    design = torch.zeros(1, dtype=model.dtype, device=model.device)
    with seeded(seed, model.device), torch.no_grad():  # the global RNGs are restored
        eig = nmc_eig(_oed_model(model, space), design, ["v_obs"], list(model.free), N=N, M=M)
    out = float(eig.reshape(-1)[0])
    return min(out, math.log(M)) if math.isfinite(out) else out
