"""Simulation-based calibration from the data only: ranks of the truth are uniform for a
calibrated pipeline (MAP from non-truth starts, then the posterior); failed simulations are
counted, not fatal; the ECDF band accepts uniform ranks and rejects non-uniform ones."""

import numpy as np
import pytest

import bayesneuron.inference.calibration as calibration
from bayesneuron import (
    Cell,
    CrankNicolson,
    NeuronModel,
    ScaledUniformPrior,
    chain,
    paper_channels,
    paper_currents,
    paper_time_grid,
)
from bayesneuron.errors import BayesneuronError


def small_model():
    cell = Cell(chain(2, ax=0.5, cm=0.45), paper_channels(), v0=-60.0)
    return NeuronModel(
        cell,
        paper_currents(n_traces=4, n_comp=2),
        paper_time_grid()[:24],
        priors=ScaledUniformPrior(0.7, 1.3),
        sigma=2.0,
        solver=CrankNicolson(dt=0.01, backend="fused"),
    )


def test_laplace_is_calibrated_on_a_small_cell_from_the_data_only(monkeypatch):
    seen = {"truths": [], "centres": []}
    real_data, real_laplace = calibration.synthetic_data, calibration.laplace_map

    def data(model, truth, **kw):
        seen["truths"].append(truth)
        return real_data(model, truth, **kw)

    def laplace(model, v, params, **kw):
        seen["centres"].append(params)
        return real_laplace(model, v, params, **kw)

    monkeypatch.setattr(calibration, "synthetic_data", data)
    monkeypatch.setattr(calibration, "laplace_map", laplace)
    # 60 runs: ~16 s on an idle core (~40 s on a loaded 2-core machine)
    res = calibration.sbc(small_model(), 60, n_draws=99, seed=0, progress=False)
    assert res.n_ok == 60 and res.failures == [] and res.n_not_ok == 0
    assert res.ranks.shape == (60, 4) and res.ranks.max() <= res.n_draws
    assert res.settings["init"] == "map" and set(res.methods) == {"laplace"}
    # the posterior is centred at a MAP found from the data, never at the truth
    for t, c in zip(seen["truths"], seen["centres"]):
        assert all(not np.allclose(c[k], t[k], rtol=1e-9, atol=0) for k in ("g_na", "g_k"))
    # 4 parameters, 10 bins: a calibrated method fails this at α = 0.001 per parameter
    assert (res.uniformity_pvalues() > 1e-3).all(), res.histogram()
    assert res.passes(alpha=0.01), res.summary(0.01)
    summary = res.summary()
    assert summary["n_runs"] == 60 and set(summary["parameters"]) == set(res.labels)


def test_truth_start_is_explicit_and_escalating_records_its_methods():
    res = calibration.sbc(small_model(), 2, init="truth", n_draws=9, seed=0, progress=False)
    assert res.map_converged is None and res.settings["init"] == "truth"
    svi = dict(max_steps=60, min_steps=20, window=10, num_particles=2)
    res = calibration.sbc(
        small_model(),
        3,
        method="escalating",
        n_draws=19,
        seed=0,
        progress=False,
        fit_kwargs=dict(svi=svi, psis_samples=300),
    )
    assert res.n_ok + len(res.failures) == 3
    assert len(res.methods) == res.n_ok == len(res.posterior_ok)
    assert set(res.methods) <= {"svi:mvn", "svi:iaf", "importance"}
    assert res.summary()["n_posterior_not_ok"] == res.n_not_ok


@pytest.mark.slow
def test_svi_is_calibrated_on_a_small_cell():
    res = calibration.sbc(small_model(), 100, method="svi", n_draws=99, seed=1, progress=False)
    assert res.n_ok == 100 and res.failures == []
    assert res.ranks.shape == (100, 4) and res.ranks.max() <= res.n_draws
    assert (res.uniformity_pvalues() > 1e-3).all(), res.histogram()


def test_failed_simulations_are_counted(monkeypatch):
    real = calibration.synthetic_data

    def flaky(model, truth, **kw):  # every third data set diverges
        v = real(model, truth, **kw)
        return v * np.nan if kw["seed"] % 3 == 0 else v

    monkeypatch.setattr(calibration, "synthetic_data", flaky)
    res = calibration.sbc(small_model(), 6, n_draws=9, seed=0, progress=False)
    assert res.n_ok == 4 and len(res.failures) == 2
    assert all("not finite" in f for f in res.failures)


