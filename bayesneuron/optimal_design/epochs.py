"""Amplifier epoch families: what an amplifier's epoch table delivers — ``n_epochs`` epochs
of free durations (they fill the sweep) and free levels, the current constant in each epoch
(:class:`Steps`) or linear from one epoch boundary's level to the next (:class:`Ramps`).
Each bin holds the exact bin average of that current, so an epoch boundary moves smoothly
through a bin and the currents stay inside the bounds without a sigmoid on the waveform.
``Steps.fit`` holds a sweep of at most ``n_epochs`` steps on the bin grid (the paper's
protocol) exactly.

Example:
    >>> fam = Steps(n_traces=20, sites=(0,), n_epochs=3)
    >>> z = fam.fit(paper_currents(n_traces=20))  # the paper's sweeps, to the bounds' clamp
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bayesneuron.errors import StimulusError
from bayesneuron.optimal_design.families import StimulusFamily
from bayesneuron.protocol.stimulus import Stimulus

__all__ = ["Ramps", "Steps"]


@dataclass(frozen=True)
class Steps(StimulusFamily):
    """``n_epochs`` epochs per trace and electrode, each a constant level (an amplifier's
    step epochs): durations ``T·softmax(·)`` fill the sweep ``T``, levels
    ``lo + (hi − lo)·sigmoid(·)``; bin ``j`` holds the current's exact average over the bin.

    ``z`` ``[trace, site, n_levels + n_epochs]``: the level coordinates, then the duration
    coordinates.
    """

    n_epochs: int = 3

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.n_epochs, int) and self.n_epochs >= 1):
            raise StimulusError(f"n_epochs = {self.n_epochs!r} must be an int ≥ 1")

    @property
    def n_levels(self) -> int:
        """Levels per waveform: one per epoch."""
        return self.n_epochs

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_traces, len(self.sites), self.n_levels + self.n_epochs)

    def currents(self, z: Tensor) -> Tensor:
        lo, hi = self.bounds(z.dtype, z.device)
        levels = lo + (hi - lo) * torch.sigmoid(z[..., : self.n_levels])
        sweep = self.n_bins * self.dt
        dur = sweep * torch.softmax(z[..., self.n_levels :], -1)  # [trace, site, epoch]
        start = torch.cumsum(dur, -1) - dur
        edges = torch.arange(self.n_bins + 1, dtype=z.dtype, device=z.device) * self.dt
        inside = edges[:, None] - start[..., None, :]  # [trace, site, edge, epoch]
        u = torch.minimum(inside.clamp_min(0.0), dur[..., None, :])  # time spent in epoch
        charge = self._integral(levels, u, dur).sum(-1)  # ∫₀^edge I dt, [trace, site, edge]
        mean = (charge[..., 1:] - charge[..., :-1]) / self.dt
        return torch.minimum(torch.maximum(mean, lo), hi)  # an average: off only by rounding

    def fit(self, stimulus: Stimulus, steps: int = 200, seed: int = 0) -> Tensor:
        """Least squares as for every family, and from the stimulus's own epochs too (its
        runs of one level, the closest pair merged or the longest split until there are
        ``n_epochs``): the better of the two. A sweep of at most ``n_epochs`` steps on the
        bin grid — the paper's protocol — is held exactly, up to the clamp of ``1e-3`` of
        the range inside the bounds (the least-squares start alone missed one by 12 µA/cm²);
        for :class:`Ramps` the epochs' levels are the knots', a start, not an identity."""
        target = self._target(stimulus)
        found = [
            super().fit(stimulus, steps, seed),
            self._refine(self._epochs(target), target, steps),
        ]
        return min(found, key=lambda z: float(self._misfit(z, target)))

    def _epochs(self, target: Tensor) -> Tensor:
        """``z`` of ``n_epochs`` steps from ``target``'s runs of equal level (``[trace, site,
        bins]``; the end bins take their neighbours' level where ``zero_ends`` zeroes them)."""
        v = target.clone()
        if self.zero_ends:
            v[..., 0], v[..., -1] = v[..., 1], v[..., -2]
        levels = torch.empty(*v.shape[:2], self.n_epochs, dtype=torch.float64)
        durations = torch.empty_like(levels)
        for t in range(v.shape[0]):
            for s in range(v.shape[1]):
                runs = _runs(v[t, s].tolist(), self.dt, self.n_epochs)
                levels[t, s] = torch.tensor([lvl for lvl, _ in runs], dtype=torch.float64)
                durations[t, s] = torch.tensor([d for _, d in runs], dtype=torch.float64)
        extra = levels[..., -1:].expand(*levels.shape[:2], self.n_levels - self.n_epochs)
        levels = torch.cat([levels, extra], -1)  # Ramps: the last epoch's end level too
        return torch.cat([self._logit(levels), durations.log()], -1)  # softmax(log d) = d / T

    def _silent(self) -> Tensor:
        z = torch.zeros(self.shape, dtype=torch.float64)
        z[..., : self.n_levels] = self._zero_logit()
        return z

    def _integral(self, levels: Tensor, u: Tensor, dur: Tensor) -> Tensor:
        """Per epoch, ``∫`` of the current over its first ``u`` ms."""
        return levels[..., None, :] * u


def _runs(values: list[float], dt: float, k: int) -> list[tuple[float, float]]:
    """``k`` epochs ``(level, duration ms)`` of a sweep's bin values: its runs of one level,
    the adjacent pair whose merge adds least squared error merged (level: their mean over
    time), or the longest run halved, until there are ``k``."""
    runs: list[tuple[float, float]] = []
    for x in values:
        if runs and abs(x - runs[-1][0]) <= 1e-12:
            runs[-1] = (runs[-1][0], runs[-1][1] + dt)
        else:
            runs.append((x, dt))
    while len(runs) > k:
        cost = [a[1] * b[1] / (a[1] + b[1]) * (a[0] - b[0]) ** 2 for a, b in zip(runs, runs[1:])]
        i = cost.index(min(cost))
        (a, da), (b, db) = runs[i], runs[i + 1]
        runs[i : i + 2] = [((a * da + b * db) / (da + db), da + db)]
    while len(runs) < k:
        i = max(range(len(runs)), key=lambda j: runs[j][1])
        level, d = runs[i]
        runs[i : i + 1] = [(level, d / 2), (level, d / 2)]
    return runs


@dataclass(frozen=True)
class Ramps(Steps):
    """``n_epochs`` epochs per trace and electrode, the current linear in each from the level
    at its start to the level at its end (``n_epochs + 1`` levels: a piecewise-linear
    current with free knot times, an amplifier's ramp epochs); otherwise as :class:`Steps`."""

    @property
    def n_levels(self) -> int:
        """Levels per waveform: one per epoch boundary, the sweep's ends included."""
        return self.n_epochs + 1

    def _integral(self, levels: Tensor, u: Tensor, dur: Tensor) -> Tensor:
        a, b = levels[..., None, :-1], levels[..., None, 1:]  # each epoch's start and end
        return a * u + (b - a) * u**2 / (2 * dur[..., None, :].clamp_min(1e-300))
