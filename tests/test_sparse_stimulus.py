"""Sparse stimuli (``Stimulus(..., sites=…)``, ``ElectrodeStimulus``) reach every backend as
``[…, trace, site, bins]`` and give bit-identical results to their dense form."""

import numpy as np
import pytest
import torch

from bayesneuron import sensitivities, simulate
from bayesneuron.cell import Cell
from bayesneuron.channels import hh_channels
from bayesneuron.errors import DataError, StimulusError
from bayesneuron.inference.model import NeuronModel
from bayesneuron.morphology import Section, from_sections
from bayesneuron.protocol import Design, ElectrodeStimulus, Stimulus, step_current
from bayesneuron.reference.cells import hh_tree_cell, hh_tree_sections
from bayesneuron.simulation import (
    BackwardEuler,
    CrankNicolson,
    Torchdiffeq,
    _ckernels,
    api,
    fused,
)

SOLVERS = [
    CrankNicolson(backend="fused"),
    CrankNicolson(backend="torch"),
    BackwardEuler(),
    Torchdiffeq(method="rk4", step_size=0.01),
]


def _cell(nseg=2):
    return Cell(from_sections(hh_tree_sections(), ra=100.0, cm=1.0, nseg=nseg), hh_channels())


def _sparse(n_bins=60, lead=(2,)):
    """Two sites (out of order), two traces, leading sample dims: spikes at site 4."""
    gen = torch.Generator().manual_seed(0)
    w = 0.4 * torch.rand(lead + (2, 1, n_bins), generator=gen, dtype=torch.float64)
    w[..., :5] = 0.0
    return Stimulus(torch.cat([w, -0.3 * w], -2), dt=0.1, unit="nA", sites=(4, 1))


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: f"{type(s).__name__}")
def test_sparse_and_dense_are_bit_identical_in_voltages_and_gradients(solver):
    cell = _cell(1 if isinstance(solver, Torchdiffeq) else 2)  # rk4: the short cable is stiff
    sparse = _sparse(30 if isinstance(solver, Torchdiffeq) else 60)
    dense = sparse.dense(cell.n_comp)
    g = torch.full((2, 1, cell.n_comp), 100.0, dtype=torch.float64, requires_grad=True)
    out = []
    for stim in (sparse, dense):
        v = simulate(cell, {"g_na": g, "e_k": -75.0}, stim, solver=solver).v
        (grad,) = torch.autograd.grad((v - (-65.0)).square().sum(), g)
        out.append((v.detach().numpy(), grad.numpy()))
    assert np.isfinite(out[0][0]).all() and out[0][0].max() > 0.0  # it spiked
    assert np.array_equal(out[0][0], out[1][0])
    assert np.array_equal(out[0][1], out[1][1])


def test_sensitivities_of_sparse_and_dense_are_bit_identical():
    cell, sparse = _cell(), _sparse(lead=())
    g = {"g_na": torch.full((cell.n_comp,), 100.0, dtype=torch.float64)}
    v_s, j_s = sensitivities(cell, g, sparse, wrt=("g_na", "g_k"))
    v_d, j_d = sensitivities(cell, g, sparse.dense(cell.n_comp), wrt=("g_na", "g_k"))
    assert np.array_equal(v_s, v_d) and np.array_equal(j_s, j_d)


def test_electrode_stimulus_runs_as_is_and_matches_its_dense_form():
    cell = hh_tree_cell()
    e = ElectrodeStimulus(3, 0.3 * torch.ones(2, 40, dtype=torch.float64), dt=0.1)
    assert e.as_stimulus().values.data_ptr() == e.waveform.data_ptr()  # a view, no copy
    for solver in SOLVERS[:2]:
        a = simulate(cell, None, e, solver=solver).v
        assert np.array_equal(a, simulate(cell, None, e.dense(cell.n_comp), solver=solver).v)


def test_backends_get_the_currents_at_the_sites_only(monkeypatch):
    """The tensors handed to the kernels are [trace, site, bins] (time first), not
    [trace, comp, bins]: nothing densifies on the way."""
    cell, stim = _cell(), _sparse(lead=())
    seen = {}

    def spy(name, f):
        def wrapped(*args, **kw):
            cur = args[2]
            seen[name] = (tuple(cur.values.shape), cur.sites.tolist())
            return f(*args, **kw)

        return wrapped

    for name in ("run_fixed", "run_torchdiffeq"):
        monkeypatch.setattr(api, name, spy(name, getattr(api, name)))
    monkeypatch.setattr(fused, "run", spy("fused", fused.run))
    chunk = _ckernels.forward_chunk

    def c_spy(tree, rates, gates, steps, data, *rest):
        seen["C"] = (data[0].shape, data[1].tolist())  # currents [S, bins, site], sites
        return chunk(tree, rates, gates, steps, data, *rest)

    monkeypatch.setattr(_ckernels, "forward_chunk", c_spy)
    for solver in SOLVERS:
        simulate(_cell(1) if isinstance(solver, Torchdiffeq) else cell, None, stim, solver=solver)
    for name in ("run_fixed", "run_torchdiffeq", "fused"):
        assert seen[name] == ((60, 2, 2), [4, 1]), name  # [bins, trace, site]
    assert seen["C"] == ((2, 60, 2), [4, 1])  # [trace, bins, site]


