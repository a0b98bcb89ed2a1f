"""Tempered sequential Monte Carlo: the posterior reached from the prior, for rugged posteriors.

Where the data leave a direction nearly free but the likelihood rugged along it (a ridge of
local optima a few nats apart, as with the soma alone recorded), every approximation built
from the modes a MAP found is too narrow, and NUTS crawls. Likelihood-tempered SMC (Del Moral,
Doucet & Jasra 2006; Chopin 2002) does not start from the modes: ``n_particles`` prior draws
move through the tempered posteriors ::

    π_β(z) ∝ p(z) · L(z)^β ,      0 = β_0 < β_1 < … < β_T = 1

each ``β_{t+1}`` chosen by bisection so that the incremental weights keep an effective sample
size of ``target_ess · n_particles``; then systematic resampling and Metropolis sweeps
under ``π_{β_{t+1}}``, each sweep two kernels: an independence sampler from a Student-t
mixture fitted to the particles (:func:`~.importance.fit_mixture`; particles jump between
modes, so each mode keeps its mass) and a random walk with the particles' own covariance
(scaled ``2.38/√P``, adapted towards 25 % acceptance). Sweeps repeat until the particles'
positions are decorrelated from where resampling put them (mean correlation < 0.1, the rule
of PyMC's SMC; at most ``max_moves``): each particle has explored its basin at this
temperature, where barriers are lower than at β = 1, not merely moved. Every
step simulates the whole population as one batch, without gradients.

``kernel="hmc"`` replaces the random walk by Hamiltonian Monte Carlo (Neal 2011) with the
particles' covariance as inverse mass matrix, ``leapfrog_steps`` steps whose size (jittered
± 20 % per particle) adapts towards 65 % acceptance: where the likelihood's level sets are
narrow curved ridges (spike timing), a walk shaped by the population's global covariance
must take tiny steps, while gradients follow the ridge (HMC within SMC: Buchholz, Chopin &
Jacob 2021). Each sweep costs ``leapfrog_steps + 1`` gradients (≈ 3 simulations each).

``n_populations`` independent populations (own seeds and own temperature ladders) are run
and treated as chains: R̂, bulk and tail ESS over them are the checks (as for NUTS), and their
log-evidence estimates ``log p(data)`` are reported side by side (populations that disagree
by nats have found different parts of the posterior).

Coordinates: the whitened ``z`` of a :class:`~.whitened.WhitenedModel` (the prior and the
posterior are the model's own; the whitening only conditions the numbers).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.inference.diagnostics import RHAT_MAX, chain_diagnostics, importance_ess
from bayesneuron.inference.importance import fit_mixture
from bayesneuron.inference.laplace import log_likelihood
from bayesneuron.inference.space import prior_draws
from bayesneuron.inference.whitened import WhitenedModel

__all__ = ["temper", "tempered_smc"]

_TARGET_ACCEPT = 0.25
_HMC_ACCEPT = 0.65
_IMH_MIN = 0.05  # below this first-sweep acceptance the stage's independence moves stop
_DECORRELATED = 0.1  # sweeps per stage: until the particles' mean correlation with their
# positions after resampling is below this (each has explored its basin, not just moved)


def tempered_smc(
    model,
    v,
    laplace,
    *,
    num_samples: int = 1000,
    n_particles: int = 512,
    n_populations: int = 2,
    target_ess: float = 0.5,
    max_moves: int = 20,
    max_stages: int = 200,
    n_components: int = 4,
    max_settle: int = 60,
    kernel: str = "walk",
    leapfrog_steps: int = 8,
    seed: int = 0,
    max_seconds: float | None = None,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], dict]:
    """Posterior draws of ``model`` given ``v`` by likelihood-tempered SMC (module doc).

    Args:
        model, v: a :class:`~.model.NeuronModel` and its data.
        laplace: the :class:`~.laplace.UnconstrainedLaplace` that defines the whitened
            coordinates (not the starting point: the particles start at the prior).
        num_samples: draws reported per population (at most ``n_particles``).
        n_particles: particles per population; ``n_populations`` independent populations.
        target_ess: the share of ``n_particles`` each temperature step keeps as ESS.
        max_moves: the most Metropolis sweeps per temperature.
        max_stages: a run needing more temperatures stops, not ok (β < 1 in the diagnostics).
        max_settle: at β = 1, random-walk sweeps of every population continue, 5 at a time,
            until R̂ over the populations is ≤ 1.01 or ``max_settle`` sweeps are done.
        kernel, leapfrog_steps: ``"walk"`` (random-walk Metropolis) or ``"hmc"`` with that
            many leapfrog steps per sweep (module doc), each beside the independence sampler.
        seed: population ``j`` is seeded with ``seed + j`` (private generators).
        max_seconds: a wall-time budget (s): each population tempers until its share of
            what is left runs out, settling stops when all is spent; a run stopped by it is
            not ok (``beta_final`` < 1 or R̂ unmet) and says so (``out_of_time``), with what
            it reached — on a lent GPU, a result rather than a killed process.

    Returns ``(samples name → [population, draw, …], diagnostics)``: ``rhat_max``,
    ``ess_bulk_min``, ``ess_tail_min`` over populations, ``num_chains`` (populations),
    ``beta_final`` (1 unless ``max_stages`` or ``max_seconds`` stopped it), ``n_stages``, ``log_evidence`` (per
    population, ``"a b"``) and ``log_evidence_spread``, ``accept_final`` (the last sweeps'
    acceptance), ``settle_sweeps``, ``stage_correlation_max`` (the worst end-of-stage
    correlation: above 0.1, ``max_moves`` cut a stage short and the particles had not explored
    their basins), ``kernel``, ``n_simulations`` (each gradient counted as one), ``wall_s``
    and ``out_of_time``.
    """
    _check(target_ess, kernel, leapfrog_steps, n_particles, n_populations, max_seconds)
    wm = WhitenedModel(model, v, laplace)
    t0 = time.perf_counter()
    end = None if max_seconds is None else t0 + max_seconds
    opts = dict(kernel=kernel, leapfrog_steps=leapfrog_steps, target_ess=target_ess)
    opts |= dict(max_moves=max_moves, max_stages=max_stages, n_components=n_components)
    runs = []

    def loglik(z):
        return _loglik(wm, z)

    for j in range(n_populations):
        gen = torch.Generator().manual_seed(int(seed + j))
        z0 = wm.whiten(wm.space.unconstrain(prior_draws(model, n_particles, generator=gen)))
        now = time.perf_counter()  # this population's share of the time left
        deadline = None if end is None else now + (end - now) / (n_populations - j)
        runs.append(
            temper(z0, wm.log_prior, loglik, gen, **opts, deadline=deadline, progress=progress)
        )
    kern = _Kernel(kernel, leapfrog_steps)
    settled = _settle(runs, (wm.log_prior, loglik), kern, seed, max_settle, deadline=end)
    z = torch.stack([r["z"][: min(num_samples, n_particles)] for r in runs])  # [pop., draw, P]
    with torch.no_grad():
        samples = {k: x.cpu().numpy() for k, x in wm.params(z).items()}
    return samples, _diagnostics(samples, runs, settled, kernel, t0, end)


def _check(target_ess, kernel, leapfrog_steps, n_particles, n_populations, max_seconds):
    if not 0 < target_ess < 1:
        raise FitError(f"target_ess = {target_ess} must be in (0, 1)")
    if kernel not in ("walk", "hmc") or leapfrog_steps < 1:
        raise FitError(f"kernel {kernel!r} must be 'walk' or 'hmc', leapfrog_steps ≥ 1")
    if n_particles < 2 or n_populations < 1:
        raise FitError("tempered_smc needs n_particles ≥ 2 and n_populations ≥ 1")
    if max_seconds is not None and not max_seconds >= 0:
        raise FitError(f"max_seconds = {max_seconds} must be ≥ 0 (or None: no budget)")


def _diagnostics(samples, runs: list[dict], settled: int, kernel: str, t0: float, end) -> dict:
    """:func:`tempered_smc`'s diagnostics of its populations ``runs`` (``temper``'s dicts)."""
    diag = chain_diagnostics(samples) | {
        "num_chains": len(runs),
        "beta_final": min(r["beta"] for r in runs),
        "n_stages": max(r["stages"] for r in runs),
        "log_evidence": " ".join(f"{r['log_z']:.1f}" for r in runs),
        "log_evidence_spread": max(r["log_z"] for r in runs) - min(r["log_z"] for r in runs),
        "accept_final": float(np.mean([r["accept"] for r in runs])),
        "settle_sweeps": settled,
        "stage_correlation_max": max(r["correlation"] for r in runs),
        "kernel": kernel,
        "n_simulations": sum(r["n_sim"] for r in runs),
        "wall_s": time.perf_counter() - t0,
    }
    unfinished = diag["beta_final"] < 1.0 or not diag["rhat_max"] <= RHAT_MAX
    diag["out_of_time"] = bool(_past(end) and unfinished)  # the budget cut it short
    return diag


def temper(
    z: Tensor,
    log_prior,
    log_lik,
    gen: torch.Generator,
    *,
    kernel: str = "walk",
    leapfrog_steps: int = 8,
    target_ess: float = 0.5,
    max_moves: int = 20,
    max_stages: int = 200,
    n_components: int = 4,
    deadline: float | None = None,
    progress: bool = False,
) -> dict:
    """One population from prior draws ``z`` ``[n, P]`` to β = 1 (module doc), for any
    target ``p(z) L(z)``: ``log_prior(z)`` and ``log_lik(z)`` ``[n]`` (batched; differentiable
    for ``kernel="hmc"``; coordinates roughly unit-scaled, as whitened ones are). Returns the
    final particles ``z`` ``[n, P]`` (in random order), ``beta``, ``stages``, ``log_z`` (the
    estimate of ``log ∫ p L``), ``accept`` (the last walk or HMC acceptance), ``correlation``
    (the worst end-of-stage correlation), ``lp``, ``ll``, ``scale`` (the kernel's step) and
    ``n_sim`` (evaluations of ``log_lik``, a gradient counted as one). Past ``deadline`` (a
    ``time.perf_counter()`` value) it stops moving and tempering where it is (β < 1)."""
    kern = _Kernel(kernel, leapfrog_steps)
    n, dev = z.shape[0], z.device
    with torch.no_grad():
        lp, ll = log_prior(z), log_lik(z)
    beta, log_z, stages, n_sim, acc, worst = 0.0, 0.0, 0, n, 1.0, 0.0
    scale = kern.initial_scale(z.shape[1])
    while beta < 1.0 and stages < max_stages and not _past(deadline):
        new = _next_beta(ll, beta, target_ess)
        lw = (new - beta) * ll
        log_z += float(torch.logsumexp(lw, 0)) - math.log(n)
        idx = _systematic(torch.softmax(lw, 0), gen).to(dev)
        z, lp, ll, beta = z[idx], lp[idx], ll[idx], new
        chol = _proposal_chol(z)
        q = fit_mixture(
            z, np.zeros(n), n_components, int(torch.randint(2**31, (1,), generator=gen))
        )
        target = (log_prior, log_lik, beta)
        start, moves, acc_i = z, 0, 1.0
        while moves < max_moves and (moves < 2 or _correlation(start, z) > _DECORRELATED):
            if _past(deadline):
                break
            if acc_i >= _IMH_MIN:  # an independence sampler that is never accepted is dropped
                with torch.no_grad():
                    z, lp, ll, acc_i = _independence(target, z, lp, ll, q, gen)
                n_sim += n
            z, lp, ll, acc, scale = kern.sweep(target, z, lp, ll, chol, scale, gen)
            n_sim, moves = n_sim + kern.cost * n, moves + 1
        stages += 1
        corr = _correlation(start, z)
        worst = max(worst, corr)
        if progress:
            print(
                f"  SMC stage {stages}: β {beta:.4f}, acceptance independence {acc_i:.2f} "
                f"{kernel} {acc:.2f}, {moves} sweeps, correlation {corr:.2f}"
            )
    perm = torch.randperm(n, generator=gen).to(dev)
    return {
        "z": z[perm],
        "lp": lp[perm],
        "ll": ll[perm],
        "scale": scale,
        "correlation": worst,
        "beta": beta,
        "stages": stages,
        "log_z": log_z,
        "accept": acc,
        "n_sim": n_sim,
    }


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() > deadline


def _settle(runs: list[dict], target, kern: _Kernel, seed: int, max_sweeps: int, deadline=None):
    """Sweeps of ``kern`` at β = 1 (``target = (log_prior, log_lik)``) of every population
    that reached it (in place), 5 at a time, until R̂ of ``z`` over the populations is ≤
    1.01 or ``deadline`` passes: the sweeps done."""
    done = [r for r in runs if r["beta"] >= 1.0]
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    rhat, sweeps = _rhat(done), 0
    while len(done) > 1 and sweeps < max_sweeps and not rhat <= RHAT_MAX and not _past(deadline):
        for r in done:
            chol = _proposal_chol(r["z"])
            for _ in range(5):
                r["z"], r["lp"], r["ll"], r["accept"], r["scale"] = kern.sweep(
                    (*target, 1.0), r["z"], r["lp"], r["ll"], chol, r["scale"], gen
                )
                r["n_sim"] += kern.cost * r["z"].shape[0]
        sweeps += 5
        rhat = _rhat(done)
    return sweeps


def _rhat(runs: list[dict]) -> float:
    """Largest R̂ of the particles' coordinates over the populations (NaN for one)."""
    if len(runs) < 2:
        return math.nan
    z = np.stack([r["z"].cpu().numpy() for r in runs])  # [population, particle, P]
    return chain_diagnostics({"z": z})["rhat_max"]


def _correlation(a: Tensor, b: Tensor) -> float:
    """Mean over coordinates of the correlation, across particles, of ``a`` and ``b`` ``[n,
    P]``."""
    a, b = a - a.mean(0), b - b.mean(0)
    r = (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)).clamp_min(1e-300)
    return float(r.mean())


