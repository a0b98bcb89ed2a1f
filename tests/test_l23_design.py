"""The l23 preset (electrode placement on the real L2/3 geometry, region-shared conductances)
and the l23_design study in --smoke mode."""

from pathlib import Path

import numpy as np
import pytest
import torch

from bayesneuron.inference.forms import Parametrisation
from bayesneuron.morphology.regions import Region
from bayesneuron.reference.l23_design import (
    L23_APICAL_SPLIT,
    L23_BASE,
    l23_currents,
    l23_design_cell,
    l23_designs,
    l23_experiment,
    l23_free,
    l23_regions,
    l23_sites,
)
from bayesneuron.reference.presets import get_preset

STUDY = Path(__file__).resolve().parents[1] / "studies" / "l23_design"
SITES = {
    "soma": "soma(0.5)",
    "trunk": "apic[45](0.5)",
    "basal_tip": "dend[57](0.5)",
    "tuft": "apic[55](0.5)",
}


@pytest.fixture(scope="module")
def cell():
    return l23_design_cell()


def test_preset_builds_with_its_nine_placements(cell):
    p = get_preset("l23")
    assert p.cell().n_comp == 184 and p.sections is not None and p.dt == 0.025
    designs = p.designs("placements")
    labels = [d.label for d in designs]
    assert len(labels) == 9 == len(set(labels))
    assert labels[0] == "[soma(0.5)]|[soma(0.5)]"
    # E|E for the five electrode sets, then soma-only stimulation recorded at the other four
    assert all(d.stim == d.rec for d in designs[:5])
    assert all(d.stim == ("soma(0.5)",) and d.rec != d.stim for d in designs[5:])
    assert len(p.designs("grid")) == 25
    for d in designs:
        d.stim_index(cell.morphology), d.rec_index(cell.morphology)
    assert [f.name for f in l23_free(cell)] == ["g_na", "g_kdr"]


def test_regions_cover_every_compartment_once(cell):
    morph = cell.morphology
    regs = l23_regions(morph)
    idx = {r.name: r.indices(morph) for r in regs}
    assert list(idx) == ["soma", "axon", "basal", "apical_prox", "apical_dist"]
    assert sorted(sum(idx.values(), ())) == list(range(184))
    assert {k: len(v) for k, v in idx.items()} == {
        "soma": 1,
        "axon": 1,
        "basal": 101,
        "apical_prox": 46,
        "apical_dist": 35,
    }
    d = morph.distance
    assert d[list(idx["apical_prox"])].max() < L23_APICAL_SPLIT <= d[list(idx["apical_dist"])].min()
    assert set(idx["apical_prox"]) | set(idx["apical_dist"]) == set(Region("apical").indices(morph))
    # the cell's values are the regional bases, and the sites' bases read them back
    par = Parametrisation(cell, l23_free(cell))
    for site in par.sites:
        assert site.labels == tuple(idx) and site.dim == f"{site.name}_region"
        np.testing.assert_array_equal(site.base, list(L23_BASE[site.name].values()))


def test_electrode_sites_are_where_documented(cell):
    morph = cell.morphology
    assert l23_sites(morph) == SITES
    d = morph.distance
    apical = list(Region("apical").indices(morph))
    basal = list(Region("basal").indices(morph))
    tuft, trunk = morph.index(SITES["tuft"]), morph.index(SITES["trunk"])
    assert d[tuft] == d[apical].max() and d[tuft] > 900
    assert morph.index(SITES["basal_tip"]) == basal[int(np.argmax(d[basal]))]
    assert 150 <= d[trunk] <= 300
    node, path = tuft, []  # the trunk site lies on the soma → tuft-tip path
    while node >= 0:
        path.append(node)
        node = int(morph.parents[node])
    assert trunk in path and 0 in path


def test_experiment_truth_currents_and_spikes():
    soma, all4 = l23_designs()[0], l23_designs()[4]
    model, v, truth = l23_experiment(soma, n_traces=6, seed=5, noise_sigma=0.0)
    assert model.free == ("g_na", "g_kdr") and model.sizes == {"g_na": 5, "g_kdr": 5}
    assert v.shape == (6, 1, 125)
    for k, base in L23_BASE.items():
        b = np.array(list(base.values()))
        assert np.all((truth[k] >= 0.7 * b) & (truth[k] <= 1.3 * b))
    assert float(v.max()) > 0.0  # the soma fires in some traces …
    assert float(v.max(-1).values.min()) < 0.0  # … and not in all
    # a site's current is the same whichever design stimulates it
    m4, _, _ = l23_experiment(all4, n_traces=6, seed=5)
    assert torch.equal(model.stimulus.values[:, 0], m4.stimulus.values[:, 0])
    stim = l23_currents(184, seed=5, n_traces=6)
    assert stim.unit == "nA" and stim.values.shape == (6, 184, 50)
    assert float(stim.values.min()) >= 0.0 and float(stim.values.max()) < 2.0


