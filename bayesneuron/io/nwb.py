"""Neurodata Without Borders (NWB 2) intracellular current clamp, read and written with ``pynwb``.

A sweep is a ``CurrentClampSeries`` (voltage) with its ``CurrentClampStimulusSeries``
(injected current), paired in the file's ``intracellular_recordings`` table (or, in files
without one, by sweep number or name). Files written here store voltages in mV
(``conversion=1e-3`` to volts) and currents in nA (``conversion=1e-9`` to amperes), so reading
them back gives the same numbers. A designed stimulus alone (no recording) is written by
:func:`write_stimulus_nwb` and read by :func:`read_stimulus_nwb`.
"""

from __future__ import annotations

import math
import re
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from bayesneuron.errors import RecordingError
from bayesneuron.io._files import check_file, written_atomically
from bayesneuron.io._nwb_sweeps import Pair, check_current_clamp, find_pairs, series_values
from bayesneuron.io._select import select_sweeps
from bayesneuron.io.recording import Recording
from bayesneuron.protocol.stimulus import Stimulus

__all__ = ["read_nwb", "read_stimulus_nwb", "write_nwb", "write_stimulus_nwb"]

# pynwb resets a CurrentClampSeries' unit to volts on reading, with this warning; the reader
# checks the unit stored in the file itself instead
_UNIT_RESET = r"Unit '.*' for \w+ '.*' is ignored and will be set to"


def read_nwb(
    path, sweeps=None, *, electrode: str | None = None, offset_mv: float = 0.0
) -> Recording:
    """Read current-clamp sweeps from an NWB file: recorded voltage and injected current.

    Args:
        path: the ``.nwb`` file (HDF5; the format is checked from its bytes).
        sweeps: sweep numbers to read (the series' ``sweep_number``); default every
            current-clamp sweep.
        electrode: name of the electrode whose sweeps to read; needed when there are several.
        offset_mv: subtracted from every voltage (e.g. the liquid-junction potential), mV.

    Returns:
        A :class:`Recording`; ``site`` is the electrode's location (else its name).

    Raises:
        RecordingError: missing, not HDF5, truncated or not NWB; voltage-clamp sweeps; a sweep
            without a stimulus; units other than mV/V and pA/nA/A; sweeps of different
            lengths or rates; a voltage and stimulus of different lengths; NaN data.

    Example:
        >>> rec = read_nwb("cell.nwb", sweeps=[3, 4])
        >>> rec.stimulus(site=0, n_comp=1).values.shape   # [sweep, site, time], sparse
    """
    path = check_file(path, "nwb")
    from pynwb import NWBHDF5IO  # imported here: `import bayesneuron` stays light

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_UNIT_RESET, category=UserWarning)
        try:
            io = NWBHDF5IO(str(path), "r")
        except Exception as e:  # h5py/hdmf raise OSError, KeyError, ValueError… on bad files
            raise RecordingError(
                f"{path} cannot be opened as NWB ({type(e).__name__}: {e}); is it truncated?"
            ) from e
        try:
            nwb = io.read()
            return _recording(nwb, path, sweeps, electrode).corrected(offset_mv)
        except RecordingError:
            raise
        except Exception as e:
            raise RecordingError(
                f"{path} is not a readable NWB file ({type(e).__name__}: {e})"
            ) from e
        finally:
            io.close()


def _on_electrode(pairs: list[Pair], electrode, where: str) -> list[Pair]:
    names = sorted({p.electrode for p in pairs})
    if electrode is None:
        if len(names) > 1:
            raise RecordingError(
                f"{where} has sweeps from electrodes {names}; choose one with electrode=…"
            )
        return pairs
    chosen = [p for p in pairs if p.electrode == electrode]
    if not chosen:
        raise RecordingError(f"{where} has no electrode {electrode!r}; it has {names}")
    return chosen


