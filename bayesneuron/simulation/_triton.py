"""The Triton source of :mod:`.gpu_kernel` (imported only when it runs: Triton is optional).

One program = ``BLOCK`` lanes; every array index below is the C kernel's
(``_ckernels.c``, ``forward_chunk``) with ``[…, lane]`` scratch rows of length ``B``:
``v``, ``d``, ``w`` ``[node]``, gates ``y`` ``[gate, comp]``, ``g_sum``, ``ge_sum``,
``i_inj`` ``[comp]``. Rate forms: 0 softplus, 1 exponential, 2 sigmoid, 3 linoid,
4 constant; gate kinds: 0 α/β, 1 x∞ and τ, 2 x∞ with 1/τ = α + β.
"""

import triton
import triton.language as tl


@triton.jit
def _rate(sp, vs):
    """One rate row ``(form, scale, a, b)`` at ``sp``: the rate at voltages ``vs`` and its
    derivative in ``v``."""
    form = tl.load(sp)
    scale = tl.load(sp + 1)
    a = tl.load(sp + 2)
    b = tl.load(sp + 3)
    if form == 0.0:  # softplus
        x = vs * a + b
        u = tl.exp(-tl.abs(x))
        r = (tl.maximum(x, 0.0) + tl.log(1.0 + u)) * scale
        dr = scale * a * (tl.where(x > 0.0, 1.0, u) / (1.0 + u))
    elif form == 1.0:  # exponential
        r = scale * tl.exp((a - vs) / b)
        dr = -r / b
    elif form == 2.0:  # sigmoid
        sig = 1.0 / (1.0 + tl.exp((a - vs) / b))
        r = scale * sig
        dr = scale * sig * (1.0 - sig) / b
    elif form == 4.0:  # constant
        r = vs * 0.0 + scale
        dr = vs * 0.0
    else:  # linoid b·u/(exp(u) − 1), u = (a − v)/b, by its series near u = 0
        u = (a - vs) / b
        u2 = u * u
        series = (1.0 - 0.5 * u) + u2 * (
            1.0 / 12.0 + u2 * (-1.0 / 720.0 + u2 * (1.0 / 30240.0 + u2 * (-1.0 / 1209600.0)))
        )
        d_series = -0.5 + u * (
            1.0 / 6.0 + u2 * (-1.0 / 180.0 + u2 * (1.0 / 5040.0 + u2 * (-1.0 / 151200.0)))
        )
        near = tl.abs(u) < 0.1
        i_em1 = 1.0 / (tl.exp(tl.where(near, 1.0, u)) - 1.0)
        r = scale * b * tl.where(near, series, u * i_em1)
        dr = -scale * tl.where(near, d_series, i_em1 * ((1.0 - u) - u * i_em1))
    return r, dr


@triton.jit
def _pow(x, p):
    """``x^p`` for an integer ``p`` in 0…4, by the C kernel's products."""
    x2 = x * x
    r = tl.where(p == 1, x, x * 0.0 + 1.0)
    r = tl.where(p == 2, x2, r)
    r = tl.where(p == 3, x2 * x, r)
    return tl.where(p == 4, x2 * x2, r)


@triton.jit
def _gates(spec, gcf, y_s, x_at, a_at, d_at, j, c, vc, h, nc, B, lanes, mask, STORE: tl.constexpr):
    """Gate ``j`` of compartment ``c`` one exponential-Euler step at voltage ``vc``; with
    ``STORE``, the new value, ``A = ∂y'/∂y`` and ``D = ∂y'/∂v`` to the step's history rows
    ``x_at``, ``a_at``, ``d_at`` ``[gate, comp, lane]``."""
    shift = tl.load(gcf + j * 4)
    eps = tl.load(gcf + j * 4 + 1)
    phi = tl.load(gcf + j * 4 + 2)
    kind = tl.load(gcf + j * 4 + 3)
    vs = vc + shift
    r0, d0 = _rate(spec + j * 12, vs)
    r1, d1 = _rate(spec + j * 12 + 4, vs)
    if kind == 0.0:
        s = r0 + r1 + eps
        inf = r0 / s
        ds = d0 + d1
        dinf = (d0 - inf * ds) / s
    elif kind == 1.0:
        s = 1.0 / r1
        inf = r0
        ds = -d1 * s * s
        dinf = d0
    else:
        r2, d2 = _rate(spec + j * 12 + 8, vs)
        s = r1 + r2 + eps
        inf = r0
        ds = d1 + d2
        dinf = d0
    row = (j * nc + c) * B + lanes
    y = tl.load(y_s + row, mask=mask)
    big_a = tl.exp(h * phi * s)
    y_new = tl.where(big_a < 0.5, inf + big_a * (y - inf), y - (y - inf) * (1.0 - big_a))
    tl.store(y_s + row, y_new, mask=mask)
    if STORE:
        tl.store(x_at + row, y_new, mask=mask)
        tl.store(a_at + row, big_a, mask=mask)
        d_val = dinf * (1.0 - big_a) + (y - inf) * (big_a * h * phi * ds)
        tl.store(d_at + row, d_val, mask=mask)


