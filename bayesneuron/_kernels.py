"""The numba kernels of the fused Crank–Nicolson backend (see :mod:`bayesneuron._fused` for the
scheme, the layouts and the torch interface).

Plain numpy arrays in, plain numpy arrays out: this module imports numpy, math and numba only.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

# error_model "numpy": x/0 = inf, no raise; "contract": fused multiply-adds, nothing else
_JIT = dict(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
_INLINE = dict(_JIT, inline="always")  # numba-level inlining: for the lane-level math only


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


@njit(**_INLINE)
def _expm1(x):
    """``exp(x) − 1`` within 2 ulp (−1 below ``x = −708``), branch-free: with ``x = k·ln2 + r``,
    ``2ᵏ·expm1(r) + (2ᵏ − 1)``, ``expm1(r)`` the series of :func:`_exp` without its 1."""
    xc = _EXP_MIN if x < _EXP_MIN else (_EXP_MAX if x > _EXP_MAX else x)
    t = xc * _INV_LN2 + _MAGIC
    k = t - _MAGIC
    r = (xc - k * _LN2_HI) - k * _LN2_LO
    c = _EXP_C
    r2 = r * r
    r4 = r2 * r2
    p0 = c[2] + c[3] * r + (c[4] + c[5] * r) * r2
    p1 = c[6] + c[7] * r + (c[8] + c[9] * r) * r2
    p2 = c[10] + c[11] * r + (c[12] + c[13] * r) * r2
    q = r + r2 * (p0 + p1 * r4 + p2 * (r4 * r4))
    h = _half_pow2(t)  # 2ᵏ / 2, which cannot overflow
    y = (h * q + (h - 0.5)) * 2.0
    y = np.inf if x > _EXP_MAX else y
    return -1.0 if x < _EXP_MIN else y


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


@njit(**_INLINE)
def _ipow(x, p):
    """``x**p`` for an integer ``p`` in 0…4 (1 for ``p ≤ 0``), branch-free."""
    x2 = x * x
    r = x2 * x2 if p == 4 else x2 * x
    r = x2 if p == 2 else r
    r = x if p == 1 else r
    return 1.0 if p <= 0 else r


# --------------------------------------------------------------------------- channel kinetics
# Each gate's α and β (1/ms) as (form, scale, a, b) at Vs = V + v_shift (mV), as channels.py has
# them: softplus scale·ln(1 + exp(a·Vs + b)), exponential scale·exp((a − Vs)/b), sigmoid
# scale/(1 + exp((a − Vs)/b)), linoid scale·(a − Vs)/(exp((a − Vs)/b) − 1) (NEURON's vtrap,
# guarded where |u| = |(a − Vs)/b| < 1e-6 as channels.vtrap is). One lane loop per form.
_SOFTPLUS, _EXPONENTIAL, _SIGMOID, _LINOID = 0.0, 1.0, 2.0, 3.0
_VTRAP_SMALL = 1e-6  # channels.vtrap's switch to its series
# d/du [u / (eᵘ − 1)] = −1/2 + u/6 − u³/180 + u⁵/5040 − u⁷/151200 + …: used where |u| < 0.1,
# where the closed form cancels (its error there ≈ 4·eps/|u|; the series' ≈ 1e-16)
_D_VTRAP = (-0.5, 1.0 / 6.0, -1.0 / 180.0, 1.0 / 5040.0, -1.0 / 151200.0)


@njit(**_JIT)
def _rate(spec, vs, rate, d_rate):
    """A rate ``spec = (form, scale, a, b)`` and its derivative in ``Vs``, per element of ``vs``.

    Divisions by ``b`` are multiplications by ``1/b`` (vector division is slow), so the rates
    may differ from channels.py's in the last bit; the adjoint differentiates these."""
    form, scale, a, b = spec[0], spec[1], spec[2], spec[3]
    ib = 1.0 / b
    if form == _SOFTPLUS:  # max(x, 0) + log1p(exp(−|x|)) = ln(1 + exp(x))
        for l in range(vs.shape[0]):
            x = vs[l] * a + b
            u = _exp(-abs(x))
            pos = x > 0.0
            rate[l] = ((x if pos else 0.0) + _log1p01(u)) * scale
            d_rate[l] = scale * a * ((1.0 if pos else u) / (1.0 + u))
    elif form == _EXPONENTIAL:
        for l in range(vs.shape[0]):
            r = scale * _exp((a - vs[l]) * ib)
            rate[l] = r
            d_rate[l] = r * -ib
    elif form == _SIGMOID:
        for l in range(vs.shape[0]):
            sig = 1.0 / (1.0 + _exp((a - vs[l]) * ib))
            rate[l] = scale * sig
            d_rate[l] = scale * sig * (1.0 - sig) * ib
    else:  # rate = scale·b·f(u), f(u) = u/expm1(u), u = (a − Vs)/b; d rate/dVs = −scale·f'(u)
        c = _D_VTRAP
        for l in range(vs.shape[0]):
            u = (a - vs[l]) * ib
            i_em1 = 1.0 / _expm1(u)
            small = abs(u) < _VTRAP_SMALL
            rate[l] = scale * (b * (1.0 - 0.5 * u) if small else b * u * i_em1)
            u2 = u * u
            series = c[0] + u * (c[1] + u2 * (c[2] + u2 * (c[3] + u2 * c[4])))
            closed = i_em1 * ((1.0 - u) - u * i_em1)  # f·(1/u − 1 − 1/expm1(u))
            d_f = series if abs(u) < 0.1 else closed
            d_rate[l] = -scale * (-0.5 if small else d_f)


