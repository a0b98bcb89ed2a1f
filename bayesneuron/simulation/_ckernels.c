/* The fused Crank–Nicolson kernels in C (scheme and layouts: fused.py), compiled at first use
 * by the system C compiler (_ckernels.py). Rate forms (codes as in bayesneuron/channels/rates.py):
 * 0 softplus, 1 exponential, 2 sigmoid, 3 linoid, 4 constant. Gate kinds (channels/base.py,
 * Gate.table): 0 α/β, 1 x∞ and τ, 2 x∞ with 1/τ = α + β; three rate rows per gate.
 * Arrays arrive as one table of pointers in the order of the Python wrappers' arguments, sizes
 * in a table of int64. Lane loops carry `omp simd` (compiled with -fopenmp-simd: vectorisation
 * only, no threads).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef int64_t i64;
#define SIMD _Pragma("omp simd")

/* ------------------------------------------------------------------ vectorisable math */
static const double MAGIC = 6755399441055744.0; /* 1.5·2^52 */
static const double INV_LN2 = 1.4426950408889634;
static const double LN2 = 0.6931471805599453;
static const double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;
static const double EXP_MAX = 709.782712893384, EXP_MIN = -708.0;
static const double C[14] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720,
                             1.0 / 5040, 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800,
                             1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};

static inline double half_pow2(double t) { /* 2^(k-1) for t = k + MAGIC */
    i64 b;
    memcpy(&b, &t, 8);
    b = (b + 1022) << 52;
    double h;
    memcpy(&h, &b, 8);
    return h;
}

static inline double exp_(double x) {
    double xc = x < EXP_MIN ? EXP_MIN : (x > EXP_MAX ? EXP_MAX : x);
    double t = xc * INV_LN2 + MAGIC;
    double k = t - MAGIC;
    double r = (xc - k * LN2_HI) - k * LN2_LO;
    double r2 = r * r, r4 = r2 * r2;
    double p0 = C[0] + C[1] * r + (C[2] + C[3] * r) * r2;
    double p1 = C[4] + C[5] * r + (C[6] + C[7] * r) * r2;
    double lo = p0 + p1 * r4;
    double hi = (C[8] + C[9] * r + (C[10] + C[11] * r) * r2) + (C[12] + C[13] * r) * r4;
    double y = (lo + hi * (r4 * r4)) * half_pow2(t) * 2.0;
    y = x > EXP_MAX ? INFINITY : y;
    return x < EXP_MIN ? 0.0 : y;
}

static inline double expm1_(double x) {
    double xc = x < EXP_MIN ? EXP_MIN : (x > EXP_MAX ? EXP_MAX : x);
    double t = xc * INV_LN2 + MAGIC;
    double k = t - MAGIC;
    double r = (xc - k * LN2_HI) - k * LN2_LO;
    double r2 = r * r, r4 = r2 * r2;
    double p0 = C[2] + C[3] * r + (C[4] + C[5] * r) * r2;
    double p1 = C[6] + C[7] * r + (C[8] + C[9] * r) * r2;
    double p2 = C[10] + C[11] * r + (C[12] + C[13] * r) * r2;
    double q = r + r2 * (p0 + p1 * r4 + p2 * (r4 * r4));
    double h = half_pow2(t);
    double y = (h * q + (h - 0.5)) * 2.0;
    y = x > EXP_MAX ? INFINITY : y;
    return x < EXP_MIN ? -1.0 : y;
}

static inline double log1p01(double u) { /* log1p(u), u in [0, 1] */
    static const double LC[9] = {2.0 / 19, 2.0 / 17, 2.0 / 15, 2.0 / 13, 2.0 / 11,
                                 2.0 / 9,  2.0 / 7,  2.0 / 5,  2.0 / 3};
    int big = u > 0.41421356237309503;
    double w = big ? (u - 1.0) * 0.5 : u;
    double t = w / (2.0 + w);
    double s = t * t, q = 0.0;
    for (int i = 0; i < 9; i++) q = (q + LC[i]) * s;
    double res = (t + t) + t * q;
    return big ? res + LN2 : res;
}

/* ------------------------------------------------------------------ channel kinetics */
/* u/expm1(u) = 1 - u/2 + u^2/12 - u^4/720 + u^6/30240 - u^8/1209600 + ... and its derivative:
 * the series below |u| = 0.1 (as rates.vtrap), the closed form above */
static const double F_VTRAP[4] = {1.0 / 12.0, -1.0 / 720.0, 1.0 / 30240.0, -1.0 / 1209600.0};
static const double D_VTRAP[5] = {-0.5, 1.0 / 6.0, -1.0 / 180.0, 1.0 / 5040.0, -1.0 / 151200.0};

