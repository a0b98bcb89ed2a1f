"""Maximum a posteriori fits of a :class:`NeuronModel`, one design or many at once.

Two protocols:

* ``"paper"`` — Jones & Kording's exactly: Adam, lr 0.5, full batch, 200 steps, start at the
  cell's base values, raw conductances (no constraint, no prior, no σ), the paper's loss
  ``Σ_rec (v̂ − v)² / (trace · n_comp · time)`` (:mod:`._paper_protocol`).
* ``"bayesneuron"`` — the MAP: minimise ``½ Σ ((v̂ − v)/σ)² − log p(g)`` over the unconstrained
  coordinates ``u`` of :class:`~.space.ParameterSpace` (the same map as Laplace, SVI and NUTS:
  ``log g`` for positive priors or no prior, the logit of the interval for uniform priors,
  there kept 0.25 % of the interval inside its ends) by Levenberg–Marquardt (:mod:`._lm`).
  The Jacobian is exact where the fused kernel runs (forward sensitivities,
  :func:`~bayesneuron.simulation.api.sensitivities`), else forward differences taken as one
  batched simulation (the parameter perturbations are a sample dimension); the prior's
  gradient and curvature come from autograd; four damping values are tried per iteration in
  one batched simulation. Stops when an accepted step changes the objective by less than
  ``ftol`` (relative) or the coordinates by less than ``xtol``. Several starts (the base
  values, then prior draws, :func:`~.space.start_points`) run side by side; the spread of
  their optima shows non-identifiability. An inferred noise sd ``σ``
  (``NeuronModel(sigma=<prior>)``) alternates with LM: LM on the other parameters at a fixed
  ``σ``, then ``σ`` ← its mode given the residuals (``σ² ≈ SSR/N``, moved by its prior), a
  few times (:func:`~._noise.lm_fit_sigma`); designs are then fitted one after another.

Every start of every design is an independent problem in one batch, so fitting the paper's 9
designs costs one batched simulation per iteration, not nine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.inference._lm import lm_fit
from bayesneuron.inference._noise import describe, lm_fit_sigma
from bayesneuron.inference._paper_protocol import paper_fit
from bayesneuron.inference._stack import Stack, fingerprint
from bayesneuron.inference.model import NeuronModel
from bayesneuron.inference.space import start_points

__all__ = ["MapFit", "fit_map", "fit_map_designs", "start_points"]

PROTOCOLS = ("paper", "bayesneuron")


@dataclass
class MapFit:
    """The result of :func:`fit_map` for one design.

    Attributes:
        protocol: ``"paper"`` or ``"bayesneuron"``.
        design: the design's label, e.g. ``"all|[0,-1]"``.
        params: the best start's optimum, name → ``[comp]`` (an inferred ``"sigma"``: a
            0-d array, mV, so ``laplace_map(model, v, fit.params)`` starts from it too).
        starts: every start's optimum, name → ``[start, comp]`` (``"sigma"`` ``[start]``).
        objective: each start's final objective ``[start]`` (the paper's loss in mV², or the
            negative log posterior up to a constant).
        mse: each start's final mean squared error over recorded entries ``[start]`` (mV²).
        history: per iteration ``i = 0 … steps`` (0 = the start; Levenberg–Marquardt adds one
            entry per stage start): ``"objective"`` (the stage's) and ``"mse"`` (always the plain
            simulation's) ``[i, start]``, ``"stage"`` (Levenberg–Marquardt), each parameter
            ``[i, start, comp]``, and with a ground truth
            ``"gte_<name>"`` ``[i, start]`` (mean |g − g_true| over compartments).
        steps: iterations taken (Adam steps or accepted/rejected LM iterations).
        converged: per start, whether the stopping rule (not the step limit) ended it.
        best: index of the best start.
        truth: the ground truth, if given.
        wall_s: wall-clock seconds of the whole (batched) fit; ``n_simulations`` parameter sets
            simulated in it.
    """

    protocol: str
    design: str
    free: tuple[str, ...]
    params: dict[str, np.ndarray]
    starts: dict[str, np.ndarray]
    objective: np.ndarray
    mse: np.ndarray
    history: dict[str, np.ndarray]
    steps: int
    converged: np.ndarray
    best: int
    truth: dict[str, np.ndarray] | None = None
    wall_s: float = 0.0
    n_simulations: int = 0
    settings: dict = field(default_factory=dict)

    @property
    def draws(self) -> dict[str, np.ndarray]:
        """The MAP as one draw, name → ``[1, comp]`` (``"sigma"`` ``[1]``; the results'
        common protocol: every method's ``draws`` are name → ``[draw, …]``)."""
        return {k: v[None] for k, v in self.params.items()}

    @property
    def diagnostics(self) -> dict:
        """Scalar summaries of the fit: the best start's ``objective`` and ``mse``, ``steps``,
        ``n_converged`` of ``n_starts``, ``n_simulations``, ``wall_s`` (and the MAP's
        ``sigma`` in mV when inferred)."""
        extra = {"sigma": float(self.params["sigma"])} if "sigma" in self.params else {}
        return extra | {
            "objective": float(self.objective[self.best]),
            "mse": float(self.mse[self.best]),
            "steps": int(self.steps),
            "n_converged": int(np.sum(self.converged)),
            "n_starts": int(len(self.objective)),
            "n_simulations": int(self.n_simulations),
            "wall_s": float(self.wall_s),
        }

    def gte(self, start: int | None = None) -> dict[str, float]:
        """Ground-truth error per parameter: mean over compartments of |g − g_true|."""
        if self.truth is None:
            raise FitError("this fit has no ground truth (pass truth= to fit_map)")
        s = self.best if start is None else start
        return {k: float(np.mean(np.abs(self.starts[k][s] - self.truth[k]))) for k in self.free}

    def modes(
        self, max_modes: int = 4, within: float = np.inf, rel: float = 1e-2
    ) -> list[dict[str, np.ndarray]]:
        """The distinct optima, best first, name → ``[comp]`` (``"sigma"`` ``[]``): starts
        with a finite objective within ``within`` of the best whose values differ from every
        better kept one's by more than ``rel`` (relative) somewhere; at most ``max_modes``."""
        order = [s for s in np.argsort(self.objective) if np.isfinite(self.objective[s])]
        kept: list[int] = []
        for s in order:
            if len(kept) == max_modes or self.objective[s] > self.objective[order[0]] + within:
                break
            if all(
                max(np.max(np.abs(v[s] / v[m] - 1)) for v in self.starts.values()) > rel
                for m in kept
            ):
                kept.append(s)
        return [{k: np.asarray(v[s]) for k, v in self.starts.items()} for s in kept]

    def spread(self, rel_tol: float = 1e-3) -> dict[str, np.ndarray]:
        """Per-compartment sd of the optima over the starts whose objective is within
        ``rel_tol`` (relative) of the best: equally good but different optima mean the data do
        not pin the parameter down."""
        good = self.objective <= self.objective[self.best] + rel_tol * max(
            abs(self.objective[self.best]), 1e-12
        )
        return {k: self.starts[k][good].std(axis=0) for k in self.free}

    def to_dict(self) -> dict:
        out = {
            "protocol": self.protocol,
            "design": self.design,
            "free": list(self.free),
            "params": {k: v.tolist() for k, v in self.params.items()},
            "starts": {k: v.tolist() for k, v in self.starts.items()},
            "objective": self.objective.tolist(),
            "mse": self.mse.tolist(),
            "steps": self.steps,
            "converged": self.converged.tolist(),
            "best": self.best,
            "wall_s": self.wall_s,
            "n_simulations": self.n_simulations,
            "settings": self.settings,
        }
        if self.truth is not None:
            out["truth"] = {k: v.tolist() for k, v in self.truth.items()}
            out["gte"] = self.gte()
        return out


# =========================================================================== public API
def fit_map(
    model: NeuronModel,
    v_obs,
    *,
    protocol: str = "bayesneuron",
    truth: Mapping[str, Sequence[float]] | None = None,
    **kwargs,
) -> MapFit:
    """Fit one model to its data; see :func:`fit_map_designs` for the arguments.

    Example:
        >>> fit = fit_map(model, v_obs, truth=gt)        # doctest: +SKIP
        >>> fit.params["g_na"], fit.gte()                # doctest: +SKIP
    """
    return fit_map_designs([model], [v_obs], protocol=protocol, truth=truth, **kwargs)[0]


def fit_map_designs(
    models: Sequence[NeuronModel],
    data: Sequence,
    *,
    protocol: str = "bayesneuron",
    truth: Mapping[str, Sequence[float]] | None = None,
    n_starts: int | None = None,
    max_steps: int | None = None,
    lr: float = 0.5,
    ftol: float = 1e-10,
    xtol: float = 1e-9,
    fd_step: float = 1e-6,
    jacobian: str = "exact",
    horizons: Sequence[int] | None = None,
    windows: Sequence[int] = (),
    seed: int = 0,
    init: Mapping[str, Sequence] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
    progress: bool = True,
) -> list[MapFit]:
    """MAP fits of several designs of the same cell, side by side in one batch.

    Args:
        models: one :class:`NeuronModel` per design (same cell, free parameters, times, solver).
        data: observed voltages per model, each ``model.obs_shape`` = ``[trace, n_rec, time]``.
        protocol: ``"bayesneuron"`` (Levenberg–Marquardt MAP) or ``"paper"`` (Adam as the paper).
        truth: ground-truth values name → ``[comp]``, for GTE histories.
        n_starts: starts per design (default 4 for ``bayesneuron``: the base values, then prior
            draws; 1 for ``paper``, at the base values).
        max_steps: iteration limit (default 200 for ``paper``, 50 for ``bayesneuron``).
        lr: Adam's learning rate (``paper``).
        ftol, xtol: stopping tolerances (``bayesneuron``): relative objective change and
            largest change of an unconstrained coordinate in an accepted step.
        fd_step: forward-difference step in unconstrained coordinates (``bayesneuron``).
        jacobian: ``"exact"`` — forward sensitivities of the fused kernel where it applies
            (CPU, float64, free conductances), forward differences elsewhere; ``"fd"`` —
            forward differences always.
        horizons: continuation by multiple shooting (``bayesneuron``): first fit predictions
            that restart from the recorded voltages every ``horizons[0]`` output times, then
            every ``horizons[1]``, …, and finally the plain simulation (the real objective),
            each stage to convergence (``max_steps`` iterations at most per stage; tolerances
            of at least 1e-4 before the last). Short horizons have no spike-time errors to
            accumulate and far fewer local minima. Default ``(1, 4, 16)``; ``()`` fits the
            plain objective only.
        windows: then continuation over time windows: the first ``windows[0]`` output times
            only, …, then all (e.g. ``range(8, 48, 4)``; guides unrecorded compartments too,
            which the horizons cannot: :mod:`._lm`). Windows ≥ the data's length are skipped.
        seed: seeds the prior draws of the starts (a private generator: global RNGs untouched).
        init: starting values name → ``[start, comp]`` (or ``[comp]`` for every start),
            instead of the base values and prior draws.
        checkpoint: file to save the fit's state to every ``checkpoint_every`` iterations;
            with ``resume=True`` an existing checkpoint of the same fit is continued.
        progress: show a progress bar (``False``: silent).

    Returns:
        One :class:`MapFit` per model, in order.
    """
    if (fits := _one_by_one(dict(locals()))) is not None:  # checks protocol; inferred σ
        return fits
    stack = Stack(models, data)
    m0 = stack.m0
    if resume and checkpoint is None:
        raise FitError("resume=True continues a checkpoint: give checkpoint=<file> as well")
    numbers = dict(lr=lr, ftol=ftol, xtol=xtol, fd_step=fd_step, seed=seed)
    stages = (horizons, windows)
    settings, init = _settings(m0, protocol, n_starts, max_steps, jacobian, stages, init, numbers)
    n_starts, max_steps = settings["n_starts"], settings["max_steps"]
    tru = None if truth is None else _truth(m0, truth)
    fp = fingerprint(stack, protocol, settings)
    ck, state = _checkpoint(checkpoint, resume, fp)
    runner = paper_fit if protocol == "paper" else lm_fit if m0.sigma is not None else lm_fit_sigma
    t0 = time.perf_counter()
    out = runner(
        stack, n_starts, max_steps, settings, state, ck, checkpoint_every, fp, progress, init
    )
    wall = time.perf_counter() - t0 + (state or {}).get("wall_s", 0.0)
    return _results(stack, out, protocol, tru, wall, settings)


def _one_by_one(kw: dict) -> list[MapFit] | None:
    """Several designs whose ``σ`` is inferred (``kw``: :func:`fit_map_designs`'s
    arguments), fitted one after another, as each design has its own ``σ``; a checkpoint
    ``fit.pt`` becomes ``fit.design<d>.pt`` per design. None where that does not apply.
    Checks the protocol first."""
    if kw["protocol"] not in PROTOCOLS:
        raise FitError(f"protocol {kw['protocol']!r} unknown; use one of {PROTOCOLS}")
    models, data, ck = kw.pop("models"), kw.pop("data"), kw.pop("checkpoint")
    inferred = [getattr(m, "sigma", 1.0) is None for m in models]
    if kw["protocol"] != "bayesneuron" or len(models) < 2 or not any(inferred):
        return None
    if not all(inferred):
        raise FitError(
            "models fitted together must all fix sigma or all infer it; fit them separately"
        )
    fits = []
    for d, (m, v) in enumerate(zip(models, data)):
        path = (
            None
            if ck is None
            else Path(ck).with_name(f"{Path(ck).stem}.design{d}{Path(ck).suffix}")
        )
        fits += fit_map_designs([m], [v], checkpoint=path, **kw)
    return fits


# =========================================================================== checks
def _settings(m0, protocol, n_starts, max_steps, jacobian, stages, init, numbers: dict):
    """The fit's settings (checked, as recorded in every :class:`MapFit`) and the starts
    ``init`` as tensors ``[n_starts, comp]`` (or None)."""
    n_starts, max_steps = _counts(protocol, n_starts, max_steps)
    settings = dict(
        protocol=protocol,
        n_starts=n_starts,
        max_steps=max_steps,
        **{k: numbers[k] for k in ("lr", "ftol", "xtol", "fd_step")},
        jacobian=jacobian,
        seed=numbers["seed"],
        solver=repr(m0.solver),
    )
    settings.update(_horizons(protocol, jacobian, *stages))
    if protocol == "bayesneuron" and m0.sigma is None:
        settings["sigma_prior"] = describe(m0.sigma_prior)
    if init is not None:
        init = _init(m0, init, n_starts)
        if protocol == "bayesneuron":
            _check_init_support(m0, init)
        settings["init"] = {k: v.tolist() for k, v in init.items()}
    return settings, init


def _counts(protocol: str, n_starts, max_steps) -> tuple[int, int]:
    n_starts = (4 if protocol == "bayesneuron" else 1) if n_starts is None else n_starts
    max_steps = (200 if protocol == "paper" else 50) if max_steps is None else max_steps
    if not all(
        isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1
        for x in (n_starts, max_steps)
    ):
        raise FitError(f"n_starts = {n_starts!r} and max_steps = {max_steps!r} must be ints ≥ 1")
    return int(n_starts), int(max_steps)


def _horizons(protocol: str, jacobian: str, horizons, windows) -> dict:
    if jacobian not in ("exact", "fd"):
        raise FitError(f"jacobian = {jacobian!r}; use 'exact' or 'fd'")
    if protocol != "bayesneuron":
        if horizons or windows:
            raise FitError(
                f"{'horizons' if horizons else 'windows'} apply to protocol='bayesneuron' only"
            )
        return {}
    horizons = (1, 4, 16) if horizons is None else tuple(horizons)
    windows = tuple(windows)
    if not all(isinstance(x, (int, np.integer)) and x >= 1 for x in horizons):
        raise FitError(f"horizons = {horizons!r} must be ints ≥ 1 (output intervals)")
    if not all(isinstance(x, (int, np.integer)) and x >= 1 for x in windows) or list(
        windows
    ) != sorted(set(windows)):
        raise FitError(f"windows = {windows!r} must be increasing ints ≥ 1 (output times)")
    out = {"horizons": [int(x) for x in horizons]}
    if windows:  # absent when unused: earlier fits' settings and checkpoints stay valid
        out["windows"] = [int(x) for x in windows]
    return out


def _checkpoint(checkpoint, resume: bool, fp: str) -> tuple[Path | None, dict | None]:
    """The checkpoint file (parent folder created) and, to resume, its saved state."""
    if checkpoint is None:
        return None, None
    ck = Path(checkpoint)
    ck.parent.mkdir(parents=True, exist_ok=True)
    if not (resume and ck.exists()):
        return ck, None
    state = torch.load(ck, weights_only=False)
    if state.get("fingerprint") != fp:
        raise FitError(
            f"checkpoint {ck} belongs to a different fit (other data, designs or settings); "
            "delete it or drop --resume"
        )
    return ck, state


def _truth(m0: NeuronModel, truth: Mapping) -> dict[str, np.ndarray]:
    out = {}
    for k in m0.free:
        if k not in truth:
            raise FitError(f"truth lacks {k!r}; give every free parameter {list(m0.free)}")
        try:
            v = np.asarray(truth[k], dtype=np.float64)
        except (TypeError, ValueError):
            raise FitError(f"truth[{k!r}] = {truth[k]!r} is not numeric") from None
        n = m0.sizes[k]
        if v.size != n or not np.all(np.isfinite(v)):
            per = m0.parametrisation.site(k).dim.replace("_region", " region")
            raise FitError(
                f"truth[{k!r}] must be finite with one value per {per} [{n}], got shape {v.shape}"
            )
        out[k] = v.reshape(n)
    return out


def _check_init_support(m0: NeuronModel, init: Mapping[str, Tensor]) -> None:
    # Levenberg–Marquardt works in the coordinates of ParameterSpace: a start outside the
    # prior's support has zero posterior density and no finite coordinates to start from.
    for k, v in init.items():
        d = m0.priors[k]
        ok = torch.isfinite(v) & (v > 0 if d is None else d.support.check(v))
        if not bool(ok.all()):
            where = "> 0" if d is None else f"inside the support of its prior {d}"
            bad = v[~ok][0].item()
            raise FitError(
                f"init[{k!r}] has a value {bad} outside the allowed range: starts must be {where}"
            )


def _init(m0: NeuronModel, init: Mapping, n_starts: int) -> dict[str, Tensor]:
    out = {}
    for k in m0.free:
        if k not in init:
            raise FitError(f"init lacks {k!r}; give every free parameter {list(m0.free)}")
        try:
            v = torch.as_tensor(np.asarray(init[k], dtype=np.float64), dtype=m0.dtype)
        except (TypeError, ValueError):
            raise FitError(f"init[{k!r}] = {init[k]!r} is not numeric") from None
        n = m0.sizes[k]
        if v.shape == (n,):
            v = v.expand(n_starts, n)
        v = v.to(m0.device)
        if tuple(v.shape) != (n_starts, n) or not bool(torch.isfinite(v).all()):
            raise FitError(
                f"init[{k!r}] must be finite with shape [{n}] or [{n_starts}, "
                f"{n}] (n_starts × values), got {tuple(v.shape)}"
            )
        out[k] = v.clone()
    return out


def _results(stack, out, protocol, tru, wall, settings) -> list[MapFit]:
    D, S = len(stack.models), out["n_starts"]
    m0 = stack.m0
    hist = {
        k: torch.stack(v).reshape(len(v), S, D, *v[0].shape[1:]).cpu().numpy()
        for k, v in out["hist"].items()
    }  # [i, start, design, ...]
    fits = []
    for d, m in enumerate(stack.models):
        h = {k: v[:, :, d] for k, v in hist.items()}
        if tru is not None:
            for k in m0.free:
                h[f"gte_{k}"] = np.abs(h[k] - tru[k]).mean(-1)
        obj = h["objective"][-1]
        best = int(np.nanargmin(obj))
        starts = {k: h[k][-1] for k in (*m0.free, "sigma") if k in h}
        fits.append(
            MapFit(
                protocol=protocol,
                design=m.design.label,
                free=m0.free,
                params={k: v[best] for k, v in starts.items()},
                starts=starts,
                objective=obj,
                mse=h["mse"][-1],
                history=h,
                steps=out["steps"],
                converged=out["converged"].reshape(S, D)[:, d].numpy(),
                best=best,
                truth=tru,
                wall_s=wall,
                n_simulations=out["n_sim"],
                settings=settings,
            )
        )
    return fits
