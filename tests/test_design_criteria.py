"""Design criteria in expectation: exact on a linear-Gaussian toy (where nested Monte Carlo
saturates), the per-compartment Fisher information against central differences, and the
``[expected]`` study step's ranking table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.contrib.oed.eig import nmc_eig

from bayesneuron import Design
from bayesneuron.inference.criteria import (
    bayesian_d_optimality,
    compartment_fisher,
    design_criteria,
    linear_gaussian_eig,
    posterior_contraction,
    prior_entropy,
)
from bayesneuron.inference.laplace import fisher_information
from bayesneuron.inference.oed import expected_information_gain
from bayesneuron.inference.space import ParameterSpace, prior_draws
from bayesneuron.reference.paper import paper_experiment
from bayesneuron.simulation.solvers import CrankNicolson
from bayesneuron.studies.config import StudyError, study_from_config
from bayesneuron.studies.expected import (
    RANKING_COLUMNS,
    expected_sections,
    rank_summary,
    run_expected,
)

F64 = torch.float64


class LinearGaussian:
    """``y = A θ + ε`` (ε ~ N(0, σ²)), ``θ ~ N(0, diag(sd²))``, as the duck-typed model that
    :class:`ParameterSpace`, :func:`prior_draws` and the NMC estimator read."""

    def __init__(self, a: torch.Tensor, sigma: float, prior_sd: torch.Tensor):
        self.a, self.sigma = a, sigma
        self.free, self.n_comp = ("theta",), a.shape[1]
        self.priors = {"theta": dist.Normal(torch.zeros(a.shape[1], dtype=F64), prior_sd)}
        self.base = {"theta": torch.ones(a.shape[1], dtype=F64)}
        self.dtype, self.device = F64, torch.device("cpu")

    def simulate(self, params):
        return (params["theta"] @ self.a.T)[..., None, None, :]  # [..., trace, rec, time]


def _toy(scale: float):
    gen = torch.Generator().manual_seed(0)
    a = scale * torch.randn(8, 3, generator=gen, dtype=F64)
    return LinearGaussian(a, 1.0, torch.tensor([1.0, 0.5, 2.0], dtype=F64))


def test_laplace_eig_is_exact_on_linear_gaussian_where_nmc_saturates():
    model = _toy(3.0)
    sd2 = model.priors["theta"].variance
    exact = linear_gaussian_eig(model.a, model.sigma, sd2)
    direct = (
        0.5
        * torch.linalg.slogdet(torch.eye(3, dtype=F64) + torch.diag(sd2) @ model.a.T @ model.a)[1]
    )
    assert exact == pytest.approx(float(direct), rel=1e-12)
    M = 50
    assert exact > math.log(M) + 2  # an informative design

    space = ParameterSpace(model)
    theta = prior_draws(model, 200, seed=1)
    fisher = (model.a.T @ model.a / model.sigma**2).expand(200, 3, 3)
    crit = design_criteria(fisher, space, theta, prior_entropy(model, n=20000))
    assert float(crit["bayes_d_opt"].mean()) == pytest.approx(exact, abs=1e-10)
    # the Laplace EIG: exact up to the Monte Carlo prior entropy (sd ≈ 0.01 nats here)
    assert float(crit["eig_laplace"].mean()) == pytest.approx(exact, abs=0.05)

    # nested Monte Carlo: clipped at log M (≈ log M for every informative design) ...
    nmc = expected_information_gain(model, N=200, M=M, seed=0)
    assert math.log(M) - 0.3 < nmc <= math.log(M) + 1e-12

    # ... and the raw estimate (fresh inner draws) is biased upwards, without a log M ceiling
    def oed_model(design):
        prior = model.priors["theta"].expand(design.shape[:-1] + (3,)).to_event(1)
        theta = pyro.sample("theta", prior)
        y = dist.Normal(theta @ model.a.T, model.sigma).to_event(1)
        return pyro.sample("y", y)

    pyro.set_rng_seed(0)
    raw = float(nmc_eig(oed_model, torch.zeros(1, dtype=F64), ["y"], ["theta"], N=200, M=M))
    assert raw > exact + 1


def test_criteria_in_closed_form_for_a_diagonal_fisher():
    f = torch.tensor([0.0, 1.0, 100.0], dtype=F64)
    v = torch.tensor([2.0, 0.5, 1.0], dtype=F64)
    fisher = torch.diag(f)
    assert float(bayesian_d_optimality(fisher, v)) == pytest.approx(
        0.5 * float(torch.log1p(f * v).sum()), rel=1e-12
    )
    contraction = 1 - 1 / (1 + f * v)  # 1 − Var_post / Var_prior per coordinate
    assert float(posterior_contraction(fisher, v)) == pytest.approx(float(contraction.mean()))
    # a design that teaches nothing: both zero
    assert float(bayesian_d_optimality(torch.zeros(3, 3, dtype=F64), v)) == pytest.approx(0)
    # batched over leading dims
    batch = torch.stack([fisher, 2 * fisher])
    assert bayesian_d_optimality(batch, v).shape == (2,)


@pytest.mark.parametrize("backend", ["fused", "torch"])
def test_compartment_fisher_sums_to_the_fisher_of_a_recording_set(backend):
    """Recording sets are row blocks of the Jacobian: the per-compartment Fisher information
    (exact sensitivities on the fused kernel; central differences on torch) summed over a set
    is the set's Fisher information by central differences."""
    solver = CrankNicolson(dt=0.01, backend=backend)
    kw = dict(n_traces=3, solver=solver)
    model, _, _ = paper_experiment(Design([0, -1], None), **kw)
    assert model.exact_sensitivities == (backend == "fused")
    params = prior_draws(model, 2, seed=3)
    fc = compartment_fisher(model, params)
    assert fc.shape == (2, 6, 12, 12)
    sub, _, _ = paper_experiment(Design([0, -1], [0, 2]), **kw)
    point = {k: v[1] for k, v in params.items()}
    ref = fisher_information(sub, point, method="central", step=1e-5)
    got = fc[1, [0, 2]].sum(0)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def test_rank_summary_by_hand():
    designs = [Design.from_label(s) for s in ("all|all", "[0]|all", "all|[0]")]
    v = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [2.0, 3.0, 1.0], [5.0, 5.0, 0.0]])
    rows = rank_summary(designs, {"bayes_d_opt": v})
    assert [r["p_best"] for r in rows] == [0.5, 0.25, 0.25]  # the tie goes to the first
    assert [r["rank_mean"] for r in rows] == [(1 + 3 + 2 + 1) / 4, (2 + 2 + 1 + 2) / 4, 2.5]
    assert rows[0]["mean"] == pytest.approx(2.75) and rows[0]["sd"] == pytest.approx(
        np.std(v[:, 0], ddof=1)
    )
    assert (rows[1]["stim"], rows[1]["rec"]) == ("[0]", "all")


