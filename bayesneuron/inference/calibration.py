"""Simulation-based calibration (Talts et al. 2018) of a posterior method.

Repeat: draw ``θ*`` from the prior, simulate data with noise, compute the posterior with the
method under test, record the rank of ``θ*`` among ``L`` posterior draws, per parameter. If
the method is calibrated, every parameter's ranks are uniform on ``0 … L``. A simulation or
fit that fails (non-finite data, a diverged fit, an error of bayesneuron's) is counted with its
reason and skipped, never allowed to stop the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from bayesneuron.errors import BayesneuronError
from bayesneuron.inference._runtime import progress_bar
from bayesneuron.inference.laplace import laplace_map
from bayesneuron.inference.space import prior_draws
from bayesneuron.inference.svi import fit_svi
from bayesneuron.inference.synthetic import synthetic_data

__all__ = ["SbcResult", "sbc"]


@dataclass
class SbcResult:
    """Ranks ``[run, P]`` (``0 … n_draws``) of the true values among the posterior draws,
    ``labels`` of the P parameters, and the failures (``reason`` per failed run)."""

    labels: list[str]
    ranks: np.ndarray
    n_draws: int
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def n_ok(self) -> int:
        return self.ranks.shape[0]

    def histogram(self, bins: int = 10) -> np.ndarray:
        """Counts ``[P, bins]`` of the ranks in ``bins`` equal bins."""
        edges = np.linspace(0, self.n_draws + 1, bins + 1)
        return np.stack([np.histogram(r, edges)[0] for r in self.ranks.T])

    def uniformity_pvalues(self, bins: int = 10) -> np.ndarray:
        """χ² test of uniform ranks per parameter ``[P]`` (small p: miscalibrated)."""
        from scipy.stats import chi2

        h = self.histogram(bins)
        expect = self.n_ok / bins
        stat = ((h - expect) ** 2 / expect).sum(1)
        return chi2.sf(stat, bins - 1)


def sbc(
    model,
    n_runs: int,
    *,
    method: str = "laplace",
    n_draws: int = 99,
    noise_sigma: float | None = None,
    seed: int = 0,
    fit_kwargs: dict | None = None,
    progress: bool = True,
    on_run: Callable[[int, str], None] | None = None,
) -> SbcResult:
    """SBC of ``method`` (``"laplace"``: :func:`laplace_map`; ``"svi"``: :func:`fit_svi`) on
    ``model``, whose priors generate the truths and whose ``sigma`` the noise (or
    ``noise_sigma``). The posterior of each run starts at its truth (calibration tests the
    posterior approximation, not the search for the mode). The truths are
    :func:`~.space.prior_draws` of one generator seeded with ``seed``. ``progress``: a
    progress bar over the runs (``False``: silent)."""
    if method not in ("laplace", "svi"):
        raise BayesneuronError(f"method {method!r} unknown; use 'laplace' or 'svi'")
    if n_runs < 1 or n_draws < 1:
        raise BayesneuronError("n_runs and n_draws must be ≥ 1")
    noise = model.sigma if noise_sigma is None else noise_sigma
    gen = torch.Generator().manual_seed(seed)
    labels = [f"{k}[{i}]" for k in model.free for i in range(model.n_comp)]
    ranks, failures = [], []
    t0 = time.perf_counter()
    bar = progress_bar(n_runs, progress, f"SBC ({method})")
    for r in range(n_runs):
        truth = {k: x[0].cpu().numpy() for k, x in prior_draws(model, 1, generator=gen).items()}
        status = "ok"
        try:
            v = synthetic_data(model, truth, noise_sigma=noise, seed=seed + 1000 + r)
            if not bool(torch.isfinite(torch.as_tensor(v)).all()):
                raise BayesneuronError("simulated data are not finite")
            if method == "laplace":
                lap = laplace_map(model, v, truth, progress=False)
                draws = lap.sample(n_draws, seed=seed + r)
            else:
                kw = dict(max_steps=200, num_samples=n_draws, seed=seed + r, progress=False)
                kw.update(fit_kwargs or {})
                draws = fit_svi(model, v, truth, **kw).samples
            x = np.concatenate([np.asarray(draws[k])[:n_draws] for k in model.free], axis=1)
            t = np.concatenate([truth[k] for k in model.free])
            if not np.isfinite(x).all():
                raise BayesneuronError("posterior draws are not finite")
            ranks.append((x < t).sum(0))
        except (BayesneuronError, torch.linalg.LinAlgError, ValueError) as e:
            status = f"run {r}: {type(e).__name__}: {e}"
            failures.append(status)
        if on_run is not None:
            on_run(r, status)
        bar.update(1)
        bar.set_postfix(failed=len(failures))
    bar.close()
    P = len(labels)
    arr = np.asarray(ranks, dtype=np.int64).reshape(-1, P) if ranks else np.zeros((0, P), int)
    return SbcResult(labels, arr, n_draws, failures, time.perf_counter() - t0)
