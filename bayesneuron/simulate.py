"""``simulate``: a pure function from cell, parameters and currents to membrane voltages.

Shapes: parameters ``[sample…, comp]``, currents ``[…, trace, comp, bins]``, voltages
``[sample…, trace, comp, time]`` (time last; leading sample dims broadcast against the
stimulus' leading dims).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._tree import reduced_edges, tree_solve, tree_system
from .cell import Cell
from .errors import ParameterError, SolverError, StimulusError
from .solvers import BackwardEuler, CrankNicolson, Solver, Torchdiffeq
from .stimulus import Stimulus

__all__ = ["simulate", "sensitivities", "Trace", "Reset"]


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


def simulate(
    cell: Cell,
    params: Mapping[str, Tensor | float] | None,
    stimulus: Stimulus,
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
            ``[comp]`` also works); the rest come from ``cell``. Gradients flow to them.
        stimulus: injected currents ``[…, trace, comp, bins]`` in ``cell.morphology.current_unit``.
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
    solver, p, vals, t_eval, reset, device = _prepare(
        cell, params, stimulus, t_eval, solver, dtype, device, reset
    )
    if isinstance(solver, Torchdiffeq):
        v = _run_torchdiffeq(cell, p, vals, stimulus, t_eval, solver)
        n_steps = None
    elif getattr(solver, "backend", "torch") == "numba":
        from . import _fused  # imports numba only when asked for

        if (reason := _fused.supported(cell, solver, dtype, device, reset)) is not None:
            raise SolverError(reason)
        v, n_steps = _fused.run(cell, p, vals, stimulus, t_eval, solver, reset)
    else:
        v, n_steps = _run_fixed(cell, p, vals, stimulus, t_eval, solver, reset)
    t = torch.as_tensor(t_eval, dtype=dtype, device=device)
    return Trace(t=t, v=v, names=cell.morphology.names, solver=solver, n_steps=n_steps)


def _prepare(cell, params, stimulus, t_eval, solver, dtype, device, reset):
    """:func:`simulate`'s checks and conversions: ``(solver, p, vals, t_eval, reset, device)``
    with ``vals`` the current densities ``[bins, …, trace, comp]`` (µA/cm²)."""
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
    stimulus = _check_stimulus(cell, stimulus)
    t_eval = _check_times(stimulus, t_eval)
    p = _check_params(cell, params, dtype, device)
    _check_batch(p, stimulus)
    morph = cell.morphology
    # Currents as densities (µA/cm²), time first: [bins, …, trace, comp].
    vals = stimulus.values.to(device=device, dtype=dtype)
    if stimulus.unit == "nA":
        vals = vals * (1e-3 / torch.tensor(morph.area, dtype=dtype, device=device))[:, None]
    vals = vals.movedim(-1, 0)
    if reset is not None:
        reset = _check_reset(reset, cell, t_eval, solver)
    return solver, p, vals, t_eval, reset, device


def sensitivities(
    cell: Cell,
    params: Mapping[str, Tensor | float] | None,
    stimulus: Stimulus,
    t_eval=None,
    solver: Solver | None = None,
    *,
    wrt: Sequence[str] = ("g_na", "g_k"),
    reset: Reset | None = None,
) -> tuple[Tensor, Tensor]:
    """Voltages and their exact forward sensitivities to per-compartment maximal conductances.

    For the fused CPU kernel (``CrankNicolson(backend="numba")``, float64): one forward pass
    and one tangent pass, about the cost of four simulations for 12 conductances (forward
    differences cost 13). Arguments as in :func:`simulate`; ``wrt`` names ``g_<channel>``
    parameters.

    Returns:
        ``(v, J)``: ``v`` ``[sample…, trace, comp, time]`` (mV) and ``J``
        ``[sample…, trace, len(wrt)·comp, comp, time]`` with ``J[..., a·n_comp + k, :, :] =
        ∂V/∂wrt[a][k]`` (mV per mS/cm²).
    """
    solver = CrankNicolson(backend="numba") if solver is None else solver
    if getattr(solver, "backend", "torch") != "numba":
        raise SolverError(
            f"sensitivities need the fused kernel, CrankNicolson(backend='numba'); got {solver!r}"
        )
    chans = []
    for name in wrt:
        ch = name[2:] if name.startswith("g_") else None
        if ch is None or ch not in [c.name for c in cell.channels]:
            raise ParameterError(
                f"sensitivities are with respect to channel conductances 'g_<channel>'; "
                f"{name!r} is not one of {[f'g_{c.name}' for c in cell.channels]}"
            )
        chans.append(ch)
    solver, p, vals, t_eval, reset, _ = _prepare(
        cell, params, stimulus, t_eval, solver, torch.float64, "cpu", reset
    )
    from . import _fused

    if (
        reason := _fused.supported(cell, solver, torch.float64, torch.device("cpu"), reset)
    ) is not None:
        raise SolverError(reason)
    return _fused.jacobian(cell, p, vals, stimulus, t_eval, solver, reset, tuple(chans))


# --------------------------------------------------------------------------- input checks
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


def _broadcast_shapes(*shapes) -> torch.Size:
    """``torch.broadcast_shapes`` by numpy's rules (the same): torch's own imports sympy on its
    first call (≈ 1 s). Raises ``ValueError`` where the shapes do not broadcast."""
    return torch.Size(np.broadcast_shapes(*(tuple(x) for x in shapes)))


def _check_batch(p: dict[str, Tensor], stimulus: Stimulus) -> None:
    """Parameters' sample dims must broadcast together and against the stimulus' leading dims."""
    shapes = {k: tuple(x.shape[:-1]) for k, x in p.items() if x.ndim > 1}
    try:
        batch = tuple(_broadcast_shapes(*shapes.values())) if shapes else ()
    except ValueError:
        raise ParameterError(
            f"parameters have sample dims that do not broadcast together: {shapes} "
            "([sample…] of tensors [sample…, comp]); give them equal or broadcastable shapes"
        ) from None
    lead = tuple(stimulus.values.shape[:-3])
    try:
        _broadcast_shapes(batch + (1,), lead + (stimulus.n_trace,))
    except ValueError:
        raise ParameterError(
            f"parameter sample dims {batch} do not broadcast against the stimulus' leading dims "
            f"{lead} (stimulus shape {tuple(stimulus.values.shape)} = […, trace, comp, bins]); "
            "make them equal, or give one side size 1"
        ) from None


def _check_stimulus(cell: Cell, stimulus) -> Stimulus:
    if not isinstance(stimulus, Stimulus):
        raise StimulusError(
            f"stimulus must be a bayesneuron.Stimulus, got {type(stimulus).__name__}; wrap an "
            "array of currents [trace, comp, bins] with Stimulus(values, dt=bin width in ms)"
        )
    n = cell.n_comp
    if stimulus.n_comp != n:
        raise StimulusError(
            f"stimulus has {stimulus.n_comp} compartments on axis -2 (shape "
            f"{tuple(stimulus.values.shape)}) but the cell has {n}; expected [trace, {n}, bins]"
        )
    want = cell.morphology.current_unit
    if stimulus.unit != want:
        raise StimulusError(
            f"stimulus is in {stimulus.unit} but this cell takes {want} "
            f"({'geometric cells take nA' if want == 'nA' else 'abstract cells take densities'}); "
            f"build the Stimulus with unit={want!r}"
        )
    return stimulus


def _check_times(stimulus: Stimulus, t_eval) -> np.ndarray:
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


def _check_reset(reset, cell: Cell, t_eval: np.ndarray, solver) -> Reset:
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


def _check_params(cell: Cell, params, dtype, device) -> dict[str, Tensor]:
    """All cell parameters as tensors ``[sample…, comp]`` on device (user values override)."""
    params = {} if params is None else dict(params)
    n = cell.n_comp
    unknown = sorted(set(params) - set(cell.params))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown}; this cell has {list(cell.params)}")
    out = {}
    for name, default in cell.params.items():
        if name not in params:
            out[name] = torch.tensor(default, dtype=dtype, device=device)
            continue
        x = params[name]
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
        out[name] = x
    return out


# --------------------------------------------------------------------------- the membrane
class _Kinetics:
    """The channels of a cell as one set of states; parameters are passed in (``local``)."""

    def __init__(self, channels):
        self.channels = channels
        self.keys = [(i, s) for i, ch in enumerate(channels) for s in ch.state_names]

    def lay_out(self, p: dict[str, Tensor], index: Tensor | None, node_first=None) -> list:
        """Per channel, ``{local name: tensor}`` on the internal layout (see :func:`_lay_out`)."""
        return [
            {k: _lay_out(p[f"{k}_{ch.name}"], index, node_first) for k in ch.param_defaults()}
            for ch in self.channels
        ]

    def init(self, v: Tensor, local) -> list[Tensor]:
        states = [ch.init_gates(v, q) for ch, q in zip(self.channels, local)]
        return [states[i][s].expand_as(v) for i, s in self.keys]

    def gates(self, v: Tensor, local) -> list[tuple[Tensor, Tensor]]:
        g = [ch.gates(v, q) for ch, q in zip(self.channels, local)]
        return [g[i][s] for i, s in self.keys]

    def conductance(self, x: list[Tensor], local) -> tuple[Tensor, Tensor]:
        """Total conductance ``g`` (mS/cm²) and ``Σ g·e`` (µA/cm²)."""
        per = [{} for _ in self.channels]
        for (i, s), xi in zip(self.keys, x):
            per[i][s] = xi
        g_tot = ge_tot = None
        for ch, q, xs in zip(self.channels, local, per):
            g, e = ch.conductance(xs, q)
            g_tot = g if g_tot is None else g_tot + g
            ge_tot = g * e if ge_tot is None else ge_tot + g * e
        return g_tot, ge_tot


_KINETICS: dict = {}


def _kinetics(channels) -> _Kinetics:
    # One object per channel set (channels are frozen, hashable dataclasses).
    if channels not in _KINETICS:
        _KINETICS[channels] = _Kinetics(channels)
    return _KINETICS[channels]


def _lay_out(x: Tensor, index: Tensor | None, node_first: int | None) -> Tensor:
    """``[sample…, comp]`` → ``[sample…, 1, nodes]``, or ``[nodes, 1…, sample…, 1]`` with
    ``node_first`` batch dims; junction nodes (``index == n_comp``) get 0."""
    if index is not None:
        x = torch.cat([x, x.new_zeros(x.shape[:-1] + (1,))], -1).index_select(-1, index)
    if node_first is None:
        return x.unsqueeze(-2)
    x = x.movedim(-1, 0).unsqueeze(-1)
    return x.reshape(x.shape[:1] + (1,) * (node_first + 1 - x.ndim) + x.shape[1:])


# --------------------------------------------------------------------------- fixed-step schemes
def _step_grid(stimulus: Stimulus, t_eval: np.ndarray, dt_max: float):
    """Step boundaries through every output time and bin edge; sub-steps of at most ``dt_max``.

    Returns ``(dts [K], t_mid [K], is_output [K])`` where ``is_output[k]`` marks steps ending
    on an output time.
    """
    t0, t1 = t_eval[0], t_eval[-1]
    edges = stimulus.edges()
    points = np.union1d(t_eval, edges[(edges > t0) & (edges < t1)])
    gaps = np.diff(points)
    keep = np.concatenate([[True], gaps > 1e-9 * max(1.0, abs(t1))])
    points = points[keep]  # merge near-duplicates (an edge that is also an output time)
    points[-1] = t1
    # an output time within the tolerance of a point (its neighbours in t_eval are the nearest)
    j = np.clip(np.searchsorted(t_eval, points), 1, len(t_eval) - 1)
    near = np.minimum(np.abs(points - t_eval[j - 1]), np.abs(points - t_eval[j]))
    is_out_point = np.isin(points, t_eval) | (near <= 1e-9 * max(1.0, abs(t1)))
    n_sub = np.maximum(1, np.ceil(np.diff(points) / dt_max - 1e-9).astype(np.int64))
    dts = np.repeat(np.diff(points) / n_sub, n_sub)
    first = np.repeat(np.cumsum(n_sub) - n_sub, n_sub)  # each sub-step's index in its gap
    t_start = np.repeat(points[:-1], n_sub) + (np.arange(len(dts)) - first) * dts
    is_output = np.zeros(len(dts), dtype=bool)
    is_output[np.cumsum(n_sub) - 1] = is_out_point[1:]
    if is_output.sum() != len(t_eval) - 1:
        raise SolverError("internal error: output times not all on step boundaries")
    return dts, t_start + dts / 2, is_output


def _cn_step(kin, coef, v, x, vals, col, k_dt, neg_h, cm, diag, local):
    """Staggered Crank–Nicolson: gates over ``h`` at ``v``, then a centred voltage step.

    ``vals[col]`` is the current, ``k_dt = 2/dt``; step lengths come as tensors so that one
    compiled graph serves steps of every length.
    """
    x = _exp_euler(kin.gates(v, local), x, neg_h)
    g, ge = kin.conductance(x, local)
    c = k_dt * cm
    cur = vals.index_select(0, col).squeeze(0)
    w = tree_solve(c + g + diag, torch.addcmul(cur + ge, c, v), coef)
    return 2.0 * w - v, x


def _be_step(kin, coef, v, x, vals, col, k_dt, neg_h, cm, diag, local):
    """NEURON's step: implicit voltage with frozen gates, then gates at the new voltage."""
    g, ge = kin.conductance(x, local)
    c = k_dt * cm
    cur = vals.index_select(0, col).squeeze(0)
    v = tree_solve(c + g + diag, torch.addcmul(cur + ge, c, v), coef)
    return v, _exp_euler(kin.gates(v, local), x, neg_h)


