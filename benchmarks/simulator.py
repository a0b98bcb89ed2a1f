"""Simulator benchmarks: bayesneuron's solvers side by side with the paper's method and peers.

Run from the repository root::

    python benchmarks/simulator.py                      # all cases, full size
    python benchmarks/simulator.py --quick --cases paper_toy --json /tmp/bench.json

Each measurement (one forward, or one forward + backward, of one implementation) runs in a
fresh process forked from a server that has already imported torch, so peak memory is that
measurement's own: the peak resident set above the process' baseline on CPU (Linux ``VmHWM``
after resetting it through ``/proc/self/clear_refs``; ``ru_maxrss`` elsewhere), or
``torch.cuda.max_memory_allocated`` on CUDA. Times are ``time.perf_counter`` wall clock, best
of ``--repeat`` after one warm-up call (whose output is kept for the accuracy check).

Output: a table on stdout, and a JSON file ``{"machine": {...}, "rows": [...]}``; every row has
``case, impl, dtype, fwd_s, fwd_bwd_s, peak_mem_mb, max_abs_err_mv, err_reference`` plus
extras (``n_traces``, ``n_comp``, ``repeats``, ``compile_s`` for Jaxley, ``note``, …).
See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = ("paper_toy", "hh_tree", "l23_cell")
KEYS = (
    "case",
    "impl",
    "dtype",
    "fwd_s",
    "fwd_bwd_s",
    "peak_mem_mb",
    "max_abs_err_mv",
    "err_reference",
)
PAPER_IMPL = "torchdiffeq-dopri5-adjoint"  # the paper's own method
CN_CANDIDATES = (0.004, 0.002, 0.0015)  # paper_toy: the largest one within TOL_MV is chosen
TOL_MV = 0.05
PAPER_ACCURACY_DT = (
    0.004  # CN step whose error (≈ 0.2–0.3 mV) matches the paper's own float32 solve
)


# =========================================================================== problems
# Everything below up to "measurement" runs inside the worker processes.


def _sizes(case: str, quick: bool) -> dict:
    """Problem sizes per case; ``--quick`` shrinks them for a smoke run."""
    if case == "paper_toy":
        # quick: 10 of the 100 traces, the first 12 of the 48 output times (0.10–1.22 ms)
        return {"n_traces": 10, "n_times": 12} if quick else {"n_traces": 100, "n_times": 48}
    if case == "hh_tree":
        # 100 step amplitudes 0–0.5 nA at the soma, delay 1 ms, 40 ms long, 50 ms, dt 0.025.
        return (
            {"n_traces": 10, "t_stop": 10.0, "delay": 1.0, "duration": 8.0, "dt": 0.025}
            if quick
            else {"n_traces": 100, "t_stop": 50.0, "delay": 1.0, "duration": 40.0, "dt": 0.025}
        )
    if case == "l23_cell":
        return (
            {
                "n_traces": 2,
                "t_stop": 5.0,
                "delay": 1.0,
                "duration": 3.0,
                "dt": 0.025,
                "d_lambda": 0.1,
                "min_comp": 0,
                "checkpoint_every": 50,
            }
            if quick
            else {
                "n_traces": 10,
                "t_stop": 50.0,
                "delay": 1.0,
                "duration": 40.0,
                "dt": 0.025,
                "d_lambda": 0.04,
                "min_comp": 1000,
                "checkpoint_every": 200,
            }
        )
    raise ValueError(case)


def _paper_problem(n_traces: int, n_times: int):
    """The paper's toy model: cell, currents (first ``n_traces``), its 48-point grid (first
    ``n_times``), GT and initial conductances."""
    import torch

    from bayesneuron import Stimulus
    from bayesneuron.reference.paper import (
        paper_currents,
        paper_ground_truth,
        paper_time_grid,
        paper_toy_cell,
    )

    cell = paper_toy_cell()
    stim = paper_currents()
    if n_traces < stim.n_trace:
        stim = Stimulus(stim.values[..., :n_traces, :, :], stim.dt, stim.t0, stim.unit)
    t = paper_time_grid()
    t = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t
    t_eval = np.asarray(t, dtype=np.float64)[:n_times]
    gt = paper_ground_truth()
    gt = {k: np.asarray(gt[k], dtype=np.float64) for k in ("g_na", "g_k")}
    n = cell.n_comp
    # The paper's initial conductances: every g_Na = 100, g_K = 45.
    init = {"g_na": np.full(n, 100.0), "g_k": np.full(n, 45.0)}
    return cell, stim, t_eval, gt, init


def _hh_tree_problem(sz: dict):
    from bayesneuron import step_current
    from bayesneuron.reference.cells import hh_tree_cell

    cell = hh_tree_cell()
    amps = np.linspace(0.0, 0.5, sz["n_traces"])
    # 1-ms bins: the current only changes at delay and delay + duration, so adaptive
    # solvers restart at two jumps, not at every 0.025-ms bin edge.
    stim = step_current(amps, 0, cell.n_comp, sz["delay"], sz["duration"], sz["t_stop"], dt=1.0)
    n_t = int(round(sz["t_stop"] / sz["dt"]))
    t_eval = np.arange(n_t + 1) * sz["dt"]
    gt = {k: np.asarray(cell.params[k], dtype=np.float64) for k in ("g_na", "g_k")}
    # Gradient point: conductances off the truth, so the MSE against the truth's traces is > 0.
    init = {"g_na": gt["g_na"] * 0.9, "g_k": gt["g_k"] * 1.1}
    return cell, stim, t_eval, gt, init, amps


def _l23_problem(sz: dict, fine: bool):
    from bayesneuron import step_current
    from bayesneuron.reference.cells import l23_cell

    if fine:
        # The d_lambda rule with the given value, made finer until the cell has at least
        # min_comp compartments (0.04 gives 1008 with the bundled morphology).
        d = sz["d_lambda"]
        cell = l23_cell(d_lambda=d)
        while cell.n_comp < sz.get("min_comp", 0):
            d = round(d * 0.9, 6)
            cell = l23_cell(d_lambda=d)
        label = f"d_lambda={d:g}"
    else:
        cell, label = l23_cell(nseg=1), "nseg=1"
    amps = _l23_amps(sz)
    stim = step_current(amps, 0, cell.n_comp, sz["delay"], sz["duration"], sz["t_stop"], dt=1.0)
    n_t = int(round(sz["t_stop"] / sz["dt"]))
    t_eval = np.arange(n_t + 1) * sz["dt"]
    g = {"g_na": np.asarray(cell.params["g_na"], dtype=np.float64)}
    return cell, stim, t_eval, g, g, label


def _l23_amps(sz: dict) -> np.ndarray:
    """The l23_cell case's soma step amplitudes (nA)."""
    return np.linspace(0.1, 1.0, sz["n_traces"])


