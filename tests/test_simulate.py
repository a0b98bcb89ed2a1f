"""Simulator checks: analytic solutions, convergence order, invariances, gradients, bad input."""

import numpy as np
import pytest
import torch

from bayesneuron import (
    BackwardEuler,
    Cell,
    CrankNicolson,
    Leak,
    Morphology,
    ParameterError,
    SolverError,
    Stimulus,
    StimulusError,
    Torchdiffeq,
    chain,
    hh_channels,
    paper_chain,
    paper_channels,
    simulate,
)
from bayesneuron.simulation.hines import tree_solve, tree_system

FIXED = [BackwardEuler, CrankNicolson]


def _paper_cell():
    return Cell(paper_chain(), paper_channels(), v0=-60.0)


def _paper_stim(n_trace=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    vals = torch.randint(0, 20, (n_trace, 6, 48), generator=g).double()
    vals[..., 0] = vals[..., 47] = 0.0
    return Stimulus(vals, dt=0.1)


T_PAPER = np.linspace(0, 5, 50)[1:-1]


# --------------------------------------------------------------------------- analytic
@pytest.mark.parametrize(
    "solver, tol",
    [
        (CrankNicolson(dt=0.1), 2e-4),
        (BackwardEuler(dt=0.1), 0.05),
        (Torchdiffeq("dopri5", rtol=1e-10, atol=1e-10), 1e-7),
    ],
)
def test_passive_compartment_charging(solver, tol):
    g, e, i_inj, cm = 0.1, -70.0, 1.0, 2.0
    cell = Cell(chain(1, cm=cm), (Leak(g=g, e=e),), v0=e)
    stim = Stimulus(torch.full((1, 1, 1), i_inj, dtype=torch.float64), dt=50.0)
    t = np.linspace(0.0, 50.0, 101)
    v = simulate(cell, None, stim, t, solver).v[0, 0].numpy()
    exact = e + i_inj / g * (1.0 - np.exp(-t * g / cm))
    err = np.abs(v - exact).max()
    assert err < tol
    assert err > 0 or isinstance(solver, Torchdiffeq)


@pytest.mark.parametrize("solver", [CrankNicolson(dt=0.5), BackwardEuler(dt=0.5)])
def test_passive_cable_steady_state(solver):
    # Sealed-end chain of n unit-area compartments, current I into node 0. The discrete cable
    # equation ax (u[k+1] - 2u[k] + u[k-1]) = g u[k] has the exact solution
    # u[k] = C cosh(mu (k - n + 1/2)) with cosh(mu) = 1 + g / (2 ax).
    n, ax, g, e, i_inj = 20, 2.0, 0.1, -65.0, 3.0
    cell = Cell(chain(n, ax=ax, cm=1.0), (Leak(g=g, e=e),), v0=e)
    vals = torch.zeros(1, n, 1, dtype=torch.float64)
    vals[0, 0] = i_inj
    v = simulate(cell, None, Stimulus(vals, dt=2000.0), np.array([0.0, 2000.0]), solver).v
    mu = np.arccosh(1.0 + g / (2.0 * ax))
    k = np.arange(n)
    shape = np.cosh(mu * (k - n + 0.5))
    # Node 0 balance: I + ax (u1 - u0) = g u0.
    c = i_inj / (g * shape[0] - ax * (shape[1] - shape[0]))
    assert np.allclose(v[0, :, -1].numpy() - e, c * shape, atol=1e-8)


# --------------------------------------------------------------------------- convergence order
def _errors(scheme, dts, cell, stim, t, ref):
    return [float((simulate(cell, None, stim, t, scheme(dt=dt)).v - ref).abs().max()) for dt in dts]


@pytest.mark.parametrize("scheme, order", [(BackwardEuler, 1.0), (CrankNicolson, 2.0)])
def test_convergence_order_paper_model(scheme, order):
    cell, stim = _paper_cell(), _paper_stim(3)
    t = T_PAPER[:25]
    ref = simulate(cell, None, stim, t, Torchdiffeq("dopri5", rtol=1e-11, atol=1e-11)).v
    dts = [0.004, 0.002, 0.001]
    err = _errors(scheme, dts, cell, stim, t, ref)
    measured = np.log2(np.array(err[:-1]) / np.array(err[1:]))
    assert np.all(np.abs(measured - order) < 0.25), (err, measured)


@pytest.mark.parametrize("scheme, order", [(BackwardEuler, 1.0), (CrankNicolson, 2.0)])
def test_convergence_order_hh_chain(scheme, order):
    cell = Cell(chain(5, ax=1.0), hh_channels(), v0=-65.0)
    vals = torch.zeros(2, 5, 20, dtype=torch.float64)
    vals[0, 0, 2:] = 15.0
    vals[1, 4, 5:] = 30.0
    stim = Stimulus(vals, dt=0.5)
    t = np.linspace(0, 10.0, 21)
    ref = simulate(cell, None, stim, t, Torchdiffeq("dopri5", rtol=1e-11, atol=1e-11)).v
    err = _errors(scheme, [0.02, 0.01, 0.005], cell, stim, t, ref)
    measured = np.log2(np.array(err[:-1]) / np.array(err[1:]))
    assert np.all(np.abs(measured - order) < 0.3), (err, measured)


def test_rk4_through_torchdiffeq_is_fourth_order():
    cell, stim = _paper_cell(), _paper_stim(2)
    t = T_PAPER[:20]
    ref = simulate(cell, None, stim, t, Torchdiffeq("dopri5", rtol=1e-12, atol=1e-12)).v
    err = [
        float((simulate(cell, None, stim, t, Torchdiffeq("rk4", step_size=h)).v - ref).abs().max())
        for h in (0.01, 0.005)
    ]
    assert 3.5 < np.log2(err[0] / err[1]) < 4.5, err


# --------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("scheme", FIXED)
def test_huge_axial_conductance_moves_as_one(scheme):
    n = 4
    tight = Cell(chain(n, ax=1e7), hh_channels(), v0=-65.0)
    single = Cell(chain(1), hh_channels(), v0=-65.0)
    vals = torch.zeros(1, n, 40, dtype=torch.float64)
    vals[0, 0, 4:30] = 4 * 12.0  # into one of n equal compartments = 12 into the merged one
    v = simulate(tight, None, Stimulus(vals, dt=0.25), None, scheme(dt=0.01)).v
    v1 = simulate(single, None, Stimulus(vals[:, :1] / n, dt=0.25), None, scheme(dt=0.01)).v
    assert v1.max() > 0  # it spikes
    assert (v - v1).abs().max() < 1e-3


@pytest.mark.parametrize("scheme", FIXED)
def test_zero_conductance_channel_has_no_effect(scheme):
    base = _paper_cell()
    extra = Cell(base.morphology, (*base.channels, Leak(name="extra", g=0.0, e=20.0)), v0=-60.0)
    stim = _paper_stim(2)
    a = simulate(base, None, stim, T_PAPER, scheme(dt=0.01)).v
    b = simulate(extra, None, stim, T_PAPER, scheme(dt=0.01)).v
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "solver",
    [CrankNicolson(dt=0.01), BackwardEuler(dt=0.01), Torchdiffeq("dopri5", rtol=1e-8, atol=1e-8)],
)
def test_batch_of_one_equals_unbatched_and_batches_equal_loops(solver):
    cell, stim = _paper_cell(), _paper_stim(3)
    g = torch.tensor([[90.0, 100, 110, 120, 80, 95], [100.0] * 6], dtype=torch.float64)
    v1 = simulate(cell, {"g_na": g[0]}, stim, T_PAPER, solver).v
    vb1 = simulate(cell, {"g_na": g[:1]}, stim, T_PAPER, solver).v
    assert v1.shape == (3, 6, 48) and vb1.shape == (1, 3, 6, 48)
    assert torch.allclose(vb1[0], v1, atol=1e-9, rtol=0)
    vb = simulate(cell, {"g_na": g}, stim, T_PAPER, solver).v
    for s in range(2):
        vs = simulate(cell, {"g_na": g[s]}, stim, T_PAPER, solver).v
        # adaptive steps are chosen for the whole batch: agreement to the tolerance only
        tol = 1e-4 if isinstance(solver, Torchdiffeq) else 1e-9
        assert torch.allclose(vb[s], vs, atol=tol, rtol=0)
    # leading stimulus dims broadcast against sample dims: [2, 3, 6, bins] with [2, 6]
    stim2 = Stimulus(stim.values.expand(2, -1, -1, -1).clone(), dt=0.1)
    assert simulate(cell, {"g_na": g}, stim2, T_PAPER, solver).v.shape == (2, 3, 6, 48)


