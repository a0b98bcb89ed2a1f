"""No library side effects: fits leave the global RNGs, Pyro's parameter store and torch's
default dtype as they found them, and still repeat exactly for a given seed; importing and
plotting choose no matplotlib backend and register nothing with pyplot."""

import random
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch

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
from bayesneuron.errors import FitError
from bayesneuron.inference import (
    expected_information_gain,
    laplace_map,
    prior_draws,
    run_nuts,
    sbc,
    start_points,
)

CELL = Cell(chain(2, ax=0.5, cm=0.45), paper_channels(), v0=-60.0)
TRUTH = {"g_na": np.array([95.0, 110.0]), "g_k": np.array([40.0, 50.0])}


@pytest.fixture(scope="module")
def problem():
    model = NeuronModel(
        CELL,
        paper_currents(n_traces=3, n_comp=2),
        paper_time_grid()[:16],
        priors=ScaledUniformPrior(0.7, 1.3),
        sigma=2.0,
        solver=CrankNicolson(dt=0.02),
    )
    return model, synthetic_data(model, TRUTH, noise_sigma=2.0, seed=1)


class GlobalState:
    """A snapshot of everything a library call must not change."""

    def __init__(self):
        self.torch = torch.random.get_rng_state()
        self.numpy = np.random.get_state()
        self.random = random.getstate()
        self.dtype = torch.get_default_dtype()
        store = pyro.get_param_store()
        self.params = {k: (v, v.detach().clone(), v.requires_grad) for k, v in store.items()}

    def assert_unchanged(self, rngs: bool = True):
        if rngs:
            assert torch.equal(torch.random.get_rng_state(), self.torch), "torch RNG moved"
            now = np.random.get_state()
            assert now[0] == self.numpy[0] and np.array_equal(now[1], self.numpy[1]), "numpy"
            assert now[2:] == self.numpy[2:], "numpy RNG moved"
            assert random.getstate() == self.random, "random's state moved"
        assert torch.get_default_dtype() == self.dtype, "default dtype changed"
        store = pyro.get_param_store()
        assert sorted(store.keys()) == sorted(self.params), "param store entries changed"
        for k, (tensor, value, grad) in self.params.items():
            now = store.get_param(k)
            assert now is tensor, f"{k}: another tensor"  # the very tensor the user holds
            assert torch.equal(now.detach(), value) and now.requires_grad == grad, k


@pytest.fixture
def users_state():
    """A user's session: seeded RNGs mid-stream and a param store with the user's own entries,
    one of them named as an autoguide's parameter."""
    pyro.clear_param_store()
    torch.manual_seed(123)
    np.random.seed(4)
    random.seed(5)
    torch.rand(3)
    pyro.param("my_weight", torch.tensor([1.0, 2.0]))
    pyro.param("AutoMultivariateNormal.loc", torch.tensor([7.0]))
    yield GlobalState()
    pyro.clear_param_store()


def disturb():
    torch.rand(11)
    np.random.rand(3)
    random.random()


def test_fit_map_changes_nothing_global(problem, users_state):
    model, v = problem
    fit = fit_map(model, v, n_starts=2, max_steps=3, horizons=(2,), seed=3, progress=False)
    users_state.assert_unchanged()
    disturb()
    again = fit_map(model, v, n_starts=2, max_steps=3, horizons=(2,), seed=3, progress=False)
    np.testing.assert_array_equal(fit.history["g_na"], again.history["g_na"])


def test_fit_svi_changes_nothing_global_and_repeats(problem, users_state):
    model, v = problem
    kw = dict(max_steps=6, min_steps=1, window=2, num_samples=20, psis_samples=30, seed=4)
    fit = fit_svi(model, v, TRUTH, progress=False, **kw)
    users_state.assert_unchanged()
    disturb()
    again = fit_svi(model, v, TRUTH, progress=False, **kw)
    np.testing.assert_array_equal(fit.elbo, again.elbo)
    for k in fit.samples:
        np.testing.assert_array_equal(fit.samples[k], again.samples[k])
    # the returned guide works afterwards on its own parameters (the user's entry named
    # "AutoMultivariateNormal.loc" is neither used nor changed); Predictive draws from the
    # global RNG, as it does for any guide
    draws = pyro.infer.Predictive(model, guide=fit.guide, num_samples=5)()
    assert draws["g_na"].shape == (5, 2)
    users_state.assert_unchanged(rngs=False)


