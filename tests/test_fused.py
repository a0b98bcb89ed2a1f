"""The fused numba backend (``CrankNicolson(backend="numba")``) against the torch backend."""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from bayesneuron import (
    Cell,
    Channel,
    CrankNicolson,
    Leak,
    Morphology,
    Reset,
    SolverError,
    Stimulus,
    hh_channels,
    hh_tree_cell,
    paper_channels,
    paper_currents,
    paper_ground_truth,
    paper_time_grid,
    paper_toy_cell,
    simulate,
    step_current,
)

pytest.importorskip("numba")

CELL = paper_toy_cell()
STIM = paper_currents(n_traces=5)
T = paper_time_grid()[:20]
TORCH, NUMBA = CrankNicolson(dt=0.01), CrankNicolson(dt=0.01, backend="numba")


def _params(batch=(3,), requires_grad=False):
    """g_na ``[*batch, 6]``, g_k ``[6]`` and g_l a scalar: three ways to broadcast."""
    gen = torch.Generator().manual_seed(1)
    gt = paper_ground_truth()
    g_na = gt["g_na"] * (1 + 0.1 * torch.randn(batch + (6,), generator=gen, dtype=torch.float64))
    p = {"g_na": g_na, "g_k": gt["g_k"].clone(), "g_l": torch.tensor(0.03, dtype=torch.float64)}
    return {k: v.requires_grad_(requires_grad) for k, v in p.items()}


def _both(cell, params, stim, t=T, **kw):
    """Voltages and d(Σ w·V)/d(params) from the torch and the numba backend."""
    res = []
    for solver in (TORCH, CrankNicolson(dt=TORCH.dt, backend="numba")):
        v = simulate(cell, params, stim, t, solver, **kw).v
        w = torch.randn(v.shape, generator=torch.Generator().manual_seed(2), dtype=v.dtype)
        leaves = [x for x in params.values() if x.requires_grad]
        grads = torch.autograd.grad((w * v).sum(), leaves) if leaves else ()
        res.append((v.detach(), grads))
    return res


def _assert_close(res, v_tol=1e-10, g_tol=1e-9):
    (vt, gt), (vn, gn) = res
    assert vt.shape == vn.shape
    assert (vt - vn).abs().max() <= v_tol
    for a, b in zip(gt, gn, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= g_tol * a.abs().max(), (a, b)


def test_torch_thread_count_is_left_alone():
    # numba's OpenMP layer resets the process's OpenMP thread count when it starts
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        simulate(CELL, None, STIM, T[:3], NUMBA)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_chunks_give_every_thread_work():
    from bayesneuron.simulation.fused import _chunking

    assert _chunking(100, 6, 1) == (100, 1)
    assert _chunking(100, 6, 2) == (52, 2)  # lanes: a multiple of the vector width
    assert _chunking(300, 6, 2) == (76, 4)  # ≤ 128 lanes, as many chunks per thread
    assert _chunking(3, 6, 2) == (4, 1)
    assert _chunking(100, 400, 1) == (16, 7)  # big cells: fewer lanes, to stay in cache


def test_threads_and_chunks_give_bit_identical_results(monkeypatch):
    # every trajectory is independent: how the batch is split over threads must not matter
    from bayesneuron import _fused

    stim = paper_currents(n_traces=7)
    before = torch.get_num_threads()
    runs = []
    try:
        for threads, max_lanes in ((1, 128), (2, 128), (2, 4), (3, 8)):
            monkeypatch.setattr(_fused, "_MAX_LANES", max_lanes)
            torch.set_num_threads(threads)
            params = _params((3,), requires_grad=True)
            v = simulate(CELL, params, stim, T, NUMBA).v
            runs.append((v.detach(), torch.autograd.grad(v.square().sum(), [params["g_na"]])[0]))
    finally:
        torch.set_num_threads(before)
    for v, g in runs[1:]:
        assert torch.equal(v, runs[0][0]) and torch.equal(g, runs[0][1])


def _simulate_in_child(queue):
    torch.set_num_threads(2)
    queue.put(simulate(CELL, None, STIM, T, NUMBA).v.numpy())


def test_threads_work_in_a_forked_child():
    # the parent's thread pool does not survive a fork; the child must not wait on it
    mp = pytest.importorskip("multiprocessing")
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork here")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        v = simulate(CELL, None, STIM, T, NUMBA).v  # the parent's pool now exists
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_simulate_in_child, args=(queue,))
        child.start()
        got = queue.get(timeout=120)
        child.join(30)
    finally:
        torch.set_num_threads(before)
    assert child.exitcode == 0 and np.array_equal(got, v.numpy())


