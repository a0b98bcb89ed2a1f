"""Maximum a posteriori fits of a :class:`NeuronModel`, one design or many at once.

Two protocols:

* ``"paper"`` — Jones & Kording's exactly (``paper-model.md`` §5): Adam, lr 0.5, full batch,
  200 steps, start at the cell's base values, raw conductances (no constraint, no prior, no σ),
  the paper's loss ``Σ_rec (v̂ − v)² / (trace · n_comp · time)``.
* ``"bayesneuron"`` — the MAP: minimise ``½ Σ ((v̂ − v)/σ)² − log p(g)`` over unconstrained
  coordinates (``log g`` for positive priors or no prior, the logit of the interval for uniform
  priors) by Levenberg–Marquardt. The Jacobian is exact where the fused kernel runs (forward
  sensitivities, :func:`~bayesneuron.simulate.sensitivities`), else forward differences taken
  as one batched simulation (the parameter perturbations are a sample dimension); the prior's
  gradient and curvature come from autograd; four damping values are tried per iteration in one batched
  simulation. Stops when an accepted step changes the objective by less than ``ftol``
  (relative) or the coordinates by less than ``xtol``. Several starts (the base values, then
  prior draws) run side by side; the spread of their optima shows non-identifiability.

Every start of every design is an independent problem in one batch, so fitting the paper's 9
designs costs one batched simulation per iteration, not nine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import biject_to, constraints

from bayesneuron.errors import FitError
from bayesneuron.inference.model import NeuronModel
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.simulation.api import Reset, sensitivities, simulate

__all__ = ["MapFit", "fit_map", "fit_map_designs", "start_points"]

PROTOCOLS = ("paper", "bayesneuron")
_DAMPING = (0.1, 1.0, 10.0, 100.0)  # multiples of the current damping tried each iteration


@dataclass
class MapFit:
    """The result of :func:`fit_map` for one design.

    Attributes:
        protocol: ``"paper"`` or ``"bayesneuron"``.
        design: the design's label, e.g. ``"all|[0,-1]"``.
        params: the best start's optimum, name → ``[comp]``.
        starts: every start's optimum, name → ``[start, comp]``.
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

    def gte(self, start: int | None = None) -> dict[str, float]:
        """Ground-truth error per parameter: mean over compartments of |g − g_true|."""
        if self.truth is None:
            raise FitError("this fit has no ground truth (pass truth= to fit_map)")
        s = self.best if start is None else start
        return {k: float(np.mean(np.abs(self.starts[k][s] - self.truth[k]))) for k in self.free}

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


