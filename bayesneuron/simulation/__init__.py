"""Simulation layer: ``simulate`` (a pure function), its solvers, the torch stepping, the
torchdiffeq path and the fused C kernel."""

from bayesneuron.simulation.api import (
    Reset,
    Trace,
    check_device,
    kernel_build,
    runs_fused,
    sensitivities,
    simulate,
)
from bayesneuron.simulation.solvers import (
    BACKENDS,
    BackwardEuler,
    CrankNicolson,
    Solver,
    Torchdiffeq,
)

__all__ = [
    "BACKENDS",
    "BackwardEuler",
    "CrankNicolson",
    "Reset",
    "Solver",
    "Torchdiffeq",
    "Trace",
    "check_device",
    "kernel_build",
    "runs_fused",
    "sensitivities",
    "simulate",
]
