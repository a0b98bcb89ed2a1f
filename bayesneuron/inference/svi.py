"""Variational posteriors by stochastic variational inference (Pyro autoguides).

The guide is fitted in *whitened* coordinates ``z`` (:class:`~.whitened.WhitenedModel`): the
Laplace approximation at the mode makes the posterior over ``z`` close to ``N(0, I)``, so one
Adam learning rate suits every coordinate. The ELBO is the ELBO of the original model. The
fitted guide is returned as a :class:`~.whitened.PosteriorGuide` over the model's own sites::

    fit = fit_svi(model, v_obs, fit_map(model, v_obs).params)
    Predictive(model, guide=fit.guide, num_samples=500)()   # g_na, g_k [500, comp]; v_obs

Vectorised particles: the particle dimension is a batch dimension of ``z`` and goes through
the simulator in one call. A step whose loss is not finite (a diverged simulation for some
particle) is skipped and counted, never applied.

No global state changes: the fit seeds and then restores the global RNGs
(:func:`~._runtime.seeded`) and trains on a private Pyro parameter store; the caller's store
is left as it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
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

from bayesneuron.errors import FitError
from bayesneuron.inference._runtime import private_param_store, progress_bar, seeded
from bayesneuron.inference.diagnostics import psis_khat
from bayesneuron.inference.laplace import UnconstrainedLaplace, laplace_map
from bayesneuron.inference.model import NeuronModel
from bayesneuron.inference.whitened import PosteriorGuide, WhitenedModel

__all__ = ["GUIDES", "PosteriorGuide", "SviFit", "WhitenedModel", "fit_svi", "psis_khat"]

GUIDES = {
    "normal": AutoNormal,
    "mvn": AutoMultivariateNormal,
    "lowrank": AutoLowRankMultivariateNormal,
    "iaf": AutoIAFNormal,
}


@dataclass
class SviFit:
    """A variational posterior of one model.

    ``samples``: name → ``[draw, comp]`` (constrained; an inferred ``"sigma"`` ``[draw]``,
    mV); ``elbo``: per step (``[steps]``, nats,
    NaN for skipped steps); ``iw_elbo``: importance-weighted bound from ``psis_samples``
    draws; ``khat``: PSIS shape of those weights; ``laplace``: the Gaussian it started from;
    ``guide``: the fitted guide over the model's own sites (:class:`PosteriorGuide`), for
    ``Predictive(model, guide=fit.guide, num_samples=n)``; ``whitened``: the whitened model
    it was fitted to (``fit.whitened.model`` is the :class:`NeuronModel`).
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
    guide: PosteriorGuide = field(repr=False)

    @property
    def model(self) -> NeuronModel:
        """The fitted :class:`NeuronModel` (pass it to ``Predictive`` with :attr:`guide`)."""
        return self.whitened.model

    @property
    def draws(self) -> dict[str, np.ndarray]:
        """Posterior draws name → ``[draw, comp]`` (the results' common protocol)."""
        return self.samples

    @property
    def diagnostics(self) -> dict:
        """``elbo`` (mean of the last window), ``iw_elbo``, ``khat``, ``steps``,
        ``converged``, ``skipped``, ``wall_s``."""
        return {
            "elbo": self.elbo_final,
            "iw_elbo": self.iw_elbo,
            "khat": self.khat,
            "steps": self.steps,
            "converged": self.converged,
            "skipped": self.skipped,
            "wall_s": self.wall_s,
        }

    def posterior_predictive(self, n: int | None = None, seed: int = 0) -> np.ndarray:
        """Draws of ``v_obs`` ``[draw, trace, n_rec, time]`` (mV) at the first ``n`` samples."""
        return predictive(self.whitened.model, self.samples, n, seed)