def _loglik(wm: WhitenedModel, z: Tensor, chunk: int = 512) -> Tensor:
    """``log p(v | z)`` ``[n]``, ``chunk`` particles per batch (a graph only where grad
    mode is on: :func:`temper` turns it off except for HMC's gradients)."""
    return torch.cat(
        [
            log_likelihood(wm.model, wm.v_obs, wm.params(z[i : i + chunk])).sum(-1)
            for i in range(0, z.shape[0], chunk)
        ]
    )


def _next_beta(ll: Tensor, beta: float, target_ess: float) -> float:
    """The largest ``β' ≤ 1`` whose incremental weights ``exp((β' − β) ll)`` keep ESS ≥
    ``target_ess · n`` (bisection)."""
    n = ll.numel()
    ll = torch.nan_to_num(ll, nan=-math.inf)

    def ess(b):
        return importance_ess((b - beta) * ll)

    if ess(1.0) >= target_ess * n:
        return 1.0
    lo, hi = beta, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ess(mid) >= target_ess * n else (lo, mid)
    return max(lo, beta + 1e-12)


def _systematic(w: Tensor, gen: torch.Generator) -> Tensor:
    """Systematic resampling: indices ``[n]`` for normalised weights ``w`` ``[n]``."""
    n = w.numel()
    u = (torch.rand(1, generator=gen, dtype=torch.float64) + torch.arange(n)) / n
    cdf = torch.cumsum(w.detach().cpu().double(), 0)
    cdf[-1] = 1.0
    return torch.searchsorted(cdf, u).clamp_max(n - 1)


