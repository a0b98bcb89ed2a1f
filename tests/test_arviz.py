"""The ArviZ boundary (reports.arviz) and the posterior figures (reports.posterior_plots).

Draws are made up with numpy around the model's values: no inference runs here.
"""

import json

import matplotlib.figure
import numpy as np
import pandas as pd
import pyro.distributions as dist
import pytest
import torch

from bayesneuron import Cell, DataError, Design, Morphology, NeuronModel
from bayesneuron import __version__ as bn_version
from bayesneuron.channels import paper_channels
from bayesneuron.reference.paper import paper_currents, paper_experiment, paper_time_grid
from bayesneuron.reports import posterior_plots as pp
from bayesneuron.reports.arviz import (
    az,
    load_inference_data,
    save_inference_data,
    stack_channels,
    summary,
    to_inference_data,
)

C, D = 2, 60  # chains, draws


@pytest.fixture(scope="module")
def experiment():
    """Paper toy model, stim [0,-1], rec [0,-1], 3 traces: (model, v_obs [3, 2, 48], truth)."""
    model, v_obs, truth = paper_experiment(
        Design(stim=[0, -1], rec=[0, -1]), n_traces=3, noise_sigma=1.0
    )
    return model, v_obs.numpy(), truth


def draws(model, truth, rng, n_chain=C, n_draw=D, rel=0.05):
    """Fake posterior ``name → [chain, draw, comp]`` around the truth."""
    return {
        k: truth[k] * (1 + rel * rng.standard_normal((n_chain, n_draw, model.n_comp)))
        for k in model.free
    }


def full_idata(model, v_obs, truth, n_chain=C):
    rng = np.random.default_rng(1)
    shape = (n_chain, D)
    return to_inference_data(
        model,
        draws(model, truth, rng, n_chain),
        prior=draws(model, truth, rng, 1, 80, rel=0.2),
        posterior_predictive={"v_obs": v_obs + rng.standard_normal((*shape, *v_obs.shape))},
        prior_predictive={"v_obs": v_obs + 5 * rng.standard_normal((1, 30, *v_obs.shape))},
        log_likelihood={"v_obs": -100 + 0.1 * rng.standard_normal((*shape, v_obs.shape[0]))},
        observed=v_obs,
        sample_stats={"diverging": np.zeros(shape, bool), "lp": rng.standard_normal(shape)},
        truth=truth,
        attrs={"inference": "nuts", "config": {"seed": 3, "warmup": 100}, "n_starts": 4},
    )


@pytest.fixture(scope="module")
def idata(experiment):
    return full_idata(*experiment)


# --------------------------------------------------------------------------- conversion
def test_groups_dims_and_coords(experiment, idata):
    model, v_obs, truth = experiment
    assert set(idata.groups()) == {
        "posterior",
        "prior",
        "posterior_predictive",
        "prior_predictive",
        "log_likelihood",
        "observed_data",
        "sample_stats",
        "constant_data",
    }
    assert idata.posterior["g_na"].dims == ("chain", "draw", "compartment")
    assert idata.posterior_predictive["v_obs"].dims == (
        "chain",
        "draw",
        "trace",
        "rec_compartment",
        "time",
    )
    assert idata.log_likelihood["v_obs"].dims == ("chain", "draw", "trace")
    assert idata.observed_data["v_obs"].dims == ("trace", "rec_compartment", "time")
    assert idata.prior.sizes["draw"] == 80
    np.testing.assert_array_equal(idata.posterior["compartment"], np.arange(6))
    np.testing.assert_array_equal(idata.observed_data["rec_compartment"], [0, 5])
    np.testing.assert_array_equal(idata.observed_data["time"], model.t_eval)
    np.testing.assert_array_equal(idata.observed_data["v_obs"], v_obs)
    const = idata.constant_data
    np.testing.assert_array_equal(const["stim_sites"], [0, 5])
    np.testing.assert_array_equal(const["rec_sites"], [0, 5])
    np.testing.assert_array_equal(const["g_k_true"], truth["g_k"])
    # The paper's prior base · U(0.7, 1.3): mean = base, sd = 0.6 · base / √12.
    np.testing.assert_allclose(const["g_na_prior_mean"], 100.0)
    np.testing.assert_allclose(const["g_na_prior_sd"], 60.0 / np.sqrt(12))


