"""Regions: named sets of compartments, the places a parameter shared by region applies to.

A :class:`Region` is a name plus a rule, resolved against a :class:`Morphology`:

* by SWC type (the default: only a name) — ``"soma"``, ``"axon"``, ``"basal"`` (alias
  ``"dend"``), ``"apical"`` (alias ``"apic"``), any other section base name (``"dend_5"``), or
  ``"all"``; the compartments whose section (``"apic[3]"`` of ``"apic[3](0.5)"``) has that
  base name, as :func:`~.swc.read_swc_sections` names them (NEURON's Import3d names);
* a section list — ``sections=("apic[3]", "apic[7]")``, also base names (``"apic"``);
* a compartment list — ``compartments=(0, "dend[2](0.5)")``: indices or names.

Example:
    >>> from bayesneuron.reference.cells import l23_cell
    >>> len(Region("apical").indices(l23_cell().morphology))
    81
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bayesneuron.errors import MorphologyError
from bayesneuron.morphology.tree import Morphology

__all__ = ["Region", "SWC_TYPES", "as_region", "section_of"]

#: Region names that select an SWC type, and the section base name NEURON gives it.
SWC_TYPES = {
    "soma": "soma",
    "axon": "axon",
    "basal": "dend",
    "dend": "dend",
    "apical": "apic",
    "apic": "apic",
}


def section_of(name: str) -> str | None:
    """The section of a compartment name (``"apic[3]"`` of ``"apic[3](0.5)"``), or None for
    an abstract cell's names (``"0"``)."""
    head, sep, tail = name.rpartition("(")
    return head if sep and tail.endswith(")") else None


def _base(section: str) -> str:
    return section.split("[", 1)[0]


@dataclass(frozen=True)
class Region:
    """A named set of compartments (module docstring).

    Args:
        name: the region's label (coordinates, tables, ArviZ); with no list given, an SWC
            type or ``"all"``.
        sections: section names (``"apic[3]"``) or base names (``"apic"``) it covers.
        compartments: compartment indices or names it covers.
    """

    name: str
    sections: tuple[str, ...] | None = None
    compartments: tuple[int | str, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise MorphologyError(f"a region needs a non-empty name, got {self.name!r}")
        for what in ("sections", "compartments"):
            val = getattr(self, what)
            if val is None:
                continue
            if isinstance(val, (str, int)):
                val = (val,)
            object.__setattr__(self, what, tuple(val))
        if self.sections is not None and self.compartments is not None:
            raise MorphologyError(f"region {self.name!r}: give sections or compartments, not both")

    def indices(self, morph: Morphology) -> tuple[int, ...]:
        """The region's compartments in ``morph``, sorted; a :class:`MorphologyError` says why
        there are none."""
        if self.compartments is not None:
            return morph.indices(self.compartments)
        if self.sections is None and self.name == "all":
            return tuple(range(morph.n_comp))
        secs = [section_of(n) for n in morph.names]
        if any(s is None for s in secs):
            raise MorphologyError(
                f"region {self.name!r}: this cell's compartments have no sections (an abstract "
                "cell, names like '0', '1'); give the region compartments=[...] instead"
            )
        wanted = self.sections or (SWC_TYPES.get(self.name, self.name),)
        out = []
        for w in wanted:
            hit = [i for i, s in enumerate(secs) if s == w or ("[" not in w and _base(s) == w)]
            if not hit:
                raise MorphologyError(
                    f"region {self.name!r}: no section named {w!r} in this cell; its section "
                    f"types are {sorted({_base(s) for s in secs})} (regions by SWC type: "
                    f"{sorted(SWC_TYPES)}, or 'all'), its sections e.g. {sorted(set(secs))[:6]}"
                )
            out += hit
        return tuple(sorted(set(out)))


def as_region(spec: Region | str | Sequence) -> Region:
    """A :class:`Region` from itself or a name (``"apical"``)."""
    if isinstance(spec, Region):
        return spec
    if isinstance(spec, str):
        return Region(spec)
    raise MorphologyError(f"{spec!r} is not a region: give Region(...) or a name like 'apical'")