def _l23_sections(cell):
    """The bundled SWC's sections (as ``l23_cell`` reads them) and ``cell``'s segments per
    section, counted from its compartment names: NEURON and Jaxley get bayesneuron's exact
    discretisation (the d_lambda rule is not re-applied)."""
    from importlib import resources

    from bayesneuron.morphology.swc import read_swc_sections
    from bayesneuron.reference.cells import L23_SWC

    sections = read_swc_sections(resources.files("bayesneuron").joinpath("data", L23_SWC))
    counts: dict[str, int] = {}
    for name in cell.morphology.names:
        sec = name[: name.rindex("(")]
        counts[sec] = counts.get(sec, 0) + 1
    nsegs = [counts[s.name] for s in sections]
    if sum(nsegs) != cell.n_comp:
        raise RuntimeError(f"{sum(nsegs)} segments from the sections, the cell has {cell.n_comp}")
    return sections, nsegs


def _cable_constants(cell) -> tuple[float, float, float]:
    """``(ra Ω·cm, cm µF/cm², celsius °C)`` of a uniform geometric hh cell."""
    m = cell.morphology
    ra, cm = float(m.ra[0]), float(m.cm[0])
    if not (np.all(m.ra == ra) and np.all(m.cm == cm)):
        raise RuntimeError("the peers' builds here assume uniform Ra and cm")
    celsius = {float(getattr(ch, "celsius", 6.3)) for ch in cell.channels}
    if len(celsius) != 1:
        raise RuntimeError(f"channels at different temperatures: {celsius}")
    return ra, cm, celsius.pop()


def _make_solver(spec: dict):
    from bayesneuron import BackwardEuler, CrankNicolson, Torchdiffeq

    kind = spec["kind"]
    if kind in ("cn", "be"):
        scheme = CrankNicolson if kind == "cn" else BackwardEuler
        # rows name their kernel: the torch backend unless the spec asks for the fused one
        extra = {"backend": spec.get("backend", "torch")} if kind == "cn" else {}
        return scheme(
            spec["dt"],
            checkpoint_every=spec.get("checkpoint_every", "auto"),
            compile=spec.get("compile", False),
            **extra,
        )
    return Torchdiffeq(
        spec["method"],
        rtol=spec.get("rtol", 1e-7),
        atol=spec.get("atol", 1e-9),
        adjoint=spec.get("adjoint", False),
        step_size=spec.get("step_size"),
    )


def _task_bayesneuron(job: dict):
    """fwd / fwd_bwd closures for one bayesneuron solver on one case."""
    import torch

    from bayesneuron import simulate

    case, sz = job["case"], job["sizes"]
    dtype = {"float64": torch.float64, "float32": torch.float32}[job["dtype"]]
    device = torch.device(job["device"])
    if case == "paper_toy":
        cell, stim, t_eval, gt, init = _paper_problem(sz["n_traces"], sz["n_times"])
    elif case == "hh_tree":
        cell, stim, t_eval, gt, init, _ = _hh_tree_problem(sz)
    else:
        cell, stim, t_eval, gt, init, label = _l23_problem(sz, job["fine"])
    solver = _make_solver(job["solver"])
    fwd_params = {k: torch.tensor(v, dtype=dtype, device=device) for k, v in gt.items()}
    if job.get("target"):
        target = torch.as_tensor(np.load(job["target"]), dtype=dtype, device=device)
    else:  # l23_cell: an MSE against a constant −65 mV (the cost does not depend on the target)
        target = torch.tensor(-65.0, dtype=dtype, device=device)

    def fwd():
        with torch.no_grad():
            return simulate(cell, fwd_params, stim, t_eval, solver, dtype=dtype, device=device).v

    def fwd_bwd():
        p = {
            k: torch.tensor(v, dtype=dtype, device=device, requires_grad=True)
            for k, v in init.items()
        }
        v = simulate(cell, p, stim, t_eval, solver, dtype=dtype, device=device).v
        loss = torch.mean((v - target) ** 2)  # the paper's MSE (mean over trace, comp, time)
        loss.backward()
        return loss.detach().item(), {
            k: x.grad.detach().double().cpu().numpy() for k, x in p.items()
        }

    if device.type == "cuda":
        sync = torch.cuda.synchronize
    else:

        def sync():
            return None

    info = {"n_traces": stim.n_trace, "n_comp": cell.n_comp, "n_times": len(t_eval)}
    info["checkpoint_every"] = getattr(solver, "checkpoint_every", None)
    if case == "l23_cell":
        info["cell"] = label
    return fwd, fwd_bwd, sync, info


def _neuron_build(h, sections, nsegs=None):
    """NEURON sections from bayesneuron ``Section`` objects: cylinders (``L``, ``diam``) or 3-D
    points (``pt3dadd``, stored in single precision as bayesneuron assumes), ``nseg`` from
    ``nsegs`` (default 1), connected at ``parent_x``."""
    secs = []
    for i, s in enumerate(sections):
        sec = h.Section(name=s.name)
        if s.points is None:
            sec.L, sec.diam = s.length, s.diam
        else:
            for x, y, z, d in s.points:
                sec.pt3dadd(float(x), float(y), float(z), float(d))
        sec.nseg = 1 if nsegs is None else int(nsegs[i])
        secs.append(sec)
    for s, sec in zip(sections, secs):
        if s.parent is not None:
            sec.connect(secs[s.parent](s.parent_x), 0)
    return secs


def _task_neuron(job: dict):
    """NEURON forward: fixed-step backward Euler, exact hh rates, one run per amplitude."""
    from neuron import h

    case, sz = job["case"], job["sizes"]
    if case == "hh_tree":
        from bayesneuron.reference.cells import hh_tree_cell, hh_tree_sections

        _, _, t_eval, _, _, amps = _hh_tree_problem(sz)
        cell = hh_tree_cell()
        sections, nsegs = hh_tree_sections(), None
    elif case == "l23_cell":
        cell, _, t_eval, _, _, label = _l23_problem(sz, fine=True)
        amps = _l23_amps(sz)
        sections, nsegs = _l23_sections(cell)
    else:
        raise ValueError(f"no NEURON build for case {case}")
    ra, cm, celsius = _cable_constants(cell)
    h.load_file("stdrun.hoc")
    secs = _neuron_build(h, sections, nsegs)
    for sec in secs:
        sec.Ra, sec.cm = ra, cm
        sec.insert("hh")
    h.usetable_hh = 0
    h.celsius = celsius
    h.secondorder = 0
    h.CVode().active(0)
    names = [f"{sec.name()}({seg.x:.4g})" for sec in secs for seg in sec]
    order = [names.index(n) for n in cell.morphology.names]
    area = np.array([seg.area() for sec in secs for seg in sec])[order] * 1e-8  # µm² -> cm²
    area_rel_diff = float(np.max(np.abs(area / cell.morphology.area - 1.0)))
    stim = h.IClamp(secs[0](0.5))
    stim.delay, stim.dur = sz["delay"], sz["duration"]
    recs = [h.Vector().record(seg._ref_v) for sec in secs for seg in sec]
    n_t = len(t_eval)

    def fwd(secs=secs):  # holds the sections: NEURON deletes Python-created ones when freed
        out = np.empty((len(amps), len(recs), n_t))
        for a, amp in enumerate(amps):
            stim.amp = float(amp)
            h.dt = sz["dt"]
            h.finitialize(float(cell.v0))
            h.continuerun(float(t_eval[-1]))
            for c, r in enumerate(recs):
                out[a, c] = np.asarray(r)[:n_t]
        return out[:, order]

    info = {
        "n_traces": len(amps),
        "n_comp": len(recs),
        "n_times": n_t,
        "device": "cpu",
        "version": importlib.metadata.version("neuron"),
        "area_rel_diff_vs_bayesneuron": area_rel_diff,
    }
    if case == "l23_cell":
        info["cell"] = label
    return fwd, None, lambda: None, info