def _load(pair: Pair, where: str) -> dict:
    """One sweep's voltage and current, with their rates, start times and units."""
    v, rate, t_v, v_unit = series_values(pair.response, pair.r_range, "voltage", where)
    if pair.stimulus is None:  # IZeroClampSeries: nothing injected
        i, rate_i, t_i, i_unit = np.zeros_like(v), rate, t_v, "amperes"
    else:
        i, rate_i, t_i, i_unit = series_values(pair.stimulus, pair.s_range, "current", where)
    if i.size != v.size:
        raise RecordingError(
            f"{where}: sweep {pair.sweep}'s voltage has {v.size} samples but its stimulus "
            f"{i.size}; bayesneuron needs one current sample per voltage sample"
        )
    if not math.isclose(rate, rate_i, rel_tol=1e-9):
        raise RecordingError(
            f"{where}: sweep {pair.sweep} samples voltage at {rate:g} Hz but current at "
            f"{rate_i:g} Hz; they must share one rate"
        )
    desc = getattr(pair.stimulus or pair.response, "stimulus_description", None)
    return dict(
        v=v,
        i=i,
        rate=rate,
        t_v=t_v,
        t_i=t_i,
        units=(v_unit, i_unit),
        protocol="" if desc in (None, "N/A") else str(desc),
    )


def _recording(nwb, path: Path, sweeps, electrode) -> Recording:
    from pynwb.icephys import CurrentClampSeries

    where = path.name
    pairs = _on_electrode(find_pairs(nwb, where), electrode, where)
    by_number: dict[int, Pair] = {}
    for p in pairs:
        if p.sweep in by_number:
            raise RecordingError(f"{where}: sweep number {p.sweep} is used twice")
        by_number[p.sweep] = p
    cc = sorted(n for n, p in by_number.items() if isinstance(p.response, CurrentClampSeries))
    if sweeps is None and not cc:
        check_current_clamp(pairs[0], where)  # says what the file holds instead
    chosen = cc if sweeps is None else select_sweeps(list(by_number), sweeps, where)
    for n in chosen:
        check_current_clamp(by_number[n], where)
    rows = [_load(by_number[n], where) for n in chosen]
    first = rows[0]
    for n, r in zip(chosen, rows):
        if r["v"].size != first["v"].size or not math.isclose(r["rate"], first["rate"]):
            raise RecordingError(
                f"{where}: sweep {n} has {r['v'].size} samples at {r['rate']:g} Hz, sweep "
                f"{chosen[0]} {first['v'].size} at {first['rate']:g} Hz; select sweeps of one "
                "length and rate"
            )
    starts = [min(r["t_v"], r["t_i"]) for r in rows]
    el = by_number[chosen[0]].response.electrode
    protocols = list(dict.fromkeys(r["protocol"] for r in rows if r["protocol"]))
    return Recording(
        np.stack([r["v"] for r in rows]),
        np.stack([r["i"] for r in rows]),
        1000.0 / first["rate"],
        sweeps=tuple(chosen),
        site=str(getattr(el, "location", None) or getattr(el, "name", "") or "unknown"),
        t0=round((first["t_v"] - starts[0]) * 1000.0, 9),
        current_t0=round((first["t_i"] - starts[0]) * 1000.0, 9),
        start_times=tuple(starts),
        protocol=", ".join(protocols),
        source=str(path),
        file_units=first["units"],
        session_start=nwb.session_start_time,
    )


def _notes(rec: Recording) -> str:
    lines = [
        f"Written by bayesneuron.io.write_nwb from {rec.source or 'an unnamed source'}.",
        f"Units in the source: voltage {rec.file_units[0]}, current {rec.file_units[1]}.",
        f"Offset subtracted from the voltages: {rec.offset_mv:g} mV.",
    ]
    return "\n".join(lines + [f"Processing: {h}" for h in rec.history])