def test_history_buffers_are_not_shared_while_alive():
    # a freed history's buffer is reused by the next forward pass, never a live one
    p1, p2 = _params((3,), requires_grad=True), _params((3,), requires_grad=True)
    with torch.no_grad():
        p2["g_na"] *= 1.1

    def grad(p):
        v = simulate(CELL, p, STIM, T, NUMBA).v
        return torch.autograd.grad(v.square().sum(), [p["g_na"]])[0]

    alone = [grad(p1), grad(p2)]  # the second reuses the first's buffer
    v1 = simulate(CELL, p1, STIM, T, NUMBA).v
    v2 = simulate(CELL, p2, STIM, T, NUMBA).v  # while the first history is alive
    both = [torch.autograd.grad(v.square().sum(), [p["g_na"]])[0] for v, p in ((v1, p1), (v2, p2))]
    assert all(torch.equal(a, b) for a, b in zip(alone, both))


@pytest.mark.parametrize("batch", [(3,), ()])
def test_forward_matches_torch(batch):
    with torch.no_grad():
        _assert_close(_both(CELL, _params(batch), STIM))
    # unbatched defaults and scalars too
    v0 = simulate(CELL, None, STIM, T, TORCH).v
    v1 = simulate(CELL, {"g_k": 40.0}, STIM, T, NUMBA).v
    assert v1.shape == v0.shape == (5, 6, 20)
    assert (simulate(CELL, None, STIM, T, NUMBA).v - v0).abs().max() <= 1e-10
    assert (simulate(CELL, {"g_k": 40.0}, STIM, T, TORCH).v - v1).abs().max() <= 1e-10


def test_gradients_match_torch():
    params = _params((3,), requires_grad=True)
    params["e_na"] = torch.full((6,), 90.0, dtype=torch.float64, requires_grad=True)
    res = _both(CELL, params, STIM)
    assert len(res[1][1]) == 4 and res[1][1][0].shape == (3, 6) and res[1][1][2].shape == ()
    _assert_close(res)


def test_reset_matches_torch():
    truth = simulate(CELL, paper_ground_truth(), STIM, T, TORCH).v
    held = truth.clone()
    held[:, 3:] = math.nan  # compartments 3-5 are not recorded, so never reset
    res = _both(CELL, _params((3,), requires_grad=True), STIM, reset=Reset(held, 2))
    _assert_close(res)
    assert not torch.equal(res[0][0], simulate(CELL, _params((3,)), STIM, T, TORCH).v)


def test_branched_tree_matches_torch():
    cell = Cell(Morphology.from_parents([-1, 0, 0], ax=0.5, cm=0.45), paper_channels(), v0=-60.0)
    stim = Stimulus(STIM.values[:, :3], dt=STIM.dt)
    params = {"g_na": torch.tensor([90.0, 110.0, 100.0], dtype=torch.float64, requires_grad=True)}
    _assert_close(_both(cell, params, stim))


def test_switches_leak_only_and_junctions_match_torch():
    # the paper's switches off, a plain Leak, and a geometric tree with junction nodes (nA)
    chans = (*paper_channels(v_shift=40.0, shift_driving_force=False, init_unshifted=False)[:2],
             Leak(g=0.1, e=-65.0))  # fmt: skip
    tree = hh_tree_cell().morphology
    cell = Cell(tree, chans, v0=-65.0)
    vals = torch.zeros(2, 6, 20, dtype=torch.float64)
    vals[0, 0, 2:12], vals[1, 3, 5:] = 0.2, 0.05
    stim, t = Stimulus(vals, dt=0.1, unit="nA"), np.linspace(0.0, 2.0, 21)
    g = {"g_k": torch.full((6,), 36.0, dtype=torch.float64, requires_grad=True)}
    _assert_close(_both(cell, g, stim, t))
    leak = Cell(Morphology.from_parents([-1, 0, 1]), (Leak(),), v0=-70.0)
    g = {"g_l": torch.full((2, 3), 0.3, dtype=torch.float64, requires_grad=True)}
    _assert_close(_both(leak, g, Stimulus(torch.ones(1, 3, 4), dt=0.5)))


# NEURON's hh on the branched tree (currents in nA, three junction nodes), spiking
HH_CELL = hh_tree_cell()
HH_STIM = step_current([0.0, 0.15, 0.4], 0, 6, delay=1.0, duration=8.0, t_stop=12.0, dt=1.0)
HH_T = np.arange(0.0, 12.0 + 1e-9, 0.1)
HH_TORCH = CrankNicolson(dt=0.025)