def test_output_starts_at_v0_and_paper_grid():
    cell = _paper_cell()
    tr = simulate(cell, None, _paper_stim(2), T_PAPER, CrankNicolson(dt=0.01))
    assert tr.v.shape == (2, 6, 48) and torch.all(tr.v[..., 0] == -60.0)
    assert np.allclose(tr.t.numpy(), T_PAPER)


def test_float32_close_to_float64():
    cell, stim = _paper_cell(), _paper_stim(2)
    v64 = simulate(cell, None, stim, T_PAPER, CrankNicolson(dt=0.005)).v
    v32 = simulate(cell, None, stim, T_PAPER, CrankNicolson(dt=0.005), dtype=torch.float32).v
    assert v32.dtype == torch.float32
    assert (v32.double() - v64).abs().max() < 0.05


# --------------------------------------------------------------------------- tree solve
def _random_tree(n, seed=0):
    rng = np.random.default_rng(seed)
    parents = [-1] + [int(rng.integers(0, i)) for i in range(1, n)]
    return Morphology.from_parents(parents, ax=rng.uniform(0.1, 2.0, n), cm=rng.uniform(0.5, 2, n))


@pytest.mark.parametrize("n", [7, 60])
def test_tree_solve_matches_dense_solve(n):
    sys = tree_system(_random_tree(n))
    coef = sys.tensors(torch.float64, "cpu")
    d = torch.rand(3, n, dtype=torch.float64) + sys.diag.max() + 1.0
    r = torch.randn(3, n, dtype=torch.float64)
    dense = np.zeros((n, n))
    for i in range(1, n):
        dense[i, sys.parent[i]] = sys.a[i]
        dense[sys.parent[i], i] = sys.b[i]
    x = tree_solve(d.T, r.T, coef).T  # node axis first
    for k in range(3):
        m = dense + np.diag(d[k].numpy())
        assert np.allclose(m @ x[k].numpy(), r[k].numpy(), atol=1e-10)


