"""The Jones & Kording channels (softplus Traub rates), declared from rate forms, with the
paper's quirks as explicit switches."""

from __future__ import annotations

from dataclasses import dataclass

from bayesneuron.channels.base import Channel, Gate, Kinetics, Leak, RateChannel
from bayesneuron.channels.rates import Exponential, Sigmoid, Softplus

__all__ = ["PaperLeak", "PaperPotassium", "PaperSodium", "paper_channels"]


@dataclass(frozen=True)
class _PaperChannel(RateChannel):
    """Shared switches of the Jones & Kording channels.

    Attributes:
        v_shift: the rates see ``Vs = V + v_shift`` (mV).
        shift_driving_force: the paper also uses ``Vs`` in ``g (Vs − e)``, making the
            effective reversals ``e − v_shift``. False gives the textbook ``g (V − e)``.
        init_unshifted: initial gates at the steady state of the *unshifted* ``V0``.
        eps: added to ``α + β`` in ``x_inf`` and ``tau`` (the paper code's ``1e-8``).
    """

    v_shift: float = 49.2
    shift_driving_force: bool = True
    init_unshifted: bool = True
    eps: float = 1e-8

    def _kinetics(self, gates, phi=1.0) -> Kinetics:
        return Kinetics(
            gates=gates,
            phi=phi,
            v_shift=self.v_shift,
            eps=self.eps,
            e_shift=self.v_shift if self.shift_driving_force else 0.0,
            init_shift=0.0 if self.init_unshifted else None,
        )


@dataclass(frozen=True)
class PaperSodium(_PaperChannel):
    """Paper Na: ``g m² h (Vs − e)``, softplus Traub rates; ``g_na`` 100 mS/cm², ``e_na`` 90 mV."""

    name: str = "na"

    def param_defaults(self):
        return {"g": 100.0, "e": 90.0}

    def kinetics(self):
        m = Gate("m", Softplus(1.841, 0.102, 0.17), Softplus(2.010, 266.087, -0.139), power=2)
        h = Gate("h", Exponential(0.128, 17.0, 18.0), Sigmoid(4.0, 40.0, 5.0), power=1)
        return self._kinetics((m, h))


@dataclass(frozen=True)
class PaperPotassium(_PaperChannel):
    """Paper K: ``g n (Vs − e)`` (n¹, not n⁴) with ``dn/dt`` ×``phi`` (2); ``g_k`` 45, ``e_k`` −80."""

    name: str = "k"
    phi: float = 2.0

    def param_defaults(self):
        return {"g": 45.0, "e": -80.0}

    def kinetics(self):
        n = Gate("n", Softplus(0.114, 0.007, 0.140), Exponential(0.25, 20.0, 40.0), power=1)
        return self._kinetics((n,), phi=self.phi)


@dataclass(frozen=True)
class PaperLeak(Leak):
    """Paper leak: ``g_l = 1/37`` mS/cm², ``e_l = −74`` mV, driving force ``Vs − e``."""

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
