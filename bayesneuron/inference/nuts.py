"""NUTS (Pyro's MCMC) on the whitened model: the reference posterior for small cells.

Chains run one after another, or ``workers`` at a time in forked processes (the fused kernel
simulates on one core: on a machine with cores to spare, chains side by side finish sooner,
with the same draws). Sampling ``z`` with
``u = c + L z`` from a Laplace approximation (:class:`~.whitened.WhitenedModel`) is a fixed
linear preconditioning: the chain targets the same posterior, with a mass matrix that starts
right. The draws are returned in the model's own names (``g_na``, ``g_k``, …), so
``Predictive(model, posterior_samples=run.posterior_samples())`` gives predictive draws.

Chain ``c`` is seeded with ``seed + c`` locally: the global RNGs are restored afterwards, and
the sampler runs on a private Pyro parameter store.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pyro.infer import MCMC, NUTS
from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.inference._runtime import private_param_store, seeded
from bayesneuron.inference.laplace import UnconstrainedLaplace, laplace_map
from bayesneuron.inference.model import NeuronModel
from bayesneuron.inference.whitened import WhitenedModel

__all__ = ["NutsRun", "run_nuts", "usable_cores"]


@dataclass
class NutsRun:
    """Posterior draws name → ``[chain, draw, comp]`` (an inferred ``"sigma"`` ``[chain,
    draw]``, mV) and per-draw statistics ``[chain, draw]`` (``diverging``, ``step_size``,
    ``lp``: the log joint density)."""

    samples: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray]
    wall_s: float
    laplace: UnconstrainedLaplace

    @property
    def num_divergences(self) -> int:
        return int(self.sample_stats["diverging"].sum())

    @property
    def draws(self) -> dict[str, np.ndarray]:
        """Every chain's draws pooled, name → ``[chain · draw, comp]`` (``"sigma"``
        ``[chain · draw]``; the results' common protocol; :attr:`samples` keeps the chains
        apart)."""
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in self.samples.items()}

    @property
    def diagnostics(self) -> dict:
        """``num_divergences``, ``num_chains``, ``num_samples`` (per chain), the mean
        ``step_size`` and ``wall_s``."""
        chains, n = self.sample_stats["diverging"].shape
        return {
            "num_divergences": self.num_divergences,
            "num_chains": int(chains),
            "num_samples": int(n),
            "step_size": float(np.mean(self.sample_stats["step_size"])),
            "wall_s": self.wall_s,
        }

    def posterior_samples(self) -> dict[str, Tensor]:
        """:attr:`draws` as tensors in the model's dtype and device, for
        ``Predictive(model, posterior_samples=run.posterior_samples())``."""
        sp = self.laplace.space
        return {
            k: torch.as_tensor(v, dtype=sp.dtype, device=sp.device) for k, v in self.draws.items()
        }


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
    full_mass: bool = False,
    laplace: UnconstrainedLaplace | None = None,
    inits: Sequence[Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
    workers: int | str = 1,
) -> NutsRun:
    """Sample the posterior of ``model`` given ``v_obs`` with NUTS, chains one after another
    (``workers`` > 1: that many at a time, each in a process forked from this one;
    ``"auto"``: as many as chains and usable cores allow; the draws do not change).

    ``init`` is a mode (e.g. a MAP), name → ``[comp]``; the chains start near it (whitened
    coordinates z drawn from N(0, 0.5²)) and adapt step size and a diagonal mass matrix
    (``full_mass``: a dense one, for a posterior whose correlations the Laplace approximation
    at the mode does not capture, e.g. a rugged ridge).
    ``inits``: unconstrained starting points ``u`` ``[P]`` (e.g. the centres of several
    modes' Laplace approximations); chain ``c`` starts at ``inits[c % len(inits)]``, so
    chains started in different modes show a multi-modal posterior in R̂.
    Chain ``c`` is seeded with ``seed + c`` (locally: the global RNGs are restored).
    ``progress``: Pyro's progress bar per chain, or one bar over the chains' iterations
    when they run side by side (``False``: silent).
    """
    for key, val, low in (
        ("num_samples", num_samples, 1),
        ("num_chains", num_chains, 1),
        ("warmup_steps", warmup_steps, 0),
    ):
        if not isinstance(val, (int, np.integer)) or val < low:
            raise FitError(f"{key} = {val!r} must be an integer ≥ {low}")
    n_proc = _workers(workers, num_chains, model.device)
    t0 = time.perf_counter()
    lap = laplace_map(model, v_obs, init, progress=progress) if laplace is None else laplace
    wm = WhitenedModel(model, v_obs, lap)
    kw = dict(
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        full_mass=full_mass,
        progress=progress,
    )
    stats = {"diverging": [], "step_size": []}
    starts = [None] if not inits else [wm.whiten(torch.as_tensor(u)) for u in inits]
    jobs = [(wm, starts[c % len(starts)], seed + c, kw) for c in range(num_chains)]
    chains = _side_by_side(jobs, n_proc, progress) if n_proc > 1 else map(_seeded_chain, jobs)
    draws = []
    for z, diverging, step_size in chains:
        draws.append(torch.as_tensor(z, device=wm.center.device))
        stats["diverging"].append(diverging)
        stats["step_size"].append(step_size)
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


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; 1 where that is unknown)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def _workers(workers, num_chains: int, device) -> int:
    """Processes for the chains: at most one per chain; 1 on a GPU or without ``fork``."""
    if workers == "auto":
        workers = usable_cores()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise FitError(f"workers = {workers!r} must be an integer ≥ 1 or 'auto'")
    if torch.device(device).type != "cpu" or "fork" not in multiprocessing.get_all_start_methods():
        return 1  # one GPU; or no fork (Windows): the chains one after another
    return int(min(workers, num_chains))


def _seeded_chain(job, report=None):
    """One chain of ``(wm, start, seed, kw)``, seeded locally, on a private parameter store."""
    wm, start, seed, kw = job
    with seeded(seed, wm.center.device), private_param_store():
        return _chain(wm, start, **kw, report=report)


_JOBS: list = []  # the chains a forked worker runs (inherited, not pickled: a model with
_QUEUE = None  # compiled kernels and closures does not pickle) and its progress channel


def _forked_chain(c: int):
    torch.set_num_threads(1)  # no OpenMP pool in a forked child
    z, flags, steps = _seeded_chain(_JOBS[c], report=_QUEUE)
    return z.cpu().numpy(), flags, steps


def _side_by_side(jobs, n_proc: int, progress: bool) -> list:
    """The chains of ``jobs`` in ``n_proc`` forked processes, in order; one progress bar."""
    global _JOBS, _QUEUE
    from tqdm.auto import tqdm

    ctx = multiprocessing.get_context("fork")
    _JOBS = [(wm, start, seed, kw | {"progress": False}) for wm, start, seed, kw in jobs]
    _QUEUE = ctx.SimpleQueue() if progress else None
    total = sum(kw["num_samples"] + kw["warmup_steps"] for *_, kw in jobs)
    try:
        with ctx.Pool(n_proc) as pool:
            pending = pool.map_async(_forked_chain, range(len(jobs)))
            with tqdm(
                total=total, desc=f"NUTS, {n_proc} chains at a time", disable=not progress
            ) as bar:
                while not pending.ready():
                    pending.wait(0.5)
                    while _QUEUE is not None and not _QUEUE.empty():
                        bar.update(_QUEUE.get())
            return pending.get()
    finally:
        _JOBS, _QUEUE = [], None


def _chain(
    wm: WhitenedModel,
    start,
    *,
    num_samples,
    warmup_steps,
    target_accept_prob,
    max_tree_depth,
    full_mass,
    progress,
    report=None,
):
    """One chain from ``start + N(0, 0.1²)`` (``start`` ``z``; None: ``z ~ N(0, 0.5²)``):
    draws ``[draw, P]``, divergence flags and the step size per draw (``report``: a queue
    that receives the count of iterations done, every 10)."""
    z0 = torch.randn(wm.size, dtype=wm.center.dtype).to(wm.center.device)
    z0 = 0.5 * z0 if start is None else start + 0.1 * z0
    kernel = NUTS(
        potential_fn=lambda p: -wm.log_joint(p["z"]),  # no Pyro tracing per step
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        full_mass=full_mass,
    )
    steps = []

    def hook(kernel, samples, stage, i):
        if stage == "Sample":
            steps.append(float(kernel.step_size))
        if report is not None and (i + 1) % 10 == 0:
            report.put(10)

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
    div = mcmc.diagnostics().get("divergences", {}).get("chain 0", [])
    flag = np.zeros(num_samples, dtype=bool)
    flag[np.asarray(div, dtype=int)] = True
    return z, flag, np.asarray(steps, dtype=np.float64)
