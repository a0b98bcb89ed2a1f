"""Fused CPU kernels for staggered Crank–Nicolson (``CrankNicolson(backend="numba")``).

The torch backend pays a per-step overhead that dominates small cells. Here numba kernels run
every step of a trajectory in one call, and a hand-written discrete adjoint returns the exact
gradient of the same discrete scheme with respect to each channel's ``g`` (mS/cm²) and ``e`` (mV).

Per step ``s`` (``h = neg_h[s] < 0``, ``k = k_dt[s] = 2/dt``):

1. gates ``y ← y∞(v) + (y − y∞(v))·A``, ``A = exp(h/τ(v))`` (exponential Euler at ``v``);
2. ``G_c`` = conductance of channel ``c``; solve ``M w = cur + Σ G_c e_c + k·cm·v``, ``M`` the
   tree matrix of :class:`~bayesneuron._tree.TreeSystem` with diagonal ``k·cm + Σ G_c + diag``;
3. ``v ← 2w − v``; record ``v`` at output times, then apply a :class:`Reset`.

The adjoint runs the steps backwards: ``Mᵀμ = 2λ_v'``, ``λ_v = −λ_v' + k·cm·μ``,
``∂L/∂G_c = μ (e_c − w)``, ``∂L/∂e_c = μ G_c``, and through the gate update ``∂y'/∂y = A``,
``∂y'/∂v = D``; the forward pass stores ``w``, ``y'``, ``A`` and ``D``, so the adjoint evaluates
no transcendental function. A reset node's adjoint is zeroed: its value came from data.

Batch elements are independent trajectories, run in chunks of ``lanes`` side by side (lanes
last, so the per-lane loops vectorise; ``exp`` and ``log1p`` are written out for that reason),
one chunk per ``prange`` iteration. Numpy layouts (C-contiguous, float64): nodes in Hines order
``[n]``; parameters ``[P, channel, 2, comp]`` (``g``, ``e``); currents ``[S, bins, comp]``
(µA/cm²); reset values ``[R, time, comp]`` (mV, NaN = keep); element ``b`` reads rows
``pidx[b]``, ``sidx[b]``, ``ridx[b]``. History ``[chunk, step, (gate,) node, lane]``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numba
import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import intrinsic
from torch.autograd.function import once_differentiable

from ._tree import tree_system
from .channels import Leak, PaperLeak, PaperPotassium, PaperSodium
from .simulate import _step_grid
from .solvers import CrankNicolson

__all__ = ["supported", "run"]

_NA, _K, _LEAK = 0, 1, 2
_KIND = {PaperSodium: _NA, PaperPotassium: _K, PaperLeak: _LEAK, Leak: _LEAK}
_MAX_LANES = 128  # more lanes amortise each lane loop's set-up; fewer keep big cells in cache
_JIT = dict(cache=True, fastmath=False, error_model="numpy")  # numpy: x/0 = inf, no raise
_INLINE = dict(_JIT, inline="always")  # numba-level inlining, so the lane loops vectorise


def supported(cell, solver, dtype, device, reset) -> str | None:
    """``None`` if the fused kernels can run this simulation, else why not (a message).

    Every :class:`Reset` is supported; ``reset`` is taken for a complete signature.
    """
    need = "backend='numba' supports the paper's and leak channels on CPU in float64"
    if not isinstance(solver, CrankNicolson):
        return f"{need} with CrankNicolson; got {type(solver).__name__}"
    if torch.device(device).type != "cpu":
        return f"{need}; got device {device}"
    if dtype != torch.float64:
        return f"{need}; got {dtype}"
    bad = [type(ch).__name__ for ch in cell.channels if type(ch) not in _KIND]
    if bad:
        return f"{need}; got {', '.join(bad)}"
    return None


# --------------------------------------------------------------------------- vectorisable math
@intrinsic
def _half_pow2(typingctx, t):
    """``2**(k − 1)`` for ``t = k + 1.5·2⁵²`` (integer ``k`` in [−1021, 1024]), by bit pattern."""

    def codegen(context, builder, signature, args):
        i64 = context.get_value_type(types.int64)
        bits = builder.bitcast(args[0], i64)  # low bits hold k
        bits = builder.shl(builder.add(bits, i64(1022)), i64(52))
        return builder.bitcast(bits, context.get_value_type(types.float64))

    return types.float64(types.float64), codegen


_MAGIC = 6755399441055744.0  # 1.5·2⁵²: adding it rounds to an integer held in the low bits
_LN2, _INV_LN2 = math.log(2.0), 1.0 / math.log(2.0)
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # fdlibm's split
_EXP_MAX, _EXP_MIN = math.log(np.finfo(np.float64).max), -708.0
_EXP_C = tuple(1.0 / math.factorial(k) for k in range(14))  # Taylor to r¹³: |r| ≤ ln2/2


@njit(**_INLINE)
def _exp(x):
    """``exp(x)`` within 2 ulp (results below ``exp(−708)`` flush to 0), branch-free."""
    xc = _EXP_MIN if x < _EXP_MIN else (_EXP_MAX if x > _EXP_MAX else x)
    t = xc * _INV_LN2 + _MAGIC
    k = t - _MAGIC
    r = (xc - k * _LN2_HI) - k * _LN2_LO
    c = _EXP_C  # Estrin's scheme: short dependency chains
    r2 = r * r
    r4 = r2 * r2
    p0 = c[0] + c[1] * r + (c[2] + c[3] * r) * r2
    p1 = c[4] + c[5] * r + (c[6] + c[7] * r) * r2
    lo = p0 + p1 * r4
    hi = (c[8] + c[9] * r + (c[10] + c[11] * r) * r2) + (c[12] + c[13] * r) * r4
    y = (lo + hi * (r4 * r4)) * _half_pow2(t) * 2.0
    y = np.inf if x > _EXP_MAX else y
    return 0.0 if x < _EXP_MIN else y


_LOG_C = tuple(2.0 / (2 * k + 1) for k in range(9, 0, -1))  # 2·atanh(t) = 2t + Σ 2t^(2k+1)/(2k+1)
_SQRT2_M1 = math.sqrt(2.0) - 1.0


@njit(**_INLINE)
def _log1p01(u):
    """``log1p(u)`` for ``u`` in [0, 1] within 2 ulp, branch-free: ``2·atanh(u / (2 + u))``."""
    big = u > _SQRT2_M1
    w = (u - 1.0) * 0.5 if big else u  # 1 + u = 2(1 + w)
    t = w / (2.0 + w)  # |t| ≤ 0.172
    s = t * t
    q = 0.0
    for c in _LOG_C:
        q = (q + c) * s
    res = (t + t) + t * q
    return res + _LN2 if big else res


# --------------------------------------------------------------------------- channel kinetics
# Each gate's α and β (1/ms) as (form, scale, a, b) at Vs = V + v_shift (mV), as channels.py has
# them: softplus scale·ln(1 + exp(a·Vs + b)), exponential scale·exp((a − Vs)/b), sigmoid
# scale/(1 + exp((a − Vs)/b)). One lane loop per form keeps the compiled code small.
_SOFTPLUS, _EXPONENTIAL, _SIGMOID = 0.0, 1.0, 2.0
_GATE_RATES = {
    PaperSodium: (
        ((_SOFTPLUS, 1.841, 0.17, math.log(0.102)), (_SOFTPLUS, 2.010, -0.139, math.log(266.087))),
        ((_EXPONENTIAL, 0.128, 17.0, 18.0), (_SIGMOID, 4.0, 40.0, 5.0)),
    ),
    PaperPotassium: (
        ((_SOFTPLUS, 0.114, 0.140, math.log(0.007)), (_EXPONENTIAL, 0.25, 20.0, 40.0)),
    ),
}


@njit(**_JIT)
def _rate(spec, vs, rate, d_rate):
    """A rate ``spec = (form, scale, a, b)`` and its derivative in ``Vs`` per lane of ``vs``."""
    form, scale, a, b = spec[0], spec[1], spec[2], spec[3]
    if form == _SOFTPLUS:  # max(x, 0) + log1p(exp(−|x|)) = ln(1 + exp(x))
        for l in range(vs.shape[0]):
            x = vs[l] * a + b
            u = _exp(-abs(x))
            pos = x > 0.0
            rate[l] = ((x if pos else 0.0) + _log1p01(u)) * scale
            d_rate[l] = scale * a * ((1.0 if pos else u) / (1.0 + u))
    elif form == _EXPONENTIAL:
        for l in range(vs.shape[0]):
            rate[l] = scale * _exp((a - vs[l]) / b)
            d_rate[l] = rate[l] * (-1.0 / b)
    else:
        for l in range(vs.shape[0]):
            sig = 1.0 / (1.0 + _exp((a - vs[l]) / b))
            rate[l] = scale * sig
            d_rate[l] = scale * sig * (1.0 - sig) / b


@njit(**_JIT)
def _rates(spec, vs, r):
    """``r [4, lane]`` = α, β, dα/dVs, dβ/dVs of a gate with rates ``spec [2, 4]``."""
    _rate(spec[0], vs, r[0], r[2])
    _rate(spec[1], vs, r[1], r[3])


@njit(**_JIT)
def _advance(r, eps, phi, h, y, ya, yd):
    """Exponential Euler over ``−h`` ms per lane: ``y ← y'``, ``ya = A``, ``yd = ∂y'/∂v``."""
    for l in range(y.shape[0]):
        a, da, ds = r[0, l], r[2, l], r[2, l] + r[3, l]
        s = a + r[1, l] + eps  # 1/τ = φ·s
        rs = 1.0 / s
        inf = a * rs
        big_a = _exp(h * phi * s)
        y_old = y[l]
        lo, hi = inf + big_a * (y_old - inf), y_old - (y_old - inf) * (1.0 - big_a)
        y[l] = lo if big_a < 0.5 else hi  # torch.lerp(inf, y, A)
        ya[l] = big_a
        yd[l] = (da - inf * ds) * rs * (1.0 - big_a) + (y_old - inf) * (big_a * h * phi * ds)


@njit(**_JIT)
def _add_conductance(kind, gm, ee, y, g0, i, g_sum, ge_sum):
    """Add a channel's ``G`` (g·m²h, g·n or g) and ``G·e`` at node ``i`` to the lane sums."""
    for l in range(g_sum.shape[0]):
        if kind == _NA:
            g = gm[l] * (y[g0, i, l] * y[g0, i, l]) * y[g0 + 1, i, l]
        elif kind == _K:
            g = gm[l] * y[g0, i, l]
        else:
            g = gm[l]
        g_sum[l] += g
        ge_sum[l] += g * ee[l]


