"""The C build of the fused kernel (``bayesneuron.simulation._ckernels``): equal to the torch
backend, built once into the cache, and replaced by the torch backend where no C compiler works."""

import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from bayesneuron import (
    CrankNicolson,
    Reset,
    SolverError,
    hh_tree_cell,
    paper_currents,
    paper_ground_truth,
    paper_time_grid,
    paper_toy_cell,
    sensitivities,
    simulate,
    step_current,
)
from bayesneuron.simulation import _ckernels, kernel_build, runs_fused

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A process that has not loaded the kernel yet, with an empty cache in ``tmp_path``."""
    monkeypatch.setenv("BAYESNEURON_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(_ckernels, "_LIB", None)
    monkeypatch.setattr(_ckernels, "_BUILD", {})
    return tmp_path


def _case(name):
    """``(cell, params, stim, t, dt, reset)``: the paper cell with a sample dim, or the HH tree
    (nA, junctions, spiking) restarted from data at every 4th output time."""
    if name == "paper":
        cell, stim, t = paper_toy_cell(), paper_currents(n_traces=3), paper_time_grid()[:30]
        truth = paper_ground_truth()
        params = {k: torch.as_tensor(truth[k]).expand(2, 6).clone() for k in ("g_na", "g_k")}
        params["g_na"][1] *= 1.1  # the two samples differ
        return cell, params, stim, t, 0.01, None
    cell = hh_tree_cell()
    t = np.linspace(0.0, 10.0, 41)
    stim = step_current([0.0, 0.15, 0.4], 0, cell.n_comp, 1.0, 5.0, 10.0, dt=1.0)
    ref = simulate(cell, {}, stim, t, CrankNicolson(dt=0.025, backend="torch")).v.detach()
    gen = torch.Generator().manual_seed(0)
    reset = Reset(torch.where(torch.rand(ref.shape, generator=gen) < 0.5, ref, torch.nan), 4)
    params = {"g_na": torch.tensor(cell.params["g_na"]) * 1.1}
    return cell, params, stim, t, 0.025, reset


def _run(cell, params, stim, t, dt, reset, backend):
    """Voltages and the gradients of a loss with respect to every parameter given."""
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    v = simulate(cell, p, stim, t, CrankNicolson(dt=dt, backend=backend), reset=reset).v
    (v.square().mean() + v[..., -1].mean()).backward()
    return v.detach(), {k: x.grad for k, x in p.items()}


def _torch_jacobian(cell, params, stim, t, dt, reset):
    """∂V/∂g_na per compartment by forward-mode AD on the torch backend, laid out as
    :func:`sensitivities` returns it ``[…, comp (of g), comp (of V), time]``."""
    g = params["g_na"]
    n = cell.n_comp
    tangent = torch.eye(n, dtype=torch.float64).reshape((n,) + (1,) * (g.dim() - 1) + (n,))
    with fwAD.dual_level():
        dual = fwAD.make_dual(g.expand((n,) + g.shape).clone(), tangent.expand((n,) + g.shape))
        v = simulate(cell, {**params, "g_na": dual}, stim, t, CrankNicolson(dt=dt), reset=reset).v
        jac = fwAD.unpack_dual(v).tangent
    return jac.movedim(0, -3)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@needs_cc
@pytest.mark.parametrize("name", ["paper", "hh_tree_reset"])
def test_c_kernel_equals_the_torch_backend(name, fresh):
    cell, params, stim, t, dt, reset = _case(name)
    v_c, g_c = _run(cell, params, stim, t, dt, reset, "fused")
    assert len(list(fresh.glob("_ckernels-*.so"))) == 1  # built into the cache dir
    v_t, g_t = _run(cell, params, stim, t, dt, reset, "torch")
    assert v_c.shape == v_t.shape and v_c.abs().max() > 30.0  # it spikes
    torch.testing.assert_close(v_c, v_t, rtol=0, atol=1e-9 * v_t.abs().max().item())
    for k in g_t:
        assert g_t[k].abs().max() > 0
        torch.testing.assert_close(g_c[k], g_t[k], rtol=0, atol=1e-9 * g_t[k].abs().max().item())
    # the exact forward sensitivities (C tangent kernel) against torch's forward-mode AD
    v_s, jac = sensitivities(
        cell, params, stim, t, CrankNicolson(dt=dt), wrt=("g_na",), reset=reset
    )
    assert torch.equal(v_s, v_c)
    ref = _torch_jacobian(cell, params, stim, t, dt, reset)
    assert jac.shape == ref.shape and ref.abs().max() > 0.1
    torch.testing.assert_close(jac, ref, rtol=0, atol=1e-9 * ref.abs().max().item())


@needs_cc
def test_build_is_cached_by_source_compiler_and_flags(fresh, monkeypatch):
    assert kernel_build()["status"] == "not loaded"
    assert _ckernels.available()
    (so,) = fresh.glob("_ckernels-*.so")
    info = kernel_build()
    assert info["status"] == "loaded" and info["library"] == str(so) and info["compiler"] == "cc"
    assert "-O3" in info["flags"]
    built = so.stat().st_mtime_ns
    monkeypatch.setattr(_ckernels, "_LIB", None)  # as a new process: loads, does not rebuild
    assert _ckernels.available() and so.stat().st_mtime_ns == built
    assert list(fresh.iterdir()) == [so]  # no temporary files left behind
    monkeypatch.setattr(_ckernels, "_LIB", None)
    monkeypatch.setenv("CC", shutil.which("cc"))  # another compiler: another build
    assert _ckernels.available()
    assert len(list(fresh.glob("_ckernels-*.so"))) == 2
    assert kernel_build()["compiler"] == shutil.which("cc")


@pytest.mark.parametrize("cc", ["/bin/false", "/bin/true", "no-such-compiler"])
def test_a_broken_compiler_falls_back_to_torch_with_one_warning(cc, fresh, monkeypatch):
    # /bin/false fails, /bin/true "succeeds" without writing the library, the last is missing
    monkeypatch.setenv("CC", str(fresh / cc) if cc == "no-such-compiler" else cc)
    cell, params, stim, t = paper_toy_cell(), paper_ground_truth(), paper_currents(2), None
    ref = simulate(cell, params, stim, t, CrankNicolson(backend="torch")).v
    with pytest.warns(RuntimeWarning, match="the fused C kernel did not build") as record:
        assert not runs_fused(cell, CrankNicolson())
        v = simulate(cell, params, stim, t).v  # the default solver: the torch backend
        simulate(cell, params, stim, t, CrankNicolson(dt=0.01))  # no second warning
    assert len([w for w in record if w.category is RuntimeWarning]) == 1  # once per process
    assert torch.equal(v, ref)
    assert kernel_build()["status"] == "failed"
    assert not list(fresh.glob("*.so"))
    with pytest.raises(SolverError, match="backend='fused' cannot run this: .*did not build"):
        simulate(cell, params, stim, t, CrankNicolson(backend="fused"))
    with pytest.raises(SolverError, match="sensitivities need the fused kernel: .*did not build"):
        sensitivities(cell, params, stim, t)


_CHILD = """
import warnings
import torch
from bayesneuron import CrankNicolson, paper_currents, paper_toy_cell, simulate

