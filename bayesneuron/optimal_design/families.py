"""Parametrised stimulus families: unconstrained parameters ``z`` → a :class:`Stimulus`,
differentiable in ``z``, with every current inside its bounds ``[lo, hi]`` for any ``z``.

A family injects through electrodes at ``sites`` (the stimulated compartments only: the
stimulus is sparse, ``[trace, site, bins]``), one waveform per electrode and trace, on a grid
of ``n_bins`` bins of ``dt`` ms from ``t0``. Bounds are kept by a smooth map,
``I = lo + (hi − lo)·sigmoid(w)`` for an unbounded waveform ``w``; ``lo`` and ``hi`` are one
number for every electrode or one per site (e.g. nA bounds of the same current density on
compartments of different areas); ``zero_ends`` forces the first and last bins to 0 (the
paper's currents have them zero; it needs ``lo ≤ 0 ≤ hi``). ``max_charge`` caps the charge
``Σ |I|·dt`` each electrode delivers in a trace: a waveform over the cap is scaled down to it
(differentiable; inside the bounds because ``lo ≤ 0 ≤ hi``), one under it is left as it is.

* :class:`PiecewiseConstant` — one free level per bin (the paper's grid: 48 bins of 0.1 ms);
* :class:`SineSum` — ``w(t) = c + Σₖ aₖ sin(2π fₖ t + φₖ)``, a smooth waveform of ``n_sines``
  sines with frequencies kept in ``[f_min, f_max]`` kHz, sampled at the bin centres.

Example:
    >>> fam = PiecewiseConstant(n_traces=2, sites=(0, 5), lo=0.0, hi=19.0)
    >>> stim = fam(fam.init(seed=0))
    >>> stim.values.shape, stim.sites
    (torch.Size([2, 2, 48]), (0, 5))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bayesneuron.errors import StimulusError
from bayesneuron.protocol.stimulus import Stimulus

__all__ = ["FAMILIES", "PiecewiseConstant", "SineSum", "StimulusFamily"]

_LOGIT_MARGIN = 1e-3  # fraction of the range kept off the bounds when fitting z to values


def _bound(value, n_sites: int, name: str) -> float | tuple[float, ...]:
    """A bound as a float, or a tuple of ``n_sites`` floats (one per electrode)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise StimulusError(f"{name} = {value!r} must be a number or one per site") from None
    if len(out) != n_sites:
        raise StimulusError(f"{name} has {len(out)} values; need one per site ({n_sites})")
    return out


def _check_sites(sites) -> tuple[int, ...]:
    try:
        out = tuple(int(k) for k in sites)
    except (TypeError, ValueError):
        raise StimulusError(f"sites {sites!r} must be compartment indices (ints ≥ 0)") from None
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise StimulusError(f"sites {list(out)} must be ≥ 1 distinct compartment indices ≥ 0")
    return out


