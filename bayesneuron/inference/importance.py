"""Importance sampling of a posterior from Student-t mixtures, plain and adaptive.

Both work in the whitened coordinates of the best mode's Laplace approximation
(:class:`~.whitened.WhitenedModel`: the Laplace approximation is N(0, I) there), weight draws by
``log p(z, data) − log q(z)``, smooth the weights by PSIS and resample ``num_samples`` draws.

* :func:`importance_resample` — one proposal: a mixture of multivariate Student-t
  (:data:`T_DF` degrees of freedom) centred on every mode's Laplace approximation, weighted
  by its Laplace evidence.
* :func:`adaptive_importance` — mixture population Monte Carlo (Cappé, Douc, Guillin, Marin &
  Robert 2008): from that proposal, each round fits a new Student-t mixture by weighted EM
  (``n_components`` components, the covariances shrunk towards the Laplace geometry where
  the effective sample size is small) to the draws of every round so far, weighted against
  the equal mixture of the proposals that drew them (AMIS, Cornuet, Marin, Mira & Robert
  2012), keeps a defensive share of the first proposal, and draws afresh. The reported
  draws, k̂ and ESS are those of the last round alone — plain importance sampling from one
  fixed proposal — so the checks mean what they mean for :func:`importance_resample`. A
  proposal that has learned a skewed or curved posterior's shape from the previous rounds
  passes where a Gaussian or Laplace mixture fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import torch
from torch import Tensor

from bayesneuron.inference.diagnostics import importance_ess, khat_threshold, psis_weights
from bayesneuron.inference.whitened import WhitenedModel

__all__ = [
    "T_DF",
    "StudentTMixture",
    "adapt_mixture",
    "adaptive_importance",
    "importance_resample",
    "log_target",
]

T_DF = 5
"""Degrees of freedom of the proposals' Student-t components (an integer: χ² from normals)."""
_DEFENSIVE = 0.1  # share of the first proposal kept in every adapted one
_EM_STEPS = 20


@dataclass
class StudentTMixture:
    """A mixture of multivariate Student-t in ``P`` dimensions: ``locs [K, P]``, ``scales
    [K, P, P]`` (lower-triangular), ``logw [K]`` (log mixture weights, normalised)."""

    locs: Tensor
    scales: Tensor
    logw: Tensor

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        """``n`` draws ``[n, P]`` from the private generator ``gen`` (on the CPU, then moved)."""
        dtype, P = self.locs.dtype, self.locs.shape[1]
        comp = torch.multinomial(self.logw.exp().cpu(), n, replacement=True, generator=gen)
        e = torch.randn(n, P, generator=gen, dtype=dtype)
        chi2 = torch.randn(n, T_DF, generator=gen, dtype=dtype).pow(2).sum(-1)
        e = (e / (chi2 / T_DF).sqrt()[:, None]).to(self.locs.device)
        comp = comp.to(self.locs.device)
        return self.locs[comp] + torch.einsum("nij,nj->ni", self.scales[comp], e)

    def log_prob(self, z: Tensor) -> Tensor:
        """``log q(z)`` ``[n]``."""
        df = torch.tensor(float(T_DF), dtype=z.dtype, device=z.device)
        parts = [
            dist.MultivariateStudentT(df, self.locs[k], self.scales[k]).log_prob(z) + self.logw[k]
            for k in range(self.locs.shape[0])
        ]
        return torch.logsumexp(torch.stack(parts), 0)

    def mix(self, other: StudentTMixture, share: float) -> StudentTMixture:
        """``(1 − share)·self + share·other``."""
        return StudentTMixture(
            torch.cat([self.locs, other.locs]),
            torch.cat([self.scales, other.scales]),
            torch.cat([self.logw + math.log1p(-share), other.logw + math.log(share)]),
        )


def laplace_mixture(wm: WhitenedModel, laps) -> StudentTMixture:
    """Student-t components on every mode's Laplace approximation, in ``wm``'s whitened
    coordinates, weighted by Laplace evidence."""
    Linv = torch.linalg.inv(wm.L)
    locs = torch.stack([Linv @ (lp.center - wm.center) for lp in laps])
    scales = torch.stack([torch.linalg.cholesky(Linv @ lp.cov @ Linv.T) for lp in laps])
    ev = torch.tensor([lp.log_posterior + 0.5 * torch.logdet(lp.cov).item() for lp in laps])
    return StudentTMixture(locs, scales, torch.log_softmax(ev.to(locs.dtype), 0).to(locs.device))