static void rate(const double *spec, i64 m, const double *restrict vs, double *restrict rt,
                 double *restrict drt) {
    double form = spec[0], scale = spec[1], a = spec[2], b = spec[3];
    double ib = 1.0 / b;
    if (form == 0.0) { /* softplus */
        SIMD for (i64 l = 0; l < m; l++) {
            double x = vs[l] * a + b;
            double u = exp_(-fabs(x));
            int pos = x > 0.0;
            rt[l] = ((pos ? x : 0.0) + log1p01(u)) * scale;
            drt[l] = scale * a * ((pos ? 1.0 : u) / (1.0 + u));
        }
    } else if (form == 1.0) { /* exponential */
        SIMD for (i64 l = 0; l < m; l++) {
            double r = scale * exp_((a - vs[l]) * ib);
            rt[l] = r;
            drt[l] = r * -ib;
        }
    } else if (form == 2.0) { /* sigmoid */
        SIMD for (i64 l = 0; l < m; l++) {
            double sig = 1.0 / (1.0 + exp_((a - vs[l]) * ib));
            rt[l] = scale * sig;
            drt[l] = scale * sig * (1.0 - sig) * ib;
        }
    } else if (form == 4.0) { /* constant */
        SIMD for (i64 l = 0; l < m; l++) {
            rt[l] = scale;
            drt[l] = 0.0;
        }
    } else { /* linoid */
        const double *c = D_VTRAP, *f = F_VTRAP;
        SIMD for (i64 l = 0; l < m; l++) {
            double u = (a - vs[l]) * ib;
            double i_em1 = 1.0 / expm1_(u); /* inf at u = 0: that lane takes the series */
            int small = fabs(u) < 0.1;
            double u2 = u * u;
            double f_s = (1.0 - 0.5 * u) + u2 * (f[0] + u2 * (f[1] + u2 * (f[2] + u2 * f[3])));
            double d_s = c[0] + u * (c[1] + u2 * (c[2] + u2 * (c[3] + u2 * c[4])));
            double closed = i_em1 * ((1.0 - u) - u * i_em1);
            rt[l] = scale * b * (small ? f_s : u * i_em1);
            drt[l] = -scale * (small ? d_s : closed);
        }
    }
}

static void advance(const double *r, i64 m, double eps, double phi, double h,
                    const double *restrict y, double *restrict y_new, double *restrict ya,
                    double *restrict yd) {
    const double *r0 = r, *r1 = r + m, *r2 = r + 2 * m, *r3 = r + 3 * m;
    SIMD for (i64 l = 0; l < m; l++) {
        double a = r0[l], da = r2[l], ds = r2[l] + r3[l];
        double s = a + r1[l] + eps;
        double rs = 1.0 / s;
        double inf = a * rs;
        double big_a = exp_(h * phi * s);
        double y_old = y[l];
        double lo = inf + big_a * (y_old - inf), hi = y_old - (y_old - inf) * (1.0 - big_a);
        y_new[l] = big_a < 0.5 ? lo : hi;
        ya[l] = big_a;
        yd[l] = (da - inf * ds) * rs * (1.0 - big_a) + (y_old - inf) * (big_a * h * phi * ds);
    }
}

/* A gate with its own steady state (kinds 1 and 2, fused.py): rows r = (x∞, r1, r2) and their
 * slopes (d0, d1, d2). Kind 1: 1/τ = 1/r1 (r1 = τ); kind 2: 1/τ = r1 + r2 + eps (α + β). As
 * advance(), with ∂y'/∂v = x∞'·(1 − A) + (y − x∞)·A·h·φ·s' */
static void advance_inf(const double *r, i64 m, int tau_row, double eps, double phi, double h,
                        const double *restrict y, double *restrict y_new, double *restrict ya,
                        double *restrict yd) {
    const double *inf = r, *r1 = r + m, *r2 = r + 2 * m;
    const double *dinf = r + 3 * m, *d1 = r + 4 * m, *d2 = r + 5 * m;
    double *s = ya, *ds = yd; /* 1/τ and its slope, overwritten below lane by lane */
    if (tau_row) {
        SIMD for (i64 l = 0; l < m; l++) {
            double it = 1.0 / r1[l];
            s[l] = it;
            ds[l] = -d1[l] * (it * it);
        }
    } else {
        SIMD for (i64 l = 0; l < m; l++) {
            s[l] = r1[l] + r2[l] + eps;
            ds[l] = d1[l] + d2[l];
        }
    }
    SIMD for (i64 l = 0; l < m; l++) {
        double x = inf[l], y_old = y[l], sl = ds[l];
        double big_a = exp_(h * phi * s[l]);
        double lo = x + big_a * (y_old - x), hi = y_old - (y_old - x) * (1.0 - big_a);
        y_new[l] = big_a < 0.5 ? lo : hi;
        ya[l] = big_a;
        yd[l] = dinf[l] * (1.0 - big_a) + (y_old - x) * (big_a * h * phi * sl);
    }
}

typedef struct {
    const i64 *ga, *pa, *gb, *pb;
    i64 n_ch;
} Gates;

/* x^p for a loop-invariant p in 0…4, the products of _kernels._ipow (x², x²·x, x²·x²) picked by
 * 0/1 weights w (branch-free, so the lane loops vectorise; exact: one term is non-zero) */
typedef struct {
    double w[5];
} Pow;

static inline Pow pow_of(i64 p) {
    Pow r = {{0.0, 0.0, 0.0, 0.0, 0.0}};
    r.w[p < 0 ? 0 : (p > 4 ? 4 : p)] = 1.0;
    return r;
}

static inline double pw(double x, Pow a) {
    double x2 = x * x;
    return (a.w[0] + a.w[1] * x) + (a.w[2] * x2 + (a.w[3] * (x2 * x) + a.w[4] * (x2 * x2)));
}

