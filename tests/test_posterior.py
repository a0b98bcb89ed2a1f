"""Posteriors: SVI (every guide) and Laplace against NUTS on a 2-compartment cell; the
unconstrained parameter space; metrics; the identifiability study in --smoke mode."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesneuron import (
    Cell,
    CrankNicolson,
    NeuronModel,
    ScaledUniformPrior,
    chain,
    fit_map,
    paper_channels,
    paper_currents,
    paper_time_grid,
    synthetic_data,
)
from bayesneuron.cli import main
from bayesneuron.errors import DataError, FitError
from bayesneuron.inference.laplace import laplace_map
from bayesneuron.inference.metrics import identifiability
from bayesneuron.inference.nuts import run_nuts
from bayesneuron.inference.space import ParameterSpace
from bayesneuron.inference.svi import GUIDES, WhitenedModel, fit_svi, psis_khat
from bayesneuron.studies.config import DESIGN_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
CELL = Cell(chain(2, ax=0.5, cm=0.45), paper_channels(), v0=-60.0)
TRUTH = {"g_na": np.array([95.0, 110.0]), "g_k": np.array([40.0, 50.0])}


def two_compartments(sigma=2.0, n_traces=4, n_times=24):
    model = NeuronModel(
        CELL,
        paper_currents(n_traces=n_traces, n_comp=2),
        paper_time_grid()[:n_times],
        priors=ScaledUniformPrior(0.7, 1.3),
        sigma=sigma,
        solver=CrankNicolson(dt=0.01, backend="fused"),
    )
    return model, synthetic_data(model, TRUTH, noise_sigma=sigma, seed=1)


@pytest.fixture(scope="module")
def problem():
    model, v = two_compartments()
    mp = fit_map(model, v, truth=TRUTH)
    return model, v, mp.params, laplace_map(model, v, mp.params)


@pytest.fixture(scope="module")
def nuts(problem):
    model, v, params, lap = problem
    return run_nuts(model, v, params, num_samples=250, warmup_steps=120, laplace=lap, seed=0)


def _moments(samples):
    x = np.concatenate([np.asarray(samples[k]).reshape(-1, 2) for k in ("g_na", "g_k")], 1)
    return x.mean(0), x.std(0)


def test_nuts_runs_clean(nuts):
    assert nuts.samples["g_na"].shape == (2, 250, 2)
    assert nuts.num_divergences <= 3
    assert set(nuts.sample_stats) == {"diverging", "step_size", "lp"}
    assert np.isfinite(nuts.sample_stats["lp"]).all()


@pytest.mark.parametrize("guide", ["mvn", "laplace"])
def test_svi_and_laplace_match_nuts(problem, nuts, guide):
    """The issue's bar: means within 0.3 posterior sd of NUTS, sds within 25 %."""
    model, v, params, lap = problem
    if guide == "laplace":
        samples = lap.sample(4000, seed=1)
    else:
        samples = fit_svi(model, v, params, guide=guide, laplace=lap, num_samples=4000).samples
    m_ref, s_ref = _moments(nuts.samples)
    m, s = _moments(samples)
    assert np.all(np.abs(m - m_ref) <= 0.3 * s_ref), (m, m_ref, s_ref)
    assert np.all(np.abs(s / s_ref - 1) <= 0.25), s / s_ref


@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_every_guide_fits_with_diagnostics(problem, guide):
    model, v, params, lap = problem
    fit = fit_svi(model, v, params, guide=guide, laplace=lap, max_steps=120, num_samples=500)
    assert fit.samples["g_k"].shape == (500, 2)
    assert fit.elbo.shape == (fit.steps,) and fit.steps <= 120
    assert np.isfinite(fit.elbo_final) and np.isfinite(fit.iw_elbo)
    # the importance-weighted bound is tighter than the ELBO (up to Monte Carlo error)
    assert fit.iw_elbo >= fit.elbo_final - 2.0
    assert fit.khat < 1.0
    m, s = _moments(fit.samples)
    truth = np.concatenate([TRUTH["g_na"], TRUTH["g_k"]])
    assert np.all(np.abs(m - truth) < 4 * s)


