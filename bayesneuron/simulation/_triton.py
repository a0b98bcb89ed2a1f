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
    """One rate row ``(form, scale, a, b)`` at ``sp`` of the voltages ``vs``."""
    form = tl.load(sp)
    scale = tl.load(sp + 1)
    a = tl.load(sp + 2)
    b = tl.load(sp + 3)
    if form == 0.0:  # softplus
        x = vs * a + b
        r = (tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))) * scale
    elif form == 1.0:  # exponential
        r = scale * tl.exp((a - vs) / b)
    elif form == 2.0:  # sigmoid
        r = scale / (1.0 + tl.exp((a - vs) / b))
    elif form == 4.0:  # constant
        r = vs * 0.0 + scale
    else:  # linoid b·u/(exp(u) − 1), u = (a − v)/b, by its series near u = 0
        u = (a - vs) / b
        u2 = u * u
        series = (1.0 - 0.5 * u) + u2 * (
            1.0 / 12.0 + u2 * (-1.0 / 720.0 + u2 * (1.0 / 30240.0 + u2 * (-1.0 / 1209600.0)))
        )
        near = tl.abs(u) < 0.1
        closed = u / (tl.exp(tl.where(near, 1.0, u)) - 1.0)
        r = scale * b * tl.where(near, series, closed)
    return r


@triton.jit
def _pow(x, p):
    """``x^p`` for an integer ``p`` in 0…4, by the C kernel's products."""
    x2 = x * x
    r = tl.where(p == 1, x, x * 0.0 + 1.0)
    r = tl.where(p == 2, x2, r)
    r = tl.where(p == 3, x2 * x, r)
    return tl.where(p == 4, x2 * x2, r)


@triton.jit
def _gates(spec, gcf, y_s, j, c, vc, h, nc, B, lanes, mask):
    """Gate ``j`` of compartment ``c`` one exponential-Euler step at voltage ``vc``."""
    shift = tl.load(gcf + j * 4)
    eps = tl.load(gcf + j * 4 + 1)
    phi = tl.load(gcf + j * 4 + 2)
    kind = tl.load(gcf + j * 4 + 3)
    vs = vc + shift
    r0 = _rate(spec + j * 12, vs)
    r1 = _rate(spec + j * 12 + 4, vs)
    if kind == 0.0:
        s = r0 + r1 + eps
        inf = r0 / s
    elif kind == 1.0:
        s = 1.0 / r1
        inf = r0
    else:
        s = r1 + _rate(spec + j * 12 + 8, vs) + eps
        inf = r0
    at = y_s + (j * nc + c) * B + lanes
    y = tl.load(at, mask=mask)
    big_a = tl.exp(h * phi * s)
    y_new = tl.where(big_a < 0.5, inf + big_a * (y - inf), y - (y - inf) * (1.0 - big_a))
    tl.store(at, y_new, mask=mask)


@triton.jit
def _channels(spec, gcf, ga, pa, gb, pb, par, e_shift, prow, v_s, y_s, gs_s, ge_s, pos, h,
              nc, n_g, n_ch, B, lanes, mask, zero):  # fmt: skip
    """Every gate one step at the previous voltage, then each compartment's ``Σ G_c`` and
    ``Σ G_c e_c`` (to ``gs_s``, ``ge_s``)."""
    for c in range(nc):  # gates, then conductances (each compartment on its own)
        vc = tl.load(v_s + tl.load(pos + c) * B + lanes, mask=mask, other=0.0)
        for j in range(n_g):
            _gates(spec, gcf, y_s, j, c, vc, h, nc, B, lanes, mask)
        g_sum = zero
        ge_sum = zero
        for k in range(n_ch):
            ya = tl.load(y_s + (tl.load(ga + k) * nc + c) * B + lanes, mask=mask, other=0.0)
            yb = tl.load(y_s + (tl.load(gb + k) * nc + c) * B + lanes, mask=mask, other=0.0)
            row = (prow * n_ch + k) * 2 * nc + c
            gm = tl.load(par + row, mask=mask, other=0.0)
            ee = tl.load(par + row + nc, mask=mask, other=0.0) - tl.load(e_shift + k)
            gg = gm * (_pow(ya, tl.load(pa + k)) * _pow(yb, tl.load(pb + k)))
            g_sum += gg
            ge_sum += gg * ee
        tl.store(gs_s + c * B + lanes, g_sum, mask=mask)
        tl.store(ge_s + c * B + lanes, ge_sum, mask=mask)