_COMPILED: dict = {}


def _compiled(step):
    if step not in _COMPILED:
        _COMPILED[step] = torch.compile(step, dynamic=False)
    return _COMPILED[step]


def _run_fixed(cell, p, vals, stimulus, t_eval, solver, reset=None):
    # Internal layout is node-first, [nodes, batch…], so the tree solve works on views.
    morph = cell.morphology
    sys = tree_system(morph)
    dtype, device = vals.dtype, vals.device
    coef = sys.tensors(dtype, device)
    index = coef["pub_of"]
    batch = _broadcast_shapes(*(x.shape[:-1] + (1,) for x in p.values()), vals.shape[1:-1])
    nb = len(batch)
    # Currents [bins, …, trace, comp] → [bins, nodes, 1…, …, trace] (junction rows are 0).
    vals = torch.cat([vals, vals.new_zeros(vals.shape[:-1] + (1,))], -1).index_select(-1, index)
    vals = vals.movedim(-1, 1)
    vals = vals.reshape(vals.shape[:2] + (1,) * (nb + 2 - vals.ndim) + vals.shape[2:])
    kin = _kinetics(cell.channels)
    local = kin.lay_out(p, index, node_first=nb)
    v = torch.full((sys.n,) + batch, float(cell.v0), dtype=dtype, device=device)
    x = kin.init(v, local)
    dts, t_mid, is_output = _step_grid(stimulus, t_eval, solver.dt)
    second = isinstance(solver, CrankNicolson)
    # Gate sub-step lengths: CN moves gates from the previous midpoint to this one.
    h = (np.concatenate([[0.0], dts[:-1]]) + dts) / 2 if second else dts
    step = _cn_step if second else _be_step
    if solver.compile:
        step = _compiled(step)
    cols = torch.as_tensor(stimulus.bin_index(t_mid), device=device)
    k_dt = torch.as_tensor((2.0 if second else 1.0) / dts, dtype=dtype, device=device)
    neg_h = torch.as_tensor(-h, dtype=dtype, device=device)
    cm = coef["cm"].view((-1,) + (1,) * nb)
    diag = coef["diag"].view((-1,) + (1,) * nb)

    # Parameters travel as explicit arguments: a checkpointed chunk differentiates only with
    # respect to its inputs, and records no graph inside (see _Chunk).
    names = [list(q) for q in local]
    flat = [t for q in local for t in q.values()]
    n_x = len(x)
    out_j = np.cumsum(is_output)  # output index reached at the end of each step
    if reset is not None:
        # [..., trace, comp, time] → [time, nodes, 1…, …, trace] like the currents; NaN = keep.
        rv = reset.values.to(device=device, dtype=dtype).movedim(-1, 0)
        rv = torch.cat([rv, rv.new_full(rv.shape[:-1] + (1,), float("nan"))], -1)
        rv = rv.index_select(-1, index).movedim(-1, 1)
        rv = rv.reshape(rv.shape[:2] + (1,) * (nb + 2 - rv.ndim) + rv.shape[2:])
        keep = torch.isnan(rv)

    def run(lo, hi, v, *args):
        x, it, outs = list(args[:n_x]), iter(args[n_x:]), []
        loc = [{k: next(it) for k in ks} for ks in names]
        for s in range(lo, hi):
            v, x = step(kin, coef, v, x, vals, cols[s : s + 1], k_dt[s], neg_h[s], cm, diag, loc)
            if is_output[s]:
                outs.append(v)
                j = int(out_j[s])
                if reset is not None and j % reset.every == 0:
                    v = torch.where(keep[j], v, rv[j])
        return (v, *x, torch.stack(outs) if outs else v.new_zeros((0,) + v.shape))

    outs = [v.unsqueeze(0)]
    n_steps, chunk = len(dts), solver.checkpoint_every
    if chunk == "auto":
        chunk = _auto_chunk(n_steps, v, x, local)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in flat)):
        chunk = None  # nothing to differentiate: nothing to store
    with warnings.catch_warnings():
        if solver.compile:  # tracing trips torch's own deprecation notices; not the user's
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor")
        if chunk is None:
            outs.append(run(0, n_steps, v, *x, *flat)[-1])
        else:
            for lo in range(0, n_steps, chunk):
                hi = min(lo + chunk, n_steps)
                res = _Chunk.apply(run, lo, hi, v, *x, *flat)
                v, x = res[0], list(res[1:-1])
                outs.append(res[-1])
    v_all = torch.cat(outs).index_select(1, coef["comp_pos"])  # [time, comp, batch…]
    return v_all.movedim(0, -1).movedim(0, -2), n_steps