def test_vectorised_particles_are_one_batch(problem, monkeypatch):
    """The particle dimension goes through the simulator as a batch: one call per step."""
    model, v, params, lap = problem
    calls = []
    orig = model.simulate

    def spy(p, recorded=True):
        calls.append(tuple(next(iter(p.values())).shape))
        return orig(p, recorded)

    monkeypatch.setattr(model, "simulate", spy)
    fit_svi(
        model, v, params, laplace=lap, num_particles=6, max_steps=3, num_samples=10, psis_samples=10
    )
    assert calls[0] == (2,)  # the guide's set-up call, unbatched
    assert calls[1:4] == [(6, 2)] * 3  # then one call of 6 particles per step


def test_whitened_model_is_the_posterior(problem):
    """log p(v, z) of the whitened model = log p(v, u) + log|L| (change of variables)."""
    model, v, params, lap = problem
    wm = WhitenedModel(model, v, lap)
    z = torch.randn(5, wm.size, dtype=torch.float64)
    u = lap.center + z @ lap.scale_tril.T
    g, _ = lap.space.constrain(u)
    r = (model.simulate(g) - wm.v_obs) / model.sigma
    loglik = (-0.5 * r.pow(2) - math.log(model.sigma * math.sqrt(2 * math.pi))).sum((-1, -2, -3))
    expect = loglik + lap.space.log_prior(u) + torch.linalg.slogdet(lap.scale_tril)[1]
    assert torch.allclose(wm.log_joint(z), expect, rtol=1e-10)


def test_laplace_exact_hessian_matches_gauss_newton_at_low_noise(problem):
    model, v, params, _ = problem
    ex = laplace_map(model, v, params)
    gn = laplace_map(model, v, params, hessian="gauss-newton")
    assert ex.hessian == "exact" and gn.hessian == "gauss-newton"
    assert torch.allclose(ex.center, gn.center, atol=1e-3)
    # residuals are noise-sized: the two curvatures agree to a few percent
    assert torch.allclose(ex.cov.diagonal(), gn.cov.diagonal(), rtol=0.1)


def test_parameter_space_round_trip_and_density():
    model, _ = two_compartments()
    sp = ParameterSpace(model)
    u = sp.unconstrain(TRUTH)
    g, logdet = sp.constrain(u)
    for k in TRUTH:
        assert np.allclose(g[k].numpy(), TRUTH[k])
    # base · U(0.7, 1.3) in logistic coordinates: p(u) = Π σ(u)(1 − σ(u)), whatever the bounds
    us = torch.randn(7, 4, dtype=torch.float64) * 3
    F = torch.nn.functional.logsigmoid
    assert torch.allclose(sp.log_prior(us), (F(us) + F(-us)).sum(-1), rtol=1e-12)
    assert torch.isfinite(sp.log_prior(torch.full((4,), 60.0, dtype=torch.float64)))  # on a bound


def test_parameter_space_jacobian_and_flat_parameters():
    """One map for every method: dg/du is the diagonal of the map's Jacobian; parameters
    without a prior (maximum-likelihood MAP only) are mapped by exp."""
    model, _ = two_compartments()
    sp = ParameterSpace(model)
    u = torch.randn(4, dtype=torch.float64)
    full = torch.autograd.functional.jacobian(lambda x: sp.join(sp.constrain(x)[0]), u)
    assert torch.allclose(sp.dg_du(u), full.diagonal(), rtol=1e-12)
    assert torch.allclose(full, torch.diag(full.diagonal()))
    flat = NeuronModel(CELL, model.stimulus, model.t_eval, priors=None, solver=model.solver)
    with pytest.raises(FitError, match="no prior"):
        ParameterSpace(flat)
    fs = ParameterSpace(flat, flat_ok=True)
    g, _ = fs.constrain(u)
    assert torch.allclose(g["g_na"], u[:2].exp()) and torch.allclose(fs.dg_du(u), u.exp())
    assert torch.equal(fs.log_density(g), torch.tensor(0.0, dtype=torch.float64))
    with pytest.raises(FitError, match="g > 0"):
        fs.unconstrain({"g_na": [-1.0, 1.0], "g_k": [1.0, 1.0]})


