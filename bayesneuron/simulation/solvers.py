"""Solver settings: typed, frozen, validated on construction.

Fixed-step schemes (all stiff-stable: the voltage is updated implicitly with an O(n) tree
solve, gates by exponential Euler, which is exact for frozen voltage):

* :class:`BackwardEuler` — NEURON's default scheme (``secondorder = 0``): first order.
* :class:`CrankNicolson` — staggered Crank–Nicolson (NEURON's ``secondorder = 2`` idea):
  gates live at half steps, voltage is centred; second order. The default.

:class:`Torchdiffeq` runs the same cell as an ODE through ``torchdiffeq.odeint`` (any method,
the adjoint included) — the paper's exact setting and an accuracy reference.

Fixed-step schemes place step boundaries on every output time and every stimulus bin edge, and
take equal sub-steps of at most ``dt`` in between.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from bayesneuron.errors import SolverError

__all__ = [
    "AUTO_CHECKPOINT_BYTES",
    "BACKENDS",
    "BackwardEuler",
    "CrankNicolson",
    "Torchdiffeq",
    "Solver",
]

BACKENDS = ("auto", "fused", "torch")
AUTO_CHECKPOINT_BYTES = 1e9
"""``checkpoint_every="auto"`` checkpoints a differentiable run whose stored history (the torch
backend's graph, the fused kernel's adjoint history) would exceed this many bytes."""


def _check_fixed(dt, checkpoint_every):
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise SolverError(f"dt = {dt!r} ms must be a finite number > 0 (e.g. dt=0.025)")
    if checkpoint_every not in (None, "auto") and (
        not isinstance(checkpoint_every, int) or checkpoint_every < 1
    ):
        raise SolverError(
            f"checkpoint_every = {checkpoint_every!r} must be a positive int, 'auto' or None"
        )


@dataclass(frozen=True)
class BackwardEuler:
    """NEURON's default fixed-step scheme, first order in ``dt``.

    Per step: implicit (backward-Euler) voltage update with gates frozen at their start-of-step
    values and the current sampled at the step midpoint, then exponential-Euler gates at the
    new voltage — the order of ``fadvance`` with ``secondorder = 0`` and ``cnexp`` gates.

    Attributes:
        dt: largest step in ms.
        checkpoint_every: recompute the forward pass in chunks of this many steps during
            backward instead of storing it. ``"auto"`` (default) does so, in chunks of
            √steps, when gradients are needed and the stored pass would exceed about 1 GB;
            ``None`` never does.
        compile: fuse each step with ``torch.compile`` — faster steps on small cells, after a
            first call per cell, dtype and shape that compiles for tens of seconds (cached on
            disk by inductor): it pays for fits and long runs, not for one-off simulations
            (timings in ``benchmarks/README.md``).
    """

    dt: float = 0.025
    checkpoint_every: int | str | None = "auto"
    compile: bool = False

    def __post_init__(self):
        _check_fixed(self.dt, self.checkpoint_every)


@dataclass(frozen=True)
class CrankNicolson:
    """Staggered Crank–Nicolson, second order in ``dt`` and stiff-stable (A-stable).

    Gates are advanced from ``t − dt/2`` to ``t + dt/2`` by exponential Euler at ``V(t)``; the
    voltage is advanced from ``t`` to ``t + dt`` by Crank–Nicolson with those midpoint gates
    (one tree solve per step).

    Attributes:
        dt: largest step in ms.
        checkpoint_every: as in :class:`BackwardEuler`, on both backends (the fused kernel's
            history is ``1 + 3·gates`` floats per node, step and batch element; checkpointed,
            its adjoint recomputes one segment at a time from the stored states: bit-identical
            gradients for one more forward pass).
        compile: as in :class:`BackwardEuler` (torch backend only).
        backend: ``"auto"`` (default), ``"fused"`` or ``"torch"``. ``"fused"`` runs whole
            trajectories in a compiled C kernel with a hand-written discrete adjoint (exact
            gradients of every ``g`` and ``e``), much faster than ``"torch"`` on small cells,
            for channels declared from rate forms, on CPU in float64, on
            ``torch.get_num_threads()`` threads. ``"torch"`` steps with autograd (any
            channel, dtype and device, gradients with respect to reset values too). ``"auto"``
            takes the fused kernel wherever it applies and the torch backend elsewhere (a
            one-line warning where only a missing C compiler stands in the way).
            ``"numba"`` is a deprecated alias of ``"fused"``.
    """

    dt: float = 0.025
    checkpoint_every: int | str | None = "auto"
    compile: bool = False
    backend: str = "auto"

    def __post_init__(self):
        _check_fixed(self.dt, self.checkpoint_every)
        if self.backend == "numba":
            warnings.warn(
                "CrankNicolson(backend='numba') is deprecated: the fused kernel is C now; use "
                "backend='fused' (or the default 'auto')",
                DeprecationWarning,
                stacklevel=3,
            )
            object.__setattr__(self, "backend", "fused")
        if self.backend not in BACKENDS:
            raise SolverError(f"backend = {self.backend!r} must be one of {BACKENDS}")
        if self.backend == "fused" and self.compile:
            raise SolverError(
                "compile=True applies to backend='torch'; 'fused' is compiled already"
            )


_ADAPTIVE = {"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "tsit5"}
_FIXED = {"euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams"}


@dataclass(frozen=True)
class Torchdiffeq:
    """The cell as an ODE, integrated by ``torchdiffeq``.

    Attributes:
        method: any torchdiffeq method (``"dopri5"``, ``"rk4"``, …).
        rtol, atol: tolerances of adaptive methods.
        adjoint: gradients by ``odeint_adjoint`` (the paper's choice) instead of backprop.
        step_size: largest step in ms for fixed-grid methods (required for them).
    """

    method: str = "dopri5"
    rtol: float = 1e-7
    atol: float = 1e-9
    adjoint: bool = False
    step_size: float | None = None
    options: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self):
        if self.method not in _ADAPTIVE | _FIXED:
            raise SolverError(
                f"unknown torchdiffeq method {self.method!r}; choose from {sorted(_ADAPTIVE | _FIXED)}"
            )
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise SolverError(f"{name} = {v!r} must be a finite number > 0 (e.g. 1e-7)")
        if self.method in _FIXED:
            if self.step_size is None:
                raise SolverError(
                    f"{self.method!r} is a fixed-grid method: give step_size (ms), e.g. 0.01"
                )
            _check_fixed(self.step_size, None)

    @property
    def adaptive(self) -> bool:
        """True for error-controlled methods."""
        return self.method in _ADAPTIVE


Solver = BackwardEuler | CrankNicolson | Torchdiffeq
