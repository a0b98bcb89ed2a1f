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
* :class:`SineSum` — ``w(t) = c + Σₖ aₖ sin(2π fₖ t + φₖ)``, ``n_sines`` sines with
  frequencies kept in ``[f_min, f_max]`` kHz, sampled at the bin centres (smooth while the
  amplitudes are small; large ones the sigmoid squares into pulse trains);
* :class:`Chirp` — one sine whose frequency sweeps linearly from ``f₀`` to ``f₁`` over the
  sweep (a ZAP current, the usual probe of resonance), with an offset;
* :class:`~bayesneuron.optimal_design.epochs.Steps` and ``Ramps`` (:mod:`.epochs`) — what an
  amplifier's epoch table delivers.

Every family can :meth:`~StimulusFamily.fit` a given stimulus (its parameters whose currents
are closest in least squares; exact for :class:`PiecewiseConstant`): the paper's currents or
an earlier design as a start.

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

__all__ = ["Chirp", "PiecewiseConstant", "SineSum", "StimulusFamily"]

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


def _check_band(f_min: float, f_max: float) -> None:
    if not 0.0 <= f_min < f_max:
        raise StimulusError(f"frequencies [{f_min}, {f_max}] kHz need 0 ≤ min < max")


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

    def currents(self, z: Tensor) -> Tensor:
        """Currents ``[trace, site, bins]`` inside the bounds, before ``zero_ends`` and
        ``max_charge``: ``lo + (hi − lo)·sigmoid(w)`` of the waveform ``w``."""
        w = self.waveform(z)
        lo, hi = self.bounds(w.dtype, w.device)
        return lo + (hi - lo) * torch.sigmoid(w)

    def values(self, z: Tensor) -> Tensor:
        """Bounded currents ``[trace, site, bins]`` (:meth:`currents`), ends zeroed, charge
        capped."""
        if tuple(z.shape) != self.shape:
            raise StimulusError(f"z has shape {tuple(z.shape)}; this family takes {self.shape}")
        i = self.currents(z)
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

    def fit(self, stimulus: Stimulus, steps: int = 200, seed: int = 0) -> Tensor:
        """Parameters whose currents are closest (least squares, L-BFGS for at most ``steps``
        iterations from :meth:`init` with ``seed``) to ``stimulus``'s at ``sites`` (its first
        ``n_traces`` traces): a start near a given stimulus, not an identity — a family of
        few parameters cannot hold 48 random levels."""
        target = self._target(stimulus)
        return self._refine(self.init(seed=seed, scale=0.5), target, steps)

    def _misfit(self, z: Tensor, target: Tensor) -> Tensor:
        """Mean squared difference of ``z``'s currents from ``target``, in units of the range."""
        lo, hi = self.bounds()
        return (((self.values(z) - target) / (hi - lo)) ** 2).mean()

    def _refine(self, z0: Tensor, target: Tensor, steps: int) -> Tensor:
        """``z0`` moved by at most ``steps`` L-BFGS iterations towards ``target``'s currents."""
        z = z0.clone().requires_grad_()
        opt = torch.optim.LBFGS([z], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = self._misfit(z, target)
            loss.backward()
            return loss

        if steps:
            opt.step(closure)
        return z.detach()

    def moved_from(self, z: Tensor, sites) -> Tensor:
        """Parameters on this family's sites from ``z`` ``[trace, len(sites), …]`` of the same
        family on electrodes ``sites``: an electrode in both keeps its parameters (every
        family's are per electrode), a new one is silent (zero current up to 1e-12 of the
        range, 1e-3 for bins) — a warm start for a site set one electrode away."""
        sites = tuple(int(k) for k in sites)
        want = (self.n_traces, len(sites), *self.shape[2:])
        if tuple(z.shape) != want:
            raise StimulusError(f"z has shape {tuple(z.shape)}; need {want}")
        out = self._silent().to(z.dtype)
        for i, k in enumerate(self.sites):
            if k in sites:
                out[:, i] = z[:, sites.index(k)]
        return out

    def _silent(self) -> Tensor:
        """Parameters ``z`` of (nearly) zero current on every electrode: by default the
        waveform ``w`` constant at :meth:`_zero_logit`, the first coordinate an offset and
        the others 0 (a family whose ``z`` differs overrides this)."""
        z = torch.zeros(self.shape, dtype=torch.float64)
        z[..., 0] = self._zero_logit()[:, 0]
        return z

    def _zero_logit(self, margin: float = 1e-12) -> Tensor:
        """``[site, 1]``: the ``w`` of zero current (``margin`` of the range inside a bound,
        1e-11 µA/cm² for the paper's: the design criterion notices 1e-6 near a threshold)."""
        lo, hi = self.bounds()
        zero = (-lo / (hi - lo)).clamp(margin, 1.0 - margin)
        return torch.logit(zero).expand(len(self.sites), 1)

    def _target(self, stimulus: Stimulus) -> Tensor:
        v = self.dense_index(stimulus)[: self.n_traces]
        if v.shape[0] < self.n_traces:
            raise StimulusError(f"stimulus has {v.shape[0]} traces; need {self.n_traces}")
        return torch.as_tensor(v, dtype=torch.float64).detach()

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

    def fit(self, stimulus: Stimulus, steps: int = 0, seed: int = 0) -> Tensor:
        """Parameters whose currents are ``stimulus``'s at ``sites`` (the first ``n_traces``
        traces), up to a clamp of ``1e-3`` of the range inside the bounds (exact: ``steps``
        and ``seed`` are unused)."""
        return self._logit(self._target(stimulus))

    def _silent(self) -> Tensor:  # the clamp of ``fit``: these warm starts predate the others
        return self._zero_logit(_LOGIT_MARGIN).expand(self.shape).clone()


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
        _check_band(self.f_min, self.f_max)

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


@dataclass(frozen=True)
class Chirp(StimulusFamily):
    """``w(t) = c + a·sin(2π (f₀ τ + (f₁ − f₀) τ² / 2T) + φ)``, ``τ = t − t0`` at the bin
    centres, ``T`` the sweep: the frequency runs linearly from ``f₀`` to ``f₁`` (each kept in
    ``[f_min, f_max]`` kHz by a sigmoid; ``f₁ < f₀`` sweeps down).

    ``z`` ``[trace, site, 5]``: offset ``c``, amplitude ``a``, the two frequency coordinates,
    phase ``φ``.
    """

    f_min: float = 0.1
    f_max: float = 5.0

    def __post_init__(self):
        super().__post_init__()
        _check_band(self.f_min, self.f_max)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_traces, len(self.sites), 5)

    def waveform(self, z: Tensor) -> Tensor:
        tau = (torch.arange(self.n_bins, dtype=z.dtype, device=z.device) + 0.5) * self.dt
        c, a, f0z, f1z, phase = (x[..., None] for x in z.unbind(-1))
        f0, f1 = (self.f_min + (self.f_max - self.f_min) * torch.sigmoid(f) for f in (f0z, f1z))
        sweep = self.n_bins * self.dt
        return c + a * torch.sin(
            2 * math.pi * (f0 * tau + (f1 - f0) * tau**2 / (2 * sweep)) + phase
        )
