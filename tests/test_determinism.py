"""Determinism: on CPU the same seed gives bit-identical numbers, whatever the global RNGs hold.

Each check runs the same call twice with the global torch/numpy/random state disturbed in
between, and compares exactly (``assert_array_equal``: NaN equals NaN, nothing else is
forgiven).
"""

import csv
import random
from pathlib import Path

import numpy as np
import torch

from bayesneuron import (
    Cell,
    CrankNicolson,
    NeuronModel,
    ScaledUniformPrior,
    chain,
    draw_truth,
    fit_map,
    fit_svi,
    paper_channels,
    paper_currents,
    paper_time_grid,
    synthetic_data,
)
from bayesneuron.cli import main

ROOT = Path(__file__).resolve().parents[1]
CELL = Cell(chain(3, ax=0.5, cm=0.45), paper_channels(), v0=-60.0)
TRUTH = draw_truth(CELL, seed=5)


def small(n_traces=4, n_times=12):
    """A 3-compartment cell as in tests/test_fit.py, fewer traces and times."""
    stim = paper_currents(n_traces=n_traces, n_comp=3)
    return NeuronModel(
        CELL,
        stim,
        paper_time_grid()[:n_times],
        priors=ScaledUniformPrior(0.7, 1.3),
        solver=CrankNicolson(dt=0.02),
    )


def disturb():
    """Move every global RNG, so a result that depends on them would change."""
    torch.rand(17)
    np.random.rand(5)
    random.random()


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k, strict=True)


def test_draw_truth_and_noisy_data_repeat_exactly():
    state = torch.get_rng_state()
    t1 = draw_truth(CELL, seed=11)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
    disturb()
    assert_same(t1, draw_truth(CELL, seed=11))
    assert not np.array_equal(t1["g_na"], draw_truth(CELL, seed=12)["g_na"])

    model = small()
    v1 = synthetic_data(model, TRUTH, noise_sigma=1.0, seed=3)
    disturb()
    v2 = synthetic_data(model, TRUTH, noise_sigma=1.0, seed=3)
    assert torch.equal(v1, v2)
    assert not torch.equal(v1, synthetic_data(model, TRUTH, noise_sigma=1.0, seed=4))


def test_fit_map_repeats_exactly():
    model = small()
    v = synthetic_data(model, TRUTH, noise_sigma=0.5, seed=1)
    kw = dict(n_starts=2, max_steps=3, horizons=(2,), seed=7, truth=TRUTH)
    a = fit_map(model, v, **kw)
    disturb()
    b = fit_map(model, v, **kw)
    assert a.steps == b.steps and a.best == b.best
    assert_same(a.history, b.history)
    assert_same(a.starts, b.starts)
    np.testing.assert_array_equal(a.objective, b.objective, strict=True)
    # the prior draws of start 1 come from the seed: another seed starts elsewhere
    c = fit_map(model, v, **{**kw, "seed": 8, "max_steps": 1})
    assert not np.array_equal(c.history["g_na"][0, 1], a.history["g_na"][0, 1])


def test_fit_svi_repeats_exactly():
    model = small(n_traces=2, n_times=8)
    v = synthetic_data(model, TRUTH, noise_sigma=1.0, seed=2)
    kw = dict(
        guide="mvn",
        num_particles=2,
        max_steps=4,
        min_steps=1,
        window=2,
        num_samples=16,
        psis_samples=32,
        seed=5,
    )
    a = fit_svi(model, v, TRUTH, **kw)
    disturb()
    b = fit_svi(model, v, TRUTH, **kw)
    assert a.steps == b.steps and a.skipped == b.skipped
    np.testing.assert_array_equal(a.elbo, b.elbo, strict=True)
    assert_same(a.samples, b.samples)
    np.testing.assert_array_equal(
        [a.elbo_final, a.iw_elbo, a.khat], [b.elbo_final, b.iw_elbo, b.khat]
    )
    np.testing.assert_array_equal(a.laplace.cov.numpy(), b.laplace.cov.numpy(), strict=True)


def _rows(path: Path, drop=("wall_s",)):
    with path.open() as fh:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(fh)]


def test_quickstart_smoke_twice_gives_the_same_tables(tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        argv = ["study", "run", str(ROOT / "studies" / "quickstart"), "--out", str(out)]
        assert main([*argv, "--smoke", "--quiet"]) == 0
        disturb()
    a, b = outs
    rows = _rows(a / "table.csv")
    assert rows and rows == _rows(b / "table.csv")  # every number, as written, except wall_s
    assert _rows(a / "laplace.csv") == _rows(b / "laplace.csv")
    ha, hb = np.load(a / "histories.npz"), np.load(b / "histories.npz")
    assert sorted(ha.files) == sorted(hb.files)
    for k in ha.files:
        np.testing.assert_array_equal(ha[k], hb[k], err_msg=k, strict=True)
