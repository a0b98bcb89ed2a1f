"""Priors over per-compartment parameters.

A prior is given per free parameter (``"g_na"``, ``"g_k"``, …) as

* :class:`LogNormalPrior` — ``log g ~ Normal(log base, sd)`` around the cell's own value (the
  default, ``sd = 0.5``: a factor e^0.5 ≈ 1.65 either way at one sd);
* :class:`ScaledUniformPrior` — ``g ~ base · Uniform(low, high)`` (the paper's ground-truth
  distribution, ``base · U(0.7, 1.3)``);
* :class:`NormalPrior` — ``g ~ Normal(base + shift, sd)``, for parameters that may be ≤ 0
  (reversal potentials: the default for ``e_*``, ``sd = 10`` mV);
* any Pyro distribution with batch shape ``()`` or ``[comp]`` (used as given);
* ``None`` — no prior (a flat density on ``g > 0``): maximum likelihood; only :func:`fit_map`
  accepts it, sampling methods need a proper prior.

``base`` is the cell's value of the parameter per site entry: per compartment
(``cell.params[name]``), or per region for parameters shared by region
(:mod:`~bayesneuron.inference.forms`). Specs are keyed by site name (``"g_k"``, ``"g_ih_lam"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import Tensor

from bayesneuron.errors import ParameterError

__all__ = ["Prior", "LogNormalPrior", "NormalPrior", "ScaledUniformPrior", "resolve_prior"]


class Prior:
    """A prior defined relative to the cell's base value of the parameter."""

    def distribution(self, base: Tensor) -> dist.Distribution:
        """The prior over ``[comp]`` values given the base values ``[comp]``."""
        raise NotImplementedError


@dataclass(frozen=True)
class LogNormalPrior(Prior):
    """``log g ~ Normal(log(base · scale), sd)``."""

    sd: float = 0.5
    scale: float = 1.0

    def __post_init__(self):
        if not (self.sd > 0 and self.scale > 0):
            raise ParameterError(f"LogNormalPrior needs sd > 0 and scale > 0, got {self}")

    def distribution(self, base: Tensor) -> dist.Distribution:
        return dist.LogNormal((base * self.scale).log(), torch.full_like(base, self.sd))


@dataclass(frozen=True)
class ScaledUniformPrior(Prior):
    """``g ~ base · Uniform(low, high)``; the paper's targets are ``base · U(0.7, 1.3)``."""

    low: float = 0.7
    high: float = 1.3

    def __post_init__(self):
        if not 0 <= self.low < self.high:
            raise ParameterError(f"ScaledUniformPrior needs 0 ≤ low < high, got {self}")

    def distribution(self, base: Tensor) -> dist.Distribution:
        return dist.Uniform(base * self.low, base * self.high)


@dataclass(frozen=True)
class NormalPrior(Prior):
    """``g ~ Normal(base + shift, sd)`` (units of the parameter; for reversal potentials,
    mV): an additive prior for parameters that may be ≤ 0."""

    sd: float = 10.0
    shift: float = 0.0

    def __post_init__(self):
        if not (self.sd > 0 and abs(self.shift) < float("inf")):
            raise ParameterError(f"NormalPrior needs sd > 0 and a finite shift, got {self}")

    def distribution(self, base: Tensor) -> dist.Distribution:
        return dist.Normal(base + self.shift, torch.full_like(base, self.sd))


def resolve_prior(name: str, spec, base: Tensor) -> dist.Distribution | None:
    """The prior of parameter ``name`` as a distribution with batch shape ``[size]`` (the
    site's: ``[comp]``, ``[region]``)."""
    if spec is None:
        return None
    n = base.shape[-1]
    if isinstance(spec, (LogNormalPrior, ScaledUniformPrior)) and not bool((base > 0).all()):
        raise ParameterError(
            f"the prior of {name!r} scales the cell's values, but they are ≤ 0 somewhere "
            f"({base.tolist()[:4]}); give it an additive prior, e.g. priors={{{name!r}: "
            "NormalPrior(sd=10.0)}"
        )
    if isinstance(spec, Prior):
        d = spec.distribution(base)
    elif isinstance(spec, dist.Distribution):
        if spec.event_shape != ():
            raise ParameterError(
                f"prior of {name!r} has event shape {tuple(spec.event_shape)}; give a "
                "univariate distribution (batch shape () or one per value)"
            )
        if spec.batch_shape not in ((), (n,)):
            raise ParameterError(
                f"prior of {name!r} has batch shape {tuple(spec.batch_shape)}; expected () or ({n},)"
            )
        d = spec.expand((n,)) if spec.batch_shape == () else spec
    else:
        raise ParameterError(
            f"prior of {name!r} is {spec!r}; use LogNormalPrior(), ScaledUniformPrior(), "
            "NormalPrior(), a Pyro distribution, or None for no prior"
        )
    if not bool(torch.all(d.support.check(base))):
        # The base value starts every fit: it must be possible under the prior.
        raise ParameterError(
            f"the cell's {name} = {base.tolist()} lies outside the support of its prior {d}"
        )
    return d


def resolve_priors(
    free: tuple[str, ...],
    priors: Mapping[str, object] | object,
    bases: Mapping[str, Tensor],
    defaults: Mapping[str, Prior] | None = None,
) -> dict[str, dist.Distribution | None]:
    """One distribution (or None) per free parameter; a single spec applies to all. A
    mapping may leave names out: those get ``defaults[name]`` (else ``LogNormalPrior()``)."""
    if isinstance(priors, Mapping):
        unknown = sorted(set(priors) - set(free))
        if unknown:
            raise ParameterError(
                f"priors given for {unknown}, which are not free parameters {list(free)}"
            )
        defaults = defaults or {}
        return {
            k: resolve_prior(k, priors.get(k, defaults.get(k, LogNormalPrior())), bases[k])
            for k in free
        }
    return {k: resolve_prior(k, priors, bases[k]) for k in free}
