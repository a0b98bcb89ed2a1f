"""Axon Binary Format (ABF 1 and 2) current-clamp recordings, read with ``pyabf``."""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from pathlib import Path

import numpy as np

from bayesneuron.errors import RecordingError
from bayesneuron.io._files import check_file
from bayesneuron.io._select import select_sweeps
from bayesneuron.io._units import unit_factor
from bayesneuron.io.recording import Recording

__all__ = ["example_abf_path", "read_abf"]

EXAMPLE_ABF = "17o05028_ic_steps.abf"


def example_abf_path() -> Path:
    """Path of the bundled example: a real whole-cell current-clamp recording (16 sweeps of
    3 s at 20 kHz, steps of −50 + 10·i pA; see ``bayesneuron/data/README.md``).

    Example:
        >>> read_abf(example_abf_path()).n_sweeps
        16
    """
    return Path(str(resources.files("bayesneuron").joinpath("data", EXAMPLE_ABF)))


def _open(path: Path):
    """The file as a ``pyabf.ABF`` with its data loaded, after checking it is complete."""
    import pyabf  # imported here: reading ABF is optional work, `import bayesneuron` stays light

    try:
        head = pyabf.ABF(str(path), loadData=False)
        need = head.dataByteStart + head.dataPointCount * head.dataPointByteSize
    except Exception as e:  # pyabf raises many kinds on a damaged header
        raise RecordingError(
            f"{path} is not a readable ABF file: it is truncated or its header is damaged "
            f"({type(e).__name__}: {e})"
        ) from e
    size = path.stat().st_size
    if size < need:
        raise RecordingError(
            f"{path} is truncated: its header promises {need} bytes of header and data, the "
            f"file has {size}; copy it again from the acquisition computer"
        )
    try:
        return pyabf.ABF(str(path))
    except Exception as e:
        raise RecordingError(f"cannot read the data of {path} ({type(e).__name__}: {e})") from e


def read_abf(
    path, sweeps=None, *, channel: int = 0, site: str = "soma", offset_mv: float = 0.0
) -> Recording:
    """Read current-clamp sweeps from an ABF file: the recorded voltage and its command.

    The command current is the waveform ``pyabf`` builds from the protocol's epochs (relative
    to any holding current). Voltages in mV or V, currents in pA, nA or A are converted to mV
    and nA.

    Args:
        path: the ``.abf`` file (the format is checked from its bytes).
        sweeps: sweep numbers to read (``0 … n−1``); default all.
        channel: the input channel holding the voltage (its command is the same-numbered
            output).
        site: where the electrode was (ABF does not record it), e.g. ``"soma"``.
        offset_mv: subtracted from every voltage (e.g. the liquid-junction potential), mV.

    Returns:
        A :class:`Recording`, times from each sweep's start.

    Raises:
        RecordingError: missing, not ABF, truncated or unreadable file; a channel, sweep or
            unit that does not fit (a voltage-clamp recording); no command waveform.

    Example:
        >>> rec = read_abf(example_abf_path(), sweeps=[0, 15], offset_mv=10.0)
        >>> rec.voltage.shape
        (2, 60000)
    """
    path = check_file(path, "abf")
    abf = _open(path)
    if not isinstance(channel, (int, np.integer)) or not 0 <= channel < abf.channelCount:
        raise RecordingError(
            f"channel {channel!r} does not exist: {path.name} has {abf.channelCount} input "
            f"channel(s) (0–{abf.channelCount - 1}: {abf.adcNames})"
        )
    v_unit, i_unit = abf.adcUnits[channel], abf.dacUnits[channel]
    where = f"{path.name}, channel {channel}"
    v_scale = unit_factor(v_unit, "voltage", f"{where} (input {abf.adcNames[channel]!r})")
    if not str(i_unit).strip("\x00 "):
        raise RecordingError(
            f"{where} has no command waveform (its output channel has no unit); bayesneuron "
            "needs the injected current"
        )
    i_scale = unit_factor(i_unit, "current", f"{where}'s command")
    chosen = select_sweeps(range(abf.sweepCount), sweeps, path.name)
    v = np.empty((len(chosen), abf.sweepPointCount))
    i = np.empty_like(v)
    for row, s in enumerate(chosen):
        abf.setSweep(int(s), channel=int(channel))
        v[row] = abf.sweepY.astype(np.float64) * v_scale
        i[row] = abf.sweepC.astype(np.float64) * i_scale
        if not np.all(np.isfinite(i[row])):
            raise RecordingError(
                f"{where}: sweep {s} has no command waveform (the protocol defines none); "
                "bayesneuron needs the injected current"
            )
    start = getattr(abf, "abfDateTime", None)
    rec = Recording(
        v,
        i,
        1000.0 / float(abf.dataRate),
        sweeps=tuple(chosen),
        site=str(site),
        start_times=tuple(float(abf.sweepTimesSec[s]) for s in chosen),
        protocol=str(abf.protocol or ""),
        source=str(path),
        file_units=(str(v_unit).strip("\x00 "), str(i_unit).strip("\x00 ")),
        session_start=start if isinstance(start, datetime) else None,
    )
    return rec.corrected(offset_mv)
