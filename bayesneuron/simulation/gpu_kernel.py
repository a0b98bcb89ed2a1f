"""The whole trajectory in one GPU kernel (Triton): staggered Crank–Nicolson for many
independent simulations at once — the particles × traces that SMC, importance sampling,
batched SVI and design criteria evaluate — with the discrete adjoint for gradients.

The torch backend on a GPU launches a few hundred small kernels per time step (and one per
tree level), so a 6-compartment cell with 20 000 particle-traces runs no faster on an H200
than the fused C kernel on two CPU cores (``benchmarks/gpu_throughput.py``). Here one
program owns ``BLOCK`` simulations ("lanes", one per GPU thread) for every step of the
trajectory (:func:`lanes_per_program`: 128, or fewer where the batch would leave streaming
multiprocessors idle): the scheme, step for step, of the fused C kernel (:mod:`.fused`: exponential
Euler gates at the previous voltage, the channel conductances, the tree (Hines) solve of the
Crank–Nicolson voltage system, ``v ← 2w − v``, output and reset at output times), reading the
same tables (:class:`~.fused.KernelProblem`). The state of every lane lives in scratch
arrays ``[node or compartment, lane]`` (lanes contiguous, so each access is coalesced); the
tables are read as scalars, so any tree and any channel declared from rate forms runs.
Gradients with respect to the channels' ``g`` and ``e``: the forward pass stores ``w``, the
gates, ``∂y'/∂y`` and ``∂y'/∂v`` per step (``8·steps·lanes·(nodes + 3·gates·comps)`` bytes in
float64) and :func:`~._triton.cn_adjoint` runs the C kernel's adjoint. Where that history
would be large (``CrankNicolson.checkpoint_every``, as on the CPU: above 1 GB with
``"auto"``), the forward keeps the state at the start of every segment and the adjoint
recomputes one segment's history at a time (one more forward pass, identical gradients).

:func:`~bayesneuron.simulate` takes it on CUDA for :class:`CrankNicolson` (``backend``
``"auto"`` or ``"fused"``) where the morphology has no loops and the channels fit the tables
(:func:`supported`); gradients with respect to currents, reset values or ``cm``/``ra`` stay
with the torch backend. Float32 or float64, as asked.

Tests run both kernels on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``), against
the C kernel (``tests/test_gpu_kernel.py``).
"""

from __future__ import annotations

import importlib.util
import math
import warnings

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch.autograd.function import once_differentiable

from bayesneuron.simulation.fused import KernelProblem, unsupported_channel
from bayesneuron.simulation.grid import Currents, channel_param_grads
from bayesneuron.simulation.hines import tree_system
from bayesneuron.simulation.solvers import CrankNicolson

__all__ = ["KernelFailed", "run", "supported"]

BLOCKS = (128, 64, 32)  # lanes per program, one lane per GPU thread (warps of 32)
_FAILED: list[str] = []  # why Triton could not build or launch the kernels in this process


class KernelFailed(RuntimeError):
    """Triton could not compile or launch the kernels here (:func:`simulate` then uses the
    torch backend, with one warning)."""


def supported(cell, solver, device, reset=None, params=(), currents=None) -> str | None:
    """``None`` if :func:`run` can take this simulation, else why not (a message)."""
    if not isinstance(solver, CrankNicolson) or solver.backend == "torch" or solver.compile:
        return "the GPU kernel runs CrankNicolson with backend 'auto' or 'fused'"
    if torch.device(device).type != "cuda":
        return f"the GPU kernel runs on CUDA; got device {device}"
    if importlib.util.find_spec("triton") is None:
        return "the GPU kernel needs Triton (pip install triton)"
    if _FAILED:
        return f"the GPU kernel failed here: {_FAILED[0]}"
    if torch.is_grad_enabled() and currents is not None and currents.requires_grad:
        return "gradients with respect to currents need the torch backend on a GPU"
    if reset is not None and reset.values.requires_grad and torch.is_grad_enabled():
        return "gradients with respect to reset values need the torch backend"
    if any(fwAD.unpack_dual(x).tangent is not None for x in params):
        return "forward-mode AD needs the torch backend"
    if tree_system(cell.morphology).n_loops:
        return "the GPU kernel solves trees; a morphology with loops needs the torch backend"
    return unsupported_channel(cell)