static void conductance(const Gates *g, i64 m, const double *gm, const double *ee,
                        const double *y, double *restrict g_sum, double *restrict ge_sum) {
    for (i64 x = 0; x < m; x++) {
        g_sum[x] = 0.0;
        ge_sum[x] = 0.0;
    }
    for (i64 c = 0; c < g->n_ch; c++) {
        const Pow pa = pow_of(g->pa[c]), pb = pow_of(g->pb[c]);
        const double *restrict ya = y + g->ga[c] * m, *restrict yb = y + g->gb[c] * m;
        const double *restrict gmc = gm + c * m, *restrict eec = ee + c * m;
        SIMD for (i64 x = 0; x < m; x++) {
            double gg = gmc[x] * (pw(ya[x], pa) * pw(yb[x], pb));
            g_sum[x] += gg;
            ge_sum[x] += gg * eec[x];
        }
    }
}

static void solve(const i64 *parent, const double *lo, const double *up, double *d, double *r,
                  i64 n, i64 nl) {
    for (i64 i = n - 1; i > 0; i--) {
        double li = lo[i], ui = up[i];
        const double *restrict di = d + i * nl, *restrict ri = r + i * nl;
        double *restrict dp = d + parent[i] * nl, *restrict rp = r + parent[i] * nl;
        SIMD for (i64 l = 0; l < nl; l++) {
            double f = ui / di[l];
            dp[l] = dp[l] - li * f;
            rp[l] = rp[l] - f * ri[l];
        }
    }
    SIMD for (i64 l = 0; l < nl; l++) r[l] = r[l] / d[l];
    for (i64 i = 1; i < n; i++) {
        double li = lo[i];
        const double *restrict di = d + i * nl, *restrict rp = r + parent[i] * nl;
        double *restrict ri = r + i * nl;
        SIMD for (i64 l = 0; l < nl; l++) ri[l] = (ri[l] - li * rp[l]) / di[l];
    }
}

/* ------------------------------------------------------------------ loops (Woodbury) */
/* Loops: edges beyond the spanning tree (hines.py): M = T + P Qᵀ with, per loop j between nodes
 * a_j, b_j, P_j = ga_j e_a − gb_j e_b (conductance times row weights) and Q_j = e_a − e_b. A
 * solve with M (tr = 0) or Mᵀ (tr = 1): Z = T⁻¹P (T⁻ᵀQ), the capacitance S = I + QᵀZ (PᵀZ),
 * factored per lane without pivoting (S = (G⁻¹ + QᵀT_u⁻¹Q)·G, T_u symmetric positive definite),
 * then x ← x − Z S⁻¹ Qᵀx (Pᵀx) after the tree solve of the right-hand side. */
typedef struct {
    i64 k;
    const i64 *a, *b;
    const double *ga, *gb;
    double *z, *s, *y; /* work: Z [k, n, nl], S [k, k, nl], [k, nl] */
} Loops;

/* solve() for r (NULL: none) and the nz right-hand sides z [nz, n, nl] at once */
static void solve_n(const i64 *parent, const double *lo, const double *up, double *d, double *r,
                    double *z, i64 nz, i64 n, i64 nl) {
    i64 nn = n * nl;
    for (i64 i = n - 1; i > 0; i--) {
        double li = lo[i], ui = up[i];
        i64 oi = i * nl, op = parent[i] * nl;
        double *restrict di = d + oi, *restrict dp = d + op;
        if (r) {
            SIMD for (i64 l = 0; l < nl; l++) r[op + l] = r[op + l] - (ui / di[l]) * r[oi + l];
        }
        for (i64 q = 0; q < nz; q++) {
            double *restrict zq = z + q * nn;
            SIMD for (i64 l = 0; l < nl; l++) zq[op + l] = zq[op + l] - (ui / di[l]) * zq[oi + l];
        }
        SIMD for (i64 l = 0; l < nl; l++) dp[l] = dp[l] - li * (ui / di[l]);
    }
    for (i64 q = -1; q < nz; q++) {
        double *x = q < 0 ? r : z + q * nn;
        if (!x) continue;
        SIMD for (i64 l = 0; l < nl; l++) x[l] = x[l] / d[l];
        for (i64 i = 1; i < n; i++) {
            double li = lo[i];
            const double *restrict di = d + i * nl, *restrict xp = x + parent[i] * nl;
            double *restrict xi = x + i * nl;
            SIMD for (i64 l = 0; l < nl; l++) xi[l] = (xi[l] - li * xp[l]) / di[l];
        }
    }
}

/* Z's columns before the solve: P (tr = 0) or Q (tr = 1) */
static void loop_columns(const Loops *lp, int tr, i64 n, i64 nl) {
    i64 nn = n * nl;
    for (i64 x = 0; x < lp->k * nn; x++) lp->z[x] = 0.0;
    for (i64 j = 0; j < lp->k; j++) {
        double ca = tr ? 1.0 : lp->ga[j], cb = tr ? 1.0 : lp->gb[j];
        double *za = lp->z + j * nn + lp->a[j] * nl, *zb = lp->z + j * nn + lp->b[j] * nl;
        for (i64 l = 0; l < nl; l++) {
            za[l] = ca;
            zb[l] = -cb;
        }
    }
}