def test_level_solve_gradients_to_second_order():
    n = 40
    sys = tree_system(_random_tree(n, seed=3))
    coef = sys.tensors(torch.float64, "cpu")
    d = (torch.rand(2, n, dtype=torch.float64) + sys.diag.max() + 1.0).requires_grad_()
    r = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    f = lambda d, r: tree_solve(d.T, r.T, coef)  # noqa: E731
    assert torch.autograd.gradcheck(f, (d, r))
    assert torch.autograd.gradgradcheck(f, (d, r))


# --------------------------------------------------------------------------- gradients
def _fd_check(solver, cell, stim, t, names=("g_na", "g_k"), h=1e-3):
    base = {k: torch.tensor(cell.params[k]) for k in names}
    target = simulate(cell, {k: v * 1.1 for k, v in base.items()}, stim, t, solver).v.detach()

    def loss(p):
        return ((simulate(cell, p, stim, t, solver).v - target) ** 2).mean()

    p = {k: v.clone().requires_grad_() for k, v in base.items()}
    grads = torch.autograd.grad(loss(p), list(p.values()))
    worst = 0.0
    for (k, v), g in zip(base.items(), grads):
        fd = torch.zeros_like(v)
        for i in range(len(v)):
            up, dn = v.clone(), v.clone()
            up[i] += h
            dn[i] -= h
            with torch.no_grad():
                fd[i] = (loss({**base, k: up}) - loss({**base, k: dn})) / (2 * h)
        worst = max(worst, float(((g - fd).abs() / fd.abs().clamp_min(1e-12)).max()))
    return worst


@pytest.mark.parametrize("scheme", FIXED)
def test_gradients_match_finite_differences_paper(scheme):
    assert _fd_check(scheme(dt=0.01), _paper_cell(), _paper_stim(3), T_PAPER[:30]) < 1e-5