def _jaxley_tree(sections):
    """Re-root an nseg = 1 cylinder tree so that every child hangs at its parent's 1-end.

    Jaxley attaches a child's 0-end to its parent's 1-end and leaves the root's 0-end free;
    NEURON also allows ``child.connect(parent(0))``. With one compartment per section the
    direction of a section does not matter, so we treat sections as edges between end nodes,
    start from a free end, and orient every section away from it. Returns the Jaxley order
    (indices into ``sections``) and Jaxley parents.
    """
    n = len(sections)
    node = {}  # (section, end) -> junction id, via union of joined ends

    def find(k):
        while node.setdefault(k, k) != k:
            k = node[k]
        return k

    for i, s in enumerate(sections):
        if s.parent is not None:
            if s.parent_x not in (0.0, 1.0):
                raise ValueError(f"{s.name} attaches at {s.parent_x}: not an end node")
            node[find((i, 0))] = find((s.parent, int(s.parent_x)))
    ends = {i: (find((i, 0)), find((i, 1))) for i in range(n)}
    degree = {}
    for a, b in ends.values():
        degree[a] = degree.get(a, 0) + 1
        degree[b] = degree.get(b, 0) + 1
    start = next(j for j in (ends[0][0], ends[0][1], *degree) if degree[j] == 1)
    order, parents, queue, seen = [], [], [(start, -1)], set()
    while queue:
        junction, parent = queue.pop(0)
        for i in range(n):
            if i in seen or junction not in ends[i]:
                continue
            seen.add(i)
            order.append(i)
            parents.append(parent)
            far = ends[i][1] if ends[i][0] == junction else ends[i][0]
            queue.append((far, len(order) - 1))
    return order, parents


#: Jaxley joins children to a branch's end through a zero-area branch point, never to a
#: compartment's centre; the l23 soma's mid-soma trunks (NEURON's ``soma(0.5)``) therefore meet
#: at the soma's 1-end branch point, tied to the soma's centre by its right half scaled by
#: this factor instead of 0. Scanned on the 1008-compartment cell (50 ms, max |ΔV| vs NEURON):
#: 1 -> 8.8e-3 mV, 1e-3 -> 8.8e-6, 1e-4 -> 8.7e-7, 2e-5 -> 2.6e-7, 1e-6 -> 4.8e-6 (round-off
#: of the near-singular branch point takes over below ~1e-5).
JAXLEY_SOMA_EPS = 2e-5


def _jaxley_l23(jx, sections, nsegs, ra):
    """A Jaxley ``Cell`` with bayesneuron's exact discretisation of an SWC cell.

    One ``jx.Branch`` per section with that section's ``nseg`` compartments (branch and
    compartment order = bayesneuron's compartment order). Per compartment, the membrane area
    and the axial resistive loads of its two halves (Jaxley's ``area``, ``resistive_load_in``
    / ``_out``, µm² and µm⁻¹) are bayesneuron's frustum integrals
    (:func:`bayesneuron.morphology.geometry.segment_geometry`, NEURON's ``seg.area()`` /
    ``seg.ri()``); ``length`` is L / nseg and ``radius`` the area-equivalent cylinder's
    (unused by the simulation). Jaxley's branch points are NEURON's zero-area end nodes. The
    one difference: see ``JAXLEY_SOMA_EPS`` (children at the soma's centre); a single child at
    the soma's 1-end gets the soma's right half added to its own left half, which is exact.
    """
    import math

    from bayesneuron.morphology.geometry import segment_geometry

    parents = [-1 if s.parent is None else int(s.parent) for s in sections]
    if parents[0] != -1 or any(not 0 <= p < i for i, p in enumerate(parents) if i):
        raise RuntimeError("expects the root first and every parent before its children")
    area, rin, rout, length = [], [], [], []
    for s, n in zip(sections, nsegs):
        a, r = segment_geometry(s, n, ra)  # µm², MΩ per half segment
        area.append(a)
        rin.append(r[:, 0] / (0.01 * ra))  # MΩ = 0.01·Ra[Ω·cm]·load[µm⁻¹]
        rout.append(r[:, 1] / (0.01 * ra))
        length.append(np.full(n, s.L / n))
    area, rin, rout, length = map(np.concatenate, (area, rin, rout, length))
    first = np.concatenate([[0], np.cumsum(nsegs)])
    mid = [i for i, s in enumerate(sections) if s.parent == 0 and s.parent_x not in (0.0, 1.0)]
    end = [i for i, s in enumerate(sections) if s.parent == 0 and s.parent_x == 1.0]
    bad = [
        s.name
        for s in sections
        if s.parent is not None and s.parent_x != 1.0 and not (s.parent == 0 and s.parent_x == 0.5)
    ]
    if bad or (mid and (nsegs[0] != 1 or len(end) > 1)):
        raise RuntimeError(
            f"no exact Jaxley build: sections {bad[:5]} attach elsewhere than a parent's 1-end "
            "or the one-compartment root's centre, or several attach at the root's 1-end"
        )
    if mid:
        for i in end:  # soma(1) junction with one child: the two halves in series
            rin[first[i]] += rout[0]
        rout[0] *= JAXLEY_SOMA_EPS
    cell = jx.Cell([jx.Branch(jx.Compartment(), ncomp=int(n)) for n in nsegs], parents=parents)
    nodes = cell.base.nodes
    if not np.array_equal(nodes["global_comp_index"].to_numpy(), np.arange(len(area))):
        raise RuntimeError("unexpected Jaxley compartment order")
    # Columns written directly: cell.set("radius" / "length") would recompute area and loads
    # as cylinders.
    nodes["length"] = length
    nodes["radius"] = area / (2.0 * math.pi * length)
    nodes["area"] = area
    nodes["resistive_load_in"] = rin
    nodes["resistive_load_out"] = rout
    return cell