@njit(**_JIT)
def _conductance_adjoint(kind, gm, ee, y, g0, i, mu, w, gg, ly):
    """Given ``μ``: add ``∂L/∂g``, ``∂L/∂e`` to ``gg [2, lane]`` and ``∂L/∂y`` to ``ly``."""
    for l in range(mu.shape[0]):
        q = mu[l] * (ee[l] - w[l])  # ∂L/∂G
        if kind == _NA:
            m, hh = y[g0, i, l], y[g0 + 1, i, l]
            gg[0, l] += q * (m * m * hh)
            gg[1, l] += mu[l] * (gm[l] * (m * m) * hh)
            ly[g0, i, l] += q * gm[l] * 2.0 * m * hh
            ly[g0 + 1, i, l] += q * gm[l] * m * m
        elif kind == _K:
            gg[0, l] += q * y[g0, i, l]
            gg[1, l] += mu[l] * (gm[l] * y[g0, i, l])
            ly[g0, i, l] += q * gm[l]
        else:
            gg[0, l] += q
            gg[1, l] += mu[l] * gm[l]


@njit(**_JIT)
def _solve(parent, lo, up, d, r):
    """Tree solve in place (``r ← x``, ``d`` destroyed) of ``[node, lane]`` systems with rows
    ``d_i x_i + lo_i x_parent(i) + Σ_children up_c x_c = r_i``; swap ``lo``, ``up`` for ``Mᵀ``."""
    n, nl = d.shape
    for i in range(n - 1, 0, -1):  # eliminate leaves first
        p = parent[i]
        for l in range(nl):
            f = up[i] / d[i, l]
            d[p, l] = d[p, l] - lo[i] * f
            r[p, l] = r[p, l] - f * r[i, l]
    for l in range(nl):
        r[0, l] = r[0, l] / d[0, l]
    for i in range(1, n):
        p = parent[i]
        for l in range(nl):
            r[i, l] = (r[i, l] - lo[i] * r[p, l]) / d[i, l]


