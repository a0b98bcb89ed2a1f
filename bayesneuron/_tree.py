"""The linear algebra of a compartment tree: Hines ordering, axial coefficients, tree solve.

The implicit voltage update solves ``M x = r`` where ``M`` has the sparsity of the tree:
row ``i`` reads ``d_i x_i + a_i x_parent(i) + Σ_children b_c x_c = r_i``. Nodes are reordered
so that every parent precedes its children; Gaussian elimination from the leaves up and
substitution from the root down then cost O(n) (Hines 1984). Nodes at the same height (or
depth) are processed together, so a bushy tree takes as many vectorised passes as it is deep.
Small systems use a dense batched LAPACK solve instead, which costs fewer kernel launches.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import Tensor

from .morphology import Morphology

_DENSE_MAX = 24  # up to this many nodes a dense batched solve beats the level loop on CPU


class TreeSystem:
    """Numpy description of a morphology's tree, in Hines (parent-first) order.

    Attributes:
        n: number of nodes (compartments and junctions).
        comp_pos: internal position of each compartment ``[n_comp]``.
        pub_of: for each internal position, its compartment index, or ``n_comp`` for a junction.
        cm: capacitance per internal node (µF/cm²; 0 at junctions).
        a, b: off-diagonal coefficients (see module docstring); ``diag`` the axial diagonal.
        area: membrane area per internal node (cm²; 0 at junctions).
    """

    def __init__(self, morph: Morphology):
        n, n_comp = morph.n_nodes, morph.n_comp
        parents = morph.parents
        root = int(np.flatnonzero(parents == -1)[0])
        children: list[list[int]] = [[] for _ in range(n)]
        for i, p in enumerate(parents):
            if p >= 0:
                children[p].append(i)
        order = [root]
        for i in order:  # BFS; the list grows while iterating
            order.extend(children[i])
        order = np.asarray(order)
        pos = np.empty(n, dtype=np.int64)
        pos[order] = np.arange(n)
        self.n, self.n_comp = n, n_comp
        self.parent = np.where(parents[order] >= 0, pos[np.maximum(parents[order], 0)], -1)
        self.comp_pos = pos[:n_comp]
        self.pub_of = np.where(order < n_comp, order, n_comp)
        is_comp = order < n_comp
        self.cm = np.where(is_comp, morph.cm[np.minimum(order, n_comp - 1)], 0.0)
        self.area = np.where(is_comp, morph.area[np.minimum(order, n_comp - 1)], 0.0)
        g = np.where(self.parent >= 0, morph.axial[order], 0.0)
        incident = g.copy()
        np.add.at(incident, self.parent[1:], g[1:])
        # Row weights: compartments carry densities (divide by area); a junction row only has
        # to balance currents, so normalise it by its total conductance (NEURON scales it too).
        w = 1.0 / np.where(is_comp, self.area, np.where(incident > 0, incident, 1.0))
        self.diag = w * incident
        self.a = -g * w
        self.b = -g * w[np.maximum(self.parent, 0)]
        self.a[0] = self.b[0] = 0.0
        self.levels = _levels(self.parent)
        self.dense = n <= _DENSE_MAX
        self._tensors: dict = {}

    def tensors(self, dtype, device) -> dict[str, Tensor]:
        """Coefficient tensors on ``device`` (cached per dtype/device)."""
        key = (dtype, str(device))
        if key not in self._tensors:
            t = {k: torch.as_tensor(getattr(self, k), dtype=dtype, device=device)
                 for k in ("cm", "diag", "a", "b", "area")}
            t["pub_of"] = torch.as_tensor(self.pub_of, device=device)
            t["comp_pos"] = torch.as_tensor(self.comp_pos, device=device)
            if self.dense:
                off = torch.zeros(self.n, self.n, dtype=dtype)
                rows = torch.arange(1, self.n)
                par = torch.as_tensor(self.parent[1:])
                off[rows, par] = torch.as_tensor(self.a[1:], dtype=dtype)
                off[par, rows] = torch.as_tensor(self.b[1:], dtype=dtype)
                t["offdiag"] = off.to(device)
            else:
                t["levels"] = [
                    tuple(_as_index(x, device) for x in lvl) for lvl in self.levels
                ]
            self._tensors[key] = t
        return self._tensors[key]


def _as_index(x: np.ndarray, device):
    # A single node becomes a Python int: basic indexing makes views, not gathers.
    return int(x[0]) if len(x) == 1 else torch.as_tensor(x, device=device)


def _levels(parent: np.ndarray):
    """(elimination levels by height, substitution levels by depth), each ``[(idx, par)]``."""
    n = len(parent)
    height = np.zeros(n, dtype=np.int64)
    for i in range(n - 1, 0, -1):  # children come after parents
        height[parent[i]] = max(height[parent[i]], height[i] + 1)
    depth = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        depth[i] = depth[parent[i]] + 1
    elim = []
    for h in range(height.max() + 1):
        idx = np.flatnonzero((height == h) & (np.arange(n) > 0))
        if idx.size:
            elim.append((idx, parent[idx]))
    back = []
    for k in range(1, depth.max() + 1):
        idx = np.flatnonzero(depth == k)
        back.append((idx, parent[idx]))
    return elim, back


_SYSTEMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tree_system(morph: Morphology) -> TreeSystem:
    """The (cached) :class:`TreeSystem` of a morphology."""
    if morph not in _SYSTEMS:
        _SYSTEMS[morph] = TreeSystem(morph)
    return _SYSTEMS[morph]


def _level_solve(d: Tensor, r: Tensor, a: Tensor, b: Tensor, levels) -> Tensor:
    elim, back = levels
    d, r = d.clone(), r.clone()
    for idx, par in elim:
        f = b[idx] / d[..., idx]
        if isinstance(idx, int):
            d[..., par] -= f * a[idx]
            r[..., par] -= f * r[..., idx]
        else:
            d.index_add_(-1, par, -f * a[idx])
            r.index_add_(-1, par, -f * r[..., idx])
    x = torch.empty_like(r)
    x[..., 0] = r[..., 0] / d[..., 0]
    for idx, par in back:
        x[..., idx] = (r[..., idx] - a[idx] * x[..., par]) / d[..., idx]
    return x


class _LevelSolve(torch.autograd.Function):
    """``x = M⁻¹ r`` for the tree matrix with diagonal ``d``; backward is the transposed solve."""

    @staticmethod
    def forward(ctx, d, r, a, b, levels):
        with torch.no_grad():
            x = _level_solve(d, r, a, b, levels)
        ctx.save_for_backward(d, x, a, b)
        ctx.levels = levels
        return x

    @staticmethod
    def backward(ctx, gx):
        d, x, a, b = ctx.saved_tensors
        lam = _LevelSolve.apply(d, gx, b, a, ctx.levels)  # Mᵀ swaps the off-diagonals
        return -lam * x, lam, None, None, None


def tree_solve(d: Tensor, r: Tensor, coef: dict[str, Tensor]) -> Tensor:
    """Solve the tree system with diagonal ``d`` and right-hand side ``r``, both ``[…, n]``.

    Differentiable in ``d`` and ``r`` (to any order).
    """
    if "offdiag" in coef:
        m = torch.diag_embed(d) + coef["offdiag"]
        return torch.linalg.solve(m, r.unsqueeze(-1)).squeeze(-1)
    return _LevelSolve.apply(d, r, coef["a"], coef["b"], coef["levels"])


def reduced_edges(morph: Morphology) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compartment-to-compartment coupling with junctions eliminated (Kron reduction).

    Returns:
        ``(src, dst, coef)`` over directed edges: the axial current density into ``src`` is
        ``Σ coef · (V[dst] − V[src])`` with ``coef`` in mS/cm².
    """
    n_comp = morph.n_comp
    graph: dict[int, dict[int, float]] = {i: {} for i in range(morph.n_nodes)}
    for i, p in enumerate(morph.parents):
        if p >= 0:
            graph[i][int(p)] = graph[int(p)][i] = float(morph.axial[i])
    for j in range(n_comp, morph.n_nodes):  # eliminate each junction: star → clique
        nbrs = graph.pop(j)
        total = sum(nbrs.values())
        for k in nbrs:
            del graph[k][j]
        keys = list(nbrs)
        for x, k in enumerate(keys):
            for m in keys[x + 1:]:
                g = nbrs[k] * nbrs[m] / total
                graph[k][m] = graph[k].get(m, 0.0) + g
                graph[m][k] = graph[m].get(k, 0.0) + g
    src, dst, coef = [], [], []
    for i in range(n_comp):
        for k, g in graph[i].items():
            src.append(i)
            dst.append(k)
            coef.append(g / morph.area[i])
    return np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64), np.asarray(coef)