@triton.jit
def _conductance(ga, pa, gb, pb, par, e_shift, prow, y, c, nc, n_ch, B, lanes, mask, zero):
    """``Σ G_c`` and ``Σ G_c e_c`` of compartment ``c`` for the gates ``y`` ``[gate, comp,
    lane]`` (the C kernel's ``conductance``)."""
    g_sum = zero
    ge_sum = zero
    for k in range(n_ch):
        ya = tl.load(y + (tl.load(ga + k) * nc + c) * B + lanes, mask=mask, other=0.0)
        yb = tl.load(y + (tl.load(gb + k) * nc + c) * B + lanes, mask=mask, other=0.0)
        row = (prow * n_ch + k) * 2 * nc + c
        gm = tl.load(par + row, mask=mask, other=0.0)
        ee = tl.load(par + row + nc, mask=mask, other=0.0) - tl.load(e_shift + k)
        gg = gm * (_pow(ya, tl.load(pa + k)) * _pow(yb, tl.load(pb + k)))
        g_sum += gg
        ge_sum += gg * ee
    return g_sum, ge_sum


@triton.jit
def _channels(spec, gcf, ga, pa, gb, pb, par, e_shift, prow, v_s, y_s, gs_s, ge_s, pos, h,
              x_at, a_at, d_at, nc, n_g, n_ch, B, lanes, mask, zero,
              STORE: tl.constexpr):  # fmt: skip
    """Every gate one step at the previous voltage, then each compartment's ``Σ G_c`` and
    ``Σ G_c e_c`` (to ``gs_s``, ``ge_s``)."""
    for c in range(nc):  # gates, then conductances (each compartment on its own)
        vc = tl.load(v_s + tl.load(pos + c) * B + lanes, mask=mask, other=0.0)
        for j in range(n_g):
            _gates(spec, gcf, y_s, x_at, a_at, d_at, j, c, vc, h, nc, B, lanes, mask, STORE)
        g_sum, ge_sum = _conductance(ga, pa, gb, pb, par, e_shift, prow, y_s, c, nc, n_ch,
                                     B, lanes, mask, zero)  # fmt: skip
        tl.store(gs_s + c * B + lanes, g_sum, mask=mask)
        tl.store(ge_s + c * B + lanes, ge_sum, mask=mask)


@triton.jit
def _tree_solve(parent, lo, up, d_s, r_s, n, B, lanes, mask):
    """Solve the tree system with diagonal ``d_s`` and off-diagonals ``lo``/``up`` for the
    right-hand side ``r_s`` in place (Hines: eliminate leaves first, then substitute from
    the root); ``d_s`` is overwritten. The adjoint passes ``lo`` and ``up`` swapped (Mᵀ)."""
    for q in range(n - 1):
        i = n - 1 - q
        p = tl.load(parent + i)
        f = tl.load(up + i) / tl.load(d_s + i * B + lanes, mask=mask, other=1.0)
        dp = tl.load(d_s + p * B + lanes, mask=mask, other=1.0)
        rp = tl.load(r_s + p * B + lanes, mask=mask, other=0.0)
        ri = tl.load(r_s + i * B + lanes, mask=mask, other=0.0)
        tl.store(d_s + p * B + lanes, dp - tl.load(lo + i) * f, mask=mask)
        tl.store(r_s + p * B + lanes, rp - f * ri, mask=mask)
    r0 = tl.load(r_s + lanes, mask=mask, other=0.0) / tl.load(d_s + lanes, mask=mask, other=1.0)
    tl.store(r_s + lanes, r0, mask=mask)
    for i in range(1, n):
        rp = tl.load(r_s + tl.load(parent + i) * B + lanes, mask=mask, other=0.0)
        ri = tl.load(r_s + i * B + lanes, mask=mask, other=0.0)
        di = tl.load(d_s + i * B + lanes, mask=mask, other=1.0)
        tl.store(r_s + i * B + lanes, (ri - tl.load(lo + i) * rp) / di, mask=mask)


