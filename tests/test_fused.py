"""The fused C kernel (``CrankNicolson(backend="fused")``, the default on CPU in float64) against
the torch backend (``backend="torch"``): voltages, gradients, sensitivities, threads, and which
runs take which backend."""

import dataclasses
import math
import os
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from bayesneuron import (
    Cell,
    Channel,
    CrankNicolson,
    Leak,
    Morphology,
    PaperSodium,
    Reset,
    SolverError,
    Stimulus,
    chain,
    hh_channels,
    hh_tree_cell,
    paper_channels,
    paper_currents,
    paper_ground_truth,
    paper_time_grid,
    paper_toy_cell,
    sensitivities,
    simulate,
    step_current,
)
from bayesneuron.channels import (
    Constant,
    Exponential,
    Gate,
    HHPotassium,
    HHSodium,
    Kinetics,
    Linoid,
    Rate,
    RateChannel,
    Sigmoid,
)
from bayesneuron.simulation import fused, runs_fused
from bayesneuron.simulation.grid import currents

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler for the fused kernel"
)

CELL = paper_toy_cell()
STIM = paper_currents(n_traces=5)
T = paper_time_grid()[:20]
TORCH, FUSED = CrankNicolson(dt=0.01, backend="torch"), CrankNicolson(dt=0.01, backend="fused")


def _params(batch=(3,), requires_grad=False):
    """g_na ``[*batch, 6]``, g_k ``[6]`` and g_l a scalar: three ways to broadcast."""
    gen = torch.Generator().manual_seed(1)
    gt = paper_ground_truth()
    g_na = gt["g_na"] * (1 + 0.1 * torch.randn(batch + (6,), generator=gen, dtype=torch.float64))
    p = {"g_na": g_na, "g_k": gt["g_k"].clone(), "g_l": torch.tensor(0.03, dtype=torch.float64)}
    return {k: v.requires_grad_(requires_grad) for k, v in p.items()}


def _both(cell, params, stim, t=T, dt=0.01, seed=2, **kw):
    """Voltages and d(Σ w·V)/d(params) from the torch and the fused backend."""
    res = []
    for backend in ("torch", "fused"):
        v = simulate(cell, params, stim, t, CrankNicolson(dt=dt, backend=backend), **kw).v
        w = torch.randn(v.shape, generator=torch.Generator().manual_seed(seed), dtype=v.dtype)
        leaves = [x for x in params.values() if x.requires_grad]
        grads = torch.autograd.grad((w * v).sum(), leaves) if leaves else ()
        res.append((v.detach(), grads))
    return res


def _assert_close(res, v_tol=1e-10, g_tol=1e-9):
    """Voltages within ``v_tol`` mV (≈ 1e-12 relative), gradients within ``g_tol`` relative."""
    (vt, gt), (vf, gf) = res
    assert vt.shape == vf.shape
    assert (vt - vf).abs().max() <= v_tol
    for a, b in zip(gt, gf, strict=True):
        assert a.shape == b.shape
        assert a.abs().max() > 0  # a gradient that is there
        assert (a - b).abs().max() <= g_tol * a.abs().max(), (a, b)


def test_torch_thread_count_is_left_alone():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        simulate(CELL, None, STIM, T[:3], FUSED)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_chunks_give_every_thread_work():
    assert fused._chunking(100, 6, 1) == (100, 1)
    assert fused._chunking(100, 6, 2) == (52, 2)  # lanes: a multiple of the vector width
    assert fused._chunking(300, 6, 2) == (76, 4)  # ≤ 128 lanes, as many chunks per thread
    assert fused._chunking(3, 6, 2) == (4, 1)
    assert fused._chunking(100, 400, 1) == (16, 7)  # big cells: fewer lanes, to stay in cache


