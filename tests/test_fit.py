"""MAP fits: the paper's protocol, Levenberg–Marquardt recovery, batching, checkpoints, errors."""

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from bayesneuron import (
    Cell,
    CrankNicolson,
    DataError,
    Design,
    FitError,
    NeuronModel,
    ScaledUniformPrior,
    chain,
    draw_truth,
    fit_map,
    fit_map_designs,
    paper_channels,
    paper_currents,
    paper_time_grid,
    simulate,
    synthetic_data,
)

SOLVER = CrankNicolson(dt=0.02)
CELL = Cell(chain(3, ax=0.5, cm=0.45), paper_channels(), v0=-60.0)


def small(design=None, n_traces=6, n_times=16, **kw):
    stim = paper_currents(n_traces=n_traces, n_comp=3)
    kw.setdefault("priors", ScaledUniformPrior(0.7, 1.3))
    return NeuronModel(CELL, stim, paper_time_grid()[:n_times], design, solver=SOLVER, **kw)


TRUTH = draw_truth(CELL, seed=5)


def test_paper_protocol_first_step_is_half_a_unit():
    model = small()
    v = synthetic_data(model, TRUTH)
    fit = fit_map(model, v, protocol="paper", max_steps=3, truth=TRUTH)
    for k in model.free:
        step = fit.history[k][1, 0] - fit.history[k][0, 0]
        assert np.allclose(np.abs(step), 0.5, atol=1e-9), step  # Adam's first step = ±lr
        assert np.array_equal(fit.history[k][0, 0], CELL.params[k])
    assert fit.history["objective"].shape == (4, 1)
    # the paper's loss: squared error over recorded entries / all entries
    with torch.no_grad():
        sim = model.simulate({k: torch.tensor(CELL.params[k]) for k in model.free})
    assert np.isclose(fit.history["objective"][0, 0], float(((sim - v) ** 2).mean()))


def test_adam_matches_torch_optim_bit_for_bit():
    from bayesneuron.inference._paper_protocol import Adam as _Adam

    gen = torch.Generator().manual_seed(0)
    target = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    x0 = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    paths = []
    for make in (lambda ps: torch.optim.Adam(ps, lr=0.5), lambda ps: _Adam(ps, lr=0.5)):
        x = x0.clone().requires_grad_()
        opt, path = make([x]), []
        for _ in range(25):
            opt.zero_grad()
            (torch.sin(3 * x) + (x - target) ** 4).sum().backward()
            opt.step()
            path.append(x.detach().clone())
        paths.append(torch.stack(path))
    assert torch.equal(paths[0], paths[1])
    assert not torch.equal(paths[1][0], paths[1][-1])  # it moved


def test_paper_loss_counts_all_compartments():
    model = small(Design(rec=[0]))
    v = synthetic_data(model, TRUTH)
    fit = fit_map(model, v, protocol="paper", max_steps=1)
    with torch.no_grad():
        sim = model.simulate({k: torch.tensor(CELL.params[k]) for k in model.free})
    assert np.isclose(fit.history["objective"][0, 0], float(((sim - v) ** 2).sum()) / (6 * 3 * 16))
    assert np.isclose(fit.history["mse"][0, 0], float(((sim - v) ** 2).mean()))


def test_map_recovers_ground_truth():
    model = small(sigma=0.5)
    v = synthetic_data(model, TRUTH)
    fit = fit_map(model, v, truth=TRUTH, n_starts=2, max_steps=40)
    assert fit.converged.all()
    gte = fit.gte()
    assert gte["g_na"] < 1e-4 and gte["g_k"] < 1e-4, gte
    assert fit.mse[fit.best] < 1e-10
    # within a continuation stage the objective never increases (LM accepts only
    # improvements); a new stage's objective is another function
    obj, stage = fit.history["objective"][:, 0], fit.history["stage"][:, 0]
    same = stage[1:] == stage[:-1]
    assert np.all((np.diff(obj) <= 1e-12 * np.abs(obj[:-1]))[same])


def test_batched_designs_equal_separate_fits():
    designs = [Design(), Design(stim=[0], rec=[0, -1])]
    models = [small(d) for d in designs]
    data = [synthetic_data(m, TRUTH) for m in models]
    together = fit_map_designs(models, data, n_starts=1, max_steps=4, horizons=())
    for m, v, f in zip(models, data, together):
        alone = fit_map(m, v, n_starts=1, max_steps=4, horizons=())
        assert f.design == m.design.label
        for k in m.free:
            # equal up to rounding (vectorised and scalar exp differ by an ulp), which the
            # finite-difference Jacobian of an ill-conditioned design amplifies to ≈ 1e-5
            np.testing.assert_allclose(f.history[k], alone.history[k], rtol=1e-4)


