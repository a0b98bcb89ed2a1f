"""Local identifiability: sensitivities, Fisher information and the Laplace approximation.

At a parameter point ``g`` (e.g. the ground truth or a MAP) of a :class:`NeuronModel` with
fixed noise ``σ``:

* ``J = ∂ v_rec / ∂ g`` ``[M, P]`` by central differences in ``log g`` (one batched simulation
  of ``2P`` perturbed parameter sets; ``M = trace · n_rec · time``, ``P = n_free · n_comp``,
  parameters ordered free-name-major: ``g_na[0…n−1], g_k[0…n−1]``);
* the Fisher information ``F = JᵀJ / σ²`` (the Gauss–Newton Hessian of the negative
  log-likelihood);
* the Laplace posterior ``N(g, (F + H_prior)⁻¹)`` with ``H_prior = −∇² log p(g)``; where that
  is zero (inside a uniform prior) the prior enters as a Gaussian of the same variance, so an
  uninformed parameter keeps its prior width instead of an unbounded one; its sds,
  correlations and the contraction ``1 − Var_post / Var_prior``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import FitError
from .model import NeuronModel

__all__ = ["jacobian", "fisher_information", "LocalPosterior", "laplace"]


def _vector(model: NeuronModel, params: Mapping) -> Tensor:
    return torch.cat(
        [
            torch.as_tensor(np.asarray(params[k], dtype=np.float64), dtype=model.dtype).reshape(
                model.n_comp
            )
            for k in model.free
        ]
    ).to(model.device)


def jacobian(model: NeuronModel, params: Mapping, *, step: float = 1e-5) -> Tensor:
    """``∂ v_rec / ∂ g`` ``[M, P]`` at ``params`` (name → ``[comp]``) by central differences
    with relative step ``step`` (error ≈ step², fixed-step solvers only: an adaptive solver's
    step control would make the difference quotient noisy)."""
    g = _vector(model, params)
    if not bool((g > 0).all()):
        raise FitError("jacobian: parameters must be > 0 (relative differences)")
    n, P = model.n_comp, g.numel()
    eye = torch.eye(P, dtype=g.dtype, device=g.device)
    pts = torch.cat([g * (1 + step * eye), g * (1 - step * eye)])  # [2P, P]
    with torch.no_grad():
        v = model.simulate({k: pts[:, i * n : (i + 1) * n] for i, k in enumerate(model.free)})
    v = v.reshape(2, P, -1)
    return ((v[0] - v[1]) / (2 * step * g[:, None])).T


def fisher_information(model: NeuronModel, params: Mapping, **kw) -> Tensor:
    """``JᵀJ / σ²`` ``[P, P]`` in the units of ``g`` (needs the model's fixed ``sigma``)."""
    if model.sigma is None:
        raise FitError("the Fisher information needs a fixed sigma in the model")
    J = jacobian(model, params, **kw)
    return J.T @ J / model.sigma**2


@dataclass
class LocalPosterior:
    """The Laplace approximation at one point. Arrays are over ``P = n_free · n_comp``
    parameters, free-name-major; :meth:`per_param` splits them by name."""

    free: tuple[str, ...]
    mean: np.ndarray
    cov: np.ndarray
    prior_var: np.ndarray
    logdet_fisher: float
    fisher_eigvals: np.ndarray

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))

    @property
    def contraction(self) -> np.ndarray:
        """``1 − Var_post / Var_prior`` per parameter (1: pinned down; 0: nothing learned)."""
        return 1.0 - np.diag(self.cov) / self.prior_var

    @property
    def correlation(self) -> np.ndarray:
        s = self.sd
        return self.cov / np.outer(s, s)

    def per_param(self, values: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.free, np.split(np.asarray(values), len(self.free))))


def laplace(model: NeuronModel, params: Mapping, **kw) -> LocalPosterior:
    """Gaussian approximation of the posterior at ``params`` (a MAP, or the truth for a
    design's expected information). Needs proper priors with a finite variance."""
    if any(model.priors[k] is None for k in model.free):
        raise FitError("laplace needs a proper prior on every free parameter")
    F = fisher_information(model, params, **kw)
    g = _vector(model, params)
    n = model.n_comp

    def neg_log_prior(x):
        return -sum(
            model.priors[k].log_prob(x[i * n : (i + 1) * n]).sum() for i, k in enumerate(model.free)
        )

    # zero where the prior is flat (uniform priors do not depend on x inside their support)
    H = torch.autograd.functional.hessian(neg_log_prior, g)
    prior_var = torch.cat([model.priors[k].variance for k in model.free])
    flat = H.diagonal() == 0
    H = H + torch.diag(torch.where(flat, 1.0 / prior_var, torch.zeros_like(prior_var)))
    prec = (F + H).double().cpu().numpy()
    cov = np.linalg.inv(prec)
    ev = np.linalg.eigvalsh(F.double().cpu().numpy())
    sign, logdet = np.linalg.slogdet(F.double().cpu().numpy())
    return LocalPosterior(
        free=model.free,
        mean=g.detach().cpu().numpy(),
        cov=cov,
        prior_var=prior_var.detach().cpu().numpy(),
        logdet_fisher=float(logdet) if sign > 0 else -np.inf,
        fisher_eigvals=ev,
    )
