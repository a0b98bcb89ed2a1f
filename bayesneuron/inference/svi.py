"""Variational posteriors by stochastic variational inference (Pyro autoguides).

The guide lives in *whitened* coordinates: with a Laplace approximation ``N(c, LLᵀ)`` of the
posterior over the unconstrained vector ``u`` (:mod:`.unconstrained`), the model is rewritten
exactly as ::

    z ~ N(0, I)                     # [P], site "z" under plate "latent"
    u = c + L z ;  g = T(u)         # per-compartment parameters
    factor: log p(T(u)) + log|T′(u)| + log|L| − log N(z; 0, I)   # the prior, corrected
    v_obs ~ Normal(V(g)[rec], σ)    # the likelihood, as in NeuronModel

so the posterior over ``z`` is the true posterior, carried by the change of variables, and is
close to ``N(0, I)``. Posterior sds here span 1e-3 to 1 of the prior's: without whitening one
Adam learning rate cannot suit every coordinate. The ELBO is the ELBO of the original model.

Vectorised particles: the particle dimension is a batch dimension of ``z`` and goes through
the simulator in one call. A step whose loss is not finite (a diverged simulation for some
particle) is skipped and counted, never applied.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import (
    AutoIAFNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from pyro.infer.autoguide.initialization import init_to_value
from pyro.ops.stats import fit_generalized_pareto
from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.inference.laplace import UnconstrainedLaplace, laplace_map, log_likelihood
from bayesneuron.inference.model import NeuronModel

__all__ = ["GUIDES", "WhitenedModel", "SviFit", "fit_svi", "psis_khat"]

GUIDES = {
    "normal": AutoNormal,
    "mvn": AutoMultivariateNormal,
    "lowrank": AutoLowRankMultivariateNormal,
    "iaf": AutoIAFNormal,
}


class WhitenedModel:
    """The Pyro model of :class:`NeuronModel` in whitened coordinates ``z`` (module doc)."""

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

    def __call__(self):
        zeros = torch.zeros(self.size, dtype=self.center.dtype, device=self.center.device)
        with pyro.plate("latent", self.size, dim=-1):
            z = pyro.sample("z", dist.Normal(zeros, 1.0))
        base = dist.Normal(zeros, 1.0).log_prob(z).sum(-1)
        pyro.factor("prior", (self.log_prior(z) - base).unsqueeze(-1))
        v = self.model.simulate(self.params(z))
        with pyro.plate("trace", self.model.n_trace, dim=-1):
            pyro.sample("v_obs", dist.Normal(v, self.model.sigma).to_event(2), obs=self.v_obs)
        return v


def psis_khat(log_w: Tensor) -> float:
    """Pareto-smoothed importance sampling shape ``k̂`` of log importance weights ``[S]``
    (Vehtari et al.): < 0.5 good, 0.5–0.7 usable, > 0.7 the approximation is poor."""
    log_w = log_w[torch.isfinite(log_w)].double()
    S = log_w.numel()
    m = int(min(S / 5, 3 * math.sqrt(S)))
    if m < 5:
        return math.nan
    w = torch.exp(log_w - log_w.max())
    tail, _ = torch.sort(w)
    tail = tail[-(m + 1) :]
    x = tail[1:] - tail[0]
    if not bool((x > 0).any()):
        return math.nan
    try:
        k, _ = fit_generalized_pareto(x)
    except (ZeroDivisionError, ValueError, RuntimeError):  # a degenerate tail
        return math.nan
    return float(k)


@dataclass
class SviFit:
    """A variational posterior of one model.

    ``samples``: name → ``[draw, comp]`` (constrained); ``elbo``: per step (``[steps]``, nats,
    NaN for skipped steps); ``iw_elbo``: importance-weighted bound from ``psis_samples``
    draws; ``khat``: PSIS shape of those weights; ``laplace``: the Gaussian it started from.
    """

    guide_name: str
    samples: dict[str, np.ndarray]
    elbo: np.ndarray
    steps: int
    converged: bool
    skipped: int
    elbo_final: float
    iw_elbo: float
    khat: float
    wall_s: float
    laplace: UnconstrainedLaplace
    whitened: WhitenedModel = field(repr=False)
    guide: object = field(repr=False)

    def posterior_predictive(self, n: int | None = None, seed: int = 0) -> np.ndarray:
        """Draws of ``v_obs`` ``[draw, trace, n_rec, time]`` (mV) at the first ``n`` samples."""
        return predictive(self.whitened.model, self.samples, n, seed)


def predictive(model: NeuronModel, samples: Mapping, n: int | None = None, seed: int = 0):
    """``v_obs`` draws ``[draw, trace, n_rec, time]`` for parameter draws name → ``[draw,
    comp]``: one batched simulation plus observation noise."""
    params = {
        k: torch.as_tensor(np.asarray(v)[:n], dtype=model.dtype, device=model.device)
        for k, v in samples.items()
        if k in model.free
    }
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        v = model.simulate(params)
    noise = torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device) * model.sigma
    return (v + noise).cpu().numpy()


def _guide(name: str, wm: WhitenedModel, rank: int | None):
    if name not in GUIDES:
        raise FitError(f"guide {name!r} unknown; use one of {sorted(GUIDES)}")
    zero = {"z": torch.zeros(wm.size, dtype=wm.center.dtype, device=wm.center.device)}
    if name == "iaf":
        # starts near its base N(0, I), i.e. at the Laplace approximation
        return AutoIAFNormal(wm, hidden_dim=[max(2 * wm.size, 8)])
    kw = dict(init_loc_fn=init_to_value(values=zero), init_scale=1.0)
    if name == "lowrank":
        kw["rank"] = rank or max(1, int(math.ceil(math.sqrt(wm.size))))
    return GUIDES[name](wm, **kw)


def _flat_posterior(guide) -> dist.Distribution:
    """The guide's distribution over the flat ``z`` ``[P]``."""
    if isinstance(guide, AutoNormal):
        loc, scale = guide._get_loc_and_scale("z")
        return dist.Normal(loc, scale).to_event(1)
    return guide.get_posterior()


