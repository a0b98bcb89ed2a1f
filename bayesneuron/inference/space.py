"""The free parameters of a :class:`NeuronModel` as one unconstrained vector, and draws from
their priors: the one parameter space of every inference method.

MAP (Levenberg–Marquardt), Laplace, the SVI guides and NUTS all work in ``u ∈ ℝᴾ``,
``P = Σ sizes`` (``n_free · n_comp`` for per-compartment parameters; a parameter shared by
region has one coordinate per region), ordered free-name-major (``g_na[0…n−1], g_k[0…n−1],
…``):
``g = T(u)`` with ``T = biject_to(prior.support)`` per parameter (``exp`` for positive
supports, a scaled logistic for the paper's bounded ``base · U(0.7, 1.3)``, the identity on
ℝ), the transform Pyro's autoguides use; a parameter without a prior (maximum-likelihood MAP
fits only) is mapped by ``exp``. ``T`` acts elementwise, so its Jacobian is the diagonal
:meth:`ParameterSpace.dg_du`; Jacobians of the simulated voltages are ``[M, P]`` (rows the
``M`` recorded values, columns the parameters) in every method, ``J_u = J_g · diag(dg/du)``.
The prior density of ``u`` is ``p(T(u)) · |T′(u)|``.

Inferred observation noise (``NeuronModel(sigma=<prior>)``): ``σ`` is one more coordinate, the
last, ``u[P] = T_σ⁻¹(σ)`` (``log σ`` for a positive prior), so ``u`` has ``P + 1`` entries and
every method carries ``σ`` without special cases: :meth:`ParameterSpace.constrain` gives it as
``"sigma"`` ``[...]`` (mV, no compartment dim) beside the per-compartment parameters, and the
prior density includes its prior and Jacobian.

:func:`prior_draws` is the one way to draw parameters from the priors (MAP starts, SBC truths,
prior predictive draws): inverse-CDF draws from a private generator, the global RNGs untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import biject_to
from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.inference._runtime import seeded

__all__ = ["ParameterSpace", "prior_draws", "start_points"]


def _log_prob_inside(d, g: Tensor) -> Tensor:
    """``d.log_prob(g)`` for ``g = T(u)``, which lies inside the support by construction:
    a uniform density is constant there, also where ``T(u)`` rounds onto a bound (far out
    in ``u``), at which ``Uniform.log_prob`` would give ``−inf``."""
    if isinstance(d, dist.Uniform):
        return (-(d.high - d.low).log()).expand(g.shape)
    return d.log_prob(g)


class ParameterSpace:
    """Maps between name → ``[..., comp]`` parameter values and ``u`` ``[..., P]``.

    ``flat_ok=True`` accepts parameters without a prior (``priors=None``: a flat density on
    ``g > 0``, mapped by ``exp``), for maximum-likelihood MAP fits; the posterior methods
    refuse them. With an inferred ``σ`` (:attr:`infer_sigma`) the vector ends with its
    coordinate: :attr:`size` is ``P + 1`` and the last label ``"sigma"``.
    """

    def __init__(self, model, *, flat_ok: bool = False):
        missing = [k for k in model.free if model.priors[k] is None]
        if missing and not flat_ok:
            raise FitError(
                f"{missing} have no prior: posterior inference needs a proper prior on every "
                "free parameter (priors=None is for maximum-likelihood MAP fits only)"
            )
        self.free = model.free
        self.n_comp = model.n_comp
        self.sizes = [int(model.base[k].numel()) for k in self.free]
        # NeuronModel's labels and dims; a duck-typed model (a linear-Gaussian reference
        # problem) has per-compartment parameters only
        n = self.n_comp
        per_comp = [f"{k}[{i}]" for k in self.free for i in range(n)]
        self._labels = list(getattr(model, "labels", per_comp))
        sites = getattr(getattr(model, "parametrisation", None), "sites", ())
        self._dims = {k: "compartment" for k in self.free} | {s.name: s.dim for s in sites}
        self.priors = {k: model.priors[k] for k in self.free}
        self.transforms = {k: biject_to(self.support(k)) for k in self.free}
        self.dtype, self.device = model.dtype, model.device
        self.sigma_prior = getattr(model, "sigma_prior", None)
        self.infer_sigma = self.sigma_prior is not None
        if self.infer_sigma:
            self.sigma_transform = biject_to(self.sigma_prior.support)

    def support(self, name: str) -> constraints.Constraint:
        """Where ``name`` may lie: its prior's support (``g > 0`` without a prior)."""
        d = self.priors[name]
        return constraints.positive if d is None else d.support

    @property
    def n_params(self) -> int:
        """``P``: the free parameters' coordinates (all but ``σ``'s; ``n_free · n_comp`` when
        every parameter is per compartment)."""
        return sum(self.sizes)

    @property
    def size(self) -> int:
        """Length of ``u``: ``P``, or ``P + 1`` with an inferred ``σ``."""
        return self.n_params + int(self.infer_sigma)

    @property
    def labels(self) -> list[str]:
        """``"g_na[0]"``, ``"g_k[soma]"``, … in vector order (then ``"sigma"`` when
        inferred)."""
        out = list(self._labels)
        return out + ["sigma"] if self.infer_sigma else out

    def split(self, x: Tensor) -> dict[str, Tensor]:
        """``[..., P]`` (or ``[..., P + 1]``) → name → ``[..., size]`` (no transform; ``σ``'s
        coordinate, if any, is left out)."""
        parts = x[..., : self.n_params].split(self.sizes, -1)
        return dict(zip(self.free, parts))

    def join(self, params: Mapping) -> Tensor:
        """name → ``[..., comp]`` → ``[..., P]`` (no transform; the per-compartment ones)."""
        parts = [
            torch.as_tensor(
                np.asarray(params[k]) if not isinstance(params[k], Tensor) else params[k]
            )
            for k in self.free
        ]
        return torch.cat([p.to(self.dtype).to(self.device) for p in parts], dim=-1)

    def constrain(self, u: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """``g = T(u)`` per name (``[..., comp]``; ``"sigma"`` ``[...]`` in mV when inferred),
        and ``log |∂g/∂u|`` summed over the vector ``[...]``."""
        g, logdet = {}, 0.0
        for k, part in self.split(u).items():
            g[k] = self.transforms[k](part)
            logdet = logdet + self.transforms[k].log_abs_det_jacobian(part, g[k]).sum(-1)
        if self.infer_sigma:
            s = u[..., self.n_params]
            g["sigma"] = self.sigma_transform(s)
            logdet = logdet + self.sigma_transform.log_abs_det_jacobian(s, g["sigma"])
        return g, logdet

    def dg_du(self, u: Tensor) -> Tensor:
        """``∂g/∂u`` ``[..., size]``: the diagonal of the (elementwise) map's Jacobian."""
        parts = []
        for k, part in self.split(u).items():
            t = self.transforms[k]
            parts.append(t.log_abs_det_jacobian(part, t(part)).exp())
        if self.infer_sigma:
            s = u[..., self.n_params :]
            parts.append(
                self.sigma_transform.log_abs_det_jacobian(s, self.sigma_transform(s)).exp()
            )
        return torch.cat(parts, dim=-1)

    def unconstrain(self, params: Mapping) -> Tensor:
        """``u = T⁻¹(g)`` ``[..., P]``; every value must lie inside its prior's support."""
        out = []
        missing = [k for k in self.free if k not in params]
        if missing:
            raise FitError(
                f"the starting point lacks {missing}; give a value per compartment for every "
                f"free parameter {list(self.free)}"
            )
        for k in self.free:
            try:
                x = params[k]
                x = x.detach() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
                g = torch.as_tensor(x, dtype=self.dtype)
            except (TypeError, ValueError):
                raise FitError(f"{k} = {params[k]!r} is not numeric") from None
            size = self.sizes[self.free.index(k)]
            if g.shape[-1:] != (size,) or not bool(torch.isfinite(g).all()):
                what = self._dims[k].replace("_region", " region")
                raise FitError(
                    f"{k} must be finite with one value per {what} [..., {size}], "
                    f"got shape {tuple(g.shape)}"
                )
            g = g.to(self.device)
            if not bool(self.support(k).check(g).all()):
                where = "the support of its prior"
                if self.priors[k] is None:
                    where = "g > 0 (it has no prior: a flat density on g > 0)"
                raise FitError(f"{k} = {g.tolist()} lies outside {where}")
            out.append(self.transforms[k].inv(g))
        if self.infer_sigma:
            out.append(self._unconstrain_sigma(params, out[0].shape[:-1]))
        return torch.cat(out, dim=-1)

    def _unconstrain_sigma(self, params: Mapping, batch: torch.Size) -> Tensor:
        """``T_σ⁻¹(params["sigma"])`` ``[..., 1]`` (``σ`` in mV, scalar or ``[...]``)."""
        if "sigma" not in params:
            raise FitError(
                "the starting point lacks 'sigma': the model infers the noise sd, so give "
                "params['sigma'] (mV) as well, e.g. from fit_map(...).params"
            )
        s = torch.as_tensor(
            np.asarray(params["sigma"], dtype=np.float64)
            if not isinstance(params["sigma"], Tensor)
            else params["sigma"].detach(),
            dtype=self.dtype,
            device=self.device,
        )
        if not bool(torch.isfinite(s).all() & self.sigma_prior.support.check(s).all()):
            raise FitError(
                f"sigma = {s.tolist()} mV lies outside the support of its prior {self.sigma_prior}"
            )
        return self.sigma_transform.inv(s).expand(batch).unsqueeze(-1)

    @property
    def bounded(self) -> Tensor:
        """``[size]`` bool: the coordinates of priors on an interval (where ``T`` is
        logistic)."""
        flags = [isinstance(self.support(k), constraints.interval) for k in self.free]
        reps = torch.tensor(self.sizes, device=self.device)
        out = torch.tensor(flags, device=self.device).repeat_interleave(reps)
        if self.infer_sigma:
            tail = isinstance(self.sigma_prior.support, constraints.interval)
            out = torch.cat([out, torch.tensor([tail], device=self.device)])
        return out

    def clip_bounded(self, u: Tensor, limit: float = 6.0) -> Tensor:
        """``u`` with the coordinates of bounded priors clipped to ``[−limit, limit]``
        (``|u| = 6``: within 0.25 % of the interval's ends), where ``T`` is logistic; a
        MAP on a bound maps to ``u = ±∞``."""
        return torch.where(self.bounded, u.clamp(-limit, limit), u)

    def log_density(self, g: Mapping[str, Tensor]) -> Tensor:
        """``log p(g)`` ``[...]`` for ``g = T(u)`` (name → ``[..., comp]``, and ``"sigma"``
        ``[...]`` when inferred), no Jacobian: the prior term of a MAP in ``g``; 0 for
        parameters without a prior."""
        out = 0.0
        for k in self.free:
            d = self.priors[k]
            if d is not None:
                out = out + _log_prob_inside(d, g[k]).sum(-1)
        if self.infer_sigma:
            out = out + _log_prob_inside(self.sigma_prior, g["sigma"])
        if not isinstance(out, Tensor):
            shape = next(iter(g.values())).shape[:-1]
            out = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return out

    def log_prior(self, u: Tensor) -> Tensor:
        """``log p(T(u)) + log |T′(u)|`` ``[...]``: the prior density of ``u``."""
        g, logdet = self.constrain(u)
        return logdet + self.log_density(g)

    def prior_variance(self) -> Tensor:
        """Prior variance of ``g`` ``[P]`` (the denominator of the contraction; the
        free parameters but ``σ``)."""
        return torch.cat([self.priors[k].variance.expand(n) for k, n in zip(self.free, self.sizes)])


def _default_prior(base: Tensor) -> dist.Distribution:
    """What a parameter without a prior is drawn from: the default prior's width around the
    cell's value, ``LogNormal(log base, 0.5)``."""
    return dist.LogNormal(base.log(), torch.full_like(base, 0.5))


def prior_draws(
    model, n: int, seed: int = 0, *, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """``n`` draws of every free parameter from its prior, name → ``[n, comp]`` (the model's
    dtype and device), and ``"sigma"`` → ``[n]`` (mV) when the model infers it.

    Inverse-CDF draws of uniforms from a private CPU generator seeded with ``seed`` (or the
    given ``generator``, which advances), free parameter by free parameter: the global RNGs
    are not touched and the same seed gives the same draws. A parameter without a prior
    (``priors=None``) is drawn from ``LogNormal(log base, 0.5)``; a prior without an inverse
    CDF (e.g. ``Gamma``) by its ``sample`` under a locally seeded global RNG (restored
    afterwards). ``σ`` is drawn last, so the other draws do not depend on whether it is
    inferred.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise FitError(f"n = {n!r} draws must be an integer ≥ 0")
    gen = torch.Generator().manual_seed(int(seed)) if generator is None else generator
    out = {}
    for k in model.free:
        base = model.base[k]
        d = model.priors[k] if model.priors[k] is not None else _default_prior(base)
        out[k] = _draw(d, (int(n), base.numel()), gen, base.dtype, base.device)
    if getattr(model, "sigma_prior", None) is not None:
        out["sigma"] = _draw(model.sigma_prior, (int(n),), gen, model.dtype, model.device)
    return out


def _draw(d, shape: tuple, gen: torch.Generator, dtype, device) -> Tensor:
    """Inverse-CDF draws ``shape`` of ``d`` from ``gen`` (``d.sample`` under a locally
    seeded global RNG where ``d`` has no inverse CDF)."""
    q = torch.rand(shape, generator=gen, dtype=dtype)
    try:
        return d.icdf(q.to(device)).to(dtype)
    except NotImplementedError:
        with seeded(int(torch.randint(2**62, (1,), generator=gen)), device):
            return d.sample(shape[:1]).to(dtype)


def start_points(model, n_starts: int, seed: int) -> dict[str, Tensor]:
    """MAP starts name → ``[n_starts, size]``: start 0 at the cell's values (the priors'
    base), the others :func:`prior_draws` with ``seed``."""
    draws = prior_draws(model, n_starts - 1, seed)
    return {k: torch.cat([model.base[k][None], draws[k]]) for k in model.free}
