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


def vtrap(x: Tensor, y: float) -> Tensor:
    """``x / (exp(x/y) − 1)``, finite and smooth at ``x = 0`` (NEURON's ``vtrap``).

    Uses ``expm1`` away from 0 and the series ``y (1 − x/(2y))`` where ``|x/y| < 1e-6``, as
    NEURON's ``hh.mod`` does; the unused branch is fed a safe value so gradients stay finite.
    """
    u = x / y
    small = u.abs() < 1e-6
    safe_u = torch.where(small, torch.ones_like(u), u)
    return torch.where(small, y * (1.0 - 0.5 * u), y * safe_u / torch.expm1(safe_u))


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
class Exponential(Rate):
    """``scale·exp(−(v − v_half)/k)``; ``scale`` 1/ms, ``v_half`` and ``k`` mV (``k ≠ 0``)."""

    scale: float
    v_half: float
    k: float
    FORM: ClassVar[int] = 1

    def __post_init__(self):
        _finite(self.scale, self.v_half, self.k)
        if self.k == 0:
            raise ValueError("Exponential: k must not be 0")

    def __call__(self, v):
        return self.scale * torch.exp((self.v_half - v) / self.k)

    def row(self):
        return (float(self.FORM), float(self.scale), float(self.v_half), float(self.k))


@dataclass(frozen=True)
class Sigmoid(Rate):
    """``scale / (1 + exp(−(v − v_half)/k))``; ``scale`` 1/ms, ``v_half`` and ``k`` mV."""

    scale: float
    v_half: float
    k: float
    FORM: ClassVar[int] = 2

    def __post_init__(self):
        _finite(self.scale, self.v_half, self.k)
        if self.k == 0:
            raise ValueError("Sigmoid: k must not be 0")

    def __call__(self, v):
        return self.scale * torch.sigmoid((v - self.v_half) / self.k)

    def row(self):
        return (float(self.FORM), float(self.scale), float(self.v_half), float(self.k))


@dataclass(frozen=True)
class Linoid(Rate):
    """``scale·(v − v_half) / (1 − exp(−(v − v_half)/k))`` (exp-linear); limit ``scale·k`` at
    ``v = v_half``. ``scale`` 1/(ms·mV), ``v_half`` and ``k`` mV."""

    scale: float
    v_half: float
    k: float
    FORM: ClassVar[int] = 3

    def __post_init__(self):
        _finite(self.scale, self.v_half, self.k)
        if self.k == 0:
            raise ValueError("Linoid: k must not be 0")

    def __call__(self, v):
        return self.scale * vtrap(self.v_half - v, self.k)

    def row(self):
        return (float(self.FORM), float(self.scale), float(self.v_half), float(self.k))


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