def _proposal_chol(z: Tensor) -> Tensor:
    """Cholesky factor of the particles' covariance (regularised), ``[P, P]``."""
    c = torch.cov(z.T)
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    return torch.linalg.cholesky(c + 1e-9 * float(torch.diagonal(c).mean()) * eye)


def _independence(target, z, lp, ll, q, gen):
    """One independence Metropolis–Hastings sweep under ``π_β`` (``target = (log_prior,
    log_lik, β)``) from the Student-t mixture ``q`` fitted to the particles: particles jump
    between modes. ``(z, lp, ll, acceptance)``."""
    log_prior, log_lik, beta = target
    prop = q.sample(z.shape[0], gen)
    lp2, ll2 = log_prior(prop), log_lik(prop)
    log_a = (lp2 + beta * ll2 - q.log_prob(prop)) - (lp + beta * ll - q.log_prob(z))
    return _accept(z, lp, ll, prop, lp2, ll2, log_a, gen)


def _accept(z, lp, ll, prop, lp2, ll2, log_a, gen):
    """Metropolis acceptance of ``prop`` against ``z`` with log ratios ``log_a`` ``[n]``."""
    log_a = torch.nan_to_num(log_a, nan=-math.inf)
    u = torch.rand(z.shape[0], generator=gen, dtype=z.dtype).to(z.device)
    take = torch.log(u) < log_a
    z = torch.where(take[:, None], prop, z)
    lp, ll = torch.where(take, lp2, lp), torch.where(take, ll2, ll)
    return z, lp, ll, float(take.double().mean())