def test_gradients_match_finite_differences_branched_level_solver():
    # 30-compartment branched HH tree: exercises the custom-backward tree solve.
    morph = _random_tree(30, seed=5)
    cell = Cell(morph, hh_channels(), v0=-65.0)
    vals = torch.zeros(2, 30, 10, dtype=torch.float64)
    vals[0, 0, 1:] = 20.0
    vals[1, 7, 2:] = 40.0
    stim = Stimulus(vals, dt=0.5)
    assert _fd_check(CrankNicolson(dt=0.05), cell, stim, np.linspace(0, 5, 11), h=1e-4) < 1e-5


def test_adjoint_matches_direct_backprop():
    cell, stim = _paper_cell(), _paper_stim(2)
    t = T_PAPER[:20]
    grads = []
    for adjoint in (False, True):
        g = torch.tensor(cell.params["g_na"]).requires_grad_()
        solver = Torchdiffeq("dopri5", rtol=1e-9, atol=1e-9, adjoint=adjoint)
        loss = simulate(cell, {"g_na": g}, stim, t, solver).v.pow(2).mean()
        grads.append(torch.autograd.grad(loss, g)[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-8)


def test_checkpointing_gives_identical_values_and_gradients():
    cell, stim = _paper_cell(), _paper_stim(2)
    out = []
    for chunk in (None, 50):
        g = torch.tensor(cell.params["g_k"]).requires_grad_()
        v = simulate(
            cell,
            {"g_k": g},
            stim,
            T_PAPER,
            CrankNicolson(dt=0.01, checkpoint_every=chunk, backend="torch"),
        ).v
        out.append((v.detach(), torch.autograd.grad(v.pow(2).mean(), g)[0]))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-12)
    assert torch.allclose(out[0][1], out[1][1], rtol=1e-10)


# --------------------------------------------------------------------------- bad input
def _bad_cases():
    cell = _paper_cell()
    ok = _paper_stim(2)
    vals = ok.values
    nan = vals.clone()
    nan[0, 1, 3] = float("nan")
    return [
        (
            lambda: simulate(cell, None, Stimulus(vals[:, :5], dt=0.1)),
            StimulusError,
            r"5 compartments on axis -2 .* the cell has 6",
        ),
        (
            lambda: Stimulus(nan, dt=0.1),
            StimulusError,
            r"NaN or inf \(first at index \[0, 1, 3\]\)",
        ),
        (lambda: Stimulus(vals[0, 0], dt=0.1), StimulusError, r"expected \[trace, comp, time\]"),
        (lambda: Stimulus(vals, dt=0.0), StimulusError, "dt = 0.0 ms must be finite and > 0"),
        (
            lambda: simulate(cell, None, Stimulus(vals, dt=0.1, unit="nA")),
            StimulusError,
            "this cell takes uA/cm2",
        ),
        (lambda: simulate(cell, None, vals), StimulusError, "wrap an array of currents"),
        (lambda: CrankNicolson(dt=-0.01), SolverError, "dt = -0.01 ms must be a finite number > 0"),
        (lambda: BackwardEuler(dt=float("nan")), SolverError, "must be a finite number > 0"),
        (lambda: simulate(cell, None, ok, [0.0, 2.0, 1.0]), SolverError, "strictly increasing"),
        (
            lambda: simulate(cell, {"g_na": torch.ones(3, 5)}, ok),
            ParameterError,
            r"g_na has shape \(3, 5\); expected \[sample…, 6\]",
        ),
        (
            lambda: simulate(cell, {"g_k": torch.full((6,), float("nan"))}, ok),
            ParameterError,
            "g_k contains NaN or inf",
        ),
        (
            lambda: simulate(cell, {"gna": torch.ones(6)}, ok),
            ParameterError,
            r"unknown parameter\(s\) \['gna'\]",
        ),
        (lambda: Torchdiffeq("dopri7"), SolverError, "unknown torchdiffeq method 'dopri7'"),
        (lambda: Torchdiffeq("rk4"), SolverError, "give step_size"),
        (lambda: simulate(cell, None, ok, solver="cn"), SolverError, "solver must be"),
        (lambda: cell.morphology.index(6), Exception, "compartment 6 does not exist"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_raises_specific_error(case):
    fn, err, match = _bad_cases()[case]
    with pytest.raises(err, match=match):
        fn()


# --------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.parametrize(
    "solver", [CrankNicolson(dt=0.01), Torchdiffeq("dopri5", rtol=1e-8, atol=1e-8)]
)
def test_cuda_matches_cpu(solver):
    cell, stim = _paper_cell(), _paper_stim(4)
    g = torch.tensor(cell.params["g_na"])
    cpu = simulate(cell, {"g_na": g}, stim, T_PAPER, solver).v
    gc = g.cuda().requires_grad_()
    gpu = simulate(cell, {"g_na": gc}, stim, T_PAPER, solver, device="cuda").v
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-6)
    gpu.pow(2).mean().backward()
    assert torch.isfinite(gc.grad).all()