def fit_mixture(z: Tensor, log_w: np.ndarray, n_components: int, seed: int) -> StudentTMixture:
    """Weighted EM of a ``n_components`` Gaussian mixture to draws ``z [n, P]`` with
    normalised log weights ``log_w [n]``, as a Student-t mixture (the same locations and
    scales). Each covariance is shrunk towards the identity (the Laplace geometry) by
    ``P / (P + ESS_k)``, so a component fitted to few effective draws stays sensible."""
    w = torch.as_tensor(np.exp(log_w - np.max(log_w)), dtype=z.dtype, device=z.device)
    w = w / w.sum()
    n, P = z.shape
    K = max(1, min(n_components, int((w > 0).sum())))
    rng = np.random.default_rng(seed)
    start = rng.choice(n, size=K, replace=False, p=w.cpu().numpy() / float(w.sum()))
    mu = z[torch.as_tensor(start, device=z.device)].clone()
    cov = torch.eye(P, dtype=z.dtype, device=z.device).expand(K, P, P).clone()
    logpi = torch.full((K,), -math.log(K), dtype=z.dtype, device=z.device)
    eye = torch.eye(P, dtype=z.dtype, device=z.device)
    for _ in range(_EM_STEPS):
        comp = [dist.MultivariateNormal(mu[k], cov[k]).log_prob(z) + logpi[k] for k in range(K)]
        resp = torch.softmax(torch.stack(comp, 1), 1) * w[:, None]  # [n, K]
        nk = resp.sum(0).clamp_min(1e-300)
        mu = (resp.T @ z) / nk[:, None]
        d = z[:, None, :] - mu[None]  # [n, K, P]
        emp = torch.einsum("nk,nkp,nkq->kpq", resp, d, d) / nk[:, None, None]
        ess = nk**2 / (resp**2).sum(0).clamp_min(1e-300)
        lam = (P / (P + ess))[:, None, None]
        cov = (1 - lam) * emp + lam * eye + 1e-9 * eye
        logpi = torch.log(nk / nk.sum())
    return StudentTMixture(mu, torch.linalg.cholesky(cov), logpi)


def log_target(wm: WhitenedModel, z: Tensor, chunk: int = 500) -> Tensor:
    """``log p(z, data)`` ``[n]`` of whitened points ``z [n, P]``, ``chunk`` at a time, no graph."""
    with torch.no_grad():
        return torch.cat([wm.log_joint(z[i : i + chunk]) for i in range(0, z.shape[0], chunk)])


def _weights(log_p, q: StudentTMixture, n: int, gen, known: dict | None = None):
    """``(z [n, P], log p(z) [n], PSIS-smoothed log weights [n], k̂)`` of ``n`` draws from
    ``q`` against the log density ``log_p``. ``known``: ``{"z", "log_p"}`` of draws already
    evaluated; where they are exactly this call's draws, ``log_p`` is not called again."""
    z = q.sample(n, gen)
    same = known is not None and known["z"].shape == z.shape and torch.equal(known["z"], z)
    lp = known["log_p"] if same else log_p(z)
    lw, k = psis_weights(lp - q.log_prob(z))
    return z, lp, lw, k


def _resample(wm: WhitenedModel, z: Tensor, lw: np.ndarray, k: float, num_samples, seed):
    """``(samples name → [1, draw, …], diagnostics)`` resampled from weighted draws."""
    w = np.exp(lw - np.max(lw))
    w = w / w.sum()
    rng = np.random.default_rng(seed)
    pick = torch.as_tensor(rng.choice(len(w), size=num_samples, p=w), device=z.device)
    samples = {x: y[None].cpu().numpy() for x, y in wm.params(z[pick]).items()}
    diag = {
        "khat": k,
        "khat_threshold": khat_threshold(len(w)),
        "ess": importance_ess(lw),
        "unique_draws": int(np.unique(pick.cpu().numpy()).size),
        "n_proposals": len(w),
    }
    return samples, diag


