"""The rate forms (``bayesneuron.channels.rates``) and the declarations built from them
(``Gate``, ``Kinetics``): closed formulas, the Linoid singularity, overflow, bad arguments."""

import math

import numpy as np
import pytest
import torch

from bayesneuron.channels import (
    Constant,
    Exponential,
    Gate,
    HHPotassium,
    HHSodium,
    Kinetics,
    Linoid,
    Rate,
    Sigmoid,
    Softplus,
    q10_factor,
    vtrap,
)

V = np.concatenate([np.linspace(-150.0, 100.0, 2501), [-40.0, -55.0, -30.0, 0.0]])

# form, its closed formula in numpy (float64), the row the fused kernel reads
FORMS = [
    (Exponential(4.0, -65.0, 18.0), lambda v: 4.0 * np.exp(-(v + 65.0) / 18.0)),
    (Exponential(0.193, 0.0, -33.1), lambda v: 0.193 * np.exp(v / 33.1)),
    (Sigmoid(1.0, -35.0, 10.0), lambda v: 1.0 / (1.0 + np.exp(-(v + 35.0) / 10.0))),
    (Sigmoid(0.5, -80.0, -6.0), lambda v: 0.5 / (1.0 + np.exp((v + 80.0) / 6.0))),
    (Linoid(0.1, -40.0, 10.0), lambda v: 0.1 * (v + 40.0) / (1.0 - np.exp(-(v + 40.0) / 10.0))),
    (Linoid(-1e-3, -30.0, -9.0), lambda v: -1e-3 * (v + 30.0) / (1.0 - np.exp((v + 30.0) / 9.0))),
    (Softplus(1.841, 0.102, 0.17), lambda v: 1.841 * np.log1p(0.102 * np.exp(0.17 * v))),
    (Softplus(2.010, 266.087, -0.139), lambda v: 2.010 * np.log1p(266.087 * np.exp(-0.139 * v))),
    (Constant(0.02), lambda v: np.full_like(v, 0.02)),
]


@pytest.mark.parametrize("rate, formula", FORMS, ids=[repr(r) for r, _ in FORMS])
def test_each_form_equals_its_closed_formula(rate, formula):
    v = torch.tensor(V, dtype=torch.float64)
    got = rate(v).numpy()
    away = np.abs(V - getattr(rate, "v_half", np.inf)) > 1e-3  # the formula is 0/0 at v_half
    assert got.shape == V.shape and got.dtype == np.float64
    np.testing.assert_allclose(got[away], formula(V[away]), rtol=1e-13, atol=0)
    assert np.all(np.isfinite(got))


@pytest.mark.parametrize("rate, formula", FORMS, ids=[repr(r) for r, _ in FORMS])
def test_each_form_differentiates_like_its_formula(rate, formula):
    # autograd against a central difference of the closed formula, away from any singularity
    v0 = np.array([-90.0, -62.5, -41.0, -20.0, 15.0])
    v = torch.tensor(v0, dtype=torch.float64, requires_grad=True)
    r = rate(v)
    got = torch.autograd.grad(r.sum(), v)[0] if r.requires_grad else torch.zeros_like(v)
    h = 1e-5
    want = (formula(v0 + h) - formula(v0 - h)) / (2 * h)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-7, atol=1e-15)


def test_rows_name_the_form_and_its_constants():
    # the fused kernel's table rows: (form code, scale, a, b); softplus keeps ln c, not c
    assert Softplus(2.0, 0.5, 0.1).row() == (0.0, 2.0, 0.1, math.log(0.5))
    assert Exponential(4.0, -65.0, 18.0).row() == (1.0, 4.0, -65.0, 18.0)
    assert Sigmoid(1.0, -35.0, 10.0).row() == (2.0, 1.0, -35.0, 10.0)
    assert Linoid(0.1, -40.0, 10.0).row() == (3.0, 0.1, -40.0, 10.0)
    assert Constant(0.25).row() == (4.0, 0.25, 0.0, 1.0)
    assert len({type(r).FORM for r, _ in FORMS}) == 5