@triton.jit
def _diagonal(cm, diag, pub, gs_s, kdt, i, nc, B, lanes, mask):
    """``k·cm + Σ G_c + diag`` of node ``i`` (no channels on a node without compartment),
    ``k·cm``, whether it has a compartment and that compartment's row (0 if none)."""
    c_i = kdt * tl.load(cm + i)
    kk = tl.load(pub + i)
    has = kk < nc
    kc = tl.where(has, kk, 0)
    gsum = tl.where(has, tl.load(gs_s + kc * B + lanes, mask=mask, other=0.0), 0.0)
    return c_i + gsum + tl.load(diag + i), c_i, has, kc


@triton.jit
def _voltage(parent, ta, tb, diag, cm, pub, v_s, d_s, w_s, gs_s, ge_s, ii_s, kdt, w_at,
             n, nc, B, lanes, mask, STORE: tl.constexpr):  # fmt: skip
    """The Crank–Nicolson half step: assemble ``M w = i + Σ G_c e_c + k·cm·v``, solve it on
    the tree, ``v ← 2w − v`` (with ``STORE``, ``w`` to the step's history row ``w_at``)."""
    for i in range(n):
        d_i, c_i, has, kc = _diagonal(cm, diag, pub, gs_s, kdt, i, nc, B, lanes, mask)
        gesum = tl.where(has, tl.load(ge_s + kc * B + lanes, mask=mask, other=0.0), 0.0)
        inj = tl.where(has, tl.load(ii_s + kc * B + lanes, mask=mask, other=0.0), 0.0)
        vi = tl.load(v_s + i * B + lanes, mask=mask, other=0.0)
        tl.store(d_s + i * B + lanes, d_i, mask=mask)
        tl.store(w_s + i * B + lanes, inj + gesum + c_i * vi, mask=mask)
    _tree_solve(parent, ta, tb, d_s, w_s, n, B, lanes, mask)
    for i in range(n):
        wi = tl.load(w_s + i * B + lanes, mask=mask, other=0.0)
        vi = tl.load(v_s + i * B + lanes, mask=mask, other=0.0)
        tl.store(v_s + i * B + lanes, 2.0 * wi - vi, mask=mask)
        if STORE:
            tl.store(w_at + i * B + lanes, wi, mask=mask)


@triton.jit
def cn_forward(
    parent, ta, tb, diag, cm, pub, pos,
    spec, gcf, ga, pa, gb, pb, y0,
    k_dt, neg_h, cols, out_at, reset_at,
    cur, sites, sidx, rv, ridx,
    par, pidx, e_shift, v0_ptr, out, scratch,
    W, X, AA, DD, strides,
    B, n, nc, n_g, n_gx, n_ch, s_lo, s_hi, bins, n_time, rv_time, n_sites,
    BLOCK: tl.constexpr, STORE: tl.constexpr, INIT: tl.constexpr,
):  # fmt: skip
    """Steps ``s_lo … s_hi − 1`` of ``BLOCK`` lanes (module doc of :mod:`.gpu_kernel`), from
    the initial state (``INIT``) or from the state the scratch holds (a resumed segment);
    with ``STORE``, the history the adjoint reads, indexed from ``s_lo``: ``W`` ``[step, node,
    lane]``, ``X`` ``[step, gate, comp, lane]`` (gates after the step), ``AA``, ``DD``
    ``[step, gate, comp, lane]``; ``strides`` (int64): the elements per step of ``W``, ``X``,
    ``AA``/``DD``."""
    lanes = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = lanes < B
    lanes64 = lanes.to(tl.int64)
    v_s = scratch
    d_s = scratch + n * B
    w_s = scratch + 2 * n * B
    y_s = scratch + 3 * n * B
    gs_s = y_s + n_gx * nc * B
    ge_s = gs_s + nc * B
    ii_s = ge_s + nc * B
    prow = tl.load(pidx + lanes, mask=mask, other=0)
    srow = tl.load(sidx + lanes, mask=mask, other=0)
    rrow = tl.load(ridx + lanes, mask=mask, other=0)
    v0 = tl.load(v0_ptr)
    zero = tl.zeros([BLOCK], dtype=out.dtype.element_ty)
    if INIT:
        for i in range(n):
            tl.store(v_s + i * B + lanes, zero + v0, mask=mask)
        for j in range(n_gx):
            y0j = tl.load(y0 + j)
            for c in range(nc):
                tl.store(y_s + (j * nc + c) * B + lanes, zero + y0j, mask=mask)
        for c in range(nc):
            tl.store(out + (lanes64 * nc + c) * n_time, zero + v0, mask=mask)
    for s in range(s_lo, s_hi):
        h = tl.load(neg_h + s)
        kdt = tl.load(k_dt + s)
        col = tl.load(cols + s)
        for c in range(nc):
            tl.store(ii_s + c * B + lanes, zero, mask=mask)
        for j in range(n_sites):
            x = tl.load(cur + (srow * bins + col) * n_sites + j, mask=mask, other=0.0)
            tl.store(ii_s + tl.load(sites + j) * B + lanes, x, mask=mask)
        x_at = X + (s - s_lo) * tl.load(strides + 1)
        a_at = AA + (s - s_lo) * tl.load(strides + 2)
        d_at = DD + (s - s_lo) * tl.load(strides + 2)
        _channels(spec, gcf, ga, pa, gb, pb, par, e_shift, prow, v_s, y_s, gs_s, ge_s, pos, h,
                  x_at, a_at, d_at, nc, n_g, n_ch, B, lanes, mask, zero, STORE)  # fmt: skip
        _voltage(parent, ta, tb, diag, cm, pub, v_s, d_s, w_s, gs_s, ge_s, ii_s, kdt,
                 W + (s - s_lo) * tl.load(strides), n, nc, B, lanes, mask, STORE)  # fmt: skip
        jo = tl.load(out_at + s)
        if jo >= 0:
            reset = tl.load(reset_at + s)
            for c in range(nc):
                at = v_s + tl.load(pos + c) * B + lanes
                vv = tl.load(at, mask=mask, other=0.0)
                tl.store(out + (lanes64 * nc + c) * n_time + jo, vv, mask=mask)
                if reset != 0:
                    x = tl.load(rv + (rrow * rv_time + jo) * nc + c, mask=mask, other=0.0)
                    tl.store(at, tl.where(x == x, x, vv), mask=mask)


