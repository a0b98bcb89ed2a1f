"""The paper preset reproduces the authors' data exactly (shared/paper-model.md §3–§7)."""

import random

import numpy as np
import pytest
import torch

from bayesneuron.errors import StimulusError
from bayesneuron.reference.paper import (
    PAPER_SEED,
    PAPER_SEEDS,
    paper_currents,
    paper_design_grid,
    paper_designs,
    paper_ground_truth,
    paper_loss,
    paper_time_grid,
    paper_toy_cell,
)
from bayesneuron.simulation.api import simulate
from bayesneuron.simulation.solvers import CrankNicolson

STIMS = [[0], [0, 1], [0, -1], [0, 1, -1]]


def _rng_snapshot():
    return torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def _same_rng(a, b):
    return torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


# ------------------------------------------------------------------ targets, grid, cell
def test_ground_truth_matches_paper():
    before = _rng_snapshot()
    gt = paper_ground_truth()
    assert _same_rng(before, _rng_snapshot())
    assert gt["g_na"].dtype == gt["g_k"].dtype == torch.float64
    expected_na = [118.501, 77.038, 116.652, 113.503, 106.428, 77.563]
    expected_k = [56.180, 55.815, 53.047, 47.425, 52.831, 50.993]
    assert gt["g_na"].tolist() == pytest.approx(expected_na, abs=6e-4)
    assert gt["g_k"].tolist() == pytest.approx(expected_k, abs=6e-4)


def test_ground_truth_test_model_shares_first_draws():
    # §3.1: the first N numbers go to Na, so N = 184 starts like the toy's Na row.
    big, toy = paper_ground_truth(n_comp=184), paper_ground_truth()
    assert big["g_na"].shape == (184,)
    assert torch.equal(big["g_na"][:6], toy["g_na"])


def test_time_grid():
    t = paper_time_grid()
    assert t.dtype == np.float64 and t.shape == (48,)
    assert t[0] == pytest.approx(5 / 49) and t[-1] == pytest.approx(240 / 49)
    assert np.allclose(np.diff(t), 5 / 49)


def test_toy_cell():
    cell = paper_toy_cell()
    assert cell.n_comp == 6 and cell.v0 == -60.0
    assert np.all(cell.params["g_na"] == 100.0) and np.all(cell.params["g_k"] == 45.0)


def test_seeds():
    assert PAPER_SEED == PAPER_SEEDS[0] == 20230619
    assert PAPER_SEEDS[-1] == 20230628 and len(PAPER_SEEDS) == 10


# ------------------------------------------------------------------ currents
def test_currents_shape_levels_and_masks():
    before = _rng_snapshot()
    stim = paper_currents()
    assert _same_rng(before, _rng_snapshot())
    v = stim.values
    assert v.shape == (100, 6, 48) and v.dtype == torch.float64
    assert stim.dt == 0.1 and stim.t0 == 0.0 and stim.unit == "uA/cm2"
    assert torch.equal(v, v.round()) and v.min() >= 0 and v.max() <= 19
    assert torch.all(v[..., 0] == 0) and torch.all(v[..., 47] == 0)
    inner = v[..., 1:47].reshape(-1, 46)
    assert max(len(torch.unique(row)) for row in inner) <= 3
    # Two change points: the level changes at most twice per trace.
    changes = (inner[:, 1:] != inner[:, :-1]).sum(-1)
    assert changes.max() <= 2


def test_currents_pinned_values():
    # Bit-for-bit regression of the paper's draws (MKL multinomial + Python random levels).
    v = paper_currents().values
    assert v.sum().item() == 264632.0
    expected = torch.zeros(48, dtype=torch.float64)
    expected[1:39], expected[39:43], expected[43:47] = 18.0, 16.0, 19.0
    assert torch.equal(v[0, 0], expected)


@pytest.mark.parametrize("sites", STIMS)
def test_currents_identical_across_stim_conditions(sites):
    full = paper_currents().values
    part = paper_currents(stim=sites).values
    on = np.zeros(6, dtype=bool)
    on[sites] = True
    assert torch.equal(part[:, on], full[:, on])
    assert torch.all(part[:, ~on] == 0)


