"""Finding an NWB file's current-clamp sweeps: response (voltage) and stimulus (current) pairs.

The ``intracellular_recordings`` table pairs them where the file has one; otherwise series in
``/acquisition`` and ``/stimulus`` are paired by ``sweep_number``, else by the number at the end
of their names (``Sweep_10``), else by equal names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesneuron.errors import RecordingError
from bayesneuron.io._units import unit_factor


@dataclass
class Pair:
    """One sweep: the response series, its stimulus series (or ``None``), and the sample
    ranges ``(start, count)`` of each (count −1: to the end)."""

    sweep: int
    response: Any
    stimulus: Any | None
    r_range: tuple[int, int] = (0, -1)
    s_range: tuple[int, int] = (0, -1)

    @property
    def electrode(self) -> str:
        el = getattr(self.response, "electrode", None)
        return el.name if el is not None else ""


def _valid(ref) -> bool:
    """Whether a table cell references data; pynwb reads a missing one as ``(-1, -1)`` or as
    ``None`` fields (where its own ``isvalid()`` raises)."""
    return ref.idx_start is not None and ref.idx_start >= 0 and ref.timeseries is not None


def _from_table(nwb) -> list[Pair] | None:
    table = getattr(nwb, "intracellular_recordings", None)
    if table is None or len(table) == 0:
        return None
    responses = table.category_tables["responses"]["response"]
    stimuli = table.category_tables["stimuli"]["stimulus"]
    pairs = []
    for row in range(len(table)):
        r, s = responses[row], stimuli[row]
        if not _valid(r):  # a stimulus-only row: nothing recorded
            continue
        number = r.timeseries.sweep_number
        number = int(table.id[row]) if number is None else int(number)
        stim = s.timeseries if _valid(s) else None
        s_range = (int(s.idx_start), int(s.count)) if stim is not None else (0, -1)
        pairs.append(Pair(number, r.timeseries, stim, (int(r.idx_start), int(r.count)), s_range))
    return pairs


def _key(series):
    if series.sweep_number is not None:
        return int(series.sweep_number)
    m = re.search(r"(\d+)$", series.name)
    return int(m.group(1)) if m else series.name


def _from_groups(nwb) -> list[Pair]:
    from pynwb.icephys import PatchClampSeries

    def series(group):
        return [s for s in group.values() if isinstance(s, PatchClampSeries)]

    stimuli = {}
    for s in series(nwb.stimulus):
        stimuli.setdefault((getattr(s.electrode, "name", ""), _key(s)), s)
    pairs = []
    for n, r in enumerate(sorted(series(nwb.acquisition), key=lambda s: s.name)):
        key = _key(r)
        stim = stimuli.get((getattr(r.electrode, "name", ""), key))
        pairs.append(Pair(key if isinstance(key, int) else n, r, stim))
    return pairs


def find_pairs(nwb, where: str) -> list[Pair]:
    """Every recorded sweep of the file (current and voltage clamp), table first."""
    pairs = _from_table(nwb)
    if pairs is None:
        pairs = _from_groups(nwb)
    if not pairs:
        raise RecordingError(
            f"{where} holds no intracellular recordings (no PatchClampSeries in its "
            "intracellular_recordings table or /acquisition)"
        )
    return pairs


def check_current_clamp(pair: Pair, where: str) -> None:
    """A :class:`RecordingError` unless the pair is a current-clamp response with a
    current-clamp stimulus (``IZeroClampSeries`` needs none: it injects nothing)."""
    from pynwb.icephys import (
        CurrentClampSeries,
        CurrentClampStimulusSeries,
        IZeroClampSeries,
    )

    r, s = pair.response, pair.stimulus
    kind = type(r).__name__
    if not isinstance(r, CurrentClampSeries):
        raise RecordingError(
            f"{where}: sweep {pair.sweep} ({kind} {r.name!r}) is not current clamp; bayesneuron "
            "reads CurrentClampSeries only (voltage clamp records currents, not voltages)"
        )
    if s is None and not isinstance(r, IZeroClampSeries):
        raise RecordingError(
            f"{where}: current-clamp series {r.name!r} (sweep {pair.sweep}) has no stimulus "
            "series; bayesneuron needs the injected current (a CurrentClampStimulusSeries "
            "paired in intracellular_recordings, or in /stimulus with the same sweep_number)"
        )
    if s is not None and not isinstance(s, CurrentClampStimulusSeries):
        raise RecordingError(
            f"{where}: sweep {pair.sweep}'s stimulus {s.name!r} is a {type(s).__name__}, not a "
            "CurrentClampStimulusSeries"
        )


def series_values(series, rng: tuple[int, int], quantity: str, where: str):
    """``(values [time] in mV or nA, rate in Hz, start in s, unit as stored)`` of a series."""
    data = series.data
    attrs = getattr(data, "attrs", {})
    unit = attrs.get("unit", series.unit)  # the file's own: pynwb replaces a wrong one on reading
    unit = unit.decode() if isinstance(unit, bytes) else str(unit)
    scale = unit_factor(unit, quantity, f"{where}, series {series.name!r}")
    start, count = rng
    stop = None if count < 0 else start + count
    raw = np.asarray(data[start:stop], dtype=np.float64)
    if raw.ndim != 1:
        raise RecordingError(
            f"{where}, series {series.name!r}: data of shape {raw.shape}; expected one "
            "channel [time]"
        )
    conversion = float(series.conversion) * scale
    values = raw * conversion + float(getattr(series, "offset", 0.0) or 0.0) * scale
    if series.rate is not None:
        rate = float(series.rate)
        t_start = float(series.starting_time) + start / rate
    else:
        t = np.asarray(series.timestamps[start:stop], dtype=np.float64)
        steps = np.diff(t)
        if t.size < 2 or not np.allclose(steps, steps.mean(), rtol=1e-6, atol=0):
            raise RecordingError(
                f"{where}, series {series.name!r}: samples are not evenly spaced in time; "
                "bayesneuron needs a constant sampling rate"
            )
        rate, t_start = 1.0 / float(steps.mean()), float(t[0])
    return values, rate, t_start, unit
