"""Identifiability metrics of a posterior (draws from any method: SVI, NUTS, Laplace).

Per parameter: posterior mean and sd, the prior sd, the contraction ``1 − Var_post /
Var_prior`` (1: pinned down by the data; 0: nothing learned), the z-score of the ground truth
``(mean − truth) / sd`` and whether the truth lies in the central 90 % interval. Jointly: the
posterior correlation matrix, and the eigen-directions of the covariance of ``log g`` — the
stiff (small-variance) and sloppy (large-variance) combinations of conductances.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bayesneuron.errors import DataError

__all__ = ["Identifiability", "identifiability"]


@dataclass
class Identifiability:
    """Metrics over ``P`` parameters (free-name-major, ``labels`` such as ``"g_na[3]"`` or,
    shared by region, ``"g_k[soma]"``)."""

    labels: list[str]
    mean: np.ndarray
    sd: np.ndarray
    prior_sd: np.ndarray
    truth: np.ndarray | None
    covered_90: np.ndarray | None
    correlation: np.ndarray
    log_cov_eigvals: np.ndarray
    log_cov_eigvecs: np.ndarray

    @property
    def contraction(self) -> np.ndarray:
        return 1.0 - (self.sd / self.prior_sd) ** 2

    @property
    def z(self) -> np.ndarray | None:
        return None if self.truth is None else (self.mean - self.truth) / self.sd

    def summary(self) -> dict[str, float]:
        """One row of a design table: ``mean_contraction``, ``min_contraction``,
        ``max_abs_z``, ``coverage_90`` (fraction of truths inside their 90 % interval),
        ``max_rel_sd`` (largest sd / |mean|, the worst-determined parameter in relative
        terms) and ``sloppiest_sd`` (sd of the sloppiest direction of log g)."""
        c = self.contraction
        out = {
            "mean_contraction": float(c.mean()),
            "min_contraction": float(c.min()),
            "max_abs_z": float(np.abs(self.z).max()) if self.truth is not None else np.nan,
            "coverage_90": float(self.covered_90.mean()) if self.truth is not None else np.nan,
            "max_rel_sd": float((self.sd / np.abs(self.mean)).max()),
            "sloppiest_sd": float(np.sqrt(self.log_cov_eigvals.max())),
        }
        return out

    def per_parameter(self) -> list[dict]:
        """One record per parameter (for a CSV)."""
        z = self.z
        return [
            {
                "parameter": lab,
                "mean": float(self.mean[i]),
                "sd": float(self.sd[i]),
                "prior_sd": float(self.prior_sd[i]),
                "contraction": float(self.contraction[i]),
                "truth": None if self.truth is None else float(self.truth[i]),
                "z": None if z is None else float(z[i]),
                "covered_90": None if self.covered_90 is None else bool(self.covered_90[i]),
            }
            for i, lab in enumerate(self.labels)
        ]


def _flat(samples: Mapping, free, sizes: Mapping[str, int]) -> np.ndarray:
    cols = []
    for k in free:
        if k not in samples:
            raise DataError(f"samples lack {k!r}; expected one array per free parameter {free}")
        x = np.asarray(samples[k], dtype=np.float64)
        if x.shape[-1] != sizes[k]:
            raise DataError(f"samples[{k!r}] has shape {x.shape}; expected [..., {sizes[k]}]")
        cols.append(x.reshape(-1, sizes[k]))
    return np.concatenate(cols, axis=1)  # [draw, P]


def identifiability(samples: Mapping, model, truth: Mapping | None = None) -> Identifiability:
    """Metrics of posterior draws name → ``[..., size]`` (any leading chain/draw dims) of the
    free parameters of ``model`` (its priors give the prior sds); ``truth`` name → ``[size]``
    (``size``: the compartments, or the regions of a parameter shared by region; labels
    ``g_na[3]``, ``g_k[soma]``). Eigen-directions are of ``log g``, or of ``g`` for a
    parameter that takes values ≤ 0 (a reversal potential)."""
    free, sizes = model.free, model.sizes
    x = _flat(samples, free, sizes)
    if x.shape[0] < 2 or not np.isfinite(x).all():
        raise DataError("identifiability needs ≥ 2 finite draws")
    prior_sd = np.concatenate(
        [np.broadcast_to(model.priors[k].variance.cpu().numpy() ** 0.5, (sizes[k],)) for k in free]
    )
    mean, sd = x.mean(0), x.std(0, ddof=1)
    tru = cov90 = None
    if truth is not None:
        tru = np.concatenate(
            [np.asarray(truth[k], dtype=np.float64).reshape(sizes[k]) for k in free]
        )
        lo, hi = np.quantile(x, [0.05, 0.95], axis=0)
        cov90 = (tru >= lo) & (tru <= hi)
    corr = np.corrcoef(x, rowvar=False)
    positive = (x > 0).all(0)
    logx = np.where(positive, np.log(np.clip(x, 1e-300, None)), x)
    ev, evec = np.linalg.eigh(np.cov(logx, rowvar=False))
    return Identifiability(list(model.labels), mean, sd, prior_sd, tru, cov90, corr, ev, evec)