def test_netcdf_round_trip_keeps_everything(experiment, idata, tmp_path):
    path = save_inference_data(idata, tmp_path / "new" / "fit.nc")
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["fit.nc"]  # no temp file left
    back = load_inference_data(path)
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        a, b = idata[group], back[group]
        assert set(a.data_vars) == set(b.data_vars), group
        for k in a.data_vars:
            assert a[k].dims == b[k].dims, (group, k)
            np.testing.assert_array_equal(a[k].values, b[k].values)
        for c in a.coords:
            np.testing.assert_array_equal(a[c].values, b[c].values)
    assert back.sample_stats["diverging"].dtype == bool
    assert list(back.posterior["compartment_name"].values) == ["0", "1", "2", "3", "4", "5"]
    assert back.observed_data["time"].attrs["units"] == "ms"
    for attrs in (back.attrs, back.posterior.attrs, back.constant_data.attrs):
        assert attrs["design"] == "[0,-1]|[0,-1]"
        assert attrs["inference"] == "nuts"
        assert attrs["bayesneuron_version"] == bn_version
        assert json.loads(attrs["config"]) == {"seed": 3, "warmup": 100}
        assert json.loads(attrs["free"]) == ["g_na", "g_k"]
        assert attrs["n_starts"] == 4


def test_save_overwrites_a_loaded_file(idata, tmp_path):
    path = save_inference_data(idata, tmp_path / "fit.nc")
    first = load_inference_data(path)
    save_inference_data(first, path)  # loaded eagerly: the file is not held open
    assert set(load_inference_data(path).groups()) == set(idata.groups())


def test_torch_inputs_and_defaults(experiment):
    model, v_obs, truth = experiment
    post = {k: torch.as_tensor(v) for k, v in draws(model, truth, np.random.default_rng(0)).items()}
    out = to_inference_data(model, post, observed=torch.as_tensor(v_obs))
    assert set(out.groups()) == {"posterior", "observed_data", "constant_data"}
    assert out.posterior["g_na"].dtype == np.float64
    assert out.attrs["inference"] == "unknown"
    assert "g_na_true" not in out.constant_data


def test_named_compartments_and_inferred_sigma():
    morph = Morphology.from_parents([-1, 0, 1], names=["soma", "dend", "tip"])
    model = NeuronModel(
        Cell(morph, paper_channels(), v0=-60.0),
        paper_currents(n_traces=2, n_comp=3),
        paper_time_grid(),
        Design(rec=["tip"]),
        sigma=dist.LogNormal(0.0, 0.5),
    )
    rng = np.random.default_rng(0)
    post = {k: rng.lognormal(np.log(50), 0.1, (1, 40, 3)) for k in model.free}
    post["sigma"] = rng.lognormal(0, 0.1, (1, 40))
    out = to_inference_data(model, post, truth={"sigma": 1.0})
    with pytest.raises(
        DataError, match=r"posterior 'sigma' has shape \(1, 40, 1\); expected \[chain"
    ):
        to_inference_data(model, dict(post, sigma=post["sigma"][..., None]))
    assert list(out.posterior["compartment_name"].values) == ["soma", "dend", "tip"]
    assert out.posterior["sigma"].dims == ("chain", "draw")
    np.testing.assert_allclose(out.constant_data["sigma_prior_mean"], np.exp(0.125))
    assert float(out.constant_data["sigma_true"]) == 1.0
    assert "sigma_fixed_mV" not in out.attrs
    # LogNormalPrior(sd=0.5) around the cell's values: mean = base · e^(sd²/2).
    base = float(model.base["g_na"][0])
    np.testing.assert_allclose(out.constant_data["g_na_prior_mean"], base * np.exp(0.125))
    table = summary(out)
    assert list(table.index) == [f"{k}[{c}]" for k in model.free for c in range(3)] + ["sigma"]
    assert table.loc["sigma", "truth"] == 1.0
    assert np.isnan(table.loc["g_na[0]", "truth"])
    vo = {"v_obs": np.zeros((1, 40, *model.obs_shape))}
    pp_idata = to_inference_data(model, post, posterior_predictive=vo)
    assert list(pp_idata.posterior_predictive["rec_compartment_name"].values) == ["tip"]