def test_l23_design_study_smoke(tmp_path):
    import pandas as pd

    from bayesneuron.cli import main

    out = tmp_path / "l23"
    assert main(["study", "run", str(STUDY), "--out", str(out), "--smoke", "--quiet"]) == 0
    designs = pd.read_csv(out / "designs.csv", dtype={"stim": str, "rec": str})
    assert list(designs["stim"] + "|" + designs["rec"]) == ["[soma(0.5)]|[soma(0.5),apic[55](0.5)]"]
    assert np.isfinite(designs["mean_contraction"]).all()
    assert {f"contraction_g_kdr_{i}" for i in range(5)} <= set(designs.columns)
    ranking = pd.read_csv(out / "ranking_expected.csv")
    assert len(ranking) == 9 * ranking["criterion"].nunique()
    assert list((out).glob("placements_morphology_*.png"))
    assert list((out).glob("laplace_morphology_*.png"))
    html = (out / "report.html").read_text()
    assert "posterior contraction" in html and "g_kdr" in html


def _region_recovery(n_traces: int, n_starts: int, max_steps: int):
    """Noise-free data under the four-electrode design; Levenberg–Marquardt from the base
    values and prior draws (never the truth); the recovery row (error in prior widths)."""
    from bayesneuron.inference.fit import fit_map
    from bayesneuron.inference.recovery import recovery_row

    all4 = l23_designs()[4]
    model, v, truth = l23_experiment(all4, n_traces=n_traces, seed=20230619)
    fit = fit_map(
        model, v, truth=truth, n_starts=n_starts, max_steps=max_steps, horizons=(),
        progress=False,
    )  # fmt: skip
    return recovery_row(fit, model, truth)


def test_region_shared_map_recovers_the_truth_from_non_truth_starts():
    """Issue 15, part 2b (short version): 2 traces, the base values as the only start."""
    row = _region_recovery(n_traces=2, n_starts=1, max_steps=30)
    assert row["max_err_prior_width"] <= 0.05, row


@pytest.mark.slow
def test_region_shared_map_recovers_the_truth_with_the_study_settings():
    """The l23_design study's 10 traces, 4 starts: every regional g within 5 % of its prior
    width of the truth (measured: 3.4e-11; ``benchmarks/map_recovery.py``, 124 s)."""
    row = _region_recovery(n_traces=10, n_starts=4, max_steps=30)
    assert row["max_err_prior_width"] <= 0.05 and row["recovered"], row


@pytest.mark.parametrize("ok", ["True", "False"])
def test_a_failed_posterior_says_so_in_its_morphology_figures_title(tmp_path, monkeypatch, ok):
    from types import SimpleNamespace

    import bayesneuron.studies.morphology as morphology
    from bayesneuron.protocol.design import Design

    design = Design(["soma(0.5)"], ["soma(0.5)"])
    model = SimpleNamespace(free=("g_na",), sizes={"g_na": 2})
    monkeypatch.setattr(morphology, "build_experiment", lambda *a: (model, None, None))
    drawn = []
    monkeypatch.setattr(morphology, "morphology_figure", lambda *a: drawn.append(a) or True)
    inf = SimpleNamespace(name="placements", designs=[design], priors=None)
    study = SimpleNamespace(preset="l23", infers=[inf], priors="paper")
    row = dict(run="placements", stim="[soma(0.5)]", rec="[soma(0.5)]", posterior_ok=ok)
    row |= {"contraction_g_na_0": 0.5, "contraction_g_na_1": 0.9}
    assert len(morphology.infer_morphology(study, tmp_path, [row])) == 1
    _, _, per, what, title, _ = drawn[0]
    np.testing.assert_array_equal(per["g_na"], [0.5, 0.9])
    assert what == "posterior contraction"
    assert title.startswith("placements: [soma(0.5)]|[soma(0.5)]")
    assert ("posterior NOT ok" in title) == (ok == "False")
