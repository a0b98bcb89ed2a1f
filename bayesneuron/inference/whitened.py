"""The posterior in whitened coordinates, for SVI and NUTS, and a guide over the model's own sites.

With a Laplace approximation ``N(c, LLᵀ)`` of the posterior over the unconstrained vector ``u``
(:mod:`.space`), the model is rewritten exactly as ::

    z ~ N(0, I)                     # [P], site "z" under plate "latent"
    u = c + L z ;  g = T(u)         # per-compartment parameters
    factor: log p(T(u)) + log|T′(u)| + log|L| − log N(z; 0, I)   # the prior, corrected
    g_na, g_k, … = deterministic    # [comp] each, under plate "compartment", as NeuronModel
    v_obs ~ Normal(V(g)[rec], σ)    # the likelihood, as in NeuronModel

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
        if model.sigma is None:
            raise FitError("fit_svi and run_nuts need a fixed sigma (mV) in the model")
        self.model = model
        self.v_obs = model.check_data(v_obs)
        self.space = laplace.space
        self.center = laplace.center
        self.L = laplace.scale_tril
        self.logdet_L = float(torch.log(torch.diagonal(self.L)).sum())

    @property
    def size(self) -> int:
        return self.center.numel()

    def params(self, z: Tensor) -> dict[str, Tensor]:
        """Constrained parameters name → ``[..., comp]`` for ``z`` ``[..., P]``."""
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
        with pyro.plate("compartment", self.model.n_comp, dim=-1):
            for k, v in g.items():
                pyro.deterministic(k, v)
        v = self.model.simulate(g)
        with pyro.plate("trace", self.model.n_trace, dim=-1):
            pyro.sample("v_obs", dist.Normal(v, self.model.sigma).to_event(2), obs=v_obs)
        return v


class PosteriorGuide:
    """A fitted guide over the :class:`NeuronModel`'s own sites.

    Each call draws ``z`` from the fitted autoguide (site ``z``, and the autoguide's own
    auxiliary sites) and records every free parameter ``g = T(c + L z)`` as a ``Delta`` site
    named as in the model (``g_na``, ``g_k``, … ``[comp]`` under plate ``"compartment"``), so::

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
        with pyro.plate("compartment", self.whitened.model.n_comp, dim=-1):
            for k, v in g.items():
                pyro.sample(k, dist.Delta(v))
        return g

    def parameters(self):
        """The autoguide's parameters (``torch.nn.Parameter``)."""
        return self.autoguide.parameters()