def test_stack_channels(idata):
    g = stack_channels(idata)
    assert g.dims == ("chain", "draw", "channel", "compartment")
    assert list(g["channel"].values) == ["g_na", "g_k"]
    np.testing.assert_array_equal(g.sel(channel="g_k"), idata.posterior["g_k"])
    assert stack_channels(idata, "prior").sizes["draw"] == 80
    with pytest.raises(DataError, match="no variables"):
        stack_channels(idata, var_names=["g_leak"])


def test_loo_runs_over_traces(idata):
    loo = az.loo(idata)
    assert loo.n_data_points == 3


# --------------------------------------------------------------------------- summary
def test_summary_columns_truth_and_contraction(experiment, idata):
    model, _, truth = experiment
    table = summary(idata)
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == [f"{k}[{c}]" for k in model.free for c in range(6)]
    for col in ("mean", "sd", "ess_bulk", "r_hat", "truth", "contraction"):
        assert col in table.columns
    np.testing.assert_allclose(
        table["truth"].to_numpy(), np.concatenate([truth["g_na"], truth["g_k"]])
    )
    prior_sd = np.concatenate([idata.constant_data[f"{k}_prior_sd"].values for k in model.free])
    expected = 1 - table["sd"].to_numpy() ** 2 / prior_sd**2
    np.testing.assert_allclose(table["contraction"].to_numpy(), expected)
    assert (table["contraction"] > 0.5).all()  # 5 % posterior sd vs ≈ 17 % prior sd


def test_summary_one_chain_has_no_rhat(experiment):
    model, v_obs, truth = experiment
    table = summary(full_idata(model, v_obs, truth, n_chain=1), var_names=["g_k"])
    assert "r_hat" not in table.columns
    assert list(table.index) == [f"g_k[{c}]" for c in range(6)]
    assert table["contraction"].notna().all()


# --------------------------------------------------------------------------- bad input
def _bad_cases(model, v_obs, truth):
    rng = np.random.default_rng(0)
    ok = draws(model, truth, rng)
    obs3 = (C, D, *v_obs.shape)
    return {
        "last dim": (
            dict(ok, g_na=ok["g_na"][..., :5]),
            {},
            ["'g_na'", "[chain, draw, comp]", "6"],
        ),
        "missing free": ({"g_na": ok["g_na"]}, {}, ["g_k", "[chain, draw, 6]"]),
        "unknown site": (dict(ok, g_leak=ok["g_na"]), {}, ["g_leak", "not sites"]),
        "draw mismatch": (dict(ok, g_k=ok["g_k"][:, :10]), {}, ["'g_k'", "(2, 60, 6)"]),
        "fixed sigma": (dict(ok, sigma=np.ones((C, D))), {}, ["'sigma'", "fixed at 1.0 mV"]),
        "ppc shape": (
            ok,
            {"posterior_predictive": {"v_obs": np.zeros(obs3)[..., :10]}},
            ["posterior_predictive 'v_obs'", "(*, *, 3, 2, 48)"],
        ),
        "ppc name": (ok, {"posterior_predictive": {"v": np.zeros(obs3)}}, ["'v_obs'"]),
        "loglik shape": (
            ok,
            {"log_likelihood": {"v_obs": np.zeros((C, D, 3, 2))}},
            ["log_likelihood 'v_obs'", "[chain, draw, trace]", "(2, 60, 3)"],
        ),
        "observed shape": (ok, {"observed": v_obs[:, :1]}, ["observed v_obs", "(3, 2, 48)"]),
        "stats shape": (
            ok,
            {"sample_stats": {"lp": np.zeros((C, D + 1))}},
            ["'lp'", "[chain, draw]", "(2, 60)"],
        ),
        "truth shape": (ok, {"truth": {"g_na": truth["g_na"][:3]}}, ["truth 'g_na'", "(6)"]),
        "truth name": (ok, {"truth": {"g_x": truth["g_na"]}}, ["g_x"]),
        "attrs": (ok, {"attrs": {"fn": print}}, ["attrs['fn']", "JSON"]),
    }


