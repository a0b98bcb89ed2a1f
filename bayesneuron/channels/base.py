"""Channels: pure kinetics, no tensors owned, no morphology.

A channel has a ``name`` (``"na"``), local parameters with defaults (``{"g": 120.0, "e": 50.0}``,
seen by the cell as ``g_na``, ``e_na``), gating states, and two functions of voltage:

* ``gates(v, p)`` → ``{state: (x_inf, tau)}`` — steady state (1) and time constant (ms);
  every state obeys ``dx/dt = (x_inf − x) / tau``;
* ``conductance(x, p)`` → ``(g, e)`` — conductance (mS/cm²) and reversal (mV) of an ohmic
  current ``I = g · (V − e)`` in µA/cm².

Units: V mV, t ms, conductance mS/cm² (NEURON's S/cm² × 1000), current µA/cm².

Declare a channel from rate forms (:mod:`bayesneuron.channels.rates`) with a
:class:`RateChannel` and it runs on every backend, the fused C kernel included, with exact
gradients::

    @dataclass(frozen=True)
    class MCurrent(RateChannel):
        name: str = "km"

        def param_defaults(self):
            return {"g": 0.3, "e": -90.0}

        def kinetics(self):
            n = Gate("n", Linoid(1e-3, -30.0, 9.0), Linoid(-1e-3, -30.0, -9.0), power=1)
            return Kinetics(gates=(n,), phi=q10_factor(2.3, celsius=36.0, base=23.0))

A channel with other kinetics subclasses :class:`Channel` and writes ``gates`` and
``conductance`` itself; it runs on the torch backends only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from bayesneuron.channels.rates import Rate

__all__ = ["Channel", "Gate", "Kinetics", "Leak", "RateChannel", "q10_factor"]

Gates = dict[str, tuple[Tensor, Tensor]]


class Channel:
    """Base class for channels; subclasses are small frozen dataclasses.

    Subclasses set ``name`` and ``state_names`` and implement :meth:`param_defaults`,
    :meth:`gates` and :meth:`conductance`; override :meth:`init_gates` only where states do
    not start at steady state.
    """

    name: str = ""
    state_names: ClassVar[tuple[str, ...]] = ()

    def param_defaults(self) -> dict[str, float]:
        """Local parameter names → default values (units in the subclass docstring)."""
        raise NotImplementedError

    def gates(self, v: Tensor, p: dict[str, Tensor]) -> Gates:
        """``{state: (x_inf, tau_ms)}`` at membrane voltage ``v`` (mV)."""
        return {}

    def init_gates(self, v: Tensor, p: dict[str, Tensor]) -> dict[str, Tensor]:
        """Initial states at voltage ``v``: the steady state by default."""
        return {k: inf for k, (inf, _) in self.gates(v, p).items()}

    def conductance(self, x: dict[str, Tensor], p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(g, e)``: conductance in mS/cm² and reversal potential in mV."""
        raise NotImplementedError

    def param_names(self) -> tuple[str, ...]:
        """Parameter names as the cell sees them (``g_na``, ``e_na``, …)."""
        return tuple(f"{k}_{self.name}" for k in self.param_defaults())


def q10_factor(q10: float, celsius: float, base: float) -> float:
    """Temperature factor ``q10^((celsius − base)/10)`` for :attr:`Kinetics.phi`."""
    return float(q10) ** ((float(celsius) - float(base)) / 10.0)


@dataclass(frozen=True)
class Gate:
    """One gating variable ``x`` with ``dx/dt = φ·(α(1 − x) − βx)``, entering ``G`` as ``x^power``.

    Args:
        name: state name (``"m"``).
        alpha, beta: opening and closing rates (1/ms), :class:`~bayesneuron.channels.rates.Rate`.
        power: integer exponent of the gate in the conductance (≥ 1).
    """

    name: str
    alpha: Rate
    beta: Rate
    power: int = 1

    def __post_init__(self):
        if not (isinstance(self.alpha, Rate) and isinstance(self.beta, Rate)):
            raise TypeError(f"gate {self.name!r}: alpha and beta must be rate forms (Rate)")
        if isinstance(self.power, bool) or not (isinstance(self.power, int) and self.power >= 1):
            raise ValueError(f"gate {self.name!r}: power = {self.power!r} must be an int ≥ 1")