def write_nwb(
    recording: Recording,
    path,
    *,
    overwrite: bool = False,
    session_description: str | None = None,
    identifier: str | None = None,
) -> Path:
    """Write a recording as NWB: one ``CurrentClampSeries`` + ``CurrentClampStimulusSeries``
    pair per sweep, in the ``intracellular_recordings`` table.

    Args:
        recording: what to write (e.g. from :func:`read_abf` or
            :meth:`Recording.from_simulation`).
        path: the file to create; written to a temporary file first, so a failure leaves
            nothing behind.
        overwrite: replace an existing file.
        session_description, identifier: NWB metadata; defaults name the source and a UUID.

    Returns:
        The path written.

    Raises:
        RecordingError: not a :class:`Recording`, or ``path`` exists (without ``overwrite``).

    Example:
        >>> write_nwb(read_abf(example_abf_path()), "cell.nwb")
    """
    if not isinstance(recording, Recording):
        raise RecordingError(f"expected a Recording, got {type(recording).__name__}")
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.icephys import CurrentClampSeries, CurrentClampStimulusSeries

    rec = recording
    start, notes = rec.session_start or datetime.now(timezone.utc), _notes(rec)
    if start.tzinfo is None:  # ABF stores the rig's clock time without a zone
        start = start.replace(tzinfo=timezone.utc)
        notes += "\nsession_start_time is the source's clock time; its time zone is unknown."
    nwb = NWBFile(
        session_description=session_description or f"current clamp: {rec.protocol or rec.source}",
        identifier=identifier or str(uuid.uuid4()),
        session_start_time=start,
        notes=notes,
    )
    device = nwb.create_device(name="amplifier")
    el = nwb.create_icephys_electrode(
        name="electrode", description=f"site: {rec.site}", device=device, location=rec.site
    )
    for row, n in enumerate(rec.sweeps):
        common = dict(
            electrode=el,
            gain=1.0,
            rate=rec.rate_hz,
            sweep_number=np.uint32(n),
            stimulus_description=rec.protocol or "N/A",
        )
        t = rec.start_times[row]
        stim = CurrentClampStimulusSeries(
            name=f"stimulus_{n:04d}",
            data=rec.current[row],
            conversion=1e-9,
            starting_time=t + rec.current_t0 / 1000.0,
            **common,
        )
        resp = CurrentClampSeries(
            name=f"response_{n:04d}",
            data=rec.voltage[row],
            conversion=1e-3,
            starting_time=t + rec.t0 / 1000.0,
            **common,
        )
        nwb.add_intracellular_recording(electrode=el, stimulus=stim, response=resp)
    with written_atomically(path, overwrite) as tmp:
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
    return Path(path)


_STIM_NAME = re.compile(r"^stimulus_(\d+)_site_(\d+)$")


def write_stimulus_nwb(
    stimulus: Stimulus, path, *, overwrite: bool = False, description: str | None = None
) -> Path:
    """Write a designed stimulus as NWB: one series per sweep × electrode site, named
    ``stimulus_<sweep>_site_<compartment>``, in the file's ``stimulus`` group.

    Currents in nA become ``CurrentClampStimulusSeries`` (amperes, ``conversion=1e-9``) on one
    electrode per site (its ``location``: ``"compartment <k>"``). A current *density* in µA/cm²
    (the paper's abstract cell, which has no membrane areas) is not a current: it is written as
    a plain ``TimeSeries`` with unit ``"uA/cm2"`` whose description says so.

    Args:
        stimulus: a :class:`~bayesneuron.protocol.stimulus.Stimulus` ``[trace, site, bins]``
            (sparse) or ``[trace, comp, bins]`` (dense: every compartment is a site).
        path: the file to create (written to a temporary file first).
        overwrite: replace an existing file.
        description: the session description (default names the sweeps and sites).

    Returns:
        The path written.

    Raises:
        RecordingError: not a single-batch ``Stimulus``, or ``path`` exists (without
            ``overwrite``); nothing is written then.

    Example:
        >>> write_stimulus_nwb(result.stimulus, "stimulus_all_all.nwb")
    """
    if not isinstance(stimulus, Stimulus):
        raise RecordingError(f"expected a Stimulus, got {type(stimulus).__name__}")
    if stimulus.values.ndim != 3:
        raise RecordingError(
            f"stimulus values have shape {tuple(stimulus.values.shape)}; write one "
            "[trace, site, bins] stimulus per file"
        )
    from pynwb import NWBHDF5IO, NWBFile

    values = stimulus.values.detach().cpu().numpy().astype(np.float64)
    sites = tuple(range(stimulus.n_sites)) if stimulus.sites is None else stimulus.sites
    n_tr = values.shape[0]
    nwb = NWBFile(
        session_description=description
        or f"designed stimulus: {n_tr} sweeps at compartments {list(sites)} ({stimulus.unit})",
        identifier=str(uuid.uuid4()),
        session_start_time=datetime.now(timezone.utc),
        notes="Written by bayesneuron.io.write_stimulus_nwb: piecewise-constant currents, "
        f"bins of {stimulus.dt!r} ms from t0 = {stimulus.t0!r} ms, unit {stimulus.unit}; "
        "read back with bayesneuron.io.read_stimulus_nwb.",
    )
    for row, site in enumerate(sites):
        make = _series_factory(nwb, stimulus, site)
        for n in range(n_tr):
            nwb.add_stimulus(make(f"stimulus_{n:04d}_site_{site}", values[n, row], n))
    with written_atomically(path, overwrite) as tmp:
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
    return Path(path)


