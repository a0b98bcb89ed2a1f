"""Stimulation/recording designs: which compartments receive current, which are recorded.

A :class:`Design` is the experimental choice whose identifiability bayesneuron measures. Sites are
compartment indices (negative counts from the end, as in the paper: ``-1`` is the distal end) or
names; ``None`` means every compartment. Labels follow the paper: ``"all|[0,-1]"`` is stim all,
record soma and distal end.

Example:
    >>> from bayesneuron import Design, paper_chain
    >>> d = Design(stim=[0, -1])
    >>> d.label, d.stim_index(paper_chain()), d.rec_index(paper_chain())
    ('[0,-1]|all', (0, 5), (0, 1, 2, 3, 4, 5))
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bayesneuron.errors import DesignError, MorphologyError
from bayesneuron.morphology.tree import Morphology

__all__ = ["Design", "design_grid", "format_sites", "parse_sites", "row_label", "split_labels"]

Sites = tuple[int | str, ...] | None


def _sites(value, what: str) -> Sites:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "all":
        return None
    if isinstance(value, (str, int, np.integer)):
        value = [value]
    try:
        sites = tuple(int(v) if isinstance(v, (int, np.integer)) else v for v in value)
    except TypeError:
        raise DesignError(
            f"{what} sites {value!r} must be a list of compartments or 'all'"
        ) from None
    if not sites:
        raise DesignError(
            f"the design {what}s no compartment: give at least one site, or None/'all' for every one"
        )
    for s in sites:
        if isinstance(s, bool) or not isinstance(s, (int, str)):
            raise DesignError(f"{what} site {s!r} must be an int index or a compartment name")
    return sites


def _balanced(name: str) -> bool:
    """Brackets in a compartment name (``dend[0](0.5)``) open and close in order."""
    stack = []
    for c in name:
        if c in "[(":
            stack.append("])"["[(".index(c)])
        elif c in "])" and (not stack or stack.pop() != c):
            return False
    return not stack


def row_label(row) -> str:
    """The design label ``stim|rec`` of a results-table row (a mapping with the ``stim`` and
    ``rec`` columns of ``designs.csv``, ``table.csv``, …, written as :attr:`Design.label`)."""
    return f"{row['stim']}|{row['rec']}"


def split_labels(text: str) -> list[str]:
    """``"all|all,[0,-1]|all"`` → ``["all|all", "[0,-1]|all"]``: a comma-separated list of
    design labels (commas inside brackets stay); parts are stripped, empty ones kept (the
    caller says whether that is an error)."""
    parts, depth, cur = [], 0, ""
    for c in text:
        depth += (c == "[") - (c == "]")
        if c == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += c
    return [*parts, cur.strip()]


def format_sites(sites: Sites) -> str:
    """``None`` → ``"all"``, ``(0, -1)`` → ``"[0,-1]"`` (the paper's and the tables' spelling)."""
    if sites is None:
        return "all"
    return "[" + ",".join(str(s) for s in sites) + "]"


def parse_sites(text: str) -> Sites:
    """Inverse of :func:`format_sites`: ``"all"``, ``"[0,-1]"``, ``"0,-1"`` or ``"[soma]"``."""
    t = text.strip()
    if t.lower() in ("all", "none"):
        return None
    body = t[1:-1] if t.startswith("[") and t.endswith("]") else t
    out: list[int | str] = []
    for part in body.split(","):
        part = part.strip().strip("'\"")
        if not part:
            continue
        try:
            val = ast.literal_eval(part)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            val = part  # a compartment name
        if isinstance(val, str) and not _balanced(val):
            raise DesignError(
                f"site list {text!r} is malformed; write 'all', '[0,-1]' or '[soma,dend]'"
            )
        if isinstance(val, bool) or not isinstance(val, (int, str)):
            raise DesignError(
                f"site {part!r} in {text!r} must be an int index or a compartment name"
            )
        out.append(val)
    return _sites(out, "listed")


@dataclass(frozen=True)
class Design:
    """Where current is injected (``stim``) and where voltage is recorded (``rec``).

    Args:
        stim: stimulated compartments (indices or names), ``None``/``"all"`` for every one.
        rec: recorded compartments, likewise.
    """

    stim: Sites = None
    rec: Sites = None

    def __post_init__(self):
        object.__setattr__(self, "stim", _sites(self.stim, "stimulate"))
        object.__setattr__(self, "rec", _sites(self.rec, "record"))

    @property
    def label(self) -> str:
        return f"{format_sites(self.stim)}|{format_sites(self.rec)}"

    @classmethod
    def from_label(cls, label: str) -> Design:
        """``Design.from_label("[0,-1]|all")``."""
        if label.count("|") != 1:
            raise DesignError(
                f"design label {label!r} must look like 'stim|rec', e.g. 'all|[0,-1]'"
            )
        s, r = label.split("|")
        return cls(parse_sites(s), parse_sites(r))

    def _resolve(self, sites: Sites, morph: Morphology, what: str) -> tuple[int, ...]:
        try:
            return morph.indices(sites)
        except MorphologyError as e:
            raise DesignError(f"design {self.label}: {what} {e}") from None

    def stim_index(self, morph: Morphology) -> tuple[int, ...]:
        """Sorted stimulated compartment indices on ``morph``."""
        return self._resolve(self.stim, morph, "stimulated")

    def rec_index(self, morph: Morphology) -> tuple[int, ...]:
        """Sorted recorded compartment indices on ``morph``."""
        return self._resolve(self.rec, morph, "recorded")

    def __str__(self) -> str:
        return self.label


def design_grid(site_sets: Sequence[Sites], full: bool = True) -> list[Design]:
    """Every ``stim × rec`` combination of ``site_sets``; ``full=False`` keeps only those where
    one side is ``None`` (all), as the paper did."""
    out = [Design(s, r) for s in site_sets for r in site_sets]
    return out if full else [d for d in out if d.stim is None or d.rec is None]
