"""Fused CPU kernels for staggered Crank–Nicolson (``CrankNicolson(backend="fused")``, the
default on CPU in float64).

The torch backend pays a per-step overhead that dominates small cells. Here compiled kernels run
every step of a trajectory in one call, and a hand-written discrete adjoint returns the exact
gradient of the same discrete scheme with respect to each channel's ``g`` (mS/cm²) and ``e`` (mV).

Per step ``s`` (``h = neg_h[s] < 0``, ``k = k_dt[s] = 2/dt``):

1. gates ``y ← y∞(v) + (y − y∞(v))·A``, ``A = exp(h/τ(v))`` (exponential Euler at ``v``),
   with ``y∞`` and ``1/τ`` from α/β, from an own ``inf`` with α + β, or from ``inf`` and ``tau``
   (gate kinds 0, 2, 1: :meth:`~bayesneuron.channels.Gate.table`);
2. ``G_c = g_c·y_a^p_a·y_b^p_b`` per channel (at most two gates, integer powers); solve
   ``M w = cur + Σ G_c e_c + k·cm·v``, ``M`` the tree matrix of
   :class:`~bayesneuron.simulation.hines.TreeSystem` with diagonal ``k·cm + Σ G_c + diag``
   (plus, for a morphology with loops, their low-rank term, solved by the Woodbury identity:
   ``k`` more tree solves per step and a ``k × k`` system per lane; the adjoint and tangent
   do the same with ``Mᵀ`` and ``M``; the module docstring of ``hines``);
3. ``v ← 2w − v``; record ``v`` at output times, then apply a :class:`Reset`.

The adjoint runs the steps backwards: ``Mᵀμ = 2λ_v'``, ``λ_v = −λ_v' + k·cm·μ``,
``∂L/∂G_c = μ (e_c − w)``, ``∂L/∂e_c = μ G_c``, ``∂L/∂cur = μ`` at the current's site and
bin, and through the gate update ``∂y'/∂y = A``, ``∂y'/∂v = D``; the forward pass stores ``w``, ``y'``, ``A`` and ``D``, so the adjoint evaluates
no transcendental function. A reset node's adjoint is zeroed: its value came from data.
Where that history would be large (``CrankNicolson.checkpoint_every``: above about 1 GB with
``"auto"``), the forward pass keeps only the state at the start of every segment of
``checkpoint_every`` steps (√steps with ``"auto"``), and the adjoint recomputes one segment's
history at a time from it: one more forward pass, bit-identical gradients, and memory of a
segment instead of the whole trajectory.

Batch elements are independent trajectories, run in chunks of ``lanes`` side by side (lanes
last, so the per-lane loops vectorise; ``exp`` and ``log1p`` are written out for that reason).
Chunks run on ``torch.get_num_threads()`` Python threads (the kernels release the GIL); a
lane's arithmetic does not depend on its chunk, so results are bit-identical for any thread
count.

The kernels are C (``_ckernels.c``), compiled by the system C compiler on first use and
cached (:mod:`bayesneuron.simulation._ckernels`). Channel kinetics are not in the C source: each
gate's rates arrive as rows of a table packed from the channel's rate forms
(:class:`~bayesneuron.channels.RateChannel`), so any channel declared from them runs here.

Numpy layouts (C-contiguous, float64): nodes in Hines order ``[n]``; parameters
``[P, channel, 2, comp]`` (``g``, ``e``); currents ``[S, bins, site]`` (µA/cm²) at compartments
``sites`` (a sparse stimulus stays sparse: each step scatters its bin into a per-step buffer);
reset values ``[R, time, comp]`` (mV, NaN = keep); element ``b`` reads rows ``pidx[b]``,
``sidx[b]``, ``ridx[b]``. Per chunk: node arrays ``[node, lane]``, compartment arrays
``[…, comp·lane]``, lane parameters ``[channel, comp·lane]``, history ``[step, node, lane]``
(``w``) and ``[step, gate, comp·lane]`` (``y'``, ``A``, ``D``).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch.autograd.function import once_differentiable

from bayesneuron.channels.base import RateChannel
from bayesneuron.simulation import _ckernels
from bayesneuron.simulation.grid import broadcast_shapes, channel_param_grads, step_grid
from bayesneuron.simulation.hines import tree_system
from bayesneuron.simulation.solvers import AUTO_CHECKPOINT_BYTES, CrankNicolson

__all__ = ["KernelProblem", "jacobian", "run", "supported", "unsupported_channel"]

_MAX_LANES = 128  # more lanes amortise each lane loop's set-up; fewer keep big cells in cache
_MAX_GATES = 2  # gates per channel the kernels take
_MAX_POWER = 4  # gate exponents the kernels take (_ckernels.c: pow_of)


def supported(cell, solver, dtype, device, stimulus=None, reset=None, params=()) -> str | None:
    """``None`` if the fused kernel can run this simulation, else why not (a message).

    It runs :class:`CrankNicolson` on CPU in float64 for channels declared from rate forms
    (:class:`~bayesneuron.channels.RateChannel`, at most two gates each, gate powers ≤ 4),
    where the C kernel builds, and where no gradient is wanted with respect to reset values.
    """
    if not isinstance(solver, CrankNicolson):
        return f"the fused kernel runs CrankNicolson; got {type(solver).__name__}"
    if torch.device(device).type != "cpu":
        return f"the fused kernel runs on the CPU; got device {device}"
    if dtype != torch.float64:
        return f"the fused kernel runs in float64; got {dtype}"
    if (reason := unsupported_channel(cell)) is not None:
        return reason
    wants = torch.is_grad_enabled()
    if wants and reset is not None and reset.values.requires_grad:
        return "gradients with respect to reset values need the torch backend"
    if any(fwAD.unpack_dual(x).tangent is not None for x in params):
        return "forward-mode AD needs the torch backend"
    if not _ckernels.available():
        return "the fused C kernel did not build here (no working C compiler; see the warning)"
    return None


def unsupported_channel(cell) -> str | None:
    """Why the kernels' channel tables cannot hold one of ``cell``'s channels, or ``None``."""
    for ch in cell.channels:
        if not isinstance(ch, RateChannel):
            name = type(ch).__name__
            return f"the fused kernel runs RateChannel channels; {name} writes its own gates"
        gates = ch.declared().gates
        if len(gates) > _MAX_GATES:
            return f"the fused kernel takes ≤ {_MAX_GATES} gates per channel; {ch.name} has more"
        if any(g.power > _MAX_POWER for g in gates):
            return f"the fused kernel takes gate powers ≤ {_MAX_POWER}; {ch.name} has a higher one"
    return None


# --------------------------------------------------------------------------- torch interface
def run(cell, p, cur, stimulus, t_eval, solver, reset=None):
    """The fused counterpart of ``simulate._run_fixed`` for staggered Crank–Nicolson.

    Args:
        p: every cell parameter ``{name: [sample…, comp]}`` (float64, CPU).
        cur: the :class:`~bayesneuron.simulation.grid.Currents` (µA/cm² at the sites).

    Returns:
        ``(v, n_steps)`` with ``v`` ``[batch…, comp, time]`` in mV; differentiable in ``p``
        and in the currents.
    """
    flat = [p[f"{k}_{ch.name}"] for ch in cell.channels for k in ("g", "e")]
    store = torch.is_grad_enabled() and any(x.requires_grad for x in [cur.values, *flat])
    prob = KernelProblem(cell, flat, cur, stimulus, t_eval, solver.dt, reset, store)
    prob.checkpoint(solver.checkpoint_every)
    return _Fused.apply(prob, cur.values, *flat), len(prob.steps[0])


def jacobian(cell, p, cur, stimulus, t_eval, solver, reset=None, wrt=("na", "k")):
    """Voltages and their forward sensitivities to the maximal conductances of the channels
    named ``wrt``: ``(v [batch…, comp, time], J [batch…, len(wrt)·comp, comp, time])`` with
    ``J[..., a·n_comp + k, :, :] = ∂V/∂g`` of channel ``wrt[a]`` at compartment ``k``
    (mV per mS/cm²); exact for the discrete scheme. One stored forward pass, then one tangent
    pass that evaluates no transcendental function: about four forward passes in all for the
    paper's 12 conductances (measured), where forward differences take thirteen. ``wrt`` is
    checked by :func:`~bayesneuron.simulate.sensitivities`."""
    names = [ch.name for ch in cell.channels]
    flat = [p[f"{k}_{ch.name}"].detach() for ch in cell.channels for k in ("g", "e")]
    prob = KernelProblem(cell, flat, cur, stimulus, t_eval, solver.dt, reset, store=True)
    par = prob.pack(flat)
    idx = np.array([names.index(c) for c in wrt], dtype=np.int64)
    out, hist = prob.forward(par)
    jac = prob.tangent(par, hist, idx)
    v = torch.from_numpy(out).view(prob.batch + out.shape[1:])
    return v, torch.from_numpy(jac).view(prob.batch + jac.shape[1:])


def _chunking(n_batch: int, n_nodes: int, threads: int) -> tuple[int, int]:
    """``(lanes, chunks)``: every thread gets work, in chunks of at most ``_MAX_LANES`` lanes
    (fewer on big cells, to stay in cache); lanes a multiple of the vector width (4)."""
    cap = min(_MAX_LANES, max(16, 4096 // n_nodes))
    chunks = max(1, min(threads, n_batch))
    chunks *= -(-n_batch // (chunks * cap))  # more chunks per thread, equally many each
    lanes = -(-n_batch // chunks)
    lanes = min(cap, -(-lanes // 4) * 4)
    return lanes, -(-n_batch // lanes)


_POOL: dict[tuple[int, int], ThreadPoolExecutor] = {}  # threads per process


def _map(fn, jobs: list, threads: int) -> None:
    """``fn(*job)`` for every job, on up to ``threads`` threads."""
    if threads <= 1 or len(jobs) <= 1:
        for job in jobs:
            fn(*job)
        return
    key = (os.getpid(), threads)  # a forked child has none of its parent's threads
    if key not in _POOL:
        _POOL[key] = ThreadPoolExecutor(threads, thread_name_prefix="bayesneuron-fused")
    for f in [_POOL[key].submit(fn, *job) for job in jobs]:
        f.result()


class KernelProblem:
    """Everything the kernels take except the parameters (see the module docstring), as
    numpy arrays; the C kernels here and the GPU kernel (:mod:`.gpu_kernel`) read them."""

    def __init__(self, cell, flat, currents, stimulus, t_eval, dt, reset, store):
        self.store = store  # keep the history the adjoint needs
        self.segment = None  # steps per checkpointed segment (None: the whole history)
        self._no_history = tuple(np.empty(0) for _ in range(4))
        sys = tree_system(cell.morphology)
        self.n_comp, self.n_time, self.n = cell.n_comp, len(t_eval), sys.n
        self.tree = (sys.parent, sys.a, sys.b, sys.diag, sys.cm, sys.pub_of, sys.comp_pos)
        self.tree += (sys.loop_a, sys.loop_b, sys.loop_ga, sys.loop_gb)
        self.tree = tuple(np.ascontiguousarray(x) for x in self.tree)
        self.n_loops = sys.n_loops
        specs, gcf, y0, gates = [], [], [], []
        for ch in cell.channels:
            kin = ch.declared()
            tables = [g.table() for g in kin.gates]  # (kind, three rate rows) per gate
            powers = [g.power for g in kin.gates]
            a = len(specs) if tables else 0  # no gate: gate 0 (or a dummy) at power 0
            b = a + 1 if len(tables) > 1 else a
            gates.append((a, powers[0] if tables else 0, b, powers[1] if len(tables) > 1 else 0))
            specs += [rows for _, rows in tables]
            gcf += [(kin.v_shift, kin.eps, kin.phi, float(kind)) for kind, _ in tables]
            init = ch.init_gates(torch.tensor(float(cell.v0), dtype=torch.float64), {})
            y0 += [float(init[name]) for name in ch.state_names]
        self.n_gates = len(specs)
        self.y0 = np.array(y0, dtype=np.float64)
        self.rates = (
            np.array(specs, dtype=np.float64).reshape(-1, 3, 4),
            np.array(gcf, dtype=np.float64).reshape(-1, 4),
        )
        self.gates = tuple(np.array(x, dtype=np.int64) for x in zip(*gates))
        self.e_shift = np.array([ch.declared().e_shift for ch in cell.channels], dtype=np.float64)
        self.v0 = float(cell.v0)

        dts, t_mid, is_output = step_grid(stimulus, t_eval, dt)
        h = (np.concatenate([[0.0], dts[:-1]]) + dts) / 2  # gates: previous midpoint → this one
        out_j = np.cumsum(is_output)
        resets = np.zeros_like(is_output) if reset is None else out_j % reset.every == 0
        self.steps = (
            2.0 / dts,
            -h,
            stimulus.bin_index(t_mid).astype(np.int64),
            np.where(is_output, out_j, -1).astype(np.int64),
            is_output & resets,
        )

        vals = currents.values  # [bins, …, trace, site]
        self.vals_shape = tuple(vals.shape)
        self.pshape = broadcast_shapes(*(x.shape[:-1] for x in flat))
        self.batch = broadcast_shapes(self.pshape + (1,), vals.shape[1:-1])
        self.n_batch = math.prod(self.batch)
        self.threads = torch.get_num_threads()
        self.lanes, self.n_chunks = _chunking(self.n_batch, sys.n, self.threads)
        cur = vals.detach().movedim(0, -2)  # [S…, bins, site]
        self.cur = cur.reshape((-1,) + cur.shape[-2:]).contiguous().numpy()
        self.sites = np.ascontiguousarray(currents.sites.cpu().numpy(), dtype=np.int64)
        self.sidx = self._rows(vals.shape[1:-1])
        self.pidx = self._rows(self.pshape + (1,))
        if reset is None:
            self.rv, self.ridx = np.zeros((1, 1, self.n_comp)), np.zeros(self.n_batch, np.int64)
        else:
            rv = reset.values.detach().to(device="cpu", dtype=torch.float64)
            self.ridx = self._rows(rv.shape[:-2])
            self.rv = rv.reshape((-1,) + rv.shape[-2:]).transpose(1, 2).contiguous().numpy()

    def _rows(self, shape) -> np.ndarray:
        """Row of an array with leading dims ``shape`` that each batch element reads ``[B]``."""
        rows = torch.arange(math.prod(shape), dtype=torch.int64).reshape(shape)
        return np.ascontiguousarray(rows.expand(self.batch).reshape(-1).numpy())

    def pack(self, flat) -> np.ndarray:
        """Parameters ``[g, e]`` per channel → ``[P, channel, 2, comp]``."""
        x = torch.stack([t.detach().expand(self.pshape + (self.n_comp,)) for t in flat], -2)
        return x.reshape(-1, len(flat) // 2, 2, self.n_comp).contiguous().numpy()

    def _chunks(self):
        for ch in range(self.n_chunks):
            b0 = ch * self.lanes
            yield ch, b0, min(b0 + self.lanes, self.n_batch)

    def _data(self, par, b0, b1):
        """The chunk's rows of the inputs, with its ``g`` and effective ``e`` per channel
        ``[channel, comp·lane]``."""
        lp = par[self.pidx[b0:b1]].transpose(1, 2, 3, 0)  # [channel, 2, comp, lane]
        gm = np.ascontiguousarray(lp[:, 0]).reshape(par.shape[1], -1)
        ee = np.ascontiguousarray(lp[:, 1] - self.e_shift[:, None, None]).reshape(gm.shape)
        return self.cur, self.sites, self.sidx[b0:b1], self.rv, self.ridx[b0:b1], gm, ee

    def checkpoint(self, every) -> None:
        """Set :attr:`segment`, the steps per checkpointed segment (``None``: store the whole
        history), from ``CrankNicolson.checkpoint_every`` (see the module docstring)."""
        n_steps, self.segment = len(self.steps[0]), None
        if not self.store or every is None:
            return
        if every == "auto":
            per_step = self.n + (max(self.n_gates, 1) + 2 * self.n_gates) * self.n_comp
            if 8.0 * n_steps * per_step * self.n_batch <= AUTO_CHECKPOINT_BYTES:
                return
            every = math.isqrt(n_steps - 1) + 1  # ⌈√steps⌉
        self.segment = every if every < n_steps else None

    def _segments(self):
        """``(s0, s1)`` step ranges of the checkpointed segments, in time order."""
        n_steps, k = len(self.steps[0]), self.segment
        return [(s0, min(s0 + k, n_steps)) for s0 in range(0, n_steps, k)]

    def forward(self, par):
        """Voltages ``[B, comp, time]`` and, if ``self.store``, the history (a :class:`_History`,
        or with :attr:`segment` set, a :class:`_Checkpoints`)."""
        n, nc, ng = self.n, self.n_comp, self.n_gates
        out = np.empty((self.n_batch, nc, self.n_time))
        shapes = [(b1 - b0) for _, b0, b1 in self._chunks()]
        if self.segment is not None:
            hist = _Checkpoints(len(self._segments()), n, max(ng, 1), nc, shapes)
            jobs = [(par, out, hist.chunks[ch], b0, b1) for ch, b0, b1 in self._chunks()]
            _map(self._forward_segments, jobs, self.threads)
            return out, hist
        n_steps = len(self.steps[0]) if self.store else 0
        hist = _History([(n_steps, n, nl) for nl in shapes], ng, nc)
        jobs = []
        for ch, b0, b1 in self._chunks():
            data = self._data(par, b0, b1)
            args = (self.tree, self.rates, self.gates, self.steps, data, self.v0, out[b0:b1])
            jobs.append(args + (hist.chunks[ch], self._forward_work(b1 - b0), self.store))
        _map(_ckernels.forward_chunk, jobs, self.threads)
        return out, hist

    def _forward_work(self, nl: int) -> tuple:
        """The forward kernel's work arrays for ``nl`` lanes; the initial gates in ``yy[1]``."""
        n, nc, ng = self.n, self.n_comp, self.n_gates
        m = nc * nl
        yy = np.empty((2, max(ng, 1), m))  # gates (ping-pong); initial values in yy[1]
        yy[:] = np.repeat(self.y0, nc * nl).reshape(ng, m) if ng else 1.0
        node, gate, comp = np.empty((3, n, nl)), np.empty((2, ng, m)), np.empty((11, m))
        work = (node[0], node[1], node[2], yy, gate[0], gate[1], comp[:6])
        return work + (comp[6], comp[7], comp[8], comp[9], comp[10]) + self._loop_work(nl)

    def _forward_segments(self, par, out, ck, b0, b1) -> None:
        """One chunk forward, segment by segment, keeping the state at each segment's start
        in ``ck`` (``v`` ``[segment, node, lane]``, gates ``[segment, gate, comp·lane]``)."""
        work, data = self._forward_work(b1 - b0), self._data(par, b0, b1)
        v, yy = work[0], work[3]
        v[:] = self.v0
        for j, (s0, s1) in enumerate(self._segments()):
            ck[0][j], ck[1][j] = v, yy[1]
            steps = tuple(x[s0:s1] for x in self.steps)
            flags = _ckernels.RESUME if j else 0
            args = (self.tree, self.rates, self.gates, steps, data, self.v0, out[b0:b1])
            _ckernels.forward_chunk(*args, self._no_history, work, False, flags)

    def adjoint(self, par, hist, gout, want_cur=False) -> tuple[np.ndarray, np.ndarray | None]:
        """``∂L/∂(g, e)`` ``[B, channel, 2, comp]`` from ``∂L/∂V`` ``[B, comp, time]`` and,
        with ``want_cur``, ``∂L/∂(currents)`` in the layout of ``currents.values``."""
        grad = np.empty((self.n_batch,) + par.shape[1:])
        gcur = np.zeros((self.n_batch,) + self.cur.shape[1:]) if want_cur else None
        jobs = [
            (par, hist.chunks[ch], gout[b0:b1], grad[b0:b1], b0, b1)
            + (None if gcur is None else gcur[b0:b1],)
            for ch, b0, b1 in self._chunks()
        ]
        run = self._adjoint_segments if isinstance(hist, _Checkpoints) else self._adjoint_whole
        _map(run, jobs, self.threads)
        if gcur is None:
            return grad, None
        rows = np.zeros(self.cur.shape)  # [row, bins, site]: lanes that read one row add up
        np.add.at(rows, self.sidx, gcur)
        vals = self.vals_shape
        return grad, np.moveaxis(rows.reshape(vals[1:-1] + rows.shape[1:]), -2, 0)

    def _adjoint_whole(self, par, hist, gout, grad, b0, b1, gcur=None) -> None:
        work, data = self._adjoint_work(b1 - b0, par.shape[1]), self._data(par, b0, b1)
        args = (self.tree, self.gates, self.steps, data, gout, hist, work, grad, gcur)
        _ckernels.adjoint_chunk(*args)

    def _adjoint_segments(self, par, ck, gout, grad, b0, b1, gcur=None) -> None:
        """One chunk backward from checkpoints: each segment's history recomputed from the
        state at its start (bit-identical to the stored one), then its adjoint; the adjoint
        state carries over from segment to segment in the work arrays."""
        nl = b1 - b0
        work, data = self._adjoint_work(nl, par.shape[1]), self._data(par, b0, b1)
        fwork = self._forward_work(nl)
        held = _History([(self.segment, self.n, nl)], self.n_gates, self.n_comp)
        seg = held.chunks[0]  # the buffer goes back to the pool when ``held`` is freed
        out = np.empty((1, 1, self.n_time))  # not written (NO_OUT)
        flags = _ckernels.RESUME | _ckernels.NO_OUT
        for j, (s0, s1) in reversed(list(enumerate(self._segments()))):
            fwork[0][:], fwork[3][1] = ck[0][j], ck[1][j]
            steps, hist = tuple(x[s0:s1] for x in self.steps), tuple(x[: s1 - s0] for x in seg)
            args = (self.tree, self.rates, self.gates, steps, data, self.v0, out, hist, fwork)
            _ckernels.forward_chunk(*args, True, flags)
            args = (self.tree, self.gates, steps, data, gout, hist, work, grad, gcur)
            _ckernels.adjoint_chunk(*args)

    def _adjoint_work(self, nl: int, n_ch: int) -> tuple:
        """The adjoint kernel's work arrays for ``nl`` lanes, its state (``λ_v``, ``λ_y``,
        the gradient sums) zeroed."""
        n, m = self.n, self.n_comp * nl
        node, comp = np.empty((3, n, nl)), np.empty((7, m))
        node[0] = 0.0
        ly, gg = np.zeros((max(self.n_gates, 1), m)), np.zeros((n_ch, 2, m))
        work = (node[0], node[1], node[2], ly, gg, comp[0], comp[1], comp[2], comp[3])
        return work + (comp[4], comp[5:]) + self._loop_work(nl)

    def tangent(self, par, hist, wrt) -> np.ndarray:
        """``∂V/∂g`` ``[B, len(wrt)·comp, comp, time]`` from a stored forward pass."""
        jac = np.empty((self.n_batch, len(wrt) * self.n_comp, self.n_comp, self.n_time))
        jobs = [
            self._tangent_job(par, hist.chunks[ch], wrt, jac[b0:b1], b0, b1)
            for ch, b0, b1 in self._chunks()
        ]
        _map(_ckernels.tangent_chunk, jobs, self.threads)
        return jac

    def _tangent_job(self, par, hist, wrt, jac, b0, b1) -> tuple:
        n, nc, ng, n_ch, nl = self.n, self.n_comp, self.n_gates, par.shape[1], b1 - b0
        m, n_p = nc * nl, len(wrt) * nc
        dv, dy = np.zeros((n_p, n, nl)), np.zeros((n_p, max(ng, 1), m))
        node, comp = np.empty((2, n, nl)), np.empty((5, m))
        work = (dv, dy, node[0], node[1], np.empty((3, max(n_ch, 1), m)), comp[0], comp[1])
        work += (comp[2], comp[3], comp[4]) + self._loop_work(nl)
        data = self._data(par, b0, b1)
        return (self.tree, self.gates, self.steps, data, hist, wrt, jac, work)

    def _loop_work(self, nl: int) -> tuple:
        """The Woodbury correction's work arrays for the loops: ``Z`` ``[k, node, lane]``,
        the factored ``k × k`` system ``[k·k, lane]`` and its solution ``[k, lane]``."""
        k = self.n_loops
        return np.empty((k, self.n, nl)), np.empty((k * k, nl)), np.empty((k, nl))