@pytest.mark.parametrize("k", [10.0, -9.0, 0.5])
def test_linoid_limit_at_v_half_is_scale_times_k(k):
    rate = Linoid(0.1, -40.0, k)
    for dtype in (torch.float32, torch.float64):
        v = torch.tensor([-40.0], dtype=dtype)
        assert rate(v).item() == pytest.approx(0.1 * k, rel=1e-7)
    # and continuous through it: the closed formula tends to the same value from both sides
    for off in (1e-4, -1e-4):
        v = -40.0 + off
        closed = 0.1 * off / (1.0 - math.exp(-off / k))
        assert rate(torch.tensor([v], dtype=torch.float64)).item() == pytest.approx(
            closed, rel=1e-9
        )


def _linoid_exact(scale, v_half, k, v):
    """Value and dv-derivative of a Linoid at float ``v`` by its Bernoulli series (|u| ≤ 0.2:
    truncation < 1e-20) or by the closed form in float64 elsewhere (no cancellation there)."""
    u = (v_half - v) / k
    if abs(u) <= 0.2:
        b = [
            1.0,
            -1 / 2,
            1 / 12,
            0.0,
            -1 / 720,
            0.0,
            1 / 30240,
            0.0,
            -1 / 1209600,
            0.0,
            1 / 47900160,
        ]
        f = sum(c * u**i for i, c in enumerate(b))
        df = sum(i * c * u ** (i - 1) for i, c in enumerate(b) if i)
    else:
        f = u / math.expm1(u)
        df = 1.0 / math.expm1(u) - u * math.exp(u) / math.expm1(u) ** 2
    return scale * k * f, -scale * df


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
def test_linoid_values_and_gradients_at_and_around_the_singularity(dtype, rtol):
    # finite and accurate at v = v_half and on both sides, where the closed formula is 0/0 and
    # its derivative cancels (no NaN, no loss of digits in float32 either)
    rate = Linoid(0.1, -40.0, 10.0)
    off = np.concatenate([[0.0], np.geomspace(1e-6, 30.0, 80)])
    v = torch.tensor(np.concatenate([-40.0 + off, -40.0 - off[1:]]), dtype=dtype)
    v.requires_grad_(True)
    r = rate(v)
    (dr,) = torch.autograd.grad(r.sum(), v)
    assert torch.isfinite(r).all() and torch.isfinite(dr).all()
    for vi, ri, di in zip(v.detach().double().tolist(), r.tolist(), dr.tolist()):
        f, df = _linoid_exact(0.1, -40.0, 10.0, vi)
        assert ri == pytest.approx(f, rel=rtol), vi
        assert di == pytest.approx(df, rel=max(rtol, 1e-12)), vi


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_form_overflows_to_nan_at_extreme_voltages(dtype):
    # ±200 mV (and far beyond for the Linoid, whose exponent overflows first in float32)
    v = torch.tensor([-1000.0, -200.0, -1e-3, 0.0, 1e-3, 200.0, 1000.0], dtype=dtype)
    v.requires_grad_(True)
    rates = [Softplus(1.841, 0.102, 0.17), Softplus(2.0, 266.0, -0.139), Softplus(1.0, 1.0, 1.0)]
    rates += [Linoid(0.1, -40.0, 1.0), Linoid(-1e-3, -30.0, -1.0), Sigmoid(1.0, -35.0, 1.0)]
    for rate in rates:
        r = rate(v)
        (dr,) = torch.autograd.grad(r.sum(), v)
        assert torch.isfinite(r).all() and torch.isfinite(dr).all(), rate
        assert (r >= 0).all() or (r <= 0).all(), rate
    # Softplus is linear beyond its exponent, exactly: scale·(k·v + ln c) at +200 mV
    sp = Softplus(2.0, 0.5, 1.0)
    assert sp(torch.tensor([200.0], dtype=dtype)).item() == pytest.approx(
        2.0 * (200.0 + math.log(0.5)), rel=1e-6
    )
    assert sp(torch.tensor([-200.0], dtype=torch.float64)).item() == pytest.approx(
        2.0 * 0.5 * math.exp(-200.0), rel=1e-12
    )