@dataclass(frozen=True)
class Kinetics:
    """The gates of a :class:`RateChannel` and how they see the voltage.

    Per gate, with ``s = α(V + v_shift) + β(V + v_shift) + eps``:
    ``x_inf = α/s`` and ``τ = 1/(φ·s)`` (ms).

    Args:
        gates: the gates, in the order of the conductance's product ``G = g·Π x^power``.
        phi: temperature factor multiplying ``1/τ`` (see :func:`q10_factor`).
        v_shift: mV added to ``V`` before the rates are evaluated.
        eps: 1/ms added to ``α + β`` (the paper's ``1e-8``).
        e_shift: mV subtracted from the reversal in the driving force, ``g (V − (e − e_shift))``.
        init_shift: mV added to ``V`` for the initial steady state (default: ``v_shift``).
    """

    gates: tuple[Gate, ...]
    phi: float = 1.0
    v_shift: float = 0.0
    eps: float = 0.0
    e_shift: float = 0.0
    init_shift: float | None = None

    def __post_init__(self):
        names = [g.name for g in self.gates]
        if len(set(names)) != len(names):
            raise ValueError(f"gate names must be distinct; got {names}")
        for k in ("phi", "v_shift", "eps", "e_shift"):
            if not math.isfinite(getattr(self, k)):
                raise ValueError(f"Kinetics.{k} must be finite")
        if self.phi <= 0:
            raise ValueError(f"Kinetics.phi = {self.phi} must be > 0")


class RateChannel(Channel):
    """A channel declared from rate forms: ``I = g·Π x^power·(V − (e − e_shift))``.

    Subclasses (frozen dataclasses) set ``name`` and implement :meth:`param_defaults` (``g`` in
    mS/cm², ``e`` in mV) and :meth:`kinetics`; gates, steady states and conductance follow, and
    the fused C kernel packs its tables from the same :class:`Kinetics` (at most two gates per
    channel there, with powers ≤ 4; other channels run on the torch backends).
    """

    def kinetics(self) -> Kinetics:
        """The channel's gates and voltage conventions (the hook subclasses write)."""
        raise NotImplementedError

    def declared(self) -> Kinetics:
        """:meth:`kinetics`, checked and built once per channel object."""
        kin = self.__dict__.get("_declared")
        if kin is None:
            kin = self.kinetics()
            if not isinstance(kin, Kinetics):
                raise TypeError(
                    f"{type(self).__name__}.kinetics() must return a Kinetics, got "
                    f"{type(kin).__name__}"
                )
            self.__dict__["_declared"] = kin  # frozen dataclasses: bypass __setattr__
        return kin

    @property
    def state_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(g.name for g in self.declared().gates)

    def _inf_tau(self, kin: Kinetics, vs: Tensor) -> Gates:
        out = {}
        for gate in kin.gates:
            alpha = gate.alpha(vs)
            rs = (alpha + gate.beta(vs)).add_(kin.eps).reciprocal_()
            out[gate.name] = (alpha * rs, rs if kin.phi == 1.0 else rs / kin.phi)
        return out

    def gates(self, v, p):
        kin = self.declared()
        return self._inf_tau(kin, v + kin.v_shift if kin.v_shift else v)

    def init_gates(self, v, p):
        kin = self.declared()
        shift = kin.v_shift if kin.init_shift is None else kin.init_shift
        return {k: inf for k, (inf, _) in self._inf_tau(kin, v + shift if shift else v).items()}

    def conductance(self, x, p):
        kin = self.declared()
        g = p["g"]
        for gate in kin.gates:
            g = g * x[gate.name] ** gate.power
        return g, (p["e"] - kin.e_shift if kin.e_shift else p["e"])


@dataclass(frozen=True)
class Leak(RateChannel):
    """Passive leak ``I = g (V + v_shift − e)``; ``g`` mS/cm², ``e`` mV."""

    name: str = "l"
    g: float = 0.3
    e: float = -54.3
    v_shift: float = 0.0

    def param_defaults(self):
        return {"g": self.g, "e": self.e}

    def kinetics(self):
        return Kinetics(gates=(), e_shift=self.v_shift)