def fit_svi(
    model: NeuronModel,
    v_obs,
    init: Mapping,
    *,
    guide: str = "mvn",
    num_particles: int = 8,
    max_steps: int = 1000,
    min_steps: int = 100,
    window: int = 50,
    lr: float = 0.02,
    num_samples: int = 1000,
    psis_samples: int = 256,
    laplace: UnconstrainedLaplace | None = None,
    rank: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SviFit:
    """Fit a variational posterior, starting from the Laplace approximation at ``init``.

    Args:
        model, v_obs: the :class:`NeuronModel` (fixed ``sigma``) and its data
            ``model.obs_shape``.
        init: a mode to start from, name → ``[comp]`` (e.g. ``fit_map(...).params``).
        guide: ``"normal"`` (AutoNormal), ``"mvn"`` (AutoMultivariateNormal), ``"lowrank"``
            (AutoLowRankMultivariateNormal, ``rank`` default ⌈√P⌉) or ``"iaf"``
            (AutoIAFNormal, a normalizing flow).
        num_particles: ELBO particles per step, simulated as one batch.
        max_steps, min_steps, window: stop when the median ELBO of the last ``window``
            steps differs from the window before by less than twice its standard error
            (after ``min_steps``), or after ``max_steps``.
        lr: Adam's learning rate in whitened coordinates (decays 10× over ``max_steps``).
        num_samples: posterior draws returned; ``psis_samples`` draws for k̂ and the
            importance-weighted bound.
        laplace: a precomputed :func:`laplace_map` at ``init`` (else computed here).
        seed: seeds Pyro and the draws.

    Returns:
        :class:`SviFit`.
    """
    t0 = time.perf_counter()
    if guide not in GUIDES:  # before the Laplace approximation, which takes a while
        raise FitError(f"guide {guide!r} unknown; use one of {sorted(GUIDES)}")
    for key, val in dict(
        num_particles=num_particles, max_steps=max_steps, window=window, num_samples=num_samples
    ).items():
        if int(val) < 1:
            raise FitError(f"{key} = {val} must be ≥ 1")
    if not (lr > 0 and math.isfinite(lr)):
        raise FitError(f"lr = {lr} must be finite and > 0")
    lap = laplace_map(model, v_obs, init) if laplace is None else laplace
    wm = WhitenedModel(model, v_obs, lap)
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    default = torch.get_default_dtype()
    torch.set_default_dtype(model.dtype)  # the guides create their parameters in it
    try:
        g = _guide(guide, wm, rank)
        with torch.no_grad():
            g()  # creates the guide's parameters
    finally:
        torch.set_default_dtype(default)
    loss_fn = Trace_ELBO(
        num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
    ).differentiable_loss
    params = list(g.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1.0 / max_steps))
    elbo, skipped, converged = [], 0, False
    bar = _bar(max_steps, progress, f"SVI {guide}")
    for step in range(max_steps):
        opt.zero_grad()
        loss = loss_fn(wm, g)
        if not torch.isfinite(loss):
            skipped += 1
            elbo.append(math.nan)
            if skipped > max(10, max_steps // 10):
                raise FitError(
                    f"SVI: {skipped} steps had a non-finite ELBO (diverged simulations); the "
                    "posterior approximation is not trustworthy — check the data and priors"
                )
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 100.0)
        opt.step()
        sched.step()
        elbo.append(-loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(elbo=f"{elbo[-1]:.4g}")
        if step + 1 >= max(min_steps, 2 * window) and (step + 1) % window == 0:
            if _plateau(elbo[-2 * window : -window], elbo[-window:]):
                converged = True
                break
    if bar is not None:
        bar.close()
    with torch.no_grad():
        q = _flat_posterior(g)
        gen_state = torch.get_rng_state()
        torch.manual_seed(seed + 1)
        z = q.sample((num_samples,))
        zs = q.sample((psis_samples,))
        torch.set_rng_state(gen_state)
        log_w = wm.log_joint(zs) - q.log_prob(zs)
        iw = float(torch.logsumexp(log_w, 0) - math.log(log_w.numel()))
        samples = {k: v.cpu().numpy() for k, v in wm.params(z).items()}
    tail = np.asarray(elbo[-window:])
    return SviFit(
        guide_name=guide,
        samples=samples,
        elbo=np.asarray(elbo),
        steps=len(elbo),
        converged=converged,
        skipped=skipped,
        elbo_final=float(np.nanmean(tail)),
        iw_elbo=iw,
        khat=psis_khat(log_w),
        wall_s=time.perf_counter() - t0,
        laplace=lap,
        whitened=wm,
        guide=g,
    )


def _plateau(a, b) -> bool:
    """Medians of two ELBO windows equal within twice their robust standard error (the ELBO
    of a poor guide is heavy-tailed: means would call a still-rising run converged)."""
    a, b = np.asarray(a), np.asarray(b)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if min(a.size, b.size) < 3:
        return False

    def se2(x):  # squared s.e. of the median: (1.2533 · 1.4826 · MAD)² / n
        return (1.858 * np.median(np.abs(x - np.median(x)))) ** 2 / x.size

    return abs(np.median(b) - np.median(a)) < 2 * math.sqrt(se2(a) + se2(b))


def _bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)