_SAVED_PER_STATE = 12  # state-sized tensors autograd keeps per state and step (≈ 9 measured for HH)
_AUTO_BYTES = 1e9


def _auto_chunk(n_steps: int, v: Tensor, x: list[Tensor], local) -> int | None:
    """√n chunking when a differentiable run would store more than ``_AUTO_BYTES``."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for q in local for t in q.values())
    stored = n_steps * v.numel() * v.element_size() * _SAVED_PER_STATE * (1 + len(x))
    if not needs_grad or stored <= _AUTO_BYTES:
        return None
    return max(1, int(np.sqrt(n_steps)))


class _Chunk(torch.autograd.Function):
    """Steps ``lo … hi`` run without a graph; backward recomputes them with one.

    Unlike ``torch.utils.checkpoint`` in its default (non-reentrant) mode it keeps no autograd
    nodes for the chunk — at ~150 ops per step those cost more memory than the saved tensors —
    and unlike the reentrant mode it works with ``torch.autograd.grad``.
    """

    @staticmethod
    def forward(ctx, run, lo, hi, *inputs):
        ctx.run, ctx.lo, ctx.hi = run, lo, hi
        ctx.save_for_backward(*inputs)
        with torch.no_grad():
            return run(lo, hi, *inputs)

    @staticmethod
    def backward(ctx, *grads):
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.enable_grad():
            outs = ctx.run(ctx.lo, ctx.hi, *inputs)
        used = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        need = [t for t in inputs if t.requires_grad]
        got = iter(
            torch.autograd.grad([o for o, _ in used], need, [g for _, g in used], allow_unused=True)
        )
        return (None, None, None, *(next(got) if t.requires_grad else None for t in inputs))


def _exp_euler(gates, x, neg_h) -> list[Tensor]:
    # x(t+h) = x_inf + (x − x_inf)·exp(−h/τ): exact for frozen voltage.
    return [
        torch.lerp(inf, xi, torch.exp(tau.reciprocal() * neg_h)) for (inf, tau), xi in zip(gates, x)
    ]


# --------------------------------------------------------------------------- torchdiffeq
def _run_torchdiffeq(cell, p, vals, stimulus, t_eval, solver: Torchdiffeq):
    import torchdiffeq

    morph = cell.morphology
    dtype, device = vals.dtype, vals.device
    kin = _kinetics(cell.channels)
    local = kin.lay_out(p, None)
    src, dst, cf = (torch.as_tensor(a, device=device) for a in reduced_edges(morph))
    cf = cf.to(dtype)
    cm = torch.tensor(morph.cm, dtype=dtype, device=device)
    edges = torch.as_tensor(stimulus.edges(), dtype=dtype, device=device)

    def rhs(t, y):
        v, x = y[0], list(y[1:])
        col = torch.searchsorted(edges, t.reshape(1).to(dtype), right=True)
        cur = vals.index_select(0, col.clamp(max=vals.shape[0] - 1))[0]
        g, ge = kin.conductance(x, local)
        i_ax = torch.zeros_like(v).index_add_(-1, src, cf * (v[..., dst] - v[..., src]))
        dv = (cur - g * v + ge + i_ax) / cm
        dx = [(inf - xi) / tau for (inf, tau), xi in zip(kin.gates(v, local), x)]
        return (dv, *dx)

    batch = _broadcast_shapes(*(x.shape[:-1] for q in local for x in q.values()), vals.shape[1:-1])
    v0 = torch.full(batch + (morph.n_comp,), float(cell.v0), dtype=dtype, device=device)
    y0 = (v0, *kin.init(v0, local))
    t = torch.as_tensor(t_eval, dtype=dtype, device=device)
    inner = edges[(edges > t[0]) & (edges < t[-1])]
    options = dict(solver.options)
    if solver.adaptive:
        if len(inner):
            options.setdefault("jump_t", inner)
    else:
        dts, t_mid, _ = _step_grid(stimulus, t_eval, solver.step_size)
        grid = torch.as_tensor(
            np.concatenate([t_mid - dts / 2, [t_eval[-1]]]), dtype=dtype, device=device
        )
        options.setdefault("grid_constructor", lambda f, y0, t: grid)
        options.setdefault("perturb", True)
    kw = dict(rtol=solver.rtol, atol=solver.atol, method=solver.method, options=options)
    if solver.adjoint:
        leaves = tuple(x for q in local for x in q.values() if x.requires_grad)
        ys = torchdiffeq.odeint_adjoint(_Func(rhs), y0, t, adjoint_params=leaves, **kw)
    else:
        ys = torchdiffeq.odeint(rhs, y0, t, **kw)
    return ys[0].movedim(0, -1)


class _Func(torch.nn.Module):
    """``odeint_adjoint`` wants a module; this one holds no parameters of its own."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, t, y):
        return self.f(t, y)
