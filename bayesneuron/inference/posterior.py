"""A posterior that says whether it can be trusted: methods tried in turn until one passes.

Every posterior approximation can be wrong, and a wrong one looks like any other: a Gaussian
guide on a curved or multi-modal posterior is confidently over-contracted. So each method's
result is checked, and where it fails the next, more expensive method is tried (the
*ladder*, default :data:`LADDER`)::

    "svi:mvn"      SVI, multivariate normal guide    passes: PSIS k̂ ≤ khat_threshold(S)
    "svi:iaf"      SVI, normalizing flow guide        passes: PSIS k̂ ≤ khat_threshold(S)
    "importance"   importance resampling from a       passes: PSIS k̂ ≤ khat_threshold(S),
                   Student-t mixture on every mode's  ESS ≥ 100
                   Laplace approximation
    "adaptive_importance"  the same proposal, refitted  passes: as "importance", on the
                   to every round's weighted draws    last round's draws alone
                   for up to 4 rounds (AMIS; after
                   "importance", its draws are the
                   first round, not simulated again)
    "nuts"         NUTS, chains started at the modes  passes: R̂ ≤ 1.01, bulk and tail
                                                      ESS ≥ 100 per chain, no divergences
    "smc"          tempered SMC from the prior, 2     passes: R̂ ≤ 1.01, bulk and tail
                   independent populations (not     ESS ≥ 100 per population, β
                   started at the modes: for rugged reached 1
                   posteriors the modes miss)

(``"laplace"`` — the Laplace approximation, checked by PSIS like a guide — may be put in a
ladder too.) The first method that passes gives the reported posterior
(``method``, ``ok=True``); if none passes, the last one tried is reported with ``ok=False``,
and every attempt keeps its diagnostics and the reason it failed. Whatever the method, the
posterior is not ok when the best mode does not explain the data at the model's noise level
(:func:`~.diagnostics.map_fit`, models with a fixed σ): a good approximation around a wrong
optimum, or of a misspecified model, is still wrong. k̂ is computed from ``S ≥
2000`` fresh draws, where the sample-size-aware threshold is ≈ 0.70.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from bayesneuron.errors import FitError
from bayesneuron.inference.diagnostics import (
    FIT_P_MIN,
    RHAT_MAX,
    chain_diagnostics,
    khat_threshold,
    map_fit,
    min_ess,
    psis_weights,
)
from bayesneuron.inference.importance import (
    adaptive_importance,
    importance_resample,
    log_target,
)
from bayesneuron.inference.laplace import UnconstrainedLaplace, laplace_map
from bayesneuron.inference.nuts import run_nuts
from bayesneuron.inference.smc import tempered_smc
from bayesneuron.inference.svi import GUIDES, fit_svi
from bayesneuron.inference.whitened import WhitenedModel

__all__ = ["LADDER", "Attempt", "CheckedPosterior", "checked_posterior"]

LADDER = ("svi:mvn", "svi:iaf", "importance", "nuts")
IMPORTANCE = ("importance", "adaptive_importance")


@dataclass
class Attempt:
    """One method tried: whether it passed, why not, its diagnostics and wall time."""

    method: str
    ok: bool
    reason: str
    diagnostics: dict
    wall_s: float


@dataclass
class CheckedPosterior:
    """The reported posterior and how it was obtained.

    ``samples``: name → ``[chain, draw, comp]`` (``"sigma"`` ``[chain, draw]``; one chain
    except for NUTS); ``sample_stats``: NUTS's per-draw statistics ``[chain, draw]`` (else
    empty); ``method``: the method that produced it; ``ok``: whether it passed its checks;
    ``attempts``: every method tried, in order; ``elbo``: the ELBO history of the last SVI
    fit tried (None if none was); ``laplace``: the Laplace approximation at the best mode;
    ``fit``: :func:`~.diagnostics.map_fit` of the best mode (empty where σ is inferred).
    """

    method: str
    ok: bool
    samples: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray]
    attempts: list[Attempt]
    laplace: UnconstrainedLaplace
    n_modes: int = 1
    elbo: np.ndarray | None = field(default=None, repr=False)
    fit: dict = field(default_factory=dict)

    @property
    def draws(self) -> dict[str, np.ndarray]:
        """Every chain's draws pooled, name → ``[draw, …]``."""
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in self.samples.items()}

    @property
    def diagnostics(self) -> dict:
        """``posterior_method``, ``posterior_ok``, ``n_modes``, the reported method's own
        diagnostics, and ``attempts`` (e.g. ``"svi:mvn ✗ k̂ 0.91 > 0.70; importance ✓"``)."""
        last = next(a for a in self.attempts if a.method == self.method)
        tried = [f"{a.method} {'ok' if a.ok else 'failed: ' + a.reason}" for a in self.attempts]
        if self.fit and not self.fit["map_fit_p"] >= FIT_P_MIN:
            tried.append(_misfit_reason(self.fit))
        return {
            "posterior_method": self.method,
            "posterior_ok": self.ok,
            "n_modes": self.n_modes,
            **last.diagnostics,
            **self.fit,
            "attempts": "; ".join(tried),
        }


