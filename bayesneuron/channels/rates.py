"""Rate forms: opening and closing rates (1/ms) as functions of membrane voltage (mV).

Every gate of a :class:`~bayesneuron.channels.RateChannel` is declared from these objects, once;
the torch backends evaluate them (:meth:`Rate.__call__`) and the fused C kernel reads the same
objects as table rows (:meth:`Rate.row`), so a channel declared from them runs on every backend
with exact gradients and no new code.

| form | rate | typical use |
|---|---|---|
| :class:`Exponential` | ``scale·exp(−(v − v_half)/k)`` | HH ``β_m``, ``α_h`` |
| :class:`Sigmoid` | ``scale / (1 + exp(−(v − v_half)/k))`` | HH ``β_h`` |
| :class:`Linoid` | ``scale·(v − v_half) / (1 − exp(−(v − v_half)/k))`` | HH ``α_m``, ``α_n``, M-current |
| :class:`Softplus` | ``scale·ln(1 + c·exp(k·v))`` | the paper's smooth Traub rates |
| :class:`Constant` | ``scale`` | voltage-independent transitions |

``k`` may be negative (a rate that grows with hyperpolarisation). :class:`Linoid` is the
"exp-linear" form of NEURON's ``vtrap``: finite at ``v = v_half`` (limit ``scale·k``), evaluated
there by a guarded series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

__all__ = ["Constant", "Exponential", "Linoid", "Rate", "Sigmoid", "Softplus", "vtrap"]


# u/(e^u − 1) = Σ B_n u^n / n! (Bernoulli numbers), truncated after u⁸: below |u| = 0.1 the
# next term is < 3e-17 relative, and the closed form's derivative would cancel digits there
_SERIES_BELOW = 0.1
_SERIES = (1.0 / 12.0, -1.0 / 720.0, 1.0 / 30240.0, -1.0 / 1209600.0)  # u², u⁴, u⁶, u⁸


def vtrap(x: Tensor, y: float) -> Tensor:
    """``x / (exp(x/y) − 1)``, finite and smooth at ``x = 0`` (NEURON's ``vtrap``).

    With ``u = x/y``: the Bernoulli series ``y·(1 − u/2 + u²/12 − …)`` where ``|u| < 0.1`` (the
    value and its derivative exact to rounding, also at ``u = 0`` and in float32), elsewhere
    ``y·a/(1 − e^−a)`` times ``e^−a`` for ``u > 0``, ``a = |u|``, which never overflows. Each
    branch is fed a safe value where it is not used, so gradients stay finite everywhere.
    """
    u = x / y
    small = u.abs() < _SERIES_BELOW
    us = torch.where(small, u, torch.zeros_like(u))
    u2 = us * us
    c2, c4, c6, c8 = _SERIES
    series = 1.0 - 0.5 * us + u2 * (c2 + u2 * (c4 + u2 * (c6 + u2 * c8)))
    a = torch.where(small, torch.ones_like(u), u.abs())
    big = a / -torch.expm1(-a)  # u/(e^u − 1) for u = −a
    big = torch.where(u > 0, big * torch.exp(-a), big)  # … and for u = +a
    return y * torch.where(small, series, big)


def _finite(*values: float) -> None:
    for x in values:
        if not (isinstance(x, (int, float)) and math.isfinite(x)):
            raise ValueError(f"rate constants must be finite numbers; got {x!r}")


@dataclass(frozen=True)
class Rate:
    """A rate in 1/ms as a function of voltage in mV. Subclasses are the standard forms."""

    FORM: ClassVar[int] = -1  # the fused kernel's code for this form

    def __call__(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def row(self) -> tuple[float, float, float, float]:
        """``(form, scale, a, b)``: this rate as a row of the fused kernel's rate table."""
        raise NotImplementedError


@dataclass(frozen=True)
class _HalfSlope(Rate):
    """The forms of ``(v − v_half)/k``: ``scale``, ``v_half`` (mV) and ``k`` (mV, ≠ 0)."""

    scale: float
    v_half: float
    k: float

    def __post_init__(self):
        _finite(self.scale, self.v_half, self.k)
        if self.k == 0:
            raise ValueError(f"{type(self).__name__}: k must not be 0")

    def row(self):
        return (float(self.FORM), float(self.scale), float(self.v_half), float(self.k))


@dataclass(frozen=True)
class Exponential(_HalfSlope):
    """``scale·exp(−(v − v_half)/k)``; ``scale`` 1/ms, ``v_half`` and ``k`` mV (``k ≠ 0``)."""

    FORM: ClassVar[int] = 1

    def __call__(self, v):
        return self.scale * torch.exp((self.v_half - v) / self.k)


@dataclass(frozen=True)
class Sigmoid(_HalfSlope):
    """``scale / (1 + exp(−(v − v_half)/k))``; ``scale`` 1/ms, ``v_half`` and ``k`` mV."""

    FORM: ClassVar[int] = 2

    def __call__(self, v):
        return self.scale * torch.sigmoid((v - self.v_half) / self.k)


@dataclass(frozen=True)
class Linoid(_HalfSlope):
    """``scale·(v − v_half) / (1 − exp(−(v − v_half)/k))`` (exp-linear); limit ``scale·k`` at
    ``v = v_half``. ``scale`` 1/(ms·mV), ``v_half`` and ``k`` mV."""

    FORM: ClassVar[int] = 3

    def __call__(self, v):
        return self.scale * vtrap(self.v_half - v, self.k)


@dataclass(frozen=True)
class Softplus(Rate):
    """``scale·ln(1 + c·exp(k·v))``: the paper's smooth rates; ``scale`` 1/ms, ``c > 0``,
    ``k`` 1/mV. Overflow-free (linear beyond an exponent of 40, exact in float64)."""

    scale: float
    c: float
    k: float
    FORM: ClassVar[int] = 0

    def __post_init__(self):
        _finite(self.scale, self.c, self.k)
        if self.c <= 0:
            raise ValueError(f"Softplus: c must be > 0; got {self.c}")

    def __call__(self, v):
        x = v.mul(self.k).add_(math.log(self.c))
        return torch.nn.functional.softplus(x, threshold=40.0).mul_(self.scale)

    def row(self):
        return (float(self.FORM), float(self.scale), float(self.k), math.log(self.c))


@dataclass(frozen=True)
class Constant(Rate):
    """A voltage-independent rate ``scale`` (1/ms)."""

    scale: float
    FORM: ClassVar[int] = 4

    def __post_init__(self):
        _finite(self.scale)

    def __call__(self, v):
        return torch.full_like(v, float(self.scale))

    def row(self):
        return (float(self.FORM), float(self.scale), 0.0, 1.0)
