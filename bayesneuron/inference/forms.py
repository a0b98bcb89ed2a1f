"""Free parameters by region: how a model's free vector becomes per-compartment values.

A free parameter of a :class:`~.model.NeuronModel` is one of three forms, each a small frozen
object naming the cell parameter it sets (a channel's ``g_na``, ``e_l``, …, or ``cm``,
``ra``):

* :class:`PerCompartment` (a plain name, ``"g_na"``, means this): one value per compartment —
  the Pyro site ``g_na`` ``[comp]`` over the plate ``compartment``; the default, as before.
* :class:`Shared`: one value per :class:`~bayesneuron.morphology.regions.Region` — site
  ``g_k`` ``[region]`` over the plate ``g_k_region`` (coordinates: the region names).
  Compartments outside every region keep the cell's values. ``Shared("g_l")``: one value for
  the whole cell.
* :class:`ExpDistance`: ``g(x) = g0·exp(x/λ)`` in a region, ``x`` the path distance of a
  compartment's centre from the soma's (µm, :attr:`Morphology.distance`); ``g0`` and ``λ`` are
  sites ``<name>_g0`` and ``<name>_lam`` ``[1]`` (plate ``<name>_region``) where free, fixed
  numbers otherwise.

The simulator still receives per-compartment values: :meth:`Parametrisation.expand` gathers
(or evaluates the distance law) differentiably, so gradients flow to the region parameters.

Example:
    >>> free = ["g_na", Shared("g_k", regions=("soma", "dend")), Shared("g_l"),
    ...         ExpDistance("g_ih", region="apical", g0=0.1, lam=300.0)]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bayesneuron.cell import Cell
from bayesneuron.errors import MorphologyError, ParameterError
from bayesneuron.morphology.regions import Region, as_region

__all__ = ["ExpDistance", "Parametrisation", "PerCompartment", "Shared", "Site", "unit_of"]


def unit_of(name: str) -> str:
    """The unit of a cell parameter by its name (``g_*`` mS/cm², ``e_*`` mV, …; ``""``
    where the name does not say)."""
    units = {"cm": "µF/cm²", "ra": "Ω·cm"}
    if name in units:
        return units[name]
    return {"g": "mS/cm²", "e": "mV"}.get(name.split("_", 1)[0] if "_" in name else "", "")


@dataclass(frozen=True)
class Site:
    """One free-parameter site: ``size`` values over the dim ``dim`` (``"compartment"`` or
    ``"<name>_region"``) with coordinate ``labels``; ``base`` ``[size]`` the cell's values
    (the default priors' centre and the fits' first start); ``signed``: a reversal potential
    or other parameter that may be ≤ 0 (its default prior is additive)."""

    name: str
    param: str
    base: np.ndarray
    dim: str
    labels: tuple[str, ...]
    unit: str
    signed: bool = False

    @property
    def size(self) -> int:
        return len(self.labels)


def _site(name, param, base, dim, labels, unit=None) -> Site:
    base = np.asarray(base, dtype=np.float64).reshape(len(labels))
    signed = param.startswith("e_") or bool(np.any(base <= 0))
    return Site(
        name, param, base, dim, tuple(labels), unit_of(param) if unit is None else unit, signed
    )


class Form:
    """A way to set one cell parameter from free values (see the module docstring)."""

    name: str

    def sites(self, cell: Cell) -> list[Site]:
        raise NotImplementedError

    def expander(self, cell: Cell, dtype, device) -> Callable[[Mapping], Tensor]:
        """``values`` (site name → ``[..., size]``) → the parameter ``[..., comp]``."""
        raise NotImplementedError


@dataclass(frozen=True)
class PerCompartment(Form):
    """One value per compartment (the default): site ``name`` ``[comp]``."""

    name: str

    def sites(self, cell):
        labels = [str(i) for i in range(cell.n_comp)]
        return [_site(self.name, self.name, cell.value(self.name), "compartment", labels)]

    def expander(self, cell, dtype, device):
        return lambda values: values[self.name]


@dataclass(frozen=True)
class Shared(Form):
    """One value per region: site ``name`` ``[len(regions)]`` over ``<name>_region``.

    Args:
        name: the cell parameter (``"g_k"``).
        regions: :class:`Region` s or region names (``"soma"``, ``"apical"``, ``"all"``);
            disjoint. Default: the whole cell.
    """

    name: str
    regions: tuple[Region | str, ...] = ("all",)

    def __post_init__(self):
        regs = (self.regions,) if isinstance(self.regions, (str, Region)) else self.regions
        regs = tuple(as_region(r) for r in regs)
        if not regs:
            raise ParameterError(f"Shared({self.name!r}) needs at least one region")
        names = [r.name for r in regs]
        if len(set(names)) != len(names):
            raise ParameterError(f"Shared({self.name!r}) names a region twice: {names}")
        object.__setattr__(self, "regions", regs)

    def _index(self, cell) -> np.ndarray:
        """Region of every compartment ``[comp]`` (``len(regions)`` outside all of them)."""
        idx = np.full(cell.n_comp, len(self.regions))
        for r, reg in enumerate(self.regions):
            comps = np.asarray(reg.indices(cell.morphology))
            twice = comps[idx[comps] < r]
            if twice.size:
                raise ParameterError(
                    f"Shared({self.name!r}): compartment {cell.morphology.names[twice[0]]!r} is "
                    f"in two regions ({self.regions[idx[twice[0]]].name!r} and {reg.name!r}); "
                    "regions of one parameter must be disjoint"
                )
            idx[comps] = r
        return idx

    def sites(self, cell):
        idx, val = self._index(cell), cell.value(self.name)
        base = [val[idx == r].mean() for r in range(len(self.regions))]
        labels = [r.name for r in self.regions]
        return [_site(self.name, self.name, base, f"{self.name}_region", labels)]

    def expander(self, cell, dtype, device):
        idx = self._index(cell)
        inside = torch.as_tensor(idx < len(self.regions), device=device)
        gather = torch.as_tensor(np.minimum(idx, len(self.regions) - 1), device=device)
        base = torch.tensor(cell.value(self.name), dtype=dtype, device=device)

        def expand(values):
            return torch.where(inside, values[self.name].index_select(-1, gather), base)

        return expand


@dataclass(frozen=True)
class ExpDistance(Form):
    """``g(x) = g0·exp(x/λ)`` in ``region`` (``x`` µm from the soma along the tree).

    Args:
        name: the cell parameter (``"g_ih"``).
        region: a :class:`Region` or region name; outside it the cell's values stay.
        g0: the value at the soma (``x = 0``), in the parameter's unit.
        lam: the length constant λ in µm (< 0: decays with distance).
        free: which of ``"g0"``, ``"lam"`` are free (sites ``<name>_g0``, ``<name>_lam``);
            the others stay at the values given. Their default priors are log-normal around
            ``g0`` and ``lam`` (a negative ``lam``: ``NormalPrior(sd=10)`` µm; give your own).
    """

    name: str
    region: Region | str
    g0: float
    lam: float
    free: tuple[str, ...] = ("g0", "lam")

    def __post_init__(self):
        object.__setattr__(self, "region", as_region(self.region))
        free = (self.free,) if isinstance(self.free, str) else tuple(self.free)
        bad = [k for k in free if k not in ("g0", "lam")]
        if bad or not free or len(set(free)) != len(free):
            raise ParameterError(
                f"ExpDistance({self.name!r}): free = {self.free!r}; name 'g0', 'lam' or both"
            )
        if not (np.isfinite(self.g0) and np.isfinite(self.lam) and self.lam != 0):
            raise ParameterError(
                f"ExpDistance({self.name!r}): g0 = {self.g0} and lam = {self.lam} µm must be "
                "finite, lam ≠ 0"
            )
        object.__setattr__(self, "free", free)

    def _distance(self, cell) -> tuple[np.ndarray, np.ndarray]:
        """Inside the region ``[comp]`` (bool) and the distance there (0 outside, µm)."""
        if cell.morphology.distance is None:
            raise MorphologyError(
                f"ExpDistance({self.name!r}) needs path distances: build the cell from sections "
                "(from_sections, load_swc); an abstract cell has no lengths"
            )
        inside = np.zeros(cell.n_comp, dtype=bool)
        inside[list(self.region.indices(cell.morphology))] = True
        return inside, np.where(inside, cell.morphology.distance, 0.0)

    def sites(self, cell):
        self._distance(cell)
        units = {"g0": unit_of(self.name), "lam": "µm"}
        return [
            _site(
                f"{self.name}_{k}",
                self.name,
                [getattr(self, k)],
                f"{self.name}_region",
                [self.region.name],
                units[k],
            )
            for k in self.free
        ]

    def expander(self, cell, dtype, device):
        inside, x = self._distance(cell)
        inside = torch.as_tensor(inside, device=device)
        x = torch.tensor(x, dtype=dtype, device=device)
        base = torch.tensor(cell.value(self.name), dtype=dtype, device=device)

        def part(values, k):
            key = f"{self.name}_{k}"
            return values[key][..., :1] if key in values else getattr(self, k)

        def expand(values):
            g = part(values, "g0") * torch.exp(x / part(values, "lam"))
            return torch.where(inside, g, base)

        return expand


def as_form(spec) -> Form:
    """A :class:`Form` from itself or a parameter name (per compartment)."""
    if isinstance(spec, Form):
        return spec
    if isinstance(spec, str):
        return PerCompartment(spec)
    raise ParameterError(
        f"free parameter {spec!r}: give a name ('g_na'), Shared(...), ExpDistance(...) or "
        "PerCompartment(...)"
    )


class Parametrisation:
    """The free parameters of a model: its sites and their expansion to the cell's
    per-compartment parameters (:mod:`.forms`).

    Args:
        cell: the cell.
        free: names and :class:`Form` s, one per cell parameter.
        dtype, device: of the expansion's constants.
    """

    def __init__(self, cell: Cell, free: Sequence, dtype=torch.float64, device="cpu"):
        self.forms = tuple(as_form(f) for f in free)
        if not self.forms:
            raise ParameterError("free is empty: name at least one parameter to infer")
        targets = [f.name for f in self.forms]
        unknown = [k for k in targets if k not in cell.all_param_names]
        if unknown:
            raise ParameterError(
                f"free parameters {unknown} are not parameters of this cell; it has "
                f"{list(cell.all_param_names)}"
            )
        if len(set(targets)) != len(targets):
            raise ParameterError(f"free lists a parameter twice: {targets}")
        self.targets = tuple(targets)
        self.sites = tuple(s for f in self.forms for s in f.sites(cell))
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names) or set(names) & (set(cell.all_param_names) - set(targets)):
            raise ParameterError(f"free parameters give clashing site names {names}")
        self.per_compartment = all(isinstance(f, PerCompartment) for f in self.forms)
        self._expand = [f.expander(cell, dtype, device) for f in self.forms]

    @property
    def names(self) -> tuple[str, ...]:
        """Site names, in the free vector's order."""
        return tuple(s.name for s in self.sites)

    def site(self, name: str) -> Site:
        return next(s for s in self.sites if s.name == name)

    def expand(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Site values ``[..., size]`` → cell parameters ``[..., comp]`` (differentiable; the
        identity for per-compartment sites)."""
        return {k: f(values) for k, f in zip(self.targets, self._expand)}
