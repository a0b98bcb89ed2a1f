"""Results and restarts of a simulation: :class:`Trace`, :class:`Reset`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from bayesneuron.simulation.solvers import Solver

__all__ = ["Reset", "Trace"]


@dataclass(frozen=True, eq=False)
class Reset:
    """Multiple shooting on data: restart the voltage from recorded values during a simulation.

    At every ``every``-th output time ``t_eval[j]`` (``j = every, 2·every, …``), right after
    the output is taken, the membrane voltage is set to ``values[..., j]`` wherever that is not
    NaN; gates and unrecorded compartments run on. The outputs are then predictions over at most
    ``every`` output intervals, which makes fitting objectives far smoother (spike-time errors
    cannot accumulate); ``every ≥ len(t_eval) − 1`` is a plain simulation.

    Args:
        values: voltages ``[…, trace, comp, time]`` on ``t_eval`` (mV), NaN where not reset;
            leading dims broadcast like the stimulus'.
        every: reset period in output intervals (≥ 1).
    """

    values: Tensor
    every: int


@dataclass(frozen=True, eq=False)
class Trace:
    """Result of :func:`simulate`.

    Attributes:
        t: output times ``[time]`` in ms.
        v: membrane voltage ``[sample…, trace, comp, time]`` in mV.
        names: compartment names ``[comp]``.
        solver: the solver settings used.
        n_steps: number of solver steps (fixed-step schemes) or ``None``.
    """

    t: Tensor
    v: Tensor
    names: tuple[str, ...]
    solver: Solver
    n_steps: int | None = None
