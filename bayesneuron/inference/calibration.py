"""Simulation-based calibration (Talts et al. 2018) of a posterior method, from the data only.

Repeat: draw ``θ*`` from the prior, simulate data with noise, compute the posterior *from the
data alone* — a multi-start MAP (the base values and prior draws, never the truth), then the
method under test at that mode — and record the rank of ``θ*`` among ``L`` posterior draws,
per parameter. The truth is used for nothing but the rank. If the whole pipeline (search for
the mode and posterior approximation) is calibrated, every parameter's ranks are uniform on
``0 … L``. ``init="truth"`` starts the posterior at the truth instead; that only checks the
approximation around the right mode and is not evidence of calibration.

Two checks of uniformity per parameter: a χ² test of the rank histogram, and the ECDF of the
fractional ranks minus the uniform CDF inside a simultaneous band (Säilynoja, Bürkner &
Vehtari 2022, the band computed by simulating uniform ranks). A simulation or fit that fails
(non-finite data, a diverged fit, an error of bayesneuron's) is counted with its reason and
skipped, never allowed to stop the run. A checked posterior (``method="escalating"``) that
passes none of its checks is *kept* in the ranks — dropping it would hide exactly the runs
where the method is weakest — and counted in :attr:`SbcResult.n_not_ok`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from bayesneuron.errors import BayesneuronError
from bayesneuron.inference._runtime import progress_bar
from bayesneuron.inference.fit import fit_map
from bayesneuron.inference.laplace import laplace_map
from bayesneuron.inference.posterior import checked_posterior
from bayesneuron.inference.space import prior_draws
from bayesneuron.inference.svi import fit_svi
from bayesneuron.inference.synthetic import synthetic_data

__all__ = ["METHODS", "SbcResult", "ecdf_band", "ecdf_difference", "holm", "sbc"]

METHODS = ("laplace", "svi", "escalating")
LADDER = ("svi:mvn", "svi:iaf", "importance")
"""The escalating ladder used by default (NUTS left out: minutes per replicate)."""


# =========================================================================== rank statistics
def _grid(n_draws: int, n_points: int = 100) -> np.ndarray:
    """Ranks ``j`` at which the ECDF is evaluated (``z = (j + 1)/(L + 1)``): every
    ``0 … L − 1`` for ``L < n_points``, else ``n_points − 1`` evenly spread ones."""
    K = min(n_draws + 1, n_points)
    return np.unique(np.floor(np.arange(1, K) * (n_draws + 1) / K).astype(int) - 1)


def ecdf_difference(ranks: np.ndarray, n_draws: int) -> tuple[np.ndarray, np.ndarray]:
    """The ECDF of the fractional ranks minus the uniform CDF.

    Args:
        ranks: ``[run, P]`` integer ranks in ``0 … n_draws``.
        n_draws: ``L``, the posterior draws per run.

    Returns:
        ``(z [K], diff [P, K])``: at ``z_k = (j_k + 1)/(L + 1)`` the fraction of runs with
        rank ≤ ``j_k`` minus ``z_k`` (exactly 0 in expectation for uniform ranks).
    """
    j = _grid(n_draws)
    z = (j + 1) / (n_draws + 1)
    r = np.asarray(ranks).reshape(len(ranks), -1)
    F = (r.T[:, :, None] <= j[None, None, :]).mean(1)
    return z, F - z[None]


def ecdf_band(
    n_runs: int, n_draws: int, alpha: float = 0.05, *, n_sim: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simultaneous ``1 − alpha`` band of :func:`ecdf_difference` for ``n_runs`` uniform
    ranks on ``0 … n_draws`` (Säilynoja et al. 2022, by simulation).

    ``n_sim`` sets of uniform ranks are simulated; for each the smallest two-sided binomial
    tail probability of its ECDF over the grid is taken, and ``γ`` is their ``alpha``
    quantile; the band is the binomial ``γ/2`` and ``1 − γ/2`` quantiles at every ``z``.
    Seeded (``seed``), so the same arguments give the same band.

    Returns:
        ``(z [K], lower [K], upper [K])`` of the ECDF difference.
    """
    if n_runs < 1 or not 0 < alpha < 1:
        raise BayesneuronError(f"need n_runs ≥ 1 and 0 < alpha < 1 (got {n_runs}, {alpha})")
    n_sim = n_sim or int(max(2000, np.ceil(50 / alpha)))
    return tuple(x.copy() for x in _band(int(n_runs), int(n_draws), float(alpha), n_sim, seed))