def test_threads_and_chunks_give_bit_identical_results(monkeypatch):
    # every trajectory is independent: how the batch is split over threads must not matter
    stim = paper_currents(n_traces=7)
    before = torch.get_num_threads()
    runs = []
    try:
        for threads, max_lanes in ((1, 128), (2, 128), (2, 4), (3, 8)):
            monkeypatch.setattr(fused, "_MAX_LANES", max_lanes)
            torch.set_num_threads(threads)
            params = _params((3,), requires_grad=True)
            v = simulate(CELL, params, stim, T, FUSED).v
            runs.append((v.detach(), torch.autograd.grad(v.square().sum(), [params["g_na"]])[0]))
            _, jac = sensitivities(CELL, params, stim, T, FUSED, wrt=("g_k",))
            runs[-1] += (jac,)
    finally:
        torch.set_num_threads(before)
    for v, g, j in runs[1:]:
        assert torch.equal(v, runs[0][0]) and torch.equal(g, runs[0][1])
        assert torch.equal(j, runs[0][2])


def _simulate_in_child(queue):
    torch.set_num_threads(2)
    queue.put(simulate(CELL, None, STIM, T, FUSED).v.numpy())


def test_threads_work_in_a_forked_child():
    # the parent's thread pool does not survive a fork; the child must not wait on it
    mp = pytest.importorskip("multiprocessing")
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork here")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        v = simulate(CELL, None, STIM, T, FUSED).v  # the parent's pool now exists
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
        v = simulate(CELL, p, STIM, T, FUSED).v
        return torch.autograd.grad(v.square().sum(), [p["g_na"]])[0]

    alone = [grad(p1), grad(p2)]  # the second reuses the first's buffer
    v1 = simulate(CELL, p1, STIM, T, FUSED).v
    v2 = simulate(CELL, p2, STIM, T, FUSED).v  # while the first history is alive
    both = [torch.autograd.grad(v.square().sum(), [p["g_na"]])[0] for v, p in ((v1, p1), (v2, p2))]
    assert not torch.equal(alone[0], alone[1])
    assert all(torch.equal(a, b) for a, b in zip(alone, both))


@pytest.mark.parametrize("batch", [(3,), ()])
def test_forward_matches_torch(batch):
    with torch.no_grad():
        _assert_close(_both(CELL, _params(batch), STIM))
    # unbatched defaults and scalars too
    v0 = simulate(CELL, None, STIM, T, TORCH).v
    v1 = simulate(CELL, {"g_k": 40.0}, STIM, T, FUSED).v
    assert v1.shape == v0.shape == (5, 6, 20)
    assert (simulate(CELL, None, STIM, T, FUSED).v - v0).abs().max() <= 1e-10
    assert (simulate(CELL, {"g_k": 40.0}, STIM, T, TORCH).v - v1).abs().max() <= 1e-10
    assert (v1 - v0).abs().max() > 1e-3  # g_k matters


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


def test_hh_tree_matches_torch():
    # every g and e of NEURON's hh, per compartment; the voltages spike (so errors would grow)
    params = {
        k: torch.tensor(x, dtype=torch.float64, requires_grad=True)
        for k, x in HH_CELL.params.items()
    }
    res = _both(HH_CELL, params, HH_STIM, HH_T, dt=0.025, seed=3)
    assert res[0][0].max() > 30.0  # spikes
    assert len(res[1][1]) == 6
    _assert_close(res, v_tol=1e-9, g_tol=1e-9)


