"""Ion channels: pure kinetics, no tensors owned, no morphology.

A channel has a ``name`` (``"na"``), local parameters with defaults (``{"g": 120.0, "e": 50.0}``,
seen by the cell as ``g_na``, ``e_na``), gating states, and two functions of voltage:

* ``gates(v, p)`` → ``{state: (x_inf, tau)}`` — steady state (1) and time constant (ms);
  every state obeys ``dx/dt = (x_inf − x) / tau``;
* ``conductance(x, p)`` → ``(g, e)`` — conductance (mS/cm²) and reversal (mV) of an ohmic
  current ``I = g · (V − e)`` in µA/cm².

Units: V mV, t ms, conductance mS/cm² (NEURON's S/cm² × 1000), current µA/cm².

Writing your own channel takes one small class::

    @dataclass(frozen=True)
    class SlowK(Channel):
        name: str = "km"
        state_names = ("n",)
        def param_defaults(self):
            return {"g": 1.0, "e": -90.0}
        def gates(self, v, p):
            return {"n": (torch.sigmoid((v + 35.0) / 5.0), 100.0 + 0.0 * v)}
        def conductance(self, x, p):
            return p["g"] * x["n"], p["e"]

Every rate here is finite and smooth on [−200, 200] mV in float32 and float64: removable
singularities (``x / (exp(x/y) − 1)`` at ``x = 0``) are evaluated by a guarded series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

__all__ = [
    "Channel",
    "Leak",
    "HHSodium",
    "HHPotassium",
    "hh_channels",
    "PaperSodium",
    "PaperPotassium",
    "PaperLeak",
    "paper_channels",
    "vtrap",
]

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


def vtrap(x: Tensor, y: float) -> Tensor:
    """``x / (exp(x/y) − 1)``, finite and smooth at ``x = 0`` (NEURON's ``vtrap``).

    Uses ``expm1`` away from 0 and the series ``y (1 − x/(2y))`` where ``|x/y| < 1e-6``, as
    NEURON's ``hh.mod`` does; the unused branch is fed a safe value so gradients stay finite.
    """
    u = x / y
    small = u.abs() < 1e-6
    safe_u = torch.where(small, torch.ones_like(u), u)
    return torch.where(small, y * (1.0 - 0.5 * u), y * safe_u / torch.expm1(safe_u))


@dataclass(frozen=True)
class Leak(Channel):
    """Passive leak ``I = g (V + v_shift − e)``; ``g`` mS/cm², ``e`` mV."""

    name: str = "l"
    g: float = 0.3
    e: float = -54.3
    v_shift: float = 0.0

    def param_defaults(self):
        return {"g": self.g, "e": self.e}

    def conductance(self, x, p):
        return p["g"], p["e"] - self.v_shift


# --------------------------------------------------------------------------- Hodgkin–Huxley
def _q10(celsius: float) -> float:
    return 3.0 ** ((celsius - 6.3) / 10.0)


@dataclass(frozen=True)
class HHSodium(Channel):
    """NEURON ``hh`` sodium ``I = g m³h (V − e)``, exact rates (``usetable_hh = 0``).

    Parameters ``g_na`` (mS/cm², default 120 = NEURON's 0.12 S/cm²), ``e_na`` (mV, 50).
    ``celsius`` scales both time constants by ``3^((celsius − 6.3)/10)``.
    """

    name: str = "na"
    celsius: float = 6.3
    state_names: ClassVar[tuple[str, ...]] = ("m", "h")

    def param_defaults(self):
        return {"g": 120.0, "e": 50.0}

    def gates(self, v, p):
        q = _q10(self.celsius)
        am = 0.1 * vtrap(-(v + 40.0), 10.0)
        bm = 4.0 * torch.exp(-(v + 65.0) / 18.0)
        ah = 0.07 * torch.exp(-(v + 65.0) / 20.0)
        bh = 1.0 / (torch.exp(-(v + 35.0) / 10.0) + 1.0)
        sm, sh = am + bm, ah + bh
        return {"m": (am / sm, 1.0 / (q * sm)), "h": (ah / sh, 1.0 / (q * sh))}

    def conductance(self, x, p):
        return p["g"] * x["m"] ** 3 * x["h"], p["e"]


@dataclass(frozen=True)
class HHPotassium(Channel):
    """NEURON ``hh`` potassium ``I = g n⁴ (V − e)``; ``g_k`` mS/cm² (36), ``e_k`` mV (−77)."""

    name: str = "k"
    celsius: float = 6.3
    state_names: ClassVar[tuple[str, ...]] = ("n",)

    def param_defaults(self):
        return {"g": 36.0, "e": -77.0}

    def gates(self, v, p):
        q = _q10(self.celsius)
        an = 0.01 * vtrap(-(v + 55.0), 10.0)
        bn = 0.125 * torch.exp(-(v + 65.0) / 80.0)
        sn = an + bn
        return {"n": (an / sn, 1.0 / (q * sn))}

    def conductance(self, x, p):
        return p["g"] * x["n"] ** 4, p["e"]


def hh_channels(celsius: float = 6.3) -> tuple[Channel, ...]:
    """NEURON's ``hh`` mechanism: Na, K and leak (``g_l`` 0.3 mS/cm², ``e_l`` −54.3 mV)."""
    return (HHSodium(celsius=celsius), HHPotassium(celsius=celsius), Leak(g=0.3, e=-54.3))


# --------------------------------------------------------------------------- the paper's model
_LN = math.log


def _softplus_rate(scale: float, c: float, k: float, vs: Tensor) -> Tensor:
    # scale · ln(1 + c·exp(k·vs)), overflow-free; the linear branch above 40 is exact in float64.
    return torch.nn.functional.softplus(vs.mul(k).add_(_LN(c)), threshold=40.0).mul_(scale)


@dataclass(frozen=True)
class _PaperChannel(Channel):
    """Shared switches of the Jones & Kording channels (``paper-model.md`` §1, §8).

    Attributes:
        v_shift: the rates see ``Vs = V + v_shift`` (mV).
        shift_driving_force: the paper also uses ``Vs`` in ``g (Vs − e)`` (quirk 3), making the
            effective reversals ``e − v_shift``. False gives the textbook ``g (V − e)``.
        init_unshifted: initial gates at the steady state of the *unshifted* ``V0`` (quirk 4).
        eps: added to ``α + β`` in ``x_inf`` and ``tau`` (the code's ``1e-8``).
    """

    v_shift: float = 49.2
    shift_driving_force: bool = True
    init_unshifted: bool = True
    eps: float = 1e-8

    def _rates(self, vs: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def _inf_tau(self, vs: Tensor) -> Gates:
        out = {}
        for k, (a, b) in self._rates(vs).items():
            rs = (a + b).add_(self.eps).reciprocal_()
            phi = self._phi(k)
            out[k] = (a * rs, rs if phi == 1.0 else rs / phi)
        return out

    def _phi(self, state: str) -> float:
        return 1.0

    def gates(self, v, p):
        return self._inf_tau(v + self.v_shift)

    def init_gates(self, v, p):
        vs = v if self.init_unshifted else v + self.v_shift
        return {k: inf for k, (inf, _) in self._inf_tau(vs).items()}

    def _reversal(self, e):
        return e - self.v_shift if self.shift_driving_force else e


@dataclass(frozen=True)
class PaperSodium(_PaperChannel):
    """Paper Na: ``g m² h (Vs − e)``, softplus Traub rates; ``g_na`` 100 mS/cm², ``e_na`` 90 mV."""

    name: str = "na"
    state_names: ClassVar[tuple[str, ...]] = ("m", "h")

    def param_defaults(self):
        return {"g": 100.0, "e": 90.0}

    def _rates(self, vs):
        am = _softplus_rate(1.841, 0.102, 0.17, vs)
        bm = _softplus_rate(2.010, 266.087, -0.139, vs)
        ah = 0.128 * torch.exp((17.0 - vs) / 18.0)
        bh = 4.0 * torch.sigmoid((vs - 40.0) / 5.0)
        return {"m": (am, bm), "h": (ah, bh)}

    def conductance(self, x, p):
        return p["g"] * x["m"] ** 2 * x["h"], self._reversal(p["e"])


@dataclass(frozen=True)
class PaperPotassium(_PaperChannel):
    """Paper K: ``g n (Vs − e)`` (n¹, not n⁴) with ``dn/dt`` ×``phi`` (2); ``g_k`` 45, ``e_k`` −80."""

    name: str = "k"
    phi: float = 2.0
    state_names: ClassVar[tuple[str, ...]] = ("n",)

    def param_defaults(self):
        return {"g": 45.0, "e": -80.0}

    def _phi(self, state):
        return self.phi

    def _rates(self, vs):
        an = _softplus_rate(0.114, 0.007, 0.140, vs)
        bn = 0.25 * torch.exp((20.0 - vs) / 40.0)
        return {"n": (an, bn)}

    def conductance(self, x, p):
        return p["g"] * x["n"], self._reversal(p["e"])


@dataclass(frozen=True)
class PaperLeak(Leak):
    """Paper leak: ``g_l = 1/37`` mS/cm², ``e_l = −74`` mV, driving force ``Vs − e`` (quirk 3)."""

    g: float = 1.0 / 37.0
    e: float = -74.0
    v_shift: float = 49.2


def paper_channels(
    v_shift: float = 49.2,
    shift_driving_force: bool = True,
    init_unshifted: bool = True,
) -> tuple[Channel, ...]:
    """The paper's Na, K and leak with its quirks switched on (each switch documented above)."""
    kw = dict(
        v_shift=v_shift, shift_driving_force=shift_driving_force, init_unshifted=init_unshifted
    )
    return (
        PaperSodium(**kw),
        PaperPotassium(**kw),
        PaperLeak(v_shift=v_shift if shift_driving_force else 0.0),
    )
