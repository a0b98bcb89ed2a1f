"""Format-independent entry points: read any supported file, convert ABF to NWB."""

from __future__ import annotations

from pathlib import Path

from bayesneuron.io._files import check_file, file_format
from bayesneuron.io.abf import read_abf
from bayesneuron.io.nwb import read_nwb, write_nwb
from bayesneuron.io.recording import Recording

__all__ = ["abf_to_nwb", "read_recording"]


def read_recording(path, sweeps=None, *, offset_mv: float = 0.0, **options) -> Recording:
    """Read an ABF or NWB current-clamp file, the reader chosen from the file's bytes.

    Args:
        path: the file.
        sweeps: sweep numbers to read; default all.
        offset_mv: subtracted from every voltage (e.g. the liquid-junction potential), mV.
        **options: passed to :func:`read_abf` (``channel``, ``site``) or :func:`read_nwb`
            (``electrode``).

    Raises:
        RecordingError: as the reader does; a file that is neither format.

    Example:
        >>> read_recording(example_abf_path(), sweeps=[0]).n_samples
        60000
    """
    p = check_file(path)
    reader = read_abf if file_format(p) == "abf" else read_nwb
    return reader(p, sweeps, offset_mv=offset_mv, **options)


def abf_to_nwb(
    abf_path, nwb_path, sweeps=None, *, channel: int = 0, site: str = "soma", overwrite=False
) -> Path:
    """Convert an ABF current-clamp file to NWB (voltages in mV, currents in nA, as read).

    Args:
        abf_path, nwb_path: the file to read and the file to write.
        sweeps, channel, site: as for :func:`read_abf`.
        overwrite: replace an existing ``nwb_path``.

    Returns:
        The NWB path written.

    Raises:
        RecordingError: the ABF file cannot be read (see :func:`read_abf`), or ``nwb_path``
            exists.

    Example:
        >>> abf_to_nwb(example_abf_path(), "17o05028.nwb")
    """
    rec = read_abf(abf_path, sweeps, channel=channel, site=site)
    return write_nwb(rec, nwb_path, overwrite=overwrite, identifier=Path(abf_path).stem)
