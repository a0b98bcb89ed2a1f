"""What every results folder gets: CSV tables written atomically, JSON with numpy values, the
environment manifest, and file-safe design labels."""

from __future__ import annotations

import csv
import json
import math
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from bayesneuron.simulation import kernel_build

__all__ = ["environment", "json_default", "safe_label", "write_csv", "write_json"]


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as a CSV table at ``path`` (columns: every key, in first-seen order), written to
    a temporary file and renamed, so a reader never sees half a table."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def json_default(x):
    """``json.dumps(default=...)`` for numpy scalars and arrays, NaN (→ null) and the rest (str)."""
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and math.isnan(x):
        return None
    return str(x)


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON at ``path`` (numpy values as numbers, NaN as null)."""
    path.write_text(json.dumps(obj, indent=2, default=json_default))


def safe_label(label: str) -> str:
    """A design label as a file name: ``"[0,-1]|all"`` → ``"0_-1__all"``."""
    return label.replace("|", "__").replace("[", "").replace("]", "").replace(",", "_")


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment() -> dict:
    """Versions, device, fused-kernel build and git commit: what a result folder needs to be
    reproduced."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "bayesneuron": _version("bayesneuron"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": _version("pyro-ppl"),
        "arviz": _version("arviz"),
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "fused_kernel": kernel_build(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit,
    }