@triton.jit
def _channel_adjoint(ga, pa, gb, pb, par, e_shift, prow, x_at, ly_s, gg_s, muc, wc, c,
                     nc, n_ch, B, lanes, mask):  # fmt: skip
    """Compartment ``c``'s channels: ``∂L/∂g``, ``∂L/∂e`` into ``gg_s`` ``[channel, 2, comp,
    lane]`` and ``∂L/∂y`` into ``ly_s`` from ``μ`` and ``w`` at its node (``muc``, ``wc``)."""
    for k in range(n_ch):
        ja = tl.load(ga + k)
        jb = tl.load(gb + k)
        p_a = tl.load(pa + k)
        p_b = tl.load(pb + k)
        ya = tl.load(x_at + (ja * nc + c) * B + lanes, mask=mask, other=0.0)
        yb = tl.load(x_at + (jb * nc + c) * B + lanes, mask=mask, other=0.0)
        row = (prow * n_ch + k) * 2 * nc + c
        gm = tl.load(par + row, mask=mask, other=0.0)
        ee = tl.load(par + row + nc, mask=mask, other=0.0) - tl.load(e_shift + k)
        o = _pow(ya, p_a) * _pow(yb, p_b)
        dgv = muc * (ee - wc)
        g0 = gg_s + (k * 2 * nc + c) * B + lanes
        g1 = g0 + nc * B
        tl.store(g0, tl.load(g0, mask=mask, other=0.0) + dgv * o, mask=mask)
        tl.store(g1, tl.load(g1, mask=mask, other=0.0) + muc * (gm * o), mask=mask)
        if p_a > 0:
            at = ly_s + (ja * nc + c) * B + lanes
            dy = dgv * gm * (p_a * _pow(ya, p_a - 1)) * _pow(yb, p_b)
            tl.store(at, tl.load(at, mask=mask, other=0.0) + dy, mask=mask)
        if p_b > 0:
            at = ly_s + (jb * nc + c) * B + lanes
            dy = dgv * gm * _pow(ya, p_a) * (p_b * _pow(yb, p_b - 1))
            tl.store(at, tl.load(at, mask=mask, other=0.0) + dy, mask=mask)