def _jaxley_checkpoints(n_steps: int) -> list[int]:
    """Two-level ``checkpoint_lengths`` whose product is exactly ``n_steps`` (a divisor near
    its square root), so Jaxley runs no padded steps."""
    d = min(
        (k for k in range(1, n_steps + 1) if n_steps % k == 0),
        key=lambda k: abs(k - n_steps**0.5),
    )
    return [n_steps // d, d]


def _task_jaxley(job: dict):
    """Jaxley: bwd_euler, float64, jit + vmap over the amplitudes (hh_tree, l23_cell)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jaxley as jx
    from jaxley.channels import HH

    case, sz = job["case"], job["sizes"]
    t_build = time.perf_counter()
    if case == "hh_tree":
        from bayesneuron.reference.cells import hh_tree_cell, hh_tree_sections

        _, _, t_eval, gt, init, amps = _hh_tree_problem(sz)
        cell_bn = hh_tree_cell()
        sections = hh_tree_sections()
        order, parents = _jaxley_tree(sections)
        cell = jx.Cell([jx.Branch(jx.Compartment(), ncomp=1) for _ in order], parents=parents)
        for b, i in enumerate(order):
            cell.branch(b).set("length", float(sections[i].length))
            cell.branch(b).set("radius", float(sections[i].diam) / 2)
        cell.set("axial_resistivity", 100.0)
        cell.set("capacitance", 1.0)
        soma_branch = order.index(0)
        to_bn = [order.index(i) for i in range(len(sections))]  # bn comp -> jaxley comp
        free = {"g_na": "HH_gNa", "g_k": "HH_gK"}
    elif case == "l23_cell":
        cell_bn, _, t_eval, gt, init, label = _l23_problem(sz, fine=True)
        amps = _l23_amps(sz)
        sections, nsegs = _l23_sections(cell_bn)
        ra, cm, celsius = _cable_constants(cell_bn)
        if celsius != 6.3:
            raise RuntimeError("jaxley.channels.HH has no temperature factor: 6.3 °C only")
        cell = _jaxley_l23(jx, sections, nsegs, ra)
        cell.set("axial_resistivity", ra)
        cell.set("capacitance", cm)
        soma_branch = 0  # the root
        to_bn = list(range(cell_bn.n_comp))  # same compartment order
        free = {"g_na": "HH_gNa"}
    else:
        raise ValueError(f"no Jaxley build for case {case}")
    cell.insert(HH())  # NEURON's hh at 6.3 °C; conductances in S/cm² (bayesneuron: mS/cm²)
    cell.set("v", float(cell_bn.v0))
    cell.init_states()
    cell.record("v", verbose=False)
    per = cell.branch("all") if case == "hh_tree" else cell.comp("all")
    for name in free.values():
        per.make_trainable(name, verbose=False)
    order_j = np.argsort(to_bn)  # jaxley comp -> bn comp

    def jparams(g):
        return [{jn: jnp.asarray(np.asarray(g[k])[order_j] * 1e-3)} for k, jn in free.items()]

    dt, n_t = sz["dt"], len(t_eval) - 1
    t = np.arange(n_t) * dt
    on = (t >= sz["delay"] - 1e-9) & (t < sz["delay"] + sz["duration"] - 1e-9)
    cur = jnp.asarray(amps[:, None] * on[None, :])  # step k (t_k → t_k+1) sees bin k's current
    if job.get("target"):
        target = jnp.asarray(np.load(job["target"]))
    else:  # l23_cell: an MSE against a constant −65 mV, as the bayesneuron rows
        target = jnp.asarray(-65.0)
    ckpt = _jaxley_checkpoints(n_t) if job.get("jaxley_checkpoint") else None
    # (cell.comp(0) alone would select local compartment 0 of every branch)
    stim_view = cell.branch(soma_branch).comp(0)

    def sim(p, c):
        ds = stim_view.data_stimulate(c)
        return jx.integrate(
            cell,
            params=p,
            data_stimuli=ds,
            delta_t=dt,
            solver="bwd_euler",
            checkpoint_lengths=ckpt,
        )

    vsim = jax.vmap(sim, in_axes=(None, 0))

    def loss(p, c, tg):
        return jnp.mean((vsim(p, c)[:, to_bn] - tg) ** 2)

    p_fwd, p_grad = jparams(gt), jparams(init)
    compiled = {}
    setup_s = time.perf_counter() - t_build

    def compile_fwd():
        compiled["fwd"] = jax.jit(vsim).lower(p_fwd, cur).compile()

    def compile_bwd():
        compiled["bwd"] = jax.jit(jax.value_and_grad(loss)).lower(p_grad, cur, target).compile()

    def fwd():
        return np.asarray(compiled["fwd"](p_fwd, cur).block_until_ready())[:, to_bn]

    def fwd_bwd():
        val, g = compiled["bwd"](p_grad, cur, target)
        jax.block_until_ready(g)
        grads = {  # per mS/cm²
            k: np.asarray(g[i][jn])[to_bn] * 1e-3 for i, (k, jn) in enumerate(free.items())
        }
        return float(val), grads

    info = {
        "n_traces": len(amps),
        "n_comp": cell_bn.n_comp,
        "n_times": len(t_eval),
        "device": str(jax.devices()[0]).lower(),
        "version": importlib.metadata.version("jaxley"),
        "setup_s": setup_s,
        "compile": {"fwd": compile_fwd, "fwd_bwd": compile_bwd},
    }
    if ckpt:
        info["checkpoint_lengths"] = ckpt
    if case == "l23_cell":
        info["cell"] = label
    return fwd, fwd_bwd, lambda: None, info


TASKS = {"bayesneuron": _task_bayesneuron, "neuron": _task_neuron, "jaxley": _task_jaxley}


# =========================================================================== measurement
class _Memory:
    """Peak memory of the calls between :meth:`reset` and :meth:`peak_mb` (MB)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.hwm = os.path.exists("/proc/self/status")
        self.base = 0.0

    @staticmethod
    def _status(key: str) -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
        raise KeyError(key)

    def reset(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
            return
        if self.hwm:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
                self.base = self._status("VmRSS")
                return
            except OSError:
                self.hwm = False
        self.base = self._maxrss()

    @staticmethod
    def _maxrss() -> float:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 2**20 if sys.platform == "darwin" else r / 1024.0

    def peak_mb(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20 - self.base
        if self.hwm:
            return self._status("VmHWM") - self.base
        return self._maxrss() - self.base


def _no_jaxley(case: str) -> dict:
    """The row saying Jaxley is absent."""
    return _row(
        case, "jaxley", "float64", None, None, note="jaxley not installed (pip install jaxley)"
    )


def _timed(fn, sync, repeat: int, budget: float):
    """One warm-up call (its result is returned), then up to ``repeat`` timed calls;
    repeating stops early once warm-up plus repeats have taken ``budget`` seconds. With
    ``repeat = 0`` the single (cold) call is the measurement. Returns ``(out, best, first,
    n, times)``."""
    t0 = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - t0
    if repeat == 0:  # a single call (references): report it as it is
        return out, first, first, 0, [first]
    spent, times = first, []
    while len(times) < repeat and (not times or spent < budget):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return out, min(times), first, len(times), times


def worker(job: dict) -> dict:
    """Run one measurement (``job["kind"]`` = fwd or fwd_bwd) in this fresh process."""
    try:
        import torch

        torch.set_num_threads(job["threads"])
        fwd, fwd_bwd, sync, info = TASKS[job["task"]](job)
        mem = _Memory(job["device"] if job["task"] == "bayesneuron" else "cpu")
        res = {"info": {k: v for k, v in info.items() if k != "compile"}}
        kind = job["kind"]
        fn = fwd if kind == "fwd" else fwd_bwd
        if fn is None:
            return res
        if "compile" in info:
            t0 = time.perf_counter()
            info["compile"][kind]()
            res["compile_s"] = time.perf_counter() - t0
        mem.reset()
        out, best, first, n, times = _timed(fn, sync, job["repeat"], job["budget"])
        res.update(seconds=best, first_s=first, repeats=n, times=times, peak_mem_mb=mem.peak_mb())
        if kind == "fwd":
            v = out.detach().double().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
            res["finite"] = bool(np.isfinite(v).all())
            if job.get("save_v"):
                np.save(job["save_v"], v)
        else:
            res["loss"], grads = out
            if job.get("save_grad"):
                np.savez(job["save_grad"], **grads)
        return res
    except Exception as e:  # reported in the row, the run goes on
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


# =========================================================================== driver
class Runner:
    """Runs jobs one at a time, each in a fresh process forked from a warm server."""

    def __init__(self, args, tmp: Path):
        self.args, self.tmp = args, tmp
        self.ctx = mp.get_context("forkserver")
        # Preload only torch: anything else (NEURON, JAX) is imported inside its own worker.
        self.ctx.set_forkserver_preload(["torch", "torchdiffeq", "bayesneuron"])
        self.n = 0

    def run(self, task: str, kind: str, case: str, timeout: float | None = None, **job) -> dict:
        self.n += 1
        spec = job.get("solver")
        if self.args.skip and spec and not job.get("reference"):
            label = (
                f"{_solver_name(spec)}{'-adjoint' if spec.get('adjoint') else ''}-{job['dtype']}"
            )
            if re.search(self.args.skip, label):
                return {"skipped": True}
        timeout = timeout or self.args.timeout
        job = dict(
            dict(repeat=self.args.repeat, budget=self.args.budget),
            **job,
            task=task,
            kind=kind,
            case=case,
            sizes=_sizes(case, self.args.quick),
            threads=self.args.threads,
            device=self.args.device,
        )
        with cf.ProcessPoolExecutor(1, mp_context=self.ctx) as ex:
            fut = ex.submit(worker, job)
            try:
                return fut.result(timeout=timeout)
            except cf.TimeoutError:
                for p in ex._processes.values():  # only this executor's own worker
                    p.kill()
                return {"error": f"timed out after {timeout} s"}
            except Exception as e:  # a worker that died (e.g. out of memory)
                return {"error": f"worker failed: {type(e).__name__}: {e}"}

    def path(self, stem: str, ext: str = ".npy") -> str:
        return str(self.tmp / f"{stem}{ext}")


def _row(case, impl, dtype, fwd: dict | None, bwd: dict | None, **extra) -> dict:
    row = dict.fromkeys(KEYS)
    row.update(case=case, impl=impl, dtype=dtype)
    notes, info = [], {}
    for part, key in ((fwd, "fwd_s"), (bwd, "fwd_bwd_s")):
        if not part:
            continue
        if part.get("skipped"):
            notes.append(f"{key[:-2]} skipped (--skip)")
            continue
        info.update(part.get("info", {}))
        if "error" in part:
            notes.append(f"{key[:-2]} failed: {part['error']}")
            continue
        row[key] = part.get("seconds")
        row[key.replace("_s", "_first_call_s")] = part.get("first_s")
        row[key.replace("_s", "_repeats")] = part.get("repeats")
        if part.get("times"):
            row[key.replace("_s", "_times_s")] = part["times"]
            row[key.replace("_s", "_median_s")] = float(np.median(part["times"]))
        if "compile_s" in part:
            row["compile_s" if key == "fwd_bwd_s" else "compile_fwd_s"] = part["compile_s"]
        if key == "fwd_s":
            row["peak_mem_fwd_mb"] = part.get("peak_mem_mb")
            if part.get("finite") is False:
                notes.append("forward produced NaN/inf")
        else:
            row["peak_mem_mb"] = part.get("peak_mem_mb")
            row["loss"] = part.get("loss")
    if row["peak_mem_mb"] is None and row.get("peak_mem_fwd_mb") is not None:
        row["peak_mem_mb"] = row["peak_mem_fwd_mb"]  # forward-only implementations
    for k in (
        "n_traces",
        "n_comp",
        "n_times",
        "device",
        "version",
        "cell",
        "checkpoint_every",
        "checkpoint_lengths",
        "setup_s",
        "area_rel_diff_vs_bayesneuron",
    ):
        if k in info:
            row[k] = info[k]
    row.update(extra)
    if impl.endswith("-compiled"):  # torch.compile: compilation ≈ warm-up call − best call
        for key, out in (("fwd", "compile_fwd_s"), ("fwd_bwd", "compile_s")):
            first, best = row.get(f"{key}_first_call_s"), row.get(f"{key}_s")
            if first is not None and best is not None and row.get(f"{key}_repeats"):
                row.setdefault(out, first - best)
    if notes:
        row["note"] = "; ".join(([row["note"]] if row.get("note") else []) + notes)
    return row


def _max_err(path_a: str, path_b: str) -> float | None:
    if not (path_a and path_b and os.path.exists(path_a) and os.path.exists(path_b)):
        return None
    a, b = np.load(path_a), np.load(path_b)
    if a.shape != b.shape:
        return None
    d = np.abs(a - b)
    return float(np.nanmax(d)) if np.isfinite(d).all() else float("inf")


def _grad_rel_err(path: str, ref: str) -> float | None:
    if not (path and ref and os.path.exists(path) and os.path.exists(ref)):
        return None
    a, b = np.load(path), np.load(ref)
    x = np.concatenate([a[k].ravel() for k in sorted(b.files)])
    y = np.concatenate([b[k].ravel() for k in sorted(b.files)])
    return float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-300))


def _spike_shift(path: str, ref: str, dt: float, comp: int = 0) -> tuple[float | None, int]:
    """Largest shift of matched upward 0-mV crossings (ms) at ``comp``; traces whose spike
    counts differ are counted, not matched."""
    if not (path and ref and os.path.exists(path) and os.path.exists(ref)):
        return None, 0
    a, b = np.load(path)[..., comp, :], np.load(ref)[..., comp, :]

    def crossings(v):
        k = np.flatnonzero((v[:-1] < 0) & (v[1:] >= 0))
        return (k + v[k] / (v[k] - v[k + 1])) * dt

    worst, mismatched = 0.0, 0
    for va, vb in zip(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])):
        ca, cb = crossings(va), crossings(vb)
        if len(ca) != len(cb):
            mismatched += 1
        elif len(ca):
            worst = max(worst, float(np.abs(ca - cb).max()))
    return worst, mismatched