@pytest.mark.parametrize(
    "case",
    ["last dim", "missing free", "unknown site", "draw mismatch", "fixed sigma", "ppc shape",
     "ppc name", "loglik shape", "observed shape", "stats shape", "truth shape", "truth name",
     "attrs"],
)  # fmt: skip
def test_bad_input_names_variable_and_shape(experiment, case):
    model, v_obs, truth = experiment
    posterior, kwargs, words = _bad_cases(model, v_obs, truth)[case]
    with pytest.raises(DataError) as err:
        to_inference_data(model, posterior, **kwargs)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_summary_unknown_variable(idata):
    with pytest.raises(DataError, match="g_leak"):
        summary(idata, var_names=["g_leak"])


# --------------------------------------------------------------------------- figures
@pytest.fixture
def close_figures():
    """Nothing to close: the figures are bare Figures, pyplot never sees them."""
    yield


def _is_figure(fig):
    assert isinstance(fig, matplotlib.figure.Figure)
    assert fig.axes


def test_plot_posterior_vs_prior(idata, experiment, tmp_path, close_figures):
    model, v_obs, truth = experiment
    _is_figure(pp.plot_posterior_vs_prior(idata, path=tmp_path / "a" / "post.png"))
    assert (tmp_path / "a" / "post.png").stat().st_size > 1000
    # Without prior draws the prior is the band of mean ± sd from constant_data.
    bare = to_inference_data(model, draws(model, truth, np.random.default_rng(2)))
    _is_figure(pp.plot_posterior_vs_prior(bare, var_names=["g_k"], compartments=[0, 5]))


def test_plot_pairs(idata, close_figures):
    fig = pp.plot_pairs(idata, var_names=["g_na", "g_k"], compartments=[0, 1, 5])
    _is_figure(fig)
    assert len(fig.axes) == 36
    wide = az.InferenceData(posterior=idata.posterior.assign(g_x=idata.posterior["g_na"]))
    with pytest.raises(DataError, match="at most 12"):
        pp.plot_pairs(wide)  # 3 variables × 6 compartments


def test_plot_forest_designs(experiment, idata, close_figures):
    model, v_obs, truth = experiment
    other = to_inference_data(
        model, draws(model, truth, np.random.default_rng(3), rel=0.15), truth=truth
    )
    fig = pp.plot_forest_designs({"[0,-1]|[0,-1]": idata, "all|all": other}, "g_na")
    _is_figure(fig)
    with pytest.raises(DataError, match="g_leak"):
        pp.plot_forest_designs({"a": idata}, "g_leak")


def test_plot_ppc_traces(idata, close_figures):
    fig = pp.plot_ppc_traces(idata, n_traces=2)
    _is_figure(fig)
    assert len(fig.axes) == 2 * 2  # 2 traces × 2 recorded compartments
    with pytest.raises(DataError, match="posterior_predictive"):
        pp.plot_ppc_traces(az.InferenceData(posterior=idata.posterior))


def test_plot_contraction_heatmap(close_figures):
    sites = ["[0]", "[0,1]", "[0,-1]", "all"]
    rows = [
        {"stim": s, "rec": r, "mean_contraction": 0.1 * i + 0.02 * j}
        for i, s in enumerate(sites)
        for j, r in enumerate(sites)
        if s == "all" or r == "all"
    ]
    fig = pp.plot_contraction_heatmap(pd.DataFrame(rows[::-1]))
    _is_figure(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == sites  # ordered as the paper
    assert len(ax.texts) == len(rows)  # annotated cells only where there is a value
    _is_figure(pp.plot_contraction_heatmap(rows, title="records"))
    with pytest.raises(DataError, match="'gte'"):
        pp.plot_contraction_heatmap(rows, value="gte")
    with pytest.raises(DataError, match="aggregate"):
        pp.plot_contraction_heatmap(rows + rows[:1])