def test_vtrap_is_the_linoid_kernel():
    x = torch.tensor([-30.0, -1.0, -1e-3, 0.0, 1e-3, 2.0, 50.0], dtype=torch.float64)
    closed = torch.where(x == 0, torch.full_like(x, 10.0), x / torch.expm1(x / 10.0))
    torch.testing.assert_close(vtrap(x, 10.0), closed, rtol=1e-14, atol=0)
    torch.testing.assert_close(Linoid(0.3, -40.0, 10.0)(-40.0 - x), 0.3 * vtrap(x, 10.0))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Exponential(1.0, -65.0, 0.0), "k must not be 0"),
        (lambda: Sigmoid(1.0, -65.0, 0.0), "k must not be 0"),
        (lambda: Linoid(0.1, -40.0, 0.0), "k must not be 0"),
        (lambda: Softplus(1.0, 0.0, 0.1), "c must be > 0"),
        (lambda: Softplus(1.0, -1.0, 0.1), "c must be > 0"),
        (lambda: Exponential(math.nan, -65.0, 18.0), "finite"),
        (lambda: Sigmoid(1.0, math.inf, 10.0), "finite"),
        (lambda: Linoid(0.1, -40.0, -math.inf), "finite"),
        (lambda: Softplus(1.0, 1.0, math.nan), "finite"),
        (lambda: Constant(math.inf), "finite"),
        (lambda: Constant("0.1"), "finite"),
        (lambda: Linoid(0.1, None, 10.0), "finite"),
    ],
)
def test_bad_constructor_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_forms_are_frozen_values():
    rate = Linoid(0.1, -40.0, 10.0)
    assert rate == Linoid(0.1, -40.0, 10.0) and hash(rate) == hash(Linoid(0.1, -40.0, 10.0))
    with pytest.raises(AttributeError):
        rate.k = 5.0  # type: ignore[misc]
    with pytest.raises(NotImplementedError):
        Rate()(torch.zeros(1))


A, B = Exponential(0.07, -65.0, 20.0), Sigmoid(1.0, -35.0, 10.0)


@pytest.mark.parametrize("power", [0, -1, 1.5, 2.0, "3", True, None])
def test_gate_power_must_be_a_positive_int(power):
    with pytest.raises(ValueError, match="must be an int ≥ 1"):
        Gate("h", A, B, power=power)


def test_gate_takes_rate_forms_only():
    assert Gate("h", A, B, power=4).power == 4
    with pytest.raises(TypeError, match="rate forms"):
        Gate("h", lambda v: v, B)
    with pytest.raises(TypeError, match="rate forms"):
        Gate("h", A, 0.1)


def test_kinetics_refuses_duplicate_gates_and_bad_constants():
    h = Gate("h", A, B)
    with pytest.raises(ValueError, match="distinct"):
        Kinetics(gates=(h, Gate("h", B, A, power=2)))
    for kw in ({"phi": 0.0}, {"phi": -1.0}, {"phi": math.nan}, {"v_shift": math.inf},
               {"eps": math.nan}, {"e_shift": -math.inf}):  # fmt: skip
        with pytest.raises(ValueError, match="phi|finite"):
            Kinetics(gates=(h,), **kw)
    assert Kinetics(gates=(h, Gate("m", A, B, power=3))).gates[1].name == "m"


def test_q10_factor_and_hh_declarations():
    assert q10_factor(3.0, 16.3, 6.3) == pytest.approx(3.0)
    assert q10_factor(2.3, 23.0, 23.0) == 1.0
    assert q10_factor(2.3, 36.0, 23.0) == pytest.approx(2.3**1.3, rel=1e-14)
    kin = HHSodium(celsius=16.3).declared()
    assert [g.name for g in kin.gates] == ["m", "h"] and [g.power for g in kin.gates] == [3, 1]
    assert kin.phi == pytest.approx(3.0) and kin.gates[0].alpha == Linoid(0.1, -40.0, 10.0)
    ch = HHPotassium()
    assert ch.declared() is ch.declared()  # built once per channel object
    assert ch.state_names == ("n",)
