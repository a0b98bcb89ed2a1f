"""What the commands share: checks of the command line made before any work, the staging
folder that keeps half-written results out of ``--out``, progress lines and provenance."""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from bayesneuron.errors import BayesneuronError
from bayesneuron.protocol.design import split_labels as split_design_labels
from bayesneuron.studies.output import environment, write_json

__all__ = [
    "DEFAULT_SEED",
    "backend",
    "check_args",
    "check_device",
    "check_out",
    "config",
    "design",
    "free_names",
    "model_sigma",
    "remove_if_empty",
    "say",
    "split_labels",
    "staged",
    "write_provenance",
]

DEFAULT_SEED = 20230619


def say(args, message: str) -> None:
    """Progress on stderr (stdout keeps the one-line result), unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot become a results folder, before any work is done."""
    for q in (out, *out.parents):
        if q.exists():
            if not q.is_dir():
                what = f"--out {out}" if q == out else f"--out {out}: {q}"
                raise BayesneuronError(
                    f"{what} is a file, not a folder; give a folder path for the results"
                )
            break


def check_device(name: str) -> None:
    from bayesneuron.simulation.api import check_device as check

    check(name)


def backend(args) -> str:
    """``--backend``: ``auto`` (the fused C kernel where it applies), ``fused`` or ``torch``;
    ``numba``, a deprecated alias of ``fused``, still works (with a note on stderr)."""
    name = str(args.backend)
    alias = getattr(args.backend, "alias", "")
    if alias:
        say(args, f"bayesneuron: note: --backend {alias} is a deprecated alias of --backend {name}")
    if name == "fused" and torch.device(args.device).type != "cpu":
        raise BayesneuronError(
            f"--backend fused runs on the CPU only; use --backend torch (or auto) with "
            f"--device {args.device}"
        )
    return name


def free_names(args) -> tuple[str, ...] | None:
    """``--free g_na,g_k,g_l`` checked against the preset's cell (``None``: the preset's)."""
    from bayesneuron.studies.config import check_free

    if args.free is None:
        return None
    names = [k.strip() for k in args.free.split(",")]
    if not all(names):
        raise BayesneuronError(f"--free {args.free!r}: an empty name; write e.g. g_na,g_k,g_l")
    return check_free(names, args.preset, "--free")


def model_sigma(args) -> float | str:
    """The model's noise sd: ``--sigma`` (mV), or ``"infer"`` with ``--infer-sigma``."""
    return "infer" if getattr(args, "infer_sigma", False) else args.sigma


def check_args(args) -> None:
    """The numbers every command shares, checked before any work (one-line errors)."""
    if args.traces < 1:
        raise BayesneuronError(f"--traces {args.traces}: need at least 1 stimulus trace")
    if not (math.isfinite(args.noise) and args.noise >= 0):
        raise BayesneuronError(f"--noise {args.noise}: the recording noise must be ≥ 0 mV")
    if not (math.isfinite(args.sigma) and args.sigma > 0):
        raise BayesneuronError(f"--sigma {args.sigma}: the model's noise sd must be > 0 mV")
    if args.dt is not None and not (math.isfinite(args.dt) and args.dt > 0):
        raise BayesneuronError(f"--dt {args.dt}: the solver step must be > 0 ms (e.g. 0.004)")
    for opt in ("starts", "steps", "particles", "samples", "map_starts", "map_steps", "chains"):
        x = getattr(args, opt, None)
        if x is not None and x < 1:
            raise BayesneuronError(f"--{opt.replace('_', '-')} {x}: must be ≥ 1")
    if getattr(args, "warmup", 0) < 0:
        raise BayesneuronError(f"--warmup {args.warmup}: must be ≥ 0")


def design(label: str, preset: str = "paper_toy"):
    """A design label checked against the preset's cell."""
    from bayesneuron.protocol.design import Design
    from bayesneuron.reference.presets import get_preset

    d = Design.from_label(label)
    morph = get_preset(preset).cell().morphology
    d.stim_index(morph), d.rec_index(morph)
    return d


def split_labels(text: str) -> list[str]:
    """``"all|all,[0,-1]|all"`` → ``["all|all", "[0,-1]|all"]``: commas inside brackets stay;
    an empty label is an error."""
    parts = split_design_labels(text)
    if not all(parts):
        raise BayesneuronError(
            f"--designs {text!r}: an empty label; write e.g. 'all|all,[0,-1]|all' (no spaces "
            "needed), 'paper9' or 'grid25'"
        )
    return parts


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but empty folders (never a file)."""
    if not folder.is_dir() or any(q.is_file() or q.is_symlink() for q in folder.rglob("*")):
        return
    for q in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        q.rmdir()
    folder.rmdir()


@contextmanager
def staged(out: Path):
    """A hidden folder next to ``out`` to write results into; its files move into ``out`` only
    once all are written, so a failure (or an interrupt) leaves no half-written results."""
    new = next((q for q in reversed(out.parents) if not q.exists()), None)  # made here
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    ok = False
    try:
        yield tmp
        out.mkdir(exist_ok=True)
        for q in sorted(tmp.iterdir()):
            dest = out / q.name
            if q.is_dir() and dest.is_dir():
                shutil.rmtree(dest)
            q.replace(dest)
        ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok and new is not None:
            remove_if_empty(new)


def config(args, **extra) -> dict:
    """The resolved arguments for ``config.json``."""
    return {k: v for k, v in vars(args).items() if k != "func"} | extra


def write_provenance(folder: Path, cfg: dict) -> None:
    """``config.json`` and ``environment.json`` (versions, fused kernel build, commit)."""
    write_json(folder / "config.json", cfg)
    write_json(folder / "environment.json", environment())
