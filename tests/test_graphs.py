"""Graphs that are not trees: loops (edges beyond the spanning tree) and detached parts, as in
the paper's 184-node graph. Every backend against a dense solve of the same linear system,
against each other, and against torchdiffeq's dopri5; gradients by adjoint, autograd, tangent
and finite differences."""

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _scripts import load_script

from bayesneuron import (
    BackwardEuler,
    Cell,
    CrankNicolson,
    Leak,
    Morphology,
    MorphologyError,
    ParameterError,
    Stimulus,
    Torchdiffeq,
    chain,
    hh_tree_cell,
    paper_channels,
    sensitivities,
    simulate,
    step_current,
)
from bayesneuron.reference.paper_l23 import paper_l23_graph
from bayesneuron.simulation import runs_fused
from bayesneuron.simulation.hines import reduced_edges, tree_solve, tree_system

needs_cc = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler for the fused kernel"
)


def _edges(a) -> set:
    return {(int(i), int(j)) for i, j in np.argwhere(np.triu(a))}


def _graph_edges(m: Morphology) -> set:
    """Edges that carry current: tree edges of conductance > 0, and loops."""
    tree = {
        (min(i, int(p)), max(i, int(p)))
        for i, p in enumerate(m.parents)
        if p >= 0 and m.axial[i] > 0
    }
    return tree | {(min(i, j), max(i, j)) for i, j in m.loops.tolist()}


GEN = load_script("tests/reference/generate_dopri5_references.py")  # the 184-node problem


def _laplacian(m: Morphology) -> np.ndarray:
    """The unscaled axial conductance matrix ``L_u`` (tree edges and loops), compartments only."""
    n = m.n_comp
    lap = np.zeros((n, n))
    pairs = [(i, int(p), m.axial[i]) for i, p in enumerate(m.parents) if p >= 0]
    pairs += [(i, j, g) for (i, j), g in zip(m.loops.tolist(), m.loop_axial)]
    for i, j, g in pairs:
        lap[i, i] += g
        lap[j, j] += g
        lap[i, j] -= g
        lap[j, i] -= g
    return lap


def _random_graph(n: int, extra: int, parts: int, seed: int) -> np.ndarray:
    """A symmetric 0/1 matrix: ``parts`` random trees over ``n`` nodes plus ``extra`` edges
    inside the parts (cycles)."""
    rng = np.random.default_rng(seed)
    a = np.zeros((n, n), dtype=np.int64)
    label = np.sort(rng.integers(0, parts, n))
    label[:parts] = np.arange(parts)
    for i in range(n):
        same = [j for j in range(i) if label[j] == label[i]]
        if same:
            j = int(rng.choice(same))
            a[i, j] = a[j, i] = 1
    added = 0
    while added < extra:
        i, j = rng.integers(0, n, 2)
        if i != j and label[i] == label[j] and not a[i, j]:
            a[i, j] = a[j, i] = 1
            added += 1
    return a


# --------------------------------------------------------------------------- morphology
def test_paper_graph_is_a_spanning_tree_plus_one_loop_in_two_parts():
    names, a = paper_l23_graph()
    m = GEN.paper_graph()
    assert _edges(a) == _graph_edges(m) and len(_graph_edges(m)) == 183
    assert m.n_loops == 1 and m.n_components == 2
    assert np.bincount(m.components).tolist() == [151, 33]
    assert m.components[0] == 0 and m.names == names
    i, j = m.loops[0]
    assert {int(i), int(j)} <= {104, 105, 123, 124, 125}
    assert np.all(m.components[[104, 105, 123, 124, 125]] == 1)  # the loop is in the cut part
    detached = np.flatnonzero(m.axial == 0)
    assert detached.tolist() == [104] and m.parents[104] == 0
    assert m.compartment_parents[104] == -1
    assert np.allclose(m.loop_axial, 0.01) and np.all(m.axial[m.axial > 0] == 0.01)
    # the default still refuses it, naming what is wrong
    with pytest.raises(MorphologyError, match=r"disconnected: 33 node\(s\).*\[104, 105"):
        Morphology.from_adjacency(a, ax=0.01)
    joined = a.copy()
    joined[0, 104] = joined[104, 0] = 1
    with pytest.raises(MorphologyError, match="cycle through nodes"):
        Morphology.from_adjacency(joined, ax=0.01)


