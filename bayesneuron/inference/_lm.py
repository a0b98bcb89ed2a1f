"""The MAP by Levenberg–Marquardt, every (start, design) problem of a :class:`~._stack.Stack`
side by side, in the unconstrained coordinates ``u`` of :class:`~.space.ParameterSpace`.

Objective per problem: ``f(u) = ½ Σ ((v̂(T(u)) − v)/σ)² − log p(T(u))`` (a MAP in ``g``: no
Jacobian term). Per iteration: the Jacobian ``J = ∂r/∂u`` ``[a, M, P]`` (exact forward
sensitivities where the fused kernel runs, else forward differences as one batched
simulation), the prior's gradient and diagonal curvature by autograd, Marquardt-scaled damped
Gauss–Newton steps for four damping values in one batched simulation, the best one accepted if
it lowers ``f``. Continuation stages come first, the plain simulation last: multiple shooting
with restart horizons (the recorded voltages restarted from the data), then time windows (the
first ``n`` output times only, ``n`` growing; every compartment, recorded or not, starts from
the same state as in the plain simulation, so the windows are nested versions of the real
objective whose spike-time errors have had little time to accumulate). The horizons restart
only the recorded compartments: with few recorded sites the others run free over the whole
trace, their spikes early or late as in the plain objective, and the fit stops in local
minima that growing windows avoid (``benchmarks/map_recovery.py`` measures both on the
paper's 25 designs).

Bounded (uniform) priors: the logistic map saturates towards the interval's ends, where the
gradient in ``u`` vanishes and a parameter, once there, could never be moved off again. Their
coordinates are therefore kept within ``|u| ≤ U_LIMIT`` (0.25 % of the interval inside its
ends), and a coordinate on that edge that the descent direction pushes outwards is held for the
step (an active set), so that the others converge rather than creep along the edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from bayesneuron.inference._runtime import progress_bar
from bayesneuron.inference._stack import Stack, save_checkpoint
from bayesneuron.inference.space import ParameterSpace, start_points

__all__ = ["lm_fit"]

DAMPING = (0.1, 1.0, 10.0, 100.0)  # multiples of the current damping tried each iteration
U_LIMIT = 6.0  # largest |u| of a bounded prior's coordinate: 0.25 % of the interval inside


class Stage(NamedTuple):
    """One continuation stage: restart the recorded voltages every ``horizon`` outputs
    (None: never) and compare the first ``n_times`` output times (None: all). The last stage,
    the real objective, is ``Stage(None, None)``."""

    horizon: int | None = None
    n_times: int | None = None

    @property
    def plain(self) -> bool:
        return self.horizon is None and self.n_times is None


def stages_of(horizons, windows, n_times: int) -> list[Stage]:
    """The stages of a fit: the horizons, then the windows shorter than the data's
    ``n_times`` output times, then the plain simulation."""
    out = [Stage(int(h), None) for h in horizons]
    out += [Stage(None, int(w)) for w in windows if w < n_times]
    return [*out, Stage()]


class _Problem:
    """The objective's pieces for every problem ``q`` (problem rows ``didx[q]`` of designs)."""

    def __init__(self, stack: Stack, space: ParameterSpace, didx: Tensor, settings: dict):
        self.stack, self.space, self.didx = stack, space, didx
        self.m0 = stack.m0
        self.sigma = self.m0.sigma
        self.h = settings["fd_step"]
        self.exact = self.m0.tangents_pay and settings.get("jacobian", "exact") == "exact"
        self.bounded = space.bounded

    def held(self, u: Tensor, grad: Tensor) -> Tensor:
        """Bounded coordinates at the edge ``|u| = U_LIMIT`` that the descent direction
        ``−grad`` would push further out: held where they are for this step (an active set),
        so that the others converge rather than creep along the edge."""
        edge = self.bounded & (u.abs() >= U_LIMIT * (1 - 1e-12))
        return edge & (u * grad < 0)

    def prior_terms(self, u: Tensor):
        """``−log p(T(u))`` ``[...]``, its gradient and diagonal Hessian in ``u`` ``[..., P]``
        (a separable prior has a diagonal Hessian)."""
        u = u.detach().requires_grad_()
        phi = -self.space.log_density(self.space.constrain(u)[0])
        zero = torch.zeros_like(u)
        if not phi.requires_grad:
            return phi.detach(), zero, zero
        finite = torch.isfinite(phi)
        (grad,) = torch.autograd.grad(phi.sum(), u, create_graph=True)
        hdiag = zero
        if grad.requires_grad:
            (hdiag,) = torch.autograd.grad(grad.sum(), u, allow_unused=True)
            hdiag = zero if hdiag is None else hdiag
        phi = torch.where(finite, phi, torch.full_like(phi, math.inf))
        return phi.detach(), torch.nan_to_num(grad.detach()), torch.nan_to_num(hdiag.detach())

    def residuals(self, u: Tensor, q: Tensor, stage: Stage) -> Tensor:
        """``[..., |q|, P]`` → scaled errors ``[..., |q|, M]``. A point whose parameters left
        the representable range (``exp`` over- or underflow) gets NaN residuals, i.e. an
        infinite objective, and is rejected like a diverged simulation."""
        g = self.space.constrain(u)[0]
        bad = torch.zeros(u.shape[:-1], dtype=torch.bool, device=u.device)
        for v in g.values():
            bad |= ~torch.isfinite(v).all(-1) | (v.abs() > 1e12).any(-1) | (v == 0).any(-1)
        if bool(bad.any()):
            g = {k: torch.where(bad[..., None], self.m0.base[k], v) for k, v in g.items()}
        with torch.no_grad():
            err = self.stack.simulate(g, self.didx[q], *stage).flatten(-3) / self.sigma
        return torch.where(bad[..., None], torch.full_like(err, math.nan), err)

    def objective(self, u: Tensor, q: Tensor, stage: Stage):
        r = self.residuals(u, q, stage)
        f = 0.5 * r.pow(2).sum(-1) + self.prior_terms(u)[0]
        return r, torch.where(torch.isfinite(f), f, torch.full_like(f, math.inf))

    def jacobian(self, u: Tensor, act: Tensor, r: Tensor, stage: Stage) -> tuple[Tensor, int]:
        """``J = ∂r/∂u`` ``[a, M, P]`` at ``u`` ``[a, P]`` of problems ``act`` (residuals
        ``r`` ``[a, M]``), and the simulations it took."""
        if self.exact:  # forward sensitivities ∂v/∂g [a, trace, P, comp, time], chain rule
            g = self.space.constrain(u)[0]
            _, jac = self.stack.jacobian(g, self.didx[act], *stage)
            Jg = jac.movedim(2, -1).flatten(1, 3)  # [a, M, P], M ordered as the residuals
            return Jg * (self.space.dg_du(u) / self.sigma)[:, None, :], act.numel() * 2
        P = u.shape[-1]
        eye = torch.eye(P, dtype=u.dtype, device=u.device)
        pert = u[:, None, :] + self.h * eye  # [a, P, P]: P perturbed copies in one batch
        rp = self.residuals(pert.transpose(0, 1), act, stage).transpose(0, 1)  # [a, P, M]
        return ((rp - r[:, None, :]) / self.h).transpose(1, 2), act.numel() * P