# =========================================================================== the stack
class _Stack:
    """Several designs of one cell as one batch: problem ``q`` is (start, design)."""

    def __init__(self, models: Sequence[NeuronModel], data: Sequence):
        if not models:
            raise FitError("no models to fit")
        if len(models) != len(data):
            raise FitError(f"{len(models)} models but {len(data)} data sets")
        for m in models:
            if not isinstance(m, NeuronModel):
                raise FitError(
                    f"fit_map fits a bayesneuron.NeuronModel, got {type(m).__name__}; build one "
                    "with NeuronModel(cell, stimulus, t_eval, design) or paper_experiment(...)"
                )
        m0 = models[0]
        for m in models[1:]:
            same = (
                _same_cell(m.cell, m0.cell)
                and m.free == m0.free
                and np.array_equal(m.t_eval, m0.t_eval)
                and m.solver == m0.solver
                and m.dtype == m0.dtype
                and m.device == m0.device
                and m.stimulus.values.shape == m0.stimulus.values.shape
                and (m.stimulus.dt, m.stimulus.t0) == (m0.stimulus.dt, m0.stimulus.t0)
            )
            if not same:
                raise FitError(
                    "models fitted together must share the cell, free parameters, times, "
                    "solver, dtype, device and stimulus shape; fit them separately"
                )
        self.models, self.m0 = list(models), m0
        dt, dev = m0.dtype, m0.device
        n_trace, n_comp, n_time = m0.n_trace, m0.n_comp, m0.t_eval.size
        self.values = torch.stack([m.stimulus.values.to(dev, dt) for m in models])
        self.obs = torch.zeros(len(models), n_trace, n_comp, n_time, dtype=dt, device=dev)
        self.mask = torch.zeros(len(models), n_comp, dtype=dt, device=dev)
        for d, (m, v) in enumerate(zip(models, data)):
            rec = list(m.rec_index)
            self.obs[d, :, rec] = m.check_data(v)
            self.mask[d, rec] = 1.0
        self.n_obs = self.mask.sum(-1) * n_trace * n_time  # recorded entries per design

    def _inputs(self, didx: Tensor, horizon) -> tuple[Stimulus, Reset | None]:
        """The stimulus of designs ``didx`` and, with a ``horizon``, the reset to their data."""
        m = self.m0
        stim = Stimulus(self.values[didx], m.stimulus.dt, m.stimulus.t0, m.stimulus.unit)
        if horizon is None:
            return stim, None
        data = torch.where(self.mask[didx][:, None, :, None] > 0, self.obs[didx], math.nan)
        return stim, Reset(data, int(horizon))

    def simulate(self, params: Mapping[str, Tensor], didx: Tensor, horizon=None) -> Tensor:
        """``params[name]`` ``[..., Q, comp]`` for designs ``didx`` ``[Q]`` →
        masked errors ``v̂ − v`` ``[..., Q, trace, comp, time]`` (0 where unrecorded).
        ``horizon``: restart recorded voltages from the data every ``horizon`` outputs."""
        m = self.m0
        stim, reset = self._inputs(didx, horizon)
        v = simulate(
            m.cell,
            dict(params),
            stim,
            m.t_eval,
            m.solver,
            dtype=m.dtype,
            device=m.device,
            reset=reset,
        ).v
        return (v - self.obs[didx]) * self.mask[didx][:, None, :, None]

    def jacobian(self, params: Mapping[str, Tensor], didx: Tensor, horizon=None):
        """Masked errors ``[Q, trace, comp, time]`` and their exact sensitivities to the free
        conductances ``[Q, trace, P, comp, time]`` (fused kernel; ``params`` ``[Q, comp]``)."""
        m = self.m0
        stim, reset = self._inputs(didx, horizon)
        v, jac = sensitivities(
            m.cell, dict(params), stim, m.t_eval, m.solver, wrt=m.free, reset=reset
        )
        mask = self.mask[didx][:, None, :, None]
        return (v - self.obs[didx]) * mask, jac * mask[:, :, None]


def _same_cell(a, b) -> bool:
    if a is b:
        return True
    ma, mb = a.morphology, b.morphology
    return (
        ma.names == mb.names
        and all(
            np.array_equal(getattr(ma, k), getattr(mb, k))
            for k in ("parents", "axial", "area", "cm")
        )
        and a.channels == b.channels
        and a.v0 == b.v0
        and a.params.keys() == b.params.keys()
        and all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    )