def _solver_name(spec: dict) -> str:
    if spec["kind"] in ("cn", "be"):
        name = f"bayesneuron-{spec['kind']}-dt{spec['dt']:g}"
        if spec.get("checkpoint_every"):
            name += f"-ckpt{spec['checkpoint_every']}"
        if spec.get("compile"):
            name += "-compiled"
        if spec.get("backend") == "fused":
            name += "-fused"
        return name
    if spec.get("step_size"):
        return f"bayesneuron-torchdiffeq-{spec['method']}-dt{spec['step_size']:g}"
    return f"bayesneuron-torchdiffeq-{spec['method']}-tol{spec['rtol']:g}"


def _bn(runner, case, stem, spec, dtype, *, target=None, fwd=True, bwd=True, **job):
    """Forward and forward+backward of one bayesneuron solver; returns (fwd, bwd, paths)."""
    paths = {"v": runner.path(f"{stem}-v"), "grad": runner.path(f"{stem}-g", ".npz")}
    common = dict(solver=spec, dtype=dtype, target=target, **job)
    f = runner.run("bayesneuron", "fwd", case, save_v=paths["v"], **common) if fwd else None
    b = (
        runner.run("bayesneuron", "fwd_bwd", case, save_grad=paths["grad"], **common)
        if bwd
        else None
    )
    return f, b, paths