@dataclass
class _State:
    """Everything an iteration changes; checkpointed as a dict."""

    theta: Tensor  # [Q, P] current u per problem
    hist: dict
    r: Tensor | None = None  # [Q, M]
    f: Tensor | None = None  # [Q]
    lam: Tensor | None = None  # [Q] damping
    done: Tensor | None = None  # [Q] converged
    step: int = 0
    n_sim: int = 0


def _start(prob: _Problem, n_starts: int, settings: dict, state, init) -> tuple[_State, int, int]:
    """A fresh state at the starts (or the checkpoint's); the stage and iteration to go on at."""
    m0, space = prob.m0, prob.space
    if state is not None:
        st = _State(state["theta"], state["history"], step=state["step"])
        st.r, st.f, st.lam, st.done = (state[k] for k in ("r", "f", "lam", "done"))
        return st, state["stage"], state["it"]
    points = init or start_points(m0, n_starts, settings["seed"])
    u = space.clip_bounded(space.unconstrain(points), U_LIMIT)  # [S, P]
    D = len(prob.stack.models)
    hist = {"objective": [], "mse": [], "stage": [], **{k: [] for k in m0.free}}
    return _State(u.repeat_interleave(D, dim=0), hist), 0, -1


def _record(prob: _Problem, st: _State, stage: int, spec: Stage) -> None:
    """Append the objective, the plain simulation's MSE and the parameters to the history."""
    Q = st.theta.shape[0]
    r = st.r
    if not spec.plain:  # "mse" is always the plain simulation's: curves compare
        r = prob.residuals(st.theta, torch.arange(Q), Stage())
        st.n_sim += Q
    h, stack = st.hist, prob.stack
    h["stage"].append(torch.full_like(st.f, stage))
    h["objective"].append(st.f.detach().clone())
    mse = r.pow(2).sum(-1) * prob.sigma**2 / stack.n_obs[prob.didx]
    h["mse"].append(mse.detach().clone())
    for k, v in prob.space.constrain(st.theta)[0].items():
        h[k].append(v.detach().clone())


def _begin_stage(prob: _Problem, st: _State, stage: int, spec: Stage) -> None:
    Q, m0 = st.theta.shape[0], prob.m0
    st.r, st.f = prob.objective(st.theta, torch.arange(Q), spec)
    st.n_sim += Q
    st.lam = torch.full((Q,), 1e-3, dtype=m0.dtype, device=m0.device)
    st.done = torch.zeros(Q, dtype=torch.bool, device=m0.device)
    _record(prob, st, stage, spec)