def test_from_adjacency_reproduces_random_graphs():
    for seed in range(5):
        a = _random_graph(15, extra=4, parts=3, seed=seed)
        m = Morphology.from_adjacency(a, ax=0.3, tree_only=False, root=2)
        assert _edges(a) == _graph_edges(m)
        assert m.n_loops == 4 and m.n_components == 3 and m.components[2] == 0
    tree = Morphology.from_adjacency(_random_graph(9, 0, 1, seed=1), tree_only=False)
    assert tree.n_loops == 0 and tree.n_components == 1 and np.all(tree.axial[1:] > 0)


def test_loops_and_zero_conductances_are_validated():
    m = chain(4)
    ok = dataclasses.replace(m, loops=[[0, 2]], loop_axial=[0.1])
    assert ok.n_loops == 1 and ok.n_components == 1 and ok.loops.dtype == np.int64
    cases = [
        (dict(loops=[[0, 4]], loop_axial=[0.1]), r"loop 0 \(0–4\) joins node 4, which is no node"),
        (dict(loops=[[1, 1]], loop_axial=[0.1]), r"loop 0 \(1–1\) joins a compartment to itself"),
        (dict(loops=[[0, 2]], loop_axial=[0.0]), r"loop 0 \(0–2\) has conductance 0.0"),
        (dict(loops=[[0, 2]], loop_axial=[0.1, 0.2]), r"one conductance per loop"),
        (dict(loops=[0, 2, 3]), r"expected \[k, 2\]"),
    ]
    for kw, match in cases:
        with pytest.raises(MorphologyError, match=match):
            dataclasses.replace(m, **kw)
    # zero conductance: only on an edge to the root of an abstract cell
    star = Morphology.from_parents([-1, 0, 0, 2], ax=[0.0, 0.0, 0.5, 0.5])
    assert star.n_components == 2 and star.components.tolist() == [0, 1, 0, 0]
    with pytest.raises(MorphologyError, match="0 is allowed only on an edge to the root"):
        Morphology.from_parents([-1, 0, 1], ax=[0.5, 0.5, 0.0])
    geo = hh_tree_cell().morphology
    with pytest.raises(MorphologyError, match="a junction"):
        dataclasses.replace(geo, loops=[[0, geo.n_comp]], loop_axial=[1e-3])
    axial = geo.axial.copy()
    axial[np.flatnonzero(geo.parents == np.flatnonzero(geo.parents == -1)[0])[0]] = 0.0
    with pytest.raises(MorphologyError, match="diameters, lengths and Ra"):
        dataclasses.replace(geo, axial=axial)
    assert chain(3).n_components == 1 and chain(3).n_loops == 0


@needs_cc
@pytest.mark.parametrize("backend", ["fused", "torch"])
def test_a_loop_parallel_to_an_edge_or_a_loop_adds_its_conductance(backend):
    m = chain(5, ax=0.5, cm=0.45)
    parallel = dataclasses.replace(m, loops=[[1, 2], [0, 3], [3, 0]], loop_axial=[0.3, 0.1, 0.2])
    axial = m.axial.copy()
    axial[2] += 0.3
    summed = dataclasses.replace(m, axial=axial, loops=[[0, 3]], loop_axial=[0.3])
    stim = _stim(5, bins=20)
    solver = CrankNicolson(dt=0.02, backend=backend)
    v = [simulate(Cell(x, paper_channels(), v0=-60.0), None, stim, None, solver).v
         for x in (parallel, summed)]  # fmt: skip
    assert v[0].abs().max() > 30
    assert (v[0] - v[1]).abs().max() < 1e-10


def test_reduced_edges_carry_the_loops_and_drop_detached_edges():
    m = GEN.paper_graph()
    src, dst, cf = reduced_edges(m)
    got = {(min(i, j), max(i, j)) for i, j in zip(src.tolist(), dst.tolist())}
    assert got == _edges(paper_l23_graph()[1]) and np.allclose(cf, 0.01)
    assert len(src) == 2 * 183