def test_uniformity_test_rejects_biased_ranks():
    res = calibration.SbcResult(["a"], np.full((200, 1), 3), n_draws=99)
    assert res.uniformity_pvalues()[0] < 1e-10
    assert not res.inside_band().any() and not res.passes()


def test_ecdf_band_holds_uniform_ranks_at_its_level():
    rng = np.random.default_rng(3)
    z, lo, hi = calibration.ecdf_band(100, 99, 0.05, seed=0)
    assert z.shape == lo.shape == hi.shape == (99,) and (lo < 0).all() and (hi > 0).all()
    assert np.array_equal(lo, calibration.ecdf_band(100, 99, 0.05, seed=0)[1])  # seeded
    outside = 0
    for _ in range(300):
        _, d = calibration.ecdf_difference(rng.integers(0, 100, (100, 1)), 99)
        outside += not ((d >= lo) & (d <= hi)).all()
    assert 0.01 < outside / 300 < 0.10  # simultaneous 95 % band: ~5 % of sets leave it


def test_ecdf_band_passes_uniform_and_rejects_non_uniform_ranks():
    rng = np.random.default_rng(4)
    labels = [f"p{i}" for i in range(4)]
    uniform = calibration.SbcResult(labels, rng.integers(0, 100, (100, 4)), n_draws=99)
    assert uniform.inside_band(0.05).all() and uniform.passes(0.05)
    # an over-confident posterior: the truth sits too often in the tails (∪-shaped ranks)
    u = rng.beta(0.5, 0.5, (100, 4))
    narrow = calibration.SbcResult(labels, np.floor(u * 100).astype(int), n_draws=99)
    assert not narrow.inside_band(0.05).any() and not narrow.passes(0.05)
    # a biased posterior: the truth is too often below the draws, for one parameter only
    biased = uniform.ranks.copy()
    biased[:, 2] = np.floor(rng.beta(1.0, 1.6, 100) * 100).astype(int)
    res = calibration.SbcResult(labels, biased, n_draws=99)
    assert res.inside_band(0.05).tolist() == [True, True, False, True] and not res.passes()


def test_holm():
    assert calibration.holm(np.array([0.001, 0.02, 0.04, 0.5]), 0.05).tolist() == [
        True,
        False,
        False,
        False,
    ]


def test_sbc_errors():
    with pytest.raises(BayesneuronError, match="method 'nuts' unknown"):
        calibration.sbc(small_model(), 2, method="nuts")
    with pytest.raises(BayesneuronError, match="init 'prior' unknown"):
        calibration.sbc(small_model(), 2, init="prior")
    with pytest.raises(BayesneuronError, match="≥ 1"):
        calibration.sbc(small_model(), 0)


def test_calibration_figures_have_one_panel_per_parameter():
    from bayesneuron.reports.calibration_plots import (
        ecdf_difference_figure,
        rank_histogram_figure,
    )

    rng = np.random.default_rng(5)
    ranks = rng.integers(0, 100, (60, 3))
    ranks[:, 1] = 0  # one parameter far outside its band
    res = calibration.SbcResult(["a", "b", "c"], ranks, n_draws=99)
    hist = rank_histogram_figure(res, ncols=2)
    assert sum(ax.get_visible() for ax in hist.axes) == 3
    ecdf = ecdf_difference_figure(res, ncols=3)
    titles = [ax.get_title() for ax in ecdf.axes]
    assert titles == ["a  inside", "b  OUTSIDE", "c  inside"]


def test_posteriors_that_are_not_ok_are_kept_counted_and_explained():
    rng = np.random.default_rng(6)
    ok = np.ones(50, bool)
    ok[[3, 7]] = False
    methods = ["svi:mvn"] * 50
    attempts = ["svi:mvn ok"] * 50
    for i in (3, 7):
        methods[i], attempts[i] = "importance", "importance failed: k̂ 0.91 > 0.70"
    res = calibration.SbcResult(
        ["a", "b"],
        rng.integers(0, 20, (50, 2)),
        19,
        methods=methods,
        posterior_ok=ok,
        attempts=attempts,
    )
    s = res.summary()
    assert s["n_ok"] == 50 and s["n_posterior_not_ok"] == 2  # kept in the ranks
    assert s["methods_used"] == {"svi:mvn": 48, "importance": 2}
    assert (
        s["posterior_not_ok"][0].startswith("row 3: importance")
        and "k̂ 0.91" in s["posterior_not_ok"][0]
    )
    assert "passes_ok_only" in s and res.only_ok().n_ok == 48