def predictive(model: NeuronModel, samples: Mapping, n: int | None = None, seed: int = 0):
    """``v_obs`` draws ``[draw, trace, n_rec, time]`` for parameter draws name → ``[draw,
    comp]``: one batched simulation plus observation noise (a private generator) of sd the
    model's fixed ``σ``, or each draw's ``samples["sigma"]`` ``[draw]`` (mV) when inferred."""
    params = {
        k: torch.as_tensor(np.asarray(v)[:n], dtype=model.dtype, device=model.device)
        for k, v in samples.items()
        if k in model.free
    }
    sigma = model.sigma
    if sigma is None:
        if "sigma" not in samples:
            raise FitError("the model infers sigma: give samples['sigma'] [draw] (mV) as well")
        s = np.asarray(samples["sigma"], dtype=np.float64)[:n]
        sigma = torch.as_tensor(s, dtype=model.dtype, device=model.device)[:, None, None, None]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        v = model.simulate(params)
    noise = torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device) * sigma
    return (v + noise).cpu().numpy()


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
    psis_samples: int = 2000,
    laplace: UnconstrainedLaplace | None = None,
    rank: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> SviFit:
    """Fit a variational posterior, starting from the Laplace approximation at ``init``.

    Args:
        model, v_obs: the :class:`NeuronModel` (fixed or inferred ``sigma``) and its data
            ``model.obs_shape``.
        init: a mode to start from, name → ``[comp]`` (e.g. ``fit_map(...).params``, which
            has ``"sigma"`` too when the model infers it).
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
        seed: seeds the fit and the draws (locally: the global RNGs are restored afterwards).
        progress: show progress bars (``False``: silent).

    Returns:
        :class:`SviFit`; ``Predictive(model, guide=fit.guide, num_samples=n)()`` draws the
        model's sites from it.
    """
    t0 = time.perf_counter()
    _check_args(guide, num_particles, max_steps, window, num_samples, lr)
    lap = laplace_map(model, v_obs, init, progress=progress) if laplace is None else laplace
    wm = WhitenedModel(model, v_obs, lap)
    with seeded(seed, model.device), private_param_store() as store:
        g = _make_guide(guide, wm, rank)
        bar = progress_bar(max_steps, progress, f"SVI {guide}")
        try:
            elbo, skipped, converged = _train(
                wm, g, num_particles, max_steps, min_steps, window, lr, bar
            )
        finally:
            bar.close()
        with seeded(seed + 1, model.device):
            samples, iw, log_w = _draws(wm, g, num_samples, psis_samples)
    return SviFit(
        guide_name=guide,
        samples=samples,
        elbo=np.asarray(elbo),
        steps=len(elbo),
        converged=converged,
        skipped=skipped,
        elbo_final=float(np.nanmean(np.asarray(elbo[-window:]))),
        iw_elbo=iw,
        khat=psis_khat(log_w),
        wall_s=time.perf_counter() - t0,
        laplace=lap,
        whitened=wm,
        guide=PosteriorGuide(g, wm, store),
    )


def _check_args(guide, num_particles, max_steps, window, num_samples, lr) -> None:
    if guide not in GUIDES:  # before the Laplace approximation, which takes a while
        raise FitError(f"guide {guide!r} unknown; use one of {sorted(GUIDES)}")
    for key, val in dict(
        num_particles=num_particles, max_steps=max_steps, window=window, num_samples=num_samples
    ).items():
        if int(val) < 1:
            raise FitError(f"{key} = {val} must be ≥ 1")
    if not (lr > 0 and math.isfinite(lr)):
        raise FitError(f"lr = {lr} must be finite and > 0")


def _make_guide(name: str, wm: WhitenedModel, rank: int | None):
    """The autoguide over ``z``, its parameters created (in the model's dtype), at the
    Laplace approximation (``z`` ~ N(0, I))."""
    zero = {"z": torch.zeros(wm.size, dtype=wm.center.dtype, device=wm.center.device)}
    if name == "iaf":  # starts near its base N(0, I), i.e. at the Laplace approximation
        make, kw = AutoIAFNormal, dict(hidden_dim=[max(2 * wm.size, 8)])
    else:
        make, kw = GUIDES[name], dict(init_loc_fn=init_to_value(values=zero), init_scale=1.0)
        if name == "lowrank":
            kw["rank"] = rank or max(1, int(math.ceil(math.sqrt(wm.size))))
    default = torch.get_default_dtype()
    torch.set_default_dtype(wm.center.dtype)  # the guides create their parameters in it
    try:
        g = make(wm, **kw)
        with torch.no_grad():
            g(wm.v_obs)  # creates the guide's parameters (v_obs observed, not a latent)
    finally:
        torch.set_default_dtype(default)
    return g


def _train(wm, g, num_particles, max_steps, min_steps, window, lr, bar):
    """Adam on the ELBO until the plateau test or ``max_steps``; (ELBO per step, skipped
    steps, converged)."""
    loss_fn = Trace_ELBO(
        num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
    ).differentiable_loss
    params = list(g.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1.0 / max_steps))
    elbo, skipped = [], 0
    for step in range(max_steps):
        opt.zero_grad()
        loss = loss_fn(wm, g, wm.v_obs)
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
        bar.update(1)
        bar.set_postfix(elbo=f"{elbo[-1]:.4g}")
        if step + 1 >= max(min_steps, 2 * window) and (step + 1) % window == 0:
            if _plateau(elbo[-2 * window : -window], elbo[-window:]):
                return elbo, skipped, True
    return elbo, skipped, False


def _flat_posterior(guide) -> dist.Distribution:
    """The guide's distribution over the flat ``z`` ``[P]``."""
    if isinstance(guide, AutoNormal):
        loc, scale = guide._get_loc_and_scale("z")
        return dist.Normal(loc, scale).to_event(1)
    return guide.get_posterior()


def _draws(wm: WhitenedModel, g, num_samples: int, psis_samples: int):
    """Posterior draws name → ``[draw, comp]`` (``"sigma"`` ``[draw]``), the
    importance-weighted ELBO and the log importance weights of ``psis_samples`` further
    draws."""
    with torch.no_grad():
        q = _flat_posterior(g)
        z = q.sample((num_samples,))
        zs = q.sample((psis_samples,))
        log_w = wm.log_joint(zs) - q.log_prob(zs)
        iw = float(torch.logsumexp(log_w, 0) - math.log(log_w.numel()))
        samples = {k: v.cpu().numpy() for k, v in wm.params(z).items()}
    return samples, iw, log_w


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