STUDY = {
    "study": {"name": "expected"},
    "experiment": {"preset": "paper_toy", "n_traces": 20},
    "model": {"dt": 0.01},
    "laplace": {"designs": ["all|all"]},
    "run": [{"protocol": "bayesneuron", "designs": ["all|all"]}],
    "expected": {"n_stimulus_draws": 10, "n_theta": 10, "designs": "grid25"},
    "smoke": {"n_traces": 3, "n_times": 10, "expected_draws": 3, "expected_theta": 2},
}


def test_expected_ranking_csv(tmp_path):
    study = study_from_config(STUDY, tmp_path, smoke=True)
    cfg = study.expected
    assert (cfg.n_stimulus_draws, cfg.n_theta, len(cfg.designs)) == (3, 2, 25)
    rows = run_expected(study, tmp_path, progress=False)
    with (tmp_path / "ranking_expected.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == list(RANKING_COLUMNS)
    assert len(table) == 25 * 3
    n_draws = 3 * 2
    saved = np.load(tmp_path / "expected_draws.npz")
    assert list(saved["designs"]) == [d.label for d in cfg.designs]
    for crit in cfg.criteria:
        sub = [r for r in table if r["criterion"] == crit]
        assert len(sub) == 25
        p = np.array([float(r["p_best"]) for r in sub])
        assert p.sum() == pytest.approx(1.0)
        assert np.allclose(p * n_draws, np.round(p * n_draws))  # fractions of the draws
        ranks = np.array([float(r["rank_mean"]) for r in sub])
        assert ranks.min() >= 1 and ranks.max() <= 25
        assert ranks.sum() == pytest.approx(25 * 26 / 2)  # each draw ranks 1 … 25 once
        # a design with p_best = 1 has mean rank 1; mean rank 1 only with p_best = 1
        assert np.array_equal(ranks == 1.0, p == 1.0)
        v = saved[crit]
        assert v.shape == (n_draws, 25) and np.isfinite(v).all()
        means = np.array([float(r["mean"]) for r in sub])
        assert np.allclose(means, v.mean(0))
        best = np.bincount(v.argmax(1), minlength=25) / n_draws
        assert np.allclose(best, p)
    assert rows[0]["criterion"] == cfg.criteria[0]
    # [0]|[0] (soma only) teaches less than all|all in expectation
    dopt = {
        f"{r['stim']}|{r['rec']}": float(r["mean"])
        for r in table
        if r["criterion"] == "bayes_d_opt"
    }
    assert dopt["all|all"] > dopt["[0]|[0]"] > 0
    assert (tmp_path / "ranking_expected.png").read_bytes()[:4] == b"\x89PNG"
    secs = expected_sections(tmp_path)
    assert [type(s).__name__ for s in secs] == ["Text", "Table", "Figure"]
    assert len(secs[1].data) == 25
    assert expected_sections(tmp_path / "nowhere") == []


@pytest.mark.parametrize(
    "table, match",
    [
        ({"criteria": ["d_opt"]}, "criteria"),
        ({"n_theta": 0}, "n_theta = 0 must be ≥ 1"),
        ({"designs": ["all|all"]}, "≥ 2 distinct designs"),
        ({"designs": ["all|all", "[7]|all"]}, "7"),
        ({"draws": 3}, "unknown key 'draws'"),
        ({"n_theta": "ten"}, "wrong type"),
    ],
)
def test_expected_config_errors(tmp_path, table, match):
    with pytest.raises(StudyError, match=match):
        study_from_config(STUDY | {"expected": table}, tmp_path)


def test_identifiability_study_declares_the_expected_ranking():
    from bayesneuron.studies.config import load_study

    folder = Path(__file__).resolve().parents[1] / "studies" / "paper_toy_identifiability"
    study = load_study(folder)
    assert study.expected.n_stimulus_draws >= 10 and study.expected.n_theta >= 10
    assert len(study.expected.designs) == 25


def test_design_ranking_benchmark_quick(tmp_path):
    """``benchmarks/design_ranking.py --quick`` writes its JSON: 25 designs, Spearman
    correlations in [−1, 1], positive wall times."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ranking.json"
    script = root / "benchmarks" / "design_ranking.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 25
    assert sorted(r["rank_truth"] for r in data["rows"]) == list(range(1, 26))
    assert sum(r["p_best"] for r in data["rows"]) == pytest.approx(1.0)
    rho = data["spearman"]["bayes_d_opt_vs_logdet_fisher"]
    assert -1 <= rho <= 1 and all(v > 0 for v in data["wall_s"].values())
    assert "Spearman bayes_d_opt_vs_logdet_fisher" in proc.stdout
