"""File checks shared by the readers and writers: existence, format by signature, safe writes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from bayesneuron.errors import RecordingError

_HDF5 = b"\x89HDF\r\n\x1a\n"
_NAMES = {"abf": "ABF (Axon Binary Format)", "nwb": "NWB (HDF5)"}


def file_format(path: Path) -> str | None:
    """``"abf"`` or ``"nwb"`` from the file's signature bytes (not its name), else ``None``."""
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:4] in (b"ABF ", b"ABF2"):
            return "abf"
        # HDF5 puts its signature at 0 or after a user block of 512 · 2^k bytes
        offset = 0
        while head:
            if head == _HDF5:
                return "nwb"
            offset = 512 if offset == 0 else 2 * offset
            f.seek(offset)
            head = f.read(8)
    return None


def check_file(path, expect: str | None = None) -> Path:
    """``path`` as a :class:`Path` to an existing, non-empty file of format ``expect``.

    Raises:
        RecordingError: no such file, a folder, empty, or not of the expected format.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise RecordingError(f"path must be a str or Path, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise RecordingError(f"no such file: {p}")
    if not p.is_file():
        raise RecordingError(f"{p} is not a file (a folder?); give the recording file itself")
    if p.stat().st_size == 0:
        raise RecordingError(f"{p} is empty (0 bytes)")
    found = file_format(p)
    if found is None:
        wanted = _NAMES[expect] if expect else "ABF or NWB"
        raise RecordingError(f"{p} is not an {wanted} file: its first bytes are no such signature")
    if expect is not None and found != expect:
        reader = "read_abf" if found == "abf" else "read_nwb"
        raise RecordingError(
            f"{p} is an {_NAMES[found]} file, not {_NAMES[expect]}; read it with {reader} "
            "(or read_recording, which picks the reader)"
        )
    return p


@contextlib.contextmanager
def written_atomically(path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    A failure leaves no half-written file and never touches an existing ``path``.

    Raises:
        RecordingError: ``path`` exists and ``overwrite`` is false, or its folder does not.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise RecordingError(f"path must be a str or Path, got {type(path).__name__}")
    p = Path(path)
    if p.exists() and not overwrite:
        raise RecordingError(f"{p} exists; pass overwrite=True to replace it")
    if not p.parent.is_dir():
        raise RecordingError(f"folder {p.parent} does not exist; create it first")
    tmp = p.with_name(f".{p.stem}.{os.getpid()}.tmp{p.suffix}")  # keep the suffix readers expect
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