/* S = I + QᵀZ (tr = 0) or PᵀZ (tr = 1), LU-factored in place per lane */
static void loop_factor(const Loops *lp, int tr, i64 n, i64 nl) {
    i64 k = lp->k, nn = n * nl;
    double *s = lp->s;
    for (i64 i = 0; i < k; i++) {
        double ca = tr ? lp->ga[i] : 1.0, cb = tr ? lp->gb[i] : 1.0;
        for (i64 j = 0; j < k; j++) {
            const double *za = lp->z + j * nn + lp->a[i] * nl, *zb = lp->z + j * nn + lp->b[i] * nl;
            double *restrict sij = s + (i * k + j) * nl, one = i == j ? 1.0 : 0.0;
            SIMD for (i64 l = 0; l < nl; l++) sij[l] = one + (ca * za[l] - cb * zb[l]);
        }
    }
    for (i64 q = 0; q < k; q++)
        for (i64 i = q + 1; i < k; i++) {
            double *restrict siq = s + (i * k + q) * nl;
            const double *restrict sqq = s + (q * k + q) * nl;
            SIMD for (i64 l = 0; l < nl; l++) siq[l] = siq[l] / sqq[l];
            for (i64 j = q + 1; j < k; j++) {
                double *restrict sij = s + (i * k + j) * nl;
                const double *restrict sqj = s + (q * k + j) * nl;
                SIMD for (i64 l = 0; l < nl; l++) sij[l] = sij[l] - siq[l] * sqj[l];
            }
        }
}

/* x ← x − Z S⁻¹ Qᵀx (tr = 0) or Z S⁻¹ Pᵀx (tr = 1), x [n, nl] the tree solve's result */
static void loop_correct(const Loops *lp, int tr, double *x, i64 n, i64 nl) {
    i64 k = lp->k, nn = n * nl;
    const double *s = lp->s;
    double *y = lp->y;
    for (i64 i = 0; i < k; i++) {
        double ca = tr ? lp->ga[i] : 1.0, cb = tr ? lp->gb[i] : 1.0;
        const double *xa = x + lp->a[i] * nl, *xb = x + lp->b[i] * nl;
        double *restrict yi = y + i * nl;
        SIMD for (i64 l = 0; l < nl; l++) yi[l] = ca * xa[l] - cb * xb[l];
        for (i64 q = 0; q < i; q++) {
            const double *restrict siq = s + (i * k + q) * nl, *restrict yq = y + q * nl;
            SIMD for (i64 l = 0; l < nl; l++) yi[l] = yi[l] - siq[l] * yq[l];
        }
    }
    for (i64 i = k - 1; i >= 0; i--) {
        double *restrict yi = y + i * nl;
        for (i64 j = i + 1; j < k; j++) {
            const double *restrict sij = s + (i * k + j) * nl, *restrict yj = y + j * nl;
            SIMD for (i64 l = 0; l < nl; l++) yi[l] = yi[l] - sij[l] * yj[l];
        }
        const double *restrict sii = s + (i * k + i) * nl;
        SIMD for (i64 l = 0; l < nl; l++) yi[l] = yi[l] / sii[l];
    }
    for (i64 j = 0; j < k; j++) {
        const double *restrict zj = lp->z + j * nn, *restrict yj = y + j * nl;
        for (i64 i = 0; i < n; i++) {
            double *restrict xi = x + i * nl;
            const double *restrict zi = zj + i * nl;
            SIMD for (i64 l = 0; l < nl; l++) xi[l] = xi[l] - zi[l] * yj[l];
        }
    }
}

/* ------------------------------------------------------------------ one chunk of lanes */
/* dims: n, n_comp, nl, n_g, n_ch, n_steps, bins, n_time, rv_time, gx (rows of X), store,
 * n_sites, k (loops), flags; currents cur [S, bins, n_sites] at compartments sites[n_sites] (a sparse stimulus
 * stays sparse: each step scatters its bin into i_inj, zero elsewhere).
 * flags: RESUME — start from the state in v and yy[1] (a segment of a checkpointed run) instead
 * of v0 and leave out's first column alone; NO_OUT — write nothing to out (a segment recomputed
 * for the adjoint; resets are applied all the same). The gates after the last step are left in
 * yy[1], so a next call with RESUME continues the trajectory. */