def test_free_ra_is_refused_on_a_graph_with_loops():
    cell = hh_tree_cell()
    geo = dataclasses.replace(cell.morphology, loops=[[1, 2]], loop_axial=[1e-4])
    cell = Cell(geo, cell.channels, v0=cell.v0)
    stim = step_current([0.1], 0, cell.n_comp, 1.0, 2.0, 4.0, dt=1.0)
    with pytest.raises(ParameterError, match="ra .* can vary only on a tree; .* 1 loop"):
        simulate(cell, {"ra": torch.full((cell.n_comp,), 100.0)}, stim)


# --------------------------------------------------------------------------- one step, dense
def _loopy_cell(seed=0):
    """A 4-cycle and a triangle sharing node 1, a detached pair and a lone node; random areas
    and capacitances (an abstract cell, rows scaled by area)."""
    a = np.zeros((9, 9), dtype=np.int64)
    for i, j in [(0, 1), (1, 2), (2, 3), (3, 0), (1, 4), (4, 5), (5, 1), (6, 7)]:
        a[i, j] = a[j, i] = 1
    m = Morphology.from_adjacency(a, ax=0.7, tree_only=False)
    rng = np.random.default_rng(seed)
    m = dataclasses.replace(m, area=rng.uniform(0.5, 2.0, 9), cm=rng.uniform(0.4, 1.2, 9))
    m = dataclasses.replace(m, loop_axial=rng.uniform(0.2, 1.5, m.n_loops))
    assert m.n_loops == 2 and m.n_components == 3
    return Cell(m, (Leak(g=0.3, e=-54.3),), v0=-60.0)


@needs_cc
@pytest.mark.parametrize("scheme", ["fused", "torch", "be"])
def test_one_implicit_step_equals_a_dense_solve(scheme):
    cell = _loopy_cell()
    m, dt = cell.morphology, 0.05
    cur = torch.tensor(np.random.default_rng(1).uniform(-5, 15, (3, 9, 1)))
    stim = Stimulus(cur, dt=dt)
    g = torch.tensor([0.3, 0.5, 1.0])[:, None].expand(3, 9).double()  # 3 samples
    solver = BackwardEuler(dt=dt) if scheme == "be" else CrankNicolson(dt=dt, backend=scheme)
    assert runs_fused(cell, solver) == (scheme == "fused")
    v = simulate(cell, {"g_l": g}, stim, [0.0, dt], solver).v[..., -1]  # [sample, trace, comp]
    k = (1.0 if scheme == "be" else 2.0) / dt
    lap = _laplacian(m)
    for t in range(3):
        gl = g[t].numpy()
        mat = np.diag(m.area * (k * m.cm + gl)) + lap
        rhs = m.area * (cur[t, :, 0].numpy() + gl * -54.3 + k * m.cm * -60.0)
        w = np.linalg.solve(mat, rhs)
        want = w if scheme == "be" else 2 * w + 60.0
        np.testing.assert_allclose(v[t, t].numpy(), want, rtol=0, atol=1e-12 * np.abs(want).max())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_tree_solve_with_loops_equals_dense_and_differentiates():
    m = _loopy_cell().morphology
    sys = tree_system(m)
    coef = sys.tensors(torch.float64, "cpu")
    pos = sys.comp_pos
    gen = torch.Generator().manual_seed(0)
    d0 = 1.0 + torch.rand(9, 3, generator=gen, dtype=torch.float64)  # + axial diagonal
    r = torch.randn(9, 3, generator=gen, dtype=torch.float64)
    diag = torch.as_tensor(sys.diag)[:, None]
    x = tree_solve(d0 + diag, r, coef)
    lap = _laplacian(m)
    for b in range(3):
        mat = np.diag(m.area * d0[pos, b].numpy()) + lap  # node order → compartment order
        want = np.linalg.solve(mat, m.area * r[pos, b].numpy())
        np.testing.assert_allclose(x[pos, b].numpy(), want, rtol=0, atol=1e-13)
    d0.requires_grad_(True)
    r.requires_grad_(True)

    def f(d, rr):
        return tree_solve(d + diag, rr, coef)

    assert torch.autograd.gradcheck(f, (d0, r), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, (d0[:, :1], r[:, :1]))


