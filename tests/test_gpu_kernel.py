"""The Triton whole-trajectory kernels (``bayesneuron.simulation.gpu_kernel``): forward and
adjoint on the CPU in Triton's interpreter against the fused C kernel (same scheme:
voltages and gradients agree to rounding), and on CUDA (marked ``gpu``) against the CPU
through ``simulate``."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from bayesneuron import simulate
from bayesneuron.reference.cells import hh_tree_cell
from bayesneuron.reference.paper import paper_toy_cell
from bayesneuron.simulation import gpu_kernel
from bayesneuron.simulation.solvers import CrankNicolson

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed"
)

# Runs in a child process: the interpreter is chosen when Triton compiles the kernel source,
# so TRITON_INTERPRET=1 must be set before the kernel module is first imported.
_CHILD = r"""
import json, sys
import numpy as np, torch
from bayesneuron import simulate, step_current, Reset
from bayesneuron.reference.cells import hh_tree_cell
from bayesneuron.reference.paper import paper_currents, paper_time_grid, paper_toy_cell
from bayesneuron.simulation import api, gpu_kernel
from bayesneuron.simulation.solvers import CrankNicolson

case, dtype = sys.argv[1], getattr(torch, sys.argv[2])
gen = torch.Generator().manual_seed(0)
reset = None
if case.startswith("paper"):  # softplus rates; 3 particles x 2 of the paper's traces
    every = 7 if case == "paper_checkpointed" else None  # 45 steps: 7 segments
    cell, solver = paper_toy_cell(), CrankNicolson(dt=0.05, checkpoint_every=every)
    stim, t_eval = paper_currents(n_traces=2, n_comp=6), paper_time_grid()[:16]
    g = {"g_na": 100 + 40 * torch.rand(3, 1, 6, generator=gen, dtype=torch.float64),
         "g_k": 30 + 20 * torch.rand(3, 1, 6, generator=gen, dtype=torch.float64)}
else:  # classic HH: linoid, exponential and sigmoid rates; nA at one site; a reset
    cell, solver = hh_tree_cell(), CrankNicolson(dt=0.1)
    stim = step_current([0.2, 0.5], 0, 6, delay=0.5, duration=4.0, t_stop=6.0, dt=0.5)
    g0 = torch.as_tensor(cell.params["g_na"], dtype=torch.float64)
    g = {"g_na": g0 * (0.8 + 0.4 * torch.rand(2, 1, 6, generator=gen, dtype=torch.float64)),
         "e_k": torch.as_tensor(cell.params["e_k"], dtype=torch.float64) + torch.rand(6)}
    t_eval = np.arange(0.0, 6.0 + 1e-9, 0.2)
    held = torch.full((2, 6, len(t_eval)), float("nan"), dtype=torch.float64)
    held[:, 0] = -60.0
    reset = Reset(held, 10)
g = {k: x.requires_grad_() for k, x in g.items()}
ref = simulate(cell, g, stim, t_eval, solver, reset=reset).v
weights = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
ref_grad = torch.autograd.grad((ref * weights).sum(), list(g.values()))
g = {k: x.detach().to(dtype).requires_grad_() for k, x in g.items()}
s2, p, cur, st, te, rs, dev = api._prepare(cell, g, stim, t_eval, solver, dtype, None, reset)
seen, segments = [], gpu_kernel._Launch.segments
batches = []
if case == "paper":  # programs of 4 lanes: two programs, the second one's lanes half masked
    gpu_kernel.lanes_per_program = lambda n, n_sm: batches.append(n) or 4
gpu_kernel._Launch.segments = lambda self: seen.append(len(segments(self))) or segments(self)
v, n = gpu_kernel.run(cell, p, cur, st, te, s2, rs)
grad = torch.autograd.grad((v.double() * weights).sum(), list(g.values()))
rel = max(float((a.double() - b).abs().max() / b.abs().max()) for a, b in zip(grad, ref_grad))
print(json.dumps({"shape": list(v.shape), "ref_shape": list(ref.shape), "dtype": str(v.dtype),
                  "max_abs": float((v.double() - ref).abs().max()), "grad_rel": rel,
                  "grad_shapes": [list(x.shape) for x in grad], "segments": max(seen),
                  "batches": batches,
                  "v_range": [float(ref.min()), float(ref.max())], "steps": n}))
