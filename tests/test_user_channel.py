"""Channels a user declares from rate forms, in this file only, run on the fused C kernel with
exact gradients and sensitivities: the same voltages and derivatives as the torch backend.

An M-type K current (Mainen & Sejnowski 1996, ``km.mod``, with its q10 temperature factor), an
h-current (HCN: opens with hyperpolarisation, reversal −45 mV) and an A-type K current whose
gates use constant rates, on NEURON's ``hh`` tree together with HH Na, K and leak."""

import math
import os
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from bayesneuron import (
    Cell,
    CrankNicolson,
    from_sections,
    hh_channels,
    sensitivities,
    simulate,
    step_current,
)
from bayesneuron.channels import (
    Constant,
    Exponential,
    Gate,
    Kinetics,
    Linoid,
    RateChannel,
    Sigmoid,
    q10_factor,
)
from bayesneuron.reference.cells import hh_tree_sections
from bayesneuron.simulation import runs_fused

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler for the fused kernel"
)


@dataclass(frozen=True)
class MCurrent(RateChannel):
    """``km.mod``: ``α = 1e-3·(v + 30)/(1 − e^−(v+30)/9)``, ``β = −1e-3·(v + 30)/(1 − e^(v+30)/9)``
    (1/ms), ``τ = 1/(tadj·(α + β))`` with ``tadj = 2.3^((celsius − 23)/10)``; ``I = g n (V − e)``."""

    name: str = "km"
    celsius: float = 36.0

    def param_defaults(self):
        return {"g": 3.0, "e": -90.0}

    def kinetics(self):
        n = Gate("n", Linoid(1e-3, -30.0, 9.0), Linoid(-1e-3, -30.0, -9.0), power=1)
        return Kinetics(gates=(n,), phi=q10_factor(2.3, self.celsius, 23.0))


@dataclass(frozen=True)
class HCurrent(RateChannel):
    """HCN-like: ``α = 0.02·e^−(v+80)/12`` grows with hyperpolarisation, ``β = 0.2/(1 +
    e^−(v+60)/10)`` with depolarisation; ``I = g q (V − e)``, ``e = −45`` mV."""

    name: str = "h"

    def param_defaults(self):
        return {"g": 2.0, "e": -45.0}

    def kinetics(self):
        q = Gate("q", Exponential(0.02, -80.0, 12.0), Sigmoid(0.2, -60.0, 10.0))
        return Kinetics(gates=(q,))


@dataclass(frozen=True)
class ACurrent(RateChannel):
    """A-type K with two gates: activation ``a`` (sigmoidal opening, constant closing, ``a³``),
    inactivation ``b`` (constant opening, sigmoidal closing); ``I = g a³ b (V − e)``."""

    name: str = "ka"

    def param_defaults(self):
        return {"g": 3.0, "e": -80.0}

    def kinetics(self):
        a = Gate("a", Sigmoid(1.0, -45.0, 10.0), Constant(0.5), power=3)
        b = Gate("b", Constant(0.02), Sigmoid(0.2, -60.0, 6.0))
        return Kinetics(gates=(a, b))


USER = ("km", "h", "ka")
CELL = Cell(
    from_sections(hh_tree_sections(), ra=100.0, cm=1.0, nseg=1),
    (*hh_channels(), MCurrent(), HCurrent(), ACurrent()),
    v0=-65.0,
)
STIM = step_current([0.2, 0.5], 0, CELL.n_comp, delay=1.0, duration=23.0, t_stop=25.0, dt=1.0)
T = np.arange(0.0, 25.0 + 1e-9, 0.25)
DT = 0.025


def _spikes(v):
    """Upward crossings of 0 mV at the soma, per trace."""
    s = v[..., 0, :]
    return ((s[..., 1:] > 0) & (s[..., :-1] <= 0)).sum(-1).tolist()


@pytest.fixture(scope="module")
def runs():
    """Voltages and d(Σ w·V)/d(every g and e) from both backends, and the weights ``w``."""
    out = {}
    w = None
    for backend in ("fused", "torch"):
        p = {k: torch.tensor(x, requires_grad=True) for k, x in CELL.params.items()}
        v = simulate(CELL, p, STIM, T, CrankNicolson(dt=DT, backend=backend)).v
        if w is None:
            w = torch.randn(v.shape, generator=torch.Generator().manual_seed(7), dtype=v.dtype)
        grads = torch.autograd.grad((w * v).sum(), list(p.values()))
        out[backend] = (v.detach(), dict(zip(p, grads)))
    return out, w


def test_user_channels_are_declared_from_rate_forms_and_run_fused():
    assert {f"{k}_{c}" for c in USER for k in ("g", "e")} <= set(CELL.param_names)
    assert runs_fused(CELL, CrankNicolson())
    assert CELL.channels[3].state_names == ("n",) and CELL.channels[5].state_names == ("a", "b")


