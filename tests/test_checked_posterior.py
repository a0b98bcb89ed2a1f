"""Posteriors that carry their checks: k̂ thresholds, the escalation ladder, NUTS from
several modes, hatched heatmaps and rankings that ignore failed posteriors."""

import math

import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle

from bayesneuron import Cell, NeuronModel, ScaledUniformPrior, chain, fit_map, synthetic_data
from bayesneuron.errors import FitError
from bayesneuron.inference.diagnostics import (
    chain_diagnostics,
    khat_threshold,
    map_fit,
    psis_weights,
)
from bayesneuron.inference.laplace import laplace_map
from bayesneuron.inference.nuts import run_nuts
from bayesneuron.inference.posterior import checked_posterior
from bayesneuron.reference.paper import paper_channels, paper_currents, paper_time_grid
from bayesneuron.reports import plot_contraction_heatmap
from bayesneuron.simulation.solvers import CrankNicolson
from bayesneuron.studies.ranking import rank_designs

CELL = Cell(chain(2, ax=0.5, cm=0.45), paper_channels(), v0=-60.0)
TRUTH = {"g_na": np.array([95.0, 110.0]), "g_k": np.array([40.0, 50.0])}


@pytest.fixture(scope="module")
def problem():
    model = NeuronModel(
        CELL,
        paper_currents(n_traces=4, n_comp=2),
        paper_time_grid()[:24],
        priors=ScaledUniformPrior(0.7, 1.3),
        sigma=2.0,
        solver=CrankNicolson(dt=0.01, backend="fused"),
    )
    v = synthetic_data(model, TRUTH, noise_sigma=2.0, seed=1)
    mp = fit_map(model, v, n_starts=3, seed=0, progress=False)  # no truth: base + prior draws
    return model, v, mp, laplace_map(model, v, mp.params, progress=False)


def test_khat_threshold_is_sample_size_aware():
    assert khat_threshold(256) == pytest.approx(1 - 1 / math.log10(256))
    assert khat_threshold(256) == pytest.approx(0.585, abs=1e-3)
    assert khat_threshold(2000) == pytest.approx(0.697, abs=1e-3)
    assert khat_threshold(10**6) == 0.7
    assert khat_threshold(5) == 0.0  # too few draws: nothing passes


def test_psis_weights_are_normalised_and_drop_non_finite():
    lw = torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lw[3] = -math.inf
    smoothed, k = psis_weights(lw)
    assert np.exp(smoothed).sum() == pytest.approx(1.0)
    assert smoothed[3] == -np.inf and k < 0.5


def test_chain_diagnostics_see_chains_that_disagree():
    rng = np.random.default_rng(0)
    mixed = {"x": rng.normal(size=(2, 400, 3))}
    stuck = {"x": rng.normal(size=(2, 400, 3)) + np.array([0.0, 5.0])[:, None, None]}
    good, bad = chain_diagnostics(mixed), chain_diagnostics(stuck)
    assert good["rhat_max"] < 1.01 and good["ess_bulk_min"] > 400
    assert bad["rhat_max"] > 1.5


def test_a_passing_method_ends_the_ladder(problem):
    model, v, mp, lap = problem
    res = checked_posterior(
        model, v, mp.params, ladder=("laplace", "importance"), laplace=lap, num_samples=200
    )
    assert res.ok and res.method == "laplace"
    assert [a.method for a in res.attempts] == ["laplace"]
    assert res.diagnostics["khat"] <= res.diagnostics["khat_threshold"]
    assert res.samples["g_na"].shape == (1, 200, 2)
    z = (TRUTH["g_na"] - res.draws["g_na"].mean(0)) / res.draws["g_na"].std(0)
    assert np.abs(z).max() < 4


def test_map_fit_is_a_chi2_test_of_the_residuals():
    rng = np.random.default_rng(0)
    n, p = 2000, 12
    noise = rng.normal(0.0, 2.0, size=(200, n))
    ps = [map_fit(float((e**2).sum()), 2.0, n, p)["map_fit_p"] for e in noise]
    assert 0.3 < np.mean(ps) < 0.7 and min(ps) > 1e-4  # ~ uniform under the right σ
    assert map_fit(float((noise[0] ** 2).sum()), 1.0, n, p)["map_fit_p"] < 1e-12  # σ too small
    assert map_fit(0.0, 1.0, n, p)["map_fit_p"] == 1.0  # noise-free data fit: not a failure
    d = map_fit(float((noise[0] ** 2).sum()), 2.0, n, p)
    assert d["map_dof"] == n - p and d["map_fit_z"] == pytest.approx(
        (d["map_chi2"] - d["map_dof"]) / math.sqrt(2 * d["map_dof"])
    )


def test_a_mode_that_does_not_fit_the_data_is_not_ok(problem):
    model, v, mp, lap = problem
    good = checked_posterior(model, v, mp.params, ladder=("laplace",), laplace=lap, num_samples=50)
    assert good.ok and good.fit["map_fit_p"] > 1e-3
    # the same data at twice the noise: the Laplace at that data's mode may pass PSIS, but the
    # mode's residuals are 4x the model's σ² — a misfit the posterior must not hide
    v_loud = synthetic_data(model, TRUTH, noise_sigma=4.0, seed=1)
    mp2 = fit_map(model, v_loud, n_starts=1, seed=0, progress=False)
    res = checked_posterior(model, v_loud, mp2.params, ladder=("laplace",), num_samples=50)
    assert not res.ok and res.fit["map_fit_z"] > 10
    d = res.diagnostics
    assert d["posterior_ok"] is False and "does not fit the data" in d["attempts"]
    assert d["map_fit_p"] < 1e-3


