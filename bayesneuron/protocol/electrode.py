"""Single-electrode current clamp, stored sparsely: one site and its waveform ``[…, trace, bins]``.

A whole-cell recording injects current at one compartment; storing it as a dense
``[trace, comp, bins]`` :class:`Stimulus` would multiply memory by the number of compartments
(1000× on a detailed cell). The simulators take it as is, as the sparse :class:`Stimulus`
of :meth:`ElectrodeStimulus.as_stimulus` (``sites=(site,)``, a view of the waveform).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bayesneuron.errors import StimulusError
from bayesneuron.protocol.stimulus import Stimulus

__all__ = ["ElectrodeStimulus"]

_UNITS = ("uA/cm2", "nA")


def _number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


@dataclass(frozen=True, eq=False)
class ElectrodeStimulus:
    """Piecewise-constant current injected at one compartment.

    ``I(t) = waveform[…, k]`` with ``k = floor((t − t0) / dt)``, as for :class:`Stimulus`.

    Args:
        site: index of the stimulated compartment.
        waveform: currents ``[…, trace, bins]`` (nA for geometric cells, µA/cm² for abstract
            ones).
        dt: bin width in ms.
        t0: start of bin 0 in ms.
        unit: ``"nA"`` or ``"uA/cm2"``.

    Example:
        >>> stim = ElectrodeStimulus(0, torch.ones(2, 100), dt=0.05)
        >>> stim.as_stimulus().values.shape      # what simulate() gets: [trace, site, bins]
        torch.Size([2, 1, 100])
    """

    site: int
    waveform: Tensor
    dt: float
    t0: float = 0.0
    unit: str = "nA"

    def __post_init__(self):
        w = self.waveform
        if not isinstance(w, Tensor):
            try:
                w = torch.as_tensor(np.array(w, dtype=np.float64))
            except (TypeError, ValueError) as e:
                raise StimulusError(f"electrode waveform must be a numeric array: {e}") from None
        if not w.is_floating_point():
            w = w.to(torch.float64)
        object.__setattr__(self, "waveform", w)
        if w.ndim < 2 or w.shape[-1] < 1 or w.shape[-2] < 1:
            raise StimulusError(
                f"electrode waveform has shape {tuple(w.shape)}; expected [trace, bins] with "
                "both ≥ 1 (use waveform[None] for a single trace)"
            )
        if not bool(torch.isfinite(w).all()):
            bad = torch.nonzero(~torch.isfinite(w))[0].tolist()
            raise StimulusError(f"electrode waveform contains NaN or inf (first at index {bad})")
        if not isinstance(self.site, (int, np.integer)) or isinstance(self.site, bool):
            raise StimulusError(f"site {self.site!r} must be a compartment index (an int ≥ 0)")
        if self.site < 0:
            raise StimulusError(f"site {self.site} must be ≥ 0 (a compartment index)")
        object.__setattr__(self, "site", int(self.site))
        if not (_number(self.dt) and np.isfinite(self.dt) and self.dt > 0):
            raise StimulusError(f"bin width dt = {self.dt!r} ms must be a finite number > 0")
        if not (_number(self.t0) and np.isfinite(self.t0)):
            raise StimulusError(f"t0 = {self.t0!r} ms must be a finite number")
        if self.unit not in _UNITS:
            raise StimulusError(f"stimulus unit {self.unit!r} unknown; use one of {_UNITS}")

    @property
    def n_trace(self) -> int:
        """Number of traces."""
        return self.waveform.shape[-2]

    @property
    def n_bins(self) -> int:
        """Number of time bins."""
        return self.waveform.shape[-1]

    @property
    def t_end(self) -> float:
        """End of the last bin in ms."""
        return self.t0 + self.n_bins * self.dt

    def as_stimulus(self) -> Stimulus:
        """The sparse :class:`Stimulus` ``[…, trace, 1, bins]`` with ``sites=(site,)`` (a view
        of the waveform, no copy): what :func:`~bayesneuron.simulate` runs."""
        return Stimulus(self.waveform.unsqueeze(-2), self.dt, self.t0, self.unit, (self.site,))

    def dense(self, n_comp: int) -> Stimulus:
        """The equivalent dense :class:`Stimulus` ``[…, trace, n_comp, bins]`` (zero elsewhere).

        Raises:
            StimulusError: ``site`` is not a compartment of an ``n_comp``-compartment cell.
        """
        if not isinstance(n_comp, (int, np.integer)) or isinstance(n_comp, bool) or n_comp < 1:
            raise StimulusError(f"n_comp = {n_comp!r} must be an int ≥ 1")
        if self.site >= n_comp:
            raise StimulusError(
                f"site {self.site} does not exist: the cell has {n_comp} compartments "
                f"(0–{n_comp - 1})"
            )
        return self.as_stimulus().dense(n_comp)

    @classmethod
    def from_stimulus(cls, stimulus: Stimulus, site: int | None = None) -> ElectrodeStimulus:
        """The sparse form of a dense :class:`Stimulus` that injects at one compartment.

        Args:
            stimulus: currents ``[…, trace, comp, bins]`` (dense or sparse).
            site: the stimulated compartment; default: the only one with non-zero current
                (compartment 0 when every current is zero).

        Raises:
            StimulusError: current flows at another compartment than ``site`` (or at several
                when ``site`` is not given): one electrode cannot carry it.
        """
        if not isinstance(stimulus, Stimulus):
            raise StimulusError(f"expected a bayesneuron.Stimulus, got {type(stimulus).__name__}")
        v = stimulus.values
        comps = list(range(stimulus.n_sites)) if stimulus.sites is None else list(stimulus.sites)
        rows = torch.nonzero(v.ne(0).flatten(end_dim=-3).any(0).any(-1)).flatten().tolist()
        active = sorted(comps[r] for r in rows)
        if site is None:
            if len(active) > 1:
                raise StimulusError(
                    f"current flows at compartments {active}; one electrode stimulates one "
                    "compartment (keep the Stimulus for several)"
                )
            site = active[0] if active else comps[0]
        elif not (
            isinstance(site, (int, np.integer))
            and (site in comps if stimulus.sites is not None else 0 <= site < len(comps))
        ):
            where = (
                f"the stimulus has {len(comps)} compartments (0–{len(comps) - 1})"
                if stimulus.sites is None
                else f"the stimulus injects at {comps} only"
            )
            raise StimulusError(f"site {site!r} does not exist: {where}")
        elif set(active) - {site}:
            raise StimulusError(
                f"current flows at compartments {active}, not only at site {site}; one electrode "
                "cannot carry it"
            )
        row = comps.index(site)
        return cls(int(site), v[..., row, :].clone(), stimulus.dt, stimulus.t0, stimulus.unit)