def test_hh_tree_batched_parameters_temperature_and_reset_match_torch():
    gen = torch.Generator().manual_seed(4)
    g_na = 120.0 * (1 + 0.2 * torch.rand(2, 1, 6, generator=gen, dtype=torch.float64))
    params = {
        "g_na": g_na.requires_grad_(True),  # a sample dim [2] against the stimulus' traces [3]
        "g_k": torch.full((6,), 30.0, dtype=torch.float64, requires_grad=True),
        "e_k": torch.tensor(-75.0, dtype=torch.float64, requires_grad=True),
    }
    cell = hh_tree_cell(16.3)
    res = _both(cell, params, HH_STIM, HH_T, dt=0.025, seed=3)
    assert res[1][0].shape == (2, 1, 3, 6, len(HH_T))
    _assert_close(res, v_tol=1e-9, g_tol=1e-9)
    # restarts from data at every 5th output time, on the soma and dend[0] only
    held = res[0][0][0].clone()
    held[:, 2:] = math.nan
    res = _both(cell, params, HH_STIM, HH_T, dt=0.025, seed=3, reset=Reset(held, 5))
    _assert_close(res, v_tol=1e-9, g_tol=1e-9)


def _fused_grads(cell, params, stim, t, every, reset=None, paper_loops=False):
    """Voltages and d(Σ w·V)/d(every g and e) from the fused kernel with ``checkpoint_every``."""
    p = {k: x.detach().clone().requires_grad_(True) for k, x in params.items()}
    solver = CrankNicolson(dt=0.025, backend="fused", checkpoint_every=every)
    v = simulate(cell, p, stim, t, solver, reset=reset).v
    w = torch.randn(v.shape, generator=torch.Generator().manual_seed(5), dtype=v.dtype)
    return v.detach(), torch.autograd.grad((w * v).sum(), list(p.values()))


@pytest.mark.parametrize("every", [1, 7, 100, "auto"])
def test_checkpointed_adjoint_is_bit_identical_to_the_stored_one(every, monkeypatch):
    """Segments of ``every`` steps recomputed in the adjoint (``"auto"`` forced by a tiny
    memory limit): the same voltages and gradients, bit for bit — with a sample dim, a reset
    from data and a graph with a loop."""
    gen = torch.Generator().manual_seed(4)
    params = {k: torch.tensor(x, dtype=torch.float64) for k, x in HH_CELL.params.items()}
    params["g_na"] = params["g_na"] * (1 + 0.2 * torch.rand(2, 1, 6, generator=gen).double())
    held = simulate(HH_CELL, params, HH_STIM, HH_T).v[0].clone()
    held[:, 2:] = math.nan
    loopy = Morphology.from_adjacency(
        np.array([[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 0]]), ax=0.7,
        tree_only=False,
    )  # fmt: skip
    assert loopy.n_loops == 1
    cases = [
        (HH_CELL, params, None),
        (HH_CELL, params, Reset(held, 5)),
        (Cell(loopy, hh_channels()), {"g_na": torch.full((4,), 120.0).double()}, None),
    ]
    if every == "auto":
        monkeypatch.setattr(fused, "AUTO_CHECKPOINT_BYTES", 1.0)
    for cell, par, reset in cases:
        stim = HH_STIM
        if cell is not HH_CELL:  # an abstract cell: µA/cm²
            stim = step_current([5.0, 15.0], 0, 4, 1.0, 8.0, 12.0, unit="uA/cm2")
        v0, g0 = _fused_grads(cell, par, stim, HH_T, None, reset)
        v1, g1 = _fused_grads(cell, par, stim, HH_T, every, reset)
        assert torch.equal(v0, v1)
        assert all(a.abs().max() > 0 and torch.equal(a, b) for a, b in zip(g0, g1, strict=True))


def test_checkpoint_auto_bounds_the_stored_history(monkeypatch):
    """Above the memory limit ``"auto"`` keeps segments of ⌈√steps⌉ steps (the checkpoints and
    one segment's history) instead of every step's history."""
    flat = [torch.zeros(6, dtype=torch.float64)] * (2 * len(HH_CELL.channels))
    cur = currents(HH_STIM, HH_CELL.morphology, torch.float64, "cpu")
    prob = fused.KernelProblem(HH_CELL, flat, cur, HH_STIM, HH_T, 0.025, None, store=True)
    n_steps = len(prob.steps[0])
    prob.checkpoint("auto")
    assert prob.segment is None  # a small run stores its history
    monkeypatch.setattr(fused, "AUTO_CHECKPOINT_BYTES", 1.0)
    prob.checkpoint("auto")
    assert prob.segment == math.ceil(math.sqrt(n_steps)) < n_steps
    prob.checkpoint(n_steps)  # a segment as long as the run: the whole history
    assert prob.segment is None
    prob.checkpoint(None)
    assert prob.segment is None


