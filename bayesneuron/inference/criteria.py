"""Design criteria in nats from a Fisher information and the prior, at parameter points drawn
from the prior — the pieces of a design's *expected* utility.

With ``F`` ``[P, P]`` the Fisher information in the units of ``g`` (``JᵀJ/σ²``, P parameters
ordered as :class:`~bayesneuron.inference.space.ParameterSpace` orders them) and
``Σ = diag(prior variance of g)``:

* ``bayes_d_opt`` — Bayesian D-optimality, ``logdet(F + Σ⁻¹)`` reported as
  ``½ logdet(I + Σ^½ F Σ^½)`` nats: the design-independent ``½ logdet Σ⁻¹`` is removed, so
  the value is the information gain of the linear-Gaussian model with a Gaussian prior of
  the prior's variance (0 for a design that teaches nothing);
* ``contraction`` — mean posterior contraction ``mean_i (1 − [(F + Σ⁻¹)⁻¹]_ii / Σ_ii)``
  (0: nothing learned, 1: pinned down), the same Gaussian surrogate;
* ``eig_laplace`` — the Laplace estimate of the expected information gain (Long et al. 2013,
  *Comput. Methods Appl. Mech. Engrg.* 259) for the model's actual prior, in the unconstrained
  coordinates ``u`` where every prior is smooth: per prior draw ``θ``,
  ``H[p(u)] + ½ logdet(F_u(θ) + H_p(θ)) − ½ P log 2πe`` with ``F_u = D F D``
  (``D = diag(∂g/∂u)``) and ``H_p = −∇²_u log p(u)``; its mean over ``θ ~ p`` is the EIG.
  Exact for a linear-Gaussian model with a Gaussian prior; unlike nested Monte Carlo
  (:func:`~bayesneuron.inference.oed.expected_information_gain`) it does not saturate at
  ``log M`` for informative designs. Its error is the Laplace error of each posterior (the
  posterior of a uniform prior's unconstrained coordinate that the data do not inform is a
  logistic density, not a Gaussian: ≈ −0.07 nats per such coordinate).

Example:
    >>> F = 4.0 * torch.eye(2, dtype=torch.float64)
    >>> round(float(bayesian_d_optimality(F, torch.ones(2, dtype=torch.float64))), 6)  # log 5
    1.609438
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.inference.laplace import jacobian
from bayesneuron.inference.space import ParameterSpace, prior_draws

__all__ = [
    "CRITERIA",
    "bayesian_d_optimality",
    "compartment_fisher",
    "design_criteria",
    "laplace_eig_terms",
    "linear_gaussian_eig",
    "posterior_contraction",
    "prior_entropy",
    "prior_geometry",
]

CRITERIA = {
    "bayes_d_opt": "Bayesian D-optimality ½ logdet(I + Σ^½ F Σ^½) (nats)",
    "contraction": "mean posterior contraction 1 − Var_post/Var_prior (Gaussian surrogate)",
    "eig_laplace": "expected information gain, Laplace estimate in unconstrained coordinates (nats)",
}
"""Criterion name → what it measures; larger is better for every one."""


def _chol_logdet(a: Tensor) -> Tensor:
    """``logdet`` of symmetric positive definite ``a`` ``[..., P, P]`` by Cholesky."""
    return 2.0 * torch.linalg.cholesky(a).diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _whitened(fisher: Tensor, prior_var: Tensor) -> Tensor:
    """``I + Σ^½ F Σ^½`` ``[..., P, P]`` (symmetrised)."""
    s = prior_var.sqrt()
    w = fisher * s[..., :, None] * s[..., None, :]
    w = 0.5 * (w + w.transpose(-1, -2))
    return w + torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)


def bayesian_d_optimality(fisher: Tensor, prior_var: Tensor) -> Tensor:
    """``½ logdet(I + Σ^½ F Σ^½)`` nats ``[...]``.

    Args:
        fisher: Fisher information ``[..., P, P]`` in the units of ``g`` (``JᵀJ/σ²``).
        prior_var: prior variances of ``g`` ``[P]`` (or ``[..., P]``), ``Σ = diag``.

    Returns:
        ``logdet(F + Σ⁻¹) / 2`` less the design-independent ``½ logdet Σ⁻¹``.
    """
    return 0.5 * _chol_logdet(_whitened(fisher, prior_var))


def posterior_contraction(
    fisher: Tensor, prior_var: Tensor, targets: Sequence[int] | None = None
) -> Tensor:
    """``mean_i (1 − [(F + Σ⁻¹)⁻¹]_ii / Σ_ii)`` ``[...]`` (arguments as
    :func:`bayesian_d_optimality`): in whitened coordinates ``1 − diag((I + Σ^½FΣ^½)⁻¹)``;
    the mean over the parameter indices ``targets`` only, if given (``None``: all)."""
    inv = torch.cholesky_inverse(torch.linalg.cholesky(_whitened(fisher, prior_var)))
    diag = inv.diagonal(dim1=-2, dim2=-1)
    return 1.0 - (diag if targets is None else diag[..., list(targets)]).mean(-1)


def laplace_eig_terms(fisher_u: Tensor, prior_hessian_u: Tensor, entropy: float | Tensor) -> Tensor:
    """Per prior draw, ``H[p(u)] + ½ logdet(F_u + H_p) − ½ P log 2πe`` nats ``[...]``; their
    mean over draws ``θ ~ p`` is the Laplace EIG.

    Args:
        fisher_u: Fisher information in ``u`` ``[..., P, P]`` at each draw.
        prior_hessian_u: ``−∂² log p(u) / ∂u²`` ``[..., P]`` (the diagonal: independent priors
            and an elementwise transform give a diagonal prior Hessian), each > 0.
        entropy: the prior entropy of ``u`` in nats (:func:`prior_entropy`).
    """
    h = prior_hessian_u
    if not bool((h > 0).all()):
        raise FitError("laplace_eig_terms: the prior Hessian must be > 0 at every draw")
    # logdet(F + H) = logdet H + logdet(I + H^-½ F H^-½): stable however large F is
    half = 0.5 * (_chol_logdet(_whitened(fisher_u, 1.0 / h)) + h.log().sum(-1))
    P = h.shape[-1]
    return entropy + half - 0.5 * P * math.log(2 * math.pi * math.e)


def linear_gaussian_eig(a: Tensor, noise_sd: float, prior_var: Tensor) -> float:
    """Exact EIG (nats) of ``y = A θ + ε``, ``ε ~ N(0, noise_sd² I)``, ``θ ~ N(μ, diag(
    prior_var))``: ``½ logdet(I + Σ^½ AᵀA Σ^½ / σ²)`` (``a`` ``[M, P]``)."""
    return float(bayesian_d_optimality(a.T @ a / noise_sd**2, prior_var))


def prior_geometry(space: ParameterSpace, params: Mapping) -> tuple[Tensor, Tensor, Tensor]:
    """At parameter points name → ``[n, comp]``: ``(u [n, P], ∂g/∂u [n, P], −∂² log p(u)/∂u²
    [n, P])`` (the last the diagonal of the prior's Hessian in ``u``)."""
    u = space.unconstrain(params).detach()
    x = u.clone().requires_grad_()
    (g1,) = torch.autograd.grad(space.log_prior(x).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), x)  # elementwise ⇒ the Hessian's diagonal
    return u, space.dg_du(u).detach(), -g2.detach()


