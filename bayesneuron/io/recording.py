"""A current-clamp recording: sweeps of measured voltage (mV) and command current (nA).

Readers (:func:`~bayesneuron.io.read_abf`, :func:`~bayesneuron.io.read_nwb`) return a
:class:`Recording`; it converts to the model's inputs: the stimulus (an
:class:`~bayesneuron.protocol.ElectrodeStimulus`, or the sparse
:class:`~bayesneuron.protocol.Stimulus` at the electrode's site: both stay sparse in the
simulator), the output times and the observed voltages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch
from torch import Tensor

from bayesneuron.errors import RecordingError, StimulusError
from bayesneuron.io._select import select_sweeps
from bayesneuron.protocol import ElectrodeStimulus, Stimulus

__all__ = ["Recording"]


def _array(x, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    try:
        a = np.array(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise RecordingError(f"{name} must be a numeric array [sweep, time]") from None
    if a.ndim != 2 or 0 in a.shape:
        raise RecordingError(
            f"{name} has shape {a.shape}; expected [sweep, time] with both ≥ 1 "
            "(use x[None] for a single sweep)"
        )
    a.flags.writeable = False
    return a


def _finite(x, name: str) -> float:
    if not (isinstance(x, (int, float, np.integer, np.floating)) and np.isfinite(x)):
        raise RecordingError(f"{name} = {x!r} must be a finite number")
    return float(x)


@dataclass(frozen=True, eq=False, repr=False)
class Recording:
    """Current-clamp sweeps of one length from one electrode, in mV, nA and ms.

    Voltage sample ``j`` of each sweep is at ``t0 + j·dt``; current sample ``j`` holds over
    ``[current_t0 + j·dt, current_t0 + (j+1)·dt)`` (a command is piecewise constant). Times
    are in ms from each sweep's start.

    Args:
        voltage: measured membrane voltage ``[sweep, time]`` in mV.
        current: command current ``[sweep, time]`` in nA.
        dt: sampling interval in ms.
        sweeps: the file's number of each sweep ``[sweep]``; default ``0, 1, …``.
        site: where the electrode is (a label such as ``"soma"``).
        t0: time of voltage sample 0 in ms.
        current_t0: start of current sample 0 in ms.
        start_times: start of each sweep in s from the session start ``[sweep]``; default 0.
        protocol: the stimulus protocol's name.
        source: the file read, or what made the recording.
        file_units: the units the source stored ``(voltage, current)`` in.
        offset_mv: offset already subtracted from ``voltage`` (e.g. the liquid-junction
            potential), mV.
        history: processing done since reading, in order.
        session_start: when the recording session started, if known.

    Raises:
        RecordingError: shapes differ, a value is NaN/inf, or ``dt`` is not > 0.
    """

    voltage: np.ndarray
    current: np.ndarray
    dt: float
    sweeps: tuple[int, ...] | None = None
    site: str = "soma"
    t0: float = 0.0
    current_t0: float = 0.0
    start_times: tuple[float, ...] | None = None
    protocol: str = ""
    source: str = ""
    file_units: tuple[str, str] = ("mV", "nA")
    offset_mv: float = 0.0
    history: tuple[str, ...] = ()
    session_start: datetime | None = None

    def __post_init__(self):
        v, i = _array(self.voltage, "voltage"), _array(self.current, "current")
        if v.shape != i.shape:
            raise RecordingError(
                f"voltage {v.shape} and current {i.shape} differ in shape; each sweep needs one "
                "current sample per voltage sample [sweep, time]"
            )
        sweeps = tuple(range(v.shape[0])) if self.sweeps is None else tuple(self.sweeps)
        if len(sweeps) != v.shape[0] or len(set(sweeps)) != len(sweeps):
            raise RecordingError(f"sweeps {sweeps} must name each of the {v.shape[0]} sweeps once")
        set_ = object.__setattr__
        set_(self, "voltage", v)
        set_(self, "current", i)
        set_(self, "sweeps", tuple(int(s) for s in sweeps))
        if _finite(self.dt, "dt") <= 0:
            raise RecordingError(f"dt = {self.dt} ms must be > 0 (the sampling interval)")
        for k in ("dt", "t0", "current_t0", "offset_mv"):
            set_(self, k, _finite(getattr(self, k), k))
        starts = (0.0,) * v.shape[0] if self.start_times is None else tuple(self.start_times)
        if len(starts) != v.shape[0]:
            raise RecordingError(f"start_times has {len(starts)} entries for {v.shape[0]} sweeps")
        set_(self, "start_times", tuple(_finite(s, "start time") for s in starts))
        for name, a in (("voltage", v), ("current", i)):
            bad = np.argwhere(~np.isfinite(a))
            if bad.size:
                s, j = bad[0]
                raise RecordingError(
                    f"{name} of sweep {self.sweeps[s]} contains NaN or inf (first at sample {j}, "
                    f"{self.t0 + j * self.dt:.6g} ms); {int(len(bad))} bad samples in all — "
                    "drop the sweep (sweeps=…) or repair the file"
                )

    # ------------------------------------------------------------------ shape and time
    @property
    def n_sweeps(self) -> int:
        """Number of sweeps."""
        return self.voltage.shape[0]

    @property
    def n_samples(self) -> int:
        """Samples per sweep."""
        return self.voltage.shape[1]

    @property
    def rate_hz(self) -> float:
        """Sampling rate in Hz."""
        return 1000.0 / self.dt

    @property
    def time(self) -> np.ndarray:
        """Times of the voltage samples ``[time]`` in ms (the model's output times)."""
        return self.t0 + self.dt * np.arange(self.n_samples)

    def __repr__(self) -> str:
        return (
            f"Recording({self.n_sweeps} sweeps × {self.n_samples} samples, dt = {self.dt:g} ms "
            f"({self.rate_hz / 1000:g} kHz), site {self.site!r}, protocol {self.protocol!r}, "
            f"source {self.source!r})"
        )

    def _with(self, note: str, **changes) -> Recording:
        return dataclasses.replace(self, history=self.history + (note,), **changes)

    # ------------------------------------------------------------------ processing
    def select(self, sweeps) -> Recording:
        """The sweeps with these numbers (from :attr:`sweeps`), in the order given.

        Raises:
            RecordingError: an empty selection or a sweep this recording does not have.
        """
        chosen = select_sweeps(self.sweeps, sweeps, "the recording")
        rows = [self.sweeps.index(s) for s in chosen]
        return self._with(
            f"selected sweeps {chosen}",
            voltage=self.voltage[rows],
            current=self.current[rows],
            sweeps=tuple(chosen),
            start_times=tuple(self.start_times[r] for r in rows),
        )

    def corrected(self, offset_mv: float) -> Recording:
        """Voltages minus ``offset_mv`` (e.g. a liquid-junction potential of +10 mV → −10 mV).

        Raises:
            RecordingError: the offset is not a finite number.
        """
        off = _finite(offset_mv, "offset_mv")
        if off == 0:
            return self
        return self._with(
            f"subtracted {off:g} mV from the voltages",
            voltage=self.voltage - off,
            offset_mv=self.offset_mv + off,
        )

    def window(self, t_start: float, t_stop: float) -> Recording:
        """The samples with ``t_start ≤ time < t_stop`` (ms): voltages and their currents,
        times still from each sweep's start.

        Raises:
            RecordingError: the window is empty, reversed or outside the sweeps.

        Example:
            >>> rec.window(100.0, 700.0).time[0]   # doctest: +SKIP
        """
        a, b = _finite(t_start, "t_start"), _finite(t_stop, "t_stop")
        keep = np.flatnonzero((self.time >= a) & (self.time < b))
        if b <= a or keep.size < 2:
            end = self.t0 + self.n_samples * self.dt
            raise RecordingError(
                f"time window [{a:g}, {b:g}) ms holds fewer than 2 samples; the sweeps run from "
                f"{self.t0:g} to {end:g} ms: give t_start < t_stop inside that range"
            )
        i, j = int(keep[0]), int(keep[-1]) + 1
        return self._with(
            f"kept {a:g} ≤ t < {b:g} ms",
            voltage=self.voltage[:, i:j],
            current=self.current[:, i:j],
            t0=self.t0 + i * self.dt,
            current_t0=self.current_t0 + i * self.dt,
        )

    def to_grid(self, dt: float) -> Recording:
        """Decimate to sampling interval ``dt`` (ms) by averaging blocks of ``dt / self.dt``
        samples.

        The block mean is the boxcar anti-aliasing filter: the current's mean keeps the injected
        charge exactly; the voltage's mean is placed at the block's centre (``t0`` moves by
        ``(k − 1)/2`` old samples). Samples after the last whole block are dropped.

        Raises:
            RecordingError: ``dt`` is finer than the sampling interval, or not a whole multiple
                of it.

        Example:
            >>> rec.to_grid(0.1).dt   # a 20 kHz recording → 10 kHz
            0.1
        """
        new = _finite(dt, "dt")
        k = int(round(new / self.dt)) if new > 0 else 0
        if new < self.dt * (1 - 1e-9):
            raise RecordingError(
                f"dt = {new:g} ms is finer than the sampling interval {self.dt:g} ms: a recording "
                f"cannot be upsampled honestly; use {self.dt:g} ms or a multiple of it"
            )
        if abs(k * self.dt - new) > 1e-9 * new:
            raise RecordingError(
                f"dt = {new:g} ms is not a whole multiple of the sampling interval {self.dt:g} ms;"
                f" use e.g. {k * self.dt:g} or {(k + 1) * self.dt:g} ms"
            )
        if k == 1:
            return self
        n = self.n_samples // k
        if n < 1:
            raise RecordingError(
                f"dt = {new:g} ms is longer than the sweeps ({self.n_samples * self.dt:g} ms)"
            )
        shape = (self.n_sweeps, n, k)
        return self._with(
            f"block-averaged {k} samples to dt = {k * self.dt:g} ms"
            + (f" (dropped the last {self.n_samples - n * k})" if self.n_samples > n * k else ""),
            voltage=self.voltage[:, : n * k].reshape(shape).mean(-1),
            current=self.current[:, : n * k].reshape(shape).mean(-1),
            dt=k * self.dt,
            t0=self.t0 + 0.5 * (k - 1) * self.dt,
        )

    # ------------------------------------------------------------------ the model's inputs
    def electrode_stimulus(self, site: int) -> ElectrodeStimulus:
        """The command current as a sparse stimulus at compartment ``site``: waveform
        ``[sweep, time]`` in nA, one bin per sample."""
        try:
            return ElectrodeStimulus(
                site, torch.as_tensor(self.current.copy()), self.dt, self.current_t0, "nA"
            )
        except StimulusError as e:
            raise RecordingError(f"cannot stimulate compartment {site!r}: {e}") from None

    def stimulus(self, site: int, n_comp: int | None = None) -> Stimulus:
        """The command current as a sparse :class:`Stimulus` ``[sweep, 1, time]`` in nA with
        ``sites=(site,)`` (what :func:`~bayesneuron.simulate` and the models take; memory does
        not grow with the cell). ``n_comp``: the cell's compartments, to check ``site``
        against; ``.dense(n_comp)`` gives the dense form."""
        try:
            stim = self.electrode_stimulus(site).as_stimulus()
            if n_comp is not None:
                stim.site_index(n_comp)
            return stim
        except StimulusError as e:
            raise RecordingError(f"cannot stimulate compartment {site!r}: {e}") from None

    def observed(self) -> Tensor:
        """The voltages as observed data ``[sweep, 1, time]`` (mV, float64) for one recorded
        compartment, at :attr:`time`."""
        return torch.as_tensor(self.voltage.copy())[:, None, :]

    @classmethod
    def from_simulation(
        cls,
        voltage,
        stimulus: ElectrodeStimulus | Stimulus,
        *,
        t0: float | None = None,
        site: str | None = None,
        protocol: str = "simulation",
    ) -> Recording:
        """A recording of simulated voltages at the stimulating electrode.

        Args:
            voltage: voltages ``[trace, time]`` in mV, sample ``j`` at ``t0 + j·stimulus.dt``,
                one per stimulus bin (e.g. ``trace.v[:, site, :-1]`` of :func:`simulate` with
                the default output times).
            stimulus: the injected current, in nA at one compartment.
            t0: time of voltage sample 0 in ms; default ``stimulus.t0``.
            site: the site's label; default ``"compartment <site>"``.
            protocol: a name for the protocol.

        Raises:
            RecordingError: the stimulus is not one electrode's current in nA, or its traces
                and bins do not match the voltages'.
        """
        try:
            if isinstance(stimulus, Stimulus):
                stimulus = ElectrodeStimulus.from_stimulus(stimulus)
        except StimulusError as e:
            raise RecordingError(f"cannot record this stimulus with one electrode: {e}") from None
        if not isinstance(stimulus, ElectrodeStimulus):
            raise RecordingError(
                f"stimulus must be an ElectrodeStimulus or Stimulus, got {type(stimulus).__name__}"
            )
        if stimulus.unit != "nA" or stimulus.waveform.ndim != 2:
            raise RecordingError(
                f"a recording needs a current in nA [trace, bins]; this stimulus is in "
                f"{stimulus.unit} with shape {tuple(stimulus.waveform.shape)}"
            )
        v = _array(voltage, "voltage")
        if v.shape != tuple(stimulus.waveform.shape):
            raise RecordingError(
                f"voltage has shape {v.shape} but the stimulus {tuple(stimulus.waveform.shape)}"
                " [trace, bins]: give one voltage sample per stimulus bin (simulate's default "
                "output times include the end of the last bin: drop it with v[..., :-1])"
            )
        return cls(
            v,
            stimulus.waveform.detach().cpu().numpy(),
            stimulus.dt,
            site=f"compartment {stimulus.site}" if site is None else str(site),
            t0=stimulus.t0 if t0 is None else t0,
            current_t0=stimulus.t0,
            protocol=protocol,
            source="simulation",
        )
