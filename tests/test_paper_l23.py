"""The paper's 184-compartment experiment: the learner's graph, targets, variants, L0, study."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesneuron.inference.synthetic import synthetic_data
from bayesneuron.reference.paper import paper_currents, paper_ground_truth, paper_time_grid
from bayesneuron.reference.paper_l23 import (
    PAPER_L23_SEEDS,
    PAPER_L23_STIM,
    paper_l23_cell,
    paper_l23_experiment,
    paper_l23_graph,
)
from bayesneuron.simulation import CrankNicolson, simulate
from bayesneuron.studies.config import StudyError, study_from_config
from bayesneuron.studies.run import run_study

ROOT = Path(__file__).resolve().parents[1]


def _components(a: np.ndarray) -> list[int]:
    seen, sizes = set(), []
    for s in range(len(a)):
        if s in seen:
            continue
        stack, comp = [s], 0
        seen.add(s)
        while stack:
            i = stack.pop()
            comp += 1
            for j in np.flatnonzero(a[i]):
                if int(j) not in seen:
                    seen.add(int(j))
                    stack.append(int(j))
        sizes.append(comp)
    return sorted(sizes, reverse=True)


def test_the_learners_graph_is_the_authors_broken_one():
    names, a = paper_l23_graph()
    assert len(names) == 184 and np.array_equal(a, a.T) and not a.diagonal().any()
    assert a.sum() // 2 == 183
    assert Counter(a.sum(1).tolist()) == {1: 41, 2: 127, 3: 12, 4: 3, 23: 1}
    assert _components(a) == [151, 33]
    stim_names = [names[i] for i in PAPER_L23_STIM]
    assert stim_names == [
        "Soma",
        "Dend_16",
        "Dend_34",
        "Dend_52",
        "Dend_70",
        "Dend_88",
        "Apical_4",
        "Apical_23",
        "Apical_41",
        "Apical_59",
        "Apical_77",
    ]


@pytest.mark.parametrize(
    "seed, gte_na, gte_k, mean_na, mean_k",
    [
        (20230619, 16.935, 6.309, 99.96, 45.56),
        (20230620, 13.766, 6.824, 99.45, 44.76),
        (20230622, 14.742, 6.798, 100.01, 45.15),
    ],
)
def test_targets_give_the_papers_initial_errors(seed, gte_na, gte_k, mean_na, mean_k):
    """§7.3: GTE before the first step and the targets' means, per seed."""
    gt = paper_ground_truth(seed, n_comp=184)
    assert abs(float((gt["g_na"] - 100).abs().mean()) - gte_na) < 5e-4
    assert abs(float((gt["g_k"] - 45).abs().mean()) - gte_k) < 5e-4
    assert abs(float(gt["g_na"].mean()) - mean_na) < 5e-3
    assert abs(float(gt["g_k"].mean()) - mean_k) < 5e-3


def test_every_variant_numbers_compartments_as_the_authors():
    names, _ = paper_l23_graph()
    cells = {v: paper_l23_cell(v) for v in ("faithful", "graph", "right")}
    chain = paper_l23_cell("faithful", data=True)
    for c in (*cells.values(), chain):
        assert c.n_comp == 184 and c.morphology.names[18] == "dend[16](0.5)"
    assert c.morphology.names[0] == "soma(0.5)" and c.morphology.names[1] == "axon(0.5)"
    assert cells["right"].morphology.geometric and not chain.morphology.geometric


def test_the_right_cell_is_the_swc_cell_renumbered():
    from bayesneuron.channels import paper_channels
    from bayesneuron.reference.cells import l23_cell

    right = paper_l23_cell("right")
    orig = l23_cell(nseg=1, channels=paper_channels(), cm=0.45, v0=-60.0)
    perm = [orig.morphology.index(n) for n in right.morphology.names]
    stim = paper_currents(20230619, n_traces=3, n_comp=184, i_max=10, stim=list(PAPER_L23_STIM))
    na = stim.values * torch.tensor(right.morphology.area)[:, None] * 1e3
    inv = np.argsort(perm)
    t = paper_time_grid()
    solver = CrankNicolson(dt=0.01)
    v1 = simulate(right, None, type(stim)(na, dt=stim.dt, unit="nA"), t, solver=solver).v
    v2 = simulate(orig, None, type(stim)(na[:, inv], dt=stim.dt, unit="nA"), t, solver=solver).v
    assert torch.equal(v1, v2[:, perm])


