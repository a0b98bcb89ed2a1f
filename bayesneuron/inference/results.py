"""The one small protocol every inference result follows.

:class:`~.fit.MapFit` (MAP), :class:`~.laplace.UnconstrainedLaplace` (Laplace),
:class:`~.svi.SviFit` (SVI) and :class:`~.nuts.NutsRun` (NUTS) each have

* ``draws`` — name → numpy array ``[draw, comp]`` of every free parameter, in the model's own
  names and units, and ``"sigma"`` → ``[draw]`` (mV, no compartment dim) when the model
  infers the noise (the MAP is one draw; Laplace gives 1000 draws of seed 0, ``sample(n, seed)``
  gives others; NUTS pools its chains, ``samples`` keeps them apart);
* ``diagnostics`` — a dict of scalars saying how the method went (objective and convergence,
  ELBO and PSIS k̂, divergences, …; the keys differ by method).

Code that only needs posterior draws (metrics, reports, predictive checks) can take any of
them::

    identifiability(result.draws, model, truth)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["PosteriorResult"]


@runtime_checkable
class PosteriorResult(Protocol):
    """What MAP, Laplace, SVI and NUTS results have in common (module doc)."""

    @property
    def draws(self) -> Mapping[str, np.ndarray]: ...

    @property
    def diagnostics(self) -> dict: ...