"""


def _interpret(case: str, dtype: str) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, case, dtype], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_triton
@pytest.mark.parametrize("case", ["paper", "hh", "paper_checkpointed"])
def test_interpreted_kernel_matches_the_c_kernel(case):
    r = _interpret(case, "float64")
    assert r["shape"] == r["ref_shape"] and r["dtype"] == "torch.float64"
    assert r["v_range"][1] > 0.0  # the traces spike: a scheme error would show
    assert r["max_abs"] < 1e-8
    shapes = [[2, 1, 6], [6]] if case == "hh" else [[3, 1, 6], [3, 1, 6]]  # hh: g_na, e_k
    assert r["grad_shapes"] == shapes
    assert r["grad_rel"] < 1e-8  # the adjoint: the C kernel's gradient
    assert r["segments"] == (7 if case == "paper_checkpointed" else 1)
    if case == "paper":  # 3 particles x 2 traces = 6 lanes in programs of 4
        assert r["batches"] == [6]


def test_lanes_per_program_keep_every_multiprocessor_busy():
    assert gpu_kernel.lanes_per_program(20_000, 132) == 128  # 157 programs
    assert gpu_kernel.lanes_per_program(10_000, 132) == 64  # 157 programs of 64
    assert gpu_kernel.lanes_per_program(10, 132) == 32  # one large cell's traces: one warp
    assert gpu_kernel.lanes_per_program(6, 1) == 128  # Triton's interpreter: one program


@needs_triton
def test_interpreted_kernel_in_float32():
    r = _interpret("paper", "float32")
    assert r["dtype"] == "torch.float32"
    assert r["max_abs"] < 0.05  # mV over spiking traces, float32 rounding only
    assert r["grad_rel"] < 0.05


@needs_triton
def test_what_the_gpu_kernel_does_not_take():
    cell = paper_toy_cell()
    cn = CrankNicolson(dt=0.1)
    assert "CUDA" in gpu_kernel.supported(cell, cn, "cpu")
    assert "CrankNicolson" in gpu_kernel.supported(cell, CrankNicolson(backend="torch"), "cuda")
    g, i = torch.ones(6, requires_grad=True), torch.ones(3, 6, requires_grad=True)
    assert gpu_kernel.supported(cell, cn, "cuda", params=[g]) is None
    assert "currents" in gpu_kernel.supported(cell, cn, "cuda", params=[g], currents=i)
    with torch.no_grad():  # no gradient wanted
        assert gpu_kernel.supported(cell, cn, "cuda", params=[g], currents=i) is None


@needs_triton
def test_a_kernel_that_fails_is_reported_once_and_not_used_again(monkeypatch):
    monkeypatch.setattr(gpu_kernel, "_FAILED", [])
    with pytest.warns(UserWarning, match="torch backend"):
        with pytest.raises(gpu_kernel.KernelFailed, match="no_such_kernel"):
            gpu_kernel._launch("no_such_kernel", (1,))
    reason = gpu_kernel.supported(paper_toy_cell(), CrankNicolson(), "cuda")
    assert "failed here" in reason and "no_such_kernel" in reason


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_runs_the_kernels_and_matches_the_cpu(dtype):
    from bayesneuron import step_current

    cell = hh_tree_cell()
    stim = step_current([0.2, 0.5], 0, 6, delay=0.5, duration=4.0, t_stop=6.0, dt=0.5)
    g0 = torch.as_tensor(cell.params["g_na"], dtype=torch.float64)
    g = g0 * (0.8 + 0.4 * torch.rand(50, 1, 6, dtype=torch.float64))
    cn = CrankNicolson(dt=0.025)
    assert gpu_kernel.supported(cell, cn, "cuda", params=[g]) is None
    gc = g.clone().requires_grad_()
    cpu = simulate(cell, {"g_na": gc}, stim, solver=cn).v
    (grad_cpu,) = torch.autograd.grad(cpu.pow(2).mean(), gc)
    gg = g.to("cuda", dtype).requires_grad_()
    gpu = simulate(cell, {"g_na": gg}, stim, solver=cn, dtype=dtype).v
    (grad_gpu,) = torch.autograd.grad(gpu.pow(2).mean(), gg)
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    tol = 1e-8 if dtype == torch.float64 else 0.05
    assert torch.allclose(gpu.detach().cpu().double(), cpu.detach(), atol=tol)
    rel = (grad_gpu.cpu().double() - grad_cpu).abs().max() / grad_cpu.abs().max()
    assert rel < (1e-8 if dtype == torch.float64 else 0.05)