@dataclass(frozen=True)
class _Probe(RateChannel):
    """One gate with the given rates (a stand-in for any channel declared from rate forms)."""

    name: str = "probe"
    alpha: Rate = Constant(1.0)
    beta: Rate = Constant(1.0)
    power: int = 1
    g: float = 5.0

    def param_defaults(self):
        return {"g": self.g, "e": 0.0}

    def kinetics(self):
        return Kinetics(gates=(Gate("x", self.alpha, self.beta, self.power),))


def test_rates_match_torch_at_and_around_the_linoid_singularities():
    # Restarting the voltage at every step evaluates each gate's rates at chosen voltages: at
    # each Linoid's v_half (α_m −40, α_n −55, the M-type pair −30 mV), just beside it (where a
    # closed form loses digits), across the series/closed-form switch (|u| = 0.1) and over
    # −150…100 mV; every form (softplus, exponential, sigmoid, linoid, constant) is present.
    chans = (HHSodium(), HHPotassium(), PaperSodium(name="pna"),
             _Probe("km", Linoid(0.05, -30.0, 9.0), Linoid(-0.05, -30.0, -9.0)),
             _Probe("sg", Sigmoid(0.5, -60.0, -6.0), Constant(0.2)), Leak())  # fmt: skip
    cell = Cell(chain(1), chans, v0=-65.0)
    off = np.array([0.0, 1e-12, 1e-9, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.5, 0.99, 1.0, 1.01, 3])
    vs = np.concatenate(
        [
            vh + s * off * k
            for vh, k in ((-40.0, 10.0), (-55.0, 10.0), (-30.0, 9.0))
            for s in (1, -1)
        ]
        + [np.linspace(-150.0, 100.0, 51)]
    )
    dt, n = 0.02, len(vs)
    t = np.arange(n + 1) * dt
    stim = Stimulus(torch.zeros(1, 1, n + 1, dtype=torch.float64), dt=dt)
    held = torch.tensor(np.append(vs, np.nan), dtype=torch.float64).reshape(1, 1, n + 1)
    res = _both(cell, {}, stim, t, dt=dt, reset=Reset(held, 1))
    assert (res[0][0][..., 1:] - held[..., :-1]).abs().max() > 10.0  # the channels act
    _assert_close(res, v_tol=1e-12)  # |V| ≤ 150 mV: 1e-14 relative
    # the check can fail: a Linoid scale off by 1e-10 moves the voltages by far more
    moved = (*chans[:3], _Probe("km", Linoid(0.05 * (1 + 1e-10), -30.0, 9.0), chans[3].beta),
             *chans[4:])  # fmt: skip
    v = simulate(Cell(chain(1), moved, v0=-65.0), {}, stim, t, TORCH, reset=Reset(held, 1)).v
    assert (v - res[0][0]).abs().max() > 1e-11


