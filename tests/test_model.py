"""The Pyro model, priors, designs and synthetic data: site names, shapes, errors."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive

from bayesneuron import (
    Cell,
    CrankNicolson,
    DataError,
    Design,
    DesignError,
    LogNormalPrior,
    NeuronModel,
    ParameterError,
    ScaledUniformPrior,
    chain,
    design_grid,
    draw_truth,
    paper_channels,
    paper_currents,
    paper_ground_truth,
    paper_time_grid,
    paper_toy_cell,
    synthetic_data,
)
from bayesneuron.protocol.design import row_label

SOLVER = CrankNicolson(dt=0.02)


def small_model(design=None, **kw):
    cell = Cell(chain(3, ax=0.5, cm=0.45), paper_channels(), v0=-60.0)
    stim = paper_currents(n_traces=4, n_comp=3)
    return NeuronModel(cell, stim, paper_time_grid()[:12], design, solver=SOLVER, **kw)


def test_design_labels_round_trip():
    grid = design_grid([[0], [0, 1], [0, -1], [0, 1, -1], None])
    assert len(grid) == 25
    for d in grid:
        assert Design.from_label(d.label) == d
    assert Design([0, -1], None).label == "[0,-1]|all"
    assert len(design_grid([[0], None], full=False)) == 3
    # a results-table row's stim and rec columns give back the design's label
    for d in grid:
        stim, rec = d.label.split("|")
        assert row_label({"stim": stim, "rec": rec, "run": "x"}) == d.label


def test_model_sites_and_shapes():
    model = small_model(Design(stim=[0], rec=[0, -1]))
    tr = pyro.poutine.trace(model).get_trace()
    sites = {
        k: v
        for k, v in tr.nodes.items()
        if v["type"] == "sample" and v["fn"].__class__.__name__ != "_Subsample"
    }
    assert list(sites) == ["g_na", "g_k", "v_obs"]
    assert sites["g_na"]["value"].shape == (3,)
    assert sites["v_obs"]["value"].shape == model.obs_shape == (4, 2, 12)
    # unstimulated compartments get no current, whatever the stimulus said
    assert torch.all(model.stimulus.values[:, 1:] == 0)
    assert torch.any(model.stimulus.values[:, 0] != 0)


def test_predictive_vectorised_shapes():
    model = small_model(Design(rec=[1]))
    prior = Predictive(model, num_samples=5, parallel=True)()
    assert prior["g_na"].shape == (5, 3)
    assert prior["v_obs"].shape == (5, 4, 1, 12)
    # the vectorised draw equals simulating each draw alone
    one = model.simulate({k: prior[k][2] for k in model.free})
    post = Predictive(model, posterior_samples={k: prior[k] for k in model.free}, parallel=True)()
    assert post["v_obs"].shape == (5, 4, 1, 12)
    with torch.no_grad():
        batch = model.simulate({k: prior[k] for k in model.free})
    assert torch.allclose(batch[2], one, atol=1e-10)


def test_inferred_sigma_site():
    model = small_model(sigma=dist.HalfNormal(2.0))
    tr = pyro.poutine.trace(model).get_trace()
    assert tr.nodes["sigma"]["value"].shape == ()
    prior = Predictive(model, num_samples=3, parallel=True)()
    assert prior["sigma"].shape == (3, 1) and prior["v_obs"].shape == (3, 4, 3, 12)


def test_log_likelihood_matches_normal():
    model = small_model(Design(rec=[0]), sigma=2.0)
    truth = draw_truth(model.cell, seed=3)
    v = synthetic_data(model, truth, noise_sigma=2.0, seed=1)
    cond = pyro.poutine.condition(model, data={k: torch.tensor(truth[k]) for k in model.free})
    tr = pyro.poutine.trace(cond).get_trace(v)
    sim = model.simulate({k: torch.tensor(truth[k]) for k in model.free})
    want = torch.distributions.Normal(sim, 2.0).log_prob(v).sum()
    assert torch.allclose(tr.nodes["v_obs"]["fn"].log_prob(v).sum(), want)
    resid = (v - sim) / 2.0
    assert 0.7 < float(resid.std()) < 1.3  # the noise has the requested sd


def test_draw_truth_is_the_papers_recipe():
    gt = paper_ground_truth()
    mine = draw_truth(paper_toy_cell(), ("g_na", "g_k"), seed=20230619)
    for k in gt:
        assert np.array_equal(mine[k], gt[k].numpy())


def test_priors_relative_to_base():
    model = small_model(priors={"g_na": ScaledUniformPrior(0.7, 1.3), "g_k": LogNormalPrior(0.2)})
    na, k = model.priors["g_na"], model.priors["g_k"]
    assert torch.allclose(na.low, torch.full((3,), 70.0, dtype=torch.float64))
    assert torch.allclose(k.loc.exp(), torch.full((3,), 45.0, dtype=torch.float64))
    m2 = small_model(priors=dist.Gamma(2.0, 0.02))
    assert m2.priors["g_na"].batch_shape == (3,)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(design=Design(rec=[7])), DesignError, "recorded"),
        (dict(design=Design(stim=["apical"])), DesignError, "no compartment named"),
        (dict(sigma=0.0), ParameterError, "sigma"),
        (dict(sigma=-1.0), ParameterError, "sigma"),
        (dict(free=("g_na", "g_nope")), ParameterError, "g_nope"),
        (dict(free=()), ParameterError, "free is empty"),
        (dict(priors={"g_x": LogNormalPrior()}), ParameterError, "not free"),
        (dict(priors="uniform"), ParameterError, "LogNormalPrior"),
        (dict(priors=dist.Uniform(0.0, 10.0)), ParameterError, "outside the support"),
    ],
)
def test_model_bad_input(kw, err, match):
    with pytest.raises(err, match=match):
        small_model(**kw)


def test_empty_design_is_refused():
    with pytest.raises(DesignError, match="at least one"):
        Design(stim=[])
    with pytest.raises(DesignError, match="stim\\|rec"):
        Design.from_label("all")


def test_bad_data():
    model = small_model(Design(rec=[0]))
    with pytest.raises(DataError, match=r"expects \(4, 1, 12\)"):
        model.check_data(torch.zeros(4, 3, 12))
    bad = torch.zeros(model.obs_shape)
    bad[1, 0, 3] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        model.check_data(bad)
    with pytest.raises(ParameterError, match="noise_sigma"):
        synthetic_data(model, draw_truth(model.cell), noise_sigma=-1.0)
    with pytest.raises(DataError, match=r"\[trace, 3, bins\]"):
        NeuronModel(model.cell, paper_currents(n_traces=2, n_comp=6), paper_time_grid())