def run(cell, p, cur: Currents, stimulus, t_eval, solver, reset=None):
    """Voltages ``[batch…, comp, time]`` (mV, the dtype and device of ``cur.values``) and the
    number of steps, as :func:`.fused.run`: differentiable in the channels' ``g`` and ``e``
    (the discrete adjoint, from a stored history). ``p``: every cell parameter ``{name:
    [sample…, comp]}``."""
    flat = [p[f"{k}_{ch.name}"] for ch in cell.channels for k in ("g", "e")]
    store = torch.is_grad_enabled() and any(x.requires_grad for x in flat)
    host = Currents(cur.values.detach().to("cpu", torch.float64), cur.sites.cpu())
    prob = KernelProblem(cell, flat, host, stimulus, t_eval, solver.dt, reset, store)
    prob.checkpoint(solver.checkpoint_every)
    launch = _Launch(prob, len(cell.channels), cur.values.device, cur.values.dtype)
    return _GpuCN.apply(launch, *flat), launch.n_steps


class _Launch:
    """A :class:`~.fused.KernelProblem`'s tables on the device, and the two kernel calls."""

    def __init__(self, prob: KernelProblem, n_ch: int, dev, dt):
        self.prob, self.n_ch, self.dev, self.dt = prob, n_ch, dev, dt
        f, i = self._floats, self._ints
        self.tree = (i(prob.tree[0]), f(prob.tree[1]), f(prob.tree[2]), f(prob.tree[3]))
        self.tree += (f(prob.tree[4]), i(prob.tree[5]), i(prob.tree[6]))
        gated = prob.n_gates > 0
        self.rates = (
            f(prob.rates[0] if gated else np.zeros(12)),
            f(prob.rates[1] if gated else np.zeros(4)),
        )
        self.gates = tuple(i(x) for x in prob.gates) if n_ch else (i(np.zeros(1)),) * 4
        k_dt, neg_h, cols, out_at, reset_at = prob.steps
        self.steps = (f(k_dt), f(neg_h), i(cols), i(out_at), i(reset_at.astype(np.int64)))
        self.n_steps, self.n_gx = len(k_dt), max(prob.n_gates, 1)
        self.y0 = f(prob.y0 if gated else np.ones(1))
        self.rows = (i(prob.sidx), f(prob.rv), i(prob.ridx), i(prob.pidx))
        self.e_shift = f(prob.e_shift)
        self.stim = (f(prob.cur), i(prob.sites))  # currents [S, bins, site], their sites
        self.v0 = f(np.array([prob.v0]))
        self.block = lanes_per_program(prob.n_batch, _processors(dev))
        self.grid = (math.ceil(prob.n_batch / self.block),)
        self.meta = {"BLOCK": self.block, "num_warps": max(self.block // 32, 1)}

    def _floats(self, x):
        return torch.as_tensor(np.ascontiguousarray(x), device=self.dev).to(self.dt).contiguous()

    def _ints(self, x):
        x = torch.as_tensor(np.ascontiguousarray(x), device=self.dev)
        return x.to(torch.int64).contiguous()

    def pack(self, flat) -> torch.Tensor:
        """Parameters ``[g, e]`` per channel → ``[P, channel, 2, comp]`` on the device."""
        nc, shape = self.prob.n_comp, self.prob.pshape
        x = torch.stack([t.detach().to(self.dev, self.dt).expand(shape + (nc,)) for t in flat], -2)
        return x.reshape(-1, self.n_ch, 2, nc).contiguous()

    def history(self, n_steps: int):
        """``W``, ``X``, ``A``, ``D`` for ``n_steps`` steps (one float each for none) and
        their per-step sizes."""
        pr, B = self.prob, self.prob.n_batch
        sizes = (pr.n * B, self.n_gx * pr.n_comp * B, pr.n_gates * pr.n_comp * B)
        w = torch.empty(max(n_steps * sizes[0], 1), dtype=self.dt, device=self.dev)
        x = torch.full((max(n_steps * sizes[1], 1),), 1.0, dtype=self.dt, device=self.dev)
        a, d = (
            torch.empty(max(n_steps * sizes[2], 1), dtype=self.dt, device=self.dev) for _ in "ad"
        )
        return (w, x, a, d), self._ints(sizes)

    def segments(self) -> list[tuple[int, int]]:
        """Step ranges of the checkpointed segments (:meth:`.fused.KernelProblem.checkpoint`:
        one, the whole run, unless its history would be large)."""
        k = self.prob.segment or self.n_steps
        return [(s0, min(s0 + k, self.n_steps)) for s0 in range(0, max(self.n_steps, 1), k)]

    def _state(self, scratch):
        """Views of ``v`` ``[node·lane]`` and the gates ``[gate·comp·lane]`` in a forward
        scratch."""
        nb, B = self.prob.n * self.prob.n_batch, self.prob.n_batch
        return scratch[:nb], scratch[3 * nb : 3 * nb + self.n_gx * self.prob.n_comp * B]

    def _forward(self, par, out, scratch, s_lo, s_hi, hist, strides, store, init):
        pr, sidx, rv, ridx, pidx = self.prob, *self.rows
        _launch(
            "cn_forward",
            self.grid,
            *self.tree, *self.rates, *self.gates, self.y0, *self.steps,
            *self.stim, sidx, rv, ridx,
            par, pidx, self.e_shift, self.v0, out, scratch,
            *hist, strides,
            pr.n_batch, pr.n, pr.n_comp, pr.n_gates, self.n_gx, self.n_ch, s_lo, s_hi,
            pr.cur.shape[1], pr.n_time, pr.rv.shape[1], len(pr.sites),
            STORE=store, INIT=init, **self.meta,
        )  # fmt: skip

    def _buffers(self):
        """An output ``[B, comp, time]`` and a forward scratch."""
        pr, B = self.prob, self.prob.n_batch
        out = torch.empty((B, pr.n_comp, pr.n_time), dtype=self.dt, device=self.dev)
        size = (3 * pr.n + (self.n_gx + 3) * pr.n_comp) * B
        return out, torch.empty(size, dtype=self.dt, device=self.dev)

    def forward(self, par, store: bool):
        """Voltages ``[B, comp, time]`` and what the adjoint needs (``None`` without
        ``store``): the whole history, or the state at the start of every segment."""
        out, scratch = self._buffers()
        segs = self.segments()
        if not store or len(segs) == 1:
            hist, strides = self.history(self.n_steps if store else 0)
            self._forward(par, out, scratch, 0, self.n_steps, hist, strides, store, True)
            return out, ((hist, strides) if store else None)
        none, checkpoints = self.history(0), []
        for j, (s_lo, s_hi) in enumerate(segs):
            checkpoints.append(tuple(x.clone() for x in self._state(scratch)) if j else None)
            self._forward(par, out, scratch, s_lo, s_hi, *none, False, j == 0)
        return out, checkpoints

    def adjoint(self, par, saved, gout):
        """``∂L/∂(g, e)`` ``[B, channel, 2, comp]`` from ``∂L/∂V`` ``[B, comp, time]``;
        checkpointed segments are recomputed from their start, last first, each into one
        segment's history, then run backwards."""
        pr, B, nc = self.prob, self.prob.n_batch, self.prob.n_comp
        grad = torch.empty((B, self.n_ch, 2, nc), dtype=self.dt, device=self.dev)
        n_scratch = 3 * pr.n + (self.n_gx + 2 * self.n_ch + 1) * nc
        scratch = torch.empty(n_scratch * B, dtype=self.dt, device=self.dev)
        gout = gout.to(self.dt).contiguous()
        segs = self.segments()
        if isinstance(saved, tuple):  # the whole history
            self._adjoint(par, gout, *saved, scratch, grad, 0, self.n_steps, True)
            return grad
        out, fscratch = self._buffers()  # out: rewritten with the same values, not read
        hist, strides = self.history(segs[0][1] - segs[0][0])
        for j in reversed(range(len(segs))):
            s_lo, s_hi = segs[j]
            if j:
                for dst, src in zip(self._state(fscratch), saved[j]):
                    dst.copy_(src)
            self._forward(par, out, fscratch, s_lo, s_hi, hist, strides, True, j == 0)
            self._adjoint(par, gout, hist, strides, scratch, grad, s_lo, s_hi, j == len(segs) - 1)
        return grad

    def _adjoint(self, par, gout, hist, strides, scratch, grad, s_lo, s_hi, init):
        pr, (k_dt, _, _, out_at, reset_at), (_, rv, ridx, pidx) = self.prob, self.steps, self.rows
        _launch(
            "cn_adjoint",
            self.grid,
            *self.tree, *self.gates, k_dt, out_at, reset_at, rv, ridx,
            par, pidx, self.e_shift, gout, *hist, strides, scratch, grad,
            pr.n_batch, pr.n, pr.n_comp, pr.n_gates, self.n_gx, self.n_ch, s_lo, s_hi,
            pr.n_time, pr.rv.shape[1],
            INIT=init, **self.meta,
        )  # fmt: skip


def lanes_per_program(n_batch: int, n_processors: int) -> int:
    """Lanes per program: the largest of :data:`BLOCKS` that still gives each of the GPU's
    ``n_processors`` streaming multiprocessors a program (a small batch — the 10 traces of one
    large cell, a few hundred particle-traces — otherwise runs on a handful of them), else the
    smallest, one warp."""
    for block in BLOCKS[:-1]:
        if math.ceil(n_batch / block) >= n_processors:
            return block
    return BLOCKS[-1]


def _processors(dev) -> int:
    """The streaming multiprocessors of a CUDA device (1 elsewhere: Triton's interpreter)."""
    dev = torch.device(dev)
    if dev.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(dev).multi_processor_count


def _launch(name: str, grid, *args, **meta) -> None:
    """``_triton.<name>[grid](*args, **meta)``; a failure to import, compile or launch is
    remembered (the kernels are then not used again in this process) and raised as
    :class:`KernelFailed`."""
    try:
        from bayesneuron.simulation import _triton

        getattr(_triton, name)[grid](*args, **meta)
    except Exception as e:  # noqa: BLE001 — Triton raises many kinds; all mean "not here"
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        _FAILED.append(msg)
        warnings.warn(
            f"the Triton GPU kernel failed ({msg}); using the torch backend", stacklevel=3
        )
        raise KernelFailed(msg) from e


class _GpuCN(torch.autograd.Function):
    """``V = simulate(params)`` by :func:`~._triton.cn_forward`; backward by the adjoint."""

    @staticmethod
    def forward(ctx, launch: _Launch, *flat):
        par = launch.pack(flat)
        out, hist = launch.forward(par, launch.prob.store)
        if hist is not None:
            ctx.launch, ctx.par, ctx.hist = launch, par, hist
            ctx.shapes = [x.shape for x in flat]
        return out.view(launch.prob.batch + out.shape[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, gv):
        launch = ctx.launch
        gout = gv.reshape((-1,) + gv.shape[-2:])
        grad = launch.adjoint(ctx.par, ctx.hist, gout)
        pr = launch.prob
        need = ctx.needs_input_grad[1:]
        return (None, *channel_param_grads(grad, pr.batch, pr.n_comp, ctx.shapes, need))