@pytest.mark.parametrize("k", [10.0, -9.0])
@pytest.mark.parametrize("u", [0.0, 9e-7, -9e-7, 5e-5, 0.099, -0.101])
def test_gradients_match_torch_resting_on_a_linoid_singularity(k, u):
    # A cell at rest at v0 = v_half − u·k of a Linoid opening rate (the leak's reversal
    # balances the current there), so every step evaluates the rate and its slope at that u:
    # on the singularity, just beside it, and on both sides of the series/closed-form switch at
    # |u| = 0.1. The slope enters the gradients through the gate updates (a kernel whose slope
    # was 3e-7 off at |u| < 1e-6 failed here).
    v_half = -40.0
    v0 = v_half - u * k
    probe = _Probe("p", Linoid(1.0, v_half, k), Constant(1.0))
    x0 = probe.init_gates(torch.tensor(v0, dtype=torch.float64), {})["x"].item()
    cell = Cell(chain(1), (probe, Leak(g=1.0, e=v0 + 5.0 * x0 * v0)), v0=v0)
    stim = Stimulus(torch.zeros(1, 1, 4, dtype=torch.float64), dt=0.5)
    params = {name: torch.tensor(x, requires_grad=True) for name, x in cell.params.items()}
    res = _both(cell, params, stim, np.linspace(0.0, 2.0, 41))
    assert (res[0][0] - v0).abs().max() <= 1e-10  # at rest, to rounding
    _assert_close(res, v_tol=1e-12, g_tol=1e-12)


# --------------------------------------------------------------------------- which backend
@dataclass(frozen=True)
class _SlowK(Channel):
    """A channel that writes its own gates: not a RateChannel, so the torch backend's."""

    name: str = "km"
    state_names = ("n",)

    def param_defaults(self):
        return {"g": 1.0, "e": -90.0}

    def gates(self, v, p):
        return {"n": (torch.sigmoid((v + 35.0) / 5.0), 100.0 + 0.0 * v)}

    def conductance(self, x, p):
        return p["g"] * x["n"], p["e"]


@dataclass(frozen=True)
class _ThreeGates(RateChannel):
    name: str = "k3"

    def param_defaults(self):
        return {"g": 5.0, "e": -80.0}

    def kinetics(self):
        a, b = Exponential(0.1, -50.0, -10.0), Sigmoid(0.2, -60.0, -5.0)
        return Kinetics(gates=(Gate("p", a, b), Gate("q", b, a), Gate("r", a, a, power=2)))


TWO = Morphology.from_parents([-1, 0])
HIGH_POWER = _Probe("k6", Linoid(0.01, -55.0, 10.0), Exponential(0.125, -65.0, 80.0), 6, 20.0)
UNFUSABLE = {
    "plain Channel": Cell(TWO, (*hh_channels(), _SlowK())),
    "three gates": Cell(TWO, (*hh_channels(), _ThreeGates())),
    "gate power 6": Cell(TWO, (*hh_channels(), HIGH_POWER)),
}


@pytest.mark.parametrize(
    "cell, kw, match",
    [
        (UNFUSABLE["plain Channel"], {}, "_SlowK writes its own gates"),
        (UNFUSABLE["three gates"], {}, "≤ 2 gates per channel; k3 has more"),
        (UNFUSABLE["gate power 6"], {}, "gate powers ≤ 4; k6"),
        (CELL, {"dtype": torch.float32}, "float64; got torch.float32"),
    ],
)
def test_fused_refuses_what_it_cannot_run_with_the_reason(cell, kw, match):
    stim = Stimulus(torch.ones(1, cell.n_comp, 2), dt=0.5)
    with pytest.raises(SolverError, match=f"backend='fused' cannot run this: .*{match}"):
        simulate(cell, None, stim, None, FUSED, **kw)


@pytest.mark.parametrize("name", sorted(UNFUSABLE))
def test_auto_runs_unfusable_channels_on_torch(name):
    # backend="auto" takes the torch backend for them, with the same result; a gate power above
    # the kernel's 4 is simulated right (it was once silently taken as 4)
    cell = UNFUSABLE[name]
    stim = Stimulus(torch.full((1, 2, 20), 10.0, dtype=torch.float64), dt=0.25)
    assert not runs_fused(cell, CrankNicolson())
    v = simulate(cell, None, stim, None, CrankNicolson()).v
    assert torch.equal(v, simulate(cell, None, stim, None, CrankNicolson(backend="torch")).v)
    plain = simulate(Cell(TWO, hh_channels()), None, stim, None, CrankNicolson()).v
    assert (v - plain).abs().max() > 0.1  # the extra channel acts