@pytest.mark.parametrize("seed, l0", list(zip(PAPER_L23_SEEDS, (18.052, 14.812, 19.174))))
def test_faithful_l0_reproduces_the_paper(seed, l0):
    """The loss at g_Na = 100, g_K = 45 everywhere against chain data, on the authors' graph."""
    model, v, truth = paper_l23_experiment(seed=seed, solver=CrankNicolson(dt=0.005))
    base = {k: np.asarray(model.cell.params[k]) for k in truth}
    v0 = synthetic_data(model, base)
    assert abs(float(((v0 - v) ** 2).mean()) - l0) < 0.05


def test_right_variant_data_carry_little_about_the_conductances():
    """On the real cable the paper's 0–9 µA/cm² inputs barely move the voltage: the loss at
    the base values is ~1e-3 mV² (the chain's is 18)."""
    model, v, truth = paper_l23_experiment(
        n_traces=10, variant="right", solver=CrankNicolson(dt=0.01)
    )
    base = {k: np.asarray(model.cell.params[k]) for k in truth}
    assert float(((synthetic_data(model, base) - v) ** 2).mean()) < 0.01
    assert float(v.max()) < -50.0  # no spikes


def test_variant_and_seed_errors_name_the_fix():
    base = {"study": {"name": "x"}, "experiment": {"preset": "paper_l23"}}
    run = {"protocol": "paper", "designs": "paper"}
    with pytest.raises(StudyError, match=r"variant 'chain' unknown for paper_l23; it has one of"):
        study_from_config({**base, "run": [{**run, "variant": "chain"}]})
    with pytest.raises(StudyError, match=r"it has none \(remove the key\)"):
        study_from_config({"study": {"name": "x"}, "run": [{**run, "variant": "faithful"}]})
    with pytest.raises(StudyError, match=r"seeds = \[1, 1\]; give distinct ints"):
        study_from_config({**base, "run": [{**run, "seeds": [1, 1]}]})
    with pytest.raises(StudyError, match=r"\[laplace\]: variant 'x' unknown"):
        study_from_config(
            {**base, "run": [run], "laplace": {"designs": "paper", "variants": ["x"]}}
        )


def test_paper_l23_map_smoke(tmp_path):
    out = tmp_path / "res"
    run_study(ROOT / "studies" / "paper_l23_map", out, smoke=True, progress=False)
    with (out / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    cols = ["seed", "variant", "protocol", "L0", "L_final"]
    cols += ["gte_na_initial", "gte_na_final", "gte_k_initial", "gte_k_final", "wall_s"]
    assert set(cols) <= set(rows[0])
    assert {(int(r["seed"]), r["variant"]) for r in rows} == {
        (s, v) for s in PAPER_L23_SEEDS for v in ("faithful", "graph", "right")
    }
    assert all(np.isfinite(float(r["L_final"])) for r in rows)


def test_chain_data_are_as_the_paper_describes():
    """§7.3: with seed 20230619, 166 of 184 compartments vary by < 1 mV across the 100 traces
    at every time, 2.7 % of the traces cross 0 mV, node 100 relaxes from −60 to ≈ −77 mV."""
    stim = paper_currents(20230619, n_traces=100, n_comp=184, i_max=10, stim=list(PAPER_L23_STIM))
    gt = paper_ground_truth(20230619, n_comp=184)
    chain = paper_l23_cell("faithful", data=True)
    v = simulate(chain, gt, stim, paper_time_grid(), solver=CrankNicolson(dt=0.01)).v
    assert int((v.std(0).max(-1).values < 1).sum()) == 166
    assert abs(float((v.max(-1).values > 0).double().mean()) - 0.027) < 0.002
    assert -79.0 < float(v[0, 100, -1]) < -76.5