enum { RESUME = 1, NO_OUT = 2 };
void forward_chunk(void **p, const i64 *dims, double v0) {
    i64 n = dims[0], n_comp = dims[1], nl = dims[2], n_g = dims[3], n_ch = dims[4];
    i64 n_steps = dims[5], bins = dims[6], n_time = dims[7], rv_time = dims[8], gx = dims[9];
    int store = (int)dims[10];
    i64 n_sites = dims[11];
    i64 m = n_comp * nl;
    int k = 0;
    const i64 *parent = p[k++];
    const double *ta = p[k++], *tb = p[k++], *diag = p[k++], *cm = p[k++];
    const i64 *pub = p[k++], *pos = p[k++];
    Loops lp;
    lp.a = p[k++], lp.b = p[k++], lp.ga = p[k++], lp.gb = p[k++];
    const double *spec = p[k++], *gcf = p[k++];
    Gates gt;
    gt.ga = p[k++], gt.pa = p[k++], gt.gb = p[k++], gt.pb = p[k++], gt.n_ch = n_ch;
    const double *k_dt = p[k++], *neg_h = p[k++];
    const i64 *cols = p[k++], *out_at = p[k++];
    const uint8_t *reset_at = p[k++];
    const double *cur = p[k++];
    const i64 *sites = p[k++];
    const i64 *sidx = p[k++];
    const double *rv = p[k++];
    const i64 *ridx = p[k++];
    const double *gm = p[k++], *ee = p[k++];
    double *out = p[k++];
    double *W = p[k++], *X = p[k++], *AA = p[k++], *DD = p[k++];
    double *v = p[k++], *d = p[k++], *w = p[k++], *yy = p[k++], *ya = p[k++], *yd = p[k++];
    double *rr = p[k++], *vc = p[k++], *vs = p[k++], *g_sum = p[k++], *ge_sum = p[k++];
    double *i_inj = p[k++];
    lp.z = p[k++], lp.s = p[k++], lp.y = p[k++], lp.k = dims[12];
    i64 flags = dims[13];

    if (!(flags & RESUME)) {
        for (i64 x = 0; x < n * nl; x++) v[x] = v0;
        if (!(flags & NO_OUT))
            for (i64 l = 0; l < nl; l++)
                for (i64 c = 0; c < n_comp; c++) out[(l * n_comp + c) * n_time] = v0;
    }
    for (i64 s = 0; s < n_steps; s++) {
        double h = neg_h[s];
        const double *y_in = (store && s > 0) ? X + (s - 1) * gx * m : yy + ((s + 1) % 2) * gx * m;
        double *y = yy + (s % 2) * gx * m, *yas = ya, *yds = yd, *ws = w;
        if (store) {
            y = X + s * gx * m;
            yas = AA + s * n_g * m;
            yds = DD + s * n_g * m;
            ws = W + s * n * nl;
        }
        i64 col = cols[s];
        for (i64 c = 0; c < n_comp; c++) {
            const double *vk = v + pos[c] * nl;
            i64 o = c * nl;
            for (i64 l = 0; l < nl; l++) vc[o + l] = vk[l];
            for (i64 l = 0; l < nl; l++) i_inj[o + l] = 0.0;
        }
        for (i64 j = 0; j < n_sites; j++) {
            i64 o = sites[j] * nl;
            for (i64 l = 0; l < nl; l++) i_inj[o + l] = cur[(sidx[l] * bins + col) * n_sites + j];
        }
        for (i64 j = 0; j < n_g; j++) {
            const double *sp = spec + j * 12, *gc = gcf + j * 4; /* 3 rows; shift eps phi kind */
            SIMD for (i64 x = 0; x < m; x++) vs[x] = vc[x] + gc[0];
            if (gc[3] == 0.0) {
                rate(sp, m, vs, rr, rr + 2 * m);
                rate(sp + 4, m, vs, rr + m, rr + 3 * m);
                advance(rr, m, gc[1], gc[2], h, y_in + j * m, y + j * m, yas + j * m,
                        yds + j * m);
            } else {
                rate(sp, m, vs, rr, rr + 3 * m);
                rate(sp + 4, m, vs, rr + m, rr + 4 * m);
                if (gc[3] == 2.0) rate(sp + 8, m, vs, rr + 2 * m, rr + 5 * m);
                advance_inf(rr, m, gc[3] == 1.0, gc[1], gc[2], h, y_in + j * m, y + j * m,
                            yas + j * m, yds + j * m);
            }
        }
        conductance(&gt, m, gm, ee, y, g_sum, ge_sum);
        for (i64 i = 0; i < n; i++) {
            double c_i = k_dt[s] * cm[i], dg_i = diag[i];
            i64 kk = pub[i];
            double *restrict di = d + i * nl, *restrict wi = ws + i * nl;
            const double *restrict vi = v + i * nl;
            if (kk < n_comp) {
                i64 o = kk * nl;
                SIMD for (i64 l = 0; l < nl; l++) {
                    di[l] = c_i + g_sum[o + l] + dg_i;
                    wi[l] = i_inj[o + l] + ge_sum[o + l] + c_i * vi[l];
                }
            } else {
                SIMD for (i64 l = 0; l < nl; l++) {
                    di[l] = c_i + 0.0 + dg_i;
                    wi[l] = 0.0 + 0.0 + c_i * vi[l];
                }
            }
        }
        if (lp.k) {
            loop_columns(&lp, 0, n, nl);
            solve_n(parent, ta, tb, d, ws, lp.z, lp.k, n, nl);
            loop_factor(&lp, 0, n, nl);
            loop_correct(&lp, 0, ws, n, nl);
        } else {
            solve(parent, ta, tb, d, ws, n, nl);
        }
        SIMD for (i64 x = 0; x < n * nl; x++) v[x] = 2.0 * ws[x] - v[x];
        i64 jo = out_at[s];
        if (jo >= 0) {
            for (i64 c = 0; c < n_comp; c++)
                for (i64 l = 0; l < nl; l++) {
                    double *vp = v + pos[c] * nl + l;
                    if (!(flags & NO_OUT)) out[(l * n_comp + c) * n_time + jo] = *vp;
                    if (!reset_at[s]) continue; /* without a Reset, rv is a dummy */
                    double x = rv[(ridx[l] * rv_time + jo) * n_comp + c];
                    if (x == x) *vp = x;
                }
        }
    }
    if (n_steps > 0) { /* the last gates → yy[1], where a resumed call reads them */
        const double *y = store ? X + (n_steps - 1) * gx * m : yy + ((n_steps - 1) % 2) * gx * m;
        if (y != yy + gx * m)
            for (i64 x = 0; x < gx * m; x++) yy[gx * m + x] = y[x];
    }
}