def checked_posterior(
    model,
    v_obs,
    modes: Mapping | Sequence[Mapping],
    *,
    ladder: Sequence[str] = LADDER,
    num_samples: int = 1000,
    psis_samples: int = 2000,
    svi: Mapping | None = None,
    nuts: Mapping | None = None,
    smc: Mapping | None = None,
    adaptive: Mapping | None = None,
    laplace: UnconstrainedLaplace | None = None,
    seed: int = 0,
    progress: bool = False,
) -> CheckedPosterior:
    """The posterior of ``model`` given ``v_obs`` by the first method of ``ladder`` that
    passes its checks (module doc).

    Args:
        model, v_obs: the :class:`~.model.NeuronModel` and its data ``model.obs_shape``.
        modes: one mode or several (name → ``[comp]``), best first — e.g.
            :meth:`~.fit.MapFit.modes` of a multi-start MAP. Never the ground truth.
        ladder: methods in the order tried: ``"laplace"``, ``"svi:<guide>"`` (a guide of
            :data:`~.svi.GUIDES`), ``"importance"``, ``"adaptive_importance"``, ``"nuts"``.
        num_samples: posterior draws reported (per chain for NUTS).
        psis_samples: fresh draws for k̂ (SVI, Laplace); twice as many for ``"importance"``.
        svi, nuts, smc, adaptive: keyword arguments for :func:`~.svi.fit_svi` /
            :func:`~.nuts.run_nuts` / :func:`~.smc.tempered_smc` /
            :func:`~.importance.adaptive_importance` (``rounds``, ``n_components``).
        laplace: a precomputed :func:`~.laplace.laplace_map` at the best mode.
        seed: seeds every method (locally; the global RNGs are left as they were).
    """
    modes = [modes] if isinstance(modes, Mapping) else list(modes)
    if not modes:
        raise FitError("checked_posterior needs at least one mode to start from")
    for m in ladder:
        if (
            m not in ("laplace", "nuts", "smc", *IMPORTANCE)
            and m.removeprefix("svi:") not in GUIDES
        ):
            raise FitError(
                f"unknown method {m!r} in the ladder; use {LADDER}, 'laplace', "
                "'adaptive_importance' or 'smc'"
            )
    v_obs = model.check_data(v_obs)
    lap = laplace or laplace_map(model, v_obs, modes[0], progress=progress)
    laps = [lap] + [laplace_map(model, v_obs, m, progress=False) for m in modes[1:]]
    attempts, result, elbo, memo = [], None, None, {}
    for method in ladder:
        t0 = time.perf_counter()
        samples, stats, diag, hist = _run(
            method,
            model,
            v_obs,
            laps,
            num_samples,
            psis_samples,
            (svi, nuts, smc, adaptive),
            seed,
            progress,
            memo,
        )
        ok, reason = _passes(method, diag)
        attempts.append(Attempt(method, ok, reason, diag, time.perf_counter() - t0))
        result, elbo = (method, ok, samples, stats), elbo if hist is None else hist
        if ok:
            break
    method, ok, samples, stats = result
    fit = _mode_fit(model, v_obs, modes[0])
    ok = ok and (not fit or fit["map_fit_p"] >= FIT_P_MIN)
    return CheckedPosterior(method, ok, samples, stats, attempts, lap, len(modes), elbo, fit)


def _mode_fit(model, v_obs, mode) -> dict:
    """:func:`~.diagnostics.map_fit` of ``mode``'s residuals; ``{}`` where σ is inferred."""
    if model.sigma is None:
        return {}
    params = {
        k: torch.as_tensor(mode[k], dtype=model.dtype, device=model.device) for k in model.free
    }
    with torch.no_grad():
        sse = float(((model.simulate(params) - v_obs) ** 2).sum())
    n_params = sum(model.sizes.values())
    return map_fit(sse, float(model.sigma), v_obs.numel(), n_params)


def _misfit_reason(fit: dict) -> str:
    return (
        f"the mode does not fit the data: χ² {fit['map_chi2']:.0f} for {fit['map_dof']} dof "
        f"(z {fit['map_fit_z']:+.1f}, p {fit['map_fit_p']:.1g} < {FIT_P_MIN:g}): a wrong "
        "local optimum or a misspecified model"
    )


