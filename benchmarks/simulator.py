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
    amps = np.linspace(0.1, 1.0, sz["n_traces"])
    stim = step_current(amps, 0, cell.n_comp, sz["delay"], sz["duration"], sz["t_stop"], dt=1.0)
    n_t = int(round(sz["t_stop"] / sz["dt"]))
    t_eval = np.arange(n_t + 1) * sz["dt"]
    g = {"g_na": np.asarray(cell.params["g_na"], dtype=np.float64)}
    return cell, stim, t_eval, g, g, label


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


def _neuron_build(h, sections):
    """NEURON sections from bayesneuron ``Section`` cylinders (nseg = 1)."""
    secs = []
    for s in sections:
        sec = h.Section(name=s.name)
        sec.L, sec.diam, sec.nseg = s.length, s.diam, 1
        secs.append(sec)
    for s, sec in zip(sections, secs):
        if s.parent is not None:
            sec.connect(secs[s.parent](s.parent_x), 0)
    return secs


def _task_neuron(job: dict):
    """NEURON on hh_tree: fixed-step backward Euler, exact hh rates, one run per amplitude."""
    from neuron import h

    from bayesneuron.reference.cells import hh_tree_cell, hh_tree_sections

    sz = job["sizes"]
    _, _, t_eval, _, _, amps = _hh_tree_problem(sz)
    cell = hh_tree_cell()
    h.load_file("stdrun.hoc")
    secs = _neuron_build(h, hh_tree_sections())
    for sec in secs:
        sec.Ra, sec.cm = 100.0, 1.0
        sec.insert("hh")
    h.usetable_hh = 0
    h.celsius = 6.3
    h.secondorder = 0
    h.CVode().active(0)
    stim = h.IClamp(secs[0](0.5))
    stim.delay, stim.dur = sz["delay"], sz["duration"]
    recs = [h.Vector().record(seg._ref_v) for sec in secs for seg in sec]
    names = [f"{sec.name()}({seg.x:.4g})" for sec in secs for seg in sec]
    order = [names.index(n) for n in cell.morphology.names]
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
    }
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


def _task_jaxley(job: dict):
    """Jaxley on hh_tree: bwd_euler, float64, jit + vmap over the amplitudes."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jaxley as jx
    from jaxley.channels import HH

    from bayesneuron.reference.cells import hh_tree_cell, hh_tree_sections

    sz = job["sizes"]
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
    cell.insert(HH())  # NEURON's hh at 6.3 °C; conductances in S/cm² (bayesneuron: mS/cm²)
    cell.set("v", float(cell_bn.v0))
    cell.init_states()
    cell.record("v", verbose=False)
    cell.branch("all").make_trainable("HH_gNa", verbose=False)
    cell.branch("all").make_trainable("HH_gK", verbose=False)
    soma_b = order.index(0)
    to_bn = [order.index(i) for i in range(len(sections))]  # bayesneuron comp -> jaxley branch

    def jparams(g):
        return [
            {"HH_gNa": jnp.asarray(g["g_na"][order] * 1e-3)},
            {"HH_gK": jnp.asarray(g["g_k"][order] * 1e-3)},
        ]

    dt, n_t = sz["dt"], len(t_eval) - 1
    t = np.arange(n_t) * dt
    on = (t >= sz["delay"] - 1e-9) & (t < sz["delay"] + sz["duration"] - 1e-9)
    cur = jnp.asarray(amps[:, None] * on[None, :])  # step k (t_k → t_k+1) sees bin k's current
    target = jnp.asarray(np.load(job["target"])) if job.get("target") else None

    def sim(p, c):
        ds = cell.branch(soma_b).comp(0).data_stimulate(c)
        return jx.integrate(cell, params=p, data_stimuli=ds, delta_t=dt, solver="bwd_euler")

    vsim = jax.vmap(sim, in_axes=(None, 0))

    def loss(p, c, tg):
        return jnp.mean((vsim(p, c)[:, to_bn] - tg) ** 2)

    p_fwd, p_grad = jparams(gt), jparams(init)
    compiled = {}

    def compile_fwd():
        compiled["fwd"] = jax.jit(vsim).lower(p_fwd, cur).compile()

    def compile_bwd():
        compiled["bwd"] = jax.jit(jax.value_and_grad(loss)).lower(p_grad, cur, target).compile()

    def fwd():
        return np.asarray(compiled["fwd"](p_fwd, cur).block_until_ready())[:, to_bn]

    def fwd_bwd():
        val, g = compiled["bwd"](p_grad, cur, target)
        jax.block_until_ready(g)
        grads = {
            "g_na": np.asarray(g[0]["HH_gNa"])[to_bn] * 1e-3,  # per mS/cm²
            "g_k": np.asarray(g[1]["HH_gK"])[to_bn] * 1e-3,
        }
        return float(val), grads

    info = {
        "n_traces": len(amps),
        "n_comp": len(sections),
        "n_times": len(t_eval),
        "device": str(jax.devices()[0]).lower(),
        "version": importlib.metadata.version("jaxley"),
        "compile": {"fwd": compile_fwd, "fwd_bwd": compile_bwd},
    }
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


def _timed(fn, sync, repeat: int, budget: float):
    """One warm-up call (its result is returned), then best of up to ``repeat`` timed calls;
    repeating stops early once warm-up plus repeats have taken ``budget`` seconds. With
    ``repeat = 0`` the single (cold) call is the measurement."""
    t0 = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - t0
    if repeat == 0:  # a single call (references): report it as it is
        return out, first, first, 0
    spent, times = first, []
    while len(times) < repeat and (not times or spent < budget):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return out, min(times), first, len(times)


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
        out, best, first, n = _timed(fn, sync, job["repeat"], job["budget"])
        res.update(seconds=best, first_s=first, repeats=n, peak_mem_mb=mem.peak_mb())
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
    for k in ("n_traces", "n_comp", "n_times", "device", "version", "cell", "checkpoint_every"):
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
        rows.append(
            _row(
                case,
                "jaxley",
                "float64",
                None,
                None,
                note="jaxley not installed (pip install jaxley)",
            )
        )
    return rows


def case_l23_cell(runner: Runner, quick: bool, log) -> list[dict]:
    case, rows = "l23_cell", []
    sz = _sizes(case, quick)
    for fine in (False, True):
        label = f"d_lambda ≤ {sz['d_lambda']:g}, ≥ {sz['min_comp']} comps" if fine else "nseg=1"
        plain = None
        for ck in (None, sz["checkpoint_every"]):
            spec = {"kind": "cn", "dt": sz["dt"], "checkpoint_every": ck}
            impl = _solver_name(spec)
            log(f"l23_cell ({label}): {impl} …")
            f, b, paths = _bn(runner, case, f"l23-{int(fine)}-{ck}", spec, "float64", fine=fine)
            extra = {"grad_wrt": "g_na per compartment"}  # the row's "cell" comes from the worker
            if ck is None:
                plain = paths["v"]
                extra.update(err_reference="none (timing and memory only)")
            else:
                extra.update(
                    max_abs_err_mv=_max_err(paths["v"], plain),
                    err_reference="same solver and cell without checkpointing; must be 0",
                )
            rows.append(_row(case, impl, "float64", f, b, **extra))
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