def test_currents_bad_site_and_sampler():
    with pytest.raises(StimulusError, match="does not exist"):
        paper_currents(stim=[6])
    with pytest.raises(StimulusError, match="multinomial"):
        paper_currents(multinomial="gpu")
    with pytest.raises(StimulusError, match="change points"):
        paper_currents(hazard_rate=0.0)


def test_native_multinomial_keeps_levels_and_rng():
    before = _rng_snapshot()
    native = paper_currents(n_traces=5, multinomial="native").values
    assert _same_rng(before, _rng_snapshot())
    assert native.shape == (5, 6, 48)
    assert torch.all(native[..., 0] == 0) and torch.all(native[..., 47] == 0)


# ------------------------------------------------------------------ loss and designs
def test_loss_divides_by_all_compartments():
    v_obs = torch.zeros(4, 6, 48, dtype=torch.float64)
    v_hat = torch.full_like(v_obs, 2.0)
    assert paper_loss(v_hat, v_obs).item() == pytest.approx(4.0)
    assert paper_loss(v_hat, v_obs, rec=[0]).item() == pytest.approx(4.0 / 6)
    assert paper_loss(v_hat, v_obs, rec=[0, -1]).item() == pytest.approx(4.0 * 2 / 6)
    mask = torch.tensor([1.0, 1, 0, 0, 0, 1])[:, None]
    x, y = torch.randn(4, 6, 48), torch.randn(4, 6, 48)
    ref = torch.nn.MSELoss()(x * mask, y * mask)
    assert paper_loss(x, y, rec=[0, 1, -1]).item() == pytest.approx(ref.item())


def test_loss_per_sample():
    v_obs = torch.zeros(3, 6, 48)
    v_hat = torch.stack([torch.full((3, 6, 48), float(k)) for k in range(3)])  # [sample, ...]
    out = paper_loss(v_hat, v_obs, rec=[0])
    assert out.shape == (3,)
    assert out.tolist() == pytest.approx([0.0, 1 / 6, 4 / 6])


def test_designs():
    designs = paper_designs()
    assert designs == [
        ([0], None), ([0, 1], None), ([0, -1], None), ([0, 1, -1], None),
        (None, [0]), (None, [0, 1]), (None, [0, -1]), (None, [0, 1, -1]), (None, None),
    ]  # fmt: skip
    grid = paper_design_grid()
    assert len(grid) == 25 and grid[0] == ([0], [0]) and grid[-1] == (None, None)
    designs[0][0].append(99)
    assert paper_designs()[0] == ([0], None)


# ------------------------------------------------------------------ the paper's L0
@pytest.mark.parametrize(("sites", "l0", "cross"), [(None, 34.256, 1.0), ([0], 301.027, 0.18)])
def test_initial_loss_reproduces_paper(sites, l0, cross):
    # §7.2: loss at the initial conductances (100/45) against the ground-truth traces.
    # Crank–Nicolson at dt = 1.25 µs is within 2e-3 of converged dopri5 (rtol = atol = 1e-10).
    gt = paper_ground_truth()
    init = {
        "g_na": torch.full((6,), 100.0, dtype=torch.float64),
        "g_k": torch.full((6,), 45.0, dtype=torch.float64),
    }
    params = {k: torch.stack([gt[k], init[k]]) for k in gt}
    v = simulate(
        paper_toy_cell(),
        params,
        paper_currents(stim=sites),
        t_eval=paper_time_grid(),
        solver=CrankNicolson(dt=0.00125),
    ).v
    assert v.shape == (2, 100, 6, 48)
    assert paper_loss(v[1], v[0]).item() == pytest.approx(l0, abs=0.01)
    # §4.2: share of ground-truth traces crossing 0 mV.
    assert (v[0].amax(-1) > 0).double().mean().item() == pytest.approx(cross, abs=0.01)
