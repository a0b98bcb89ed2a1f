"""Tempered SMC: exact answers on analytic targets (posterior moments, evidence, the mass of
each mode of a bimodal posterior), then on a neuron model through the posterior ladder."""

import math

import numpy as np
import pytest
import torch

from bayesneuron import Cell, NeuronModel, ScaledUniformPrior, chain, fit_map, synthetic_data
from bayesneuron.errors import FitError
from bayesneuron.inference.laplace import laplace_map
from bayesneuron.inference.posterior import checked_posterior
from bayesneuron.inference.smc import temper, tempered_smc
from bayesneuron.reference.paper import paper_channels, paper_currents, paper_time_grid
from bayesneuron.simulation.solvers import CrankNicolson

STD = torch.distributions.Normal(0.0, 1.0)


def _prior(z):
    return STD.log_prob(z).sum(-1)


@pytest.mark.parametrize("kernel", ["walk", "hmc"])
def test_gaussian_posterior_and_evidence_are_exact(kernel):
    # prior N(0, I), likelihood N(y; z, s² I): posterior N(y/(1+s²), s²/(1+s²)),
    # evidence N(y; 0, (1+s²) I); the same with either move kernel
    s, y = 0.3, torch.tensor([1.0, -0.5], dtype=torch.float64)

    def lik(z):
        return torch.distributions.Normal(z, s).log_prob(y).sum(-1)

    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(1000, 2, generator=gen, dtype=torch.float64)
    r = temper(z0, _prior, lik, gen, kernel=kernel)
    assert r["beta"] == 1.0 and r["stages"] >= 2 and r["n_sim"] > 1000
    assert 0.15 < r["accept"] < (0.4 if kernel == "walk" else 0.95)  # adapted steps
    assert r["correlation"] <= 0.1  # every stage's sweeps decorrelated the particles
    mean, sd = y / (1 + s**2), s / math.sqrt(1 + s**2)
    se = sd / math.sqrt(1000 / 4)  # a conservative Monte Carlo error (correlated particles)
    assert torch.all((r["z"].mean(0) - mean).abs() < 4 * se)
    assert torch.allclose(r["z"].std(0), torch.full((2,), sd, dtype=torch.float64), rtol=0.1)
    exact = float(torch.distributions.Normal(0.0, math.sqrt(1 + s**2)).log_prob(y).sum())
    assert r["log_z"] == pytest.approx(exact, abs=0.2)


@pytest.mark.parametrize("kernel", ["walk", "hmc"])
def test_both_modes_of_a_bimodal_posterior_keep_their_mass(kernel):
    # two equally likely modes at ±(2, 0), 4 prior sd apart in the first coordinate: a sampler
    # started at one mode (NUTS from a MAP) never sees the other; each population keeps half
    a, s = torch.tensor([2.0, 0.0], dtype=torch.float64), 0.2

    def lik(z):
        n = torch.distributions.Normal
        return torch.logaddexp(
            n(a, s).log_prob(z).sum(-1), n(-a, s).log_prob(z).sum(-1)
        ) - math.log(2)

    for seed in (1, 2):
        gen = torch.Generator().manual_seed(seed)
        z0 = torch.randn(800, 2, generator=gen, dtype=torch.float64)
        r = temper(z0, _prior, lik, gen, kernel=kernel)
        right = float((r["z"][:, 0] > 0).double().mean())
        assert right == pytest.approx(0.5, abs=0.1)
        # within a mode the posterior is N(±a/(1+s²), s²/(1+s²))
        x = r["z"][r["z"][:, 0] > 0, 0]
        assert float(x.mean()) == pytest.approx(2 / (1 + s**2), abs=0.05)


def test_hmc_never_accepts_a_move_where_the_likelihood_fails():
    # the likelihood is NaN (a diverged simulation) for z₀ > 0.5: HMC particles whose
    # trajectory crosses there are rejected, never kept with a NaN density
    def lik(z):
        ok = torch.distributions.Normal(z, 0.5).log_prob(torch.zeros_like(z)).sum(-1)
        return torch.where(z[:, 0] > 0.5, torch.nan, ok)

    gen = torch.Generator().manual_seed(5)
    r = temper(torch.randn(500, 2, generator=gen, dtype=torch.float64), _prior, lik, gen,
               kernel="hmc")  # fmt: skip
    assert r["beta"] == 1.0 and torch.isfinite(r["ll"]).all()
    assert float(r["z"][:, 0].max()) <= 0.5 and 0.1 < r["accept"] < 1.0