def _hh_both(params, stim=HH_STIM, celsius=None):
    cell = HH_CELL if celsius is None else hh_tree_cell(celsius)
    res = []
    for solver in (HH_TORCH, CrankNicolson(dt=0.025, backend="numba")):
        v = simulate(cell, params, stim, HH_T, solver).v
        w = torch.randn(v.shape, generator=torch.Generator().manual_seed(3), dtype=v.dtype)
        leaves = [x for x in params.values() if x.requires_grad]
        res.append((v.detach(), torch.autograd.grad((w * v).sum(), leaves)))
    return res


def test_hh_tree_matches_torch():
    # every g and e of NEURON's hh, per compartment; the voltages spike (so errors would grow)
    params = {
        k: torch.tensor(x, dtype=torch.float64, requires_grad=True)
        for k, x in HH_CELL.params.items()
    }
    res = _hh_both(params)
    assert res[0][0].max() > 30.0  # spikes
    _assert_close(res, v_tol=1e-9, g_tol=1e-9)


def test_hh_tree_batched_parameters_and_temperature_match_torch():
    gen = torch.Generator().manual_seed(4)
    g_na = 120.0 * (1 + 0.2 * torch.rand(2, 6, generator=gen, dtype=torch.float64))
    params = {
        "g_na": g_na.requires_grad_(True),
        "g_k": torch.full((6,), 30.0, dtype=torch.float64, requires_grad=True),
        "e_k": torch.tensor(-75.0, dtype=torch.float64, requires_grad=True),
    }
    res = _hh_both(params, celsius=16.3)
    assert res[1][0].shape == (2, 3, 6, len(HH_T))
    _assert_close(res, v_tol=1e-9, g_tol=1e-9)


def test_hh_rates_and_derivatives_are_exact_at_the_vtrap_singularities():
    # α_m, α_n = scale·(a − V)/(exp((a − V)/b) − 1) against 40-digit arithmetic, across their
    # removable singularities (V = −40, −55 mV) where the closed-form derivative cancels
    mpmath = pytest.importorskip("mpmath")
    from bayesneuron.simulation.fused import _CHANNELS
    from bayesneuron.simulation._kernels import _LINOID, _VTRAP_SMALL, _rate
    from bayesneuron.channels import HHPotassium, HHSodium

    mpmath.mp.dps = 40
    for spec in (_CHANNELS[HHSodium][0][0][0], _CHANNELS[HHPotassium][0][0][0]):
        form, scale, a, b = spec
        assert form == _LINOID
        off = np.array([0.0, 1e-9, 1e-6, 1e-5, 1e-3, 0.3, 0.99, 1.01, 3.0, 30.0, 150.0])
        v = np.concatenate([a + off, a - off[1:]])
        rate, d_rate = np.empty_like(v), np.empty_like(v)
        _rate(np.array(spec), v, rate, d_rate)
        for vi, r, dr in zip(v, rate, d_rate):
            u = (mpmath.mpf(a) - mpmath.mpf(vi)) / b
            if abs(u) < _VTRAP_SMALL:  # the guarded branch, as channels.vtrap: b·(1 − u/2)
                f, df = 1 - u / 2, mpmath.mpf(-0.5)
            else:
                f, df = u / mpmath.expm1(u), mpmath.diff(lambda x: x / mpmath.expm1(x), u)
            assert abs(r - float(scale * b * f)) <= 4e-16 * abs(r)
            assert abs(dr - float(-scale * df)) <= 1e-14 * abs(dr)


@dataclass(frozen=True)
class _SlowK(Channel):
    name: str = "km"
    state_names = ("n",)

    def param_defaults(self):
        return {"g": 1.0, "e": -90.0}

    def gates(self, v, p):
        return {"n": (torch.sigmoid((v + 35.0) / 5.0), 100.0 + 0.0 * v)}

    def conductance(self, x, p):
        return p["g"] * x["n"], p["e"]


@pytest.mark.parametrize(
    "cell, kw, match",
    [
        (Cell(Morphology.from_parents([-1, 0]), (*hh_channels(), _SlowK())), {}, "got _SlowK"),
        (CELL, {"dtype": torch.float32}, "float64; got torch.float32"),
    ],
)
def test_unsupported_raise_with_the_reason(cell, kw, match):
    stim = Stimulus(torch.ones(1, cell.n_comp, 2), dt=0.5)
    with pytest.raises(SolverError, match=f"backend='numba' supports .*{match}"):
        simulate(cell, None, stim, None, NUMBA, **kw)


