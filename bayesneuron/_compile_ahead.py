"""Compile a numba kernel in a helper process while this process compiles another.

numba compiles one function at a time per process (its compiler lock). On a cold cache the
fused backend's first simulation compiles ``_forward_chunk`` (≈ 5 s) and its first gradient
then ``_adjoint_chunk`` (≈ 3–4 s) — one after the other, while the second core idles. At the
first simulation, :func:`start` checks numba's on-disk cache for the adjoint at this problem's
signature; if it is missing, a child process (numba and ``_kernels`` only, no torch) compiles
it into that cache while this process compiles the forward kernel. :func:`wait` blocks until
the child is done, so this process's first call loads the adjoint from the cache instead of
compiling it. Anything that goes wrong (a cache that cannot be written, a crashed child)
leaves numba's ordinary in-process compilation. ``BAYESNEURON_COMPILE_AHEAD=0`` switches it off.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading

import numba

from . import _kernels

_CHILD = r"""
import importlib.util, pickle, sys
spec = importlib.util.spec_from_file_location("bayesneuron._kernels", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
for name, sig in pickle.load(sys.stdin.buffer):
    getattr(mod, name).compile(sig)
"""

_JOBS: dict[str, subprocess.Popen | None] = {}  # kernel name → its child (None: none needed)
_LOCK = threading.Lock()


def _cached(kernel, sig) -> bool:
    """Whether numba's on-disk cache holds ``kernel`` compiled for ``sig`` (numba internals:
    any surprise counts as cached, i.e. nothing is started)."""
    try:
        cache = kernel._cache
        key = cache._index_key(sig, kernel.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:
        return True


def start(name: str, make_args) -> None:
    """Compile ``_kernels.<name>`` for the types of the arguments ``make_args()`` returns in a
    child process, unless it is compiled here already, cached on disk, or was started before
    (once per process and kernel; ``make_args`` is called only when that is decided)."""
    if os.environ.get("BAYESNEURON_COMPILE_AHEAD", "1") == "0":
        return
    with _LOCK:
        if name in _JOBS:
            return
        _JOBS[name] = None
        kernel = getattr(_kernels, name)
        sig = tuple(numba.typeof(a) for a in make_args())
        if kernel.signatures or _cached(kernel, sig):
            return
        try:
            child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, _kernels.__file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            child.stdin.write(pickle.dumps([(name, sig)]))
            child.stdin.close()
        except OSError:
            return
        _JOBS[name] = child


def wait(name: str) -> None:
    """Block until the child compiling ``name`` (if any) has finished."""
    with _LOCK:
        child = _JOBS.get(name)
    if child is not None:
        child.wait()
