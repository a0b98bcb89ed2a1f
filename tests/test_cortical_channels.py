"""The cortical channel library (``bayesneuron.channels.cortical``): each channel against NEURON
with the same numerical scheme, the fused C kernel against the torch backend (voltages and
gradients), the published formulas, and the gates' sanity.

Reference: ``tests/reference/cortical_neuron.npz`` from ``generate_neuron_cortical.py`` (NMODL
files of the same kinetics in ``tests/reference/mod/``, one channel plus leak at a time on the
hh tree's geometry, three IClamp amplitudes, dt = 0.025 ms, 40 ms, 37 °C). NEURON's
``secondorder = 0`` is :class:`BackwardEuler` (torch backend), its ``secondorder = 2`` is
:class:`CrankNicolson` (the fused kernel): identical schemes ⇒ agreement to round-off, ≤ 1e-6 mV.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from _scripts import load_script

from bayesneuron import (
    BackwardEuler,
    Cell,
    CrankNicolson,
    Leak,
    Reset,
    Stimulus,
    chain,
    from_sections,
    sensitivities,
    simulate,
    step_current,
)
from bayesneuron.channels import (
    Constant,
    Exponential,
    Gate,
    Ih,
    InfTauGate,
    Kdr,
    Kinetics,
    Km,
    Kv31,
    Linoid,
    NaT,
    RateChannel,
    Sigmoid,
    Softplus,
    cortical_channels,
)
from bayesneuron.reference.cells import hh_tree_sections
from bayesneuron.simulation import runs_fused

REF = Path(__file__).parent / "reference"
TOL_MV = 1e-6
LIBRARY = (NaT, Kdr, Kv31, Km, Ih)
needs_cc = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler for the fused kernel"
)


def _generator():
    return load_script(REF / "generate_neuron_cortical.py")


def _simulate(ref, solver, configs=None, amplitudes=None):
    """bayesneuron's ``V [config, amp, comp, time]`` (every step) for the reference's setup: one
    cell with every channel, the configurations as a sample dim of the conductances (0 where a
    channel is out, which adds exactly nothing)."""
    names = [str(c) for c in ref["channel_names"]]
    cel = float(ref["celsius"])
    chans = (*(cls(celsius=cel) for cls in LIBRARY), Leak(g=float(ref["g_l"]), e=float(ref["e_l"])))
    assert [ch.name for ch in chans[:-1]] == names
    morph = from_sections(hh_tree_sections(), ra=100.0, cm=1.0, nseg=1)
    cell = Cell(morph, chans, v0=float(ref["v0"]))
    rows = [list(ref["configs"]).index(c) for c in (configs or ref["configs"])]
    members = torch.tensor(ref["channels"][rows])
    params = {}
    for i, name in enumerate(names):
        params[f"g_{name}"] = (members[:, i] * float(ref["g"][i]))[:, None].expand(-1, cell.n_comp)
        params[f"e_{name}"] = torch.tensor(float(ref["e"][i]), dtype=torch.float64)
    dt = float(ref["dt"])
    n = int(round(float(ref["t"][-1]) / dt))
    amps = ref["amplitudes"] if amplitudes is None else amplitudes
    stim = step_current(
        amps, site=0, n_comp=cell.n_comp, delay=5.0, duration=30.0, t_stop=n * dt, dt=dt, unit="nA"
    )
    return simulate(cell, params, stim, np.arange(n + 1) * dt, solver).v.detach().numpy()


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(REF / "cortical_neuron.npz"))


# ------------------------------------------------------------------ (a) committed NEURON traces
@pytest.mark.parametrize(
    "key, solver",
    [
        ("v", BackwardEuler(dt=0.025)),
        pytest.param("v_cn", CrankNicolson(dt=0.025), marks=needs_cc),
    ],
    ids=["backward-euler", "crank-nicolson-fused"],
)
def test_every_channel_matches_committed_neuron_traces(ref, key, solver):
    gen = _generator()
    assert list(ref["configs"]) == gen.CONFIGS and list(ref["channel_names"]) == list(gen.CHANNELS)
    assert list(ref["names"]) == [f"{s.name}(0.5)" for s in hh_tree_sections()]
    if isinstance(solver, CrankNicolson):
        assert runs_fused(Cell(chain(1), cortical_channels()), solver)
    v = _simulate(ref, solver)[..., :: int(ref["every"])]
    assert v.shape == ref[key].shape
    err = np.abs(v - ref[key]).reshape(len(ref["configs"]), -1).max(-1)
    per = ", ".join(f"{c} {e:.2g}" for c, e in zip(ref["configs"], err))
    assert err.max() <= TOL_MV, f"max |ΔV| per configuration (mV): {per}"


def test_the_reference_has_teeth(ref):
    # every channel moves the voltage far from the leak-only cell; Na fires, so does the full set
    configs = list(ref["configs"])
    leak = ref["v"][configs.index("l")]
    for c in ("na", "kdr", "kv31", "km", "ih"):
        assert np.abs(ref["v"][configs.index(c)] - leak).max() > 5.0, c
    soma = ref["v"][:, :, 0]
    spikes = ((soma[..., 1:] > 0) & (soma[..., :-1] <= 0)).sum(-1)
    assert spikes[configs.index("all"), -1] >= 2 and spikes[configs.index("na"), 1] >= 1
    assert np.abs(ref["v_cn"] - ref["v"]).max() > 1.0  # the two schemes differ: both checked


# ------------------------------------------------------------------ (b) NEURON, live
@pytest.mark.neuron
def test_every_channel_matches_neuron_live():
    pytest.importorskip("neuron")
    gen = _generator()
    if gen.nrnivmodl() is None:
        pytest.skip("nrnivmodl not found")
    from neuron import h

    amps = np.array([-0.05, 0.2])
    ref = dict(np.load(REF / "cortical_neuron.npz"))
    for order, solver in ((0, BackwardEuler(dt=0.025)), (2, CrankNicolson(dt=0.025))):
        v_nrn, t, _ = gen.simulate_all(h, amplitudes=amps, secondorder=order)
        np.testing.assert_allclose(t, np.arange(len(t)) * 0.025)
        v = _simulate(ref, solver, amplitudes=amps)
        assert v.shape == v_nrn.shape
        assert np.abs(v - v_nrn).max() <= TOL_MV, order
        # NEURON today reproduces the committed traces (to its own round-off)
        committed = ref["v" if order == 0 else "v_cn"][:, [0, 2]]
        assert np.abs(v_nrn[..., :: int(ref["every"])] - committed).max() <= 1e-9


# ------------------------------------------------------------------ (c) fused vs torch
CELL = Cell(
    from_sections(hh_tree_sections(), ra=100.0, cm=1.0, nseg=1), cortical_channels(), v0=-70.0
)
STIM = step_current([-0.05, 0.2], 0, CELL.n_comp, delay=2.0, duration=20.0, t_stop=25.0, dt=1.0)
T = np.arange(0.0, 25.0 + 1e-9, 0.25)


@pytest.fixture(scope="module")
def runs():
    """Voltages and d(Σ w·V)/d(every g and e) from both backends, and the weights ``w``."""
    out, w = {}, None
    for backend in ("fused", "torch"):
        p = {k: torch.tensor(x, requires_grad=True) for k, x in CELL.params.items()}
        v = simulate(CELL, p, STIM, T, CrankNicolson(dt=0.025, backend=backend)).v
        if w is None:
            w = torch.randn(v.shape, generator=torch.Generator().manual_seed(5), dtype=v.dtype)
        grads = torch.autograd.grad((w * v).sum(), list(p.values()))
        out[backend] = (v.detach(), dict(zip(p, grads)))
    return out, w


@needs_cc
def test_fused_voltages_equal_the_torch_backend(runs):
    (v_f, _), (v_t, _) = runs[0]["fused"], runs[0]["torch"]
    assert runs_fused(CELL, CrankNicolson())
    assert v_f.shape == (2, CELL.n_comp, len(T)) and v_t.max() > 0  # the cell fires
    assert (v_f - v_t).abs().max() <= 1e-9 * v_t.abs().max()


@needs_cc
@pytest.mark.parametrize("name", [f"{k}_{c.name}" for c in cortical_channels() for k in "ge"])
def test_fused_gradients_equal_the_torch_backend(runs, name):
    g_f, g_t = runs[0]["fused"][1][name], runs[0]["torch"][1][name]
    assert g_f.shape == (CELL.n_comp,) and g_t.abs().max() > 0
    assert (g_f - g_t).abs().max() <= 1e-9 * g_t.abs().max()


@needs_cc
def test_fused_sensitivities_equal_torch_autograd(runs):
    wrt = tuple(f"g_{c}" for c in ("na", "kdr", "kv31", "km", "ih"))
    v, jac = sensitivities(CELL, None, STIM, T, CrankNicolson(dt=0.025), wrt=wrt)
    n = CELL.n_comp
    assert torch.equal(v, runs[0]["fused"][0])
    jtw = (jac * runs[1].unsqueeze(-3)).sum((0, -1, -2))
    for a, name in enumerate(wrt):
        want = runs[0]["torch"][1][name]
        assert (jtw[a * n : (a + 1) * n] - want).abs().max() <= 1e-9 * want.abs().max(), name


@dataclass(frozen=True)
class _Probe(RateChannel):
    """One library channel's gates under another name, at a conductance that acts."""

    of: RateChannel = NaT()
    name: str = "probe"

    def param_defaults(self):
        return {"g": 5.0, "e": 0.0}

    def kinetics(self):
        return self.of.declared()