def test_backend_setting_is_validated():
    with pytest.raises(SolverError, match="'torch' or 'numba'"):
        CrankNicolson(backend="jax")
    with pytest.raises(SolverError, match="compile=True"):
        CrankNicolson(backend="numba", compile=True)


def test_vectorised_exp_expm1_and_log1p_are_accurate():
    from bayesneuron.simulation._kernels import _exp, _expm1, _log1p01

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-700, 700, 2000), rng.uniform(-2, 2, 2000), [0.0, 709.7]])
    got = np.array([_exp(v) for v in x])
    assert np.all(np.abs(got - np.exp(x)) <= 2 * np.spacing(np.exp(x)))
    assert _exp(710.0) == np.inf and _exp(-710.0) == 0.0 and np.isnan(_exp(np.nan))
    u = np.concatenate([rng.uniform(0, 1, 2000), 10.0 ** rng.uniform(-300, 0, 2000), [0.0, 1.0]])
    got = np.array([_log1p01(v) for v in u])
    assert np.all(np.abs(got - np.log1p(u)) <= 2 * np.spacing(np.log1p(u)))
    x = np.concatenate([x, rng.uniform(-0.4, 0.4, 2000), 10.0 ** rng.uniform(-300, 0, 500)])
    x = np.concatenate([x, -x[-500:], [-745.0, -36.0, 1e-6]])
    got = np.array([_expm1(v) for v in x])
    assert np.all(np.abs(got - np.expm1(x)) <= 2 * np.spacing(np.abs(np.expm1(x))))
    assert _expm1(710.0) == np.inf and _expm1(-710.0) == -1.0 and _expm1(0.0) == 0.0


# --------------------------------------------------------------------------- sensitivities
def _jacobian_errors(cell, params, stim, t, wrt, reset=None, fd_col=None):
    """J from the tangent pass against the adjoint and a forward difference: returns the
    largest relative error of Jᵀu against the adjoint's gradient of Σ u·V (an identity of the
    discrete scheme, so rounding only) and of column ``fd_col`` against a forward difference."""
    from bayesneuron import sensitivities

    solver = CrankNicolson(dt=0.025 if cell is HH_CELL else 0.01, backend="numba")
    v, jac = sensitivities(cell, params, stim, t, solver, wrt=wrt, reset=reset)
    leaves = {k: torch.as_tensor(params[k]).clone().requires_grad_() for k in wrt}
    vt = simulate(cell, {**params, **leaves}, stim, t, solver, reset=reset).v
    n = cell.n_comp
    assert torch.equal(v, vt.detach())
    assert jac.shape == v.shape[:-2] + (len(wrt) * n,) + v.shape[-2:]
    u = torch.randn(v.shape, generator=torch.Generator().manual_seed(5), dtype=v.dtype)
    grads = torch.autograd.grad((u * vt).sum(), list(leaves.values()))
    jtu = (jac * u.unsqueeze(-3)).sum((-1, -2))  # [..., P]
    adj_err = max(
        float(
            (jtu[..., a * n : (a + 1) * n].sum(-2).sum_to_size(g.shape) - g).abs().max()
            / g.abs().max()
        )
        for a, g in enumerate(grads)
    )
    fd_err = None
    if fd_col is not None:
        a, k = fd_col
        h = 1e-6 * float(torch.as_tensor(params[wrt[a]]).reshape(-1)[k])
        moved = {**params, wrt[a]: torch.as_tensor(params[wrt[a]]).clone()}
        moved[wrt[a]][..., k] += h
        fd = (simulate(cell, moved, stim, t, solver, reset=reset).v - v) / h
        ref = jac[..., a * n + k, :, :]
        fd_err = float((fd - ref).abs().max() / ref.abs().max())
    return adj_err, fd_err


def test_sensitivities_paper_cell_exact_with_and_without_reset():
    gt = paper_ground_truth()
    params = {"g_na": gt["g_na"] * 1.05, "g_k": gt["g_k"] * 0.97}
    adj, fd = _jacobian_errors(CELL, params, STIM, T, ("g_na", "g_k"), fd_col=(1, 4))
    assert adj <= 1e-11 and fd <= 1e-4
    held = simulate(CELL, gt, STIM, T, TORCH).v.clone()
    held[:, 2:] = math.nan
    adj, _ = _jacobian_errors(CELL, params, STIM, T, ("g_na", "g_k"), reset=Reset(held, 3))
    assert adj <= 1e-11