def _iterate(prob: _Problem, st: _State, stage: Stage, ftol: float, xtol: float) -> None:
    """One damped Gauss–Newton iteration of the problems not yet converged."""
    act = torch.nonzero(~st.done).flatten()
    th = st.theta[act]
    J, n = prob.jacobian(th, act, st.r[act], stage)
    st.n_sim += n
    _, pg, ph = prob.prior_terms(th)
    grad = torch.einsum("amp,am->ap", J, st.r[act]) + pg
    A = J.transpose(1, 2) @ J + torch.diag_embed(ph.clamp_min(0.0))
    held = prob.held(th, grad)  # [a, P]: decoupled, zero gradient, so their step is 0
    if bool(held.any()):
        keep = (~held).to(A.dtype)
        A = A * keep[:, :, None] * keep[:, None, :] + torch.diag_embed(held.to(A.dtype))
        grad = grad * keep
    # Marquardt's scaling, floored so that directions the data do not inform (zero curvature)
    # still get damped steps rather than unbounded ones.
    diag = A.diagonal(dim1=1, dim2=2)
    scale = diag.clamp_min(1e-8 * diag.amax(-1, keepdim=True) + 1e-300)
    factors = torch.tensor(DAMPING, dtype=th.dtype, device=th.device)
    lams = st.lam[act][:, None] * factors  # [a, K]
    lhs = A[:, None] + lams[..., None, None] * torch.diag_embed(scale)[:, None]
    delta = torch.linalg.solve(lhs, -grad[:, None, :].expand(-1, len(DAMPING), -1))
    # Bounded coordinates stay within |u| ≤ U_LIMIT: deeper, the logistic saturates, the
    # gradient vanishes and a later stage could not move the parameter off the bound again.
    cand = prob.space.clip_bounded(th[:, None, :] + delta, U_LIMIT)  # [a, K, P]
    delta = cand - th[:, None, :]
    rc, fc = prob.objective(cand.transpose(0, 1), act, stage)
    rc, fc = rc.transpose(0, 1), fc.transpose(0, 1)  # [a, K, M], [a, K]
    st.n_sim += act.numel() * len(DAMPING)
    best = fc.argmin(-1)
    ar = torch.arange(act.numel())
    f_new, f_old = fc[ar, best], st.f[act].clone()
    ok = f_new < f_old
    st.theta[act[ok]] = cand[ar, best][ok]
    st.r[act[ok]] = rc[ar, best][ok]
    st.f[act[ok]] = f_new[ok]
    st.lam[act] = torch.where(ok, (lams[ar, best] / 3).clamp_min(1e-15), lams[:, -1] * 10)
    # Converged: the best step changes the objective by at most ftol (either way), or an
    # accepted step moves no coordinate by more than xtol; stalled: the damping ran away.
    # Intermediate stages only need to bring the fit near the basin: loose tolerances.
    ft, xt = (ftol, xtol) if stage.plain else (max(ftol, 1e-4), max(xtol, 1e-4))
    tiny = (f_old - f_new).abs() <= ft * f_old.abs().clamp_min(1.0)
    dmax = delta[ar, best].abs().amax(-1)
    st.done[act[tiny | (ok & (dmax <= xt)) | (st.lam[act] > 1e16)]] = True


def lm_fit(stack, n_starts, max_steps, settings, state, ck, every, fp, progress, init):
    """Levenberg–Marquardt on every (start, design) problem of ``stack``; returns the history,
    steps, per-problem convergence and the simulations it took."""
    m0, D = stack.m0, len(stack.models)
    didx = torch.arange(D, device=m0.device).repeat(n_starts)  # q = start · D + design
    prob = _Problem(stack, ParameterSpace(m0, flat_ok=True), didx, settings)
    stages = stages_of(settings["horizons"], settings.get("windows", ()), m0.t_eval.size)
    st, stage0, it0 = _start(prob, n_starts, settings, state, init)
    bar = progress_bar(max_steps * len(stages), progress, "Levenberg–Marquardt", st.step)
    for stage in range(stage0, len(stages)):
        spec = stages[stage]
        if stage > stage0 or it0 < 0:
            _begin_stage(prob, st, stage, spec)
        start_it = it0 if stage == stage0 and it0 >= 0 else 0
        for it in range(start_it + 1, max_steps + 1):
            if bool(st.done.all()):
                break
            st.step += 1
            _iterate(prob, st, spec, settings["ftol"], settings["xtol"])
            _record(prob, st, stage, spec)
            bar.update(1)
            bar.set_postfix(
                objective=f"{float(st.f.min()):.4g}", active=int((~st.done).sum()), stage=stage
            )
            if ck is not None and st.step % every == 0:
                save_checkpoint(ck, _checkpoint(st, fp, stage, it))
    bar.close()
    return dict(
        hist=st.hist, steps=st.step, converged=st.done.cpu(), n_sim=st.n_sim, n_starts=n_starts
    )


def _checkpoint(st: _State, fp: str, stage: int, it: int) -> dict:
    return {
        "fingerprint": fp,
        "theta": st.theta,
        "lam": st.lam,
        "done": st.done,
        "history": st.hist,
        "f": st.f,
        "r": st.r,
        "step": st.step,
        "stage": stage,
        "it": it,
    }
