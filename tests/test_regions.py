"""Parameters shared by region and passive parameters: regions by SWC type on the bundled L2/3
cell, the distance law's values, gradients against finite differences (region parameters
through the fused adjoint and the expansion; g_l, e_l, e_na exact on the fused kernel; cm and ra
on the torch backend), a noise-free MAP recovery, and the region names downstream (Pyro sites,
Laplace, SVI, NUTS draws, identifiability labels, ArviZ dims and coords)."""

import numpy as np
import pyro
import pytest
import torch

from bayesneuron import (
    Cell,
    CrankNicolson,
    NeuronModel,
    Section,
    Torchdiffeq,
    chain,
    fit_map,
    from_sections,
    hh_channels,
    hh_tree_cell,
    l23_cell,
    simulate,
    step_current,
)
from bayesneuron.errors import MorphologyError, ParameterError, SolverError
from bayesneuron.inference import fit_svi, identifiability, laplace_map, run_nuts
from bayesneuron.inference.forms import ExpDistance, Parametrisation, Shared
from bayesneuron.inference.laplace import jacobian
from bayesneuron.inference.priors import LogNormalPrior, NormalPrior
from bayesneuron.inference.synthetic import synthetic_data
from bayesneuron.morphology.regions import Region
from bayesneuron.reports.arviz import load_inference_data, save_inference_data, summary
from bayesneuron.reports.arviz import to_inference_data as to_idata

SOLVER = CrankNicolson(dt=0.025)
SOMA_DEND = (Region("soma"), Region("dend"))


def soma_dend_cell() -> Cell:
    """A soma (20 × 20 µm) and one 300 × 2 µm dendrite in three segments, NEURON's hh."""
    secs = [
        Section("soma", None, length=20.0, diam=20.0),
        Section("dend", 0, 1.0, length=300.0, diam=2.0, nseg=3),
    ]
    return Cell(from_sections(secs, ra=100.0, cm=1.0), hh_channels(), v0=-65.0)


def soma_dend_model(free, t_stop=12.0, **kw) -> NeuronModel:
    cell = soma_dend_cell()
    stim = step_current(
        [0.05, 0.2],
        site=0,
        n_comp=4,
        delay=1.0,
        duration=t_stop - 4,
        t_stop=t_stop,
        dt=0.1,
        unit="nA",
    )
    t = np.arange(0.0, t_stop + 1e-9, 0.2)
    return NeuronModel(cell, stim, t, free=free, solver=SOLVER, **kw)


# --------------------------------------------------------------------------- regions
def test_swc_type_regions_of_the_l23_cell_partition_it():
    cell = l23_cell()
    morph = cell.morphology
    idx = {r: Region(r).indices(morph) for r in ("soma", "axon", "basal", "apical")}
    assert {r: len(v) for r, v in idx.items()} == {"soma": 1, "axon": 1, "basal": 101, "apical": 81}
    assert sorted(sum(idx.values(), ())) == list(range(cell.n_comp))
    assert Region("apic").indices(morph) == idx["apical"]
    assert all(morph.names[i].startswith("apic[") for i in idx["apical"])
    # the expansion puts each region's value on its compartments, and the base values are
    # the cell's own (hh: g_na = 120 everywhere)
    par = Parametrisation(cell, [Shared("g_na", regions=tuple(idx))])
    (site,) = par.sites
    assert (site.name, site.dim, site.labels) == ("g_na", "g_na_region", tuple(idx))
    np.testing.assert_array_equal(site.base, [120.0] * 4)
    g = par.expand({"g_na": torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)})["g_na"]
    for r, (name, comps) in enumerate(idx.items()):
        assert bool((g[list(comps)] == r + 1).all()), name


