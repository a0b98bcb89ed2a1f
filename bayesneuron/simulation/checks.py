"""Input checks of :func:`~bayesneuron.simulation.simulate`: each says what was wrong and how
to fix it."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bayesneuron.cell import Cell
from bayesneuron.errors import ParameterError, SolverError, StimulusError
from bayesneuron.protocol.electrode import ElectrodeStimulus
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.simulation.grid import broadcast_shapes
from bayesneuron.simulation.solvers import Torchdiffeq
from bayesneuron.simulation.trace import Reset

__all__ = [
    "check_batch",
    "check_device",
    "check_params",
    "check_reset",
    "check_stimulus",
    "check_times",
]


def check_device(device) -> torch.device:
    """``device`` as a ``torch.device`` that exists here, or a :class:`SolverError` saying why
    not (a misspelt device, or CUDA asked for where torch has none)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SolverError(
            f"device {device!r} is not a device; use 'cpu', 'cuda' or 'cuda:<index>'"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SolverError(
                f"device {device!r}: CUDA is not available here (torch {torch.__version__}); "
                "use device='cpu' (--device cpu), or install a CUDA build of torch"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SolverError(
                f"device {device!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return dev


def check_batch(p: dict[str, Tensor], stimulus: Stimulus) -> None:
    """Parameters' sample dims must broadcast together and against the stimulus' leading dims."""
    shapes = {k: tuple(x.shape[:-1]) for k, x in p.items() if x.ndim > 1}
    try:
        batch = tuple(broadcast_shapes(*shapes.values())) if shapes else ()
    except ValueError:
        raise ParameterError(
            f"parameters have sample dims that do not broadcast together: {shapes} "
            "([sample…] of tensors [sample…, comp]); give them equal or broadcastable shapes"
        ) from None
    lead = tuple(stimulus.values.shape[:-3])
    try:
        broadcast_shapes(batch + (1,), lead + (stimulus.n_trace,))
    except ValueError:
        raise ParameterError(
            f"parameter sample dims {batch} do not broadcast against the stimulus' leading dims "
            f"{lead} (stimulus shape {tuple(stimulus.values.shape)} = […, trace, comp, bins]); "
            "make them equal, or give one side size 1"
        ) from None


def check_stimulus(cell: Cell, stimulus) -> Stimulus:
    """``stimulus`` as a :class:`Stimulus` for ``cell`` (an :class:`ElectrodeStimulus` becomes
    its sparse form, a view), or a :class:`StimulusError` saying what does not fit."""
    if isinstance(stimulus, ElectrodeStimulus):
        stimulus = stimulus.as_stimulus()
    if not isinstance(stimulus, Stimulus):
        raise StimulusError(
            f"stimulus must be a bayesneuron.Stimulus or ElectrodeStimulus, got "
            f"{type(stimulus).__name__}; wrap an array of currents [trace, comp, bins] with "
            "Stimulus(values, dt=bin width in ms)"
        )
    stimulus.site_index(cell.n_comp)
    want = cell.morphology.current_unit
    if stimulus.unit != want:
        raise StimulusError(
            f"stimulus is in {stimulus.unit} but this cell takes {want} "
            f"({'geometric cells take nA' if want == 'nA' else 'abstract cells take densities'}); "
            f"build the Stimulus with unit={want!r}"
        )
    return stimulus


def check_times(stimulus: Stimulus, t_eval) -> np.ndarray:
    if t_eval is None:
        return stimulus.t0 + stimulus.dt * np.arange(stimulus.n_bins + 1)
    if isinstance(t_eval, Tensor):
        t_eval = t_eval.detach().cpu().numpy()
    t = np.asarray(t_eval, dtype=np.float64)
    if t.ndim != 1 or t.size < 2:
        raise SolverError(f"t_eval must be 1-D with at least 2 times (ms); got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise SolverError("t_eval contains NaN or inf")
    if np.any(np.diff(t) <= 0):
        k = int(np.flatnonzero(np.diff(t) <= 0)[0])
        raise SolverError(
            f"t_eval must be strictly increasing; t_eval[{k + 1}] = {t[k + 1]} ≤ t_eval[{k}] = {t[k]}"
        )
    return t


def check_reset(reset, cell: Cell, t_eval: np.ndarray, solver) -> Reset:
    if not isinstance(reset, Reset):
        raise SolverError(f"reset must be a bayesneuron.Reset, got {type(reset).__name__}")
    if isinstance(solver, Torchdiffeq):
        raise SolverError("reset works with the fixed-step solvers (CrankNicolson, BackwardEuler)")
    if not (isinstance(reset.every, (int, np.integer)) and reset.every >= 1):
        raise SolverError(f"reset.every = {reset.every!r} must be an int ≥ 1")
    shape = tuple(reset.values.shape)
    if len(shape) < 3 or shape[-2:] != (cell.n_comp, len(t_eval)):
        raise SolverError(
            f"reset.values has shape {shape}; expected [trace, {cell.n_comp}, {len(t_eval)}] "
            "(trace, comp, t_eval)"
        )
    return reset


PASSIVE = ("cm", "ra")
"""Membrane and cable parameters ``simulate`` also takes: ``cm`` (µF/cm²) and ``ra`` (Ω·cm,
cells built from sections); the cell's own values come from its morphology."""


def check_params(cell: Cell, params, dtype, device) -> dict[str, Tensor]:
    """All cell parameters as tensors ``[sample…, comp]`` on device (user values override),
    plus ``cm`` and ``ra`` where the user gives them."""
    params = {} if params is None else dict(params)
    # maximal conductances (a channel's "g") must be ≥ 0; user values are checked, not clipped
    conductances = {f"g_{ch.name}" for ch in cell.channels if "g" in ch.param_defaults()}
    unknown = sorted(set(params) - set(cell.params) - set(PASSIVE))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown}; this cell has {list(cell.params)}")
    if "ra" in params and cell.morphology.ra_pieces is None:
        raise ParameterError(
            "ra (Ω·cm) can vary only on cells built from sections (from_sections, load_swc); "
            "this cell's axial coupling is given as conductances"
        )
    if "ra" in params and cell.morphology.n_loops:
        raise ParameterError(
            f"ra (Ω·cm) can vary only on a tree; this morphology has {cell.morphology.n_loops} "
            "loop(s), whose conductances are fixed: give ra as part of the morphology instead"
        )
    out = {}
    for name, default in cell.params.items():
        if name not in params:
            out[name] = torch.tensor(default, dtype=dtype, device=device)
            continue
        out[name] = _param(name, params[name], cell.n_comp, dtype, device)
        if name in conductances and bool((out[name] < 0).any()):
            raise ParameterError(
                f"{name} has negative values (min {float(out[name].min()):.4g}); maximal "
                "conductances are ≥ 0 (mS/cm²). Fit in unconstrained coordinates (the priors' "
                "support does this) or clamp at 0"
            )
    for name in PASSIVE:
        if name in params:
            out[name] = _param(name, params[name], cell.n_comp, dtype, device)
            if not bool((out[name] > 0).all()):
                raise ParameterError(f"{name} must be > 0 in every compartment")
    return out


def _param(name: str, x, n: int, dtype, device) -> Tensor:
    """One parameter as a finite tensor ``[sample…, n]``."""
    if isinstance(x, Tensor):
        x = x.to(device=device, dtype=dtype)
    else:
        try:
            x = torch.as_tensor(np.array(x, dtype=np.float64), dtype=dtype, device=device)
        except (TypeError, ValueError):
            raise ParameterError(
                f"{name} = {x!r} is not numeric; give a number, [comp] values or a tensor "
                f"[sample…, {n}]"
            ) from None
    if x.ndim == 0:
        x = x.expand(n)
    if x.shape[-1] != n:
        raise ParameterError(
            f"{name} has shape {tuple(x.shape)}; expected [sample…, {n}] "
            f"(one value per compartment on the last axis)"
        )
    if not bool(torch.isfinite(x).all()):
        raise ParameterError(f"{name} contains NaN or inf; parameters must be finite")
    return x