@njit(**_JIT)
def _advance(r, eps, phi, h, y, y_new, ya, yd):
    """Exponential Euler over ``−h`` ms per lane: ``y_new = y'``, ``ya = A``, ``yd = ∂y'/∂v``.

    ``r [4, lane]`` holds α, β, dα/dVs, dβ/dVs; ``1/τ = φ (α + β + eps)``."""
    for l in range(y.shape[0]):
        a, da, ds = r[0, l], r[2, l], r[2, l] + r[3, l]
        s = a + r[1, l] + eps
        rs = 1.0 / s
        inf = a * rs
        big_a = _exp(h * phi * s)
        y_old = y[l]
        lo, hi = inf + big_a * (y_old - inf), y_old - (y_old - inf) * (1.0 - big_a)
        y_new[l] = lo if big_a < 0.5 else hi  # torch.lerp(inf, y, A)
        ya[l] = big_a
        yd[l] = (da - inf * ds) * rs * (1.0 - big_a) + (y_old - inf) * (big_a * h * phi * ds)


@njit(**_JIT)
def _conductance(gates, gm, ee, y, g_sum, ge_sum):
    """``Σ_c G_c`` and ``Σ_c G_c e_c`` per compartment and lane ``[comp·lane]``."""
    ga, pa, gb, pb = gates
    for x in range(g_sum.shape[0]):
        g_sum[x] = 0.0
        ge_sum[x] = 0.0
    for c in range(ga.shape[0]):
        p, q, ya, yb, gmc, eec = pa[c], pb[c], y[ga[c]], y[gb[c]], gm[c], ee[c]
        for x in range(g_sum.shape[0]):
            g = gmc[x] * (_ipow(ya[x], p) * _ipow(yb[x], q))
            g_sum[x] += g
            ge_sum[x] += g * eec[x]


@njit(**_JIT)
def _conductance_adjoint(gates, gm, ee, y, mu, w, gg, ly, dy):
    """Given ``μ`` and ``w`` ``[comp·lane]``: add ``∂L/∂g``, ``∂L/∂e`` to ``gg`` and ``∂L/∂y``
    to ``ly``; ``dy [2, comp·lane]`` is scratch. Short loops with one output each vectorise
    best (no run-time alias checks)."""
    ga, pa, gb, pb = gates
    dg, o = dy[0], dy[1]
    m = mu.shape[0]
    for c in range(ga.shape[0]):
        p, q, ya, yb, gmc, eec = pa[c], pb[c], y[ga[c]], y[gb[c]], gm[c], ee[c]
        for x in range(m):
            o[x] = _ipow(ya[x], p) * _ipow(yb[x], q)  # G / g
        for x in range(m):
            dg[x] = mu[x] * (eec[x] - w[x])  # ∂L/∂G
        g0 = gg[c, 0]
        for x in range(m):
            g0[x] += dg[x] * o[x]
        g1 = gg[c, 1]
        for x in range(m):
            g1[x] += mu[x] * (gmc[x] * o[x])
        if p > 0:
            lya, fp = ly[ga[c]], float(p)
            for x in range(m):
                lya[x] += dg[x] * gmc[x] * (fp * _ipow(ya[x], p - 1)) * _ipow(yb[x], q)
        if q > 0:
            lyb, fq = ly[gb[c]], float(q)
            for x in range(m):
                lyb[x] += dg[x] * gmc[x] * _ipow(ya[x], p) * (fq * _ipow(yb[x], q - 1))