@needs_cc
def test_fused_gates_match_torch_at_and_around_every_singularity():
    # Restarting the voltage at every step evaluates each gate at chosen voltages: at every
    # Linoid's v_half in the channel's own voltage (NaT sees V − 10 mV), beside it, across the
    # series/closed-form switch, and over −150…100 mV, with gradients through the gate updates.
    chans = (*(_Probe(cls(celsius=30.0), name=cls().name) for cls in LIBRARY), Leak())
    cell = Cell(chain(1), chans, v0=-65.0)
    off = np.array([0.0, 1e-9, 1e-6, 1e-4, 0.01, 0.5, 0.99, 1.01, 3.0])
    halves = [(-25.0, 9.0), (-40.0, 5.0), (-65.0, 5.0), (25.0, 9.0), (-30.0, 9.0), (-154.9, 11.9)]
    vs = np.concatenate(
        [vh + s * off * k for vh, k in halves for s in (1, -1)] + [np.linspace(-150, 100, 26)]
    )
    dt, n = 0.02, len(vs)
    stim = Stimulus(torch.zeros(1, 1, n + 1, dtype=torch.float64), dt=dt)
    held = torch.tensor(np.append(vs, np.nan), dtype=torch.float64).reshape(1, 1, n + 1)
    res = []
    for backend in ("torch", "fused"):
        p = {k: torch.tensor(x, requires_grad=True) for k, x in cell.params.items()}
        solver = CrankNicolson(dt=dt, backend=backend)
        v = simulate(cell, p, stim, np.arange(n + 1) * dt, solver, reset=Reset(held, 1)).v
        res.append((v.detach(), torch.autograd.grad(v.sum(), list(p.values()))))
    (v_t, g_t), (v_f, g_f) = res
    assert (v_t[..., 1:] - held[..., :-1]).abs().max() > 1.0  # the channels act
    assert (v_t - v_f).abs().max() <= 1e-12
    for name, a, b in zip(cell.params, g_t, g_f):
        assert (a - b).abs().max() <= 1e-10 * max(a.abs().max(), 1e-300), name