# --------------------------------------------------------------------------- many steps
def _stim(n_comp, n_traces=3, seed=0, bins=40, dt=0.1):
    g = torch.Generator().manual_seed(seed)
    vals = torch.randint(0, 15, (n_traces, n_comp, bins), generator=g).double()
    vals[..., :2] = 0.0
    return Stimulus(vals, dt=dt)


@needs_cc
@pytest.mark.parametrize("extra", [1, 3, 17])
def test_fused_equals_torch_on_random_graphs_values_gradients_sensitivities(extra):
    a = _random_graph(14, extra=extra, parts=2, seed=extra)
    m = Morphology.from_adjacency(a, ax=0.5, cm=0.45, tree_only=False)
    assert m.n_loops == extra
    cell = Cell(m, paper_channels(), v0=-60.0)
    stim = _stim(14)
    t = np.linspace(0.0, 4.0, 41)
    gen = torch.Generator().manual_seed(1)
    base = {"g_na": 100.0, "g_k": 45.0}
    params = {k: b * (0.7 + 0.6 * torch.rand(2, 14, generator=gen)).double()
              for k, b in base.items()}  # fmt: skip
    out = {}
    for backend in ("fused", "torch"):
        p = {k: x.clone().requires_grad_() for k, x in params.items()}
        v = simulate(cell, p, stim, t, CrankNicolson(dt=0.02, backend=backend)).v
        (v.square().mean() + v[..., -1].mean()).backward()
        out[backend] = v.detach(), {k: x.grad for k, x in p.items()}
    (v_f, g_f), (v_t, g_t) = out["fused"], out["torch"]
    assert v_t.abs().max() > 30  # it spikes
    torch.testing.assert_close(v_f, v_t, rtol=0, atol=1e-10 * v_t.abs().max().item())
    for k in g_t:
        torch.testing.assert_close(g_f[k], g_t[k], rtol=0, atol=1e-8 * g_t[k].abs().max().item())
    # tangent vs adjoint: Σ ∂L/∂V · ∂V/∂g equals the adjoint's ∂L/∂g
    v_s, jac = sensitivities(cell, params, stim, t, CrankNicolson(dt=0.02), wrt=("g_na", "g_k"))
    assert torch.equal(v_s, v_f)
    gout = 2 * v_f / v_f.numel()
    gout[..., -1] += 1.0 / v_f[..., -1].numel()
    tan = torch.einsum("srpct,srct->sp", jac, gout).reshape(2, 2, 14)  # [sample, channel, comp]
    for c, k in enumerate(("g_na", "g_k")):
        adj = g_f[k].reshape(2, 14)
        torch.testing.assert_close(tan[:, c], adj, rtol=0, atol=1e-9 * adj.abs().max().item())


@needs_cc
def test_geometric_cell_with_a_loop_fused_torch_and_dopri5_agree():
    base = hh_tree_cell()
    geo = dataclasses.replace(base.morphology, loops=[[1, 2], [4, 5]], loop_axial=[2e-5, 5e-5])
    cell = Cell(geo, base.channels, v0=base.v0)
    stim = step_current([0.0, 0.2, 0.4], 0, cell.n_comp, 1.0, 5.0, 8.0, dt=1.0)
    t = np.linspace(0.0, 8.0, 33)
    v_f = simulate(cell, None, stim, t, CrankNicolson(dt=0.025)).v
    v_t = simulate(cell, None, stim, t, CrankNicolson(dt=0.025, backend="torch")).v
    assert (v_f - v_t).abs().max() < 1e-11 * v_t.abs().max()
    ref = simulate(cell, None, stim, t, Torchdiffeq(rtol=1e-9, atol=1e-9)).v
    fine = simulate(cell, None, stim, t, CrankNicolson(dt=0.0025)).v
    tree = simulate(base, None, stim, t, CrankNicolson(dt=0.0025)).v
    assert (tree - fine).abs().max() > 1.0  # the loops matter
    assert (fine - ref).abs().max() < 0.02


# --------------------------------------------------------------------------- the paper graph
def _paper_problem(n_traces=3):
    cell, truth, stim, t = GEN.graph_problem(n_traces)
    return cell, stim, t, truth