cell, stim = paper_toy_cell(), paper_currents(n_traces=2)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    v = simulate(cell, None, stim).v
    v2 = simulate(cell, {"g_k": 40.0}, stim).v
ref = simulate(cell, None, stim, solver=CrankNicolson(backend="torch")).v
print(len(caught), caught[0].category.__name__, bool(torch.equal(v, ref)), bool((v2 != v).any()))
"""


def test_a_fresh_process_without_a_compiler_warns_once_and_simulates(tmp_path):
    env = {**os.environ, "CC": "/bin/false", "BAYESNEURON_CACHE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHILD)],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["1", "RuntimeWarning", "True", "True"], out.stderr
    assert not list(tmp_path.glob("*.so"))


@needs_cc
def test_sensitivities_equal_finite_differences_of_the_c_kernel():
    # one column of the exact Jacobian against a central difference of two fused simulations
    cell, params, stim, t, dt, reset = _case("hh_tree_reset")
    solver = CrankNicolson(dt=dt, backend="fused")
    _, jac = sensitivities(cell, params, stim, t, solver, wrt=("g_na",), reset=reset)
    h, k = 1e-4, 2
    up, down = params["g_na"].clone(), params["g_na"].clone()
    up[k] += h
    down[k] -= h
    v_up = simulate(cell, {"g_na": up}, stim, t, solver, reset=reset).v
    v_down = simulate(cell, {"g_na": down}, stim, t, solver, reset=reset).v
    fd = (v_up - v_down) / (2 * h)
    ref = jac[..., k, :, :]
    assert ref.abs().max() > 1e-2 and math.isfinite(float(ref.abs().max()))
    assert (fd - ref).abs().max() <= 1e-5 * ref.abs().max()