def importance_resample(
    model, v, laps, num_samples: int, n_prop: int, seed: int, draws: dict | None = None
):
    """Importance resampling from the Student-t mixture on every mode's Laplace approximation
    (``laps``, best first): ``(samples, diagnostics)`` with ``khat``, ``khat_threshold``,
    ``ess``, ``unique_draws``, ``n_proposals``. ``draws``: a dict that receives the
    proposals ``"z"`` and their ``"log_p"`` — :func:`adaptive_importance` with the same
    arguments draws the same first round and takes them instead of simulating it again."""
    wm = WhitenedModel(model, v, laps[0])
    gen = torch.Generator().manual_seed(seed)
    z, lp, lw, k = _weights(lambda x: log_target(wm, x), laplace_mixture(wm, laps), n_prop, gen)
    if draws is not None:
        draws.update(z=z, log_p=lp)
    return _resample(wm, z, lw, k, num_samples, seed)


def adaptive_importance(
    model, v, laps, num_samples: int, n_prop: int, seed: int, rounds: int = 4,
    n_components: int = 4, first_draws: dict | None = None,
):  # fmt: skip
    """Adaptive importance sampling (module docstring): at most ``rounds`` rounds of
    ``n_prop`` draws; stops at the first round whose draws pass (k̂ ≤ the threshold for
    ``n_prop`` draws, ESS ≥ 100). ``(samples, diagnostics)`` as :func:`importance_resample`,
    plus ``rounds`` (used) and ``khat_rounds`` (k̂ of every round, e.g. ``"0.97 0.74 0.52"``).
    ``first_draws``: the ``draws`` of :func:`importance_resample` with the same arguments
    (its draws are this first round's: they are not simulated again)."""
    wm = WhitenedModel(model, v, laps[0])
    gen = torch.Generator().manual_seed(seed)
    first = laplace_mixture(wm, laps)
    z, lw, ks = adapt_mixture(
        lambda x: log_target(wm, x), first, n_prop, gen, seed, rounds, n_components, first_draws
    )
    samples, diag = _resample(wm, z, lw, ks[-1], num_samples, seed)
    return samples, diag | {"rounds": len(ks), "khat_rounds": " ".join(f"{x:.2f}" for x in ks)}


def adapt_mixture(log_p, first: StudentTMixture, n_prop: int, gen, seed: int, rounds: int,
                  n_components: int, known: dict | None = None):  # fmt: skip
    """The rounds of :func:`adaptive_importance` on a log density ``log_p`` (``[n, P] → [n]``)
    from the proposal ``first``, ``n_prop`` draws a round by ``gen``, EM seeded by ``seed``
    (``known``: already evaluated draws, as in :func:`_weights`):
    ``(z [n_prop, P], PSIS log weights [n_prop], [k̂ of every round])``, ``z`` and the
    weights from the last round alone (one fixed proposal). Each new proposal is fitted to
    the draws of *every* round so far, weighted by the balance heuristic (``p / mean_j q_j``
    over the proposals used), so it rests on all the effective draws gathered, not on the last
    round's few; with k̂ near 1 a round's own weights sit on a handful of draws."""
    q, ks, used, pool_z, pool_lp = first, [], [], [], []
    n_comp = max(n_components, first.locs.shape[0])
    for r in range(rounds):
        z, lp, lw, k = _weights(log_p, q, n_prop, gen, known if r == 0 else None)
        ks.append(k)
        if (k <= khat_threshold(n_prop) and importance_ess(lw) >= 100) or r == rounds - 1:
            break
        used.append(q)
        pool_z.append(z)
        pool_lp.append(lp)
        zs, lps = torch.cat(pool_z), torch.cat(pool_lp)
        log_mix = torch.logsumexp(torch.stack([p.log_prob(zs) for p in used]), 0)
        pooled, _ = psis_weights(lps - (log_mix - math.log(len(used))))
        q = fit_mixture(zs, pooled, n_comp, seed + r).mix(first, _DEFENSIVE)
    return z, lw, ks