def test_section_lists_compartment_lists_and_what_is_refused():
    morph = l23_cell().morphology
    secs = Region("obliques", sections=("apic[3]", "apic[7]")).indices(morph)
    assert {morph.names[i].split("(")[0] for i in secs} == {"apic[3]", "apic[7]"}
    assert Region("two", compartments=(0, "apic[3](0.5)")).indices(morph) == (0, secs[0])
    cell = hh_tree_cell()
    # compartments outside every region keep the cell's values
    par = Parametrisation(cell, [Shared("g_k", regions=(Region("tips", sections=("dend[3]",)),))])
    g = par.expand({"g_k": torch.tensor([7.0], dtype=torch.float64)})["g_k"]
    assert g.tolist() == [36.0, 36.0, 36.0, 36.0, 7.0, 36.0]
    with pytest.raises(MorphologyError, match=r"no section named 'apicx'.*section types"):
        Region("apicx").indices(morph)
    with pytest.raises(ParameterError, match="in two regions"):
        Parametrisation(cell, [Shared("g_k", regions=("all", "soma"))])
    with pytest.raises(MorphologyError, match="no sections.*compartments="):
        Parametrisation(Cell(chain(3), hh_channels()), [Shared("g_k", regions=("soma",))])
    with pytest.raises(MorphologyError, match="needs path distances"):
        Parametrisation(Cell(chain(3), hh_channels()), [ExpDistance("g_k", "all", 1.0, 100.0)])
    with pytest.raises(ParameterError, match="free lists a parameter twice"):
        Parametrisation(cell, ["g_k", Shared("g_k")])
    with pytest.raises(ParameterError, match=r"\['g_x'\] are not parameters of this cell"):
        Parametrisation(cell, [Shared("g_x")])


def test_path_distances_and_the_exponential_law():
    cell = hh_tree_cell()  # soma 20 µm; dend[0], dend[1] at soma(1); dend[2] at soma(0)
    np.testing.assert_allclose(
        cell.morphology.distance, [0.0, 110.0, 85.0, 60.0, 10 + 200 + 60, 10 + 200 + 90]
    )
    law = ExpDistance("g_l", region="dend", g0=0.2, lam=150.0)
    par = Parametrisation(cell, [law])
    assert par.names == ("g_l_g0", "g_l_lam")
    vals = {"g_l_g0": [0.2], "g_l_lam": [150.0]}
    g = par.expand({k: torch.tensor(v, dtype=torch.float64) for k, v in vals.items()})
    g = g["g_l"].numpy()
    x = cell.morphology.distance
    np.testing.assert_allclose(g[1:], 0.2 * np.exp(x[1:] / 150.0), rtol=1e-15)
    assert g[0] == cell.params["g_l"][0]  # the soma is outside the region: the cell's value
    only_lam = Parametrisation(cell, [ExpDistance("g_l", "dend", 0.2, -80.0, free="lam")])
    assert only_lam.names == ("g_l_lam",)
    g = only_lam.expand({"g_l_lam": torch.tensor([-80.0], dtype=torch.float64)})["g_l"]
    np.testing.assert_allclose(g[1:].numpy(), 0.2 * np.exp(-x[1:] / 80.0))


@pytest.mark.neuron
def test_path_distances_match_neurons_on_the_l23_cell():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "reference"))
    from generate_neuron_l23_geometry import SWC, import3d
    from neuron import h

    secs = import3d(h, SWC)
    h.distance(0, secs["soma"](0.5))
    ref = {f"{n}({seg.x:.4g})": h.distance(seg) for n, sec in secs.items() for seg in sec}
    morph = l23_cell().morphology
    np.testing.assert_allclose(morph.distance, [ref[n] for n in morph.names], atol=1e-9)