@triton.jit
def _voltage(parent, ta, tb, diag, cm, pub, v_s, d_s, w_s, gs_s, ge_s, ii_s, kdt,
             n, nc, B, lanes, mask):  # fmt: skip
    """The Crank–Nicolson half step: assemble ``M w = …``, solve it on the tree (Hines),
    ``v ← 2w − v``."""
    for i in range(n):  # the Crank–Nicolson system of the half step
        c_i = kdt * tl.load(cm + i)
        kk = tl.load(pub + i)
        has = kk < nc
        kc = tl.where(has, kk, 0)
        vi = tl.load(v_s + i * B + lanes, mask=mask, other=0.0)
        gsum = tl.where(has, tl.load(gs_s + kc * B + lanes, mask=mask, other=0.0), 0.0)
        gesum = tl.where(has, tl.load(ge_s + kc * B + lanes, mask=mask, other=0.0), 0.0)
        inj = tl.where(has, tl.load(ii_s + kc * B + lanes, mask=mask, other=0.0), 0.0)
        tl.store(d_s + i * B + lanes, c_i + gsum + tl.load(diag + i), mask=mask)
        tl.store(w_s + i * B + lanes, inj + gesum + c_i * vi, mask=mask)
    for q in range(n - 1):  # Hines elimination, leaves first
        i = n - 1 - q
        p = tl.load(parent + i)
        f = tl.load(tb + i) / tl.load(d_s + i * B + lanes, mask=mask, other=1.0)
        dp = tl.load(d_s + p * B + lanes, mask=mask, other=1.0)
        wp = tl.load(w_s + p * B + lanes, mask=mask, other=0.0)
        wi = tl.load(w_s + i * B + lanes, mask=mask, other=0.0)
        tl.store(d_s + p * B + lanes, dp - tl.load(ta + i) * f, mask=mask)
        tl.store(w_s + p * B + lanes, wp - f * wi, mask=mask)
    w0 = tl.load(w_s + lanes, mask=mask, other=0.0) / tl.load(d_s + lanes, mask=mask, other=1.0)
    tl.store(w_s + lanes, w0, mask=mask)
    for i in range(1, n):  # and back substitution from the root
        wp = tl.load(w_s + tl.load(parent + i) * B + lanes, mask=mask, other=0.0)
        wi = tl.load(w_s + i * B + lanes, mask=mask, other=0.0)
        di = tl.load(d_s + i * B + lanes, mask=mask, other=1.0)
        tl.store(w_s + i * B + lanes, (wi - tl.load(ta + i) * wp) / di, mask=mask)
    for i in range(n):
        wi = tl.load(w_s + i * B + lanes, mask=mask, other=0.0)
        vi = tl.load(v_s + i * B + lanes, mask=mask, other=0.0)
        tl.store(v_s + i * B + lanes, 2.0 * wi - vi, mask=mask)


@triton.jit
def cn_forward(
    parent, ta, tb, diag, cm, pub, pos,
    spec, gcf, ga, pa, gb, pb, y0,
    k_dt, neg_h, cols, out_at, reset_at,
    cur, sites, sidx, rv, ridx,
    par, pidx, e_shift, v0_ptr, out, scratch,
    B, n, nc, n_g, n_gx, n_ch, n_steps, bins, n_time, rv_time, n_sites,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Every step of ``BLOCK`` lanes (module doc of :mod:`.gpu_kernel`)."""
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
    for i in range(n):
        tl.store(v_s + i * B + lanes, zero + v0, mask=mask)
    for j in range(n_gx):
        y0j = tl.load(y0 + j)
        for c in range(nc):
            tl.store(y_s + (j * nc + c) * B + lanes, zero + y0j, mask=mask)
    for c in range(nc):
        tl.store(out + (lanes64 * nc + c) * n_time, zero + v0, mask=mask)
    for s in range(n_steps):
        h = tl.load(neg_h + s)
        kdt = tl.load(k_dt + s)
        col = tl.load(cols + s)
        for c in range(nc):
            tl.store(ii_s + c * B + lanes, zero, mask=mask)
        for j in range(n_sites):
            x = tl.load(cur + (srow * bins + col) * n_sites + j, mask=mask, other=0.0)
            tl.store(ii_s + tl.load(sites + j) * B + lanes, x, mask=mask)
        _channels(spec, gcf, ga, pa, gb, pb, par, e_shift, prow, v_s, y_s, gs_s, ge_s, pos, h,
                  nc, n_g, n_ch, B, lanes, mask, zero)  # fmt: skip
        _voltage(parent, ta, tb, diag, cm, pub, v_s, d_s, w_s, gs_s, ge_s, ii_s, kdt,
                 n, nc, B, lanes, mask)  # fmt: skip
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