@njit(**_JIT)
def _lane_params(par, pidx, b0, nl, pub, e_shift):
    """``g`` and effective ``e`` per channel, node and lane ``[channel, node, lane]``."""
    n_ch, n, n_comp = par.shape[1], pub.shape[0], par.shape[3]
    gm, ee = np.zeros((n_ch, n, nl)), np.zeros((n_ch, n, nl))
    for c in range(n_ch):
        for i in range(n):
            if pub[i] < n_comp:
                for l in range(nl):
                    gm[c, i, l] = par[pidx[b0 + l], c, 0, pub[i]]
                    ee[c, i, l] = par[pidx[b0 + l], c, 1, pub[i]] - e_shift[c]
    return gm, ee


# --------------------------------------------------------------------------- one chunk of lanes
@njit(**_JIT)
def _forward_chunk(ch, lanes, tree, chans, steps, data, v0, out, hist, store):
    """Forward steps of chunk ``ch``; fills its rows of ``out`` and, if ``store``, its history."""
    parent, ta, tb, diag, cm, pub, pos = tree
    kind, g0, e_shift, spec, gcf = chans
    k_dt, neg_h, cols, out_at, reset_at = steps
    cur, sidx, par, pidx, rv, ridx = data
    W, X, AA, DD = hist
    b0 = ch * lanes
    nl = min(lanes, out.shape[0] - b0)
    n, n_comp, n_ch, n_g = parent.shape[0], out.shape[1], kind.shape[0], spec.shape[0]
    gm, ee = _lane_params(par, pidx, b0, nl, pub, e_shift)
    v = np.full((n, nl), v0)
    y = np.zeros((n_g, n, nl))
    ya, yd = np.zeros_like(y), np.zeros_like(y)
    d, r = np.empty((n, nl)), np.empty((n, nl))
    g_sum, ge_sum, vs, rates = np.empty(nl), np.empty(nl), np.empty(nl), np.empty((4, nl))
    for j in range(n_g):  # initial gates: steady state at v0 (+ the shift of init_gates)
        r0 = np.empty((4, 1))
        _rates(spec[j], np.full(1, v0 + gcf[j, 3]), r0)
        for i in range(n):
            if pub[i] < n_comp:
                for l in range(nl):
                    y[j, i, l] = r0[0, 0] * (1.0 / (r0[0, 0] + r0[1, 0] + gcf[j, 1]))
    for k in range(n_comp):  # (slice assignments are avoided: each costs seconds to compile)
        for l in range(nl):
            out[b0 + l, k, 0] = v0
    for s in range(k_dt.shape[0]):
        for j in range(n_g):
            for i in range(n):
                if pub[i] < n_comp:
                    for l in range(nl):
                        vs[l] = v[i, l] + gcf[j, 0]
                    _rates(spec[j], vs, rates)
                    _advance(rates, gcf[j, 1], gcf[j, 2], neg_h[s], y[j, i], ya[j, i], yd[j, i])
        for i in range(n):
            c_i = k_dt[s] * cm[i]
            k = pub[i]
            g_sum.fill(0.0)
            ge_sum.fill(0.0)
            if k < n_comp:  # junctions have no membrane and no current
                for c in range(n_ch):
                    _add_conductance(kind[c], gm[c, i], ee[c, i], y, g0[c], i, g_sum, ge_sum)
            for l in range(nl):
                d[i, l] = c_i + g_sum[l] + diag[i]
                i_inj = cur[sidx[b0 + l], cols[s], k] if k < n_comp else 0.0
                r[i, l] = i_inj + ge_sum[l] + c_i * v[i, l]
        _solve(parent, ta, tb, d, r)  # r = w
        for i in range(n):
            for l in range(nl):
                v[i, l] = 2.0 * r[i, l] - v[i, l]
            if store:
                for l in range(nl):
                    W[ch, s, i, l] = r[i, l]
                for j in range(n_g):
                    for l in range(nl):
                        X[ch, s, j, i, l] = y[j, i, l]
                        AA[ch, s, j, i, l] = ya[j, i, l]
                        DD[ch, s, j, i, l] = yd[j, i, l]
        j = out_at[s]
        if j >= 0:
            for k in range(n_comp):
                for l in range(nl):
                    out[b0 + l, k, j] = v[pos[k], l]
                    if reset_at[s] and not np.isnan(rv[ridx[b0 + l], j, k]):
                        v[pos[k], l] = rv[ridx[b0 + l], j, k]


