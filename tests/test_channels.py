from dataclasses import dataclass

import numpy as np
import pytest
import torch

from bayesneuron import (
    Cell,
    Channel,
    ChannelError,
    CrankNicolson,
    HHPotassium,
    HHSodium,
    Leak,
    ParameterError,
    Stimulus,
    chain,
    hh_channels,
    paper_channels,
    simulate,
)
from bayesneuron.channels import RateChannel, rates, vtrap
from bayesneuron.simulation import runs_fused

ALL = [
    *hh_channels(),
    *hh_channels(celsius=36.0),
    *paper_channels(),
    *paper_channels(shift_driving_force=False, init_unshifted=False),
]


def _params(ch, dtype):
    return {k: torch.tensor(v, dtype=dtype) for k, v in ch.param_defaults().items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ch", ALL, ids=lambda c: f"{type(c).__name__}")
def test_rates_finite_and_smooth_on_dense_grid(ch, dtype):
    # A grid that hits the removable singularities (-40, -55 mV for HH) exactly.
    v = torch.arange(-20000, 20001, dtype=dtype) / 100.0
    assert torch.any(v == -40.0) and torch.any(v == -55.0)
    v.requires_grad_(True)
    for name, (inf, tau) in ch.gates(v, _params(ch, dtype)).items():
        assert torch.isfinite(inf).all() and torch.isfinite(tau).all(), name
        assert ((inf >= 0) & (inf <= 1)).all() and (tau > 0).all(), name
        (d_inf,) = torch.autograd.grad(inf.sum(), v, retain_graph=True)
        (d_tau,) = torch.autograd.grad(tau.sum(), v)
        assert torch.isfinite(d_inf).all() and torch.isfinite(d_tau).all(), name
        # Smooth: neighbouring values differ by at most a small multiple of the grid step
        # times the largest slope, i.e. no jumps anywhere (incl. at the vtrap branch switch).
        for f, df in ((inf, d_inf), (tau, d_tau)):
            f64, df64 = f.detach().double(), df.double()
            jump = (f64[1:] - f64[:-1]).abs()
            bound = 0.01 * torch.maximum(df64[1:].abs(), df64[:-1].abs()) + 1e-5 * f64.abs().max()
            assert (jump <= bound + 1e-6).all(), name


def test_float32_matches_float64():
    v64 = torch.linspace(-200.0, 200.0, 4001, dtype=torch.float64)
    for ch in ALL:
        g64 = ch.gates(v64, _params(ch, torch.float64))
        g32 = ch.gates(v64.float(), _params(ch, torch.float32))
        for k in g64:
            for a, b in zip(g64[k], g32[k]):
                assert torch.allclose(b.double(), a, rtol=1e-4, atol=1e-6), (ch, k)


def test_vtrap_matches_closed_form_and_series():
    assert vtrap is rates.vtrap  # lives with the rate forms, exported by bayesneuron.channels
    x = torch.tensor([-30.0, -1.0, -1e-3, 1e-3, 2.0, 50.0], dtype=torch.float64)
    assert torch.allclose(vtrap(x, 10.0), x / (torch.exp(x / 10.0) - 1.0), rtol=1e-9)
    zero = torch.zeros(1, dtype=torch.float64)
    assert vtrap(zero, 10.0).item() == pytest.approx(10.0)


@pytest.mark.parametrize("ch", ALL, ids=lambda c: f"{type(c).__name__}")
def test_builtin_channels_are_declared_from_rate_forms(ch):
    # so the fused kernel runs them: the gates come from the declared Kinetics
    assert isinstance(ch, RateChannel)
    kin = ch.declared()
    assert ch.state_names == tuple(g.name for g in kin.gates)
    assert all(isinstance(r, rates.Rate) for g in kin.gates for r in (g.alpha, g.beta))


def test_hh_rates_equal_neuron_formulas():
    # hh.mod: alpha_m = .1*vtrap(-(v+40),10), beta_m = 4*exp(-(v+65)/18), at v = -20 mV.
    v = torch.tensor([-20.0], dtype=torch.float64)
    am = 0.1 * -20.0 / (np.exp(-2.0) - 1.0)
    bm = 4.0 * np.exp(-45.0 / 18.0)
    inf, tau = HHSodium().gates(v, {})["m"]
    assert inf.item() == pytest.approx(am / (am + bm), rel=1e-12)
    assert tau.item() == pytest.approx(1.0 / (am + bm), rel=1e-12)
    # q10 = 3^((celsius-6.3)/10)
    _, tau36 = HHPotassium(celsius=36.0).gates(v, {})["n"]
    _, tau6 = HHPotassium().gates(v, {})["n"]
    assert (tau6 / tau36).item() == pytest.approx(3.0**2.97, rel=1e-12)


def test_paper_initial_gates_at_unshifted_v0():
    # paper-model.md §1.5: m0 = 2.49e-7, n0 = 9.71e-8, h0 = 1 - 2e-9 at V0 = -60.
    na, k, _ = paper_channels()
    v0 = torch.tensor([-60.0], dtype=torch.float64)
    m0 = na.init_gates(v0, {})["m"].item()
    n0 = k.init_gates(v0, {})["n"].item()
    h0 = na.init_gates(v0, {})["h"].item()
    assert m0 == pytest.approx(2.49e-7, rel=0.01)
    assert n0 == pytest.approx(9.71e-8, rel=0.01)
    assert 1 - h0 == pytest.approx(2e-9, rel=0.05)
    # Reference values at Vs = -10.8 (§1.1): m_inf 0.0021, tau_m 0.070, tau_n 1.85/2.
    g = {**na.gates(v0, {}), **k.gates(v0, {})}
    assert g["m"][0].item() == pytest.approx(0.0021, rel=0.05)
    assert g["m"][1].item() == pytest.approx(0.070, rel=0.02)
    assert g["n"][1].item() == pytest.approx(1.85 / 2, rel=0.02)


@dataclass(frozen=True)
class SlowK(Channel):
    """A user-written M-type K channel: one state, sigmoidal steady state, 100 ms."""

    name: str = "km"
    state_names = ("w",)

    def param_defaults(self):
        return {"g": 2.0, "e": -90.0}

    def gates(self, v, p):
        return {"w": (torch.sigmoid((v + 35.0) / 5.0), torch.full_like(v, 100.0))}

    def conductance(self, x, p):
        return p["g"] * x["w"], p["e"]


def test_custom_channel_runs_and_acts():
    # a plain Channel subclass (its own gates, no rate forms) runs on the torch backend
    cell = Cell(chain(1), (*hh_channels(), SlowK()), v0=-65.0)
    assert "g_km" in cell.param_names
    assert not isinstance(SlowK(), RateChannel) and not runs_fused(cell, CrankNicolson())
    vals = torch.full((1, 1, 400), 15.0, dtype=torch.float64)
    stim = Stimulus(vals, dt=0.25)
    with_km = simulate(cell, None, stim).v
    without = simulate(cell, {"g_km": 0.0}, stim).v
    spikes = lambda v: int(((v[..., 1:] > 0) & (v[..., :-1] <= 0)).sum())  # noqa: E731
    assert spikes(with_km) < spikes(without)  # adaptation current removes spikes


def test_cell_rejects_bad_channels_and_params():
    with pytest.raises(ChannelError, match="distinct"):
        Cell(chain(2), (Leak(), Leak()))
    with pytest.raises(ChannelError, match="not a Channel"):
        Cell(chain(2), ("hh",))
    with pytest.raises(ParameterError, match="unknown parameter 'g_nap'"):
        Cell(chain(2), hh_channels(), params={"g_nap": 1.0})
    with pytest.raises(ParameterError, match=r"shape \(3,\).*\(2,\)"):
        Cell(chain(2), hh_channels(), params={"g_na": [1.0, 2.0, 3.0]})
