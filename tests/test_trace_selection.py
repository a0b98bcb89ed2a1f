"""Choosing sweeps from a pool (``select_traces``): greedy then exchange on per-trace Fisher
information, against brute force on a small pool, for every criterion and both robustness
modes; the pool's information adds up to that of the chosen stimulus."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json

import pytest
import torch
from _scripts import load_script

from bayesneuron import Design
from bayesneuron.errors import FitError
from bayesneuron.optimal_design import (
    criterion_values,
    exact_fisher,
    problem_from_model,
    select_traces,
    set_value,
)
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.reference.paper import paper_experiment
from bayesneuron.simulation.solvers import CrankNicolson

SEED = 11  # a pool where greedy misses the best set for two of the six cases (test below)


@pytest.fixture(scope="module")
def model():
    return paper_experiment(Design(), n_traces=6, solver=CrankNicolson(dt=0.05))[0]


def _pool(problem, n_pool: int, rank: int, seed: int) -> torch.Tensor:
    """Random per-trace Fisher information ``[n, N, 12, 12]`` of rank ``rank`` each, of order
    one in the prior's whitened units, so the criteria are neither saturated nor flat."""
    gen = torch.Generator().manual_seed(seed)
    n_theta = next(iter(problem.theta.values())).shape[0]
    jac = torch.randn(n_theta, n_pool, rank, 12, generator=gen, dtype=torch.float64)
    jac = jac * torch.rand(n_theta, n_pool, 1, 1, generator=gen, dtype=torch.float64)
    jac = jac / problem.prior_var.sqrt()
    return torch.einsum("ntrp,ntrq->ntpq", jac, jac)


def _swap_improves(problem, f, chosen) -> bool:
    here = set_value(problem, f, chosen)
    for pos, t in itertools.product(range(len(chosen)), range(f.shape[1])):
        if t in chosen:
            continue
        trial = chosen[:pos] + [t] + chosen[pos + 1 :]
        if set_value(problem, f, trial) > here + 1e-9 * max(1.0, abs(here)):
            return True
    return False


@pytest.mark.parametrize("criterion", ["bayes_d_opt", "contraction", "eig_laplace"])
@pytest.mark.parametrize("robust", ["mean", "worst"])
def test_exchange_finds_the_best_set_of_a_small_pool(model, criterion, robust):
    problem = problem_from_model(model, 3, seed=1, criterion=criterion, robust=robust)
    f = _pool(problem, 10, rank=3, seed=SEED)
    greedy = select_traces(problem, f, 3, exchange=False)
    chosen = select_traces(problem, f, 3)
    assert len(set(chosen)) == 3 and len(set(greedy)) == 3
    singles = [set_value(problem, f, [t]) for t in range(10)]
    assert greedy[0] == max(range(10), key=singles.__getitem__)
    assert set_value(problem, f, chosen) >= set_value(problem, f, greedy) - 1e-12
    assert not _swap_improves(problem, f, chosen)
    brute = max(set_value(problem, f, list(c)) for c in itertools.combinations(range(10), 3))
    assert set_value(problem, f, chosen) == pytest.approx(brute, rel=1e-9)  # summation order


@pytest.mark.parametrize("criterion", ["bayes_d_opt", "contraction"])
def test_exchange_mends_a_set_greedy_gets_wrong(model, criterion):
    problem = problem_from_model(model, 3, seed=1, criterion=criterion, robust="worst")
    f = _pool(problem, 10, rank=3, seed=SEED)
    greedy = set_value(problem, f, select_traces(problem, f, 3, exchange=False))
    brute = max(set_value(problem, f, list(c)) for c in itertools.combinations(range(10), 3))
    assert greedy < brute - 1e-3
    assert set_value(problem, f, select_traces(problem, f, 3)) == pytest.approx(brute, rel=1e-9)


