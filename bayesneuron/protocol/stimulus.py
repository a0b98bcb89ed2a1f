"""Current-clamp stimuli: piecewise-constant currents ``[…, trace, comp, bins]``, or only at
some compartments ``sites`` ``[…, trace, site, bins]`` (sparse: one electrode on a
1000-compartment cell stores one row, not 1000).

``I(t) = values[…, k]`` with ``k = floor((t − t0) / dt)`` clipped to the valid bins — the
paper's lookup. Solvers put a step boundary on every bin edge, so a
piecewise-constant current is integrated exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bayesneuron.errors import StimulusError

__all__ = ["Stimulus", "step_current"]

_UNITS = ("uA/cm2", "nA")


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


@dataclass(frozen=True, eq=False)
class Stimulus:
    """Piecewise-constant injected currents.

    Args:
        values: currents ``[…, trace, comp, bins]``; µA/cm² for abstract cells (the paper),
            nA for geometric cells (converted to densities by compartment area).
        dt: bin width in ms.
        t0: time of the start of bin 0 in ms.
        unit: ``"uA/cm2"`` or ``"nA"``; must match the cell's ``morphology.current_unit``.
        sites: the compartments the rows of axis -2 stimulate, distinct; ``None`` (dense): row
            ``k`` is compartment ``k`` and there is a row for every compartment. Compartments
            not in ``sites`` get no current. The simulators take either form as is.

    Example:
        >>> stim = Stimulus(torch.ones(2, 1, 100), dt=0.05, unit="nA", sites=(7,))
        >>> stim.dense(n_comp=1000).values.shape   # the same currents, 1000× the memory
        torch.Size([2, 1000, 100])
    """

    values: Tensor
    dt: float
    t0: float = 0.0
    unit: str = "uA/cm2"
    sites: tuple[int, ...] | None = None

    def __post_init__(self):
        v = self.values
        if not isinstance(v, Tensor):
            try:
                v = torch.as_tensor(np.array(v, dtype=np.float64))
            except (TypeError, ValueError) as e:
                raise StimulusError(f"stimulus values must be a numeric array: {e}") from None
            object.__setattr__(self, "values", v)
        if not v.is_floating_point():
            object.__setattr__(self, "values", v.to(torch.float64))
        if v.ndim < 3:
            raise StimulusError(
                f"stimulus values have shape {tuple(v.shape)}; expected [trace, comp, time] "
                "(add leading axes with values[None] for a single trace)"
            )
        if v.shape[-1] < 1 or v.shape[-2] < 1 or v.shape[-3] < 1:
            raise StimulusError(f"stimulus values have an empty axis: shape {tuple(v.shape)}")
        if not bool(torch.isfinite(self.values).all()):
            bad = torch.nonzero(~torch.isfinite(self.values))[0].tolist()
            raise StimulusError(
                f"stimulus contains NaN or inf (first at index {bad}); currents must be finite"
            )
        if not (_is_real(self.dt) and np.isfinite(self.dt) and self.dt > 0):
            raise StimulusError(
                f"stimulus bin width dt = {self.dt!r} ms must be finite and > 0 (a number, in ms)"
            )
        if not (_is_real(self.t0) and np.isfinite(self.t0)):
            raise StimulusError(f"stimulus t0 = {self.t0!r} ms must be a finite number")
        if self.unit not in _UNITS:
            raise StimulusError(f"stimulus unit {self.unit!r} unknown; use one of {_UNITS}")
        if self.sites is not None:
            object.__setattr__(self, "sites", _sites(self.sites, self.values.shape[-2]))

    @property
    def n_trace(self) -> int:
        """Number of traces (the axis before ``comp``)."""
        return self.values.shape[-3]

    @property
    def n_comp(self) -> int | None:
        """Number of compartments of a dense stimulus; ``None`` for a sparse one (it stores
        only its ``sites``)."""
        return self.values.shape[-2] if self.sites is None else None

    @property
    def n_sites(self) -> int:
        """Rows of axis -2: the stimulated compartments of a sparse stimulus, every
        compartment of a dense one."""
        return self.values.shape[-2]

    def site_index(self, n_comp: int) -> tuple[int, ...]:
        """The compartment of each row of axis -2 on an ``n_comp``-compartment cell.

        Raises:
            StimulusError: the stimulus does not fit such a cell (a dense one with another
                number of compartments, or a site ≥ ``n_comp``).
        """
        if self.sites is None:
            if self.n_sites != n_comp:
                raise StimulusError(
                    f"stimulus has {self.n_sites} compartments on axis -2 (shape "
                    f"{tuple(self.values.shape)}) but the cell has {n_comp}; expected "
                    f"[trace, {n_comp}, bins], or give sites= for a sparse stimulus"
                )
            return tuple(range(n_comp))
        bad = [k for k in self.sites if k >= n_comp]
        if bad:
            raise StimulusError(
                f"stimulus site(s) {bad} do not exist: the cell has {n_comp} compartments "
                f"(0–{n_comp - 1})"
            )
        return self.sites

    def dense(self, n_comp: int) -> Stimulus:
        """The same currents as a dense stimulus ``[…, trace, n_comp, bins]`` (zero where
        nothing is injected); ``self`` if already dense. For tests and plots: simulators
        take the sparse form as is."""
        if self.sites is None:
            self.site_index(n_comp)
            return self
        rows = torch.as_tensor(self.site_index(n_comp), device=self.values.device)
        v = self.values
        values = v.new_zeros(v.shape[:-2] + (n_comp, v.shape[-1]))
        values.index_copy_(-2, rows, v)
        return Stimulus(values, self.dt, self.t0, self.unit)

    @property
    def n_bins(self) -> int:
        """Number of time bins."""
        return self.values.shape[-1]

    @property
    def t_end(self) -> float:
        """End of the last bin in ms."""
        return self.t0 + self.n_bins * self.dt

    def edges(self) -> np.ndarray:
        """Interior bin edges ``t0 + k·dt`` for ``k = 1 … bins-1`` (ms), float64."""
        return self.t0 + self.dt * np.arange(1, self.n_bins)

    def bin_index(self, t: np.ndarray) -> np.ndarray:
        """Bin holding each time ``t`` (ms), clipped to ``[0, bins-1]``."""
        k = np.floor((np.asarray(t, dtype=np.float64) - self.t0) / self.dt)
        return np.clip(k, 0, self.n_bins - 1).astype(np.int64)

    def masked(self, sites: Sequence[int]) -> Stimulus:
        """A copy with every compartment not in ``sites`` set to zero current (same shape)."""
        keep = {int(k) for k in sites}
        rows = range(self.n_sites) if self.sites is None else self.sites
        mask = torch.tensor([k in keep for k in rows], device=self.values.device)
        vals = torch.where(mask[:, None], self.values, torch.zeros_like(self.values))
        return Stimulus(vals, self.dt, self.t0, self.unit, self.sites)


def _sites(sites, n_rows: int) -> tuple[int, ...]:
    """``sites`` as a tuple of distinct compartment indices, one per row of axis -2."""
    try:
        out = tuple(sites)
    except TypeError:
        raise StimulusError(
            f"sites {sites!r} must be a sequence of compartment indices, one per row of "
            "axis -2 (or None for a dense stimulus)"
        ) from None
    if not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in out):
        raise StimulusError(f"sites {sites!r} must be compartment indices (ints ≥ 0)")
    out = tuple(int(k) for k in out)
    if len(out) != n_rows:
        raise StimulusError(
            f"{len(out)} sites {list(out)} but {n_rows} rows on axis -2 of the values: give "
            "one site per row ([…, trace, site, bins])"
        )
    if any(k < 0 for k in out) or len(set(out)) != len(out):
        raise StimulusError(f"sites {list(out)} must be distinct compartment indices ≥ 0")
    return out


def step_current(
    amplitudes: Sequence[float] | Tensor,
    site: int,
    n_comp: int,
    delay: float,
    duration: float,
    t_stop: float,
    dt: float = 0.025,
    unit: str = "nA",
) -> Stimulus:
    """Square pulses at one compartment, one trace per amplitude (like NEURON's ``IClamp``).

    Args:
        amplitudes: pulse amplitude per trace ``[trace]`` (nA or µA/cm², see ``unit``).
        site: stimulated compartment index.
        n_comp: number of compartments of the cell.
        delay, duration, t_stop: pulse onset, pulse length, end of the stimulus (ms);
            multiples of ``dt``.
        dt: bin width in ms.

    Returns:
        A :class:`Stimulus` with values ``[trace, n_comp, round(t_stop/dt)]``.
    """
    try:
        if not isinstance(amplitudes, Tensor):
            amplitudes = np.asarray(amplitudes, dtype=np.float64)
        amps = torch.as_tensor(amplitudes, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError):
        raise StimulusError(
            f"amplitudes {amplitudes!r} must be a list of numbers, one per trace"
        ) from None
    if not (_is_real(dt) and np.isfinite(dt) and dt > 0):
        raise StimulusError(f"dt = {dt!r} ms must be a finite number > 0 (the bin width)")
    if not isinstance(site, (int, np.integer)) or isinstance(site, bool) or not 0 <= site < n_comp:
        raise StimulusError(
            f"site {site!r} does not exist: the cell has {n_comp} compartments (0–{n_comp - 1})"
        )
    n_bins = int(round(t_stop / dt))
    on, off = (int(round(x / dt)) for x in (delay, delay + duration))
    for name, x, k in (("delay", delay, on), ("delay + duration", delay + duration, off)):
        if abs(k * dt - x) > 1e-9 * max(1.0, abs(x)):
            raise StimulusError(f"{name} = {x} ms is not a multiple of dt = {dt} ms")
    if not 0 <= on <= off <= n_bins:
        raise StimulusError(f"pulse [{delay}, {delay + duration}] ms must lie in [0, {t_stop}] ms")
    values = torch.zeros(len(amps), n_comp, n_bins, dtype=torch.float64)
    values[:, site, on:off] = amps[:, None]
    return Stimulus(values, dt=dt, unit=unit)