def _series_factory(nwb, stimulus: Stimulus, site: int):
    """``(name, data, sweep) → series`` for one site: amperes for nA, else a density."""
    from pynwb import TimeSeries
    from pynwb.icephys import CurrentClampStimulusSeries

    timing = dict(rate=1000.0 / stimulus.dt, starting_time=stimulus.t0 / 1000.0)
    if stimulus.unit == "nA":
        device = nwb.devices.get("electrodes") or nwb.create_device(name="electrodes")
        el = nwb.create_icephys_electrode(
            name=f"electrode_site_{site}",
            description=f"site: compartment {site} of the model cell",
            device=device,
            location=f"compartment {site}",
        )

        def make(name, data, n):
            return CurrentClampStimulusSeries(
                name=name, data=data, conversion=1e-9, electrode=el, gain=1.0,
                sweep_number=np.uint32(n), **timing,
            )  # fmt: skip

        return make

    def make(name, data, n):
        return TimeSeries(
            name=name,
            data=data,
            unit="uA/cm2",
            description=f"sweep {n}, site: compartment {site}; a current density in µA/cm² "
            "(an abstract cell without membrane areas), not a current in amperes",
            **timing,
        )

    return make


def read_stimulus_nwb(path) -> Stimulus:
    """Read a stimulus written by :func:`write_stimulus_nwb`.

    Returns:
        A sparse :class:`~bayesneuron.protocol.stimulus.Stimulus` ``[trace, site, bins]``,
        sites in ascending order, values in nA or µA/cm² as written.

    Raises:
        RecordingError: missing or not NWB; no such series; sweeps or sites missing, of
            different lengths, rates or units.
    """
    path = check_file(path, "nwb")
    from pynwb import NWBHDF5IO

    try:
        io = NWBHDF5IO(str(path), "r")
    except Exception as e:
        raise RecordingError(f"{path} cannot be opened as NWB ({type(e).__name__}: {e})") from e
    try:
        found = {}
        for name, series in io.read().stimulus.items():
            m = _STIM_NAME.match(name)
            if m:
                found[int(m[1]), int(m[2])] = _stimulus_series(series, path)
    finally:
        io.close()
    return _assemble(found, path)


def _stimulus_series(series, path: Path) -> tuple[np.ndarray, str, float, float]:
    """``(values, unit, dt ms, t0 ms)`` of one series (nA for amperes)."""
    data = np.asarray(series.data[:], dtype=np.float64)
    if series.unit == "amperes":
        data, unit = data * (series.conversion / 1e-9), "nA"
    elif series.unit == "uA/cm2":
        data, unit = data * series.conversion, "uA/cm2"
    else:
        raise RecordingError(f"{path}: series {series.name} has unit {series.unit!r}")
    # 12 significant digits undo the ms → Hz → ms rounding (0.004 ms ↔ 250 kHz)
    dt = float(f"{1000.0 / series.rate:.12g}")
    t0 = float(f"{1000.0 * (series.starting_time or 0.0):.12g}")
    return data, unit, dt, t0


def _assemble(found: dict, path: Path) -> Stimulus:
    if not found:
        raise RecordingError(
            f"{path} holds no stimulus series named stimulus_<sweep>_site_<k>; was it written "
            "by write_stimulus_nwb?"
        )
    sweeps = sorted({n for n, _ in found})
    sites = sorted({s for _, s in found})
    if set(found) != {(n, s) for n in sweeps for s in sites} or sweeps != list(range(len(sweeps))):
        raise RecordingError(f"{path}: some sweep × site series are missing")
    meta = {(len(v), u, dt, t0) for v, u, dt, t0 in found.values()}
    if len(meta) != 1:
        raise RecordingError(f"{path}: the series differ in length, unit, rate or start")
    _, unit, dt, t0 = meta.pop()
    values = np.stack([np.stack([found[n, s][0] for s in sites]) for n in sweeps])
    return Stimulus(torch.from_numpy(values), dt=dt, t0=t0, unit=unit, sites=tuple(sites))