def _run(method, model, v, laps, num_samples, psis_samples, options, seed, progress, memo):
    """``(samples [chain, draw, …], sample_stats, diagnostics, elbo)`` of one method;
    ``options``: the ``svi``, ``nuts``, ``smc`` and ``adaptive`` keyword arguments;
    ``memo``: what one rung leaves the next (importance's draws: adaptive importance's first
    round, the same draws, is not simulated twice)."""
    svi, nuts, smc, adaptive = options
    if method == "laplace":
        return _laplace_checked(model, v, laps[0], num_samples, psis_samples, seed)
    if method == "importance":
        samples, diag = importance_resample(
            model, v, laps, num_samples, 2 * psis_samples, seed, draws=memo.setdefault("iw", {})
        )
        return samples, {}, diag, None
    if method == "adaptive_importance":
        kw = dict(adaptive or {})
        samples, diag = adaptive_importance(
            model, v, laps, num_samples, 2 * psis_samples, seed, first_draws=memo.get("iw"), **kw
        )
        return samples, {}, diag, None
    if method == "smc":
        kw = dict(num_samples=num_samples, seed=seed, progress=progress) | dict(smc or {})
        samples, diag = tempered_smc(model, v, laps[0], **kw)
        return samples, {}, diag, None
    if method == "nuts":
        kw = dict(num_samples=num_samples, warmup_steps=300, num_chains=2) | dict(nuts or {})
        run = run_nuts(
            model, v, None, laplace=laps[0], inits=[lp.center for lp in laps], seed=seed, **kw
        )
        diag = chain_diagnostics(run.samples) | {
            "num_divergences": run.num_divergences,
            "num_chains": run.diagnostics["num_chains"],
        }
        return run.samples, run.sample_stats, diag, None
    kw = dict(num_particles=4, max_steps=300, min_steps=100, window=50) | dict(svi or {})
    fit = fit_svi(
        model,
        v,
        None,  # the mode is the Laplace approximation's centre
        guide=method.removeprefix("svi:"),
        num_samples=num_samples,
        psis_samples=psis_samples,
        laplace=laps[0],
        seed=seed,
        progress=progress,
        **kw,
    )
    diag = fit.diagnostics | {
        "khat_threshold": khat_threshold(psis_samples),
        "iw_gap": fit.iw_elbo - fit.elbo_final,
    }
    return {k: x[None] for k, x in fit.samples.items()}, {}, diag, fit.elbo


def _passes(method: str, d: dict) -> tuple[bool, str]:
    """Whether ``method``'s diagnostics ``d`` pass, and if not why."""
    if method in ("nuts", "smc"):
        need = min_ess(d["num_chains"])
        fails = [
            f"R̂ {d['rhat_max']:.3f} > {RHAT_MAX}" if not d["rhat_max"] <= RHAT_MAX else "",
            f"ESS {d['ess_bulk_min']:.0f} < {need:.0f}" if not d["ess_bulk_min"] >= need else "",
            f"tail ESS {d['ess_tail_min']:.0f} < {need:.0f}"
            if not d["ess_tail_min"] >= need
            else "",
            f"{d['num_divergences']} divergences" if d.get("num_divergences") else "",
            f"stopped at β {d['beta_final']:.3g} < 1" if d.get("beta_final", 1.0) < 1 else "",
            "out of time" if d.get("out_of_time") else "",
        ]
    else:
        k, thr = d["khat"], d["khat_threshold"]
        fails = [f"k̂ {k:.2f} > {thr:.2f}" if not k <= thr else ""]
        if method in IMPORTANCE and not d["ess"] >= 100:
            fails.append(f"ESS {d['ess']:.0f} < 100")
    reason = ", ".join(f for f in fails if f)
    return not reason, reason


def _laplace_checked(model, v, lap, num_samples, psis_samples, seed):
    """The Laplace approximation's draws, checked by PSIS on ``psis_samples`` fresh draws."""
    wm = WhitenedModel(model, v, lap)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num_samples + psis_samples, wm.size, generator=gen, dtype=wm.center.dtype)
    z = z.to(wm.center.device)
    zs = z[num_samples:]
    log_q = torch.distributions.Normal(0.0, 1.0).log_prob(zs).sum(-1)
    _, k = psis_weights(log_target(wm, zs) - log_q)
    samples = {x: y[None].cpu().numpy() for x, y in wm.params(z[:num_samples]).items()}
    return samples, {}, {"khat": k, "khat_threshold": khat_threshold(psis_samples)}, None
