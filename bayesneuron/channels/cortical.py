"""Channels of cortical pyramidal cells, declared from rate forms (so every backend runs them,
the fused C kernel included, with exact gradients), each with the published kinetics it cites.

| class | name | current | kinetics from |
|---|---|---|---|
| :class:`NaT` | ``na`` | transient Na, ``g m³h (V − e)`` | Mainen & Sejnowski 1996, ``na.mod`` |
| :class:`Kdr` | ``kdr`` | delayed-rectifier K, ``g n (V − e)`` | Mainen & Sejnowski 1996, ``kv.mod`` |
| :class:`Kv31` | ``kv31`` | Kv3.1 fast K, ``g m (V − e)`` | Rettig et al. 1992 via Hay et al. 2011, ``SKv3_1.mod`` |
| :class:`Km` | ``km`` | M-type K, ``g n (V − e)`` | Mainen & Sejnowski 1996, ``km.mod`` |
| :class:`Ih` | ``ih`` | h-current (HCN), ``g m (V − e)`` | Kole, Hallermann & Stuart 2006, ``Ih.mod`` of Hay et al. 2011 |
| :class:`~bayesneuron.channels.Leak` | ``l`` | leak | — |

Units as everywhere: ``g`` mS/cm² (NEURON's S/cm² × 1000; a ``pS/µm²`` is 0.1 mS/cm²), ``e`` mV,
``celsius`` and ``temp`` °C. Temperature: every time constant is divided by
``q10^((celsius − temp)/10)`` (:func:`~bayesneuron.channels.q10_factor`).

Mainen & Sejnowski's files also multiply ``gbar`` by that factor; here ``g`` is the conductance
itself, so ``g = tadj·gbar`` reproduces theirs (a constant reparametrisation of what is inferred).
Their rate tables (``TABLE … FROM vmin TO vmax``) are not used: rates are evaluated exactly, as
NEURON does with ``usetable = 0``. ``tests/reference/mod/`` holds NMODL files of exactly these
kinetics, against which ``tests/test_cortical_channels.py`` checks every channel.

Mainen ZF, Sejnowski TJ (1996) Influence of dendritic structure on firing pattern in model
neocortical neurons. Nature 382:363–366 (ModelDB 2488).
Rettig J, Wunder F, Stocker M, et al. (1992) Characterization of a Shaw-related potassium channel
family in rat brain. EMBO J 11:2473–2486.
Kole MHP, Hallermann S, Stuart GJ (2006) Single Ih channels in pyramidal neuron dendrites:
properties, distribution, and impact on action potential output. J Neurosci 26:1677–1687.
Hay E, Hill S, Schürmann F, Markram H, Segev I (2011) Models of neocortical layer 5b pyramidal
cells capturing a wide range of dendritic and perisomatic active properties. PLoS Comput Biol
7:e1002107 (ModelDB 139653).
"""

from __future__ import annotations

from dataclasses import dataclass

from bayesneuron.channels.base import (
    Channel,
    Gate,
    InfTauGate,
    Kinetics,
    Leak,
    RateChannel,
    q10_factor,
)
from bayesneuron.channels.rates import Exponential, Linoid, Sigmoid

__all__ = ["Ih", "Kdr", "Km", "Kv31", "NaT", "cortical_channels"]


@dataclass(frozen=True)
class _Tempered(RateChannel):
    """A channel whose time constants scale by ``q10^((celsius − temp)/10)``.

    Attributes:
        celsius: simulation temperature (°C).
        q10: temperature coefficient of the rates.
        temp: temperature (°C) at which the published kinetics hold.
    """

    celsius: float = 37.0
    q10: float = 2.3
    temp: float = 23.0

    def temperature_factor(self) -> float:
        """The temperature factor multiplying every ``1/τ``."""
        return q10_factor(self.q10, self.celsius, self.temp)


@dataclass(frozen=True)
class NaT(_Tempered):
    """Transient Na ``I = g m³h (V − e)``, Mainen & Sejnowski (1996) ``na.mod``.

    Rates at ``vm = V + v_shift`` (1/ms), ``trap0(v, th, a, q) = a(v − th)/(1 − e^−(v−th)/q)``:
    ``α_m = trap0(vm, −35, 0.182, 9)``, ``β_m = trap0(−vm, 35, 0.124, 9)``,
    ``α_h = trap0(vm, −50, 0.024, 5)``, ``β_h = trap0(−vm, 75, 0.0091, 5)``; ``m∞ = α_m/(α_m +
    β_m)``, but ``h∞ = 1/(1 + e^((vm + 65)/6.2))`` (its own steady state); ``τ = 1/(φ(α + β))``,
    ``φ = 2.3^((celsius − 23)/10)``. Parameters ``g_na`` (mS/cm², 40), ``e_na`` (mV, 50).

    Attributes:
        v_shift: mV added to ``V`` in every rate (``vshift`` of ``na.mod``, −10).
    """

    name: str = "na"
    v_shift: float = -10.0

    def param_defaults(self):
        return {"g": 40.0, "e": 50.0}

    def kinetics(self):
        m = Gate("m", Linoid(0.182, -35.0, 9.0), Linoid(-0.124, -35.0, -9.0), power=3)
        h = Gate(
            "h",
            Linoid(0.024, -50.0, 5.0),
            Linoid(-0.0091, -75.0, -5.0),
            inf=Sigmoid(1.0, -65.0, -6.2),
        )
        return Kinetics(gates=(m, h), phi=self.temperature_factor(), v_shift=self.v_shift)


