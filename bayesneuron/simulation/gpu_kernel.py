"""The whole trajectory in one GPU kernel (Triton): staggered Crank–Nicolson forward passes
for many independent simulations at once — the particles × traces that SMC, importance
sampling and design criteria evaluate without gradients.

The torch backend on a GPU launches a few hundred small kernels per time step (and one per
tree level), so a 6-compartment cell with 20 000 particle-traces runs no faster on an H200
than the fused C kernel on two CPU cores (``benchmarks/gpu_throughput.py``). Here one
program owns ``BLOCK`` simulations ("lanes", one per GPU thread) for every step of the
trajectory: the scheme, step for step, of the fused C kernel (:mod:`.fused`: exponential
Euler gates at the previous voltage, the channel conductances, the tree (Hines) solve of the
Crank–Nicolson voltage system, ``v ← 2w − v``, output and reset at output times), reading the
same tables (:class:`~.fused.KernelProblem`). The state of every lane lives in scratch
arrays ``[node or compartment, lane]`` (lanes contiguous, so each access is coalesced); the
tables are read as scalars, so any tree and any channel declared from rate forms runs.

Forward only: :func:`~bayesneuron.simulate` takes it on CUDA for :class:`CrankNicolson`
(``backend`` ``"auto"`` or ``"fused"``) when no gradient is wanted, the morphology has no
loops and the channels fit the tables (:func:`supported`); gradients on a GPU stay with the
torch backend. Float32 or float64, as asked.

Tests run the kernel on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``), against the
C kernel (``tests/test_gpu_kernel.py``).
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import torch

from bayesneuron.simulation.fused import KernelProblem, unsupported_channel
from bayesneuron.simulation.grid import Currents
from bayesneuron.simulation.hines import tree_system
from bayesneuron.simulation.solvers import CrankNicolson

__all__ = ["run", "supported"]

BLOCK = 128  # lanes per program


def supported(cell, solver, device, reset=None, params=()) -> str | None:
    """``None`` if :func:`run` can take this simulation, else why not (a message)."""
    if not isinstance(solver, CrankNicolson) or solver.backend == "torch" or solver.compile:
        return "the GPU kernel runs CrankNicolson with backend 'auto' or 'fused'"
    if torch.device(device).type != "cuda":
        return f"the GPU kernel runs on CUDA; got device {device}"
    if importlib.util.find_spec("triton") is None:
        return "the GPU kernel needs Triton (pip install triton)"
    if torch.is_grad_enabled() and any(x.requires_grad for x in params):
        return "the GPU kernel has no adjoint: gradients need the torch backend"
    if reset is not None and reset.values.requires_grad and torch.is_grad_enabled():
        return "the GPU kernel has no adjoint: gradients need the torch backend"
    if tree_system(cell.morphology).n_loops:
        return "the GPU kernel solves trees; a morphology with loops needs the torch backend"
    return unsupported_channel(cell)


def run(cell, p, cur: Currents, stimulus, t_eval, solver, reset=None):
    """Voltages ``[batch…, comp, time]`` (mV, the dtype and device of ``cur.values``) and the
    number of steps, as :func:`.fused.run` without gradients. ``p``: every cell parameter
    ``{name: [sample…, comp]}``."""
    from bayesneuron.simulation import _triton

    dev, dt = cur.values.device, cur.values.dtype
    flat = [p[f"{k}_{ch.name}"].detach() for ch in cell.channels for k in ("g", "e")]
    host = Currents(cur.values.detach().to("cpu", torch.float64), cur.sites.cpu())
    prob = KernelProblem(cell, flat, host, stimulus, t_eval, solver.dt, reset, store=False)
    n_ch, nc = len(cell.channels), prob.n_comp
    par = torch.stack([t.to(dev, dt).expand(prob.pshape + (nc,)) for t in flat], -2)
    par = par.reshape(-1, n_ch, 2, nc).contiguous()
    e_shift = torch.as_tensor(prob.e_shift, dtype=dt, device=dev)

    def f(x):  # floats in the compute dtype
        return torch.as_tensor(np.ascontiguousarray(x), device=dev).to(dt).contiguous()

    def i(x):
        return torch.as_tensor(np.ascontiguousarray(x), device=dev).to(torch.int64).contiguous()

    parent, ta, tb, diag, cm, pub, pos = prob.tree[:7]
    spec, gcf = prob.rates
    ga, pa, gb, pb = (i(x) for x in prob.gates) if n_ch else (i(np.zeros(1)),) * 4
    k_dt, neg_h, cols, out_at, reset_at = prob.steps
    n_gx = max(prob.n_gates, 1)
    y0 = prob.y0 if prob.n_gates else np.ones(1)
    B, n, n_steps = prob.n_batch, prob.n, len(k_dt)
    out = torch.empty((B, nc, prob.n_time), dtype=dt, device=dev)
    scratch = torch.empty((3 * n + (n_gx + 3) * nc) * B, dtype=dt, device=dev)
    _triton.cn_forward[(math.ceil(B / BLOCK),)](
        i(parent), f(ta), f(tb), f(diag), f(cm), i(pub), i(pos),
        f(spec.reshape(-1) if prob.n_gates else np.zeros(12)),
        f(gcf.reshape(-1) if prob.n_gates else np.zeros(4)),
        ga, pa, gb, pb, f(y0),
        f(k_dt), f(neg_h), i(cols), i(out_at), i(reset_at.astype(np.int64)),
        f(prob.cur), i(prob.sites), i(prob.sidx), f(prob.rv), i(prob.ridx),
        par, i(prob.pidx), e_shift, f(np.array([prob.v0])), out, scratch,
        B, n, nc, prob.n_gates, n_gx, n_ch, n_steps, prob.cur.shape[1], prob.n_time,
        prob.rv.shape[1], len(prob.sites),
        BLOCK=BLOCK,
    )  # fmt: skip
    return out.view(prob.batch + out.shape[1:]), n_steps
