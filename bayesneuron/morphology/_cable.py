"""Per-compartment cable facts of a sectioned cell that parameters by region need: path
distances from the soma, the axial resistivity, and the edge resistances at unit resistivity
(so that ``Ra`` can be a free parameter). Used by :func:`~.geometry.from_sections`."""

from __future__ import annotations

import numpy as np

__all__ = ["cable_facts"]


def _section_starts(sections, root: int) -> np.ndarray:
    """Path distance (µm) of every section's 0-end from the root section's centre."""
    start = np.full(len(sections), np.nan)

    def on(p: int, x: float) -> float:  # distance of point x of section p
        if p == root:
            return abs(x - 0.5) * sections[p].L
        return at(p) + x * sections[p].L

    def at(s: int) -> float:
        if np.isnan(start[s]):
            sec = sections[s]
            start[s] = 0.0 if s == root else on(sec.parent, sec.parent_x)
        return start[s]

    for s in range(len(sections)):
        at(s)
    return start


def cable_facts(sections, nsegs, geoms, ras, first, junction, root) -> dict[str, np.ndarray]:
    """``distance`` ``[n_comp]`` (µm, NEURON's ``h.distance`` from the root's centre to each
    segment's centre), ``ra`` ``[n_comp]`` (Ω·cm) and ``ra_pieces`` ``[n_nodes, 2]`` (MΩ per
    Ω·cm: each node's edge to its parent, the node's own half-segment and the parent's), with
    the layout of :func:`~.geometry.from_sections` (``first`` compartment of every section,
    ``junction`` nodes by ``(section, end)``)."""
    n_comp = int(first[-1])
    start = _section_starts(sections, root)
    distance, ra = np.empty(n_comp), np.empty(n_comp)
    pieces = np.zeros((n_comp + len(junction), 2))
    for i, s in enumerate(sections):
        c0, n, length = int(first[i]), nsegs[i], s.L
        x = (np.arange(n) + 0.5) / n
        distance[c0 : c0 + n] = np.abs(x - 0.5) * length if i == root else start[i] + x * length
        ra[c0 : c0 + n] = ras[i]
        r = geoms[i][1] / ras[i]  # half-segment resistances at 1 Ω·cm
        pieces[c0 + 1 : c0 + n, 0] = r[1:, 0]
        pieces[c0 + 1 : c0 + n, 1] = r[:-1, 1]
        if i != root:
            pieces[c0, 0] = r[0, 0]
    for (p, x), node in junction.items():
        r = geoms[p][1] / ras[p]
        pieces[node, 1] = r[-1, 1] if x == 1.0 else r[0, 0]
    return {"distance": distance, "ra": ra, "ra_pieces": pieces}