def _reference(runner, case, stem, spec, rows, log, note=None) -> dict:
    """Run the converged reference forward once, append its row, return its output paths."""
    log(f"{case}: reference (dopri5 1e-10, float64) …")
    ref_f, _, ref = _bn(runner, case, stem, spec, "float64", bwd=False, repeat=0, reference=True)
    if "error" in ref_f:
        raise RuntimeError(
            f"{case} reference failed: {ref_f['error']}\n{ref_f.get('traceback', '')}"
        )
    extra = {"note": note} if note else {}
    rows.append(
        _row(
            case,
            _solver_name(spec),
            "float64",
            ref_f,
            None,
            max_abs_err_mv=0.0,
            err_reference="(reference)",
            **extra,
        )
    )
    return ref


def args_device(runner) -> str:
    return runner.args.device.split(":")[0]


def case_paper_toy(runner: Runner, quick: bool, log) -> list[dict]:
    case, rows = "paper_toy", []
    ref_spec = {"kind": "tdq", "method": "dopri5", "rtol": 1e-10, "atol": 1e-10}
    ref_name = "torchdiffeq dopri5 rtol=atol=1e-10 float64 at the GT conductances"
    sz = _sizes(case, quick)
    note = (
        f"--quick: {sz['n_traces']} of the paper's 100 traces and its first {sz['n_times']} of 48 "
        "output times; times not scaled"
        if quick
        else None
    )
    ref = _reference(runner, case, "toy-ref", ref_spec, rows, log, note=note)
    target = ref["v"]  # the data of the MSE: exact traces at the GT conductances
    # Reference gradient (the MSE at the paper's initial conductances against those traces).
    grad_ref = None
    if not quick:
        log("paper_toy: reference gradient (dopri5 1e-10, float64, adjoint) …")
        spec = dict(ref_spec, adjoint=True)
        _, gb, gpaths = _bn(
            runner,
            case,
            "toy-refgrad",
            spec,
            "float64",
            target=target,
            fwd=False,
            repeat=0,
            reference=True,
        )
        rows.append(
            _row(
                case,
                _solver_name(spec) + "-adjoint",
                "float64",
                None,
                gb,
                err_reference="(reference)",
                note="reference gradient",
            )
        )
        if "error" not in gb:
            grad_ref = gpaths["grad"]

    def add(spec, dtype, impl=None, **extra):
        impl = impl or _solver_name(spec)
        log(f"paper_toy: {impl} {dtype} …")
        f, b, paths = _bn(runner, case, f"toy-{impl}-{dtype}", spec, dtype, target=target)
        row = _row(
            case,
            impl,
            dtype,
            f,
            b,
            max_abs_err_mv=_max_err(paths["v"], ref["v"]),
            err_reference=ref_name,
            grad_rel_err=_grad_rel_err(paths["grad"], grad_ref),
            **extra,
        )
        if note:
            row["note"] = "; ".join(x for x in (note, row.get("note")) if x)
        rows.append(row)
        return row

    # Crank–Nicolson: the largest dt meeting TOL_MV.
    cn = {dt: add({"kind": "cn", "dt": dt}, "float64") for dt in CN_CANDIDATES}
    good = [
        dt
        for dt, r in cn.items()
        if r["max_abs_err_mv"] is not None and r["max_abs_err_mv"] <= TOL_MV
    ]
    dt = max(good) if good else min(CN_CANDIDATES)
    for dt_c, r in cn.items():
        r["cn_dt_chosen"] = dt_c == dt
    errs = ", ".join(f"dt {k:g}: {_fmt(r['max_abs_err_mv'])}" for k, r in cn.items())
    log(
        f"paper_toy: CN max |dV| {errs} mV -> dt {dt:g}"
        + ("" if good else f" (none within {TOL_MV} mV)")
    )
    add({"kind": "cn", "dt": dt}, "float32")
    # torch.compile'd steps: at the 0.05 mV step and at the step matching the paper's own
    # numerical error (≈ 0.3 mV). The warm-up call includes compilation.
    for dt_c in () if quick else sorted({dt, PAPER_ACCURACY_DT}):
        add({"kind": "cn", "dt": dt_c, "compile": True}, "float64")
    # the fused CPU kernel (C) with its hand-written adjoint; its build is in the warm-up call
    if args_device(runner) == "cpu":
        for dt_c in sorted({dt, PAPER_ACCURACY_DT}):
            add({"kind": "cn", "dt": dt_c, "backend": "fused"}, "float64")
    add({"kind": "be", "dt": dt}, "float64")
    if not quick:
        add({"kind": "be", "dt": dt}, "float32")
    add({"kind": "tdq", "method": "rk4", "step_size": 0.005}, "float64")
    if not quick:
        add({"kind": "tdq", "method": "rk4", "step_size": 0.005}, "float32")
    paper = {"kind": "tdq", "method": "dopri5", "rtol": 1e-8, "atol": 1e-8, "adjoint": True}
    add(paper, "float32", impl=PAPER_IMPL, paper_method=True)
    return rows