def test_a_run_that_runs_out_of_stages_says_so():
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(200, 2, generator=gen, dtype=torch.float64)
    r = temper(z0, _prior, lambda z: -1e4 * (z**2).sum(-1), gen, max_stages=2)
    assert r["beta"] < 1.0 and r["stages"] == 2


@pytest.fixture(scope="module")
def problem():
    model = NeuronModel(
        Cell(chain(2, ax=0.5, cm=0.45), paper_channels(), v0=-60.0),
        paper_currents(n_traces=4, n_comp=2),
        paper_time_grid()[:24],
        priors=ScaledUniformPrior(0.7, 1.3),
        sigma=2.0,
        solver=CrankNicolson(dt=0.01, backend="fused"),
    )
    truth = {"g_na": np.array([95.0, 110.0]), "g_k": np.array([40.0, 50.0])}
    v = synthetic_data(model, truth, noise_sigma=2.0, seed=1)
    mp = fit_map(model, v, n_starts=3, seed=0, progress=False)  # no truth: base + prior draws
    return model, v, mp, laplace_map(model, v, mp.params, progress=False)


@pytest.mark.parametrize("kernel", ["walk", "hmc"])
def test_smc_on_a_neuron_model_agrees_with_its_laplace_approximation(problem, kernel):
    model, v, mp, lap = problem
    samples, d = tempered_smc(
        model, v, lap, num_samples=300, n_particles=300, kernel=kernel, leapfrog_steps=4, seed=3
    )
    assert d["kernel"] == kernel
    assert samples["g_na"].shape == (2, 300, 2)
    assert d["num_chains"] == 2 and d["beta_final"] == 1.0 and d["rhat_max"] < 1.05
    assert d["log_evidence_spread"] < 1.0 and d["stage_correlation_max"] < 0.5
    # a 4-parameter posterior with 4 traces is close to its Laplace approximation
    u = lap.space.unconstrain({k: torch.as_tensor(x.reshape(-1, 2)) for k, x in samples.items()})
    sd = np.sqrt(np.diag(lap.cov.numpy()))
    assert np.abs((u.mean(0).numpy() - lap.center.numpy()) / sd).max() < 0.3
    assert np.allclose(u.std(0).numpy() / sd, 1.0, atol=0.25)
    # and its evidence with the Laplace evidence log p(v, mode) + ½ log det(2π Σ)
    laplace_ev = lap.log_posterior + 0.5 * float(torch.logdet(2 * math.pi * lap.cov))
    ev = [float(x) for x in d["log_evidence"].split()]
    assert np.allclose(ev, laplace_ev, atol=1.0)


def test_smc_in_the_ladder_is_checked_like_nuts(problem):
    model, v, mp, lap = problem
    res = checked_posterior(
        model, v, mp.params, ladder=("smc",), laplace=lap, num_samples=150,
        smc=dict(n_particles=150), seed=4,
    )  # fmt: skip
    d = res.diagnostics
    assert res.method == "smc" and d["posterior_method"] == "smc"
    assert res.samples["g_k"].shape == (2, 150, 2)
    assert res.ok == (d["rhat_max"] <= 1.01 and min(d["ess_bulk_min"], d["ess_tail_min"]) >= 200)
    with pytest.raises(FitError, match="target_ess"):
        tempered_smc(model, v, lap, target_ess=1.5)
    with pytest.raises(FitError, match="'walk' or 'hmc'"):
        tempered_smc(model, v, lap, kernel="nuts")


def test_a_spent_time_budget_stops_where_it_is_and_fails_the_checks(problem):
    """``max_seconds``: on a lent GPU a run ends with what it reached rather than being killed;
    it is never ok. A budget that is never reached changes nothing."""
    model, v, mp, lap = problem
    res = checked_posterior(
        model, v, mp.params, ladder=("smc",), laplace=lap, num_samples=50,
        smc=dict(n_particles=50, max_seconds=0.0), seed=4,
    )  # fmt: skip
    d = res.diagnostics
    assert d["out_of_time"] and d["beta_final"] < 1.0 and d["n_stages"] == 0
    assert not res.ok and "out of time" in d["attempts"]
    assert res.samples["g_na"].shape == (2, 50, 2)  # the particles where they stopped
    kw = dict(num_samples=40, n_particles=40, max_settle=0, seed=5)
    a = tempered_smc(model, v, lap, **kw)
    b = tempered_smc(model, v, lap, **kw, max_seconds=1e6)
    assert not b[1]["out_of_time"] and b[1]["beta_final"] == 1.0
    assert all(np.array_equal(a[0][k], b[0][k]) for k in a[0])
    with pytest.raises(FitError, match="max_seconds"):
        tempered_smc(model, v, lap, max_seconds=-1.0)