def test_a_1000_compartment_cell_takes_one_row_of_current():
    secs = [Section("soma", None, length=20.0, diam=20.0, nseg=1)]
    secs.append(Section("dend", 0, 1.0, length=2000.0, diam=2.0, nseg=999))
    cell = Cell(from_sections(secs, ra=100.0, cm=1.0), hh_channels())
    assert cell.n_comp == 1000
    # 250 bins: the kernel once read past its dummy reset array here, and crashed
    stim = ElectrodeStimulus(0, 0.5 * torch.ones(2, 250, dtype=torch.float64), dt=0.1)
    handed = []
    chunk = _ckernels.forward_chunk

    def c_spy(*args):
        handed.append(args[4][0].nbytes)
        return chunk(*args)

    _ckernels.forward_chunk, old = c_spy, _ckernels.forward_chunk
    try:
        v_sparse = simulate(cell, None, stim).v
        v_dense = simulate(cell, None, stim.dense(1000)).v
    finally:
        _ckernels.forward_chunk = old
    assert np.array_equal(v_sparse, v_dense)
    assert handed[0] == 2 * 250 * 8 and handed[-1] == 1000 * handed[0]


def test_stimulus_sites_are_checked_with_instructions():
    v = torch.zeros(1, 2, 10)
    with pytest.raises(StimulusError, match="one site per row"):
        Stimulus(v, 0.1, sites=(0,))
    with pytest.raises(StimulusError, match="distinct"):
        Stimulus(v, 0.1, sites=(1, 1))
    with pytest.raises(StimulusError, match="compartment indices"):
        Stimulus(v, 0.1, sites=(0, 1.5))
    with pytest.raises(StimulusError, match=r"site\(s\) \[9\] do not exist.*6 compartments"):
        simulate(hh_tree_cell(), None, Stimulus(v, 0.1, unit="nA", sites=(0, 9)))
    with pytest.raises(StimulusError, match="give sites= for a sparse"):
        simulate(hh_tree_cell(), None, Stimulus(v, 0.1, unit="nA"))


def test_sparse_stimulus_helpers():
    stim = Stimulus(torch.arange(6.0).reshape(1, 2, 3), 0.1, sites=(2, 0))
    assert stim.n_comp is None and stim.n_sites == 2 and stim.site_index(3) == (2, 0)
    dense = stim.dense(3).values
    assert dense[0, 2].tolist() == [0.0, 1.0, 2.0] and dense[0, 0].tolist() == [3.0, 4.0, 5.0]
    masked = stim.masked([2])
    assert masked.sites == (2, 0) and masked.values[0, 1].abs().sum() == 0
    assert torch.equal(masked.dense(3).values, stim.dense(3).masked([2]).values)
    one = Stimulus(torch.ones(2, 1, 4), 0.1, unit="nA", sites=(5,))
    e = ElectrodeStimulus.from_stimulus(one)
    assert e.site == 5 and torch.equal(e.waveform, torch.ones(2, 4))
    with pytest.raises(StimulusError, match="injects at \\[5\\] only"):
        ElectrodeStimulus.from_stimulus(one, site=2)


def test_model_keeps_a_sparse_stimulus_sparse_and_matches_dense():
    cell = hh_tree_cell()
    dense = step_current([0.2, 0.4], site=1, n_comp=6, delay=1, duration=3, t_stop=5, dt=0.1)
    sparse = ElectrodeStimulus.from_stimulus(dense)
    t = np.linspace(0, 5, 26)
    design = Design(stim=[1], rec=[1, 3])
    m_sparse = NeuronModel(cell, sparse, t, design, solver=CrankNicolson(dt=0.05))
    m_dense = NeuronModel(cell, dense, t, design, solver=CrankNicolson(dt=0.05))
    assert tuple(m_sparse.stimulus.values.shape) == (2, 1, 50) and m_sparse.stimulus.sites == (1,)
    for m in (m_sparse, m_dense):
        m.v = simulate(cell, None, m.stimulus, t, m.solver).v
    assert np.array_equal(m_sparse.v, m_dense.v)
    with pytest.raises(DataError, match="do not exist"):
        NeuronModel(cell, ElectrodeStimulus(7, torch.ones(1, 10), 0.1), t, design)