@needs_cc
def test_paper_graph_fused_equals_torch():
    cell, stim, t, p = _paper_problem()
    v_f = simulate(cell, p, stim, t, CrankNicolson(dt=0.01)).v
    v_t = simulate(cell, p, stim, t, CrankNicolson(dt=0.01, backend="torch")).v
    assert v_t.abs().max() > 30
    assert (v_f - v_t).abs().max() < 1e-10


@needs_cc
def test_paper_graph_crank_nicolson_converges_to_dopri5():
    """Against dopri5 at rtol = atol = 1e-11 (committed, tests/reference/
    generate_dopri5_references.py: the same problem)."""
    cell, stim, t, p = _paper_problem(n_traces=2)
    ref = torch.as_tensor(
        np.load(Path(__file__).parent / "reference" / "dopri5_paper.npz")["graph_v"]
    )
    errs = [
        (simulate(cell, p, stim, t, CrankNicolson(dt=dt)).v - ref).abs().max().item()
        for dt in (0.02, 0.01, 0.005, 0.0025)
    ]
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(3.0 < r < 4.6 for r in ratios[1:]), (errs, ratios)
    assert errs[-1] < 0.1, errs


@needs_cc
def test_paper_graph_gradients_adjoint_autograd_and_finite_differences():
    cell, stim, t, truth = _paper_problem(n_traces=2)
    solver = CrankNicolson(dt=0.01)

    def loss(v):
        return v.square().mean() + v[:, 124].mean()

    grads = {}
    for backend in ("fused", "torch"):
        p = {k: x.clone().requires_grad_() for k, x in truth.items()}
        loss(simulate(cell, p, stim, t, dataclasses.replace(solver, backend=backend)).v).backward()
        grads[backend] = {k: x.grad for k, x in p.items()}
    for k in truth:
        ref = grads["torch"][k]
        err = (grads["fused"][k] - ref).abs().max() / ref.abs().max()
        assert err < 1e-8, (k, err)
    # central differences on the fused forward: a loop node, the cut part, the soma's part
    for name, i in [("g_na", 124), ("g_k", 108), ("g_na", 0), ("g_k", 105)]:
        h = 1e-5 * float(truth[name][i])  # larger steps see the spikes' curvature
        vals = []
        for s in (1, -1):
            p = {k: x.clone() for k, x in truth.items()}
            p[name][i] += s * h
            vals.append(loss(simulate(cell, p, stim, t, solver).v).item())
        fd = (vals[0] - vals[1]) / (2 * h)
        adj = grads["fused"][name][i].item()
        assert abs(fd - adj) <= 1e-6 * abs(adj) + 5e-9, (name, i, fd, adj)


@needs_cc
def test_the_loop_moves_only_its_own_part():
    cell, stim, t, p = _paper_problem()
    m = cell.morphology
    cut = dataclasses.replace(m, loops=np.zeros((0, 2)), loop_axial=[])
    cut = Cell(cut, cell.channels, v0=-60.0)
    assert cut.morphology.n_components == 2  # the loop closed a cycle; it joined no parts
    for solver in (CrankNicolson(dt=0.01), CrankNicolson(dt=0.01, backend="torch")):
        v = simulate(cell, p, stim, t, solver).v
        w = simulate(cut, p, stim, t, solver).v
        soma, other = m.components == 0, m.components == 1
        assert (v[:, other] - w[:, other]).abs().max() > 1e-3
        assert (v[:, soma] - w[:, soma]).abs().max() <= 1e-12 * v.abs().max()


@pytest.mark.gpu
def test_paper_graph_on_cuda_matches_cpu():
    cell, stim, t, p = _paper_problem(n_traces=2)
    for solver in (CrankNicolson(dt=0.01), Torchdiffeq(rtol=1e-8, atol=1e-8)):
        grads = []
        for device in ("cpu", "cuda"):
            g = p["g_na"].detach().clone().to(device).requires_grad_()
            v = simulate(cell, {**p, "g_na": g}, stim, t, solver, device=device).v
            assert v.device.type == device
            v.square().mean().backward()
            grads.append((v.detach().cpu(), g.grad.cpu()))
        (v_c, g_c), (v_g, g_g) = grads
        assert (v_g - v_c).abs().max() < (1e-9 if isinstance(solver, CrankNicolson) else 1e-4)
        assert (g_g - g_c).abs().max() < 1e-6 * g_c.abs().max()
