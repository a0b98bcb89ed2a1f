"""``simulate``: a pure function from cell, parameters and currents to membrane voltages.

Shapes: parameters ``[sample…, comp]``, currents ``[…, trace, comp, bins]`` (or
``[…, trace, site, bins]`` for a sparse stimulus), voltages
``[sample…, trace, comp, time]`` (time last; leading sample dims broadcast against the
stimulus' leading dims).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from bayesneuron.cell import Cell
from bayesneuron.errors import ParameterError, SolverError
from bayesneuron.protocol.electrode import ElectrodeStimulus
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.simulation import _ckernels, fused, gpu_kernel
from bayesneuron.simulation.checks import (
    PASSIVE,
    check_batch,
    check_device,
    check_params,
    check_reset,
    check_stimulus,
    check_times,
)
from bayesneuron.simulation.grid import currents
from bayesneuron.simulation.odeint import run_torchdiffeq
from bayesneuron.simulation.solvers import BackwardEuler, CrankNicolson, Solver, Torchdiffeq
from bayesneuron.simulation.stepping import run_fixed
from bayesneuron.simulation.trace import Reset, Trace

__all__ = [
    "Reset",
    "Trace",
    "check_device",
    "kernel_build",
    "runs_fused",
    "sensitivities",
    "simulate",
]


def kernel_build() -> dict:
    """The fused C kernel this process loaded (status, library, compiler, flags), for
    provenance manifests."""
    return _ckernels.build_info()


def simulate(
    cell: Cell,
    params: Mapping[str, Tensor | float] | None,
    stimulus: Stimulus | ElectrodeStimulus,
    t_eval=None,
    solver: Solver | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
    reset: Reset | None = None,
) -> Trace:
    """Simulate membrane voltages of ``cell`` under current clamp.

    Args:
        cell: the cell (morphology, channels, default parameters, ``v0``).
        params: parameters to override, ``{"g_na": tensor[sample…, comp]}`` (a scalar or
            ``[comp]`` also works); the rest come from ``cell``. Gradients flow to them. Also
            ``"cm"`` (µF/cm²) and, for cells built from sections, ``"ra"`` (Ω·cm), which
            override the morphology's (these run on the torch backend; ``ra`` not with
            :class:`Torchdiffeq`).
        stimulus: injected currents in ``cell.morphology.current_unit``: a :class:`Stimulus`
            ``[…, trace, comp, bins]``, a sparse one ``[…, trace, site, bins]`` (``sites=…``)
            or an :class:`~bayesneuron.protocol.ElectrodeStimulus`; sparse ones stay sparse
            in every backend (memory per stimulated compartment, not per compartment).
        t_eval: increasing output times in ms ``[time]``; the simulation starts at ``t_eval[0]``
            with ``V = cell.v0``. Default: every stimulus bin edge from ``stimulus.t0``.
        solver: :class:`CrankNicolson` (default, ``dt=0.025``), :class:`BackwardEuler` or
            :class:`Torchdiffeq`.
        dtype: float64 (default) or float32.
        device: where to compute (``"cuda"`` runs unchanged on a GPU); default: the device of
            the first parameter tensor, else CPU.
        reset: restart the voltage from data at output times (:class:`Reset`; fixed-step
            solvers only).

    Returns:
        A :class:`Trace` with ``v`` of shape ``[sample…, trace, comp, time]``.

    Example:
        >>> from bayesneuron import simulate, paper_toy_cell, step_current
        >>> cell = paper_toy_cell()
        >>> stim = step_current([5.0, 10.0], site=0, n_comp=6, delay=1, duration=3,
        ...                     t_stop=5, dt=0.1, unit="uA/cm2")
        >>> simulate(cell, None, stim).v.shape
        torch.Size([2, 6, 51])
    """
    solver, p, cur, stimulus, t_eval, reset, device = _prepare(
        cell, params, stimulus, t_eval, solver, dtype, device, reset
    )
    if isinstance(solver, Torchdiffeq):
        v = run_torchdiffeq(cell, p, cur, stimulus, t_eval, solver)
        n_steps = None
    elif _gpu_kernel_runs(cell, solver, device, reset, p, cur):
        try:
            v, n_steps = gpu_kernel.run(cell, p, cur, stimulus, t_eval, solver, reset)
        except gpu_kernel.KernelFailed:  # warned once; the torch backend from now on
            v, n_steps = run_fixed(cell, p, cur, stimulus, t_eval, solver, reset)
    elif runs_fused(cell, solver, dtype, device, stimulus, reset, p.values(), tuple(p)):
        v, n_steps = fused.run(cell, p, cur, stimulus, t_eval, solver, reset)
    else:
        v, n_steps = run_fixed(cell, p, cur, stimulus, t_eval, solver, reset)
    t = torch.as_tensor(t_eval, dtype=dtype, device=device)
    return Trace(t=t, v=v, names=cell.morphology.names, solver=solver, n_steps=n_steps)


def _gpu_kernel_runs(cell, solver, device, reset, p, cur) -> bool:
    """Whether the Triton kernel takes this (CUDA, :func:`.gpu_kernel.supported`, no varying
    ``cm`` or ``ra``)."""
    if set(PASSIVE) & set(p):
        return False
    return gpu_kernel.supported(cell, solver, device, reset, p.values(), cur.values) is None


def runs_fused(
    cell,
    solver,
    dtype=torch.float64,
    device="cpu",
    stimulus=None,
    reset=None,
    params=(),
    names=(),
) -> bool:
    """Whether :func:`simulate` runs this on the fused C kernel.

    ``backend="fused"`` insists (a :class:`SolverError` says why it cannot run); ``"auto"``
    takes it where it applies and says in a one-line warning when only a missing C compiler
    stands in the way; ``"torch"`` never does. ``names``: the parameters given (a varying
    ``cm`` or ``ra`` runs on the torch backend: the fused adjoint is for channel parameters).
    """
    backend = getattr(solver, "backend", "torch")
    if backend == "torch" or solver.compile:
        return False
    passive = [k for k in PASSIVE if k in names]
    if passive:
        if backend == "fused":
            raise SolverError(
                f"backend='fused' cannot run this: {passive} given as parameters need the "
                "torch backend (the fused kernel differentiates channel g and e only); use "
                "backend='auto'"
            )
        return False
    reason = fused.supported(cell, solver, dtype, device, stimulus, reset, tuple(params))
    if reason is not None and backend == "fused":
        raise SolverError(f"backend='fused' cannot run this: {reason}; use backend='auto'")
    return reason is None


def _prepare(cell, params, stimulus, t_eval, solver, dtype, device, reset):
    """:func:`simulate`'s checks and conversions: ``(solver, p, cur, stimulus, t_eval, reset,
    device)`` with ``cur`` the :class:`~bayesneuron.simulation.grid.Currents` (densities,
    µA/cm², at the stimulated sites only) and ``stimulus`` a :class:`Stimulus`."""
    solver = CrankNicolson() if solver is None else solver
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a bayesneuron.Cell, got {type(cell).__name__}")
    if not isinstance(solver, (BackwardEuler, CrankNicolson, Torchdiffeq)):
        raise SolverError(
            f"solver must be CrankNicolson(...), BackwardEuler(...) or Torchdiffeq(...); got {solver!r}"
        )
    if dtype not in (torch.float32, torch.float64):
        raise SolverError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    if params is not None and not isinstance(params, Mapping):
        raise ParameterError(
            f"params must be a mapping name → values such as {{'g_na': tensor[sample…, comp]}}, "
            f"or None for the cell's own values; got {type(params).__name__}"
        )
    if device is None:
        device = next((p.device for p in (params or {}).values() if isinstance(p, Tensor)), "cpu")
    device = check_device(device)
    stimulus = check_stimulus(cell, stimulus)
    t_eval = check_times(stimulus, t_eval)
    p = check_params(cell, params, dtype, device)
    check_batch(p, stimulus)
    cur = currents(stimulus, cell.morphology, dtype, device)
    if reset is not None:
        reset = check_reset(reset, cell, t_eval, solver)
    return solver, p, cur, stimulus, t_eval, reset, device


def sensitivities(
    cell: Cell,
    params: Mapping[str, Tensor | float] | None,
    stimulus: Stimulus | ElectrodeStimulus,
    t_eval=None,
    solver: Solver | None = None,
    *,
    wrt: Sequence[str] = ("g_na", "g_k"),
    reset: Reset | None = None,
) -> tuple[Tensor, Tensor]:
    """Voltages and their exact forward sensitivities to per-compartment maximal conductances.

    On the fused CPU kernel (the default ``CrankNicolson()``, float64): one forward pass
    and one tangent pass, about the cost of four simulations for 12 conductances (forward
    differences cost 13). Arguments as in :func:`simulate`; ``wrt`` names ``g_<channel>``
    parameters.

    Returns:
        ``(v, J)``: ``v`` ``[sample…, trace, comp, time]`` (mV) and ``J``
        ``[sample…, trace, len(wrt)·comp, comp, time]`` with ``J[..., a·n_comp + k, :, :] =
        ∂V/∂wrt[a][k]`` (mV per mS/cm²).
    """
    solver = CrankNicolson() if solver is None else solver
    if getattr(solver, "backend", "torch") == "torch":
        raise SolverError(f"sensitivities need the fused kernel (CrankNicolson()); got {solver!r}")
    chans = []
    for name in wrt:
        ch = name[2:] if name.startswith("g_") else None
        if ch is None or ch not in [c.name for c in cell.channels]:
            raise ParameterError(
                f"sensitivities are with respect to channel conductances 'g_<channel>'; "
                f"{name!r} is not one of {[f'g_{c.name}' for c in cell.channels]}"
            )
        chans.append(ch)
    solver, p, cur, stimulus, t_eval, reset, _ = _prepare(
        cell, params, stimulus, t_eval, solver, torch.float64, "cpu", reset
    )
    reason = fused.supported(cell, solver, torch.float64, "cpu", None, reset)
    if reason is not None:
        raise SolverError(f"sensitivities need the fused kernel: {reason}")
    return fused.jacobian(cell, p, cur, stimulus, t_eval, solver, reset, tuple(chans))
