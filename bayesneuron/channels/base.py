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

Gates published as steady state and time constant are :class:`InfTauGate` s; a gate with
α/β time constants but its own steady state is a :class:`Gate` with ``inf``.

A channel with other kinetics subclasses :class:`Channel` and writes ``gates`` and
``conductance`` itself; it runs on the torch backends only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from bayesneuron.channels.rates import Constant, Linoid, Rate, Sigmoid

__all__ = ["Channel", "Gate", "InfTauGate", "Kinetics", "Leak", "RateChannel", "q10_factor"]

Gates = dict[str, tuple[Tensor, Tensor]]
_UNUSED_ROW = Constant(0.0).row()  # fills a gate's third rate-table row where it has none


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
    """One gating variable ``x`` with ``dx/dt = φ·(α(1 − x) − βx)``, entering ``G`` as ``x^power``
    (with an own ``inf``: ``dx/dt = φ·(α + β)·(inf − x)``).

    Args:
        name: state name (``"m"``).
        alpha, beta: opening and closing rates (1/ms), :class:`~bayesneuron.channels.rates.Rate`.
        power: integer exponent of the gate in the conductance (≥ 1).
        inf: an own steady state (dimensionless rate form, e.g. ``Sigmoid(1.0, -65.0, -6.2)``):
            ``x∞ = inf(V)`` instead of ``α/(α + β)``, with ``τ = 1/(φ·(α + β))`` still — the
            inactivation gate of Mainen & Sejnowski's ``na.mod``. ``None`` (default): ``α/(α + β)``.
    """

    name: str
    alpha: Rate
    beta: Rate
    power: int = 1
    inf: Rate | None = None

    def __post_init__(self):
        if not (isinstance(self.alpha, Rate) and isinstance(self.beta, Rate)):
            raise TypeError(f"gate {self.name!r}: alpha and beta must be rate forms (Rate)")
        _check_power(self.name, self.power)
        if self.inf is not None:
            _check_inf(self.name, self.inf)

    def table(self) -> tuple[int, tuple[tuple[float, ...], ...]]:
        """``(kind, rows)``: the fused kernel's gate kind (0: α/β, 2: own ``inf`` with α + β)
        and its three rate-table rows (:meth:`Rate.row`; an unused row is a zero constant)."""
        if self.inf is None:
            return 0, (self.alpha.row(), self.beta.row(), _UNUSED_ROW)
        return 2, (self.inf.row(), self.alpha.row(), self.beta.row())

    def inf_tau(self, vs: Tensor, eps: float = 0.0, phi: float = 1.0) -> tuple[Tensor, Tensor]:
        """``(x∞, τ)`` at the (shifted) voltage ``vs`` in mV; τ in ms."""
        alpha = self.alpha(vs)
        rs = (alpha + self.beta(vs)).add_(eps).reciprocal_()
        inf = alpha * rs if self.inf is None else self.inf(vs)
        return inf, (rs if phi == 1.0 else rs / phi)