# --------------------------------------------------------------------------- gradients
def _fd_check(model, params, names, rel=1e-5, rtol=1e-5):
    """Autograd of a weighted sum of the voltages vs central differences in every entry."""
    w = torch.linspace(0.5, 1.5, model.t_eval.size, dtype=torch.float64)

    def loss(p):
        return (model.simulate(p, recorded=False) * w).sum()

    x = {
        k: torch.as_tensor(v, dtype=torch.float64).clone().requires_grad_()
        for k, v in params.items()
    }
    grads = torch.autograd.grad(loss(x), [x[k] for k in names])
    for k, g in zip(names, grads):
        fd = []
        for i in range(x[k].numel()):
            h = rel * max(abs(float(x[k].detach()[i])), 1.0)
            up = {n: v.detach().clone() for n, v in x.items()}
            dn = {n: v.detach().clone() for n, v in x.items()}
            up[k][i] += h
            dn[k][i] -= h
            with torch.no_grad():
                fd.append(float(loss(up) - loss(dn)) / (2 * h))
        np.testing.assert_allclose(
            g.numpy(), fd, rtol=rtol, atol=rtol * np.abs(fd).max(), err_msg=k
        )


def test_region_parameters_get_exact_gradients_through_the_fused_adjoint():
    free = [Shared("g_na", SOMA_DEND), Shared("g_k", SOMA_DEND), "e_l", "e_na"]
    free.append(ExpDistance("g_l", "dend", g0=0.25, lam=200.0))
    model = soma_dend_model(free)
    assert not model.parametrisation.per_compartment
    _fd_check(model, dict(model.base), model.free)


def test_passive_cm_and_ra_gradients_on_the_torch_backend():
    model = soma_dend_model(["cm", "ra", Shared("g_l")], t_stop=6.0)
    _fd_check(model, dict(model.base), ["cm", "ra", "g_l"])
    cell, stim = model.cell, model.stimulus
    # at the morphology's own values the torch path reproduces the fused kernel's voltages
    base = simulate(cell, None, stim, solver=SOLVER).v
    same = simulate(cell, {"cm": cell.value("cm"), "ra": cell.value("ra")}, stim, solver=SOLVER).v
    assert float((same - base).abs().max()) < 1e-9
    with pytest.raises(SolverError, match="cm.*torch backend"):
        simulate(cell, {"cm": 1.1}, stim, solver=CrankNicolson(backend="fused"))
    with pytest.raises(SolverError, match="ra needs a fixed-step solver"):
        simulate(cell, {"ra": 90.0}, stim, solver=Torchdiffeq(method="rk4", step_size=0.05))
    with pytest.raises(ParameterError, match="ra .* cells built from sections"):
        stim = step_current([1.0], 0, 2, delay=1, duration=1, t_stop=3, dt=0.1, unit="uA/cm2")
        simulate(Cell(chain(2), hh_channels()), {"ra": 90.0}, stim)


def test_exact_jacobian_of_region_conductances_matches_central_differences():
    model = soma_dend_model(
        [Shared("g_na", SOMA_DEND), Shared("g_k"), ExpDistance("g_l", "dend", 0.25, 200.0)]
    )
    assert model.exact_sensitivities  # channel conductances only: forward sensitivities
    J = jacobian(model, dict(model.base))
    Jc = jacobian(model, dict(model.base), method="central")
    assert J.shape == (int(np.prod(model.obs_shape)), 5)  # g_na[soma, dend], g_k, g0, λ
    assert float((J - Jc).abs().max() / J.abs().max()) < 1e-6