# ------------------------------------------------------------------ (d) published formulas
def _trap0(v, th, a, q):
    return a * (v - th) / (1.0 - np.exp(-(v - th) / q))


def _mod_formulas(v, celsius):
    """``{(channel, gate): (inf, tau)}`` as the source files write them (numpy, float64)."""
    tadj = 2.3 ** ((celsius - 23.0) / 10.0)
    vm = v - 10.0  # na.mod: rates(v + vshift), vshift = −10
    am, bm = _trap0(vm, -35.0, 0.182, 9.0), _trap0(-vm, 35.0, 0.124, 9.0)
    ah, bh = _trap0(vm, -50.0, 0.024, 5.0), _trap0(-vm, 75.0, 0.0091, 5.0)
    ak, bk = _trap0(v, 25.0, 0.02, 9.0), _trap0(v, 25.0, -0.002, -9.0)
    amk, bmk = _trap0(v, -30.0, 1e-3, 9.0), _trap0(v, -30.0, -1e-3, -9.0)
    ai = 0.001 * 6.43 * (v + 154.9) / (np.exp((v + 154.9) / 11.9) - 1.0)
    bi = 0.001 * 193.0 * np.exp(v / 33.1)
    return {
        ("na", "m"): (am / (am + bm), 1.0 / tadj / (am + bm)),
        ("na", "h"): (1.0 / (1.0 + np.exp((vm + 65.0) / 6.2)), 1.0 / tadj / (ah + bh)),
        ("kdr", "n"): (ak / (ak + bk), 1.0 / tadj / (ak + bk)),
        ("km", "n"): (amk / (amk + bmk), 1.0 / tadj / (amk + bmk)),
        ("kv31", "m"): (
            1.0 / (1.0 + np.exp((v - 18.7) / -9.7)),
            0.2 * 20.0 / (1.0 + np.exp((v + 46.56) / -44.14)),
        ),
        ("ih", "m"): (ai / (ai + bi), 1.0 / (ai + bi)),
    }