def test_default_solver_runs_fused_on_cpu_float64():
    params = _params((2,))
    assert runs_fused(CELL, CrankNicolson())
    assert runs_fused(CELL, CrankNicolson(), torch.float64, "cpu", STIM, None, params.values())
    v = simulate(CELL, params, STIM, T, CrankNicolson(dt=0.01)).v
    assert torch.equal(v, simulate(CELL, params, STIM, T, FUSED).v)
    default = simulate(CELL, params, STIM, T).v  # solver=None: CrankNicolson()
    assert torch.equal(default, simulate(CELL, params, STIM, T, CrankNicolson(backend="fused")).v)
    assert not torch.equal(v, simulate(CELL, params, STIM, T, TORCH).v)  # a different code path
    assert not runs_fused(CELL, TORCH)
    assert not runs_fused(CELL, CrankNicolson(compile=True))


def test_default_solver_runs_torch_in_float32():
    auto = CrankNicolson(dt=0.01)
    assert not runs_fused(CELL, auto, torch.float32)
    v = simulate(CELL, None, STIM, T, auto, dtype=torch.float32).v
    assert v.dtype == torch.float32
    assert torch.equal(v, simulate(CELL, None, STIM, T, TORCH, dtype=torch.float32).v)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_default_solver_runs_torch_for_forward_mode_ad_and_it_equals_sensitivities():
    # a dual g_na (tangent: one unit vector per sample) runs the torch backend, whose forward
    # derivatives are the fused kernel's exact sensitivities
    stim, t = paper_currents(n_traces=2), T[:10]
    g_na = torch.as_tensor(paper_ground_truth()["g_na"], dtype=torch.float64) * 1.05
    with fwAD.dual_level():
        dual = fwAD.make_dual(g_na.expand(6, 6).clone(), torch.eye(6, dtype=torch.float64))
        assert not runs_fused(CELL, CrankNicolson(), params=(dual,))
        v = simulate(CELL, {"g_na": dual}, stim, t, CrankNicolson(dt=0.01)).v
        v, tangent = fwAD.unpack_dual(v)
    assert tangent is not None and tangent.shape == (6, 2, 6, 10)
    v_f, jac = sensitivities(CELL, {"g_na": g_na}, stim, t, FUSED, wrt=("g_na",))
    assert (v[0] - v_f).abs().max() <= 1e-10
    ref = tangent.movedim(0, 1)  # [trace, k, comp, time]
    assert ref.abs().max() > 0.1
    assert (jac - ref).abs().max() <= 1e-9 * ref.abs().max()


def _current_grads(cell, params, stim, t, solver, reset=None):
    """Voltages and d(Σ w·V)/d(stimulus values, every parameter)."""
    vals = stim.values.detach().clone().requires_grad_(True)
    stim = dataclasses.replace(stim, values=vals)
    p = {k: x.detach().clone().requires_grad_(True) for k, x in params.items()}
    v = simulate(cell, p, stim, t, solver, reset=reset).v
    w = torch.randn(v.shape, generator=torch.Generator().manual_seed(7), dtype=v.dtype)
    return v.detach(), torch.autograd.grad((w * v).sum(), [vals, *p.values()])


