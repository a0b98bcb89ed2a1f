"""Experiment presets: the hh_tree protocol, the registry, and the hh_tree_design study in
--smoke mode."""

from pathlib import Path

import numpy as np
import pytest
import torch

from bayesneuron import Design, paper_experiment
from bayesneuron.errors import BayesneuronError, StimulusError
from bayesneuron.reference.cells import hh_tree_cell
from bayesneuron.reference.presets import PRESETS, get_preset, hh_tree_currents, hh_tree_experiment

STUDY = Path(__file__).resolve().parents[1] / "studies" / "hh_tree_design"


def test_hh_tree_currents_are_densities_times_area_and_seeded():
    cell = hh_tree_cell()
    stim = hh_tree_currents(cell, seed=3, n_traces=7, density=20.0)
    assert stim.unit == "nA" and stim.values.shape == (7, 6, 40) and stim.dt == 0.5
    dens = stim.values.numpy() / (cell.morphology.area[None, :, None] * 1e3)  # back to µA/cm²
    assert np.all(dens[..., 0] == 0.0)  # every trace starts at rest
    assert dens.min() >= 0.0 and dens.max() < 20.0
    # 3 levels per trace and compartment: at most 2 changes after the first bin
    changes = (np.diff(dens[..., 1:], axis=-1) != 0).sum(-1)
    assert changes.max() <= 2
    again = hh_tree_currents(cell, seed=3, n_traces=7, density=20.0)
    assert torch.equal(stim.values, again.values)
    assert not torch.equal(stim.values, hh_tree_currents(cell, seed=4, n_traces=7).values)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(t_stop=20.2), r"multiple ≥ 2 of bin_dt"),
        (dict(n_changes=0), r"n_changes = 0 must be in 1 … 39"),
        (dict(density=-1.0), r"density = -1.0 µA/cm² must be finite and > 0"),
        (dict(n_traces=0), r"n_traces = 0 must be an int ≥ 1"),
    ],
)
def test_hh_tree_currents_bad_input(kw, match):
    with pytest.raises(StimulusError, match=match):
        hh_tree_currents(hh_tree_cell(), **kw)


def test_hh_tree_currents_need_a_geometric_cell():
    from bayesneuron import paper_toy_cell

    with pytest.raises(StimulusError, match="needs a geometric cell"):
        hh_tree_currents(paper_toy_cell())


def test_hh_tree_experiment_spikes_everywhere_and_only_stimulated_sites_get_current():
    model, v, truth = hh_tree_experiment(Design([0], [0, 5]), n_traces=4, seed=1)
    assert v.shape == (4, 2, 80) and model.t_eval[0] == 0.25 and model.t_eval[-1] == 20.0
    cur = model.stimulus.values
    assert bool((cur[:, 1:] == 0).all()) and bool((cur[:, 0] > 0).any())
    for k, base in (("g_na", 120.0), ("g_k", 36.0)):
        assert np.all((truth[k] >= 0.7 * base) & (truth[k] <= 1.3 * base))
    # a somatic current that fires the soma fires the distal tip too (the tree is compact)
    peak = v.max(-1).values
    fired = peak[:, 0] > 0
    assert bool(fired.any()) and bool((peak[fired, 1] > 0).all())


def test_registry_and_grids():
    assert set(PRESETS) == {"paper_toy", "hh_tree", "paper_l23", "l23"}
    assert [d.label for d in get_preset("paper_toy").designs("grid")] == [
        d.label for d in get_preset("paper_toy").designs("grid25")
    ]
    assert len(get_preset("paper_toy").designs("paper9")) == 9
    tree = get_preset("hh_tree").designs("grid")
    assert len(tree) == 25 and tree[0].label == "[0]|[0]" and tree[-1].label == "all|all"
    with pytest.raises(BayesneuronError, match=r"design list 'paper9' unknown for preset"):
        get_preset("hh_tree").designs("paper9")
    with pytest.raises(BayesneuronError, match=r"preset 'x' unknown; available"):
        get_preset("x")


def test_paper_preset_is_the_paper_experiment():
    a = get_preset("paper_toy").experiment(Design([0], None), n_traces=3)
    b = paper_experiment(Design([0], None), n_traces=3)
    assert torch.equal(a[1], b[1])


def test_hh_tree_design_study_smoke(tmp_path):
    import pandas as pd

    from bayesneuron.cli import main

    out = tmp_path / "hh"
    assert main(["study", "run", str(STUDY), "--out", str(out), "--smoke", "--quiet"]) == 0
    designs = pd.read_csv(out / "designs.csv", dtype={"stim": str, "rec": str})
    assert list(designs["stim"] + "|" + designs["rec"]) == ["[0]|[0]", "all|all"]
    assert np.isfinite(designs["mean_contraction"]).all()
    lap = pd.read_csv(out / "laplace.csv", dtype={"stim": str, "rec": str})
    assert len(lap) == 2 and (lap["logdet_fisher"].diff().dropna() > 0).all()
    assert (out / "report.html").is_file() and (out / "table.csv").is_file()
    assert "branched" in (out / "report.html").read_text()