def case_hh_tree(runner: Runner, quick: bool, log) -> list[dict]:
    case, rows = "hh_tree", []
    dt = _sizes(case, quick)["dt"]
    ref_spec = {"kind": "tdq", "method": "dopri5", "rtol": 1e-10, "atol": 1e-10}
    ref_name = "bayesneuron torchdiffeq dopri5 rtol=atol=1e-10 float64 (converged ODE)"
    ref = _reference(runner, case, "tree-ref", ref_spec, rows, log)
    target = ref["v"]  # MSE data: converged traces at the default hh conductances
    grad_ref = None
    if not quick:
        # CN dt 0.0025: its gradient is within 0.07 % of rk4 dt 0.005's here (a 4th-order
        # check), at a tenth of the cost of CN dt 0.001 (which took 13 GB and 10 min).
        spec = {"kind": "cn", "dt": 0.0025}
        log("hh_tree: reference gradient (CN dt 0.0025, float64) …")
        _, gb, gpaths = _bn(
            runner,
            case,
            "tree-refgrad",
            spec,
            "float64",
            target=target,
            fwd=False,
            repeat=0,
            reference=True,
        )
        if "error" not in gb:
            grad_ref = gpaths["grad"]
            rows.append(
                _row(
                    case,
                    _solver_name(spec),
                    "float64",
                    None,
                    gb,
                    err_reference="(reference gradient)",
                    note="reference gradient",
                )
            )
    extra_ref = {"grad_reference": "bayesneuron CN dt 0.0025 float64" if grad_ref else None}

    def metrics(paths, neuron_v=None, be_v=None):
        shift, mism = _spike_shift(paths["v"], ref["v"], dt)
        out = dict(
            max_abs_err_mv=_max_err(paths["v"], ref["v"]),
            err_reference=ref_name,
            soma_spike_shift_ms=shift,
            soma_spike_count_mismatch=mism,
            grad_rel_err=_grad_rel_err(paths.get("grad"), grad_ref),
            **extra_ref,
        )
        if neuron_v:
            out["max_abs_diff_vs_neuron_mv"] = _max_err(paths["v"], neuron_v)
        if be_v:
            out["max_abs_diff_vs_bayesneuron_be_mv"] = _max_err(paths["v"], be_v)
        return out

    neuron_v = None
    if importlib.util.find_spec("neuron") is not None:
        log("hh_tree: NEURON …")
        neuron_v = runner.path("tree-neuron-v")
        f = runner.run("neuron", "fwd", case, save_v=neuron_v)
        rows.append(
            _row(
                case,
                "neuron",
                "float64",
                f,
                None,
                **metrics({"v": neuron_v}),
                note="fixed dt 0.025, usetable_hh = 0, one run per amplitude; forward only",
            )
        )
        if "error" in f:
            neuron_v = None
    else:
        rows.append(_row(case, "neuron", "float64", None, None, note="NEURON not installed"))
    be_v = None
    compiled = () if quick else (("be", True), ("cn", True))
    specs = [
        {"kind": kind, "dt": dt, "compile": comp}
        for kind, comp in (("be", False), ("cn", False), *compiled)
    ]
    if args_device(runner) == "cpu":  # the fused kernel; its build is in the warm-up call
        specs.append({"kind": "cn", "dt": dt, "backend": "fused"})
    for spec in specs:
        kind, comp = spec["kind"], spec.get("compile", False)
        impl = _solver_name(spec)
        log(f"hh_tree: {impl} …")
        f, b, paths = _bn(runner, case, f"tree-{impl}", spec, "float64", target=target)
        rows.append(_row(case, impl, "float64", f, b, **metrics(paths, neuron_v)))
        if kind == "be" and not comp:
            be_v = paths["v"]
    if importlib.util.find_spec("jaxley") is not None:
        log("hh_tree: Jaxley …")
        paths = {"v": runner.path("tree-jaxley-v"), "grad": runner.path("tree-jaxley-g", ".npz")}
        f = runner.run("jaxley", "fwd", case, save_v=paths["v"])
        b = runner.run("jaxley", "fwd_bwd", case, save_grad=paths["grad"], target=target)
        rows.append(
            _row(
                case,
                "jaxley",
                "float64",
                f,
                b,
                **metrics(paths, neuron_v, be_v),
                note="bwd_euler dt 0.025, jit + vmap over amplitudes; exact cell (dend[2] at soma(0) "
                "expressed by re-rooting the tree at dend[2], exact for nseg = 1); "
                "compile time in compile_s / compile_fwd_s, not in fwd_s / fwd_bwd_s",
            )
        )
    else:
        rows.append(_no_jaxley(case))
    return rows


def _time_ratio(row: dict, ref: dict | None, key: str) -> dict | None:
    """``row``'s time over ``ref``'s for ``key`` (fwd or fwd_bwd): ratio of the medians of
    their timed calls and the widest range (fastest / slowest … slowest / fastest)."""
    a, b = row.get(f"{key}_times_s"), (ref or {}).get(f"{key}_times_s")
    if not a or not b:
        return None
    return {
        "median": float(np.median(a) / np.median(b)),
        "range": [float(min(a) / max(b)), float(max(a) / min(b))],
    }


def case_l23_cell(runner: Runner, quick: bool, log) -> list[dict]:
    case, rows = "l23_cell", []
    sz = _sizes(case, quick)
    dt, ck = sz["dt"], sz["checkpoint_every"]
    cpu = args_device(runner) == "cpu"
    grad_wrt = {"grad_wrt": "g_na per compartment"}  # the row's "cell" comes from the worker
    for fine in (False, True):
        label = f"d_lambda ≤ {sz['d_lambda']:g}, ≥ {sz['min_comp']} comps" if fine else "nseg=1"
        specs = [{"kind": "cn", "dt": dt, "checkpoint_every": c} for c in (None, ck)]
        if cpu:  # the fused kernel (CrankNicolson only); "auto" is the solver's default
            fused = [None, ck, "auto"] if fine else [None, "auto"]
            specs += [
                {"kind": "cn", "dt": dt, "checkpoint_every": c, "backend": "fused"} for c in fused
            ]
        neuron_v = be = None
        if fine and importlib.util.find_spec("neuron") is not None:
            log(f"l23_cell ({label}): NEURON …")
            neuron_v = runner.path("l23-neuron-v")
            f = runner.run("neuron", "fwd", case, save_v=neuron_v)
            rows.append(
                _row(
                    case,
                    "neuron",
                    "float64",
                    f,
                    None,
                    max_abs_err_mv=0.0 if "error" not in f else None,
                    err_reference="(reference for the backward-Euler rows)",
                    note="fixed dt 0.025, secondorder = 0, usetable_hh = 0, sections from the "
                    "bundled SWC via pt3dadd with bayesneuron's nseg per section; forward only",
                )
            )
            if "error" in f:
                neuron_v = None
        elif fine:
            rows.append(_row(case, "neuron", "float64", None, None, note="NEURON not installed"))
        if fine:  # bayesneuron's backward Euler: NEURON's and Jaxley's scheme (torch backend)
            spec = {"kind": "be", "dt": dt}
            impl = _solver_name(spec)
            log(f"l23_cell ({label}): {impl} …")
            f, b, be = _bn(runner, case, "l23-1-be", spec, "float64", fine=True)
            rows.append(
                _row(
                    case,
                    impl,
                    "float64",
                    f,
                    b,
                    max_abs_err_mv=_max_err(be["v"], neuron_v),
                    err_reference="NEURON (same scheme, same cell)" if neuron_v else None,
                    note="BackwardEuler has no fused kernel: torch backend, checkpoint_every "
                    "'auto'",
                    **grad_wrt,
                )
            )
        plain = {}
        for spec in specs:
            impl = _solver_name(spec)
            log(f"l23_cell ({label}): {impl} …")
            backend = spec.get("backend", "torch")
            stem = f"l23-{int(fine)}-{backend}-{spec['checkpoint_every']}"
            f, b, paths = _bn(runner, case, stem, spec, "float64", fine=fine)
            extra = dict(grad_wrt)
            if spec["checkpoint_every"] is None:
                plain[backend] = paths["v"]
                extra.update(err_reference="none (timing and memory only)")
            else:
                extra.update(
                    max_abs_err_mv=_max_err(paths["v"], plain.get(backend)),
                    err_reference="same solver and cell without checkpointing; must be 0",
                )
            if fine:  # CN vs the backward-Euler results: the schemes' difference
                extra.update(
                    max_abs_diff_vs_neuron_mv=_max_err(paths["v"], neuron_v),
                    max_abs_diff_vs_bayesneuron_be_mv=_max_err(paths["v"], be["v"]),
                    grad_rel_diff_vs_bayesneuron_be=_grad_rel_err(paths["grad"], be["grad"]),
                )
            if backend == "fused" and spec["checkpoint_every"] is not None:
                extra["note"] = (
                    "the adjoint recomputes segments of checkpoint_every steps (⌈√steps⌉ for "
                    "'auto' where the history would exceed 1 GB) from stored states"
                )
            rows.append(_row(case, impl, "float64", f, b, **extra))
    if importlib.util.find_spec("jaxley") is None:
        rows.append(_no_jaxley(case))
        return rows
    jaxley_rows = {}
    for ckpt in (False,) if quick else (False, True):
        impl = "jaxley-ckpt" if ckpt else "jaxley"
        log(f"l23_cell ({label}): {impl} …")
        paths = {"v": runner.path(f"l23-{impl}-v"), "grad": runner.path(f"l23-{impl}-g", ".npz")}
        f = runner.run("jaxley", "fwd", case, save_v=paths["v"], jaxley_checkpoint=ckpt)
        b = runner.run("jaxley", "fwd_bwd", case, save_grad=paths["grad"], jaxley_checkpoint=ckpt)
        row = _row(
            case,
            impl,
            "float64",
            f,
            b,
            max_abs_err_mv=_max_err(paths["v"], neuron_v),
            err_reference="NEURON (same scheme, same cell)" if neuron_v else None,
            max_abs_diff_vs_bayesneuron_be_mv=_max_err(paths["v"], be["v"]),
            grad_rel_diff_vs_bayesneuron_be=_grad_rel_err(paths["grad"], be["grad"]),
            soma_eps=JAXLEY_SOMA_EPS,
            note="bwd_euler dt 0.025, jit + vmap over amplitudes; one jx.Branch per section "
            "with bayesneuron's nseg, areas and half-segment resistive loads; mid-soma trunks "
            "at a branch point tied to the soma by JAXLEY_SOMA_EPS × its right half (NEURON: 0); "
            "setup_s (cell build) and compile_s / compile_fwd_s not in fwd_s / fwd_bwd_s"
            + ("; checkpoint_lengths as given" if ckpt else ""),
            **grad_wrt,
        )
        rows.append(row)
        jaxley_rows[impl] = row
    ref = jaxley_rows.get("jaxley")
    neuron_row = next((r for r in rows if r["impl"] == "neuron" and r["fwd_s"]), None)
    for r in rows:
        if r.get("n_comp") != (ref or {}).get("n_comp") or r is ref:
            continue
        r["fwd_vs_jaxley"] = _time_ratio(r, ref, "fwd")
        r["fwd_bwd_vs_jaxley"] = _time_ratio(r, ref, "fwd_bwd")
        if r is not neuron_row:
            r["fwd_vs_neuron"] = _time_ratio(r, neuron_row, "fwd")
    return rows


