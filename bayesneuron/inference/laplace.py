"""Local identifiability: sensitivities, Fisher information and the Laplace approximation.

At a parameter point ``g`` (e.g. the ground truth or a MAP) of a :class:`NeuronModel` with
fixed noise ``σ`` (an inferred one: the point's ``params["sigma"]``):

* ``J = ∂ v_rec / ∂ g`` ``[M, P]`` by central differences in ``log g`` (one batched simulation
  of ``2P`` perturbed parameter sets; ``M = trace · n_rec · time``, ``P = n_free · n_comp``,
  parameters ordered free-name-major: ``g_na[0…n−1], g_k[0…n−1]``);
* the Fisher information ``F = JᵀJ / σ²`` (the Gauss–Newton Hessian of the negative
  log-likelihood);
* the Laplace posterior ``N(g, (F + H_prior)⁻¹)`` with ``H_prior = −∇² log p(g)``; where that
  is zero (inside a uniform prior) the prior enters as a Gaussian of the same variance, so an
  uninformed parameter keeps its prior width instead of an unbounded one; its sds,
  correlations and the contraction ``1 − Var_post / Var_prior``.

:func:`laplace_map` approximates the posterior in the unconstrained ``u`` of
:class:`~.space.ParameterSpace`, where an inferred ``σ`` is the last coordinate (``log σ``):
its Gauss–Newton Hessian adds the exact ``log σ`` terms of ``−log p(v | θ, σ)``,
``∂²/∂(log σ)² = 2 SSR/σ²`` and ``∂²/∂u ∂log σ = −2 Jᵤᵀ r/σ²`` (``r = v̂ − v``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.inference._noise import sigma_mode
from bayesneuron.inference._runtime import progress_bar
from bayesneuron.inference.model import NeuronModel
from bayesneuron.inference.space import ParameterSpace

__all__ = [
    "jacobian",
    "fisher_information",
    "LocalPosterior",
    "laplace",
    "log_likelihood",
    "UnconstrainedLaplace",
    "laplace_map",
]


def _vector(model: NeuronModel, params: Mapping) -> Tensor:
    sizes = model.sizes
    for k in model.free:
        if k not in params:
            raise FitError(
                f"params lack {k!r}; give every free parameter {list(model.free)}, each "
                f"[{sizes[k]}]"
            )
        x = params[k]
        count = x.numel() if isinstance(x, Tensor) else np.size(x)
        if count != sizes[k]:
            per = model.parametrisation.site(k).dim.replace("_region", " region")
            raise FitError(f"params[{k!r}] has {count} values; expected one per {per} ({sizes[k]})")
    return torch.cat(
        [
            torch.as_tensor(np.asarray(params[k], dtype=np.float64), dtype=model.dtype).reshape(
                sizes[k]
            )
            for k in model.free
        ]
    ).to(model.device)


def jacobian(
    model: NeuronModel, params: Mapping, *, step: float = 1e-5, method: str = "auto"
) -> Tensor:
    """``∂ v_rec / ∂ g`` ``[M, P]`` at ``params`` (name → ``[comp]``).

    ``method="auto"``: exact forward sensitivities where the model allows them and they are
    the cheaper way (:attr:`NeuronModel.tangents_pay`: the fused CPU kernel, and not a few
    region parameters on a large cell), else central differences;
    ``"central"``: central differences with relative step ``step`` (error ≈ step², fixed-step
    solvers only: an adaptive solver's step control would make the difference quotient noisy).
    """
    g = _vector(model, params)
    if method not in ("auto", "central"):
        raise FitError(f"jacobian: method {method!r} unknown; use 'auto' or 'central'")
    P, sizes = g.numel(), list(model.sizes.values())
    if method == "auto" and model.tangents_pay:
        from bayesneuron.simulation.api import sensitivities

        split = dict(zip(model.free, g.split(sizes)))
        args = (model.cell, model.expand(split), model.stimulus, model.t_eval, model.solver)
        _, jac = sensitivities(*args, wrt=model.parametrisation.targets)  # [trace, K, comp, time]
        jac = jac.index_select(-2, torch.as_tensor(model.rec_index))
        J = jac.movedim(-3, 0).reshape(jac.shape[-3], -1).T  # [M, K]
        return J if model.parametrisation.per_compartment else J @ model.expansion_jacobian(split)
    if not bool((g != 0).all()):
        raise FitError("jacobian: parameters must be ≠ 0 (relative differences)")
    eye = torch.eye(P, dtype=g.dtype, device=g.device)
    pts = torch.cat([g * (1 + step * eye), g * (1 - step * eye)])  # [2P, P]
    with torch.no_grad():
        v = model.simulate(dict(zip(model.free, pts.split(sizes, -1))))
    v = v.reshape(2, P, -1)
    return ((v[0] - v[1]) / (2 * step * g[:, None])).T


def _sigma_of(model: NeuronModel, params: Mapping, what: str):
    """The noise sd (mV): the model's fixed one, or ``params["sigma"]`` when inferred."""
    if model.sigma is not None:
        return model.sigma
    if "sigma" not in params:
        raise FitError(
            f"{what}: the model infers sigma, so give params['sigma'] (mV) as well (e.g. "
            "fit_map(...).params has it)"
        )
    s = params["sigma"]
    return s if isinstance(s, Tensor) else torch.as_tensor(np.asarray(s, dtype=np.float64))


def fisher_information(model: NeuronModel, params: Mapping, **kw) -> Tensor:
    """``JᵀJ / σ²`` ``[P, P]`` in the units of ``g``: the model's fixed ``σ``, or
    ``params["sigma"]`` when it is inferred (the per-compartment block; for Gaussian noise
    the information is block-diagonal between them and ``σ``)."""
    sigma = float(_sigma_of(model, params, "fisher_information"))
    J = jacobian(model, params, **kw)
    return J.T @ J / sigma**2


@dataclass
class LocalPosterior:
    """The Laplace approximation at one point. Arrays are over the ``P`` coordinates
    (``n_free · n_comp`` per compartment; one per region for parameters shared by region),
    free-name-major; :meth:`per_param` splits them by name (``sizes`` values each)."""

    free: tuple[str, ...]
    mean: np.ndarray
    cov: np.ndarray
    prior_var: np.ndarray
    logdet_fisher: float
    fisher_eigvals: np.ndarray
    sizes: tuple[int, ...] | None = None

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
        cuts = len(self.free) if self.sizes is None else np.cumsum(self.sizes)[:-1]
        return dict(zip(self.free, np.split(np.asarray(values), cuts)))


def laplace(model: NeuronModel, params: Mapping, **kw) -> LocalPosterior:
    """Gaussian approximation of the posterior at ``params`` (a MAP, or the truth for a
    design's expected information). Needs proper priors with a finite variance."""
    if any(model.priors[k] is None for k in model.free):
        raise FitError("laplace needs a proper prior on every free parameter")
    F = fisher_information(model, params, **kw)
    g = _vector(model, params)
    space = ParameterSpace(model)

    extra = {"sigma": _sigma_of(model, params, "laplace")} if space.infer_sigma else {}

    def neg_log_prior(x):  # an inferred σ enters as a constant
        return -space.log_density({**space.split(x), **extra})

    # zero where the prior is flat (uniform priors do not depend on x inside their support)
    H = torch.autograd.functional.hessian(neg_log_prior, g)
    prior_var = space.prior_variance()
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
        sizes=tuple(model.sizes.values()),
    )