@njit(**_JIT)
def _solve(parent, lo, up, d, r):
    """Tree solve in place (``r ← x``, ``d`` destroyed) of ``[node, lane]`` systems with rows
    ``d_i x_i + lo_i x_parent(i) + Σ_children up_c x_c = r_i``; swap ``lo``, ``up`` for ``Mᵀ``."""
    n, nl = d.shape
    for i in range(n - 1, 0, -1):  # eliminate leaves first
        li, ui, di, ri, dp, rp = lo[i], up[i], d[i], r[i], d[parent[i]], r[parent[i]]
        for l in range(nl):
            f = ui / di[l]
            dp[l] = dp[l] - li * f
            rp[l] = rp[l] - f * ri[l]
    r0, d0 = r[0], d[0]
    for l in range(nl):
        r0[l] = r0[l] / d0[l]
    for i in range(1, n):
        li, di, ri, rp = lo[i], d[i], r[i], r[parent[i]]
        for l in range(nl):
            ri[l] = (ri[l] - li * rp[l]) / di[l]


# --------------------------------------------------------------------------- one chunk of lanes
@njit(**_JIT)
def _forward_chunk(tree, rates, gates, steps, data, v0, out, hist, work, store):
    """Forward steps of one chunk: fills its rows ``out [lane, comp, time]`` and, if ``store``,
    its history; ``work`` is scratch, its gates ``yy[1]`` set to their initial values."""
    parent, ta, tb, diag, cm, pub, pos = tree
    spec, gcf = rates
    k_dt, neg_h, cols, out_at, reset_at = steps
    cur, sidx, rv, ridx, gm, ee = data
    W, X, AA, DD = hist
    v, d, w, yy, ya, yd, rr, vc, vs, g_sum, ge_sum, i_inj = work
    n, nl = v.shape
    n_comp, n_g = pos.shape[0], spec.shape[0]
    for i in range(n):
        vi = v[i]
        for l in range(nl):
            vi[l] = v0
    for k in range(n_comp):
        for l in range(nl):
            out[l, k, 0] = v0
    for s in range(k_dt.shape[0]):
        h = neg_h[s]
        # gates go from y_in to y (never in place: aliased lane loops do not vectorise)
        y_in = X[s - 1] if store and s > 0 else yy[(s + 1) % 2]
        y = yy[s % 2]
        if store:  # the step writes its history in place
            y, ya, yd, w = X[s], AA[s], DD[s], W[s]
        col = cols[s]
        for k in range(n_comp):  # compartment voltages; the current (a gather)
            vk, o = v[pos[k]], k * nl
            for l in range(nl):
                vc[o + l] = vk[l]
            for l in range(nl):
                i_inj[o + l] = cur[sidx[l], col, k]
        for j in range(n_g):
            shift = gcf[j, 0]
            for x in range(vs.shape[0]):
                vs[x] = vc[x] + shift
            _rate(spec[j, 0], vs, rr[0], rr[2])
            _rate(spec[j, 1], vs, rr[1], rr[3])
            _advance(rr, gcf[j, 1], gcf[j, 2], h, y_in[j], y[j], ya[j], yd[j])
        _conductance(gates, gm, ee, y, g_sum, ge_sum)
        for i in range(n):
            c_i, k, dg_i, vi, di, wi = k_dt[s] * cm[i], pub[i], diag[i], v[i], d[i], w[i]
            if k < n_comp:  # junctions have no membrane and no current
                o = k * nl
                for l in range(nl):
                    di[l] = c_i + g_sum[o + l] + dg_i
                    wi[l] = i_inj[o + l] + ge_sum[o + l] + c_i * vi[l]
            else:
                for l in range(nl):
                    di[l] = c_i + 0.0 + dg_i
                    wi[l] = 0.0 + 0.0 + c_i * vi[l]
        _solve(parent, ta, tb, d, w)  # w = M⁻¹ r
        for i in range(n):
            vi, wi = v[i], w[i]
            for l in range(nl):
                vi[l] = 2.0 * wi[l] - vi[l]
        j = out_at[s]
        if j >= 0:
            for k in range(n_comp):
                for l in range(nl):
                    out[l, k, j] = v[pos[k], l]
                    x = rv[ridx[l], j, k]
                    if reset_at[s] and x == x:  # NaN: keep
                        v[pos[k], l] = x