class _Kernel:
    """The move beside the independence sampler: ``"walk"`` (random-walk Metropolis, its
    step a multiple ``scale`` of the particles' Cholesky factor, adapted towards 25 %
    acceptance) or ``"hmc"`` (``leapfrog_steps`` leapfrog steps of size ``scale`` in the
    coordinates that factor whitens, adapted towards 65 %); ``cost``: evaluations of the
    likelihood per particle and sweep."""

    def __init__(self, name: str, leapfrog_steps: int):
        self.name, self.leapfrog_steps = name, leapfrog_steps
        self.target_accept = _TARGET_ACCEPT if name == "walk" else _HMC_ACCEPT
        self.cost = 1 if name == "walk" else leapfrog_steps + 1

    def initial_scale(self, p: int) -> float:
        return 2.38 / math.sqrt(p) if self.name == "walk" else 0.5 / p**0.25

    def sweep(self, target, z, lp, ll, chol: Tensor, scale: float, gen):
        """One sweep of every particle under ``π_β``, then the step adapted: ``(z, lp, ll,
        acceptance, scale)``."""
        if self.name == "walk":
            with torch.no_grad():
                z, lp, ll, acc = _metropolis(target, z, lp, ll, chol * scale, gen)
        else:
            z, lp, ll, acc = _hmc(target, z, lp, ll, chol, scale, self.leapfrog_steps, gen)
        return z, lp, ll, acc, scale * math.exp(acc - self.target_accept)


