"""NEURON-style cable geometry: sections of cylinders or 3-D points → a :class:`Morphology`.

A :class:`Section` is an unbranched cable, either a cylinder (``length``, ``diam``) or a list
of 3-D points ``(x, y, z, diam)`` as NEURON's ``pt3dadd``. :func:`from_sections` cuts every
section into ``nseg`` segments and computes, exactly as NEURON does, each segment's membrane
area and the axial resistance of its two halves. Every segment becomes one compartment.

NEURON's rules, reproduced here (checked against ``seg.area()`` and ``seg.ri()``):

* **Cylinders.** A segment of length ``dx = L/nseg`` has area ``π·diam·dx`` and each half has
  resistance ``0.01·Ra·(dx/2) / (π·diam²/4)`` MΩ (µm, Ω·cm).
* **3-D points.** Points are stored in single precision (as NEURON does), ``L`` is the summed
  distance between consecutive points, and the diameter varies linearly with arc length between
  points. Each half-segment is integrated piece by piece between the points and half-segment
  boundaries it contains: a piece of length ``h`` from diameter ``d1`` to ``d2`` is a frustum
  with lateral area ``π/2·(d1 + d2)·sqrt(h² + ((d2 − d1)/2)²)`` and resistance
  ``0.04·Ra·h / (π·d1·d2)`` MΩ (exact for a linear taper). Two points at one position with
  different diameters therefore add the annulus between them to the area.
* **Tree.** The child's first segment connects to its parent's node at ``parent_x``: the
  centre of the parent segment holding ``x`` (``0 < x < 1``), or a zero-area end node
  (``x = 1``, or ``x = 0`` on the root section). The conductance between a segment centre and
  the node before it is ``1 / (sum of the half-segment resistances between them)``; end nodes
  with children become the Morphology's internal junctions, end nodes without children carry
  no current and are dropped.

Units: µm, Ω·cm, µF/cm² in; areas in cm², conductances in mS out (``G = 1e-3 / R[MΩ]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bayesneuron.errors import MorphologyError
from bayesneuron.morphology._cable import cable_facts
from bayesneuron.morphology.tree import Morphology, find_cycle

__all__ = ["Section", "from_sections", "section_nseg", "segment_geometry"]

_UM2_TO_CM2 = 1e-8


@dataclass(frozen=True, eq=False)
class Section:
    """An unbranched cable, as a NEURON section.

    Give either ``length`` and ``diam`` (a cylinder) or ``points`` (NEURON's pt3d).

    Args:
        name: section name, used in compartment names (``"dend[2](0.5)"``).
        parent: index of the parent section in the list; ``None`` for the single root.
        parent_x: where on the parent the section's 0-end attaches, in [0, 1] (NEURON's
            ``child.connect(parent(x))``); 0 only on the root section.
        length: cylinder length in µm.
        diam: cylinder diameter in µm.
        points: 3-D points ``[n, 4]`` (x, y, z, diam in µm), ``n ≥ 2``.
        nseg: number of segments; ``None`` leaves it to :func:`from_sections`.

    Example:
        >>> soma = Section("soma", None, length=20.0, diam=20.0)
        >>> dend = Section("dend", 0, 1.0, length=200.0, diam=2.0, nseg=5)
    """

    name: str
    parent: int | None = None
    parent_x: float = 1.0
    length: float | None = None
    diam: float | None = None
    points: np.ndarray | None = None
    nseg: int | None = None

    def __post_init__(self):
        name = self.name
        if not isinstance(name, str) or not name:
            raise MorphologyError(f"section name {name!r} must be a non-empty string")
        p = self.parent
        if p is not None and (
            isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer))
        ):
            raise MorphologyError(
                f"section {name!r}: parent {p!r} must be the index of the parent section "
                "(an int) or None for the root"
            )
        x = self.parent_x
        if not (isinstance(x, (int, float, np.number)) and 0.0 <= float(x) <= 1.0):
            raise MorphologyError(
                f"section {name!r}: parent_x = {x!r} must lie in [0, 1] "
                "(0.5 = middle of the parent, 1 = its far end)"
            )
        object.__setattr__(self, "parent_x", float(x))
        if self.nseg is not None and (
            isinstance(self.nseg, (bool, np.bool_))
            or not isinstance(self.nseg, (int, np.integer))
            or self.nseg < 1
        ):
            raise MorphologyError(
                f"section {name!r}: nseg = {self.nseg!r} must be a positive int (or None)"
            )
        if self.points is None:
            self._check_cylinder()
        else:
            self._check_points()

    def _check_cylinder(self):
        name = self.name
        if self.length is None or self.diam is None:
            raise MorphologyError(
                f"section {name!r} needs either length and diam (a cylinder, µm) or points"
            )
        for what in ("length", "diam"):
            v = getattr(self, what)
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise MorphologyError(f"section {name!r}: {what} = {v!r} is not a number") from None
            if not (math.isfinite(v) and v > 0):
                raise MorphologyError(f"section {name!r}: {what} = {v} µm must be finite and > 0")
            object.__setattr__(self, what, v)

    def _check_points(self):
        name = self.name
        if self.length is not None or self.diam is not None:
            raise MorphologyError(
                f"section {name!r} has both points and length/diam; give one or the other"
            )
        try:
            pts = np.array(self.points, dtype=np.float64)
        except (TypeError, ValueError):
            raise MorphologyError(
                f"section {name!r}: points must be a numeric [n, 4] array"
            ) from None
        if pts.ndim != 2 or pts.shape[1] != 4 or pts.shape[0] < 2:
            raise MorphologyError(
                f"section {name!r}: points have shape {pts.shape}; expected [n, 4] "
                "(x, y, z, diam in µm) with n ≥ 2"
            )
        bad = np.flatnonzero(~np.isfinite(pts).all(axis=1))
        if bad.size:
            raise MorphologyError(
                f"section {name!r}: point {int(bad[0])} is not finite: {pts[bad[0]]}"
            )
        bad = np.flatnonzero(pts[:, 3] <= 0)
        if bad.size:
            i = int(bad[0])
            raise MorphologyError(
                f"section {name!r}: point {i} has diameter {pts[i, 3]} µm; diameters must be > 0"
            )
        if _arc_lengths(pts)[-1] <= 0:
            raise MorphologyError(
                f"section {name!r} has zero length: all its points lie at {pts[0, :3]}"
            )
        pts.setflags(write=False)
        object.__setattr__(self, "points", pts)

    @property
    def L(self) -> float:  # noqa: N802  (NEURON's name)
        """Section length in µm (for points: arc length through them, single precision)."""
        if self.points is None:
            return self.length
        return float(_arc_lengths(self.points)[-1])


def _single(pts: np.ndarray) -> np.ndarray:
    # NEURON stores 3-D points as C floats.
    return pts.astype(np.float32)


def _arc_lengths(pts: np.ndarray) -> np.ndarray:
    """Cumulative arc length ``[n]`` (µm) through single-precision points, as NEURON."""
    p32 = _single(pts[:, :3])
    step = np.diff(p32, axis=0).astype(np.float64)  # float differences, as in C
    return np.concatenate([[0.0], np.cumsum(np.sqrt((step**2).sum(axis=1)))])


def section_nseg(
    section: Section,
    ra: float,
    cm: float,
    nseg: int = 1,
    d_lambda: float | None = None,
    d_lambda_freq: float = 100.0,
) -> int:
    """Number of segments of one section.

    The section's own ``nseg`` wins; else, with ``d_lambda``, NEURON's d_lambda rule
    ``nseg = int((L / (d_lambda·λ_f) + 0.9) / 2)·2 + 1`` with the AC length constant
    ``λ_f`` at ``d_lambda_freq`` Hz (stdlib ``lambda_f``: for 3-D points the length in units of
    λ is summed piece by piece, ``Σ Δs/sqrt(d1 + d2) · sqrt(2)·1e-5·sqrt(4π·f·Ra·cm)``); else
    ``nseg``.
    """
    if section.nseg is not None:
        return int(section.nseg)
    if d_lambda is None:
        return int(nseg)
    L = section.L
    scale = 1e-5 * math.sqrt(4.0 * math.pi * d_lambda_freq * ra * cm)
    if section.points is None:
        lam_f = 1e5 * math.sqrt(section.diam / (4.0 * math.pi * d_lambda_freq * ra * cm))
    else:
        arc = _arc_lengths(section.points)
        d = _single(section.points[:, 3]).astype(np.float64)
        in_lambda = float(np.sum(np.diff(arc) / np.sqrt(d[:-1] + d[1:]))) * math.sqrt(2.0) * scale
        lam_f = L / in_lambda
    return int((L / (d_lambda * lam_f) + 0.9) / 2) * 2 + 1


def segment_geometry(section: Section, nseg: int, ra: float) -> tuple[np.ndarray, np.ndarray]:
    """Membrane area and half-segment axial resistances of one section, as NEURON computes them.

    Args:
        section: the section.
        nseg: number of segments.
        ra: axial resistivity in Ω·cm.

    Returns:
        ``(area, r_half)``: area per segment ``[nseg]`` in µm², and resistance of the left and
        right half of every segment ``[nseg, 2]`` in MΩ.
    """
    if section.points is None:
        dx = section.length / nseg
        area = np.full(nseg, math.pi * section.diam * dx)
        r = 0.01 * ra * (dx / 2.0) / (math.pi * section.diam**2 / 4.0)
        return area, np.full((nseg, 2), r)
    return _frustum_geometry(section.points, nseg, ra)


def _frustum_geometry(points: np.ndarray, nseg: int, ra: float) -> tuple[np.ndarray, np.ndarray]:
    arc = _arc_lengths(points).tolist()
    diam = _single(points[:, 3]).astype(np.float64).tolist()
    n_pts = len(arc)
    half = arc[-1] / nseg / 2.0
    area = np.zeros(nseg)
    r_half = np.zeros((nseg, 2))
    j = 0  # current point interval [arc[j], arc[j+1]]
    s0, d0 = arc[0], diam[0]
    for k in range(2 * nseg):
        s_end = (k + 1) * half
        a_sum = r_sum = 0.0
        while True:
            # Walk over points up to the half-segment boundary; the last interval is never
            # left (a boundary a rounding error past the last point is extrapolated).
            if j + 2 < n_pts and arc[j + 1] <= s_end:
                j += 1
                s1, d1, done = arc[j], diam[j], False
            else:
                span = arc[j + 1] - arc[j]
                frac = 1.0 if abs(span) < 1e-10 else (s_end - arc[j]) / span
                s1, d1, done = s_end, (1.0 - frac) * diam[j] + frac * diam[j + 1], True
            h = max(s1 - s0, 1e-15)
            r_sum += h / (d0 * d1)
            a_sum += (d0 + d1) * math.sqrt(h * h + (0.5 * (d1 - d0)) ** 2)
            s0, d0 = s1, d1
            if done:
                break
        area[k // 2] += a_sum * 0.5 * math.pi
        r_half[k // 2, k % 2] = r_sum * ra * 0.04 / math.pi
    return area, r_half


def _per_section(what: str, value, sections: Sequence[Section], unit: str) -> np.ndarray:
    n = len(sections)
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise MorphologyError(
            f"{what} = {value!r} must be a number or one number per section"
        ) from None
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise MorphologyError(
            f"{what} has shape {arr.shape}; give a scalar or one value per section ({n},)"
        )
    bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))
    if bad.size:
        i = int(bad[0])
        raise MorphologyError(
            f"section {sections[i].name!r}: {what} = {arr[i]} {unit} must be finite and > 0"
        )
    return arr


def _check_topology(sections: Sequence[Section]) -> int:
    """Validate parents; return the index of the root section."""
    n = len(sections)
    roots = [i for i, s in enumerate(sections) if s.parent is None]
    for s in sections:
        if s.parent is not None and not 0 <= s.parent < n:
            raise MorphologyError(
                f"section {s.name!r} names parent {s.parent}, which does not exist "
                f"(valid: 0–{n - 1}, or None for the root)"
            )
    if len(roots) != 1:
        if not roots:
            raise MorphologyError(
                "no root section: every section has a parent, so the sections form a cycle; "
                "set parent=None on the soma (or whichever section is the root)"
            )
        names = [sections[i].name for i in roots]
        raise MorphologyError(
            f"{len(roots)} root sections ({names[:8]}) have parent=None; a neuron is one tree — "
            "give all but one of them a parent"
        )
    cyc = find_cycle([-1 if s.parent is None else s.parent for s in sections], roots[0])
    if cyc:
        raise MorphologyError(
            f"sections {[sections[k].name for k in cyc][:8]} form a cycle (each is the parent "
            "of the next); a neuron must be a tree: break the cycle"
        )
    for s in sections:
        if s.parent is not None and s.parent_x == 0.0 and s.parent != roots[0]:
            par = sections[s.parent]
            raise MorphologyError(
                f"section {s.name!r} connects at x = 0 of {par.name!r}, which is not the root "
                f"section; the 0-end of a non-root section is where it attaches to its parent, "
                f"so connect {s.name!r} to {par.name!r}'s parent at {par.parent_x} instead"
            )
    return roots[0]


def from_sections(
    sections: Sequence[Section],
    ra: float | Sequence[float] = 35.4,
    cm: float | Sequence[float] = 1.0,
    nseg: int = 1,
    d_lambda: float | None = None,
    d_lambda_freq: float = 100.0,
) -> Morphology:
    """Compartmentalise NEURON-style sections into a geometric :class:`Morphology`.

    Segments per section: the section's own ``nseg`` if set; else the d_lambda rule if
    ``d_lambda`` is given (see :func:`section_nseg`); else ``nseg``. Compartments are numbered
    in section order, then segment order, and named ``f"{section}({x:.4g})"`` with ``x`` the
    segment centre. Zero-area end nodes where children attach become internal junctions
    (named ``"soma(1)"``, ``"soma(0)"``).

    Args:
        sections: the sections; ``Section.parent`` indexes this list; one root.
        ra: axial resistivity in Ω·cm, scalar or one per section.
        cm: specific membrane capacitance in µF/cm², scalar or one per section.
        nseg: default number of segments per section.
        d_lambda: maximum segment length as a fraction of the AC length constant (e.g. 0.1).
        d_lambda_freq: frequency in Hz of that length constant (NEURON's default 100).

    Returns:
        A geometric Morphology (areas cm², axial conductances mS).

    Raises:
        MorphologyError: naming the section for a bad length, diameter, Ra, cm or nseg, a
            parent that does not exist, several roots, a cycle, or ``x = 0`` on a non-root.

    Example:
        >>> m = from_sections([Section("soma", None, length=20.0, diam=20.0),
        ...                    Section("dend", 0, 1.0, length=200.0, diam=2.0)], ra=100.0)
        >>> m.names, m.n_nodes
        (('soma(0.5)', 'dend(0.5)'), 3)
    """
    sections = _checked_sections(sections, nseg, d_lambda, d_lambda_freq)
    ras = _per_section("Ra", ra, sections, "Ω·cm")
    cms = _per_section("cm", cm, sections, "µF/cm²")
    root = _check_topology(sections)

    nsegs = [
        section_nseg(s, ras[i], cms[i], nseg, d_lambda, d_lambda_freq)
        for i, s in enumerate(sections)
    ]
    first = np.concatenate([[0], np.cumsum(nsegs)])  # first compartment of every section
    n_comp = int(first[-1])
    geoms = [segment_geometry(s, nsegs[i], ras[i]) for i, s in enumerate(sections)]

    # Zero-area end nodes that have children become junctions: (section, end).
    ends = sorted(
        {
            (s.parent, s.parent_x)
            for s in sections
            if s.parent is not None and s.parent_x in (0.0, 1.0)
        }
    )
    junction = {key: n_comp + k for k, key in enumerate(ends)}
    n_nodes = n_comp + len(ends)

    comp_names, area, cm_comp, parents, r_edge = _segments(
        sections, nsegs, geoms, cms, first, junction, n_nodes
    )
    r_edge[first[root]] = np.inf  # the root compartment has no parent edge
    axial = 1e-3 / r_edge
    axial[first[root]] = 0.0
    junction_names = tuple(f"{sections[p].name}({x:g})" for p, x in ends)
    return Morphology(
        names=tuple(comp_names),
        parents=parents,
        axial=axial,
        area=area,
        cm=cm_comp,
        geometric=True,
        _junction_names=junction_names,
        **cable_facts(sections, nsegs, geoms, ras, first, junction, root),
    )


def _checked_sections(sections, nseg, d_lambda, d_lambda_freq) -> list[Section]:
    """:func:`from_sections`' argument checks; the sections as a list."""
    sections = list(sections)
    if not sections:
        raise MorphologyError("no sections given; a morphology needs at least one")
    for i, s in enumerate(sections):
        if not isinstance(s, Section):
            raise MorphologyError(f"sections[{i}] is {type(s).__name__}, not a geometry.Section")
    names = [s.name for s in sections]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise MorphologyError(f"section names must be unique; repeated: {dup[:5]}")
    if isinstance(nseg, (bool, np.bool_)) or not isinstance(nseg, (int, np.integer)) or nseg < 1:
        raise MorphologyError(f"nseg = {nseg!r} must be a positive int")
    for what, v in (("d_lambda", d_lambda), ("d_lambda_freq", d_lambda_freq)):
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise MorphologyError(f"{what} = {v!r} must be a finite number > 0")
    return sections


def _segments(sections, nsegs, geoms, cms, first, junction, n_nodes):
    """Per compartment: names, areas (cm²), cm; per node: parent and edge resistance (MΩ)."""
    n_comp = int(first[-1])
    comp_names, area, cm_comp = [], np.empty(n_comp), np.empty(n_comp)
    parents = np.full(n_nodes, -1, dtype=np.int64)
    r_edge = np.ones(n_nodes)  # MΩ; root entry unused
    for i, s in enumerate(sections):
        a, r = geoms[i]
        c0, n = int(first[i]), nsegs[i]
        for k in range(n):
            comp_names.append(f"{s.name}({(k + 0.5) / n:.4g})")
        area[c0 : c0 + n] = a * _UM2_TO_CM2
        cm_comp[c0 : c0 + n] = cms[i]
        # segment k > 0 hangs on segment k-1 through two half segments
        parents[c0 + 1 : c0 + n] = np.arange(c0, c0 + n - 1)
        r_edge[c0 + 1 : c0 + n] = r[:-1, 1] + r[1:, 0]
        # first segment: only its own left half (the parent node is a point)
        if s.parent is not None:
            p = s.parent
            if s.parent_x in (0.0, 1.0):
                parents[c0] = junction[(p, s.parent_x)]
            else:
                parents[c0] = first[p] + min(int(s.parent_x * nsegs[p]), nsegs[p] - 1)
        r_edge[c0] = r[0, 0]
    for (p, x), node in junction.items():
        a, r = geoms[p]
        if x == 1.0:
            parents[node], r_edge[node] = first[p] + nsegs[p] - 1, r[-1, 1]
        else:
            parents[node], r_edge[node] = first[p], r[0, 0]
    return comp_names, area, cm_comp, parents, r_edge