@pytest.mark.parametrize("celsius", [23.0, 37.0])
def test_gates_equal_the_source_formulas(celsius):
    v = np.linspace(-120.0, 60.0, 1801)
    singular = np.array([-25.0, -40.0, -65.0, 25.0, -30.0])  # 0/0 in the closed formulas
    v = v[np.abs(v[:, None] - singular).min(-1) > 1e-3]
    want = _mod_formulas(v, celsius)
    vt = torch.tensor(v, dtype=torch.float64)
    for cls in LIBRARY:
        ch = cls(celsius=celsius)
        for gate, (inf, tau) in ch.gates(vt, {}).items():
            w_inf, w_tau = want[(ch.name, gate)]
            np.testing.assert_allclose(inf.numpy(), w_inf, rtol=1e-12, atol=1e-300)
            np.testing.assert_allclose(tau.numpy(), w_tau, rtol=1e-12)


# ------------------------------------------------------------------ (e) gate sanity
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls", LIBRARY, ids=lambda c: c.__name__)
def test_gates_bounded_positive_finite_and_smooth(cls, dtype):
    # −120…60 mV on a 0.01 mV grid that hits every Linoid's singular point exactly
    v = (torch.arange(-12000, 6001, dtype=torch.float64) / 100.0).to(dtype).requires_grad_(True)
    ch = cls(celsius=37.0)
    gates = ch.gates(v, {})
    assert tuple(gates) == ch.state_names
    for name, (inf, tau) in gates.items():
        assert torch.isfinite(inf).all() and torch.isfinite(tau).all(), name
        assert ((inf >= 0) & (inf <= 1)).all() and (tau > 0).all(), name
        for f in (inf, tau):
            (df,) = torch.autograd.grad(f.sum(), v, retain_graph=True)
            assert torch.isfinite(df).all(), name
            f64, df64 = f.detach().double(), df.double()
            jump = (f64[1:] - f64[:-1]).abs()
            bound = 0.01 * torch.maximum(df64[1:].abs(), df64[:-1].abs()) + 1e-5 * f64.abs().max()
            assert (jump <= bound + 1e-6).all(), name


def test_init_gates_are_the_steady_states_of_the_shifted_voltage():
    v = torch.tensor([-70.0], dtype=torch.float64)
    for cls in LIBRARY:
        ch = cls()
        init = ch.init_gates(v, {})
        assert {k: x.item() for k, x in init.items()} == {
            k: inf.item() for k, (inf, _) in ch.gates(v, {}).items()
        }


