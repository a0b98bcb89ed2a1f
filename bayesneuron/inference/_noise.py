"""The observation noise ``σ`` given the residuals: its conditional mode and the negative log
posterior in ``σ``, for MAP fits (:func:`lm_fit_sigma`, used by :mod:`.fit`) and Laplace
starts (:mod:`.laplace`) of a :class:`~.model.NeuronModel` whose ``σ`` is inferred.

With ``SSR = Σ (v̂ − v)²`` over ``N`` recorded values (mV²) the terms of ``−log p(v, σ | θ)``
that depend on ``σ`` are ``½ SSR/σ² + N log σ − log p(σ)`` (a MAP in ``σ``, like the MAP in
``g``: no Jacobian term). Without a prior its minimum is ``σ² = SSR/N``.
"""

from __future__ import annotations

import copy
import math

import torch
from pyro.distributions.transforms import biject_to
from torch import Tensor

from bayesneuron.inference._lm import lm_fit
from bayesneuron.inference._stack import Stack

__all__ = ["PASSES", "describe", "lm_fit_sigma", "sigma_mode", "sigma_objective"]

PASSES = 5  # LM passes at most, σ updated between them (two or three usually suffice)


def sigma_objective(ssr: Tensor, n_obs, sigma: Tensor, prior) -> Tensor:
    """``½ SSR/σ² + N log σ − log p(σ)`` ``[...]`` (nats, no constants) for ``ssr``,
    ``sigma`` ``[...]`` (mV², mV) and ``N = n_obs`` recorded values."""
    return 0.5 * ssr / sigma**2 + n_obs * sigma.log() - prior.log_prob(sigma)


def sigma_mode(ssr: Tensor, n_obs, prior, iters: int = 60) -> Tensor:
    """The ``σ`` ``[...]`` (mV) that minimises :func:`sigma_objective` for each ``ssr``
    ``[...]``: safeguarded Newton steps in the prior's unconstrained coordinate (``log σ``
    for a positive prior), from the maximum-likelihood ``√(SSR/N)`` (or the prior's mean
    where that lies outside the prior's support)."""
    ssr = torch.as_tensor(ssr).detach()
    t = biject_to(prior.support)
    ml = (ssr / n_obs).clamp_min(1e-300).sqrt()
    ok = prior.support.check(ml)
    start = torch.where(ok, ml, torch.as_tensor(prior.mean, dtype=ml.dtype).expand_as(ml))
    w = t.inv(start)
    ts = torch.tensor([1.0, 0.5, 0.25, 0.125, 1 / 16, 0.0], dtype=w.dtype, device=w.device)

    def f(x, extra=0):
        return sigma_objective(ssr[(...,) + (None,) * extra], n_obs, t(x), prior)

    for _ in range(iters):
        x = w.detach().requires_grad_()
        (grad,) = torch.autograd.grad(f(x).sum(), x, create_graph=True)
        (hess,) = torch.autograd.grad(grad.sum(), x)
        grad = grad.detach()
        step = torch.where(hess > 0, -grad / hess.clamp_min(1e-300), -grad.sign())
        step = step.clamp(-1.0, 1.0)
        with torch.no_grad():
            cand = w[..., None] + ts * step[..., None]  # [..., 6]; the last keeps w
            vals = f(cand, extra=1)
            vals = torch.where(torch.isfinite(vals), vals, torch.full_like(vals, torch.inf))
            best = vals.argmin(-1, keepdim=True)
            w = cand.gather(-1, best)[..., 0]
        if float((ts[best[..., 0]] * step).abs().max()) < 1e-12:
            break
    return t(w).detach()


def describe(prior) -> str:
    """``"LogNormal(loc=0.0, scale=1.0)"``: a prior with its parameters (for settings)."""
    args = ", ".join(
        f"{k}={float(getattr(prior, k)):.6g}"
        for k in prior.arg_constraints
        if isinstance(getattr(prior, k, None), (Tensor, float, int))
    )
    return f"{type(prior).__name__}({args})"


def lm_fit_sigma(stack, n_starts, max_steps, settings, state, ck, every, fp, progress, init):
    """:func:`~._lm.lm_fit` of one design whose ``σ`` is inferred: Levenberg–Marquardt on
    the other parameters at a fixed ``σ`` (first the prior's mean), then ``σ`` ← its mode
    given the best start's residuals (:func:`sigma_mode`), and LM again from there (no
    continuation), until ``log σ`` changes by less than 1e-3 (at most :data:`PASSES`
    passes). Only the first pass checkpoints (the later ones are short).

    The history's ``"objective"`` is the full ``½ SSR/σ² + N log σ − log p(σ) − log p(g)``
    at the pass's ``σ`` (``"sigma"`` ``[i, start]``); a last entry sets every start's own
    mode of ``σ``. Same arguments and result as :func:`~._lm.lm_fit`, plus ``hist["sigma"]``.
    """
    m, prior = stack.m0, stack.m0.sigma_prior
    data = stack.obs[0][:, list(m.rec_index)]
    n_obs = float(stack.n_obs[0])
    sigma = float(prior.mean)
    hist, steps, n_sim, theta = {}, 0, 0, init
    for p in range(PASSES):
        fixed = copy.copy(m)
        fixed.sigma, fixed.sigma_prior = sigma, None
        sub = Stack([fixed], [data])
        if p == 0:
            out = lm_fit(sub, n_starts, max_steps, settings, state, ck, every, fp, progress, init)
        else:
            again = {**settings, "horizons": [], "windows": []}  # no continuation
            out = lm_fit(sub, n_starts, max_steps, again, None, None, every, fp, progress, theta)
        h = out["hist"]
        s = torch.tensor(sigma, dtype=m.dtype, device=m.device)
        shift = n_obs * s.log() - prior.log_prob(s)
        h["objective"] = [f + shift for f in h["objective"]]
        h["sigma"] = [torch.full_like(f, sigma) for f in h["objective"]]
        for k, v in h.items():
            hist.setdefault(k, []).extend(v)
        steps, n_sim = steps + out["steps"], n_sim + out["n_sim"]
        theta = {k: h[k][-1] for k in m.free}  # [start, comp]
        ssr = h["mse"][-1] * n_obs
        s_hat = sigma_mode(ssr, n_obs, prior)  # [start]
        full = h["objective"][-1] - shift - 0.5 * ssr / sigma**2  # −log p(g) per start
        full = full + sigma_objective(ssr, n_obs, s_hat, prior)
        new = float(s_hat[int(torch.argmin(torch.nan_to_num(full, nan=math.inf)))])
        done = abs(math.log(new / sigma)) < 1e-3
        sigma = new
        if done:
            break
    for k in hist:  # every start at its own mode of σ
        hist[k].append(hist[k][-1].clone())
    hist["objective"][-1], hist["sigma"][-1] = full, s_hat
    out.update(hist=hist, steps=steps, n_sim=n_sim)
    return out