@pytest.mark.parametrize("guide", ["normal", "lowrank", "iaf"])
def test_every_guide_trains_on_a_private_store(problem, users_state, guide):
    model, v = problem
    kw = dict(max_steps=3, num_samples=5, psis_samples=5, progress=False)
    fit_svi(model, v, TRUTH, guide=guide, **kw)
    users_state.assert_unchanged()


def test_run_nuts_changes_nothing_global_and_repeats(problem, users_state):
    model, v = problem
    lap = laplace_map(model, v, TRUTH, progress=False)
    users_state.assert_unchanged()
    kw = dict(num_samples=15, warmup_steps=10, num_chains=2, laplace=lap, seed=2, progress=False)
    run = run_nuts(model, v, TRUTH, **kw)
    users_state.assert_unchanged()
    disturb()
    again = run_nuts(model, v, TRUTH, **kw)
    for k in run.samples:
        np.testing.assert_array_equal(run.samples[k], again.samples[k])
    assert not np.array_equal(run.samples["g_na"][0], run.samples["g_na"][1])  # seed + chain


@pytest.mark.parametrize("progress", [False, True])
def test_nuts_chains_side_by_side_give_the_same_draws(problem, users_state, progress):
    """Chains in forked processes (``workers``) are the chains run one after another, bit for
    bit, with the caller's state untouched; the progress bar over them does not change that."""
    model, v = problem
    lap = laplace_map(model, v, TRUTH, progress=False)
    kw = dict(num_samples=12, warmup_steps=10, num_chains=3, laplace=lap, seed=4)
    one = run_nuts(model, v, TRUTH, **kw, progress=False)
    users_state.assert_unchanged()
    side = run_nuts(model, v, TRUTH, **kw, progress=progress, workers=2)
    users_state.assert_unchanged()
    for k in one.samples:
        np.testing.assert_array_equal(one.samples[k], side.samples[k])
    for k in one.sample_stats:
        np.testing.assert_array_equal(one.sample_stats[k], side.sample_stats[k])
    with pytest.raises(FitError, match="workers"):
        run_nuts(model, v, TRUTH, **kw, workers=0)


def test_eig_sbc_and_prior_draws_change_nothing_global(problem, users_state):
    model, v = problem
    a = expected_information_gain(model, N=4, M=4, seed=1)
    sbc(model, 2, n_draws=5, seed=0)
    d1 = prior_draws(model, 6, seed=9)
    users_state.assert_unchanged()
    disturb()
    assert a == expected_information_gain(model, N=4, M=4, seed=1)
    d2 = prior_draws(model, 6, seed=9)
    for k in model.free:
        assert torch.equal(d1[k], d2[k]) and d1[k].shape == (6, 2)
        assert bool(model.priors[k].support.check(d1[k]).all())
    starts = start_points(model, 7, seed=9)
    for k in model.free:  # start 0 at the cell's values, then the same prior draws
        assert torch.equal(starts[k][0], model.base[k]) and torch.equal(starts[k][1:], d1[k])


def test_import_and_plotting_choose_no_backend():
    code = (
        "import atexit, sys, torch\n"
        "n, state = atexit._ncallbacks(), torch.random.get_rng_state()\n"
        "import bayesneuron, bayesneuron.reports, bayesneuron.inference\n"
        "assert atexit._ncallbacks() == n, 'atexit hook registered on import'\n"
        "assert torch.equal(torch.random.get_rng_state(), state), 'RNG touched'\n"
        "from bayesneuron import paper_toy_cell, paper_currents, paper_time_grid, simulate\n"
        "cell = paper_toy_cell()\n"
        "tr = simulate(cell, None, paper_currents(n_traces=1), paper_time_grid()[:8])\n"
        "fig = bayesneuron.reports.plot_traces(tr)\n"
        "import io; fig.savefig(io.BytesIO(), format='png')\n"
        "import matplotlib\n"
        "assert matplotlib.rcParams._get_backend_or_none() is None, 'backend chosen'\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