@dataclass(frozen=True)
class InfTauGate:
    """A gate given by its steady state and time constant: ``dx/dt = φ·(x∞(V) − x)/τ(V)``.

    For kinetics published as ``x∞``/``τ`` (e.g. Kv3.1 of Rettig et al. 1992 as in Hay et al.
    2011, ``mInf = 1/(1 + e^−(v−18.7)/9.7)``, ``mTau = 4/(1 + e^−(v+46.56)/44.14)``):
    ``InfTauGate("m", Sigmoid(1.0, 18.7, 9.7), Sigmoid(4.0, -46.56, 44.14))``.

    Args:
        name: state name.
        inf: steady state, a rate form bounded in [0, 1] (:class:`Sigmoid` with
            ``0 < scale ≤ 1`` or a :class:`Constant` in [0, 1]).
        tau: time constant in ms at ``φ = 1``, a rate form positive at every voltage
            (``scale > 0``; for a :class:`Linoid` ``scale·k > 0``).
        power: integer exponent of the gate in the conductance (≥ 1).
    """

    name: str
    inf: Rate
    tau: Rate
    power: int = 1

    def __post_init__(self):
        if not (isinstance(self.inf, Rate) and isinstance(self.tau, Rate)):
            raise TypeError(f"gate {self.name!r}: inf and tau must be rate forms (Rate)")
        _check_power(self.name, self.power)
        _check_inf(self.name, self.inf)
        scale = getattr(self.tau, "scale", 0.0)
        positive = scale > 0 and (not isinstance(self.tau, Linoid) or self.tau.k > 0)
        if not positive:
            raise ValueError(
                f"gate {self.name!r}: tau = {self.tau!r} must be positive at every voltage "
                "(scale > 0; a Linoid also needs k > 0)"
            )

    def table(self) -> tuple[int, tuple[tuple[float, ...], ...]]:
        """``(1, rows)``: the fused kernel's gate kind 1 and its rows ``inf``, ``tau``, unused."""
        return 1, (self.inf.row(), self.tau.row(), _UNUSED_ROW)

    def inf_tau(self, vs: Tensor, eps: float = 0.0, phi: float = 1.0) -> tuple[Tensor, Tensor]:
        """``(x∞, τ)`` at the (shifted) voltage ``vs`` in mV; τ in ms (``eps`` is unused)."""
        tau = self.tau(vs)
        return self.inf(vs), (tau if phi == 1.0 else tau / phi)


def _check_power(name: str, power) -> None:
    if isinstance(power, bool) or not (isinstance(power, int) and power >= 1):
        raise ValueError(f"gate {name!r}: power = {power!r} must be an int ≥ 1")


def _check_inf(name: str, inf: Rate) -> None:
    bounded = (isinstance(inf, Sigmoid) and 0 < inf.scale <= 1) or (
        isinstance(inf, Constant) and 0 <= inf.scale <= 1
    )
    if not bounded:
        raise ValueError(
            f"gate {name!r}: inf = {inf!r} must stay in [0, 1] at every voltage: a Sigmoid with "
            "0 < scale ≤ 1 or a Constant in [0, 1]"
        )


@dataclass(frozen=True)
class Kinetics:
    """The gates of a :class:`RateChannel` and how they see the voltage.

    Per :class:`Gate`, with ``s = α(V + v_shift) + β(V + v_shift) + eps``:
    ``x_inf = α/s`` (or the gate's own ``inf(V + v_shift)``) and ``τ = 1/(φ·s)`` (ms); per
    :class:`InfTauGate`, ``x_inf = inf(V + v_shift)`` and ``τ = tau(V + v_shift)/φ``.

    Args:
        gates: the gates (:class:`Gate` or :class:`InfTauGate`), in the order of the
            conductance's product ``G = g·Π x^power``.
        phi: temperature factor multiplying ``1/τ`` (see :func:`q10_factor`).
        v_shift: mV added to ``V`` before the rates are evaluated.
        eps: 1/ms added to ``α + β`` of :class:`Gate` s (the paper's ``1e-8``).
        e_shift: mV subtracted from the reversal in the driving force, ``g (V − (e − e_shift))``.
        init_shift: mV added to ``V`` for the initial steady state (default: ``v_shift``).
    """

    gates: tuple[Gate | InfTauGate, ...]
    phi: float = 1.0
    v_shift: float = 0.0
    eps: float = 0.0
    e_shift: float = 0.0
    init_shift: float | None = None

    def __post_init__(self):
        for g in self.gates:
            if not isinstance(g, (Gate, InfTauGate)):
                raise TypeError(f"Kinetics.gates takes Gate or InfTauGate objects; got {g!r}")
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
        return {gate.name: gate.inf_tau(vs, kin.eps, kin.phi) for gate in kin.gates}

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
