"""Numbers that say whether a posterior approximation can be trusted.

* :func:`psis_khat` / :func:`psis_weights` — Pareto-smoothed importance sampling (Vehtari,
  Simpson, Gelman, Yao & Gabry 2024): the shape ``k̂`` of the importance weights' tail, and
  the smoothed weights themselves.
* :func:`importance_ess` — the effective sample size ``1 / Σ w²`` of normalised weights.
* :func:`khat_threshold` — the sample-size-aware bound on ``k̂``: ``min(1 − 1/log10 S, 0.7)``
  (0.585 for 256 draws, 0.697 for 2000). Above it, ``S`` draws cannot give a reliable
  importance-sampling estimate, so the approximation does not pass.
* :func:`chain_diagnostics` — rank-normalised split ``R̂`` and bulk/tail ESS of MCMC chains
  (Vehtari et al. 2021); :data:`RHAT_MAX` and :func:`min_ess` are the pass marks used.
* :func:`map_fit` — whether the mode a posterior is built around explains the data at the
  stated noise level (a χ² test of its residuals; :data:`FIT_P_MIN`). A wrong local optimum
  or a misspecified model fails it, however good the approximation around that mode is.

ArviZ computes the statistics; it is imported on first use, here only (the InferenceData
boundary is :mod:`bayesneuron.reports.arviz`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FIT_P_MIN",
    "RHAT_MAX",
    "chain_diagnostics",
    "importance_ess",
    "khat_threshold",
    "map_fit",
    "min_ess",
    "psis_khat",
    "psis_weights",
]

RHAT_MAX = 1.01
"""Largest rank-normalised split R̂ a chain set may have to pass (Vehtari et al. 2021)."""

FIT_P_MIN = 1e-3
"""Smallest χ² p-value of the mode's residuals that passes :func:`map_fit`."""


def _arviz():
    with warnings.catch_warnings():
        # ArviZ ≥ 0.21 announces its 1.0 refactor with a FutureWarning on import.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def importance_ess(log_w: Tensor | np.ndarray) -> float:
    """Effective sample size ``1 / Σ wᵢ²`` of the weights ``wᵢ ∝ exp(log_wᵢ)`` (Kish), from
    unnormalised log weights ``[n]`` (numpy or torch; ``-inf`` entries weigh 0)."""
    lw = torch.as_tensor(log_w, dtype=torch.float64)
    return float(1.0 / (torch.softmax(lw, 0) ** 2).sum())


def khat_threshold(n_draws: int) -> float:
    """The largest PSIS ``k̂`` at which ``n_draws`` importance draws are reliable:
    ``min(1 − 1/log10(n_draws), 0.7)``."""
    if n_draws < 11:
        return 0.0
    return min(1.0 - 1.0 / math.log10(n_draws), 0.7)


def min_ess(num_chains: int) -> float:
    """The bulk and tail ESS a chain set needs to pass: 100 per chain."""
    return 100.0 * num_chains


def psis_weights(log_w: Tensor | np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed normalised log weights ``[S]`` and ``k̂`` of log importance weights
    ``[S]``; non-finite weights get weight 0 (``k̂`` NaN where fewer than 2 are finite)."""
    x = torch.as_tensor(log_w).detach().double().cpu().numpy()
    ok = np.isfinite(x)
    out = np.full(x.shape, -np.inf)
    if ok.sum() < 2:
        return out, math.nan
    lw, k = _arviz().psislw(x[ok].copy())
    out[ok] = lw
    k = float(k)
    return out, (k if math.isfinite(k) else math.nan)


def psis_khat(log_w: Tensor | np.ndarray) -> float:
    """Pareto-smoothed importance sampling shape ``k̂`` of log importance weights ``[S]``:
    ≤ :func:`khat_threshold` ``(S)`` good; NaN where the tail is too short to fit."""
    return psis_weights(log_w)[1]


def chain_diagnostics(draws: dict[str, np.ndarray]) -> dict:
    """``rhat_max``, ``ess_bulk_min`` and ``ess_tail_min`` over every scalar of ``draws``
    (name → ``[chain, draw, …]``)."""
    az = _arviz()
    ds = az.convert_to_dataset({k: np.asarray(v) for k, v in draws.items()})
    vals = {}
    for key, fn in (
        ("rhat_max", lambda: az.rhat(ds)),
        ("ess_bulk_min", lambda: az.ess(ds, method="bulk")),
        ("ess_tail_min", lambda: az.ess(ds, method="tail")),
    ):
        arr = np.concatenate([np.ravel(fn()[k].values) for k in draws])
        arr = arr[np.isfinite(arr)]
        pick = np.max if key == "rhat_max" else np.min
        vals[key] = float(pick(arr)) if arr.size else math.nan
    return vals


def map_fit(sse: float, sigma: float, n_obs: int, n_params: int) -> dict:
    """χ² goodness of fit of a mode: ``map_chi2 = sse / σ²`` against χ² with
    ``map_dof = n_obs − n_params`` degrees of freedom (what the residuals of the global optimum
    of a correct model with Gaussian noise of sd ``σ`` follow). ``map_fit_z`` is the excess in
    sds, ``(χ² − dof) / √(2 dof)``; ``map_fit_p`` the upper-tail p-value (only a fit *worse*
    than the noise fails: noise-free data fit too well, which is no sign of a wrong mode).

    A mode 41 000 nats worse than the truth (a wrong local optimum found in
    ``studies/optimal_design``) has ``z ≈ 760`` on 5760 observations, where its Laplace
    approximation had passed PSIS. ``sse`` in mV², ``sigma`` in mV."""
    from scipy.stats import chi2 as chi2_dist

    dof = max(int(n_obs) - int(n_params), 1)
    x = float(sse) / float(sigma) ** 2
    return {
        "map_chi2": x,
        "map_dof": dof,
        "map_fit_z": (x - dof) / math.sqrt(2.0 * dof),
        "map_fit_p": float(chi2_dist.sf(x, dof)),
    }
