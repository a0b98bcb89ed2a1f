"""The C build of the fused kernels (``_ckernels.c``): forward, adjoint and tangent.

Compiled at first use by the system C compiler (``$CC``, default ``cc``), cached by
source, compiler, flags and CPU in ``$BAYESNEURON_CACHE_DIR`` (default
``~/.cache/bayesneuron``), and called through ctypes, which releases the GIL, so chunks run on
threads. Where no compiler works, :func:`available` is False (with a one-line warning) and
``simulate`` runs the torch backend instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import threading
import warnings
from pathlib import Path

import numpy as np

_SRC = Path(__file__).with_name("_ckernels.c")
_FLAGS = [
    "-O3",
    "-march=native",
    "-ffp-contract=fast",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fopenmp-simd",
    "-shared",
    "-fPIC",
]
_LIB = None
_LOCK = threading.Lock()
_BUILD: dict = {}  # what was loaded: library path, compiler, flags


def build_info() -> dict:
    """Which build of the fused kernel this process loaded: ``{"status": "loaded" | "failed" |
    "not loaded", "library", "compiler", "flags"}``."""
    status = "not loaded" if _LIB is None else ("failed" if _LIB is False else "loaded")
    return {"status": status, **_BUILD}


def _cpu_key() -> bytes:
    """The CPU the build targets (``-march=native``): its model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
        return "\n".join(x for x in lines if x.startswith(("flags", "model name"))).encode()
    except OSError:
        return f"{platform.machine()} {platform.processor()}".encode()


def available() -> bool:
    """Whether the C kernels build and load here (tried once per process; a failure warns)."""
    global _LIB
    with _LOCK:  # chunks call it from several threads at once
        if _LIB is None:
            try:
                _build_and_load()
            except (OSError, subprocess.SubprocessError) as e:
                detail = (getattr(e, "stderr", b"") or b"").decode(errors="replace")
                detail = " ".join(detail.split())[:200]
                warnings.warn(
                    f"bayesneuron: the fused C kernel did not build ({e}{'; ' if detail else ''}"
                    f"{detail}); simulating with the slower torch backend",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _LIB = False
        return _LIB is not False


def _library() -> ctypes.CDLL:
    with _LOCK:
        if _LIB is False:
            raise RuntimeError(
                "the fused C kernel did not build here (see the warning); use "
                "CrankNicolson(backend='torch')"
            )
        return _build_and_load()


def _build_and_load() -> ctypes.CDLL:
    global _LIB
    if _LIB is not None:
        return _LIB
    cc = os.environ.get("CC", "cc")
    key = hashlib.sha256(_SRC.read_bytes() + " ".join([cc, *_FLAGS]).encode() + _cpu_key())
    folder = Path(os.environ.get("BAYESNEURON_CACHE_DIR", Path.home() / ".cache" / "bayesneuron"))
    so = folder / f"_ckernels-{key.hexdigest()[:16]}.so"
    if not so.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = so.with_name(f"{so.name}.{os.getpid()}.tmp")
        cmd = [cc, *_FLAGS, "-o", str(tmp), str(_SRC)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        os.replace(tmp, so)
    lib = ctypes.CDLL(str(so))
    _BUILD.update(library=str(so), compiler=cc, flags=" ".join(_FLAGS))
    lib.forward_chunk.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double]
    lib.forward_chunk.restype = None
    lib.adjoint_chunk.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.adjoint_chunk.restype = None
    lib.tangent_chunk.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.tangent_chunk.restype = None
    _LIB = lib
    return lib


def _pointers(arrays) -> ctypes.Array:
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError("the C kernels take C-contiguous arrays")
    return (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])


def _dims(*sizes) -> np.ndarray:
    return np.array(sizes, dtype=np.int64)


RESUME, NO_OUT = 1, 2  # forward_chunk flags (_ckernels.c)


def forward_chunk(tree, rates, gates, steps, data, v0, out, hist, work, store, flags=0):
    """One chunk of lanes forward (layouts in :mod:`bayesneuron.simulation.fused`); ``flags``
    of :data:`RESUME` and :data:`NO_OUT` run one segment of a checkpointed trajectory."""
    n, nl = work[0].shape  # v [node, lane]
    n_comp = tree[6].shape[0]
    cur, rv = data[0], data[3]
    arrays = [*tree, *rates, *gates, *steps, *data, out, *hist, *work]
    dims = _dims(
        n, n_comp, nl, rates[0].shape[0], gates[0].shape[0], steps[0].shape[0],
        cur.shape[1], out.shape[2], rv.shape[1], work[3].shape[1], int(store), cur.shape[2],
        tree[7].shape[0], int(flags),
    )  # fmt: skip
    _library().forward_chunk(_pointers(arrays), dims.ctypes.data, float(v0))


def adjoint_chunk(tree, gates, steps, data, gout, hist, work, grad, gcur=None):
    """One chunk of lanes backward: the discrete adjoint; with ``gcur`` ``[lane, bins, site]``
    it also accumulates ∂L/∂(current) there."""
    lv = work[0]
    n, nl = lv.shape
    n_comp = tree[6].shape[0]
    k_dt, _, cols, out_at, reset_at = steps
    cur, sites, _, rv, ridx, gm, ee = data
    want = gcur is not None
    gcur = gcur if want else np.empty(0)
    arrays = [*tree, *gates, k_dt, cols, out_at, reset_at, sites, rv, ridx, gm, ee, gout]
    arrays += [*hist, *work, grad, gcur]
    dims = _dims(
        n, n_comp, nl, hist[2].shape[1], gates[0].shape[0], k_dt.shape[0], gout.shape[2],
        rv.shape[1], hist[1].shape[1], tree[7].shape[0], cur.shape[1], cur.shape[2], int(want),
    )  # fmt: skip
    _library().adjoint_chunk(_pointers(arrays), dims.ctypes.data)


def tangent_chunk(tree, gates, steps, data, hist, wrt, dout, work):
    """One chunk of lanes' forward sensitivities from a stored forward pass."""
    n, nl = work[2].shape
    n_comp = tree[6].shape[0]
    k_dt, _, _, out_at, reset_at = steps
    _, _, _, rv, ridx, gm, ee = data
    arrays = [*tree, *gates, k_dt, out_at, reset_at, rv, ridx, gm, ee, *hist, wrt, dout, *work]
    dims = _dims(
        n, n_comp, nl, hist[2].shape[1], gates[0].shape[0], k_dt.shape[0], dout.shape[3],
        rv.shape[1], hist[1].shape[1], dout.shape[1], tree[7].shape[0],
    )  # fmt: skip
    _library().tangent_chunk(_pointers(arrays), dims.ctypes.data)