@functools.lru_cache(maxsize=32)
def _band(n_runs: int, n_draws: int, alpha: float, n_sim: int, seed: int):
    """:func:`ecdf_band`, cached (the simulation takes ~0.1–0.5 s)."""
    from scipy.stats import binom

    j = _grid(n_draws)
    z = (j + 1) / (n_draws + 1)
    rng = np.random.default_rng(seed)
    sims = rng.integers(0, n_draws + 1, size=(n_sim, n_runs))
    idx = (sims + (n_draws + 1) * np.arange(n_sim)[:, None]).ravel()
    hist = np.bincount(idx, minlength=n_sim * (n_draws + 1)).reshape(n_sim, n_draws + 1)
    counts = hist.cumsum(1)[:, j]
    tail = np.minimum(binom.cdf(counts, n_runs, z), binom.sf(counts - 1, n_runs, z))
    gamma = np.quantile(np.minimum(2 * tail, 1.0).min(1), alpha)
    lower = binom.ppf(gamma / 2, n_runs, z) / n_runs - z
    upper = binom.ppf(1 - gamma / 2, n_runs, z) / n_runs - z
    return z, lower, upper


def holm(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down test: which hypotheses ``[P]`` are rejected at family-wise ``alpha``."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    reject = np.zeros(p.shape, bool)
    for i, k in enumerate(order):
        if p[k] > alpha / (len(p) - i):
            break
        reject[k] = True
    return reject


@dataclass
class SbcResult:
    """The outcome of :func:`sbc`.

    Attributes:
        labels: the P parameters, e.g. ``"g_na[0]"``.
        ranks: ``[run, P]`` ranks (``0 … n_draws``) of the truths among the posterior draws,
            one row per run that did not fail.
        n_draws: ``L``, posterior draws per run.
        failures: ``"run r: <error>"`` per failed run (not in ``ranks``).
        wall_s: seconds for the whole SBC.
        methods: per row of ``ranks``, the method that gave the posterior (the escalating
            ladder's rung; else ``method``).
        posterior_ok: per row, whether that posterior passed its checks (methods without a
            check — ``"laplace"``, ``"svi"`` — count as ok).
        map_converged: per row, whether some MAP start met the stopping rule (None where
            no MAP was run: ``init="truth"``).
        attempts: per row, the escalating ladder's attempts and why each failed (else "").
        settings: how it was run (method, init, starts, steps, seed, …).
    """

    labels: list[str]
    ranks: np.ndarray
    n_draws: int
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    methods: list[str] = field(default_factory=list)
    posterior_ok: np.ndarray | None = None
    map_converged: np.ndarray | None = None
    settings: dict = field(default_factory=dict)
    attempts: list[str] = field(default_factory=list)

    @property
    def n_ok(self) -> int:
        """Runs that gave ranks (failed runs excluded; not-ok posteriors included)."""
        return self.ranks.shape[0]

    @property
    def n_not_ok(self) -> int:
        """Runs kept in ``ranks`` whose posterior passed none of its checks."""
        return 0 if self.posterior_ok is None else int((~self.posterior_ok).sum())

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

    def ecdf(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`ecdf_difference` of the ranks: ``(z [K], diff [P, K])``."""
        return ecdf_difference(self.ranks, self.n_draws)

    def band(self, alpha: float = 0.05, seed: int = 0):
        """Per-parameter simultaneous band ``(z, lower, upper)`` at level ``1 − alpha/P``
        (Bonferroni over the P parameters, so all P stay inside with probability ≥ 1 − alpha
        under calibration)."""
        return ecdf_band(self.n_ok, self.n_draws, alpha / len(self.labels), seed=seed)

    def inside_band(self, alpha: float = 0.05) -> np.ndarray:
        """Per parameter ``[P]``: whether its ECDF difference stays inside :meth:`band`."""
        _, diff = self.ecdf()
        _, lo, hi = self.band(alpha)
        eps = 1e-12
        return ((diff >= lo - eps) & (diff <= hi + eps)).all(1)

    def passes(self, alpha: float = 0.05) -> bool:
        """Calibrated at family-wise level ``alpha``: every parameter inside its ECDF band
        (:meth:`band`) and no χ² uniformity test rejected by Holm's procedure. Each of the two
        checks alone wrongly fails a calibrated method with probability ≤ ``alpha``."""
        if self.n_ok == 0:
            return False
        return bool(
            self.inside_band(alpha).all() and not holm(self.uniformity_pvalues(), alpha).any()
        )

    def summary(self, alpha: float = 0.05) -> dict:
        """A JSON-ready summary: counts, pass/fail, per-parameter p-values and band checks."""
        n_fail = len(self.failures)
        used = {m: self.methods.count(m) for m in dict.fromkeys(self.methods)}
        out = {
            "passes": self.passes(alpha) if self.n_ok else False,
            "alpha": alpha,
            "n_runs": self.n_ok + n_fail,
            "n_ok": self.n_ok,
            "n_failed": n_fail,
            "failures": list(self.failures),
            "n_posterior_not_ok": self.n_not_ok,
            "posterior_not_ok": [
                f"row {i}: {self.methods[i]}; {self.attempts[i] if self.attempts else ''}"
                for i in np.flatnonzero(~self.posterior_ok)
            ]
            if self.n_not_ok
            else [],
            "methods_used": used,
            "n_map_unconverged": None
            if self.map_converged is None
            else int((~self.map_converged).sum()),
            "n_draws": self.n_draws,
            "wall_s": round(self.wall_s, 2),
            "settings": self.settings,
        }
        if self.n_ok:
            p, inside = self.uniformity_pvalues(), self.inside_band(alpha)
            holm_reject = holm(p, alpha)
            out["parameters"] = {
                lab: {
                    "chi2_p": float(p[i]),
                    "holm_reject": bool(holm_reject[i]),
                    "inside_ecdf_band": bool(inside[i]),
                }
                for i, lab in enumerate(self.labels)
            }
        if self.n_not_ok:  # the verdict without them, for comparison only
            out["passes_ok_only"] = self.only_ok().passes(alpha)
        return out

    def only_ok(self) -> SbcResult:
        """The rows whose posterior passed its checks (for comparison: the verdict of
        record, :meth:`passes`, keeps every ranked run)."""
        keep = np.ones(self.n_ok, bool) if self.posterior_ok is None else self.posterior_ok
        pick = np.flatnonzero(keep)
        return SbcResult(
            self.labels,
            self.ranks[keep],
            self.n_draws,
            list(self.failures),
            self.wall_s,
            methods=[self.methods[i] for i in pick] if self.methods else [],
            posterior_ok=keep[keep],
            settings=dict(self.settings),
            attempts=[self.attempts[i] for i in pick] if self.attempts else [],
        )


# =========================================================================== the SBC loop
def _posterior(model, v, truth, r: int, cfg: dict) -> tuple:
    """``(draws name → [draw, comp], method used, posterior ok, MAP converged, attempts)``
    of run ``r`` given only its data ``v`` (``truth`` only where ``cfg["init"] == "truth"``)."""
    seed = int(np.random.SeedSequence([cfg["seed"], r, 1]).generate_state(1)[0])
    if cfg["init"] == "truth":
        modes, converged = [truth], None
    else:  # the starts' prior draws come from their own stream, never the truths'
        fit = fit_map(
            model,
            v,
            n_starts=cfg["map_starts"],
            max_steps=cfg["map_steps"],
            seed=seed,
            progress=False,
        )
        modes, converged = fit.modes(max_modes=3, rel=1e-3), bool(np.any(fit.converged))
        if not modes:
            raise BayesneuronError("no MAP start reached a finite objective")
    kw, L = dict(cfg["fit_kwargs"] or {}), cfg["n_draws"]
    if cfg["method"] == "laplace":
        draws = laplace_map(model, v, modes[0], progress=False).sample(L, seed=seed)
        return draws, "laplace", True, converged, ""
    if cfg["method"] == "svi":
        kw = dict(max_steps=200, num_samples=L, seed=seed, progress=False) | kw
        return fit_svi(model, v, modes[0], **kw).samples, "svi", True, converged, ""
    cp = checked_posterior(model, v, modes, ladder=cfg["ladder"], num_samples=L, seed=seed, **kw)
    return cp.draws, cp.method, bool(cp.ok), converged, cp.diagnostics["attempts"]


def sbc(
    model,
    n_runs: int,
    *,
    method: str = "laplace",
    n_draws: int = 99,
    noise_sigma: float | None = None,
    seed: int = 0,
    init: str = "map",
    map_starts: int = 4,
    map_steps: int = 30,
    ladder: Sequence[str] = LADDER,
    fit_kwargs: dict | None = None,
    progress: bool = True,
    on_run: Callable[[int, str], None] | None = None,
) -> SbcResult:
    """SBC of a posterior method on ``model``, whose priors generate the truths and whose
    ``sigma`` the noise (or ``noise_sigma``, mV).

    Args:
        method: ``"laplace"`` (:func:`~.laplace.laplace_map` at the best mode), ``"svi"``
            (:func:`~.svi.fit_svi`, MVN guide, from the best mode) or ``"escalating"``
            (:func:`~.posterior.checked_posterior` on the distinct modes with ``ladder``).
        n_draws: ``L`` posterior draws per run (ranks ``0 … L``).
        init: ``"map"`` — a :func:`~.fit.fit_map` from ``map_starts`` starts (the base values
            and prior draws of a stream separate from the truths'), ``map_steps`` iterations
            per stage; ``"truth"`` — the posterior starts at the truth (not a calibration
            check of the whole pipeline; for diagnosing the approximation only).
        fit_kwargs: keyword arguments for :func:`~.svi.fit_svi` (``"svi"``) or
            :func:`~.posterior.checked_posterior` (``"escalating"``, e.g. ``svi={...}``).
        seed: the truths are :func:`~.space.prior_draws` of one generator seeded with it.
        progress: a progress bar; ``on_run(r, status)`` is called after each run.
    """
    if method not in METHODS:
        raise BayesneuronError(f"method {method!r} unknown; use one of {METHODS}")
    if init not in ("map", "truth"):
        raise BayesneuronError(f"init {init!r} unknown; use 'map' (data only) or 'truth'")
    if n_runs < 1 or n_draws < 1 or map_starts < 1 or map_steps < 1:
        raise BayesneuronError("n_runs, n_draws, map_starts and map_steps must be ≥ 1")
    cfg = dict(
        method=method,
        init=init,
        n_draws=n_draws,
        seed=seed,
        map_starts=map_starts,
        map_steps=map_steps,
        ladder=tuple(ladder),
        fit_kwargs=fit_kwargs,
    )
    noise = model.sigma if noise_sigma is None else noise_sigma
    gen = torch.Generator().manual_seed(seed)
    labels = model.labels
    rows, failures = [], []
    t0 = time.perf_counter()
    bar = progress_bar(n_runs, progress, f"SBC ({method})")
    for r in range(n_runs):
        truth = {k: x[0].cpu().numpy() for k, x in prior_draws(model, 1, generator=gen).items()}
        try:
            rows.append(_rank_row(model, truth, noise, r, cfg))
            status = rows[-1][1] if rows[-1][2] else f"{rows[-1][1]} (not ok)"
        except (BayesneuronError, torch.linalg.LinAlgError, ValueError) as e:
            status = f"run {r}: {type(e).__name__}: {e}"
            failures.append(status)
        if on_run is not None:
            on_run(r, status)
        bar.update(1)
        bar.set_postfix(failed=len(failures))
    bar.close()
    cfg |= dict(n_runs=n_runs, noise_sigma=float(noise), ladder=list(ladder))
    return _result(labels, rows, failures, time.perf_counter() - t0, cfg)


def _rank_row(model, truth: dict, noise: float, r: int, cfg: dict) -> tuple:
    """Run ``r``: its data, posterior and ``(ranks [P], method used, ok, MAP converged,
    attempts)``."""
    v = synthetic_data(model, truth, noise_sigma=noise, seed=cfg["seed"] + 1000 + r)
    if not bool(torch.isfinite(torch.as_tensor(v)).all()):
        raise BayesneuronError("simulated data are not finite")
    draws, used, ok, conv, attempts = _posterior(model, v, truth, r, cfg)
    x = np.concatenate([np.asarray(draws[k])[: cfg["n_draws"]] for k in model.free], axis=1)
    t = np.concatenate([truth[k] for k in model.free])
    if not np.isfinite(x).all():
        raise BayesneuronError("posterior draws are not finite")
    return (x < t).sum(0), used, ok, conv, attempts


def _result(labels, rows, failures, wall_s: float, cfg: dict) -> SbcResult:
    ranks = np.asarray([x[0] for x in rows], dtype=np.int64).reshape(-1, len(labels))
    conv = None if cfg["init"] == "truth" else np.asarray([x[3] for x in rows], bool)
    cfg["fit_kwargs"] = repr(cfg["fit_kwargs"])
    return SbcResult(
        labels,
        ranks,
        cfg["n_draws"],
        failures,
        wall_s,
        methods=[x[1] for x in rows],
        posterior_ok=np.asarray([x[2] for x in rows], bool),
        map_converged=conv,
        settings=cfg,
        attempts=[x[4] for x in rows],
    )
