"""The free parameters of a :class:`NeuronModel` as one unconstrained vector.

Posterior approximations (Laplace, SVI guides, NUTS) work in ``u ∈ ℝᴾ``, ``P = n_free ·
n_comp``, ordered free-name-major (``g_na[0…n−1], g_k[0…n−1], …``, as :mod:`.laplace`):
``g = T(u)`` with ``T = biject_to(prior.support)`` per parameter (``exp`` for positive
supports, a scaled logistic for the paper's bounded ``base · U(0.7, 1.3)``), the transform
Pyro's autoguides use. The prior density of ``u`` is ``p(T(u)) · |T′(u)|``.
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

__all__ = ["ParameterSpace"]


def _log_prob_inside(d, g: Tensor) -> Tensor:
    """``d.log_prob(g)`` for ``g = T(u)``, which lies inside the support by construction:
    a uniform density is constant there, also where ``T(u)`` rounds onto a bound (far out
    in ``u``), at which ``Uniform.log_prob`` would give ``−inf``."""
    if isinstance(d, dist.Uniform):
        return (-(d.high - d.low).log()).expand(g.shape)
    return d.log_prob(g)


class ParameterSpace:
    """Maps between name → ``[..., comp]`` parameter values and ``u`` ``[..., P]``."""

    def __init__(self, model):
        missing = [k for k in model.free if model.priors[k] is None]
        if missing:
            raise FitError(
                f"{missing} have no prior: posterior inference needs a proper prior on every "
                "free parameter (priors=None is for maximum-likelihood MAP fits only)"
            )
        self.free = model.free
        self.n_comp = model.n_comp
        self.priors = {k: model.priors[k] for k in self.free}
        self.transforms = {k: biject_to(d.support) for k, d in self.priors.items()}
        self.dtype, self.device = model.dtype, model.device

    @property
    def size(self) -> int:
        return len(self.free) * self.n_comp

    @property
    def labels(self) -> list[str]:
        """``"g_na[0]"``, … in vector order."""
        return [f"{k}[{i}]" for k in self.free for i in range(self.n_comp)]

    def split(self, x: Tensor) -> dict[str, Tensor]:
        """``[..., P]`` → name → ``[..., comp]`` (no transform)."""
        n = self.n_comp
        return {k: x[..., i * n : (i + 1) * n] for i, k in enumerate(self.free)}

    def join(self, params: Mapping) -> Tensor:
        """name → ``[..., comp]`` → ``[..., P]`` (no transform)."""
        parts = [
            torch.as_tensor(
                np.asarray(params[k]) if not isinstance(params[k], Tensor) else params[k]
            )
            for k in self.free
        ]
        return torch.cat([p.to(self.dtype).to(self.device) for p in parts], dim=-1)

    def constrain(self, u: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """``g = T(u)`` per name, and ``log |∂g/∂u|`` summed over the vector ``[...]``."""
        g, logdet = {}, 0.0
        for k, part in self.split(u).items():
            g[k] = self.transforms[k](part)
            logdet = logdet + self.transforms[k].log_abs_det_jacobian(part, g[k]).sum(-1)
        return g, logdet

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
                g = torch.as_tensor(np.asarray(params[k], dtype=np.float64), dtype=self.dtype)
            except (TypeError, ValueError):
                raise FitError(f"{k} = {params[k]!r} is not numeric") from None
            if g.shape[-1:] != (self.n_comp,) or not bool(torch.isfinite(g).all()):
                raise FitError(
                    f"{k} must be finite with one value per compartment [..., {self.n_comp}], "
                    f"got shape {tuple(g.shape)}"
                )
            g = g.to(self.device)
            if not bool(self.priors[k].support.check(g).all()):
                raise FitError(f"{k} = {g.tolist()} lies outside the support of its prior")
            out.append(self.transforms[k].inv(g))
        return torch.cat(out, dim=-1)

    def clip_bounded(self, u: Tensor, limit: float = 6.0) -> Tensor:
        """``u`` with the coordinates of bounded priors clipped to ``[−limit, limit]``
        (``|u| = 6``: within 0.25 % of the interval's ends), where ``T`` is logistic; a
        MAP on a bound maps to ``u = ±∞``."""
        parts = []
        for k, x in self.split(u).items():
            bounded = isinstance(self.priors[k].support, constraints.interval)
            parts.append(x.clamp(-limit, limit) if bounded else x)
        return torch.cat(parts, dim=-1)

    def log_prior(self, u: Tensor) -> Tensor:
        """``log p(T(u)) + log |T′(u)|`` ``[...]``: the prior density of ``u``."""
        g, logdet = self.constrain(u)
        return logdet + sum(_log_prob_inside(self.priors[k], g[k]).sum(-1) for k in self.free)

    def prior_variance(self) -> Tensor:
        """Prior variance of ``g`` ``[P]`` (the denominator of the contraction)."""
        return torch.cat([self.priors[k].variance.expand(self.n_comp) for k in self.free])
