"""NUTS (Pyro's MCMC) on the whitened model: the reference posterior for small cells.

Chains run one after another (the simulator already uses the cores). Sampling ``z`` with
``u = c + L z`` from a Laplace approximation (:class:`~bayesneuron.svi.WhitenedModel`) is a
fixed linear preconditioning: the chain targets the same posterior, with a mass matrix that
starts right.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS

from bayesneuron.errors import FitError
from bayesneuron.inference.laplace import UnconstrainedLaplace, laplace_map
from bayesneuron.inference.model import NeuronModel
from bayesneuron.inference.svi import WhitenedModel

__all__ = ["NutsRun", "run_nuts"]


@dataclass
class NutsRun:
    """Posterior draws name → ``[chain, draw, comp]`` and per-draw statistics ``[chain,
    draw]`` (``diverging``, ``step_size``, ``lp``: the log joint density)."""

    samples: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray]
    wall_s: float
    laplace: UnconstrainedLaplace

    @property
    def num_divergences(self) -> int:
        return int(self.sample_stats["diverging"].sum())


def run_nuts(
    model: NeuronModel,
    v_obs,
    init: Mapping,
    *,
    num_samples: int = 500,
    warmup_steps: int = 300,
    num_chains: int = 2,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 8,
    laplace: UnconstrainedLaplace | None = None,
    seed: int = 0,
    progress: bool = False,
) -> NutsRun:
    """Sample the posterior of ``model`` given ``v_obs`` with NUTS, chains one after another.

    ``init`` is a mode (e.g. a MAP), name → ``[comp]``; the chains start near it (whitened
    coordinates z drawn from N(0, 0.5²)) and adapt step size and a diagonal mass matrix.
    """
    for key, val, low in (
        ("num_samples", num_samples, 1),
        ("num_chains", num_chains, 1),
        ("warmup_steps", warmup_steps, 0),
    ):
        if not isinstance(val, (int, np.integer)) or val < low:
            raise FitError(f"{key} = {val!r} must be an integer ≥ {low}")
    t0 = time.perf_counter()
    lap = laplace_map(model, v_obs, init) if laplace is None else laplace
    wm = WhitenedModel(model, v_obs, lap)
    draws, stats = [], {"diverging": [], "step_size": []}
    for c in range(num_chains):
        pyro.set_rng_seed(seed + c)
        z0 = 0.5 * torch.randn(wm.size, dtype=wm.center.dtype).to(wm.center.device)
        kernel = NUTS(
            potential_fn=lambda p: -wm.log_joint(p["z"]),  # no Pyro tracing per step
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
        )
        steps = []

        def hook(kernel, samples, stage, i, steps=steps):
            if stage == "Sample":
                steps.append(float(kernel.step_size))

        mcmc = MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            num_chains=1,
            initial_params={"z": z0},
            disable_progbar=not progress,
            hook_fn=hook,
        )
        mcmc.run()
        z = mcmc.get_samples()["z"].detach()
        draws.append(z)
        div = mcmc.diagnostics().get("divergences", {}).get("chain 0", [])
        flag = np.zeros(num_samples, dtype=bool)
        flag[np.asarray(div, dtype=int)] = True
        stats["diverging"].append(flag)
        stats["step_size"].append(np.asarray(steps, dtype=np.float64))
    with torch.no_grad():
        z = torch.stack(draws)  # [chain, draw, P]
        samples = {k: v.cpu().numpy() for k, v in wm.params(z).items()}
        stats["lp"] = [wm.log_joint(zc).cpu().numpy() for zc in z]
    return NutsRun(
        samples=samples,
        sample_stats={k: np.stack(v) for k, v in stats.items()},
        wall_s=time.perf_counter() - t0,
        laplace=lap,
    )