class _Checkpoints:
    """The state at the start of every checkpointed segment, per chunk ``(v, y)``:
    ``v`` ``[segment, node, lane]``, gates ``[segment, gate, comp·lane]``."""

    def __init__(self, n_seg: int, n: int, n_gx: int, n_comp: int, lanes: list[int]):
        self.chunks = [
            (np.empty((n_seg, n, nl)), np.empty((n_seg, n_gx, n_comp * nl))) for nl in lanes
        ]


class _History:
    """What the adjoint reads, per chunk ``(W, X, A, D)`` (see the module docstring).

    The arrays are views of one buffer, handed on to the next forward pass once this object is
    freed: fresh memory costs a page fault per page, ≈ 10 % of a small cell's forward + backward.
    """

    _spare: list[np.ndarray] = []
    _lock = threading.Lock()
    _KEEP = 2**28  # floats (2 GB) kept for reuse at most: a batch of designs needs ~1 GB

    def __init__(self, shapes, n_gates, n_comp):
        """``shapes``: ``(steps, nodes, lanes)`` per chunk."""
        layout = [
            ((s, n, nl), (s, max(n_gates, 1), n_comp * nl)) + ((s, n_gates, n_comp * nl),) * 2
            for s, n, nl in shapes
        ]
        sizes = [[math.prod(shape) for shape in chunk] for chunk in layout]
        buf = self._take(sum(map(sum, sizes)))
        self.chunks, at = [], 0
        for chunk, chunk_sizes in zip(layout, sizes):
            views = []
            for shape, size in zip(chunk, chunk_sizes):
                views.append(buf[at : at + size].reshape(shape))
                at += size
            if not n_gates:
                views[1][:] = 1.0  # the dummy gate of a leak-only cell
            self.chunks.append(tuple(views))
        if buf.size:
            weakref.finalize(self, self._give_back, buf)

    @classmethod
    def _take(cls, size: int) -> np.ndarray:
        """A spare buffer of at least ``size`` floats (at most twice that), or a new one."""
        with cls._lock:
            for i, b in enumerate(cls._spare):
                if size <= b.size <= 2 * size:
                    return cls._spare.pop(i)
        return np.empty(size)

    @classmethod
    def _give_back(cls, buf: np.ndarray) -> None:
        if buf.size > cls._KEEP:
            return
        with cls._lock:
            cls._spare.append(buf)
            cls._spare.sort(key=lambda b: -b.size)
            while sum(b.size for b in cls._spare) > cls._KEEP:
                cls._spare.pop()


class _Fused(torch.autograd.Function):
    """``V = simulate(params)`` by the C forward kernel; backward by the discrete adjoint."""

    @staticmethod
    def forward(ctx, prob, vals, *flat):
        par = prob.pack(flat)
        out, hist = prob.forward(par)
        if prob.store:
            ctx.prob, ctx.par, ctx.hist = prob, par, hist
            ctx.shapes = [x.shape for x in flat]
        return torch.from_numpy(out).view(prob.batch + out.shape[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, gv):
        prob = ctx.prob
        gout = gv.contiguous().reshape((-1,) + gv.shape[-2:]).numpy()
        grad, gcur = prob.adjoint(ctx.par, ctx.hist, gout, want_cur=ctx.needs_input_grad[1])
        grad = torch.from_numpy(grad)
        grads = [None if gcur is None else torch.from_numpy(np.ascontiguousarray(gcur))]
        need = ctx.needs_input_grad[2:]
        grads += channel_param_grads(grad, prob.batch, prob.n_comp, ctx.shapes, need)
        return (None, *grads)