@pytest.mark.parametrize("cls", LIBRARY, ids=lambda c: c.__name__)
def test_temperature_scales_every_time_constant_by_q10(cls):
    v = torch.linspace(-120.0, 60.0, 181, dtype=torch.float64)
    cold, warm = cls(celsius=24.0).gates(v, {}), cls(celsius=34.0).gates(v, {})
    q10 = cls().q10
    for name in cold:
        torch.testing.assert_close(warm[name][0], cold[name][0], rtol=0, atol=0)  # x∞ unmoved
        torch.testing.assert_close(cold[name][1] / warm[name][1], torch.full_like(v, q10))
    # Kv3.1 and Ih have no temperature dependence in their source (q10 = 1); a q10 adds one
    if q10 == 1.0:
        c3, w3 = cls(celsius=24.0, q10=3.0).gates(v, {}), cls(celsius=34.0, q10=3.0).gates(v, {})
        for name in c3:
            torch.testing.assert_close(c3[name][1] / w3[name][1], torch.full_like(v, 3.0))
            at_temp = cls(celsius=34.0, q10=3.0).gates(v, {})[name][1]
            torch.testing.assert_close(at_temp, cls().gates(v, {})[name][1], rtol=0, atol=0)
    else:
        assert cls().temperature_factor() == pytest.approx(2.3**1.4, rel=1e-14)


def test_library_names_and_defaults():
    chans = cortical_channels(celsius=30.0)
    assert [c.name for c in chans] == ["na", "kdr", "kv31", "km", "ih", "l"]
    assert all(getattr(c, "celsius", 30.0) == 30.0 for c in chans)
    cell = Cell(chain(2), chans, v0=-70.0)
    assert {"g_na", "e_na", "g_kv31", "g_ih", "e_ih", "g_l"} <= set(cell.param_names)
    assert [g.power for g in NaT().declared().gates] == [3, 1]
    assert isinstance(Kv31().declared().gates[0], InfTauGate)
    assert NaT().declared().gates[1].inf == Sigmoid(1.0, -65.0, -6.2)


# ------------------------------------------------------------------ the gate machinery
A, B = Exponential(0.07, -65.0, 20.0), Sigmoid(1.0, -35.0, 10.0)


def test_gate_tables_name_their_kind_and_rows():
    unused = (4.0, 0.0, 0.0, 1.0)
    assert Gate("x", A, B).table() == (0, (A.row(), B.row(), unused))
    own = Sigmoid(1.0, -65.0, -6.2)
    assert Gate("x", A, B, inf=own).table() == (2, (own.row(), A.row(), B.row()))
    tau = Sigmoid(4.0, -46.56, 44.14)
    assert InfTauGate("x", own, tau, power=2).table() == (1, (own.row(), tau.row(), unused))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: InfTauGate("m", B, Exponential(-1.0, 0.0, 10.0)), ValueError, "positive"),
        (lambda: InfTauGate("m", B, Linoid(1.0, 0.0, -10.0)), ValueError, "positive"),
        (lambda: InfTauGate("m", B, Sigmoid(0.0, 0.0, 10.0)), ValueError, "positive"),
        (lambda: InfTauGate("m", A, B), ValueError, r"stay in \[0, 1\]"),
        (lambda: InfTauGate("m", Sigmoid(1.5, 0.0, 5.0), B), ValueError, r"stay in \[0, 1\]"),
        (lambda: InfTauGate("m", Softplus(1.0, 1.0, 0.1), B), ValueError, r"stay in \[0, 1\]"),
        (lambda: InfTauGate("m", B, 4.0), TypeError, "rate forms"),
        (lambda: InfTauGate("m", B, B, power=0), ValueError, "int ≥ 1"),
        (lambda: Gate("h", A, B, inf=Constant(2.0)), ValueError, r"stay in \[0, 1\]"),
        (lambda: Kinetics(gates=("m",)), TypeError, "Gate or InfTauGate"),
    ],
)
def test_bad_gates_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_inf_tau_gate_takes_its_steady_state_and_divides_tau_by_phi():
    @dataclass(frozen=True)
    class Relax(RateChannel):
        name: str = "r"

        def param_defaults(self):
            return {"g": 1.0, "e": 0.0}

        def kinetics(self):
            return Kinetics(gates=(InfTauGate("x", Constant(0.25), Constant(2.0)),), phi=2.0)

    inf, tau = Relax().gates(torch.tensor([0.0, 50.0], dtype=torch.float64), {})["x"]
    assert inf.tolist() == [0.25, 0.25] and tau.tolist() == [1.0, 1.0]