@njit(**_JIT)
def _adjoint_chunk(tree, gates, steps, data, gout, hist, work, grad):
    """Reverse steps of one chunk: ``grad [lane, channel, 0|1, comp] = ∂L/∂g, ∂L/∂e`` from
    ``gout [lane, comp, time] = ∂L/∂V``; ``work`` is scratch, ``lv``, ``ly`` and ``gg`` zeroed."""
    parent, ta, tb, diag, cm, pub, pos = tree
    k_dt, _, _, out_at, reset_at = steps
    _, _, rv, ridx, gm, ee = data
    W, X, AA, DD = hist
    # ∂L/∂v [node, lane] and ∂L/∂y [gate, comp·lane] after the step; ∂L/∂(g, e)
    lv, d, mu, ly, gg, muc, wc, lvc, g_sum, ge_sum, dy = work
    n, nl = lv.shape
    n_comp, n_g, n_ch = pos.shape[0], AA.shape[1], gg.shape[0]
    for s in range(k_dt.shape[0] - 1, -1, -1):
        j = out_at[s]
        if j >= 0:
            for k in range(n_comp):
                for l in range(nl):
                    x = rv[ridx[l], j, k]
                    if reset_at[s] and x == x:
                        lv[pos[k], l] = 0.0  # the value came from data
                    lv[pos[k], l] += gout[l, k, j]
        y, w = X[s], W[s]
        _conductance(gates, gm, ee, y, g_sum, ge_sum)
        for i in range(n):
            c_i, k, dg_i, di, mi, lvi = k_dt[s] * cm[i], pub[i], diag[i], d[i], mu[i], lv[i]
            if k < n_comp:
                o = k * nl
                for l in range(nl):
                    di[l] = c_i + g_sum[o + l] + dg_i
                    mi[l] = 2.0 * lvi[l]
            else:
                for l in range(nl):
                    di[l] = c_i + 0.0 + dg_i
                    mi[l] = 2.0 * lvi[l]
        _solve(parent, tb, ta, d, mu)  # Mᵀ μ = 2 λ_v'
        for i in range(n):
            c_i, mi, lvi = k_dt[s] * cm[i], mu[i], lv[i]
            for l in range(nl):
                lvi[l] = c_i * mi[l] - lvi[l]
        for k in range(n_comp):  # μ and w at the compartments
            mk, wk, o = mu[pos[k]], w[pos[k]], k * nl
            for l in range(nl):
                muc[o + l] = mk[l]
                wc[o + l] = wk[l]
        _conductance_adjoint(gates, gm, ee, y, muc, wc, gg, ly, dy)
        for x in range(lvc.shape[0]):
            lvc[x] = 0.0
        for jg in range(n_g):  # through the gate update: ∂y'/∂v = D, ∂y'/∂y = A
            lyj, dj, aj = ly[jg], DD[s, jg], AA[s, jg]
            for x in range(lvc.shape[0]):
                lvc[x] += dj[x] * lyj[x]
                lyj[x] *= aj[x]
        for k in range(n_comp):
            lvk, o = lv[pos[k]], k * nl
            for l in range(nl):
                lvk[l] += lvc[o + l]
    for c in range(n_ch):
        for k in range(n_comp):
            for l in range(nl):
                grad[l, c, 0, k] = gg[c, 0, k * nl + l]
                grad[l, c, 1, k] = gg[c, 1, k * nl + l]


