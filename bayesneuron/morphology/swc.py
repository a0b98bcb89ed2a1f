"""SWC morphology files → NEURON-style sections, split into sections as NEURON's Import3d does.

SWC is a text format with one point per line: ``id type x y z radius parent`` (µm; type 1 soma,
2 axon, 3 basal dendrite, 4 apical dendrite; parent ``-1`` for the root); lines starting with
``#`` are comments. :func:`read_swc_sections` turns the points into :class:`Section` objects
with the rules of NEURON's ``Import3d_SWC_read`` (see its docstring), so a file gives the same
sections, names, connections and 3-D points in bayesneuron and in NEURON; :func:`load_swc`
compartmentalises them with :func:`bayesneuron.geometry.from_sections`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from bayesneuron.errors import MorphologyError
from bayesneuron.morphology.geometry import Section, from_sections
from bayesneuron.morphology.tree import Morphology

__all__ = ["load_swc", "read_swc_sections"]

_TYPE_NAMES = {1: "soma", 2: "axon", 3: "dend", 4: "apic"}


@dataclass(frozen=True)
class _Points:
    """SWC points sorted by id; ``parent`` holds row indices (-1 for the root)."""

    ids: np.ndarray
    types: np.ndarray
    xyzd: np.ndarray  # [n, 4]: x, y, z, diameter (µm)
    parent: np.ndarray
    lines: np.ndarray
    source: str

    def where(self, i: int) -> str:
        return f"{self.source} line {self.lines[i]} (id {self.ids[i]})"


def read_swc_sections(path) -> list[Section]:
    """Read an SWC file into NEURON-style sections (3-D points, µm), as Import3d would.

    Rules (those of NEURON's ``Import3d_SWC_read`` + ``Import3d_GUI.instantiate``):

    * Points are taken in id order. A section is an unbranched run of points of one type in
      which each point directly follows its parent in id order; a branch point, a change of
      type or a jump in id order ends it. Soma (type 1) points stay in one section even where
      dendrites branch off them. Sections are ordered by their first point and named by type
      (``soma``, ``axon``, ``dend``, ``apic``, ``dend_<type>``), with an index ``[k]`` when
      a type has several sections (``dend[0]``, ``dend[1]``, …).
    * A child section's first 3-D point repeats its parent point (position and diameter) and
      it attaches at the parent's far end, ``parent(1)``. Children of the root's first point
      attach at ``root(0)``.
    * Soma: a child of a soma section attaches at ``soma(0.5)`` when its parent point is not
      the soma's last point, at ``soma(1)`` when it is. A dendrite (non-soma section) attaching
      at ``soma(0.5)`` is joined by a wire: it starts at its own first point, and the soma point
      is not part of it (no membrane inside the soma). A dendrite that repeats a soma point
      takes its own first diameter there. A soma given as one point, or as three points
      (neuromorpho.org's convention: two points at ±r around the root, equal diameters,
      length = diameter, nothing attached to them), becomes a cylinder with length = diameter
      centred on the root; every dendrite then attaches at ``soma(0.5)``.
    * A branch that leaves the first point of a dendrite that itself leaves the soma attaches
      where that dendrite attaches (Import3d's "connect to the proximal end").

    For the bundled human L2/3 cell (3-point soma chained 1-2-3): 10 trunks attach at
    ``soma(0.5)`` by wires, the axon at ``soma(1)``.

    Args:
        path: an SWC file (path or an object with ``read_text()``).

    Returns:
        The sections; ``Section.parent`` indexes this list.

    Raises:
        MorphologyError: naming the line and id for a wrong column count, a non-numeric field,
            a duplicate id, a missing parent, several roots, a cycle, a non-positive radius,
            or an empty file.
    """
    return _sections(_parse(path))


def load_swc(
    path,
    ra: float = 35.4,
    cm: float = 1.0,
    nseg: int = 1,
    d_lambda: float | None = None,
) -> Morphology:
    """Load an SWC file as a geometric :class:`Morphology`.

    Sections follow :func:`read_swc_sections`; each is cut into ``nseg`` segments, or by
    NEURON's d_lambda rule at 100 Hz when ``d_lambda`` is given (see
    :func:`bayesneuron.geometry.from_sections`).

    Args:
        path: an SWC file.
        ra: axial resistivity in Ω·cm.
        cm: specific membrane capacitance in µF/cm².
        nseg: segments per section (ignored when ``d_lambda`` is given).
        d_lambda: maximum segment length as a fraction of the 100-Hz length constant.

    Example:
        >>> m = load_swc("cell.swc", ra=100.0, d_lambda=0.1)  # doctest: +SKIP
    """
    return from_sections(read_swc_sections(path), ra=ra, cm=cm, nseg=nseg, d_lambda=d_lambda)


# --------------------------------------------------------------------------- parsing
def _read_text(path) -> tuple[str, str]:
    """Text and a display name of a path, or of an ``importlib.resources`` file."""
    name = (
        os.fspath(path)
        if isinstance(path, (str, os.PathLike))
        else str(getattr(path, "name", path))
    )
    try:
        if isinstance(path, (str, os.PathLike)):
            with open(path, encoding="utf-8") as f:
                return f.read(), name
        return path.read_text(encoding="utf-8"), name
    except OSError as e:
        raise MorphologyError(f"cannot read SWC file {name!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise MorphologyError(
            f"cannot read SWC file {name!r}: byte {e.start} is not UTF-8 text; an SWC file is "
            "plain text, 7 columns per line (is this a compressed or binary file?)"
        ) from None


def _parse(path) -> _Points:
    text, source = _read_text(path)
    rows, lines = [], []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 7:
            raise MorphologyError(
                f"{source} line {lineno}: {len(fields)} columns; an SWC line needs 7 "
                f"(id type x y z radius parent): {raw.strip()!r}"
            )
        try:
            vals = [float(f) for f in fields]
        except ValueError:
            bad = next(f for f in fields if not _is_number(f))
            raise MorphologyError(
                f"{source} line {lineno}: {bad!r} is not a number: {raw.strip()!r}"
            ) from None
        for col, name in ((0, "id"), (1, "type"), (6, "parent")):
            if not (math.isfinite(vals[col]) and vals[col] == int(vals[col])):
                raise MorphologyError(
                    f"{source} line {lineno}: {name} {fields[col]!r} must be an integer"
                )
        if not all(math.isfinite(v) for v in vals[2:5]):
            raise MorphologyError(
                f"{source} line {lineno}: coordinates must be finite: {raw.strip()!r}"
            )
        if not (math.isfinite(vals[5]) and vals[5] > 0):
            raise MorphologyError(
                f"{source} line {lineno} (id {int(vals[0])}): radius {fields[5]} µm must be > 0"
            )
        rows.append(vals)
        lines.append(lineno)
    if not rows:
        raise MorphologyError(
            f"{source} is empty: it has no SWC points (only comments or blank lines)"
        )
    a = np.array(rows)
    ids = a[:, 0].astype(np.int64)
    order = np.argsort(ids, kind="stable")
    a, ids, lines = a[order], ids[order], np.array(lines)[order]
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if dup.size:
        i = int(dup[0])
        raise MorphologyError(
            f"{source}: id {ids[i]} appears twice (lines {lines[i]} and {lines[i + 1]}); "
            "ids must be unique"
        )
    pid = a[:, 6].astype(np.int64)
    row_of = {int(k): r for r, k in enumerate(ids)}
    parent = np.full(len(ids), -1, dtype=np.int64)
    for r, p in enumerate(pid):
        if p < 0:
            continue
        if int(p) not in row_of:
            raise MorphologyError(
                f"{source} line {lines[r]} (id {ids[r]}): parent {p} does not exist in the file"
            )
        parent[r] = row_of[int(p)]
    roots = np.flatnonzero(parent < 0)
    if roots.size > 1:
        where = ", ".join(f"line {lines[r]} (id {ids[r]})" for r in roots[:5])
        raise MorphologyError(
            f"{source} has {roots.size} roots (parent -1): {where}; a neuron is one tree — "
            "give all but one of them a parent"
        )
    pts = _Points(
        ids, a[:, 1].astype(np.int64), np.c_[a[:, 2:5], 2.0 * a[:, 5]], parent, lines, source
    )
    _check_acyclic(pts)
    return pts


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _check_acyclic(pts: _Points) -> None:
    n = len(pts.ids)
    state = np.zeros(n, dtype=np.int8)  # 0 unseen, 1 on the current path, 2 reaches the root
    roots = np.flatnonzero(pts.parent < 0)
    if roots.size == 0:
        raise MorphologyError(
            f"{pts.source} has no root (no point with parent -1): its points form a cycle, "
            f"e.g. through {pts.where(0)}"
        )
    state[roots] = 2
    for start in range(n):
        path, i = [], start
        while state[i] == 0:
            state[i] = 1
            path.append(i)
            i = pts.parent[i]
        if state[i] == 1:
            cyc = path[path.index(i) :]
            ids = [int(pts.ids[k]) for k in cyc[:8]]
            raise MorphologyError(
                f"{pts.source}: points {ids} form a cycle (first at {pts.where(cyc[0])}); "
                "an SWC file must be a tree"
            )
        state[path] = 2


# --------------------------------------------------------------------------- sections
class _Topology:
    """Parent/child structure of the SWC points and Import3d's rules for splitting them into
    sections."""

    def __init__(self, pts: _Points):
        n = len(pts.ids)
        self.par, self.typ = pts.parent.tolist(), pts.types.tolist()  # lists: fast scalar access
        self.root = self.par.index(-1)
        self.kids: list[list[int]] = [[] for _ in range(n)]
        for i in range(n):
            if self.par[i] >= 0:
                self.kids[self.par[i]].append(i)
        self.soma = [t == 1 for t in self.typ]
        self.soma_kids = [
            sum(self.soma[c] for c in self.kids[i]) if self.soma[i] else 0 for i in range(n)
        ]
        self.pts = pts

    def to_prox(self, i: int) -> bool:
        """A child that leaves the first point of a dendrite leaving the soma (or a non-soma
        root) attaches to that dendrite's 0-end (Import3d's connect2prox)."""
        p, par = self.par[i], self.par
        if p < 0 or i == p + 1 or self.soma[p]:
            return False
        return p == self.root or (p > 1 and par[p] >= 0 and self.soma[par[p]])

    def continues(self, i: int) -> bool:
        """Whether point ``i`` continues its parent's section."""
        p = self.par[i]
        if p < 0 or i != p + 1 or self.typ[i] != self.typ[p]:
            return False
        if self.soma[p]:
            return p == self.root or self.soma_kids[p] <= 1
        return sum(1 for c in self.kids[p] if not self.to_prox(c)) == 1

    def dropped(self) -> set[int]:
        """The two extra points of a neuromorpho.org 3-point soma (a single point at the root)."""
        par, soma, kids, n = self.par, self.soma, self.kids, len(self.par)
        if not (self.root == 0 and n >= 3 and soma[0] and sum(soma) == 3):
            return set()
        if not (par[1] == 0 and par[2] == 0 and not kids[1] and not kids[2]):
            return set()
        xyzd = self.pts.xyzd
        d = xyzd[:3, 3]
        span = sum(float(np.linalg.norm(xyzd[k, :3] - xyzd[0, :3])) for k in (1, 2))
        if d[1] == d[0] and d[2] == d[0] and abs(span / d[0] - 1) < 0.01:
            return {1, 2}
        return set()

    def runs(self) -> tuple[list[list[int]], list[int]]:
        """The points of every section in id order, and each point's section (−1: dropped)."""
        dropped, runs, sec_of = self.dropped(), [], [-1] * len(self.par)
        for i in range(len(self.par)):
            if i in dropped:
                continue
            if not self.continues(i):
                runs.append([])
            runs[-1].append(i)
            sec_of[i] = len(runs) - 1
        return runs, sec_of