@dataclass(frozen=True)
class StimulusFamily:
    """What every family shares: traces, electrode sites, the bin grid and the bounds.

    Args:
        n_traces: sweeps (traces) to design.
        sites: the compartments that carry an electrode (distinct, ≥ 0).
        lo, hi: current bounds (µA/cm² for the paper's cell, else the cell's current unit):
            a number, or a tuple with one per site (in ``sites``' order).
        n_bins, dt, t0: the grid: ``n_bins`` bins of ``dt`` ms from ``t0`` ms.
        zero_ends: force the first and last bins to zero current.
        unit: ``"uA/cm2"`` or ``"nA"``, as :class:`Stimulus`.
        max_charge: the largest charge ``Σ |I|·dt`` per trace and electrode (the current's
            unit × ms: nC/cm² for µA/cm², pC for nA), a number or one per site; ``None``: none.
    """

    n_traces: int
    sites: tuple[int, ...]
    lo: float | tuple[float, ...] = 0.0
    hi: float | tuple[float, ...] = 19.0
    n_bins: int = 48
    dt: float = 0.1
    t0: float = 0.0
    zero_ends: bool = True
    unit: str = "uA/cm2"
    max_charge: float | tuple[float, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "sites", _check_sites(self.sites))
        for name in ("lo", "hi"):
            object.__setattr__(self, name, _bound(getattr(self, name), len(self.sites), name))
        if self.max_charge is not None:
            q = _bound(self.max_charge, len(self.sites), "max_charge")
            object.__setattr__(self, "max_charge", q)
            lo, hi = np.broadcast_arrays(self.lo, self.hi)
            if not (np.all(np.asarray(q) > 0) and np.isfinite(q).all()):
                raise StimulusError(f"max_charge = {q} must be finite and > 0")
            if not ((lo <= 0.0) & (0.0 <= hi)).all():
                raise StimulusError("max_charge scales waveforms towards 0: it needs lo ≤ 0 ≤ hi")
        if not (isinstance(self.n_traces, int) and self.n_traces >= 1):
            raise StimulusError(f"n_traces = {self.n_traces!r} must be an int ≥ 1")
        if not (isinstance(self.n_bins, int) and self.n_bins >= 3):
            raise StimulusError(f"n_bins = {self.n_bins!r} must be an int ≥ 3")
        lo, hi = np.broadcast_arrays(self.lo, self.hi)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo < hi).all()):
            raise StimulusError(f"bounds [{self.lo}, {self.hi}] must be finite with lo < hi")
        if self.zero_ends and not ((lo <= 0.0) & (0.0 <= hi)).all():
            raise StimulusError(
                f"zero_ends needs 0 inside the bounds [{self.lo}, {self.hi}]; widen them or "
                "pass zero_ends=False"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the unconstrained parameters ``z``."""
        raise NotImplementedError

    def bounds(self, dtype=torch.float64, device=None) -> tuple[Tensor, Tensor]:
        """``(lo, hi)`` as tensors that broadcast against ``[trace, site, bins]``
        (``[site, 1]``, or scalars for one bound for every site)."""
        lo, hi = (
            torch.as_tensor(b, dtype=dtype, device=device).reshape(-1, 1)
            if isinstance(b, tuple)
            else torch.tensor(b, dtype=dtype, device=device)
            for b in (self.lo, self.hi)
        )
        return lo, hi

    @property
    def n_params(self) -> int:
        """Number of unconstrained parameters."""
        return math.prod(self.shape)

    def waveform(self, z: Tensor) -> Tensor:
        """The unbounded waveform ``w`` ``[trace, site, bins]`` of parameters ``z``."""
        raise NotImplementedError

    def values(self, z: Tensor) -> Tensor:
        """Bounded currents ``[trace, site, bins]``: ``lo + (hi − lo)·sigmoid(w)``, ends zeroed."""
        if tuple(z.shape) != self.shape:
            raise StimulusError(f"z has shape {tuple(z.shape)}; this family takes {self.shape}")
        w = self.waveform(z)
        lo, hi = self.bounds(w.dtype, w.device)
        i = lo + (hi - lo) * torch.sigmoid(w)
        if self.zero_ends:
            keep = torch.ones(self.n_bins, dtype=i.dtype, device=i.device)
            keep[0] = keep[-1] = 0.0
            i = i * keep
        if self.max_charge is not None:
            cap = torch.as_tensor(self.max_charge, dtype=i.dtype, device=i.device).reshape(-1, 1)
            charge = i.abs().sum(-1, keepdim=True) * self.dt  # [trace, site, 1]
            i = i * torch.clamp(cap / charge.clamp_min(1e-300), max=1.0)
        return i

    def __call__(self, z: Tensor) -> Stimulus:
        """The :class:`Stimulus` ``[trace, site, bins]`` (sparse, ``sites``) of ``z``."""
        return Stimulus(self.values(z), self.dt, self.t0, self.unit, self.sites)

    def init(self, seed: int = 0, scale: float = 1.0, dtype=torch.float64) -> Tensor:
        """Random parameters ``N(0, scale²)`` of ``shape`` from a private generator."""
        gen = torch.Generator().manual_seed(int(seed))
        return scale * torch.randn(self.shape, generator=gen, dtype=dtype)

    def _logit(self, values: Tensor) -> Tensor:
        """``w`` with ``lo + (hi − lo)·sigmoid(w) = values`` (clamped just inside the bounds)."""
        lo, hi = self.bounds()
        x = (torch.as_tensor(values, dtype=torch.float64) - lo) / (hi - lo)
        return torch.logit(x.clamp(_LOGIT_MARGIN, 1.0 - _LOGIT_MARGIN))

    def dense_index(self, stimulus: Stimulus) -> Tensor:
        """The rows of ``stimulus`` (dense ``[trace, comp, bins]`` or sparse) at ``sites``,
        ``[trace, site, bins]``; a :class:`StimulusError` if the grid or a site differs."""
        if stimulus.n_bins != self.n_bins or abs(stimulus.dt - self.dt) > 1e-12:
            raise StimulusError(
                f"stimulus grid {stimulus.n_bins} × {stimulus.dt} ms ≠ the family's "
                f"{self.n_bins} × {self.dt} ms"
            )
        rows = range(stimulus.n_sites) if stimulus.sites is None else stimulus.sites
        rows = list(rows)
        missing = [k for k in self.sites if k not in rows]
        if missing:
            raise StimulusError(f"stimulus has no rows for sites {missing}")
        return stimulus.values[..., [rows.index(k) for k in self.sites], :]


@dataclass(frozen=True)
class PiecewiseConstant(StimulusFamily):
    """One level per bin and electrode and trace: ``z`` ``[trace, site, bins]`` (the end bins'
    entries are unused under ``zero_ends``)."""

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_traces, len(self.sites), self.n_bins)

    def waveform(self, z: Tensor) -> Tensor:
        return z

    def fit(self, stimulus: Stimulus) -> Tensor:
        """Parameters whose currents are ``stimulus``'s at ``sites`` (the first ``n_traces``
        traces), up to a clamp of ``1e-3`` of the range inside the bounds."""
        v = self.dense_index(stimulus)[: self.n_traces]
        if v.shape[0] < self.n_traces:
            raise StimulusError(f"stimulus has {v.shape[0]} traces; need {self.n_traces}")
        return self._logit(v.detach())

    def moved_from(self, z: Tensor, sites) -> Tensor:
        """Parameters on this family's sites from ``z`` ``[trace, len(sites), bins]`` of the
        same grid on electrodes ``sites``: an electrode in both keeps its waveform, a new one
        is silent (zero current, up to the clamp just inside the bounds) — a warm start for a
        site set one electrode away."""
        sites = tuple(int(k) for k in sites)
        if tuple(z.shape) != (self.n_traces, len(sites), self.n_bins):
            raise StimulusError(
                f"z has shape {tuple(z.shape)}; need {(self.n_traces, len(sites), self.n_bins)}"
            )
        lo, hi = self.bounds(z.dtype)
        zero = (-lo / (hi - lo)).clamp(_LOGIT_MARGIN, 1.0 - _LOGIT_MARGIN)
        out = torch.logit(zero).expand(len(self.sites), 1).expand(self.shape).clone()
        for i, k in enumerate(self.sites):
            if k in sites:
                out[:, i] = z[:, sites.index(k)]
        return out


@dataclass(frozen=True)
class SineSum(StimulusFamily):
    """``w(t) = c + Σₖ aₖ sin(2π fₖ (t − t0) + φₖ)`` at the bin centres, per electrode and
    trace; ``fₖ = f_min + (f_max − f_min)·sigmoid(·)`` kHz (1/ms).

    ``z`` ``[trace, site, 1 + 3·n_sines]``: offset ``c``, then per sine an amplitude, a
    frequency coordinate and a phase.
    """

    n_sines: int = 4
    f_min: float = 0.1
    f_max: float = 5.0

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.n_sines, int) and self.n_sines >= 1):
            raise StimulusError(f"n_sines = {self.n_sines!r} must be an int ≥ 1")
        if not 0.0 <= self.f_min < self.f_max:
            raise StimulusError(f"frequencies [{self.f_min}, {self.f_max}] kHz need 0 ≤ min < max")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_traces, len(self.sites), 1 + 3 * self.n_sines)

    def waveform(self, z: Tensor) -> Tensor:
        t = (torch.arange(self.n_bins, dtype=z.dtype, device=z.device) + 0.5) * self.dt
        c, rest = z[..., :1], z[..., 1:].unflatten(-1, (self.n_sines, 3))
        amp, fz, phase = rest.unbind(-1)  # [trace, site, sine]
        f = self.f_min + (self.f_max - self.f_min) * torch.sigmoid(fz)
        arg = 2 * math.pi * f[..., None] * t + phase[..., None]  # [trace, site, sine, bins]
        return c + (amp[..., None] * torch.sin(arg)).sum(-2)

    def init(self, seed: int = 0, scale: float = 1.0, dtype=torch.float64) -> Tensor:
        """Random parameters: offset and amplitudes ``N(0, scale²)``, frequencies spread over
        the band, phases uniform."""
        gen = torch.Generator().manual_seed(int(seed))
        z = scale * torch.randn(self.shape, generator=gen, dtype=dtype)
        rest = z[..., 1:].unflatten(-1, (self.n_sines, 3))
        rest[..., 1] = 2.0 * torch.randn(rest.shape[:-1], generator=gen, dtype=dtype)
        rest[..., 2] = 2 * math.pi * torch.rand(rest.shape[:-1], generator=gen, dtype=dtype)
        return torch.cat([z[..., :1], rest.flatten(-2)], -1)


FAMILIES = {"bins": PiecewiseConstant, "sines": SineSum}
"""Family name (as the study's ``family`` column writes it) → class."""