@triton.jit
def cn_adjoint(
    parent, ta, tb, diag, cm, pub, pos,
    ga, pa, gb, pb, k_dt, out_at, reset_at, rv, ridx,
    par, pidx, e_shift, gout, W, X, AA, DD, strides, scratch, grad,
    B, n, nc, n_g, n_gx, n_ch, s_lo, s_hi, n_time, rv_time,
    BLOCK: tl.constexpr, INIT: tl.constexpr,
):  # fmt: skip
    """The discrete adjoint of :func:`cn_forward` (the C kernel's ``adjoint_chunk``): steps
    ``s_hi − 1 … s_lo`` back from ``∂L/∂V`` ``gout`` ``[lane, comp, time]`` through their
    history (from ``s_lo``), the state zeroed (``INIT``) or carried in the scratch from the
    later segment; the sums so far to ``grad`` ``[lane, channel, 2, comp]`` (g, e)."""
    lanes = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = lanes < B
    lanes64 = lanes.to(tl.int64)
    lv_s = scratch
    d_s = scratch + n * B
    mu_s = scratch + 2 * n * B
    ly_s = scratch + 3 * n * B
    gg_s = ly_s + n_gx * nc * B
    gs_s = gg_s + n_ch * 2 * nc * B
    prow = tl.load(pidx + lanes, mask=mask, other=0)
    rrow = tl.load(ridx + lanes, mask=mask, other=0)
    zero = tl.zeros([BLOCK], dtype=grad.dtype.element_ty)
    if INIT:
        for i in range(n):
            tl.store(lv_s + i * B + lanes, zero, mask=mask)
        for x in range((n_gx + 2 * n_ch) * nc):  # λ_y and the gradient sums (contiguous)
            tl.store(ly_s + x * B + lanes, zero, mask=mask)
    for q in range(s_hi - s_lo):
        s = s_hi - 1 - q
        jo = tl.load(out_at + s)
        if jo >= 0:
            reset = tl.load(reset_at + s)
            for c in range(nc):
                at = lv_s + tl.load(pos + c) * B + lanes
                lam = tl.load(at, mask=mask, other=0.0)
                if reset != 0:  # a reset node's value came from data
                    x = tl.load(rv + (rrow * rv_time + jo) * nc + c, mask=mask, other=0.0)
                    lam = tl.where(x == x, 0.0, lam)
                g = tl.load(gout + (lanes64 * nc + c) * n_time + jo, mask=mask, other=0.0)
                tl.store(at, lam + g, mask=mask)
        kdt, x_at = tl.load(k_dt + s), X + (s - s_lo) * tl.load(strides + 1)
        a_at, d_at = AA + (s - s_lo) * tl.load(strides + 2), DD + (s - s_lo) * tl.load(strides + 2)
        w_at = W + (s - s_lo) * tl.load(strides)
        for c in range(nc):  # Σ G_c at the step's gates
            g_sum, _ = _conductance(ga, pa, gb, pb, par, e_shift, prow, x_at, c, nc, n_ch,
                                    B, lanes, mask, zero)  # fmt: skip
            tl.store(gs_s + c * B + lanes, g_sum, mask=mask)
        for i in range(n):  # Mᵀμ = 2λ_v
            d_i, c_i, has, kc = _diagonal(cm, diag, pub, gs_s, kdt, i, nc, B, lanes, mask)
            tl.store(d_s + i * B + lanes, d_i, mask=mask)
            lam = tl.load(lv_s + i * B + lanes, mask=mask, other=0.0)
            tl.store(mu_s + i * B + lanes, 2.0 * lam, mask=mask)
        _tree_solve(parent, tb, ta, d_s, mu_s, n, B, lanes, mask)
        for i in range(n):  # λ_v = −λ_v' + k·cm·μ
            mu = tl.load(mu_s + i * B + lanes, mask=mask, other=0.0)
            lam = tl.load(lv_s + i * B + lanes, mask=mask, other=0.0)
            tl.store(lv_s + i * B + lanes, kdt * tl.load(cm + i) * mu - lam, mask=mask)
        for c in range(nc):  # channels, then the gates back to the previous voltage
            node = tl.load(pos + c)
            muc = tl.load(mu_s + node * B + lanes, mask=mask, other=0.0)
            wc = tl.load(w_at + node * B + lanes, mask=mask, other=0.0)
            _channel_adjoint(ga, pa, gb, pb, par, e_shift, prow, x_at, ly_s, gg_s, muc, wc, c,
                             nc, n_ch, B, lanes, mask)  # fmt: skip
            lvc = zero
            for j in range(n_g):
                row = (j * nc + c) * B + lanes
                lyj = tl.load(ly_s + row, mask=mask, other=0.0)
                lvc += tl.load(d_at + row, mask=mask, other=0.0) * lyj
                tl.store(ly_s + row, lyj * tl.load(a_at + row, mask=mask, other=0.0), mask=mask)
            at = lv_s + node * B + lanes
            tl.store(at, tl.load(at, mask=mask, other=0.0) + lvc, mask=mask)
    for x in range(n_ch * 2 * nc):  # [channel, 2, comp] per lane
        val = tl.load(gg_s + x * B + lanes, mask=mask, other=0.0)
        tl.store(grad + lanes64 * (n_ch * 2 * nc) + x, val, mask=mask)