# --------------------------------------------------------------------------- inference
def test_priors_per_region_and_for_reversal_potentials():
    free = [Shared("g_na", SOMA_DEND), "e_l", ExpDistance("g_l", "dend", 0.25, 200.0)]
    priors = {"g_na": LogNormalPrior(sd=0.2), "g_l_lam": NormalPrior(sd=50.0)}
    model = soma_dend_model(free, priors=priors)
    assert model.free == ("g_na", "e_l", "g_l_g0", "g_l_lam")
    assert model.priors["g_na"].batch_shape == (2,)
    assert float(model.priors["e_l"].mean[0]) == pytest.approx(-54.3)  # Normal(base, 10 mV)
    assert float(model.priors["g_l_lam"].stddev) == 50.0
    assert model.labels[:3] == ["g_na[soma]", "g_na[dend]", "e_l[0]"]
    with pytest.raises(ParameterError, match="NormalPrior"):
        soma_dend_model(["e_l"], priors={"e_l": LogNormalPrior()})
    trace = pyro.poutine.trace(model).get_trace()
    shapes = {k: tuple(v["value"].shape) for k, v in trace.nodes.items() if v["type"] == "sample"}
    assert shapes["g_na"] == (2,) and shapes["e_l"] == (4,) and shapes["g_l_lam"] == (1,)
    assert {"g_na_region", "compartment", "g_l_region"} <= set(trace.nodes)
    draws = pyro.infer.Predictive(model, num_samples=3, parallel=True)()
    assert draws["g_na"].shape == (3, 2) and draws["v_obs"].shape == (3, *model.obs_shape)


TRUTH = {"g_na": [132.0, 84.0], "g_k": [30.0, 45.0], "g_l": [0.4]}


@pytest.fixture(scope="module")
def recovered():
    free = [Shared("g_na", SOMA_DEND), Shared("g_k", SOMA_DEND), Shared("g_l")]
    model = soma_dend_model(free, priors=None)
    v = synthetic_data(model, TRUTH)
    init = {"g_na": [[120.0, 120.0], [100.0, 150.0]], "g_k": [[36.0, 36.0], [45.0, 30.0]]}
    init["g_l"] = [[0.3], [0.25]]
    fit = fit_map(model, v, init=init, n_starts=2, progress=False)
    return model, v, fit


def test_map_from_other_starts_recovers_region_conductances_and_the_leak(recovered):
    model, _, fit = recovered
    for k, t in TRUTH.items():
        np.testing.assert_allclose(fit.params[k], t, rtol=1e-4, err_msg=k)
    assert fit.params["g_na"].shape == (2,) and fit.starts["g_l"].shape == (2, 1)


def test_region_names_in_laplace_svi_nuts_metrics_and_arviz(recovered, tmp_path):
    free = [Shared("g_na", SOMA_DEND), Shared("g_k", SOMA_DEND), Shared("g_l")]
    model = soma_dend_model(free, sigma=1.0)
    _, v, fit = recovered
    lap = laplace_map(model, v, fit.params, progress=False)
    draws = lap.sample(200)
    assert {k: d.shape for k, d in draws.items()} == {
        "g_na": (200, 2),
        "g_k": (200, 2),
        "g_l": (200, 1),
    }
    ident = identifiability(draws, model, TRUTH)
    assert ident.labels == ["g_na[soma]", "g_na[dend]", "g_k[soma]", "g_k[dend]", "g_l[all]"]
    svi = fit_svi(
        model,
        v,
        fit.params,
        laplace=lap,
        max_steps=3,
        min_steps=1,
        window=1,
        num_particles=2,
        num_samples=20,
        psis_samples=20,
        progress=False,
    )
    assert svi.draws["g_k"].shape == (20, 2)
    nuts = run_nuts(
        model,
        v,
        fit.params,
        laplace=lap,
        num_samples=4,
        warmup_steps=2,
        num_chains=1,
        max_tree_depth=2,
        progress=False,
    )
    assert nuts.samples["g_l"].shape == (1, 4, 1)
    idata = to_idata(model, {k: d[None] for k, d in draws.items()}, truth=TRUTH, observed=v)
    post = idata.posterior
    assert post["g_na"].dims == ("chain", "draw", "g_na_region")
    assert list(post["g_na_region"].values) == ["soma", "dend"]
    assert list(post["g_l_region"].values) == ["all"]
    assert "parametrisation" in idata.attrs
    back = load_inference_data(save_inference_data(idata, tmp_path / "fit.nc"))
    table = summary(back)
    assert {"g_na[soma]", "g_k[dend]", "g_l[all]"} <= set(table.index)
    assert table.loc["g_na[dend]", "truth"] == 84.0