def test_adaptive_importance_learns_a_proposal_that_plain_importance_lacks(problem, monkeypatch):
    import dataclasses

    model, v, mp, lap = problem
    # a Laplace approximation 8x too narrow and off-centre by 2 sd along its first axis:
    # importance from it fails, the adapted proposal finds the posterior's shape
    shift = 2.0 * lap.scale_tril[:, 0]
    bad = dataclasses.replace(lap, center=lap.center + shift, cov=lap.cov / 64.0)
    kw = dict(ladder=("importance",), laplace=bad, num_samples=200, psis_samples=1000)
    plain = checked_posterior(model, v, mp.params, **kw)
    adapted = checked_posterior(model, v, mp.params, **kw | {"ladder": ("adaptive_importance",)})
    assert not plain.ok and adapted.ok
    d = adapted.diagnostics
    assert d["posterior_method"] == "adaptive_importance" and d["rounds"] >= 2
    assert d["khat"] <= d["khat_threshold"] and d["ess"] >= 100
    rounds = [float(x) for x in d["khat_rounds"].split()]
    assert rounds[0] > d["khat_threshold"] >= rounds[-1] == pytest.approx(d["khat"], abs=5e-3)
    # the adapted posterior agrees with the Laplace approximation at the true mode
    sd = np.sqrt(np.diag(lap.cov.numpy()))
    u = lap.space.unconstrain({k: torch.as_tensor(adapted.draws[k]) for k in model.free})
    assert tuple(u.shape) == (200, 4)
    assert np.abs((u.mean(0).numpy() - lap.center.numpy()) / sd).max() < 0.5
    # after plain importance in one ladder, adaptive importance takes importance's draws as
    # its first round instead of simulating them again: the same posterior, fewer simulations
    import bayesneuron.inference.importance as imp

    evaluated, log_target = [], imp.log_target

    def counted(wm, z, chunk=500):
        evaluated.append(z.shape[0])
        return log_target(wm, z, chunk)

    monkeypatch.setattr(imp, "log_target", counted)
    both = checked_posterior(
        model, v, mp.params, **kw | {"ladder": ("importance", "adaptive_importance")}
    )
    assert both.method == "adaptive_importance" and both.ok
    for k in model.free:
        np.testing.assert_array_equal(both.samples[k], adapted.samples[k])
    assert sum(evaluated) == 2000 * d["rounds"], evaluated  # not 2000 * (rounds + 1)


def test_failed_methods_escalate_and_the_last_is_flagged(problem):
    model, v, mp, lap = problem
    # psis_samples = 10: the threshold is 0, so no PSIS-checked method can pass
    res = checked_posterior(
        model,
        v,
        mp.params,
        ladder=("laplace", "svi:normal"),
        psis_samples=10,
        num_samples=50,
        svi=dict(max_steps=5, min_steps=1, window=2),
        laplace=lap,
    )
    assert not res.ok and res.method == "svi:normal"
    assert [a.method for a in res.attempts] == ["laplace", "svi:normal"]
    assert all(not a.ok and "k̂" in a.reason for a in res.attempts)
    d = res.diagnostics
    assert d["posterior_ok"] is False and "laplace failed" in d["attempts"]


def test_importance_resampling_from_the_modes(problem):
    model, v, mp, lap = problem
    res = checked_posterior(
        model, v, mp.params, ladder=("importance",), laplace=lap, num_samples=300, seed=2
    )
    d = res.attempts[0].diagnostics
    assert d["n_proposals"] == 4000 and 1 <= d["unique_draws"] <= 300
    assert res.ok == (d["khat"] <= d["khat_threshold"] and d["ess"] >= 100)
    assert res.ok  # a 4-parameter posterior with 4 traces is close to its Laplace


def test_bad_ladders_and_modes_are_refused(problem):
    model, v, mp, lap = problem
    with pytest.raises(FitError, match="unknown method"):
        checked_posterior(model, v, mp.params, ladder=("svi:nope",), laplace=lap)
    with pytest.raises(FitError, match="at least one mode"):
        checked_posterior(model, v, [], laplace=lap)


def test_nuts_chains_start_at_the_given_modes(problem):
    model, v, mp, lap = problem
    far = lap.center + 3 * lap.cov.diag().sqrt()
    run = run_nuts(
        model, v, None, laplace=lap, inits=[lap.center, far], num_samples=5, warmup_steps=0,
        num_chains=2, seed=0, progress=False,
    )  # fmt: skip
    first = np.concatenate([run.samples[k][:, 0] for k in model.free], -1)  # [chain, P]
    assert np.abs(first[0] - first[1]).max() > 0  # the chains did not start together


def test_heatmap_hatches_designs_whose_posterior_is_not_ok():
    rows = [
        {"stim": s, "rec": r, "mean_contraction": 0.5 + 0.1 * i, "posterior_ok": i != 1}
        for i, (s, r) in enumerate([("all", "all"), ("all", "[0]"), ("[0]", "all")])
    ]
    fig = plot_contraction_heatmap(rows)
    hatched = [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == 1 and "not ok (1)" in fig.axes[0].get_title()


def test_ranking_puts_not_ok_posteriors_last():
    rows = [
        dict(stim="all", rec="all", logdet_fisher=1.0, max_rel_sd=0.1, mean_contraction=0.99,
             posterior_ok=False),
        dict(stim="[0]", rec="all", logdet_fisher=0.5, max_rel_sd=0.2, mean_contraction=0.9,
             posterior_ok=True),
    ]  # fmt: skip
    rk = {r["design"]: r for r in rank_designs(rows)}
    assert rk["all|all"]["rank_mean_contraction"] == 2 and rk["[0]|all"]["rank_max_rel_sd"] == 1
    assert rk["all|all"]["rank_logdet_fisher"] == 1  # not read off the posterior
    assert rk["all|all"]["posterior_ok"] is False
