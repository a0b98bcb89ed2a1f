"""Simulation-based calibration: ranks of the truth are uniform for a calibrated method;
failed simulations are counted, not fatal."""

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


def test_laplace_is_calibrated_on_a_small_cell():
    res = calibration.sbc(small_model(), 100, n_draws=99, seed=0)
    assert res.n_ok == 100 and res.failures == []
    assert res.ranks.shape == (100, 4) and res.ranks.max() <= res.n_draws
    # 4 parameters, 10 bins: a calibrated method fails this at α = 0.001 per parameter
    assert (res.uniformity_pvalues() > 1e-3).all(), res.histogram()


@pytest.mark.slow
def test_svi_is_calibrated_on_a_small_cell():
    res = calibration.sbc(small_model(), 100, method="svi", n_draws=99, seed=1)
    assert res.n_ok == 100 and res.failures == []
    assert res.ranks.shape == (100, 4) and res.ranks.max() <= res.n_draws
    assert (res.uniformity_pvalues() > 1e-3).all(), res.histogram()


def test_failed_simulations_are_counted(monkeypatch):
    real = calibration.synthetic_data

    def flaky(model, truth, **kw):  # every third data set diverges
        v = real(model, truth, **kw)
        return v * np.nan if kw["seed"] % 3 == 0 else v

    monkeypatch.setattr(calibration, "synthetic_data", flaky)
    res = calibration.sbc(small_model(), 6, n_draws=9, seed=0)
    assert res.n_ok == 4 and len(res.failures) == 2
    assert all("not finite" in f for f in res.failures)


def test_uniformity_test_rejects_biased_ranks():
    res = calibration.SbcResult(["a"], np.full((200, 1), 3), n_draws=99)
    assert res.uniformity_pvalues()[0] < 1e-10


def test_sbc_errors():
    with pytest.raises(BayesneuronError, match="method 'nuts' unknown"):
        calibration.sbc(small_model(), 2, method="nuts")
    with pytest.raises(BayesneuronError, match="≥ 1"):
        calibration.sbc(small_model(), 0)