@dataclass(frozen=True)
class Kdr(_Tempered):
    """Delayed-rectifier K ``I = g n (V − e)``, Mainen & Sejnowski (1996) ``kv.mod``.

    ``α = 0.02(v − 25)/(1 − e^−(v−25)/9)``, ``β = −0.002(v − 25)/(1 − e^(v−25)/9)`` (1/ms),
    ``n∞ = α/(α + β)``, ``τ = 1/(φ(α + β))``, ``φ = 2.3^((celsius − 23)/10)``. Parameters
    ``g_kdr`` (mS/cm², 20), ``e_kdr`` (mV, −90).
    """

    name: str = "kdr"

    def param_defaults(self):
        return {"g": 20.0, "e": -90.0}

    def kinetics(self):
        n = Gate("n", Linoid(0.02, 25.0, 9.0), Linoid(-0.002, 25.0, -9.0))
        return Kinetics(gates=(n,), phi=self.temperature_factor())


@dataclass(frozen=True)
class Km(_Tempered):
    """M-type K ``I = g n (V − e)``, Mainen & Sejnowski (1996) ``km.mod``.

    ``α = 10⁻³(v + 30)/(1 − e^−(v+30)/9)``, ``β = −10⁻³(v + 30)/(1 − e^(v+30)/9)`` (1/ms),
    ``n∞ = α/(α + β)``, ``τ = 1/(φ(α + β))``, ``φ = 2.3^((celsius − 23)/10)``. Parameters
    ``g_km`` (mS/cm², 0.5), ``e_km`` (mV, −90).
    """

    name: str = "km"

    def param_defaults(self):
        return {"g": 0.5, "e": -90.0}

    def kinetics(self):
        n = Gate("n", Linoid(1e-3, -30.0, 9.0), Linoid(-1e-3, -30.0, -9.0))
        return Kinetics(gates=(n,), phi=self.temperature_factor())


@dataclass(frozen=True)
class Kv31(_Tempered):
    """Kv3.1-type fast K ``I = g m (V − e)``: Rettig et al. (1992) as in Hay et al. (2011)
    ``SKv3_1.mod``, a gate published as steady state and time constant (:class:`InfTauGate`).

    ``m∞ = 1/(1 + e^−(v−18.7)/9.7)``, ``τ = 4/(1 + e^−(v+46.56)/44.14)/φ`` (ms). Hay et al. use
    these kinetics unscaled at 34 °C, so ``q10`` defaults to 1 (no temperature dependence, as
    in the source); a ``q10`` other than 1 scales ``τ`` from ``temp`` = 34 °C. Parameters
    ``g_kv31`` (mS/cm², 10), ``e_kv31`` (mV, −90).
    """

    name: str = "kv31"
    q10: float = 1.0
    temp: float = 34.0

    def param_defaults(self):
        return {"g": 10.0, "e": -90.0}

    def kinetics(self):
        m = InfTauGate("m", Sigmoid(1.0, 18.7, 9.7), Sigmoid(4.0, -46.56, 44.14))
        return Kinetics(gates=(m,), phi=self.temperature_factor())


@dataclass(frozen=True)
class Ih(_Tempered):
    """h-current (HCN) ``I = g m (V − e)``: Kole, Hallermann & Stuart (2006), ``Ih.mod`` of Hay
    et al. (2011).

    ``α = 0.00643(v + 154.9)/(e^((v+154.9)/11.9) − 1)``, ``β = 0.193·e^(v/33.1)`` (1/ms),
    ``m∞ = α/(α + β)`` (opens with hyperpolarisation), ``τ = 1/(φ(α + β))``. The source has no
    temperature dependence (used at 34 °C), so ``q10`` defaults to 1; another ``q10`` scales
    ``τ`` from ``temp`` = 34 °C. Parameters ``g_ih`` (mS/cm², 0.1), ``e_ih`` (mV, −45).
    """

    name: str = "ih"
    q10: float = 1.0
    temp: float = 34.0

    def param_defaults(self):
        return {"g": 0.1, "e": -45.0}

    def kinetics(self):
        m = Gate("m", Linoid(-0.00643, -154.9, -11.9), Exponential(0.193, 0.0, -33.1))
        return Kinetics(gates=(m,), phi=self.temperature_factor())


def cortical_channels(celsius: float = 37.0) -> tuple[Channel, ...]:
    """The library at one temperature: ``NaT``, ``Kdr``, ``Kv31``, ``Km``, ``Ih`` and a leak
    (``g_l`` 0.05 mS/cm², ``e_l`` −70 mV), each with its default parameters.

    Example:
        >>> from bayesneuron import Cell, chain
        >>> cell = Cell(chain(1), cortical_channels(), v0=-70.0)
        >>> [p for p in cell.param_names if p.startswith("g_")]
        ['g_na', 'g_kdr', 'g_kv31', 'g_km', 'g_ih', 'g_l']
    """
    return (
        NaT(celsius=celsius),
        Kdr(celsius=celsius),
        Kv31(celsius=celsius),
        Km(celsius=celsius),
        Ih(celsius=celsius),
        Leak(g=0.05, e=-70.0),
    )