@njit(**_JIT)
def _tangent_chunk(tree, gates, steps, data, hist, wrt, dout, work):
    """Forward sensitivities of one chunk from a stored forward pass: ``dout [lane, p, comp,
    time] = ∂V/∂g`` for ``p = a·n_comp + k``, the ``g`` of channel ``wrt[a]`` at compartment
    ``k``. Tangents ``δv [p, node, lane]``, ``δy [p, gate, comp·lane]`` follow the forward step:
    ``δy' = A δy + D δv``, ``M δw = Σ_c δG_c (e_c − w) + k·cm·δv``, ``δv' = 2δw − δv``."""
    parent, ta, tb, diag, cm, pub, pos = tree
    k_dt, _, _, out_at, reset_at = steps
    _, _, rv, ridx, gm, ee = data
    W, X, AA, DD = hist
    dv, dy, d, r, o, dgs, dge, dvc, g_sum, ge_sum = work  # o: G/g, ∂G/∂y_a, ∂G/∂y_b
    ga, pa, gb, pb = gates
    n_p, n, nl = dv.shape
    n_comp, n_g, n_ch = pos.shape[0], AA.shape[1], ga.shape[0]
    m = n_comp * nl
    for p in range(n_p):
        for k in range(n_comp):
            for l in range(nl):
                dout[l, p, k, 0] = 0.0
    for s in range(k_dt.shape[0]):
        y, w, aa, dd = X[s], W[s], AA[s], DD[s]
        _conductance(gates, gm, ee, y, g_sum, ge_sum)
        for c in range(n_ch):  # per channel, the same for every tangent
            oc, oa, ob, gmc = o[0, c], o[1, c], o[2, c], gm[c]
            ya, yb, p_, q_, fp, fq = y[ga[c]], y[gb[c]], pa[c], pb[c], float(pa[c]), float(pb[c])
            for x in range(m):
                oc[x] = _ipow(ya[x], p_) * _ipow(yb[x], q_)
            for x in range(m):
                oa[x] = 0.0
                ob[x] = 0.0
            if p_ > 0:
                for x in range(m):
                    oa[x] = gmc[x] * (fp * _ipow(ya[x], p_ - 1)) * _ipow(yb[x], q_)
            if q_ > 0:
                for x in range(m):
                    ob[x] = gmc[x] * _ipow(ya[x], p_) * (fq * _ipow(yb[x], q_ - 1))
        j = out_at[s]
        for p in range(n_p):
            dvp, dyp, ch, k0 = dv[p], dy[p], wrt[p // n_comp], p % n_comp
            for k in range(n_comp):
                vk, off = dvp[pos[k]], k * nl
                for l in range(nl):
                    dvc[off + l] = vk[l]
            for jg in range(n_g):
                yj, aj, dj = dyp[jg], aa[jg], dd[jg]
                for x in range(m):
                    yj[x] = aj[x] * yj[x] + dj[x] * dvc[x]
            for x in range(m):
                dgs[x] = 0.0
                dge[x] = 0.0
            for c in range(n_ch):
                eec, oa, ob, dya, dyb = ee[c], o[1, c], o[2, c], dyp[ga[c]], dyp[gb[c]]
                if pa[c] > 0 or pb[c] > 0:
                    for x in range(m):
                        g = oa[x] * dya[x] + ob[x] * dyb[x]
                        dgs[x] += g
                        dge[x] += g * eec[x]
                if c == ch:  # the seed: ∂G_c/∂g_c = G_c/g_c at compartment k0
                    oc, off = o[0, c], k0 * nl
                    for l in range(nl):
                        dgs[off + l] += oc[off + l]
                        dge[off + l] += oc[off + l] * eec[off + l]
            for i in range(n):
                c_i, k, dg_i, di, ri, wi, vi = (
                    k_dt[s] * cm[i],
                    pub[i],
                    diag[i],
                    d[i],
                    r[i],
                    w[i],
                    dvp[i],
                )
                if k < n_comp:
                    off = k * nl
                    for l in range(nl):
                        di[l] = c_i + g_sum[off + l] + dg_i
                        ri[l] = dge[off + l] - dgs[off + l] * wi[l] + c_i * vi[l]
                else:
                    for l in range(nl):
                        di[l] = c_i + 0.0 + dg_i
                        ri[l] = c_i * vi[l]
            _solve(parent, ta, tb, d, r)
            for i in range(n):
                vi, ri = dvp[i], r[i]
                for l in range(nl):
                    vi[l] = 2.0 * ri[l] - vi[l]
            if j >= 0:
                for k in range(n_comp):
                    for l in range(nl):
                        dout[l, p, k, j] = dvp[pos[k], l]
                        if reset_at[s] and rv[ridx[l], j, k] == rv[ridx[l], j, k]:
                            dvp[pos[k], l] = 0.0  # the value came from data