def test_sensitivities_hh_tree_with_sample_dims():
    gen = torch.Generator().manual_seed(6)
    g_na = 120.0 * (1 + 0.2 * torch.rand(2, 1, 6, generator=gen, dtype=torch.float64))
    params = {"g_na": g_na, "g_k": torch.full((6,), 36.0, dtype=torch.float64)}
    adj, fd = _jacobian_errors(HH_CELL, params, HH_STIM, HH_T, ("g_k", "g_na"), fd_col=(1, 5))
    assert adj <= 1e-11 and fd <= 1e-4


def test_sensitivities_refuse_what_they_cannot_do():
    from bayesneuron import ParameterError, sensitivities

    with pytest.raises(SolverError, match="need the fused kernel"):
        sensitivities(CELL, None, STIM, T, TORCH)
    with pytest.raises(ParameterError, match=r"'e_na' is not one of \['g_na', 'g_k', 'g_l'\]"):
        sensitivities(CELL, None, STIM, T, NUMBA, wrt=("e_na",))


def test_levenberg_marquardt_same_steps_with_exact_and_fd_jacobians():
    from bayesneuron import Design, fit_map, paper_experiment

    model, v, truth = paper_experiment(Design(), n_traces=4, solver=NUMBA)
    fits = [
        fit_map(model, v, truth=truth, n_starts=1, max_steps=8, horizons=(), jacobian=j)
        for j in ("exact", "fd")
    ]
    ex, fd = (f.history["objective"][:, 0] for f in fits)
    assert fits[0].settings["jacobian"] == "exact" and ex[-1] < 1e-2 * ex[0]
    assert np.allclose(ex[:4], fd[:4], rtol=1e-4)  # the same path while far from the optimum


def test_laplace_jacobian_exact_equals_central_differences():
    from bayesneuron import Design, paper_experiment
    from bayesneuron.inference.laplace import jacobian

    model, _, truth = paper_experiment(Design([0, -1], [0, 2]), n_traces=3, solver=NUMBA)
    assert model.exact_sensitivities
    exact = jacobian(model, truth)
    central = jacobian(model, truth, method="central")
    assert exact.shape == central.shape == (3 * 2 * 48, 12)
    assert (exact - central).abs().max() <= 1e-6 * central.abs().max()


_TINY_KERNEL = """
from numba import njit


@njit(cache=True)
def twice(a, out):
    for i in range(a.shape[0]):
        out[i] = 2.0 * a[i]
"""


def _tiny_kernels(tmp_path, monkeypatch):
    """A module with one cached kernel, standing in for ``_kernels`` in ``_compile_ahead``."""
    import importlib.util

    from bayesneuron import _compile_ahead

    path = tmp_path / "tiny_kernels.py"
    path.write_text(_TINY_KERNEL)
    spec = importlib.util.spec_from_file_location("tiny_kernels", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(_compile_ahead, "_kernels", mod)
    monkeypatch.setattr(_compile_ahead, "_JOBS", {})
    return _compile_ahead, mod


def test_compile_ahead_child_fills_the_cache_this_process_loads(tmp_path, monkeypatch):
    ahead, mod = _tiny_kernels(tmp_path, monkeypatch)
    a, out = np.arange(3.0), np.empty(3)
    sig = (ahead.numba.typeof(a), ahead.numba.typeof(out))
    assert not ahead._cached(mod.twice, sig)
    ahead.start("twice", lambda: (a, out))
    assert ahead._JOBS["twice"] is not None  # a child was started
    ahead.wait("twice")
    assert ahead._JOBS["twice"].returncode == 0
    assert ahead._cached(mod.twice, sig)
    mod.twice(a, out)  # loaded from the child's cache, not compiled here
    assert mod.twice.stats.cache_hits.most_common(1)[0][1] == 1
    assert not mod.twice.stats.cache_misses
    np.testing.assert_array_equal(out, 2 * a)
    ahead.start("twice", lambda: (a, out))  # once per process
    assert ahead._JOBS["twice"].returncode == 0


def test_compile_ahead_skips_cached_compiled_and_switched_off(tmp_path, monkeypatch):
    ahead, mod = _tiny_kernels(tmp_path, monkeypatch)
    a, out = np.arange(3.0), np.empty(3)
    monkeypatch.setenv("BAYESNEURON_COMPILE_AHEAD", "0")
    ahead.start("twice", lambda: (a, out))
    assert "twice" not in ahead._JOBS
    monkeypatch.delenv("BAYESNEURON_COMPILE_AHEAD")
    mod.twice(a, out)  # compiled here (and cached): nothing left to do ahead
    ahead.start("twice", lambda: (a, out))
    assert ahead._JOBS["twice"] is None
    ahead.wait("twice")  # a no-op