def test_m_current_equals_mainen_sejnowski_formulas_with_q10():
    v = np.linspace(-100.0, 40.0, 141)
    v = v[np.abs(v + 30.0) > 0.5]  # the formulas are 0/0 at −30 mV (checked below)
    a = 1e-3 * (v + 30.0) / (1.0 - np.exp(-(v + 30.0) / 9.0))
    b = -1e-3 * (v + 30.0) / (1.0 - np.exp((v + 30.0) / 9.0))
    tadj = 2.3 ** ((36.0 - 23.0) / 10.0)
    ninf, ntau = MCurrent().gates(torch.tensor(v, dtype=torch.float64), {})["n"]
    np.testing.assert_allclose(ninf.numpy(), a / (a + b), rtol=1e-12)
    np.testing.assert_allclose(ntau.numpy(), 1.0 / (tadj * (a + b)), rtol=1e-12)
    # at v_half both rates are 1e-3·9 (the Linoid limit): n∞ = 1/2, τ = 1/(tadj·0.018)
    inf30, tau30 = MCurrent().gates(torch.tensor([-30.0], dtype=torch.float64), {})["n"]
    assert inf30.item() == pytest.approx(0.5, rel=1e-14)
    assert tau30.item() == pytest.approx(1.0 / (tadj * 0.018), rel=1e-14)
    # the temperature factor: τ scales by 2.3 per 10 °C
    _, tau23 = MCurrent(celsius=23.0).gates(torch.tensor([-30.0], dtype=torch.float64), {})["n"]
    assert (tau23 / tau30).item() == pytest.approx(tadj, rel=1e-14)


def test_h_current_opens_with_hyperpolarisation():
    v = torch.tensor([-110.0, -90.0, -70.0, -50.0], dtype=torch.float64)
    qinf, _ = HCurrent().gates(v, {})["q"]
    assert (qinf.diff() < 0).all() and qinf[0] > 0.9 and qinf[-1] < 0.05
    al = 0.02 * torch.exp(-(v + 80.0) / 12.0)
    be = 0.2 / (1.0 + torch.exp(-(v + 60.0) / 10.0))
    torch.testing.assert_close(qinf, al / (al + be), rtol=1e-14, atol=0)


def test_voltages_equal_the_torch_backend(runs):
    (v_f, _), (v_t, _) = runs[0]["fused"], runs[0]["torch"]
    assert v_f.shape == (2, CELL.n_comp, len(T))
    assert (v_f - v_t).abs().max() <= 1e-9 * v_t.abs().max()


@pytest.mark.parametrize("name", [f"{k}_{c}" for c in ("na", "k", "l", *USER) for k in "ge"])
def test_gradients_of_every_g_and_e_equal_the_torch_backend(runs, name):
    g_f, g_t = runs[0]["fused"][1][name], runs[0]["torch"][1][name]
    assert g_f.shape == (CELL.n_comp,) and g_t.abs().max() > 0
    assert (g_f - g_t).abs().max() <= 1e-9 * g_t.abs().max()


def test_the_cell_spikes_and_the_user_channels_matter(runs):
    v = runs[0]["fused"][0]
    assert v.max() > 20.0 and min(_spikes(v)) >= 1
    solver = CrankNicolson(dt=DT)
    for ch in USER:
        without = simulate(CELL, {f"g_{ch}": 0.0}, STIM, T, solver).v
        assert (without - v).abs().max() > 10.0, ch  # mV
    # the M-current adapts: without it the stronger step fires more
    without_km = simulate(CELL, {"g_km": 0.0}, STIM, T, solver).v
    assert sum(_spikes(without_km)) > sum(_spikes(v))


def test_sensitivities_equal_torch_autograd_and_finite_differences(runs):
    wrt = ("g_km", "g_h", "g_ka", "g_na")
    v, jac = sensitivities(CELL, None, STIM, T, CrankNicolson(dt=DT), wrt=wrt)
    n = CELL.n_comp
    assert torch.equal(v, runs[0]["fused"][0])
    assert jac.shape == (2, len(wrt) * n, n, len(T))
    # Jᵀw summed over traces is the torch backend's gradient of Σ w·V
    w = runs[1]
    jtw = (jac * w.unsqueeze(-3)).sum((0, -1, -2))
    for a, name in enumerate(wrt):
        ref = runs[0]["torch"][1][name]
        assert (jtw[a * n : (a + 1) * n] - ref).abs().max() <= 1e-9 * ref.abs().max(), name
    # a column by central differences of the fused simulation: ∂V/∂g_km at the soma
    h, soma = 1e-4, (torch.arange(n) == 0).double()
    g_km, solver = torch.tensor(CELL.params["g_km"]), CrankNicolson(dt=DT)
    v_up = simulate(CELL, {"g_km": g_km + h * soma}, STIM, T, solver).v
    v_down = simulate(CELL, {"g_km": g_km - h * soma}, STIM, T, solver).v
    fd = (v_up - v_down) / (2 * h)
    col = jac[:, 0]
    assert col.abs().max() > 1.0 and math.isfinite(float(col.abs().max()))
    assert (fd - col).abs().max() <= 1e-5 * col.abs().max()
