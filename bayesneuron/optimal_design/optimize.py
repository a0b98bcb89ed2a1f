"""Optimise a stimulus family's parameters for a design criterion: multi-start Adam or
L-BFGS on the unconstrained parameters, a progress bar, checkpoint/resume, fixed seeds
(electrode-site selection over it: :mod:`.sites`).

Constraints: amplitude bounds, trace count, sweep grid and electrode sites are the
family's (:mod:`.families`); ``allowed_sites`` restricts which compartments may carry an
electrode.

Example:
    >>> fam = PiecewiseConstant(n_traces=20, sites=(0, 1, 2, 3, 4, 5), lo=0.0, hi=19.0)
    >>> res = optimize_stimulus(problem, fam, OptimizeConfig(steps=50, n_starts=2))
    >>> res.value, res.nats_per_trace, res.stimulus.values.shape
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.optimal_design.families import StimulusFamily
from bayesneuron.optimal_design.objective import DesignProblem, criterion_values, fisher, objective
from bayesneuron.protocol.stimulus import Stimulus

__all__ = ["DesignResult", "OptimizeConfig", "optimize_stimulus"]

_OPTIMIZERS = ("adam", "lbfgs")


@dataclass(frozen=True)
class OptimizeConfig:
    """How to optimise.

    Args:
        steps: optimiser steps per start (L-BFGS: iterations, each with a line search).
        lr: Adam's learning rate in ``z`` units (L-BFGS: its initial step).
        lr_final: if given, the learning rate decays geometrically from ``lr`` at a start's
            first step to ``lr_final`` at its last (a stochastic objective — ``resample_theta``
            — settles into its optimum instead of hopping around it); ``None``: constant.
        n_starts: starts; start ``k`` is ``init[k]`` where given, else random with
            ``seed + k``.
        seed: base seed of the random starts.
        optimizer: ``"adam"`` or ``"lbfgs"``.
        init_scale: sd of random starts in ``z``.
        theta_chunk: parameter points per simulation (memory); ``None``: all at once.
            Only for ``robust="mean"``.
        resample_theta: draw fresh parameter points from the prior at every step
            (``problem.sampler``, seeded by start and step): stochastic gradient ascent on the
            expected criterion, which does not over-fit the few points of one draw. The best
            point is then chosen among the starts' first and final points on ``problem``'s
            own points, or on ``optimize_stimulus``'s ``select`` points (a start its steps
            made worse there is kept as it was).
        checkpoint: a file to save the state to every ``checkpoint_every`` steps and to
            resume from (only a run with the same problem, family and settings resumes).
        checkpoint_every: steps between checkpoints.
        progress: show a tqdm bar.
    """

    steps: int = 100
    lr: float = 0.1
    lr_final: float | None = None
    n_starts: int = 1
    seed: int = 0
    optimizer: str = "adam"
    init_scale: float = 1.0
    theta_chunk: int | None = None
    resample_theta: bool = False
    checkpoint: str | Path | None = None
    checkpoint_every: int = 10
    progress: bool = True

    def __post_init__(self):
        if self.optimizer not in _OPTIMIZERS:
            raise FitError(f"optimizer = {self.optimizer!r}; choose one of {_OPTIMIZERS}")
        for name in ("steps", "n_starts", "checkpoint_every"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= (0 if name == "steps" else 1)):
                raise FitError(f"{name} = {v!r} must be a positive int")
        for name in ("lr", "lr_final"):
            v = getattr(self, name)
            if (v is not None or name == "lr") and not (isinstance(v, (int, float)) and v > 0):
                raise FitError(f"{name} = {v!r} must be a number > 0")
        if self.theta_chunk is not None and self.theta_chunk < 1:
            raise FitError(f"theta_chunk = {self.theta_chunk} must be ≥ 1 or None")


@dataclass(frozen=True, eq=False)
class DesignResult:
    """An optimised stimulus and how it was found.

    Attributes:
        stimulus: the best stimulus ``[trace, site, bins]`` (sparse at the family's sites).
        z: its unconstrained parameters.
        value: its robust criterion on the problem (nats for ``bayes_d_opt``).
        per_theta: the criterion at each parameter point ``[n]``.
        trace_values: each trace's criterion alone, mean over θ ``[trace]`` (which sweeps
            carry information).
        history: the robust criterion at every evaluated step ``[start, steps + 1]`` (NaN
            where a start stopped early).
        start_values: the best value of each start ``[start]``.
        best_start: the start that gave ``stimulus``.
        best_step: the optimiser steps that start had taken at ``stimulus`` (0: the start
            itself was best, the optimiser found nothing better).
        wall_s: wall time of the optimisation (s).
        select_value: the robust criterion of ``stimulus`` on ``optimize_stimulus``'s
            ``select`` points, on which it was chosen (``None`` without ``select``).
    """

    stimulus: Stimulus
    z: Tensor
    value: float
    per_theta: Tensor
    trace_values: Tensor
    history: np.ndarray
    start_values: np.ndarray
    best_start: int
    best_step: int
    wall_s: float
    family: StimulusFamily
    config: OptimizeConfig
    select_value: float | None = None

    @property
    def score(self) -> float:
        """What results are compared by: ``select_value`` where there is one, else ``value``
        (the optimiser's own points)."""
        return self.value if self.select_value is None else self.select_value

    @property
    def nats_per_trace(self) -> float:
        """``value / n_traces``."""
        return self.value / self.family.n_traces


def _value_and_grad(problem: DesignProblem, family, z: Tensor, chunk: int | None) -> float:
    """The robust criterion at ``z``; its gradient accumulated into ``z.grad`` (ascent
    direction negated: ``z.grad`` is ``−∂value/∂z``)."""
    n = problem.n_theta
    if chunk is None or chunk >= n or problem.robust != "mean":
        value, _ = objective(problem, family(z))
        (-value).backward()
        return float(value.detach())
    total = 0.0
    for lo in range(0, n, chunk):
        idx = torch.arange(lo, min(lo + chunk, n))
        _, per = objective(problem.at(idx), family(z))
        (-per.sum() / n).backward()
        total += float(per.detach().sum()) / n
    return total


def _fingerprint(
    problem: DesignProblem, family: StimulusFamily, cfg: OptimizeConfig, select
) -> str:
    skip = ("progress", "checkpoint", "checkpoint_every")
    skip += ("steps",) if cfg.lr_final is None else ()  # a decay's schedule depends on steps
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    key = json.dumps(
        {
            "family": repr(family),
            "settings": settings,
            "problem": [problem.free, problem.rec, problem.sigma, problem.criterion],
            "more": [problem.robust, problem.targets, repr(problem.solver), problem.tangents],
        },
        sort_keys=True,
        default=str,
    )
    points = problem.flat_theta().numpy().tobytes()
    if select is not None:  # a run choosing on other points is another run
        points += b"select" + select.flat_theta().numpy().tobytes() + repr(select.solver).encode()
    return hashlib.sha256(key.encode() + points).hexdigest()


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint


def _load(path: Path | None, key: str) -> dict | None:
    if path is None or not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    return state if state.get("key") == key else None


def _make_optimizer(cfg: OptimizeConfig, z: Tensor):
    if cfg.optimizer == "adam":
        return torch.optim.Adam([z], lr=cfg.lr)
    return torch.optim.LBFGS([z], lr=cfg.lr, max_iter=1, line_search_fn="strong_wolfe")


def _run_start(problem, family, cfg, state, z0, bar, ckpt, select) -> None:
    """One start from ``z0`` (or its checkpointed state), steps recorded in ``state``; with
    ``resample_theta`` its first and final points are candidates, compared on ``select``."""
    k = state["start"]
    z = (state["z"] if state["z"] is not None else z0).clone().requires_grad_()
    opt = _make_optimizer(cfg, z)
    if state["opt"] is not None:
        opt.load_state_dict(state["opt"])
    hist = state["history"][k]
    at = problem
    if cfg.resample_theta and state["step"] == 0:  # the start is a candidate too
        _consider(select, family, state, z, k)

    def closure():
        opt.zero_grad()
        v = _value_and_grad(at, family, z, cfg.theta_chunk)
        if v > state["best_value"] and not cfg.resample_theta:
            _keep(state, v, z, k)
        return torch.tensor(-v)

    while state["step"] < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = _learning_rate(cfg, state["step"])
        if cfg.resample_theta:
            at = _resampled(problem, cfg.seed, k, state["step"])
        loss = opt.step(closure)
        hist.append(-float(loss))
        state["step"] += 1
        state.update(z=z.detach().clone(), opt=opt.state_dict())
        bar.update(1)
        bar.set_postfix(value=f"{hist[-1]:.3f}", start=k)
        if ckpt is not None and state["step"] % cfg.checkpoint_every == 0:
            _save(ckpt, state)
    hist.append(_consider(select, family, state, z, k))  # the point after the last step


def _consider(problem, family, state, z: Tensor, k: int) -> float:
    """The robust criterion of ``z`` on ``problem``'s points; ``z`` becomes the best point (of
    start ``k``) in ``state`` where it beats it."""
    with torch.no_grad():
        v = float(objective(problem, family(z.detach()))[0])
    if v > state["best_value"]:
        _keep(state, v, z, k)
    return v


def _keep(state, v: float, z: Tensor, k: int) -> None:
    """``z`` (value ``v``, start ``k``, after ``state["step"]`` steps) is the best so far."""
    state.update(best_value=v, best_z=z.detach().clone(), best_start=k, best_step=state["step"])


def _learning_rate(cfg: OptimizeConfig, step: int) -> float:
    """``cfg.lr``, or with ``lr_final`` the geometric decay's rate at ``step``."""
    if cfg.lr_final is None or cfg.steps < 2:
        return cfg.lr
    return cfg.lr * (cfg.lr_final / cfg.lr) ** (step / (cfg.steps - 1))


def _resampled(problem: DesignProblem, seed: int, start: int, step: int) -> DesignProblem:
    if problem.sampler is None:
        raise FitError("resample_theta needs problem.sampler (build it with problem_from_model)")
    seq = np.random.SeedSequence([int(seed), int(start), int(step)])
    return problem.sampler(int(seq.generate_state(1)[0]))


def _initial_z(family, cfg, init, k) -> Tensor:
    if init is not None and k < len(init):
        z = torch.as_tensor(init[k], dtype=torch.float64)
        if tuple(z.shape) != family.shape:
            raise FitError(f"init[{k}] has shape {tuple(z.shape)}; the family takes {family.shape}")
        return z
    return family.init(seed=cfg.seed + k, scale=cfg.init_scale)


def optimize_stimulus(
    problem: DesignProblem,
    family: StimulusFamily,
    config: OptimizeConfig | None = None,
    *,
    init: Sequence[Tensor] | None = None,
    allowed_sites: Sequence[int] | None = None,
    select: DesignProblem | None = None,
) -> DesignResult:
    """Maximise ``problem``'s robust criterion over ``family``'s parameters.

    Args:
        problem: the criterion (:class:`~bayesneuron.optimal_design.objective.DesignProblem`).
        family: the stimulus family (bounds, traces, grid, electrode sites).
        config: optimiser settings (:class:`OptimizeConfig`).
        init: starting parameters for the first starts (e.g. ``family.fit(paper currents)``).
        allowed_sites: compartments that may carry an electrode; ``None``: any.
        select: with ``resample_theta``, the problem (same criterion, other θ points) on
            which the starts' first and final points are compared; ``None``: ``problem``
            itself. Points the optimiser never saw keep the choice from favouring a stimulus
            that happens to suit ``problem``'s few points (history's last entries are then
            on these points).

    Returns:
        The best point over all starts and steps as a :class:`DesignResult` (``value`` on
        ``problem``'s points).

    Raises:
        FitError: sites outside the cell or ``allowed_sites``; ``select`` without
            ``resample_theta``.
    """
    cfg = OptimizeConfig() if config is None else config
    bad = [s for s in family.sites if s >= problem.cell.n_comp]
    if allowed_sites is not None:
        bad += [s for s in family.sites if s not in {int(a) for a in allowed_sites}]
    if bad:
        raise FitError(f"electrode sites {bad} are not allowed (or not in the cell)")
    if select is not None and not cfg.resample_theta:
        raise FitError("select needs resample_theta (without it every step is a candidate)")
    if select is not None and select.criterion != problem.criterion:
        raise FitError(f"select's criterion {select.criterion!r} is not {problem.criterion!r}")
    t0 = time.perf_counter()
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint is not None else None
    key = _fingerprint(problem, family, cfg, select)
    state = _load(ckpt, key) or {
        "key": key,
        "start": 0,
        "step": 0,
        "z": None,
        "opt": None,
        "history": [[] for _ in range(cfg.n_starts)],
        "best_value": -float("inf"),
        "best_z": None,
        "best_start": -1,
        "best_step": -1,
    }
    from tqdm.auto import tqdm

    done = state["start"] * cfg.steps + state["step"]
    total = cfg.n_starts * cfg.steps
    bar = tqdm(total=total, initial=done, desc="design", leave=False, disable=not cfg.progress)
    try:
        while state["start"] < cfg.n_starts:
            z0 = _initial_z(family, cfg, init, state["start"])
            _run_start(problem, family, cfg, state, z0, bar, ckpt, select or problem)
            state.update(start=state["start"] + 1, step=0, z=None, opt=None)
            if ckpt is not None:
                _save(ckpt, state)
    finally:
        bar.close()
    res = _result(problem, family, cfg, state, time.perf_counter() - t0)
    if select is None:
        return res
    return dataclasses.replace(res, select_value=float(state["best_value"]))


def _result(problem, family, cfg, state, wall_s) -> DesignResult:
    z = state["best_z"]
    with torch.no_grad():
        stim = family(z)
        f_trace = fisher(problem, stim)  # [n, trace, P, P]
        per = criterion_values(problem, f_trace.sum(1))
        value = per.mean() if problem.robust == "mean" else per.min()
        trace_values = torch.stack(
            [criterion_values(problem, f_trace[:, t]).mean() for t in range(f_trace.shape[1])]
        )
    width = max(len(h) for h in state["history"])
    history = np.full((cfg.n_starts, width), np.nan)
    for k, h in enumerate(state["history"]):
        history[k, : len(h)] = h
    return DesignResult(
        stimulus=stim,
        z=z,
        value=float(value),
        per_theta=per,
        trace_values=trace_values,
        history=history,
        start_values=np.nanmax(history, axis=1),
        best_start=int(state["best_start"]),
        best_step=int(state.get("best_step", -1)),  # -1: resumed from an older checkpoint
        wall_s=wall_s,
        family=family,
        config=cfg,
    )