def prior_entropy(model, n: int = 4096, seed: int = 0) -> float:
    """Monte Carlo entropy (nats) of the prior of ``u`` of ``model``'s free parameters,
    ``−mean log p(u)`` over ``n`` prior draws (sd of the estimate ≈ 0.03 nats per parameter
    at ``n = 4096``)."""
    space = ParameterSpace(model)
    u = space.unconstrain(prior_draws(model, n, seed))
    with torch.no_grad():
        return float(-space.log_prior(u).mean())


def compartment_fisher(model, params: Mapping[str, Tensor]) -> Tensor:
    """Fisher information of each recorded compartment ``[n, n_rec, P, P]`` at ``n`` points
    (name → ``[n, comp]``), units of ``g``: the Fisher information of recording a set ``R``
    of compartments is the sum over ``R`` (recordings are row blocks of the Jacobian).

    Exact sensitivities over all ``n`` points in one call where the model allows them
    (:attr:`NeuronModel.exact_sensitivities`), else :func:`~.laplace.jacobian` point by point.
    """
    if model.sigma is None:
        raise FitError("compartment_fisher needs a fixed sigma in the model")
    n = next(iter(params.values())).shape[0]
    if model.exact_sensitivities and model.parametrisation.per_compartment:
        from bayesneuron.simulation.api import sensitivities

        p = {k: torch.as_tensor(params[k], dtype=model.dtype) for k in model.free}
        args = (model.cell, p, model.stimulus, model.t_eval, model.solver)
        _, jac = sensitivities(*args, wrt=model.free)  # [n, trace, P, comp, time]
        jac = jac.index_select(-2, torch.as_tensor(model.rec_index))
        f = torch.einsum("nrpcs,nrqcs->ncpq", jac, jac)
    else:
        parts = []
        for i in range(n):
            J = jacobian(model, {k: params[k][i] for k in model.free})  # [M, P]
            J = J.reshape(model.n_trace, len(model.rec_index), -1, J.shape[-1])
            parts.append(torch.einsum("tcsp,tcsq->cpq", J, J))
        f = torch.stack(parts)
    return f / model.sigma**2


def design_criteria(
    fisher: Tensor, space: ParameterSpace, params: Mapping, entropy: float
) -> dict[str, Tensor]:
    """Every criterion of :data:`CRITERIA` at ``n`` prior draws ``params`` (name →
    ``[n, comp]``) for Fisher informations ``fisher`` ``[..., n, P, P]`` (units of ``g``;
    leading dims e.g. designs): name → ``[..., n]``. ``entropy``: :func:`prior_entropy`."""
    prior_var = space.prior_variance()
    _, dg_du, h = prior_geometry(space, params)
    fisher_u = fisher * dg_du[:, :, None] * dg_du[:, None, :]
    return {
        "bayes_d_opt": bayesian_d_optimality(fisher, prior_var),
        "contraction": posterior_contraction(fisher, prior_var),
        "eig_laplace": laplace_eig_terms(fisher_u, h.expand(fisher.shape[:-1]), entropy),
    }