def test_posterior_needs_proper_priors_and_fixed_sigma():
    model, v = two_compartments()
    flat = NeuronModel(CELL, model.stimulus, model.t_eval, priors=None, solver=model.solver)
    with pytest.raises(FitError, match="no prior"):
        laplace_map(flat, v, TRUTH)
    with pytest.raises(FitError, match="guide 'flow' unknown"):
        fit_svi(model, v, TRUTH, guide="flow", max_steps=1)
    with pytest.raises(FitError, match="lr"):
        fit_svi(model, v, TRUTH, lr=-1.0)
    with pytest.raises(FitError, match="outside the support"):
        laplace_map(model, v, {"g_na": [10.0, 10.0], "g_k": TRUTH["g_k"]})


def test_identifiability_metrics():
    model, _ = two_compartments()
    rng = np.random.default_rng(0)
    prior_sd = {k: model.priors[k].stddev.numpy() for k in model.free}
    # a posterior with sd = 0.1 × prior sd centred on the truth: contraction 0.99, |z| small
    samples = {k: TRUTH[k] + 0.1 * prior_sd[k] * rng.standard_normal((20000, 2)) for k in TRUTH}
    met = identifiability(samples, model, TRUTH)
    assert np.allclose(met.contraction, 0.99, atol=2e-3)
    s = met.summary()
    assert s["max_abs_z"] < 0.1 and s["coverage_90"] == 1.0
    assert np.allclose(np.diag(met.correlation), 1.0)
    # shift the truth by 3 sd: z = −3 and it leaves the 90 % interval
    far = {k: TRUTH[k] + 3 * 0.1 * prior_sd[k] for k in TRUTH}
    met = identifiability(samples, model, far)
    assert np.allclose(met.z, -3, atol=0.05) and met.summary()["coverage_90"] == 0.0
    with pytest.raises(DataError, match="expected"):
        identifiability({"g_na": np.ones((5, 3)), "g_k": np.ones((5, 2))}, model)
    with pytest.raises(DataError, match="lack 'g_k'"):
        identifiability({"g_na": np.ones((5, 2))}, model)


def test_psis_khat_separates_good_from_heavy_tails():
    gen = torch.Generator().manual_seed(0)
    good = 0.1 * torch.randn(2000, generator=gen, dtype=torch.float64)
    # log w ~ Exp(1) ⇔ w ~ Pareto with tail index 1: k = 1
    heavy = -torch.log(torch.rand(2000, generator=gen, dtype=torch.float64))
    assert psis_khat(good) < 0.5
    assert psis_khat(heavy) > 0.7
    assert math.isnan(psis_khat(torch.zeros(3)))
    assert math.isnan(psis_khat(torch.zeros(100)))  # equal weights: no tail to fit


def _khat_by_pyro(log_w: torch.Tensor) -> float:
    """The hand-written k̂ that ArviZ replaced: Zhang & Stephens' generalized Pareto fit
    (Pyro's) to the largest min(S/5, 3√S) weights."""
    from pyro.ops.stats import fit_generalized_pareto

    S = log_w.numel()
    m = int(min(S / 5, 3 * math.sqrt(S)))
    tail = torch.sort(torch.exp(log_w - log_w.max()))[0][-(m + 1) :]
    return float(fit_generalized_pareto(tail[1:] - tail[0])[0])


@pytest.mark.parametrize("scale", [0.1, 0.8, 1.5, "exp"])
def test_psis_khat_agrees_with_the_hand_written_fit(scale):
    """ArviZ's k̂ adds a weak prior towards 0.5 to the same tail fit: within 0.03."""
    gen = torch.Generator().manual_seed(1)
    if scale == "exp":
        log_w = -torch.log(torch.rand(2000, generator=gen, dtype=torch.float64))
    else:
        log_w = scale * torch.randn(1000, generator=gen, dtype=torch.float64)
    assert abs(psis_khat(log_w) - _khat_by_pyro(log_w)) < 0.03