/* dims: n, n_comp, nl, n_g, n_ch, n_steps, n_time, rv_time, gx, k (loops), bins, n_sites,
 * want_cur. With want_cur, gcur [nl, bins, n_sites] accumulates ∂L/∂(current) per lane: the
 * current enters the right-hand side of step s at its site, so its adjoint is μ there. */
void adjoint_chunk(void **p, const i64 *dims) {
    i64 n = dims[0], n_comp = dims[1], nl = dims[2], n_g = dims[3], n_ch = dims[4];
    i64 n_steps = dims[5], n_time = dims[6], rv_time = dims[7], gx = dims[8];
    i64 bins = dims[10], n_sites = dims[11], want_cur = dims[12];
    i64 m = n_comp * nl;
    int k = 0;
    const i64 *parent = p[k++];
    const double *ta = p[k++], *tb = p[k++], *diag = p[k++], *cm = p[k++];
    const i64 *pub = p[k++], *pos = p[k++];
    Loops lp;
    lp.a = p[k++], lp.b = p[k++], lp.ga = p[k++], lp.gb = p[k++];
    Gates gt;
    gt.ga = p[k++], gt.pa = p[k++], gt.gb = p[k++], gt.pb = p[k++], gt.n_ch = n_ch;
    const double *k_dt = p[k++];
    const i64 *cols = p[k++], *out_at = p[k++];
    const uint8_t *reset_at = p[k++];
    const i64 *sites = p[k++];
    const double *rv = p[k++];
    const i64 *ridx = p[k++];
    const double *gm = p[k++], *ee = p[k++];
    const double *gout = p[k++];
    const double *W = p[k++], *X = p[k++], *AA = p[k++], *DD = p[k++];
    double *lv = p[k++], *d = p[k++], *mu = p[k++], *ly = p[k++], *gg = p[k++];
    double *muc = p[k++], *wc = p[k++], *lvc = p[k++], *g_sum = p[k++], *ge_sum = p[k++];
    double *dy = p[k++];
    lp.z = p[k++], lp.s = p[k++], lp.y = p[k++], lp.k = dims[9];
    double *grad = p[k++], *gcur = p[k++];
    double *dgv = dy, *o = dy + m;

    for (i64 s = n_steps - 1; s >= 0; s--) {
        i64 jo = out_at[s];
        if (jo >= 0) {
            for (i64 c = 0; c < n_comp; c++)
                for (i64 l = 0; l < nl; l++) {
                    double *lp = lv + pos[c] * nl + l;
                    if (reset_at[s]) { /* without a Reset, rv is a dummy: read it at resets only */
                        double x = rv[(ridx[l] * rv_time + jo) * n_comp + c];
                        if (x == x) *lp = 0.0;
                    }
                    *lp += gout[(l * n_comp + c) * n_time + jo];
                }
        }
        const double *y = X + s * gx * m, *w = W + s * n * nl;
        conductance(&gt, m, gm, ee, y, g_sum, ge_sum);
        for (i64 i = 0; i < n; i++) {
            double c_i = k_dt[s] * cm[i], dg_i = diag[i];
            i64 kk = pub[i];
            double *restrict di = d + i * nl, *restrict mi = mu + i * nl;
            const double *restrict lvi = lv + i * nl;
            if (kk < n_comp) {
                i64 oo = kk * nl;
                SIMD for (i64 l = 0; l < nl; l++) {
                    di[l] = c_i + g_sum[oo + l] + dg_i;
                    mi[l] = 2.0 * lvi[l];
                }
            } else {
                SIMD for (i64 l = 0; l < nl; l++) {
                    di[l] = c_i + 0.0 + dg_i;
                    mi[l] = 2.0 * lvi[l];
                }
            }
        }
        if (lp.k) { /* the transposed system: Tᵀ swaps the off-diagonals */
            loop_columns(&lp, 1, n, nl);
            solve_n(parent, tb, ta, d, mu, lp.z, lp.k, n, nl);
            loop_factor(&lp, 1, n, nl);
            loop_correct(&lp, 1, mu, n, nl);
        } else {
            solve(parent, tb, ta, d, mu, n, nl);
        }
        if (want_cur) {
            i64 col = cols[s];
            for (i64 j = 0; j < n_sites; j++) {
                const double *mk = mu + pos[sites[j]] * nl;
                for (i64 l = 0; l < nl; l++) gcur[(l * bins + col) * n_sites + j] += mk[l];
            }
        }
        for (i64 i = 0; i < n; i++) {
            double c_i = k_dt[s] * cm[i];
            const double *restrict mi = mu + i * nl;
            double *restrict lvi = lv + i * nl;
            SIMD for (i64 l = 0; l < nl; l++) lvi[l] = c_i * mi[l] - lvi[l];
        }
        for (i64 c = 0; c < n_comp; c++) {
            const double *mk = mu + pos[c] * nl, *wk = w + pos[c] * nl;
            i64 oo = c * nl;
            for (i64 l = 0; l < nl; l++) {
                muc[oo + l] = mk[l];
                wc[oo + l] = wk[l];
            }
        }
        /* conductance adjoint */
        for (i64 c = 0; c < n_ch; c++) {
            i64 pp = gt.pa[c], q = gt.pb[c];
            const Pow a0 = pow_of(pp), a1 = pow_of(pp - 1), b0 = pow_of(q), b1 = pow_of(q - 1);
            const double *ya = y + gt.ga[c] * m, *yb = y + gt.gb[c] * m;
            const double *gmc = gm + c * m, *eec = ee + c * m;
            double *restrict g0 = gg + (c * 2) * m, *restrict g1 = gg + (c * 2 + 1) * m;
            SIMD for (i64 x = 0; x < m; x++) o[x] = pw(ya[x], a0) * pw(yb[x], b0);
            SIMD for (i64 x = 0; x < m; x++) dgv[x] = muc[x] * (eec[x] - wc[x]);
            SIMD for (i64 x = 0; x < m; x++) g0[x] += dgv[x] * o[x];
            SIMD for (i64 x = 0; x < m; x++) g1[x] += muc[x] * (gmc[x] * o[x]);
            if (pp > 0) {
                double *restrict lya = ly + gt.ga[c] * m;
                double fp = (double)pp;
                SIMD for (i64 x = 0; x < m; x++)
                    lya[x] += dgv[x] * gmc[x] * (fp * pw(ya[x], a1)) * pw(yb[x], b0);
            }
            if (q > 0) {
                double *restrict lyb = ly + gt.gb[c] * m;
                double fq = (double)q;
                SIMD for (i64 x = 0; x < m; x++)
                    lyb[x] += dgv[x] * gmc[x] * pw(ya[x], a0) * (fq * pw(yb[x], b1));
            }
        }
        for (i64 x = 0; x < m; x++) lvc[x] = 0.0;
        for (i64 jg = 0; jg < n_g; jg++) {
            double *restrict lyj = ly + jg * m;
            const double *restrict dj = DD + (s * n_g + jg) * m, *restrict aj = AA + (s * n_g + jg) * m;
            SIMD for (i64 x = 0; x < m; x++) {
                lvc[x] += dj[x] * lyj[x];
                lyj[x] *= aj[x];
            }
        }
        for (i64 c = 0; c < n_comp; c++) {
            double *lvk = lv + pos[c] * nl;
            i64 oo = c * nl;
            for (i64 l = 0; l < nl; l++) lvk[l] += lvc[oo + l];
        }
    }
    for (i64 l = 0; l < nl; l++)
        for (i64 c = 0; c < n_ch; c++)
            for (i64 kk = 0; kk < n_comp; kk++) {
                grad[((l * n_ch + c) * 2 + 0) * n_comp + kk] = gg[(c * 2 + 0) * m + kk * nl + l];
                grad[((l * n_ch + c) * 2 + 1) * n_comp + kk] = gg[(c * 2 + 1) * m + kk * nl + l];
            }
}