def _hmc(target, z, lp, ll, chol: Tensor, step: float, n_leap: int, gen):
    """One HMC sweep of every particle under ``π_β`` (``target = (log_prior, log_lik, β)``),
    inverse mass matrix ``chol cholᵀ``, step ``step`` jittered ± 20 % per particle. A
    particle whose gradient or density turns non-finite stops and is rejected. ``(z, lp, ll,
    acceptance)``."""
    log_prior, log_lik, beta = target

    def grad(x):
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            a, b = log_prior(x), log_lik(x)
            (g,) = torch.autograd.grad((a + beta * b).sum(), x)
        bad = ~(torch.isfinite(g).all(-1) & torch.isfinite(a + b))
        return a.detach(), b.detach(), torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0), bad

    n, dt, dev = z.shape[0], z.dtype, z.device
    p0 = torch.randn(z.shape, generator=gen, dtype=dt).to(dev)
    eps = step * (0.8 + 0.4 * torch.rand(n, 1, generator=gen, dtype=dt)).to(dev)
    _, _, g, bad = grad(z)
    x, p = z, p0 + 0.5 * eps * (g @ chol)
    for i in range(n_leap):
        x = torch.where(bad[:, None], x, x + eps * (p @ chol.T))
        lp2, ll2, g, bad_i = grad(x)
        bad = bad | bad_i
        p = p + (eps if i < n_leap - 1 else 0.5 * eps) * (g @ chol)
    with torch.no_grad():
        h0 = lp + beta * ll - 0.5 * (p0 * p0).sum(-1)
        log_a = torch.where(bad, -math.inf, lp2 + beta * ll2 - 0.5 * (p * p).sum(-1) - h0)
        return _accept(z, lp, ll, x.detach(), lp2, ll2, log_a, gen)


def _metropolis(target, z, lp, ll, chol: Tensor, gen):
    """One random-walk Metropolis sweep of every particle under ``π_β``, steps ``chol · e``:
    ``(z, lp, ll, acceptance rate)``."""
    log_prior, log_lik, beta = target
    e = torch.randn(z.shape, generator=gen, dtype=z.dtype).to(z.device)
    prop = z + e @ chol.T
    lp2, ll2 = log_prior(prop), log_lik(prop)
    log_a = (lp2 + beta * ll2) - (lp + beta * ll)
    return _accept(z, lp, ll, prop, lp2, ll2, log_a, gen)