RUNNERS = {"paper_toy": case_paper_toy, "hh_tree": case_hh_tree, "l23_cell": case_l23_cell}


def machine_record(args) -> dict:
    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    rec = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "torchdiffeq": version("torchdiffeq"),
        "numpy": version("numpy"),
        "neuron": version("neuron"),
        "jax": version("jax"),
        "jaxley": version("jaxley"),
        "device": args.device,
        "threads": args.threads,
        "repeat": args.repeat,
        "budget_s": args.budget,
        "quick": args.quick,
    }
    try:
        rec["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rec["git_commit"] = None
    if args.device.startswith("cuda"):
        out = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.get_device_name())"],
            capture_output=True,
            text=True,
        )
        rec["gpu"] = out.stdout.strip() or None
    return rec


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x == 0:
            return "0"
        if abs(x) < 1e-3 or abs(x) >= 1e5:
            return f"{x:.2e}"
        return f"{x:.{digits}g}"
    return str(x)


def print_table(rows: list[dict], out=sys.stdout):
    paper = {r["case"]: r for r in rows if r.get("paper_method")}
    head = [
        "case",
        "impl",
        "dtype",
        "traces",
        "fwd_s",
        "fwd_bwd_s",
        "compile_s",
        "peak_MB",
        "err_mV",
        "paper/fwd",
        "paper/fwd_bwd",
    ]
    table = []
    for r in rows:
        p = paper.get(r["case"])
        sp = []
        for key in ("fwd_s", "fwd_bwd_s"):
            a, b = r.get(key), (p or {}).get(key)
            sp.append(f"{b / a:.1f}x" if a and b else "-")
        compile_s = r.get("compile_s")
        if r.get("compile_fwd_s") is not None:
            compile_s = f"{_fmt(r['compile_fwd_s'])}+{_fmt(compile_s)}"
        table.append(
            [
                r["case"],
                r["impl"],
                r["dtype"],
                _fmt(r.get("n_traces")),
                _fmt(r["fwd_s"]),
                _fmt(r["fwd_bwd_s"]),
                _fmt(compile_s),
                _fmt(r["peak_mem_mb"], 4),
                _fmt(r["max_abs_err_mv"]),
                *sp,
            ]
        )
    width = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, width))
    print(line, file=out)
    print("-" * len(line), file=out)
    for t in table:
        print("  ".join(str(x).ljust(w) for x, w in zip(t, width)), file=out)
    notes = {}  # note -> rows carrying it, so a note shared by a whole case prints once
    for r in rows:
        if r.get("note"):
            notes.setdefault(r["note"], []).append(f"{r['impl']} {r['dtype']}")
    if notes:
        print("\nnotes:", file=out)
        for n, who in notes.items():
            print(f"  {', '.join(who) if len(who) < 4 else f'{len(who)} rows'}: {n}", file=out)
    print(
        "\npaper/fwd, paper/fwd_bwd: time of the paper's method (torchdiffeq dopri5, adjoint, "
        "rtol=atol=1e-8, float32) divided by the row's time (speed-up).",
        file=out,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
    ap.add_argument(
        "--json",
        default=None,
        help="write results here (default: benchmarks/results/simulator-<device>.json)",
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bayesneuron rows; NEURON is CPU)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, one cold call each: a smoke run in about two minutes",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed repeats after one warm-up (default 3); 0: one cold call (the --quick default)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="stop repeating a measurement after this many seconds (default 60)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch/XLA/BLAS threads (default 1)")
    ap.add_argument(
        "--skip",
        default=None,
        help="regular expression: skip bayesneuron measurements whose '<impl>-<dtype>' matches "
        "(references always run), e.g. 'adjoint|float32'",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="give up on one measurement (warm-up and repeats) after this many seconds",
    )
    args = ap.parse_args(argv)
    if args.repeat is None:
        args.repeat = 0 if args.quick else 3
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = sorted(set(cases) - set(CASES))
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {list(CASES)}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        ap.error("--device must be cpu or cuda")
    # Threads for every worker (they inherit the environment of the fork server).
    n = str(args.threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = n
    if args.threads == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    out_path = (
        Path(args.json)
        if args.json
        else ROOT / "benchmarks" / "results" / f"simulator-{args.device.split(':')[0]}.json"
    )

    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", file=sys.stderr, flush=True)

    machine = machine_record(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bn-bench-") as tmp:
        runner = Runner(args, Path(tmp))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        for case in cases:
            try:
                rows += RUNNERS[case](runner, args.quick, log)
            except Exception as e:
                log(f"{case} failed: {e}")
                rows.append(_row(case, "-", "-", None, None, note=f"case failed: {e}"))
            # after every case, so a run stopped part-way keeps what it measured
            machine["total_s"] = time.perf_counter() - t_start
            out_path.write_text(
                json.dumps({"machine": machine, "rows": rows}, indent=1, default=str)
            )
    print(
        f"machine: {machine['cpu_model']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"device {args.device}, {args.threads} thread(s)"
    )
    print_table(rows)
    print(f"\nwrote {out_path}  ({machine['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