/* dims: n, n_comp, nl, n_g, n_ch, n_steps, n_time, rv_time, gx, n_p, k (loops) */
void tangent_chunk(void **p, const i64 *dims) {
    i64 n = dims[0], n_comp = dims[1], nl = dims[2], n_g = dims[3], n_ch = dims[4];
    i64 n_steps = dims[5], n_time = dims[6], rv_time = dims[7], gx = dims[8], n_p = dims[9];
    i64 m = n_comp * nl;
    int k = 0;
    const i64 *parent = p[k++];
    const double *ta = p[k++], *tb = p[k++], *diag = p[k++], *cm = p[k++];
    const i64 *pub = p[k++], *pos = p[k++];
    Loops lp;
    lp.a = p[k++], lp.b = p[k++], lp.ga = p[k++], lp.gb = p[k++];
    Gates gt;
    gt.ga = p[k++], gt.pa = p[k++], gt.gb = p[k++], gt.pb = p[k++], gt.n_ch = n_ch;
    const double *k_dt = p[k++];
    const i64 *out_at = p[k++];
    const uint8_t *reset_at = p[k++];
    const double *rv = p[k++];
    const i64 *ridx = p[k++];
    const double *gm = p[k++], *ee = p[k++];
    const double *W = p[k++], *X = p[k++], *AA = p[k++], *DD = p[k++];
    const i64 *wrt = p[k++];
    double *dout = p[k++];
    double *dv = p[k++], *dy = p[k++], *d = p[k++], *r = p[k++], *o = p[k++];
    double *dgs = p[k++], *dge = p[k++], *dvc = p[k++], *g_sum = p[k++], *ge_sum = p[k++];
    lp.z = p[k++], lp.s = p[k++], lp.y = p[k++], lp.k = dims[10];
    i64 och = n_ch > 1 ? n_ch : 1; /* rows of each of o[0], o[1], o[2] */

    for (i64 l = 0; l < nl; l++)
        for (i64 q = 0; q < n_p; q++)
            for (i64 c = 0; c < n_comp; c++) dout[((l * n_p + q) * n_comp + c) * n_time] = 0.0;
    for (i64 s = 0; s < n_steps; s++) {
        const double *y = X + s * gx * m, *w = W + s * n * nl;
        const double *aa = AA + s * n_g * m, *dd = DD + s * n_g * m;
        conductance(&gt, m, gm, ee, y, g_sum, ge_sum);
        for (i64 c = 0; c < n_ch; c++) { /* per channel, the same for every tangent */
            double *restrict oc = o + c * m, *restrict oa = o + (och + c) * m;
            double *restrict ob = o + (2 * och + c) * m;
            const double *restrict ya = y + gt.ga[c] * m, *restrict yb = y + gt.gb[c] * m;
            const double *restrict gmc = gm + c * m;
            i64 pp = gt.pa[c], q = gt.pb[c];
            const Pow a0 = pow_of(pp), a1 = pow_of(pp - 1), b0 = pow_of(q), b1 = pow_of(q - 1);
            double fp = (double)pp, fq = (double)q;
            SIMD for (i64 x = 0; x < m; x++) oc[x] = pw(ya[x], a0) * pw(yb[x], b0);
            for (i64 x = 0; x < m; x++) {
                oa[x] = 0.0;
                ob[x] = 0.0;
            }
            if (pp > 0) {
                SIMD for (i64 x = 0; x < m; x++) oa[x] = gmc[x] * (fp * pw(ya[x], a1)) * pw(yb[x], b0);
            }
            if (q > 0) {
                SIMD for (i64 x = 0; x < m; x++) ob[x] = gmc[x] * pw(ya[x], a0) * (fq * pw(yb[x], b1));
            }
        }
        if (lp.k) { /* Z and S are the same for every tangent: once per step */
            for (i64 i = 0; i < n; i++) {
                double c_i = k_dt[s] * cm[i], dg_i = diag[i];
                i64 kk = pub[i];
                double *restrict di = d + i * nl;
                if (kk < n_comp) {
                    i64 off = kk * nl;
                    SIMD for (i64 l = 0; l < nl; l++) di[l] = c_i + g_sum[off + l] + dg_i;
                } else {
                    SIMD for (i64 l = 0; l < nl; l++) di[l] = c_i + 0.0 + dg_i;
                }
            }
            loop_columns(&lp, 0, n, nl);
            solve_n(parent, ta, tb, d, NULL, lp.z, lp.k, n, nl);
            loop_factor(&lp, 0, n, nl);
        }
        i64 jo = out_at[s];
        for (i64 q = 0; q < n_p; q++) {
            double *dvp = dv + q * n * nl, *dyp = dy + q * gx * m;
            i64 ch = wrt[q / n_comp], k0 = q % n_comp;
            for (i64 c = 0; c < n_comp; c++) {
                const double *vk = dvp + pos[c] * nl;
                for (i64 l = 0; l < nl; l++) dvc[c * nl + l] = vk[l];
            }
            for (i64 jg = 0; jg < n_g; jg++) {
                double *restrict yj = dyp + jg * m;
                const double *restrict aj = aa + jg * m, *restrict dj = dd + jg * m;
                SIMD for (i64 x = 0; x < m; x++) yj[x] = aj[x] * yj[x] + dj[x] * dvc[x];
            }
            for (i64 x = 0; x < m; x++) {
                dgs[x] = 0.0;
                dge[x] = 0.0;
            }
            for (i64 c = 0; c < n_ch; c++) {
                const double *restrict eec = ee + c * m, *restrict oa = o + (och + c) * m;
                const double *restrict ob = o + (2 * och + c) * m;
                const double *restrict dya = dyp + gt.ga[c] * m, *restrict dyb = dyp + gt.gb[c] * m;
                if (gt.pa[c] > 0 || gt.pb[c] > 0) {
                    SIMD for (i64 x = 0; x < m; x++) {
                        double g = oa[x] * dya[x] + ob[x] * dyb[x];
                        dgs[x] += g;
                        dge[x] += g * eec[x];
                    }
                }
                if (c == ch) { /* the seed: dG_c/dg_c = G_c/g_c at compartment k0 */
                    const double *oc = o + c * m;
                    i64 off = k0 * nl;
                    for (i64 l = 0; l < nl; l++) {
                        dgs[off + l] += oc[off + l];
                        dge[off + l] += oc[off + l] * eec[off + l];
                    }
                }
            }
            for (i64 i = 0; i < n; i++) {
                double c_i = k_dt[s] * cm[i], dg_i = diag[i];
                i64 kk = pub[i];
                double *restrict di = d + i * nl, *restrict ri = r + i * nl;
                const double *restrict wi = w + i * nl, *restrict vi = dvp + i * nl;
                if (kk < n_comp) {
                    i64 off = kk * nl;
                    SIMD for (i64 l = 0; l < nl; l++) {
                        di[l] = c_i + g_sum[off + l] + dg_i;
                        ri[l] = dge[off + l] - dgs[off + l] * wi[l] + c_i * vi[l];
                    }
                } else {
                    SIMD for (i64 l = 0; l < nl; l++) {
                        di[l] = c_i + 0.0 + dg_i;
                        ri[l] = c_i * vi[l];
                    }
                }
            }
            solve(parent, ta, tb, d, r, n, nl);
            if (lp.k) loop_correct(&lp, 0, r, n, nl);
            SIMD for (i64 x = 0; x < n * nl; x++) dvp[x] = 2.0 * r[x] - dvp[x];
            if (jo >= 0) {
                for (i64 c = 0; c < n_comp; c++)
                    for (i64 l = 0; l < nl; l++) {
                        double *vp = dvp + pos[c] * nl + l;
                        dout[((l * n_p + q) * n_comp + c) * n_time + jo] = *vp;
                        if (!reset_at[s]) continue; /* without a Reset, rv is a dummy */
                        double x = rv[(ridx[l] * rv_time + jo) * n_comp + c];
                        if (x == x) *vp = 0.0;
                    }
            }
        }
    }
}