@njit(**_JIT)
def _adjoint_chunk(ch, lanes, tree, chans, steps, data, gout, hist, grad):
    """Reverse steps of chunk ``ch``: ``grad[b, c, 0|1, comp] = ∂L/∂g, ∂L/∂e``."""
    parent, ta, tb, diag, cm, pub, pos = tree
    kind, g0, e_shift, spec, _ = chans
    k_dt, _, _, out_at, reset_at = steps
    _, _, par, pidx, rv, ridx = data
    W, X, AA, DD = hist
    b0 = ch * lanes
    nl = min(lanes, grad.shape[0] - b0)
    n, n_comp, n_ch, n_g = parent.shape[0], grad.shape[3], kind.shape[0], spec.shape[0]
    gm, ee = _lane_params(par, pidx, b0, nl, pub, e_shift)
    lv = np.zeros((n, nl))  # ∂L/∂v after the step (after its reset)
    ly = np.zeros((n_g, n, nl))  # ∂L/∂y after the step's gate update
    gg = np.zeros((n_ch, 2, n, nl))
    d, mu = np.empty((n, nl)), np.empty((n, nl))
    g_sum, ge_sum = np.empty(nl), np.empty(nl)
    for s in range(k_dt.shape[0] - 1, -1, -1):
        j = out_at[s]
        if j >= 0:
            for k in range(n_comp):
                for l in range(nl):
                    if reset_at[s] and not np.isnan(rv[ridx[b0 + l], j, k]):
                        lv[pos[k], l] = 0.0  # the value came from data
                    lv[pos[k], l] += gout[b0 + l, k, j]
        y = X[ch, s]
        for i in range(n):
            g_sum.fill(0.0)
            ge_sum.fill(0.0)  # (not needed here)
            if pub[i] < n_comp:
                for c in range(n_ch):
                    _add_conductance(kind[c], gm[c, i], ee[c, i], y, g0[c], i, g_sum, ge_sum)
            for l in range(nl):
                d[i, l] = k_dt[s] * cm[i] + g_sum[l] + diag[i]
                mu[i, l] = 2.0 * lv[i, l]
        _solve(parent, tb, ta, d, mu)  # Mᵀ μ = 2 λ_v'
        for i in range(n):
            for l in range(nl):
                lv[i, l] = k_dt[s] * cm[i] * mu[i, l] - lv[i, l]
            if pub[i] < n_comp:
                for c in range(n_ch):
                    _conductance_adjoint(
                        kind[c],
                        gm[c, i],
                        ee[c, i],
                        y,
                        g0[c],
                        i,
                        mu[i],
                        W[ch, s, i],
                        gg[c, :, i],
                        ly,
                    )
            for jg in range(n_g):
                for l in range(nl):
                    lv[i, l] += DD[ch, s, jg, i, l] * ly[jg, i, l]
                    ly[jg, i, l] *= AA[ch, s, jg, i, l]
    for c in range(n_ch):
        for i in range(n):
            if pub[i] < n_comp:
                for l in range(nl):
                    grad[b0 + l, c, 0, pub[i]] = gg[c, 0, i, l]
                    grad[b0 + l, c, 1, pub[i]] = gg[c, 1, i, l]