@pytest.mark.parametrize("scheme", FIXED)
def test_compiled_steps_match_eager(scheme):
    cell, stim = _paper_cell(), _paper_stim(2)
    out = []
    for compile_ in (False, True):
        g = torch.tensor(cell.params["g_na"]).requires_grad_()
        kw = {"backend": "torch"} if scheme is CrankNicolson else {}
        v = simulate(cell, {"g_na": g}, stim, T_PAPER[:12], scheme(0.01, compile=compile_, **kw)).v
        out.append((v.detach(), torch.autograd.grad(v.pow(2).mean(), g)[0]))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-9)
    assert torch.allclose(out[0][1], out[1][1], rtol=1e-8)


def test_auto_checkpointing_kicks_in_only_for_large_differentiable_runs(monkeypatch):
    import sys

    sim = sys.modules["bayesneuron.simulation.stepping"]
    v = torch.zeros(6, 100, dtype=torch.float64)
    x = [v] * 3
    grad = [{"g": torch.ones(6, 1, dtype=torch.float64, requires_grad=True)}]
    assert sim._auto_chunk(1000, v, x, grad) is None  # 1000 × 4.8 kB × 12 × 4 ≈ 0.2 GB
    assert sim._auto_chunk(10000, v, x, grad) == 100
    assert sim._auto_chunk(10000, v, x, [{"g": torch.ones(6, 1)}]) is None  # no gradient
    monkeypatch.setattr(sim, "AUTO_CHECKPOINT_BYTES", 1e3)
    cell, stim = _paper_cell(), _paper_stim(2)
    g = torch.tensor(cell.params["g_k"]).requires_grad_()
    solver = CrankNicolson(dt=0.01, backend="torch")  # checkpointing is the torch backend's
    v_auto = simulate(cell, {"g_k": g}, stim, T_PAPER[:10], solver).v
    grad_auto = torch.autograd.grad(v_auto.pow(2).mean(), g)[0]
    v_off = simulate(
        cell,
        {"g_k": g},
        stim,
        T_PAPER[:10],
        CrankNicolson(dt=0.01, checkpoint_every=None, backend="torch"),
    ).v
    assert torch.allclose(grad_auto, torch.autograd.grad(v_off.pow(2).mean(), g)[0], rtol=1e-10)


@pytest.mark.parametrize("backend", ["fused", "torch"])
def test_negative_conductances_are_refused_not_simulated(backend):
    """A negative maximal conductance used to run and return finite voltages; now it is an
    error that names the parameter, on every backend."""
    from bayesneuron import ParameterError

    cell, stim = _paper_cell(), _paper_stim(2)
    solver = CrankNicolson(dt=0.01, backend=backend)
    g = torch.full((cell.n_comp,), 100.0, dtype=torch.float64)
    g[3] = -50.0
    with pytest.raises(ParameterError, match=r"g_na has negative values \(min -50\)"):
        simulate(cell, {"g_na": g}, stim, solver=solver)
    g[3] = 0.0  # zero is a channel switched off: allowed
    v = simulate(cell, {"g_na": g}, stim, solver=solver).v
    assert torch.isfinite(v).all()
    # reversal potentials may be negative, of course
    simulate(cell, {"e_k": torch.full((cell.n_comp,), -90.0)}, stim, solver=solver)