def _fingerprint(stack: _Stack, protocol: str, settings: dict) -> str:
    m = stack.m0
    key = json.dumps(
        {
            "protocol": protocol,
            "designs": [x.design.label for x in stack.models],
            "free": m.free,
            "shape": list(stack.obs.shape),
            "settings": {k: v for k, v in settings.items() if k != "max_steps"},
            "checkpoint_format": 2,  # 2: the optimiser state of _Adam
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(
        key.encode() + stack.obs.cpu().numpy().tobytes() + stack.values.cpu().numpy().tobytes()
    ).hexdigest()[:16]


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint


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
    seed: int = 0,
    init: Mapping[str, Sequence] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
    progress: bool = False,
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
        jacobian: ``"exact"`` — forward sensitivities of the fused kernel
            (:func:`~bayesneuron.simulate.sensitivities`) where it applies (CPU, float64,
            fused backend, free conductances), forward differences elsewhere; ``"fd"``
            — forward differences always.
        horizons: continuation by multiple shooting (``bayesneuron``): first fit predictions
            that restart from the recorded voltages every ``horizons[0]`` output times, then
            every ``horizons[1]``, …, and finally the plain simulation (the real objective),
            each stage to convergence (``max_steps`` iterations at most per stage; tolerances
            of at least 1e-4 before the last). Short
            horizons have no spike-time errors to accumulate and far fewer local minima.
            Default ``(1, 4, 16)``; ``()`` fits the plain objective only.
        seed: seeds the prior draws of the starts.
        init: starting values name → ``[start, comp]`` (or ``[comp]`` for every start),
            instead of the base values and prior draws.
        checkpoint: file to save the fit's state to every ``checkpoint_every`` iterations;
            with ``resume=True`` an existing checkpoint of the same fit is continued.
        progress: show a progress bar.

    Returns:
        One :class:`MapFit` per model, in order.
    """
    if protocol not in PROTOCOLS:
        raise FitError(f"protocol {protocol!r} unknown; use one of {PROTOCOLS}")
    stack = _Stack(models, data)
    m0 = stack.m0
    n_starts = (4 if protocol == "bayesneuron" else 1) if n_starts is None else n_starts
    max_steps = (200 if protocol == "paper" else 50) if max_steps is None else max_steps
    if not all(
        isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1
        for x in (n_starts, max_steps)
    ):
        raise FitError(f"n_starts = {n_starts!r} and max_steps = {max_steps!r} must be ints ≥ 1")
    n_starts, max_steps = int(n_starts), int(max_steps)
    if resume and checkpoint is None:
        raise FitError("resume=True continues a checkpoint: give checkpoint=<file> as well")
    if protocol == "bayesneuron" and m0.sigma is None:
        raise FitError(
            "fit_map needs a fixed observation noise: build the model with sigma=<mV> (an "
            "inferred sigma is for fit_svi / NUTS)"
        )
    tru = None if truth is None else _truth(m0, truth)
    settings = dict(
        protocol=protocol,
        n_starts=n_starts,
        max_steps=max_steps,
        lr=lr,
        ftol=ftol,
        xtol=xtol,
        fd_step=fd_step,
        jacobian=jacobian,
        seed=seed,
        solver=repr(m0.solver),
    )
    if jacobian not in ("exact", "fd"):
        raise FitError(f"jacobian = {jacobian!r}; use 'exact' or 'fd'")
    if protocol == "bayesneuron":
        horizons = (1, 4, 16) if horizons is None else tuple(horizons)
        if not all(isinstance(x, (int, np.integer)) and x >= 1 for x in horizons):
            raise FitError(f"horizons = {horizons!r} must be ints ≥ 1 (output intervals)")
        settings["horizons"] = [int(x) for x in horizons]
    elif horizons:
        raise FitError("horizons apply to protocol='bayesneuron' only")
    if init is not None:
        init = _init(m0, init, n_starts)
        if protocol == "bayesneuron":
            _check_init_support(m0, init)
        settings["init"] = {k: v.tolist() for k, v in init.items()}
    ck = None
    if checkpoint is not None:
        ck = Path(checkpoint)
        ck.parent.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(stack, protocol, settings)
    state = None
    if ck is not None and resume and ck.exists():
        state = torch.load(ck, weights_only=False)
        if state.get("fingerprint") != fp:
            raise FitError(
                f"checkpoint {ck} belongs to a different fit (other data, designs or settings); "
                "delete it or drop --resume"
            )
    runner = _paper_fit if protocol == "paper" else _lm_fit
    t0 = time.perf_counter()
    out = runner(
        stack, n_starts, max_steps, settings, state, ck, checkpoint_every, fp, progress, init
    )
    wall = time.perf_counter() - t0 + (state or {}).get("wall_s", 0.0)
    return _results(stack, out, protocol, tru, wall, settings)


# =========================================================================== the paper
def _truth(m0: NeuronModel, truth: Mapping) -> dict[str, np.ndarray]:
    out = {}
    for k in m0.free:
        if k not in truth:
            raise FitError(f"truth lacks {k!r}; give every free parameter {list(m0.free)}")
        try:
            v = np.asarray(truth[k], dtype=np.float64)
        except (TypeError, ValueError):
            raise FitError(f"truth[{k!r}] = {truth[k]!r} is not numeric") from None
        if v.size != m0.n_comp or not np.all(np.isfinite(v)):
            raise FitError(
                f"truth[{k!r}] must be finite with one value per compartment [{m0.n_comp}], "
                f"got shape {v.shape}"
            )
        out[k] = v.reshape(m0.n_comp)
    return out


def _check_init_support(m0: NeuronModel, init: Mapping[str, Tensor]) -> None:
    # Levenberg–Marquardt works in log g (or the prior's own coordinates): a start outside the
    # prior's support has zero posterior density and no finite coordinates to start from.
    for k, v in init.items():
        d = m0.priors[k]
        ok = v > 0 if d is None or _nonnegative(d.support) else torch.isfinite(v)
        if d is not None:
            ok = ok & d.support.check(v)
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
        if v.shape == (m0.n_comp,):
            v = v.expand(n_starts, m0.n_comp)
        v = v.to(m0.device)
        if tuple(v.shape) != (n_starts, m0.n_comp) or not bool(torch.isfinite(v).all()):
            raise FitError(
                f"init[{k!r}] must be finite with shape [{m0.n_comp}] or [{n_starts}, "
                f"{m0.n_comp}] (n_starts × comp), got {tuple(v.shape)}"
            )
        out[k] = v.clone()
    return out


class _Adam:
    """``torch.optim.Adam``'s update with its defaults (betas 0.9, 0.999; eps 1e-8), written
    out: the same iterates, bit for bit (tested), without the ``torch._dynamo`` import that
    ``torch.optim`` makes (≈ 1.3 s at import and ≈ 1 s at interpreter exit)."""

    def __init__(self, params: list[Tensor], lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.step_count = 0
        self.m = [torch.zeros_like(p) for p in params]  # first moment
        self.v = [torch.zeros_like(p) for p in params]  # second moment

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        lr = self.lr / (1 - b1**self.step_count)
        bc2_sqrt = (1 - b2**self.step_count) ** 0.5
        for p, m, v in zip(self.params, self.m, self.v):
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / bc2_sqrt).add_(self.eps), value=-lr)

    def state_dict(self) -> dict:
        return {
            "step": self.step_count,
            "m": [x.clone() for x in self.m],
            "v": [x.clone() for x in self.v],
        }

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step"]
        for mine, saved in zip(self.m + self.v, state["m"] + state["v"]):
            mine.copy_(saved)


def _paper_fit(stack, n_starts, max_steps, settings, state, ck, every, fp, progress, init):
    m0, D = stack.m0, len(stack.models)
    Q = n_starts * D
    didx = torch.arange(D, device=m0.device).repeat(n_starts)  # q = start · D + design
    start = init or {k: m0.base[k].expand(n_starts, m0.n_comp) for k in m0.free}
    g = {k: start[k].repeat_interleave(D, dim=0).clone().requires_grad_() for k in m0.free}
    opt = _Adam(list(g.values()), lr=settings["lr"])
    hist = {"objective": [], "mse": [], **{k: [g[k].detach().clone()] for k in m0.free}}
    step0 = 0
    if state is not None:
        with torch.no_grad():
            for k in m0.free:
                g[k].copy_(state["params"][k])
        opt.load_state_dict(state["optimizer"])
        hist, step0 = state["history"], state["step"]
    denom = m0.n_trace * m0.n_comp * m0.t_eval.size
    n_sim = 0
    bar = _bar(max_steps, step0, progress, "paper protocol")
    for step in range(step0, max_steps + 1):
        last = step == max_steps
        with torch.set_grad_enabled(not last):
            err = stack.simulate(g, didx)
            sq = err.pow(2).sum((-3, -2, -1))  # [Q]
        n_sim += Q
        loss = sq / denom
        if not bool(torch.isfinite(loss).all()):
            raise FitError(
                f"the simulation diverged at Adam step {step} (non-finite loss); the paper's "
                "protocol has no safeguards: use protocol='bayesneuron'"
            )
        hist["objective"].append(loss.detach().clone())
        hist["mse"].append((sq / stack.n_obs[didx]).detach().clone())
        if last:
            break
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        for k in m0.free:
            hist[k].append(g[k].detach().clone())
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach().min()):.4g}")
        if ck is not None and (step + 1) % every == 0:
            _save(
                ck,
                {
                    "fingerprint": fp,
                    "params": {k: v.detach() for k, v in g.items()},
                    "optimizer": opt.state_dict(),
                    "history": hist,
                    "step": step + 1,
                },
            )
    bar.close()
    return dict(
        hist=hist,
        steps=max_steps,
        converged=torch.zeros(Q, dtype=torch.bool),
        n_sim=n_sim,
        n_starts=n_starts,
    )


# =========================================================================== Levenberg–Marquardt
def _nonnegative(support) -> bool:
    lb = getattr(support, "lower_bound", None)
    if isinstance(lb, Tensor):
        return bool((lb >= 0).all())
    return lb is not None and lb >= 0


def _transforms(m0: NeuronModel) -> dict:
    """Unconstrained → constrained map per free parameter: ``exp`` for positive quantities,
    also under a bounded prior (a logistic map would flatten the objective near the bounds and
    trap the optimiser there; the bounds are enforced by rejecting steps that leave them)."""
    out = {}
    for k, d in m0.priors.items():
        if d is None or _nonnegative(d.support):
            out[k] = biject_to(constraints.positive)
        else:
            out[k] = biject_to(d.support)
    return out


def start_points(m0: NeuronModel, n_starts: int, seed: int) -> dict[str, Tensor]:
    """Start 0 at the base values; the rest drawn from the prior (or LogNormal(base, 0.5))."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k in m0.free:
        base = m0.base[k]
        rows = [base]
        d = m0.priors[k] or dist.LogNormal(base.log(), torch.full_like(base, 0.5))
        for _ in range(n_starts - 1):
            u = d.icdf(torch.rand(base.shape, generator=gen, dtype=base.dtype).to(base.device))
            rows.append(u)
        out[k] = torch.stack(rows)
    return out


def _lm_fit(stack, n_starts, max_steps, settings, state, ck, every, fp, progress, init):
    m0, D = stack.m0, len(stack.models)
    n, free = m0.n_comp, m0.free
    P, Q = n * len(free), n_starts * D
    didx = torch.arange(D, device=m0.device).repeat(n_starts)
    T = _transforms(m0)
    sigma = m0.sigma
    h, ftol, xtol = settings["fd_step"], settings["ftol"], settings["xtol"]
    stages = [*settings["horizons"], None]  # None: the plain simulation, the real objective

    def split(theta: Tensor) -> dict[str, Tensor]:  # [..., P] → name → [..., n] constrained
        return {k: T[k](theta[..., i * n : (i + 1) * n]) for i, k in enumerate(free)}

    def prior_terms(theta: Tensor):  # −log p(g) per problem, its gradient and diagonal Hessian
        theta = theta.detach().requires_grad_()
        g = split(theta)
        phi = torch.zeros(theta.shape[:-1], dtype=theta.dtype, device=theta.device)
        outside = torch.zeros_like(phi, dtype=torch.bool)
        for k in free:
            d = m0.priors[k]
            if d is None:
                continue
            inside = d.support.check(g[k])
            outside = outside | ~inside.all(-1)
            safe = torch.where(inside, g[k], m0.base[k])  # log_prob refuses points outside
            phi = phi + -d.log_prob(safe).sum(-1)
        if bool(outside.any()):  # outside the prior's support: the posterior density is 0
            phi = torch.where(outside, torch.full_like(phi, math.inf), phi)
        if not phi.requires_grad:
            z = torch.zeros_like(theta)
            return phi.detach(), z, z
        (grad,) = torch.autograd.grad(phi.sum(), theta, create_graph=True)
        # a separable prior has a diagonal Hessian: the gradient of the summed gradient
        (hdiag,) = torch.autograd.grad(grad.sum(), theta)
        return phi.detach(), grad.detach(), hdiag.detach()

    def residuals(theta: Tensor, q: Tensor, horizon) -> Tensor:  # [..., |q|, P] → [..., |q|, M]
        # A step can leave the representable range (exp over- or underflow): such points get NaN
        # residuals, i.e. an infinite objective, and are rejected like a diverged simulation.
        g = split(theta)
        bad = torch.zeros(theta.shape[:-1], dtype=torch.bool, device=theta.device)
        for v in g.values():
            bad |= ~torch.isfinite(v).all(-1) | (v.abs() > 1e12).any(-1) | (v == 0).any(-1)
        if bool(bad.any()):
            g = {k: torch.where(bad[..., None], m0.base[k], v) for k, v in g.items()}
        with torch.no_grad():
            err = stack.simulate(g, didx[q], horizon).flatten(-3) / sigma
        return torch.where(bad[..., None], torch.full_like(err, math.nan), err)

    def objective(theta, q, horizon):
        r = residuals(theta, q, horizon)
        f = 0.5 * r.pow(2).sum(-1) + prior_terms(theta)[0]
        return r, torch.where(torch.isfinite(f), f, torch.full_like(f, math.inf))

    if state is None:
        st = init or start_points(m0, n_starts, settings["seed"])
        theta = torch.cat(
            [T[k].inv(st[k]).repeat_interleave(D, dim=0) for k in free], dim=-1
        )  # [Q, P]
        hist = {"objective": [], "mse": [], "stage": [], **{k: [] for k in free}}
        stage0, step0, n_sim, fresh = 0, 0, 0, True
    else:
        theta, hist = state["theta"], state["history"]
        stage0, step0, n_sim, fresh = state["stage"], state["step"], 0, False
    eye = torch.eye(P, dtype=m0.dtype, device=m0.device)
    exact = m0.exact_sensitivities and settings.get("jacobian", "exact") == "exact"
    factors = torch.tensor(_DAMPING, dtype=m0.dtype, device=m0.device)
    total = max_steps * len(stages)

    def record(f, r, stage, horizon):
        # "mse" is always the plain simulation's, so curves compare across stages.
        plain = r if horizon is None else residuals(theta, torch.arange(Q), None)
        _record(hist, f, plain, sigma, split(theta), stack, didx, stage)
        return 0 if horizon is None else Q

    bar = _bar(total, step0, progress, "Levenberg–Marquardt")
    step = step0
    for stage in range(stage0, len(stages)):
        horizon = stages[stage]
        if fresh or stage > stage0:
            r, f = objective(theta, torch.arange(Q), horizon)
            n_sim += Q
            lam = torch.full((Q,), 1e-3, dtype=m0.dtype, device=m0.device)
            done = torch.zeros(Q, dtype=torch.bool, device=m0.device)
            it0 = 0
            n_sim += record(f, r, stage, horizon)
        else:  # resuming inside this stage
            r, f, lam, done, it0 = (state[k] for k in ("r", "f", "lam", "done", "it"))
        for it in range(it0 + 1, max_steps + 1):
            act = torch.nonzero(~done).flatten()
            if act.numel() == 0:
                break
            step += 1
            th = theta[act]
            if exact:  # Jacobian (transposed, [a, P, M]): forward sensitivities, chain rule
                g = split(th)
                _, jac = stack.jacobian(g, didx[act], horizon)
                dg = torch.cat(
                    [
                        T[k].log_abs_det_jacobian(th[:, i * n : (i + 1) * n], g[k]).exp()
                        for i, k in enumerate(free)
                    ],
                    -1,
                )  # [a, P]: dg/dθ of the elementwise transforms
                Jt = jac.movedim(2, 1).flatten(-3) * (dg / sigma)[..., None]
                n_sim += act.numel() * 2  # a stored forward pass and a tangent pass
            else:  # by forward differences: P perturbed copies in one batch
                pert = th[:, None, :] + h * eye  # [a, P, P]
                rp = residuals(pert.transpose(0, 1), act, horizon).transpose(0, 1)
                n_sim += act.numel() * P
                Jt = (rp - r[act][:, None, :]) / h
            _, pg, ph = prior_terms(th)
            grad = torch.einsum("apm,am->ap", Jt, r[act]) + pg
            A = Jt @ Jt.transpose(1, 2) + torch.diag_embed(ph.clamp_min(0.0))
            # Marquardt's scaling, floored so that directions the data do not inform (zero
            # curvature) still get damped steps rather than unbounded ones.
            diag = A.diagonal(dim1=1, dim2=2)
            scale = diag.clamp_min(1e-8 * diag.amax(-1, keepdim=True) + 1e-300)
            lams = lam[act][:, None] * factors  # [a, K]
            lhs = A[:, None] + lams[..., None, None] * torch.diag_embed(scale)[:, None]
            delta = torch.linalg.solve(lhs, -grad[:, None, :].expand(-1, len(factors), -1))
            cand = th[:, None, :] + delta  # [a, K, P]
            rc, fc = objective(cand.transpose(0, 1), act, horizon)
            rc, fc = rc.transpose(0, 1), fc.transpose(0, 1)  # [a, K, M], [a, K]
            n_sim += act.numel() * len(factors)
            best = fc.argmin(-1)
            ar = torch.arange(act.numel())
            f_new = fc[ar, best]
            f_old = f[act].clone()
            ok = f_new < f_old
            theta[act[ok]] = cand[ar, best][ok]
            r[act[ok]] = rc[ar, best][ok]
            f[act[ok]] = f_new[ok]
            lam[act] = torch.where(ok, (lams[ar, best] / 3).clamp_min(1e-15), lams[:, -1] * 10)
            # Converged: the best step changes the objective by at most ftol (either way), or
            # an accepted step moves no coordinate by more than xtol; stalled: damping ran away.
            # Intermediate stages only need to bring the fit near the basin: loose tolerances.
            ft, xt = (ftol, xtol) if horizon is None else (max(ftol, 1e-4), max(xtol, 1e-4))
            tiny = (f_old - f_new).abs() <= ft * f_old.abs().clamp_min(1.0)
            dmax = delta[ar, best].abs().amax(-1)
            conv = tiny | (ok & (dmax <= xt)) | (lam[act] > 1e16)
            done[act[conv]] = True
            n_sim += record(f, r, stage, horizon)
            bar.update(1)
            bar.set_postfix(
                objective=f"{float(f.min()):.4g}", active=int((~done).sum()), stage=stage
            )
            if ck is not None and step % every == 0:
                _save(
                    ck,
                    {
                        "fingerprint": fp,
                        "theta": theta,
                        "lam": lam,
                        "done": done,
                        "history": hist,
                        "f": f,
                        "r": r,
                        "step": step,
                        "stage": stage,
                        "it": it,
                    },
                )
    bar.close()
    return dict(hist=hist, steps=step, converged=done.cpu(), n_sim=n_sim, n_starts=n_starts)


def _record(hist, f, r, sigma, g, stack, didx, stage=None):
    if stage is not None:
        hist["stage"].append(torch.full_like(f, stage))
    hist["objective"].append(f.detach().clone())
    hist["mse"].append((r.pow(2).sum(-1) * sigma**2 / stack.n_obs[didx]).detach().clone())
    for k, v in g.items():
        hist[k].append(v.detach().clone())


def _bar(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, leave=False)


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
        starts = {k: h[k][-1] for k in m0.free}
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