@pytest.mark.parametrize("every", [None, 7])
def test_gradients_with_respect_to_currents_match_torch(every):
    """The fused adjoint's ∂L/∂(current): the default solver takes the fused kernel for them,
    and they equal the torch backend's — per-trace currents in µA/cm² on the paper's cell with
    a sample dim; nA at two sparse sites of the HH tree with a reset from data; checkpointed."""
    fused_, torch_ = (
        CrankNicolson(dt=0.01, backend=b, checkpoint_every=every) for b in ("fused", "torch")
    )
    vals = STIM.values[:2].clone().requires_grad_(True)
    assert runs_fused(CELL, CrankNicolson(), stimulus=Stimulus(vals, dt=STIM.dt))
    params = _params(batch=(3, 1))
    res = [_current_grads(CELL, params, STIM, T, s) for s in (torch_, fused_)]
    (vt, gt), (vf, gf) = res
    assert gt[0].shape == gf[0].shape == STIM.values.shape and gt[0].abs().max() > 0
    _assert_close(res)
    hh = {"g_na": torch.full((6,), 120.0, dtype=torch.float64)}
    held = simulate(HH_CELL, hh, HH_STIM, HH_T).v.clone()
    held[:, 1:] = math.nan
    sparse = Stimulus(HH_STIM.values[:, :1].repeat(1, 2, 1) * torch.tensor([[1.0], [0.5]]),
                      dt=HH_STIM.dt, unit="nA", sites=(0, 4))  # fmt: skip
    solvers = [dataclasses.replace(x, dt=0.025) for x in (torch_, fused_)]
    res = [_current_grads(HH_CELL, hh, sparse, HH_T, s, Reset(held, 4)) for s in solvers]
    assert res[1][1][0].shape == sparse.values.shape
    _assert_close(res, v_tol=1e-9, g_tol=1e-9)


def test_numba_backend_is_a_deprecated_alias_of_fused():
    with pytest.warns(DeprecationWarning, match=r"backend='numba'\) is deprecated"):
        solver = CrankNicolson(dt=0.01, backend="numba")
    assert solver.backend == "fused" and solver == FUSED
    assert runs_fused(CELL, solver)
    assert torch.equal(
        simulate(CELL, None, STIM, T, solver).v, simulate(CELL, None, STIM, T, FUSED).v
    )


def test_backend_setting_is_validated():
    with pytest.raises(SolverError, match=r"must be one of \('auto', 'fused', 'torch'\)"):
        CrankNicolson(backend="jax")
    with pytest.raises(SolverError, match="compile=True"):
        CrankNicolson(backend="fused", compile=True)


# --------------------------------------------------------------------------- sensitivities
def _jacobian_errors(cell, params, stim, t, wrt, reset=None, fd_col=None):
    """J from the tangent pass against the adjoint and a forward difference: returns the
    largest relative error of Jᵀu against the adjoint's gradient of Σ u·V (an identity of the
    discrete scheme, so rounding only) and of column ``fd_col`` against a forward difference."""
    solver = CrankNicolson(dt=0.025 if cell is HH_CELL else 0.01, backend="fused")
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
        assert ref.abs().max() > 1e-3
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
    from bayesneuron import ParameterError

    with pytest.raises(SolverError, match="need the fused kernel"):
        sensitivities(CELL, None, STIM, T, TORCH)
    with pytest.raises(ParameterError, match=r"'e_na' is not one of \['g_na', 'g_k', 'g_l'\]"):
        sensitivities(CELL, None, STIM, T, FUSED, wrt=("e_na",))
    with pytest.raises(SolverError, match="need the fused kernel: .*_SlowK"):
        cell = UNFUSABLE["plain Channel"]
        sensitivities(cell, None, Stimulus(torch.ones(1, 2, 2), dt=0.5), None, wrt=("g_km",))


def test_levenberg_marquardt_same_steps_with_exact_and_fd_jacobians():
    from bayesneuron import Design, fit_map, paper_experiment

    model, v, truth = paper_experiment(Design(), n_traces=4, solver=FUSED)
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

    model, _, truth = paper_experiment(Design([0, -1], [0, 2]), n_traces=3, solver=FUSED)
    assert model.exact_sensitivities
    exact = jacobian(model, truth)
    central = jacobian(model, truth, method="central")
    assert exact.shape == central.shape == (3 * 2 * 48, 12)
    assert (exact - central).abs().max() <= 1e-6 * central.abs().max()