def test_chunking_and_a_full_pool_change_nothing(model):
    problem = problem_from_model(model, 2, seed=1, criterion="contraction")
    f = _pool(problem, 7, rank=2, seed=9)
    assert select_traces(problem, f, 4, chunk=3) == select_traces(problem, f, 4, chunk=256)
    assert sorted(select_traces(problem, f, 7)) == list(range(7))


def test_the_pools_information_adds_up_to_the_chosen_stimulus(model):
    problem = problem_from_model(model, 2, seed=5, solver=CrankNicolson(dt=0.05))
    stim = model.stimulus
    f = exact_fisher(problem, stim)
    chosen = select_traces(problem, f, 2)
    values = stim.values[chosen]
    sub = Stimulus(values, stim.dt, stim.t0, stim.unit, stim.sites)
    direct = criterion_values(problem, exact_fisher(problem, sub).sum(1)).mean()
    assert set_value(problem, f, chosen) == pytest.approx(float(direct), rel=1e-10)
    others = [t for t in range(6) if t not in chosen]
    assert set_value(problem, f, chosen) >= max(
        set_value(problem, f, [a, b]) for a, b in itertools.combinations(others, 2)
    )


def test_select_traces_checks_its_inputs(model):
    problem = problem_from_model(model, 2, seed=1)
    f = _pool(problem, 4, rank=2, seed=0)
    for k in (0, 5):
        with pytest.raises(FitError, match="cannot be chosen from a pool of 4"):
            select_traces(problem, f, k)
    with pytest.raises(FitError, match=r"\[n, N, P, P\]"):
        select_traces(problem, f[:, :, 0], 2)
    worst = dataclasses.replace(problem, robust="worst")
    assert set_value(worst, f, [0]) <= set_value(problem, f, [0])


def test_pool_study_script_runs_end_to_end(tmp_path, monkeypatch):
    """studies/optimal_design/pool.py on a tiny pool: one row per chosen set, the committed
    optimised stimulus and the refined set, scored against the paper's 20 traces."""
    pool = load_script("studies/optimal_design/pool.py", "od_pool")
    argv = ["pool.py", "--out", str(tmp_path), "--paper-seeds", "1", "--pulses", "4",
            "--uniform", "4", "--select", "3", "--held", "2", "--sizes", "2", "4",
            "--refine-steps", "2"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    pool.main()
    with open(tmp_path / "pool.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["stimulus"] for r in rows] == [
        "chosen from the pool", "chosen from the pool", "optimised (two stages)",
        "chosen 2, then refined",
    ]  # fmt: skip
    held = [float(r["one_minus_contraction_held"]) for r in rows]
    assert all(0.0 < h < 1.0 for h in held)
    assert float(rows[1]["one_minus_contraction_select"]) < float(
        rows[0]["one_minus_contraction_select"]
    )
    assert len(rows[1]["note"].split(", ")) == 4
    meta = json.loads((tmp_path / "pool.json").read_text())
    assert meta["pool"]["paper protocol"] == 100 and meta["pool"]["uniform"] == 4


def test_chosen_sweeps_script_runs_end_to_end(tmp_path, monkeypatch):
    """studies/optimal_design/chosen.py on one small design: three sweeps chosen from the
    pool's seed, both stimuli judged, no comparison with the study's 20-sweep table."""
    chosen = load_script("studies/optimal_design/chosen.py", "od_chosen")
    argv = ["chosen.py", "--out", str(tmp_path), "--designs", "all|[0]", "--pool-seeds", "1",
            "--select", "2", "--held", "2", "--n-traces", "3", "--dt", "0.05",
            "--dt-eval", "0.05"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    chosen.main()
    with open(tmp_path / "chosen.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert (row["stim"], row["rec"]) == ("all", "[0]")
    picks = row["chosen"].split()
    assert len(picks) == 3 and all(p.startswith("20230620:") for p in picks)
    assert all(float(row[k]) > 0 for k in ("crit_paper", "crit_chosen"))
    assert "crit_optimised" not in row  # the study's table is for 20 sweeps only
