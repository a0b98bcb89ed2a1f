"""Multiple shooting on data (``simulate(..., reset=Reset(values, every))``)."""

import math

import pytest
import torch

from bayesneuron import (
    BackwardEuler,
    CrankNicolson,
    Reset,
    SolverError,
    Torchdiffeq,
    paper_currents,
    paper_ground_truth,
    paper_time_grid,
    paper_toy_cell,
    simulate,
)

CELL = paper_toy_cell()
STIM = paper_currents(n_traces=4)
T = paper_time_grid()[:20]
SOLVER = CrankNicolson(dt=0.01)


def test_reset_to_own_trajectory_changes_nothing():
    gt = paper_ground_truth()
    v = simulate(CELL, gt, STIM, T, SOLVER).v
    for every in (1, 3, 100):
        r = simulate(CELL, gt, STIM, T, SOLVER, reset=Reset(v, every)).v
        assert torch.equal(r, v)


def test_reset_restarts_from_data_only_where_given():
    gt = paper_ground_truth()
    data = simulate(CELL, gt, STIM, T, SOLVER).v
    held = data.clone()
    held[:, 3:] = math.nan  # only compartments 0-2 are "recorded"
    plain = simulate(CELL, None, STIM, T, SOLVER).v
    r1 = simulate(CELL, None, STIM, T, SOLVER, reset=Reset(held, 1)).v
    # one-step predictions are closer to the data than a free run, at the reset compartments
    err_free = (plain - data)[:, :3].abs().mean()
    err_reset = (r1 - data)[:, :3].abs().mean()
    assert err_reset < 0.8 * err_free, (err_reset, err_free)
    # the first output (before any reset) is the same, and every later one differs
    assert torch.equal(r1[..., :2], plain[..., :2])
    assert not torch.equal(r1[..., 2:], plain[..., 2:])
    # with BackwardEuler too, and batched parameters broadcast against the data
    g = {"g_na": torch.full((2, 6), 100.0, dtype=torch.float64)}
    rb = simulate(CELL, g, STIM, T, BackwardEuler(dt=0.01), reset=Reset(held, 2)).v
    assert rb.shape == (2, 4, 6, 20)


def test_reset_is_differentiable():
    g = torch.full((6,), 100.0, dtype=torch.float64, requires_grad=True)
    data = simulate(CELL, paper_ground_truth(), STIM, T, SOLVER).v
    v = simulate(CELL, {"g_na": g}, STIM, T, SOLVER, reset=Reset(data, 1)).v
    ((v - data) ** 2).sum().backward()
    assert torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(reset=Reset(torch.zeros(4, 6, 19), 1)), r"expected \[trace, 6, 20\]"),
        (dict(reset=Reset(torch.zeros(4, 6, 20), 0)), "every"),
        (dict(reset=torch.zeros(4, 6, 20)), "bayesneuron.Reset"),
        (
            dict(reset=Reset(torch.zeros(4, 6, 20), 1), solver=Torchdiffeq("rk4", step_size=0.01)),
            "fixed-step",
        ),
    ],
)
def test_reset_bad_input(kw, match):
    solver = kw.pop("solver", SOLVER)
    with pytest.raises(SolverError, match=match):
        simulate(CELL, None, STIM, T, solver, **kw)