def test_checkpoint_resume_continues_exactly(tmp_path):
    model = small()
    v = synthetic_data(model, TRUTH, noise_sigma=0.5, seed=1)
    full = fit_map(model, v, protocol="paper", max_steps=6)
    ck = tmp_path / "fit.pt"
    fit_map(model, v, protocol="paper", max_steps=4, checkpoint=ck, checkpoint_every=2)
    resumed = fit_map(model, v, protocol="paper", max_steps=6, checkpoint=ck, resume=True)
    for k in model.free:
        np.testing.assert_allclose(resumed.history[k], full.history[k], rtol=0, atol=1e-12)
    np.testing.assert_allclose(resumed.history["objective"], full.history["objective"], atol=1e-12)
    # LM too
    kw = dict(n_starts=2, ftol=0, xtol=0, horizons=(2,))
    full = fit_map(model, v, max_steps=3, **kw)
    ck2 = tmp_path / "lm.pt"
    # "killed" in the second stage: the last checkpoint is after its first iteration
    fit_map(model, v, max_steps=3, checkpoint=ck2, checkpoint_every=4, **kw)
    state = torch.load(ck2, weights_only=False)
    assert (state["stage"], state["it"]) == (1, 1)
    resumed = fit_map(model, v, max_steps=3, checkpoint=ck2, resume=True, **kw)
    assert resumed.history["g_na"].shape == full.history["g_na"].shape == (8, 2, 3)
    np.testing.assert_allclose(resumed.history["g_na"], full.history["g_na"], atol=1e-12)
    # a checkpoint of other data is refused
    with pytest.raises(FitError, match="different fit"):
        fit_map(model, v + 1.0, protocol="paper", max_steps=6, checkpoint=ck, resume=True)


def test_flat_prior_and_spread():
    model = small(Design(stim=[0], rec=[0]), priors=None)
    v = synthetic_data(model, TRUTH)
    fit = fit_map(model, v, n_starts=3, max_steps=3)
    assert set(fit.spread()) == {"g_na", "g_k"}
    assert fit.starts["g_na"].shape == (3, 3)
    assert np.all(fit.starts["g_na"] > 0)  # log coordinates keep conductances positive


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(protocol="adam"), FitError, "protocol"),
        (dict(n_starts=0), FitError, "n_starts"),
        (dict(max_steps=0), FitError, "max_steps"),
    ],
)
def test_fit_bad_settings(kw, err, match):
    model = small()
    v = synthetic_data(model, TRUTH)
    with pytest.raises(err, match=match):
        fit_map(model, v, **kw)


def test_fit_bad_data_and_models():
    model = small(Design(rec=[0]))
    with pytest.raises(DataError, match="expects"):
        fit_map(model, torch.zeros(6, 3, 16))
    v = synthetic_data(model, TRUTH)
    v[0, 0, 0] = float("inf")
    with pytest.raises(DataError, match="NaN or inf"):
        fit_map(model, v)
    import pyro.distributions as dist

    m2 = small(sigma=dist.HalfNormal(1.0))  # an inferred σ: all designs or none
    with pytest.raises(FitError, match="all fix sigma or all infer it"):
        fit_map_designs([model, m2], [v, v])
    other = small(n_times=8)
    with pytest.raises(FitError, match="must share"):
        fit_map_designs([model, other], [v, v])
    import dataclasses

    looped = dataclasses.replace(  # the same tree with one more axial edge: another cell
        CELL, morphology=dataclasses.replace(CELL.morphology, loops=[[0, 2]], loop_axial=[0.1])
    )
    other = NeuronModel(looped, model.stimulus, model.t_eval, solver=SOLVER, priors=model.priors)
    with pytest.raises(FitError, match="must share"):
        fit_map_designs([model, other], [v, v])


# torch's forward-AD decompositions still use torch.jit.script internally (torch 2.13)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_forward_mode_through_the_tree_solve():
    """Forward-mode AD (used by torch.func users) agrees with reverse mode: <J t, w> = <t, Jᵀ w>."""
    stim = paper_currents(n_traces=3, n_comp=3)
    t = paper_time_grid()[:10]
    g = torch.tensor([100.0, 90.0, 110.0], dtype=torch.float64)
    tan = torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64)
    with fwAD.dual_level():
        out = simulate(CELL, {"g_na": fwAD.make_dual(g, tan)}, stim, t, SOLVER).v
        jt = fwAD.unpack_dual(out).tangent
    w = torch.randn(jt.shape, dtype=torch.float64)
    gr = g.clone().requires_grad_()
    (simulate(CELL, {"g_na": gr}, stim, t, SOLVER).v * w).sum().backward()
    assert torch.allclose((jt * w).sum(), (tan * gr.grad).sum(), rtol=1e-10)


def test_map_leaves_a_bound_it_touched_on_the_way():
    """One parameter space for MAP and posteriors: uniform priors are logistic in u. A
    continuation stage drives g_na[0] to its prior's lower bound (70) here; the fit must
    come back from it (the logistic saturates, so u is kept 0.25 % inside the bounds)."""
    cell = Cell(chain(2, ax=0.5, cm=0.45), paper_channels(), v0=-60.0)
    model = NeuronModel(
        cell,
        paper_currents(n_traces=4, n_comp=2),
        paper_time_grid()[:24],
        priors=ScaledUniformPrior(0.7, 1.3),
        sigma=2.0,
        solver=CrankNicolson(dt=0.01),
    )
    truth = {"g_na": np.array([95.0, 110.0]), "g_k": np.array([40.0, 50.0])}
    v = synthetic_data(model, truth, noise_sigma=2.0, seed=1)
    fit = fit_map(model, v, truth=truth, progress=False)
    stage1 = fit.history["stage"][:, 0] == 1
    assert fit.history["g_na"][stage1, 0, 0].min() < 70.5  # it did reach the bound
    assert fit.converged.all()
    assert abs(fit.params["g_na"][0] - 95.0) < 3.0, fit.params
    assert np.ptp(fit.objective) < 1e-6 * fit.objective.min()  # every start, the same optimum