def _sections(pts: _Points) -> list[Section]:
    top = _Topology(pts)
    par, typ, soma, soma_kids = top.par, top.typ, top.soma, top.soma_kids
    runs, sec_of = top.runs()
    root_sec = sec_of[top.root]

    names = _names([int(typ[r[0]]) for r in runs])
    conn: list[tuple[int | None, float]] = []
    points: list[np.ndarray] = []
    prox: list[int] = []
    for s, run in enumerate(runs):
        f = run[0]
        own = pts.xyzd[run]
        if s == root_sec:
            if len(run) == 1:  # a point soma: cylinder with L = diam along x
                x, y, z, d = own[0]
                own = np.array([[x - d / 2, y, z, d], [x, y, z, d], [x + d / 2, y, z, d]])
            conn.append((None, 1.0))
            points.append(own)
            continue
        p = par[f]
        ps = sec_of[p]
        prun = runs[ps]
        den_on_soma = soma[p] and not soma[f]
        x, wire = 1.0, False
        if ps == root_sec and den_on_soma and len(prun) == 1:
            x, wire = 0.5, len(run) > 1
        elif ps == root_sec and p == prun[0]:
            x, wire = 0.0, (not soma[f]) and soma_kids[p] > 1
        elif soma[p] and p != prun[-1]:
            x, wire = 0.5, den_on_soma and len(run) > 1
        elif soma[p]:
            x, wire = 1.0, len(run) > 1 and (not soma[f]) and soma_kids[p] > 1
        if top.to_prox(f):
            x, wire = 0.0, False
            prox.append(s)
        if wire and len(run) > 1:  # (a one-point run keeps its parent point, unlike Import3d)
            points.append(own)
        else:
            first = pts.xyzd[p].copy()
            if den_on_soma:
                first[3] = own[0, 3]
            points.append(np.vstack([first, own]))
        conn.append((ps, x))
    for s in prox:
        # the 0-end of a non-root parent is where that parent attaches to its own parent
        ps = conn[s][0]
        if ps != root_sec:
            conn[s] = conn[ps]

    out = []
    for s, run in enumerate(runs):
        try:
            out.append(Section(names[s], conn[s][0], conn[s][1], points=points[s]))
        except MorphologyError as e:
            raise MorphologyError(
                f"{pts.source}: section starting at {pts.where(run[0])}: {e}"
            ) from None
    return out


def _names(types: list[int]) -> list[str]:
    counts: dict[int, int] = {}
    for t in types:
        counts[t] = counts.get(t, 0) + 1
    seen: dict[int, int] = {}
    out = []
    for t in types:
        base = _TYPE_NAMES.get(t, f"dend_{t}" if t >= 0 else f"minus_{-t}")
        k = seen.get(t, 0)
        seen[t] = k + 1
        out.append(base if counts[t] == 1 else f"{base}[{k}]")
    return out
