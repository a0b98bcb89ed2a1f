"""The C build of the fused kernels (``_ckernels``): equal to the numba kernels; its build."""

import shutil

import numpy as np
import pytest
import torch

from bayesneuron import (
    CrankNicolson,
    Reset,
    _ckernels,
    _fused,
    hh_tree_cell,
    paper_currents,
    paper_ground_truth,
    paper_time_grid,
    paper_toy_cell,
    sensitivities,
    simulate,
    step_current,
)

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


def _run(cell, params, stim, t, reset, c_kernels, monkeypatch):
    """Voltages, gradients of a loss and forward sensitivities ∂V/∂g_na with one build."""
    monkeypatch.setenv("BAYESNEURON_KERNELS", "c" if c_kernels else "numba")
    solver = CrankNicolson(dt=0.01, backend="numba")
    _, jac = sensitivities(cell, params, stim, t, solver, wrt=("g_na",), reset=reset)
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    v = simulate(cell, p, stim, t, solver, reset=reset).v
    (v.square().mean() + v[..., -1].mean()).backward()
    return v.detach(), {k: x.grad for k, x in p.items()}, jac


@pytest.mark.parametrize("case", ["paper", "hh_tree_reset"])
def test_c_kernels_equal_numba_kernels(case, tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESNEURON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_ckernels, "_LIB", None)
    if case == "paper":
        cell, stim, t, reset = paper_toy_cell(), paper_currents(n_traces=5), paper_time_grid(), None
        truth = paper_ground_truth()
        params = {k: torch.as_tensor(truth[k]).expand(2, 6).clone() for k in ("g_na", "g_k")}
    else:
        cell = hh_tree_cell()
        t = np.linspace(0.0, 10.0, 41)
        stim = step_current([0.0, 0.15, 0.4], 0, cell.n_comp, 1.0, 5.0, 10.0, dt=1.0)
        ref = simulate(cell, {}, stim, t, CrankNicolson(dt=0.01)).v.detach()
        reset = Reset(torch.where(torch.rand(ref.shape) < 0.5, ref, torch.nan), every=4)
        params = {"g_na": torch.tensor(cell.params["g_na"]) * 1.1}
    v_c, g_c, j_c = _run(cell, params, stim, t, reset, True, monkeypatch)
    v_n, g_n, j_n = _run(cell, params, stim, t, reset, False, monkeypatch)
    assert len(list(tmp_path.glob("_ckernels-*.so"))) == 1  # built into the cache dir
    torch.testing.assert_close(v_c, v_n, rtol=0, atol=1e-9)
    for k in g_n:
        torch.testing.assert_close(g_c[k], g_n[k], rtol=1e-9, atol=1e-12)
    assert j_c.abs().max() > 0.1  # the sensitivities are not trivially zero
    torch.testing.assert_close(j_c, j_n, rtol=1e-9, atol=1e-10)


def test_c_build_is_cached_and_a_broken_compiler_falls_back_to_numba(tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESNEURON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_ckernels, "_LIB", None)
    assert _ckernels.available()
    so = next(tmp_path.glob("_ckernels-*.so"))
    built = so.stat().st_mtime_ns
    monkeypatch.setattr(_ckernels, "_LIB", None)  # a new process: loads, does not rebuild
    assert _ckernels.available() and so.stat().st_mtime_ns == built
    assert _fused._chunk_kernels()[0] is _ckernels.forward_chunk

    monkeypatch.setenv("BAYESNEURON_CACHE_DIR", str(tmp_path / "other"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(_ckernels, "_LIB", None)
    with pytest.warns(RuntimeWarning, match="the C kernels did not build"):
        assert not _ckernels.available()
    assert _fused._chunk_kernels()[2] is _fused._tangent_chunk  # numba's
    monkeypatch.setenv("BAYESNEURON_KERNELS", "numba")
    monkeypatch.delenv("CC")
    monkeypatch.setattr(_ckernels, "_LIB", None)
    assert _fused._chunk_kernels()[1] is _fused._adjoint_chunk
    assert _ckernels._LIB is None  # forcing numba does not build the C kernels