# The chunk index is cast to int64: prange's own index type differs between numba's typing and
# lowering passes, which would compile each chunk function twice.
@njit(parallel=True, **_JIT)
def _forward(lanes, tree, chans, steps, data, v0, out, hist, store):
    for ch in prange((out.shape[0] + lanes - 1) // lanes):
        _forward_chunk(np.int64(ch), lanes, tree, chans, steps, data, v0, out, hist, store)


@njit(parallel=True, **_JIT)
def _adjoint(lanes, tree, chans, steps, data, gout, hist, grad):
    for ch in prange((grad.shape[0] + lanes - 1) // lanes):
        _adjoint_chunk(np.int64(ch), lanes, tree, chans, steps, data, gout, hist, grad)


# --------------------------------------------------------------------------- torch interface
def run(cell, p, vals, stimulus, t_eval, solver, reset=None):
    """The fused counterpart of ``simulate._run_fixed`` for staggered Crank–Nicolson.

    Args:
        p: every cell parameter ``{name: [sample…, comp]}`` (float64, CPU).
        vals: current densities ``[bins, …, trace, comp]`` (µA/cm²).

    Returns:
        ``(v, n_steps)`` with ``v`` ``[batch…, comp, time]`` in mV; differentiable in ``p``.
    """
    flat = [p[f"{k}_{ch.name}"] for ch in cell.channels for k in ("g", "e")]
    store = torch.is_grad_enabled() and any(x.requires_grad for x in flat)
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    prob = _Problem(cell, flat, vals, stimulus, t_eval, solver.dt, reset, store, threads)
    return _Fused.apply(prob, *flat), len(prob.steps[0])


@contextmanager
def _torch_threads():
    """Run numba on torch's thread count, and leave torch's as it was: numba's OpenMP layer
    shares the process's OpenMP setting and resets it when it first starts."""
    n = torch.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


class _Problem:
    """Everything the kernels take except the parameters (see the module docstring)."""

    def __init__(self, cell, flat, vals, stimulus, t_eval, dt, reset, store, threads):
        self.store = store  # keep the history the adjoint needs
        sys = tree_system(cell.morphology)
        self.n_comp, self.n_time, self.n = cell.n_comp, len(t_eval), sys.n
        self.tree = (sys.parent, sys.a, sys.b, sys.diag, sys.cm, sys.pub_of, sys.comp_pos)
        chs = cell.channels
        kind = np.array([_KIND[type(ch)] for ch in chs], dtype=np.int64)
        spec = [r for ch in chs for r in _GATE_RATES.get(type(ch), ())]  # per gate
        gcf = [_gate_constants(ch) for ch in chs for _ in _GATE_RATES.get(type(ch), ())]
        self.n_gates = len(spec)
        self.chans = (
            kind,
            np.cumsum([0] + [len(_GATE_RATES.get(type(ch), ())) for ch in chs]),  # first gate
            np.array([_e_shift(ch) for ch in chs], dtype=np.float64),
            np.array(spec, dtype=np.float64).reshape(-1, 2, 4),
            np.array(gcf, dtype=np.float64).reshape(-1, 4),
        )
        self.v0 = float(cell.v0)

        dts, t_mid, is_output = _step_grid(stimulus, t_eval, dt)
        h = (np.concatenate([[0.0], dts[:-1]]) + dts) / 2  # gates: previous midpoint → this one
        out_j = np.cumsum(is_output)
        resets = np.zeros_like(is_output) if reset is None else out_j % reset.every == 0
        self.steps = (
            2.0 / dts,
            -h,
            stimulus.bin_index(t_mid),
            np.where(is_output, out_j, -1).astype(np.int64),
            is_output & resets,
        )

        self.pshape = torch.broadcast_shapes(*(x.shape[:-1] for x in flat))
        self.batch = torch.broadcast_shapes(self.pshape + (1,), vals.shape[1:-1])
        self.n_batch = math.prod(self.batch)
        per_thread = -(-self.n_batch // threads)
        self.lanes = max(4, min(_MAX_LANES, per_thread, max(16, 4096 // sys.n)))
        self.n_chunks = -(-self.n_batch // self.lanes)
        cur = vals.detach().movedim(0, -2)
        cur = cur.reshape((-1,) + cur.shape[-2:]).contiguous().numpy()
        if reset is None:
            rv, ridx = np.zeros((1, 1, self.n_comp)), np.zeros(self.n_batch, np.int64)
        else:
            rv = reset.values.detach().to(device="cpu", dtype=torch.float64)
            ridx = self._rows(rv.shape[:-2])
            rv = rv.reshape((-1,) + rv.shape[-2:]).transpose(1, 2).contiguous().numpy()
        self.data = (cur, self._rows(vals.shape[1:-1]), self._rows(self.pshape + (1,)), rv, ridx)

    def _rows(self, shape) -> np.ndarray:
        """Row of an array with leading dims ``shape`` that each batch element reads ``[B]``."""
        rows = torch.arange(math.prod(shape), dtype=torch.int64).reshape(shape)
        return np.ascontiguousarray(rows.expand(self.batch).reshape(-1).numpy())

    def pack(self, flat) -> np.ndarray:
        """Parameters ``[g, e]`` per channel → ``[P, channel, 2, comp]``."""
        x = torch.stack([t.detach().expand(self.pshape + (self.n_comp,)) for t in flat], -2)
        return x.reshape(-1, len(flat) // 2, 2, self.n_comp).contiguous().numpy()

    def _data(self, par):
        cur, sidx, pidx, rv, ridx = self.data
        return cur, sidx, par, pidx, rv, ridx

    def forward(self, par):
        """Voltages ``[B, comp, time]`` and, if ``self.store``, the history ``(W, X, A, D)``."""
        lead = (self.n_chunks, len(self.steps[0]) if self.store else 0)
        node, gate = (self.n, self.lanes), (self.n_gates, self.n, self.lanes)
        hist = (np.empty(lead + node),) + tuple(np.empty(lead + gate) for _ in range(3))
        out = np.empty((self.n_batch, self.n_comp, self.n_time))
        args = (self.tree, self.chans, self.steps, self._data(par), self.v0, out, hist)
        with _torch_threads():
            _forward(self.lanes, *args, self.store)
        return out, hist

    def adjoint(self, par, hist, gout) -> np.ndarray:
        """``∂L/∂(g, e)`` ``[B, channel, 2, comp]`` from ``∂L/∂V`` ``[B, comp, time]``."""
        grad = np.zeros((self.n_batch,) + par.shape[1:])
        with _torch_threads():
            _adjoint(
                self.lanes, self.tree, self.chans, self.steps, self._data(par), gout, hist, grad
            )
        return grad


def _gate_constants(ch) -> tuple[float, float, float, float]:
    """Per gate of a paper channel: rate shift (mV), eps, phi, shift of the initial voltage (mV)."""
    return ch.v_shift, ch.eps, getattr(ch, "phi", 1.0), 0.0 if ch.init_unshifted else ch.v_shift


def _e_shift(ch) -> float:
    """What the channel subtracts from ``e`` for its driving force (mV)."""
    if isinstance(ch, Leak):
        return ch.v_shift
    return ch.v_shift if ch.shift_driving_force else 0.0


class _Fused(torch.autograd.Function):
    """``V = simulate(params)`` by :func:`_forward`; backward by the discrete adjoint."""

    @staticmethod
    def forward(ctx, prob, *flat):
        par = prob.pack(flat)
        out, hist = prob.forward(par)
        if prob.store:
            ctx.prob, ctx.par, ctx.hist = prob, par, hist
            ctx.shapes = [x.shape for x in flat]
        return torch.from_numpy(out).view(prob.batch + out.shape[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, gv):
        prob = ctx.prob
        gout = gv.contiguous().reshape((-1,) + gv.shape[-2:]).numpy()
        grad = torch.from_numpy(prob.adjoint(ctx.par, ctx.hist, gout))
        grads = []
        for idx, shape in enumerate(ctx.shapes):  # reduce over the dims the parameter broadcast
            if not ctx.needs_input_grad[1 + idx]:
                grads.append(None)
                continue
            gx = grad[:, idx // 2, idx % 2].reshape(prob.batch + (prob.n_comp,))
            grads.append(gx.sum_to_size(shape[:-1] + (1, prob.n_comp)).reshape(shape))
        return (None, *grads)
