"""The torch backend of the fixed-step schemes: staggered Crank–Nicolson and backward Euler,
step by step with autograd, optionally ``torch.compile``d and checkpointed in chunks."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from bayesneuron.simulation.checks import PASSIVE
from bayesneuron.simulation.grid import broadcast_shapes, step_grid
from bayesneuron.simulation.hines import coupled_coefficients, tree_solve, tree_system
from bayesneuron.simulation.kinetics import exp_euler, kinetics, lay_out
from bayesneuron.simulation.solvers import AUTO_CHECKPOINT_BYTES, CrankNicolson

__all__ = ["run_fixed"]


def _injected(vals, nodes, col, v):
    """The current density at every node ``[nodes, batch…]``: ``vals[col]`` ``[site, …]``
    scattered to the sites' nodes ``nodes``, zero elsewhere (a per-step buffer)."""
    cur = vals.index_select(0, col).squeeze(0)
    return cur.new_zeros(v.shape[:1] + cur.shape[1:]).index_copy(0, nodes, cur)


def _cn_step(kin, coef, v, x, vals, nodes, col, k_dt, neg_h, cm, diag, local):
    """Staggered Crank–Nicolson: gates over ``h`` at ``v``, then a centred voltage step.

    ``vals[col]`` is the current at nodes ``nodes``, ``k_dt = 2/dt``; step lengths come as
    tensors so that one compiled graph serves steps of every length.
    """
    x = exp_euler(kin.gates(v, local), x, neg_h)
    g, ge = kin.conductance(x, local)
    c = k_dt * cm
    cur = _injected(vals, nodes, col, v)
    w = tree_solve(c + g + diag, torch.addcmul(cur + ge, c, v), coef)
    return 2.0 * w - v, x


def _be_step(kin, coef, v, x, vals, nodes, col, k_dt, neg_h, cm, diag, local):
    """NEURON's step: implicit voltage with frozen gates, then gates at the new voltage."""
    g, ge = kin.conductance(x, local)
    c = k_dt * cm
    cur = _injected(vals, nodes, col, v)
    v = tree_solve(c + g + diag, torch.addcmul(cur + ge, c, v), coef)
    return v, exp_euler(kin.gates(v, local), x, neg_h)


_COMPILED: dict = {}


def _compiled(step):
    if step not in _COMPILED:
        _COMPILED[step] = torch.compile(step, dynamic=False)
    return _COMPILED[step]


def run_fixed(cell, p, cur, stimulus, t_eval, solver, reset=None):
    """Step the fixed-step scheme of ``solver``; ``cur``: the
    :class:`~bayesneuron.simulation.grid.Currents`. Returns ``(v [batch…, comp, time],
    n_steps)``."""
    # Internal layout is node-first, [nodes, batch…], so the tree solve works on views.
    morph = cell.morphology
    sys = tree_system(morph)
    vals = cur.values
    dtype, device = vals.dtype, vals.device
    coef = sys.tensors(dtype, device)
    index = coef["pub_of"]
    batch = broadcast_shapes(*(x.shape[:-1] + (1,) for x in p.values()), vals.shape[1:-1])
    nb = len(batch)
    # Currents [bins, …, trace, site] → [bins, site, 1…, …, trace]; each step scatters its
    # bin to the sites' nodes (no [bins, nodes] array: a sparse stimulus stays sparse).
    vals = vals.movedim(-1, 1)
    vals = vals.reshape(vals.shape[:2] + (1,) * (nb + 2 - vals.ndim) + vals.shape[2:])
    nodes = coef["comp_pos"].index_select(0, cur.sites)
    kin = kinetics(cell.channels)
    local = kin.lay_out(p, index, node_first=nb)
    v = torch.full((sys.n,) + batch, float(cell.v0), dtype=dtype, device=device)
    x = kin.init(v, local)
    dts, t_mid, is_output = step_grid(stimulus, t_eval, solver.dt)
    second = isinstance(solver, CrankNicolson)
    # Gate sub-step lengths: CN moves gates from the previous midpoint to this one.
    h = (np.concatenate([[0.0], dts[:-1]]) + dts) / 2 if second else dts
    step = _cn_step if second else _be_step
    if solver.compile:
        step = _compiled(step)
    cols = torch.as_tensor(stimulus.bin_index(t_mid), device=device)
    k_dt = torch.as_tensor((2.0 if second else 1.0) / dts, dtype=dtype, device=device)
    neg_h = torch.as_tensor(-h, dtype=dtype, device=device)
    membrane = (coef, coef["cm"].view((-1,) + (1,) * nb), coef["diag"].view((-1,) + (1,) * nb))

    # Parameters travel as explicit arguments: a checkpointed chunk differentiates only with
    # respect to its inputs, and records no graph inside (see _Chunk).
    names = [list(q) for q in local]
    passive = [k for k in PASSIVE if k in p]  # a free cm or ra (µF/cm², Ω·cm) [sample…, comp]
    flat = [t for q in local for t in q.values()] + [p[k] for k in passive] + [vals]
    n_x = len(x)
    out_j = np.cumsum(is_output)  # output index reached at the end of each step
    if reset is not None:
        rv, keep = _reset_layout(reset, index, nb, dtype, device)

    def run(lo, hi, v, *args):  # args: gates, parameters, currents (last)
        x, it, outs, vals = list(args[:n_x]), iter(args[n_x:-1]), [], args[-1]
        loc = [{k: next(it) for k in ks} for ks in names]
        cf, cm, diag = _membrane(sys, membrane, {k: next(it) for k in passive}, index, nb)
        for s in range(lo, hi):
            v, x = step(
                kin, cf, v, x, vals, nodes, cols[s : s + 1], k_dt[s], neg_h[s], cm, diag, loc
            )
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


def _reset_layout(reset, index, nb: int, dtype, device) -> tuple[Tensor, Tensor]:
    """Reset values ``[..., trace, comp, time]`` → ``[time, nodes, 1…, …, trace]`` like the
    currents, and where to keep the simulated voltage (NaN)."""
    rv = reset.values.to(device=device, dtype=dtype).movedim(-1, 0)
    rv = torch.cat([rv, rv.new_full(rv.shape[:-1] + (1,), float("nan"))], -1)
    rv = rv.index_select(-1, index).movedim(-1, 1)
    rv = rv.reshape(rv.shape[:2] + (1,) * (nb + 2 - rv.ndim) + rv.shape[2:])
    return rv, torch.isnan(rv)


def _membrane(sys, membrane: tuple, passive: dict, index, nb: int) -> tuple:
    """``(coef, cm, diag)`` node-first: the morphology's, or from a free ``cm`` (µF/cm²) and
    ``ra`` (Ω·cm) ``[sample…, comp]`` (per-batch tree coefficients)."""
    coef, cm, diag = membrane
    if "cm" in passive:
        cm = lay_out(passive["cm"], index, nb)  # junctions: 0
    if "ra" in passive:
        diag, coef = coupled_coefficients(sys, lay_out(passive["ra"], index, nb), coef)
    return coef, cm, diag


_SAVED_PER_STATE = 12  # state-sized tensors autograd keeps per state and step (≈ 9 measured for HH)


def _auto_chunk(n_steps: int, v: Tensor, x: list[Tensor], local) -> int | None:
    """√n chunking when a differentiable run would store more than
    :data:`~bayesneuron.simulation.solvers.AUTO_CHECKPOINT_BYTES`."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for q in local for t in q.values())
    stored = n_steps * v.numel() * v.element_size() * _SAVED_PER_STATE * (1 + len(x))
    if not needs_grad or stored <= AUTO_CHECKPOINT_BYTES:
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
