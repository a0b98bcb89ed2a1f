"""The posterior in whitened coordinates, for SVI and NUTS, and a guide over the model's own sites.

With a Laplace approximation ``N(c, LLᵀ)`` of the posterior over the unconstrained vector ``u``
(:mod:`.space`), the model is rewritten exactly as ::

    z ~ N(0, I)                     # [P] (P + 1 with an inferred σ), site "z", plate "latent"
    u = c + L z ;  g = T(u)         # per-compartment parameters
    factor: log p(T(u)) + log|T′(u)| + log|L| − log N(z; 0, I)   # the prior, corrected
    g_na, g_k, … = deterministic    # [comp] each, under plate "compartment", as NeuronModel
    sigma = deterministic           # [] (only when inferred: u's last coordinate, mV)
    v_obs ~ Normal(V(g)[rec], σ)    # the likelihood, as in NeuronModel (each draw's σ)

so the posterior over ``z`` is the true posterior, carried by the change of variables, and is
close to ``N(0, I)``. Posterior sds span 1e-3 to 1 of the prior's: without whitening one Adam
learning rate cannot suit every coordinate, nor one NUTS step size.

The guides are fitted to ``z``; :class:`PosteriorGuide` turns one into a guide over the
:class:`NeuronModel`'s own sites (``g_na``, ``g_k``, …), so the user's model and the fitted
guide go straight into Pyro's ``Predictive``::

    Predictive(model, guide=fit.guide, num_samples=500)()   # {"g_na", "g_k", "v_obs", …}
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.inference.laplace import UnconstrainedLaplace, log_likelihood
from bayesneuron.inference.model import NeuronModel

__all__ = ["PosteriorGuide", "WhitenedModel"]


class WhitenedModel:
    """The Pyro model of :class:`NeuronModel` in whitened coordinates ``z`` (module doc).

    Called as ``wm(v_obs)`` it conditions on data (SVI passes ``wm.v_obs``); called as
    ``wm()`` it samples ``v_obs``, so ``Predictive(wm, guide=…)`` gives predictive draws.
    """

    def __init__(self, model: NeuronModel, v_obs: Tensor, laplace: UnconstrainedLaplace):
        if laplace.space.infer_sigma != (model.sigma is None):
            raise FitError(
                "the Laplace approximation and the model disagree on whether sigma is "
                "inferred; compute it with laplace_map(model, …) of this model"
            )
        self.model = model
        self.v_obs = model.check_data(v_obs)
        self.space = laplace.space
        self.center = laplace.center
        self.L = laplace.scale_tril
        self.logdet_L = float(torch.log(torch.diagonal(self.L)).sum())

    @property
    def size(self) -> int:
        return self.center.numel()

    def whiten(self, u: Tensor) -> Tensor:
        """``z = L⁻¹ (u − c)`` ``[..., size]`` for unconstrained ``u`` ``[..., size]``."""
        u = u.to(dtype=self.center.dtype, device=self.center.device)
        return torch.linalg.solve_triangular(self.L, (u - self.center).unsqueeze(-1), upper=False)[
            ..., 0
        ]

    def params(self, z: Tensor) -> dict[str, Tensor]:
        """Constrained parameters name → ``[..., comp]`` (and ``"sigma"`` ``[...]`` when
        inferred) for ``z`` ``[..., size]``."""
        return self.space.constrain(self.center + z @ self.L.T)[0]

    def log_prior(self, z: Tensor) -> Tensor:
        """Prior density of ``z`` ``[...]`` (the original prior carried by the map)."""
        return self.space.log_prior(self.center + z @ self.L.T) + self.logdet_L

    def log_joint(self, z: Tensor) -> Tensor:
        """``log p(v_obs, z)`` ``[...]`` for ``z`` ``[..., P]``."""
        return self.log_prior(z) + log_likelihood(self.model, self.v_obs, self.params(z)).sum(-1)

    def __call__(self, v_obs: Tensor | None = None) -> Tensor:
        zeros = torch.zeros(self.size, dtype=self.center.dtype, device=self.center.device)
        with pyro.plate("latent", self.size, dim=-1):
            z = pyro.sample("z", dist.Normal(zeros, 1.0))
        base = dist.Normal(zeros, 1.0).log_prob(z).sum(-1)
        pyro.factor("prior", (self.log_prior(z) - base).unsqueeze(-1))
        g = self.params(z)
        _record_sites(self.model, g, pyro.deterministic)
        v = self.model.simulate({k: g[k] for k in self.model.free})
        sigma = self.model.sigma if "sigma" not in g else g["sigma"][..., None, None, None]
        with pyro.plate("trace", self.model.n_trace, dim=-1):
            pyro.sample("v_obs", dist.Normal(v, sigma).to_event(2), obs=v_obs)
        return v


def _record_sites(model: NeuronModel, g: dict[str, Tensor], record) -> None:
    """``record(name, value)`` per model site: the per-compartment parameters ``[..., comp]``
    under plate ``"compartment"`` (those shared by region under their ``<name>_region``
    plates), an inferred ``sigma`` ``[...]`` outside it (as a ``[..., 1]`` batch, so that it
    lines up with an outer particle plate at dim −2)."""
    for dim, size, names in model.plates():
        with pyro.plate(dim, size, dim=-1):
            for k in names:
                record(k, g[k])
    if "sigma" in g:
        s = g["sigma"]
        record("sigma", s if s.dim() == 0 else s[..., None])


class PosteriorGuide:
    """A fitted guide over the :class:`NeuronModel`'s own sites.

    Each call draws ``z`` from the fitted autoguide (site ``z``, and the autoguide's own
    auxiliary sites) and records every free parameter ``g = T(c + L z)`` as a ``Delta`` site
    named as in the model (``g_na``, ``g_k``, … ``[comp]`` under plate ``"compartment"``;
    an inferred ``sigma`` ``[]``), so::

        Predictive(model, guide=fit.guide, num_samples=n)()     # the user's NeuronModel
        Predictive(fit.whitened, guide=fit.guide, num_samples=n)()

    both give ``g_na``, ``g_k`` ``[n, comp]`` and ``v_obs`` ``[n, trace, n_rec, time]``. For
    predictive draws only: the ``Delta`` sites carry no density, so it is not a guide to train.

    The autoguide's parameters live in the autoguide itself and in a parameter store of its
    own, used for the duration of each call: Pyro's global parameter store is neither read
    nor changed.
    """

    def __init__(self, autoguide, whitened: WhitenedModel, param_state: dict):
        self.autoguide = autoguide
        self.whitened = whitened
        self.param_state = param_state

    def __call__(self, *args, **kwargs) -> dict[str, Tensor]:
        with pyro.get_param_store().scope(self.param_state):
            z = self.autoguide()["z"]
        g = self.whitened.params(z)
        _record_sites(self.whitened.model, g, lambda k, v: pyro.sample(k, dist.Delta(v)))
        return g

    def parameters(self):
        """The autoguide's parameters (``torch.nn.Parameter``)."""
        return self.autoguide.parameters()
