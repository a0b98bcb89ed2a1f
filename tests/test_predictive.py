"""Pyro's Predictive with the fitted guide and the user's own NeuronModel; the results'
common protocol (draws, diagnostics)."""

import numpy as np
import pytest
import torch
from pyro.infer import Predictive

from bayesneuron import (
    Cell,
    CrankNicolson,
    NeuronModel,
    ScaledUniformPrior,
    chain,
    fit_map,
    fit_svi,
    paper_channels,
    paper_currents,
    paper_time_grid,
    synthetic_data,
)
from bayesneuron.inference import PosteriorResult, laplace_map, run_nuts
from bayesneuron.inference.svi import GUIDES

CELL = Cell(chain(2, ax=0.5, cm=0.45), paper_channels(), v0=-60.0)
TRUTH = {"g_na": np.array([95.0, 110.0]), "g_k": np.array([40.0, 50.0])}
SIGMA = 2.0


@pytest.fixture(scope="module")
def problem():
    model = NeuronModel(
        CELL,
        paper_currents(n_traces=4, n_comp=2),
        paper_time_grid()[:24],
        priors=ScaledUniformPrior(0.7, 1.3),
        sigma=SIGMA,
        solver=CrankNicolson(dt=0.01),
    )
    v = synthetic_data(model, TRUTH, noise_sigma=SIGMA, seed=1)
    lap = laplace_map(model, v, TRUTH, progress=False)
    return model, v, lap


@pytest.fixture(scope="module")
def svi(problem):
    model, v, lap = problem
    return fit_svi(model, v, TRUTH, laplace=lap, max_steps=200, num_samples=4000, progress=False)


def _check_against_fit(draws, fit, n):
    """Predictive's draws agree with the fit's own: means within 0.25 posterior sd (the
    Monte Carlo error of n = 1000 draws is ≈ 0.03 sd), sds within 15 %."""
    for k in ("g_na", "g_k"):
        x = draws[k].numpy()
        m, s = fit.samples[k].mean(0), fit.samples[k].std(0)
        assert x.shape == (n, 2)
        assert np.all(np.abs(x.mean(0) - m) < 0.25 * s), (k, x.mean(0), m, s)
        assert np.all(np.abs(x.std(0) / s - 1) < 0.15), (k, x.std(0), s)


def test_predictive_with_the_users_model(problem, svi):
    model, v, _ = problem
    n = 1000
    out = Predictive(model, guide=svi.guide, num_samples=n)()
    assert set(out) == {"g_na", "g_k", "v_obs"}
    assert out["v_obs"].shape == (n, *model.obs_shape) == (n, 4, 2, 24)
    _check_against_fit(out, svi, n)
    # v_obs is the simulation at the same draw plus noise of sd sigma
    with torch.no_grad():
        sim = model.simulate({k: out[k] for k in model.free})
    noise = (out["v_obs"] - sim).std().item()
    assert abs(noise / SIGMA - 1) < 0.05
    # the predictive mean follows the data (up to noise)
    assert (out["v_obs"].mean(0) - v).abs().mean() < 2 * SIGMA


def test_predictive_vectorised(problem, svi):
    model, _, _ = problem
    out = Predictive(model, guide=svi.guide, num_samples=1000, parallel=True)()
    assert out["v_obs"].shape == (1000, 4, 2, 24)
    _check_against_fit(out, svi, 1000)


def test_predictive_with_the_whitened_model(problem, svi):
    """The whitened model records every free parameter as a deterministic site [comp] and
    samples v_obs when called without data."""
    model, _, _ = problem
    out = Predictive(svi.whitened, guide=svi.guide, num_samples=300)()
    assert out["z"].shape == (300, 4)
    assert out["v_obs"].shape == (300, *model.obs_shape)
    assert out["g_na"].shape == out["g_k"].shape == (300, 2)
    with torch.no_grad():
        g = svi.whitened.params(out["z"])
    assert torch.allclose(g["g_na"], out["g_na"]) and torch.allclose(g["g_k"], out["g_k"])
    assert svi.model is model


@pytest.mark.parametrize("guide", sorted(set(GUIDES) - {"mvn"}))
def test_every_guide_serves_predictive(problem, guide):
    model, v, lap = problem
    kw = dict(laplace=lap, max_steps=60, num_samples=500, progress=False)
    fit = fit_svi(model, v, TRUTH, guide=guide, **kw)
    out = Predictive(model, guide=fit.guide, num_samples=400)()
    assert out["g_na"].shape == (400, 2) and out["v_obs"].shape == (400, 4, 2, 24)
    for k in model.free:
        m, s = fit.samples[k].mean(0), fit.samples[k].std(0)
        assert np.all(np.abs(out[k].numpy().mean(0) - m) < 0.35 * s)


def test_nuts_draws_serve_predictive(problem):
    model, v, lap = problem
    kw = dict(num_chains=2, laplace=lap, progress=False)
    run = run_nuts(model, v, TRUTH, num_samples=40, warmup_steps=40, **kw)
    out = Predictive(model, posterior_samples=run.posterior_samples())()
    assert out["v_obs"].shape == (80, *model.obs_shape)


def test_results_share_one_protocol(problem, svi):
    model, v, lap = problem
    mp = fit_map(model, v, n_starts=2, max_steps=5, horizons=(), progress=False)
    kw = dict(num_chains=2, laplace=lap, progress=False)
    run = run_nuts(model, v, TRUTH, num_samples=10, warmup_steps=10, **kw)
    for res, n in ((mp, 1), (lap, 1000), (svi, 4000), (run, 20)):
        assert isinstance(res, PosteriorResult), type(res).__name__
        assert set(res.draws) == set(model.free)
        for k in model.free:
            assert np.asarray(res.draws[k]).shape == (n, 2), (type(res).__name__, k)
        assert isinstance(res.diagnostics, dict) and res.diagnostics
    assert np.array_equal(mp.draws["g_na"][0], mp.params["g_na"])
    assert svi.diagnostics["khat"] == svi.khat
    assert run.diagnostics["num_chains"] == 2
    assert np.array_equal(run.draws["g_k"][10:], run.samples["g_k"][1])
    assert lap.diagnostics["hessian"] in ("exact", "gauss-newton")