# =========================================================================== at a MAP
def log_likelihood(model: NeuronModel, v_obs: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """``log p(v_obs | g)`` per trace ``[sample…, trace]`` for ``params[name]`` ``[sample…,
    comp]``, with the model's fixed σ or, when inferred, ``params["sigma"]`` ``[sample…]``
    (mV); differentiable."""
    sigma = _sigma_of(model, params, "log_likelihood")
    return gaussian_log_likelihood(model.simulate({k: params[k] for k in model.free}), v_obs, sigma)


def gaussian_log_likelihood(v: Tensor, v_obs: Tensor, sigma: float | Tensor) -> Tensor:
    """``log N(v_obs; v, σ²)`` per trace ``[sample…, trace]`` for simulated voltages ``v``
    ``[sample…, trace, n_rec, time]`` (mV) and a noise sd ``sigma``: a number, or
    ``[sample…]`` (one per draw)."""
    if isinstance(sigma, Tensor):
        sigma = sigma.to(v.dtype).to(v.device)[..., None, None, None]
        log_sigma = sigma[..., 0, 0].log()
    else:
        log_sigma = math.log(sigma)
    r = (v - v_obs) / sigma
    m = r.shape[-1] * r.shape[-2]
    return -0.5 * r.pow(2).sum((-1, -2)) - m * (log_sigma + 0.5 * math.log(2 * math.pi))


def _grad_log_posterior(model, v_obs, space: ParameterSpace, u: Tensor, chunk: int) -> Tensor:
    """``∇_u log p(u | v_obs)`` for each row of ``u`` ``[B, P]`` (batched simulations)."""
    out = []
    for part in u.split(chunk):
        x = part.detach().clone().requires_grad_()
        g, _ = space.constrain(x)
        lp = log_likelihood(model, v_obs, g).sum(-1) + space.log_prior(x)
        (grad,) = torch.autograd.grad(lp.sum(), x)
        out.append(grad)
    return torch.cat(out)


def _exact_hessian(model, v_obs, space, u0, step, chunk) -> Tensor:
    P = u0.numel()
    eye = torch.eye(P, dtype=u0.dtype, device=u0.device) * step
    grads = _grad_log_posterior(model, v_obs, space, torch.cat([u0 + eye, u0 - eye]), chunk)
    H = -(grads[:P] - grads[P:]) / (2 * step)
    return 0.5 * (H + H.T)


def _gauss_newton_hessian(model, v_obs, space, u0) -> Tensor:
    """``JᵤᵀJᵤ/σ² − ∇²_u log p(u)``: positive definite wherever the prior term is. With an
    inferred ``σ`` (last coordinate ``w``, ``σ = T_σ(w)``) the likelihood's ``w`` row and
    column are exact: ``∂²/∂w²`` of ``½ SSR/σ² + M log σ`` and ``−2 Jᵤᵀr σ′/σ³``; if that
    makes the matrix indefinite (far from the mode), the cross term is dropped."""
    g0, _ = space.constrain(u0)
    theta = {k: g0[k].detach() for k in model.free}
    P = space.n_params
    Jg = jacobian(model, theta)  # [M, P], ∂v/∂g
    dg = space.dg_du(u0)
    Ju = Jg * dg[:P]  # [M, P]: the chain rule through the elementwise map
    H_prior = torch.autograd.functional.hessian(lambda x: -space.log_prior(x), u0)
    if not space.infer_sigma:
        return Ju.T @ Ju / model.sigma**2 + H_prior
    sigma = g0["sigma"].detach()
    with torch.no_grad():
        r = (model.simulate(theta) - v_obs).reshape(-1)  # [M], ordered as J's rows
    ssr, t = r.pow(2).sum(), space.sigma_transform

    def nll_w(w):  # the σ-terms of −log p(v | θ, σ) as a function of w
        s = t(w)
        return 0.5 * ssr / s**2 + r.numel() * s.log()

    H = torch.zeros_like(H_prior)
    H[:P, :P] = Ju.T @ Ju / sigma**2
    H[P, P] = torch.autograd.functional.hessian(nll_w, u0[P])
    cross = -2.0 * (Ju.T @ r) * dg[P] / sigma**3
    H[:P, P] = H[P, :P] = cross
    if torch.linalg.cholesky_ex(H + H_prior).info != 0:
        H[:P, P] = H[P, :P] = 0.0
    return H + H_prior


def _log_posterior(model, v_obs, space, u: Tensor) -> Tensor:
    with torch.no_grad():
        g, _ = space.constrain(u)
        return log_likelihood(model, v_obs, g).sum(-1) + space.log_prior(u)


def _newton(model, v_obs, space, u0, H, tol=1e-6, max_step=2.0) -> tuple[Tensor, bool]:
    """One damped Newton step (at most ``max_step`` in any coordinate) towards the mode of
    ``log p(u | v_obs)``; (new u, moved?)."""
    grad = _grad_log_posterior(model, v_obs, space, u0[None], 1)[0]
    delta = torch.linalg.solve(H, grad)
    delta = delta * min(1.0, max_step / float(delta.abs().max().clamp_min(1e-300)))
    if float(delta.abs().max()) < tol:
        return u0, False
    f0 = _log_posterior(model, v_obs, space, u0)
    ts = torch.tensor([1.0, 0.5, 0.25, 0.125], dtype=u0.dtype, device=u0.device)
    f = _log_posterior(model, v_obs, space, u0 + ts[:, None] * delta)  # one batch
    f = torch.where(torch.isfinite(f), f, torch.full_like(f, -math.inf))
    best = int(torch.argmax(f))
    if not bool(f[best] > f0):
        return u0, False
    return u0 + ts[best] * delta, True


def _hessian_at_mode(model, v_obs, space, u0, hessian: str, step: float, chunk: int):
    """The exact Hessian of ``−log p(u | v_obs)`` where asked for and positive definite,
    else the Gauss–Newton one; (Hessian, which)."""
    if hessian == "exact":
        H = _exact_hessian(model, v_obs, space, u0, step, chunk)
        if bool(torch.all(torch.linalg.eigvalsh(H) > 0)):
            return H, "exact"
    return _gauss_newton_hessian(model, v_obs, space, u0), "gauss-newton"


def _conditional_sigma(model, v_obs, space, params) -> Tensor:
    """The mode of ``σ`` given ``params``' other parameters (mV, scalar)."""
    g = space.split(_vector(model, params))
    with torch.no_grad():
        r = model.simulate(g) - v_obs
    return sigma_mode(r.pow(2).sum(), r.numel(), space.sigma_prior)


@dataclass
class UnconstrainedLaplace:
    """``N(center, cov)`` over the unconstrained vector ``u`` (:mod:`.space`), the Laplace
    approximation of the posterior at a mode; ``g = T(u)``.

    ``hessian`` says how the curvature was computed: ``"exact"`` (central differences of
    autograd gradients of the log posterior) or ``"gauss-newton"`` (``JᵀJ/σ²`` plus the
    prior's exact Hessian; always positive definite).
    """

    space: ParameterSpace
    center: Tensor
    cov: Tensor
    hessian: str
    log_posterior: float

    DEFAULT_DRAWS = 1000

    @property
    def scale_tril(self) -> Tensor:
        return torch.linalg.cholesky(self.cov)

    @property
    def draws(self) -> dict[str, np.ndarray]:
        """``sample(1000, seed=0)``: posterior draws name → ``[draw, comp]`` (and ``"sigma"``
        ``[draw]`` when inferred; the results' common protocol; :meth:`sample` for other
        numbers or seeds)."""
        return self.sample(self.DEFAULT_DRAWS, seed=0)

    @property
    def diagnostics(self) -> dict:
        """``hessian`` (which curvature) and ``log_posterior`` at the centre (nats)."""
        return {"hessian": self.hessian, "log_posterior": self.log_posterior}

    def sample(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``n`` draws of every free parameter, name → ``[n, comp]`` (constrained), and
        ``"sigma"`` → ``[n]`` (mV) when inferred."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        z = torch.randn(n, self.center.numel(), generator=gen, dtype=self.center.dtype)
        u = self.center + z.to(self.center.device) @ self.scale_tril.T
        g, _ = self.space.constrain(u)
        return {k: v.detach().cpu().numpy() for k, v in g.items()}


def laplace_map(
    model: NeuronModel,
    v_obs,
    params: Mapping,
    *,
    hessian: str = "exact",
    step: float = 1e-4,
    newton_steps: int = 8,
    chunk: int = 8,
    progress: bool = True,
) -> UnconstrainedLaplace:
    """Laplace approximation at a mode ``params`` (name → ``[comp]``, e.g. a MAP) in the
    unconstrained coordinates the guides and NUTS use.

    ``hessian="exact"`` differentiates autograd gradients of the log posterior by central
    differences (step ``step`` in ``u``; ``2P`` gradients in batches of ``chunk``). The centre
    first moves to the mode *in u* by up to ``newton_steps`` damped Newton steps (a MAP in
    ``g`` is not the mode in ``u``: the Jacobian of ``T`` shifts it, most near a bounded
    prior's edge, where a Gaussian in ``u`` would otherwise be absurdly wide). Wherever the
    exact Hessian is not positive definite the Gauss–Newton one (always positive definite)
    is used instead; ``hessian`` says which the result used. ``progress``: a progress bar
    over the Newton steps and the Hessian (``False``: silent).

    An inferred ``σ`` is the last coordinate of ``u``; ``params["sigma"]`` starts it, or, if
    absent, its mode given the other parameters (:func:`~._noise.sigma_mode`).
    """
    if hessian not in ("exact", "gauss-newton"):
        raise FitError(f"hessian = {hessian!r}; use 'exact' or 'gauss-newton'")
    v_obs = model.check_data(v_obs)
    space = ParameterSpace(model)
    if space.infer_sigma and "sigma" not in params:
        params = {**params, "sigma": _conditional_sigma(model, v_obs, space, params)}
    u0 = space.clip_bounded(space.unconstrain(params).detach())

    # Newton steps to the mode in u with the Gauss–Newton Hessian (2P forward simulations);
    # the exact one (2P gradients) once, at the mode.
    bar = progress_bar(newton_steps + 1, progress, "Laplace")
    try:
        for _ in range(newton_steps):
            H = _gauss_newton_hessian(model, v_obs, space, u0)
            u0, moved = _newton(model, v_obs, space, u0, H)
            bar.update(1)
            if not moved:
                break
        H, kind = _hessian_at_mode(model, v_obs, space, u0, hessian, step, chunk)
        bar.update(1)
    finally:
        bar.close()
    with torch.no_grad():
        g0, _ = space.constrain(u0)
        lp = float(log_likelihood(model, v_obs, g0).sum() + space.log_prior(u0))
    cov = torch.linalg.inv(H)
    cov = 0.5 * (cov + cov.T)
    return UnconstrainedLaplace(space, u0.detach(), cov.detach(), kind, lp)