def test_identifiability_study_smoke(tmp_path):
    out = tmp_path / "res"
    folder = ROOT / "studies" / "paper_toy_identifiability"
    assert main(["study", "run", str(folder), "--out", str(out), "--smoke", "--quiet"]) == 0
    with (out / "designs.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[: len(DESIGN_COLUMNS)] == list(DESIGN_COLUMNS)
    assert {(r["stim"], r["rec"]) for r in rows} == {("all", "all"), ("[0]", "all")}
    for r in rows:
        assert float(r["min_contraction"]) <= float(r["mean_contraction"]) <= 1.0
        assert 0 <= int(r["map_converged"]) <= 1  # smoke: one start
    for name in ("ranking.csv", "parameters.csv", "report.html", "config.json"):
        assert (out / name).is_file(), name
    ncs = sorted((out / "idata").rglob("*.nc"))
    assert len(ncs) == 2
    html = (out / "report.html").read_text()
    assert "most informative" in html and "data:image/png;base64" in html
    # --resume: a design whose results are on disk is not recomputed, the other one is
    (out / "idata" / "svi_grid25" / "0__all.json").unlink()
    argv = ["study", "run", str(folder), "--out", str(out), "--smoke", "--quiet", "--resume"]
    assert main(argv) == 0
    with (out / "designs.csv").open() as fh:
        again = list(csv.DictReader(fh))
    assert again[1]["wall_s"] == rows[1]["wall_s"]  # all|all: loaded, not rerun
    for a, b in zip(rows, again):
        assert a["mean_contraction"] == b["mean_contraction"]


INFER = '[study]\nname = "x"\n[[infer]]\ndesigns = ["all|all"]\n'


@pytest.mark.parametrize(
    "extra, match",
    [
        ('method = "mcmc"\n', "method 'mcmc' unknown"),
        ('guide = "flow"\n', "guide 'flow' unknown"),
        ('map_init = "random"\n', "map_init must be"),
        ("num_particles = 0\n", "num_particles must be ≥ 1"),
        ("warmup_steps = -1\n", "warmup_steps must be ≥ 0"),
        ('num_samples = "many"\n', "wrong type"),
        ("particles = 4\n", "unknown key 'particles'"),
        ("map_horizons = [0]\n", "map_horizons must list integers"),
        ('map_windows = ["8"]\n', "map_windows must list integers"),
        ('smc_kernel = "nuts"\n', "smc_kernel must be 'walk' or 'hmc'"),
        ("adaptive_rounds = 0\n", "adaptive_rounds must be ≥ 1"),
        ("chain_workers = 0\n", "chain_workers must be ≥ 1"),
    ],
)
def test_infer_config_errors(tmp_path, capsys, extra, match):
    from bayesneuron.studies.config import StudyError, load_study

    d = tmp_path / "study"
    d.mkdir()
    (d / "config.toml").write_text(INFER + extra)
    with pytest.raises(StudyError, match=match):
        load_study(d)
    assert main(["study", "run", str(d), "--out", str(tmp_path / "out")]) != 0
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_infer_map_horizons_reach_the_map(tmp_path):
    """``map_horizons = []`` fits the plain objective; unset, the fit's default continuation."""
    from bayesneuron.studies.config import load_study
    from bayesneuron.studies.posteriors import _horizons

    d = tmp_path / "study"
    d.mkdir()
    (d / "config.toml").write_text(INFER + "map_horizons = []\n")
    inf = load_study(d).infers[0]
    assert inf.map_horizons == () and _horizons(inf, None) == ()
    (d / "config.toml").write_text(INFER + "map_horizons = [2, 8]\nmap_windows = [4]\n")
    assert _horizons(load_study(d).infers[0], None) == (2, 8)
    (d / "config.toml").write_text(INFER)
    assert _horizons(load_study(d).infers[0], None) is None
    (d / "config.toml").write_text(INFER + 'smc_kernel = "hmc"\n')
    assert load_study(d).infers[0].smc_kernel == "hmc"


def test_infer_adaptive_rounds_reach_the_checked_posterior(tmp_path, monkeypatch):
    import bayesneuron.studies.posteriors as posteriors
    from bayesneuron.studies.config import load_study

    d = tmp_path / "study"
    d.mkdir()
    (d / "config.toml").write_text(INFER)
    assert load_study(d).infers[0].adaptive_rounds == 4
    (d / "config.toml").write_text(INFER + "adaptive_rounds = 7\n")
    inf = load_study(d).infers[0]
    seen = {}

    def fake(*args, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(posteriors, "checked_posterior", fake)

    class Mp:
        def modes(self, **kw):
            return [{}]

    with pytest.raises(RuntimeError, match="stop here"):
        posteriors._posterior(inf, None, None, Mp(), 0, False)
    assert seen["adaptive"] == {"rounds": 7}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_svi_on_cuda_matches_cpu():
    """The whole SVI path (simulator, guide, particles) on CUDA, unchanged code."""
    res = {}
    for device in ("cpu", "cuda"):
        model = NeuronModel(
            CELL,
            paper_currents(n_traces=3, n_comp=2),
            paper_time_grid()[:16],
            priors=ScaledUniformPrior(0.7, 1.3),
            sigma=2.0,
            solver=CrankNicolson(dt=0.02),
            device=device,
        )
        v = synthetic_data(model, TRUTH, noise_sigma=2.0, seed=1)
        fit = fit_svi(model, v, TRUTH, max_steps=20, num_samples=200, seed=0)
        assert fit.laplace.center.device.type == device
        res[device] = fit
    # deterministic parts agree; the random draws differ (CUDA has its own generator)
    a, b = res["cpu"].laplace, res["cuda"].laplace
    assert torch.allclose(a.center, b.center.cpu(), atol=1e-8)
    assert torch.allclose(a.cov, b.cov.cpu(), rtol=1e-5)
    m_a, s_a = _moments(res["cpu"].samples)
    m_b, _ = _moments(res["cuda"].samples)
    assert np.all(np.abs(m_a - m_b) < 0.3 * s_a)


def test_profile_likelihood_is_quadratic_near_a_well_determined_mode(problem):
    from bayesneuron.inference.profile import profile_likelihood

    model, v, params, lap = problem
    sd = lap.sample(4000, seed=2)["g_na"][:, 0].std()
    c = params["g_na"][0]
    pr = profile_likelihood(model, v, "g_na", 0, c + sd * np.array([-2, -1, 0, 1, 2]), params)
    drop = pr.objective.max() - pr.objective
    assert np.argmax(pr.objective) == 2
    # Gaussian posterior, flat prior inside its bounds: the profile drops by z²/2 at z sd
    assert np.allclose(drop, [2.0, 0.5, 0.0, 0.5, 2.0], rtol=0.2, atol=0.05), drop
    lo, hi = pr.interval()
    assert lo < TRUTH["g_na"][0] < hi
    # the others adjust: g_na[0] fixed, the fitted g_na[1] moves along the grid
    assert np.ptp(pr.params["g_na"][:, 1]) > 0
    with pytest.raises(FitError, match="not a free parameter"):
        profile_likelihood(model, v, "g_l", 0, [1.0, 2.0], params)
    with pytest.raises(FitError, match="not a compartment"):
        profile_likelihood(model, v, "g_na", 5, [1.0, 2.0], params)


def test_expected_information_gain_ranks_recording_sites():
    """pyro.contrib.oed's nested Monte Carlo EIG: recording both compartments teaches more
    than recording the soma alone (weakly informative data, σ = 20 mV, so NMC is unbiased
    enough: the estimates stay well below log M)."""
    from bayesneuron import Design
    from bayesneuron.inference.oed import expected_information_gain

    def eig(label, seed=0):
        model = NeuronModel(
            CELL,
            paper_currents(n_traces=2, n_comp=2),
            paper_time_grid()[:24],
            Design.from_label(label),
            priors=ScaledUniformPrior(0.7, 1.3),
            sigma=20.0,
            solver=CrankNicolson(dt=0.01, backend="fused"),
        )
        return expected_information_gain(model, N=300, M=300, seed=seed)

    both, soma = eig("all|all"), eig("all|[0]")
    assert 0 < soma < both < math.log(300) - 1
    assert both - soma > 0.3
    assert eig("all|[0]") == soma  # seeded
