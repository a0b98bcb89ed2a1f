"""NEURON's ``hh`` mechanism (exact rates, as with ``usetable_hh = 0``), declared from rate forms."""

from __future__ import annotations

from dataclasses import dataclass

from bayesneuron.channels.base import Channel, Gate, Kinetics, Leak, RateChannel, q10_factor
from bayesneuron.channels.rates import Exponential, Linoid, Sigmoid

__all__ = ["HHPotassium", "HHSodium", "hh_channels"]


@dataclass(frozen=True)
class HHSodium(RateChannel):
    """NEURON ``hh`` sodium ``I = g m³h (V − e)``.

    Parameters ``g_na`` (mS/cm², default 120 = NEURON's 0.12 S/cm²), ``e_na`` (mV, 50).
    ``celsius`` scales both time constants by ``3^((celsius − 6.3)/10)``.
    """

    name: str = "na"
    celsius: float = 6.3

    def param_defaults(self):
        return {"g": 120.0, "e": 50.0}

    def kinetics(self):
        m = Gate("m", Linoid(0.1, -40.0, 10.0), Exponential(4.0, -65.0, 18.0), power=3)
        h = Gate("h", Exponential(0.07, -65.0, 20.0), Sigmoid(1.0, -35.0, 10.0), power=1)
        return Kinetics(gates=(m, h), phi=q10_factor(3.0, self.celsius, 6.3))


@dataclass(frozen=True)
class HHPotassium(RateChannel):
    """NEURON ``hh`` potassium ``I = g n⁴ (V − e)``; ``g_k`` mS/cm² (36), ``e_k`` mV (−77)."""

    name: str = "k"
    celsius: float = 6.3

    def param_defaults(self):
        return {"g": 36.0, "e": -77.0}

    def kinetics(self):
        n = Gate("n", Linoid(0.01, -55.0, 10.0), Exponential(0.125, -65.0, 80.0), power=4)
        return Kinetics(gates=(n,), phi=q10_factor(3.0, self.celsius, 6.3))


def hh_channels(celsius: float = 6.3) -> tuple[Channel, ...]:
    """NEURON's ``hh`` mechanism: Na, K and leak (``g_l`` 0.3 mS/cm², ``e_l`` −54.3 mV)."""
    return (HHSodium(celsius=celsius), HHPotassium(celsius=celsius), Leak(g=0.3, e=-54.3))
