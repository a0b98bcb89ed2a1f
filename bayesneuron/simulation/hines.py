"""The linear algebra of a compartment tree: Hines ordering, axial coefficients, tree solve.

The implicit voltage update solves ``M x = r`` where ``M`` has the sparsity of the tree:
row ``i`` reads ``d_i x_i + a_i x_parent(i) + Σ_children b_c x_c = r_i``. Nodes are reordered
so that every parent precedes its children; Gaussian elimination from the leaves up and
substitution from the root down then cost O(n) (Hines 1984). Nodes at the same height (or
depth) are processed together, so a bushy tree takes as many vectorised passes as it is deep.
Tensors are laid out node-first (``[n, batch…]``) so a single node is a contiguous view.

A graph with loops (:attr:`Morphology.loops`, edges beyond the spanning tree) has the matrix
``M = T + P Qᵀ``: ``T`` the tree's, and per loop ``j`` of conductance ``g`` between nodes ``a``
and ``b`` a column ``P_j = g·(w_a e_a − w_b e_b)`` (``w`` the row weights) and ``Q_j = e_a −
e_b``. The Woodbury identity solves it with ``k + 1`` tree solves and a ``k × k`` system:
``x = x₀ − Z (I + QᵀZ)⁻¹ Qᵀx₀`` with ``x₀ = T⁻¹r``, ``Z = T⁻¹P``. Since ``T = W·T_u`` with
``T_u`` symmetric positive definite, ``I + QᵀZ = (G⁻¹ + QᵀT_u⁻¹Q)·G`` eliminates stably
without pivoting. The transposed system swaps ``P`` and ``Q``.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import Tensor

from bayesneuron.morphology.tree import Morphology

_ROWWISE_MAX = 32  # trees up to this many nodes are solved node by node


class TreeSystem:
    """Numpy description of a morphology's tree, in Hines (parent-first) order.

    Attributes:
        n: number of nodes (compartments and junctions).
        comp_pos: internal position of each compartment ``[n_comp]``.
        pub_of: for each internal position, its compartment index, or ``n_comp`` for a junction.
        cm: capacitance per internal node (µF/cm²; 0 at junctions).
        a, b: off-diagonal coefficients (see module docstring); ``diag`` the axial diagonal.
        area: membrane area per internal node (cm²; 0 at junctions).
        loop_a, loop_b: internal positions of every loop's two ends ``[k]``.
        loop_ga, loop_gb: every loop's conductance times the row weight of its end ``a``,
            ``b`` ``[k]`` (the loop's column of ``P``, see the module docstring).
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
        self.n, self.n_comp, self.order = n, n_comp, order
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
        self.row_weight = w
        self.ra_pieces = None if morph.ra_pieces is None else morph.ra_pieces[order]
        self.a = -g * w
        self.b = -g * w[np.maximum(self.parent, 0)]
        self.a[0] = self.b[0] = 0.0
        self.levels = _levels(self.parent)
        ends = morph.loops.reshape(-1, 2)
        self.loop_a, self.loop_b = pos[ends[:, 0]], pos[ends[:, 1]]
        self.loop_ga = morph.loop_axial * w[self.loop_a]
        self.loop_gb = morph.loop_axial * w[self.loop_b]
        self._tensors: dict = {}

    @property
    def n_loops(self) -> int:
        """Edges beyond the spanning tree."""
        return len(self.loop_a)

    def tensors(self, dtype, device) -> dict:
        """Coefficients on ``device`` (cached per dtype/device), node axis first."""
        key = (dtype, str(device))
        if key not in self._tensors:
            t = {
                k: torch.tensor(getattr(self, k), dtype=dtype, device=device)
                for k in ("cm", "diag", "area")
            }
            t["pub_of"] = torch.as_tensor(self.pub_of, device=device)
            t["comp_pos"] = torch.as_tensor(self.comp_pos, device=device)
            # Small trees are eliminated node by node on row views (fewest kernel launches);
            # large ones level by level with gathers (fewest passes).
            levels = self.levels if self.n > _ROWWISE_MAX else _node_by_node(self.parent)
            t["passes"] = _passes(levels, self.a, self.b, dtype, device)
            t["passes_T"] = _passes(levels, self.b, self.a, dtype, device)
            if self.n_loops:
                cols = np.zeros((self.n, self.n_loops))
                k = np.arange(self.n_loops)
                cols[self.loop_a, k], cols[self.loop_b, k] = self.loop_ga, -self.loop_gb
                t["loops"] = (
                    torch.as_tensor(self.loop_a, device=device),
                    torch.as_tensor(self.loop_b, device=device),
                    torch.tensor(cols, dtype=dtype, device=device),
                )
            self._tensors[key] = t
        return self._tensors[key]


def _passes(levels, a, b, dtype, device):
    """Per level: ``(idx, par, a[idx], b[idx])``; single nodes as Python numbers (views, no
    gathers), groups as index tensors with coefficients shaped to broadcast over the batch."""
    out = []
    for passes in levels:
        lst = []
        for idx, par in passes:
            if len(idx) == 1:
                i = int(idx[0])
                lst.append((i, int(par[0]), float(a[i]), float(b[i])))
            else:
                lst.append(
                    (
                        torch.as_tensor(idx, device=device),
                        torch.as_tensor(par, device=device),
                        torch.tensor(a[idx], dtype=dtype, device=device)[:, None],
                        torch.tensor(b[idx], dtype=dtype, device=device)[:, None],
                    )
                )
        out.append(lst)
    return tuple(out)


def _node_by_node(parent: np.ndarray):
    """Every node its own pass: leaves-first elimination, root-first substitution."""
    n = len(parent)
    one = [(np.array([i]), np.array([parent[i]])) for i in range(1, n)]
    return one[::-1], one


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


def _row_solve(d: Tensor, r: Tensor, passes) -> Tensor:
    # All passes are single nodes: work on a list of row views, no gathers or scatters.
    elim, back = passes
    d, r = list(d.unbind(0)), list(r.unbind(0))
    for i, p, a, b in elim:
        f = d[i].reciprocal().mul_(b)
        d[p] = torch.sub(d[p], f, alpha=a)
        r[p] = torch.addcmul(r[p], f, r[i], value=-1.0)
    x = [r[0] / d[0]] + [None] * (len(d) - 1)
    for i, p, a, _ in back:
        x[i] = torch.add(r[i], x[p], alpha=-a).div_(d[i])
    return torch.stack(x)


def _level_solve(d: Tensor, r: Tensor, passes) -> Tensor:
    # d, r [n, batch]. Eliminate leaves → root, then substitute root → leaves.
    elim, back = passes
    d, r = d.clone(), r.clone()
    for idx, par, a, b in elim:
        if isinstance(idx, int):
            f = d[idx].reciprocal().mul_(b)
            d[par].sub_(f, alpha=a)
            r[par].addcmul_(f, r[idx], value=-1.0)
        else:
            f = b / d.index_select(0, idx)
            d.index_add_(0, par, f * -a)
            r.index_add_(0, par, f.mul_(r.index_select(0, idx)).neg_())
    x = torch.empty_like(r)
    torch.div(r[0], d[0], out=x[0])
    for idx, par, a, _ in back:
        if isinstance(idx, int):
            torch.add(r[idx], x[par], alpha=-a, out=x[idx]).div_(d[idx])
        else:
            shape = (-1,) + (1,) * (d.ndim - 1)
            xi = r.index_select(0, idx) - a.view(shape) * x.index_select(0, par)
            x.index_copy_(0, idx, xi / d.index_select(0, idx))
    return x


class _LevelSolve(torch.autograd.Function):
    """``x = M⁻¹ r`` for the tree matrix with diagonal ``d``; backward is the transposed solve,
    forward mode (``jvp``) the same solve: ``ẋ = M⁻¹ (ṙ − ḋ ∘ x)``."""

    @staticmethod
    def forward(ctx, d, r, passes, passes_t):
        with torch.no_grad():
            rowwise = all(isinstance(p[0], int) for p in passes[0])
            x = (_row_solve if rowwise else _level_solve)(d, r, passes)
        ctx.save_for_backward(d, x)
        ctx.save_for_forward(d, x)
        ctx.passes = passes, passes_t
        return x

    @staticmethod
    def jvp(ctx, dd, dr, *_):
        d, x = ctx.saved_tensors
        rhs = dr if dr is not None else torch.zeros_like(x)
        if dd is not None:
            rhs = rhs - dd * x
        return _LevelSolve.apply(d, rhs, *ctx.passes)

    @staticmethod
    def backward(ctx, gx):
        d, x = ctx.saved_tensors
        passes, passes_t = ctx.passes
        lam = _LevelSolve.apply(d, gx, passes_t, passes)  # Mᵀ swaps the off-diagonals
        return -lam * x, lam, None, None


def tree_solve(d: Tensor, r: Tensor, coef: dict) -> Tensor:
    """Solve the tree system with diagonal ``d`` and right-hand side ``r``, both ``[n, …]``.

    Differentiable in ``d`` and ``r`` (to any order); with per-batch off-diagonals
    ``coef["ab"]`` (:func:`coupled_coefficients`, a free ``ra``) also in those (first order).
    With loops (``coef["loops"]``) the system is the tree's plus the loops' (module
    docstring), solved by the Woodbury identity from differentiable pieces.
    """
    if "loops" in coef:
        d, r = torch.broadcast_tensors(d, r)
        n = d.shape[0]
        x = _loop_solve(d.reshape(n, -1), r.reshape(n, -1), coef)
        return x.reshape(d.shape)
    if "ab" in coef:
        a, b = coef["ab"]
        d, r, a, b = torch.broadcast_tensors(d, r, a, b)
        n = d.shape[0]
        flat = (x.reshape(n, -1) for x in (d, r, a, b))
        return _CoupledSolve.apply(*flat, coef["levels_t"]).reshape(d.shape)
    d, r = torch.broadcast_tensors(d, r)
    shape = d.shape
    n = shape[0]
    x = _LevelSolve.apply(d.reshape(n, -1), r.reshape(n, -1), coef["passes"], coef["passes_T"])
    return x.reshape(shape)


def _loop_solve(d: Tensor, r: Tensor, coef: dict) -> Tensor:
    """``M⁻¹ r`` ``[n, B]`` for the tree plus its loops: one tree solve for ``r`` and the
    ``k`` columns of ``P`` together, then the ``k × k`` system per batch element."""
    ia, ib, cols = coef["loops"]
    n, nb = r.shape
    k = cols.shape[1]
    rhs = torch.cat([r[:, None, :], cols[:, :, None].expand(n, k, nb)], 1).reshape(n, -1)
    dd = d[:, None, :].expand(n, k + 1, nb).reshape(n, -1)
    sol = _LevelSolve.apply(dd, rhs, coef["passes"], coef["passes_T"]).reshape(n, k + 1, nb)
    x0, z = sol[:, 0], sol[:, 1:]  # [n, B], [n, k, B]
    cap = (z.index_select(0, ia) - z.index_select(0, ib)).permute(2, 0, 1)  # [B, k (row), k]
    cap = cap + torch.eye(k, dtype=cap.dtype, device=cap.device)
    c = (x0.index_select(0, ia) - x0.index_select(0, ib)).T  # Qᵀx₀ [B, k]
    y = torch.linalg.solve(cap, c.unsqueeze(-1)).squeeze(-1)
    return x0 - torch.einsum("nkb,bk->nb", z, y)


def coupled_coefficients(sys: TreeSystem, ra: Tensor, coef: dict) -> tuple[Tensor, dict]:
    """The axial diagonal and ``coef`` with per-batch off-diagonals for a free ``ra``.

    Args:
        sys: the tree (its morphology must have ``ra_pieces``).
        ra: axial resistivity per node ``[n, …]`` (Ω·cm; any value at junctions).
        coef: :meth:`TreeSystem.tensors`.

    Returns:
        ``(diag [n, …], coef)`` where ``coef["ab"]`` holds ``(a, b)`` ``[n, …]``. Junction rows
        keep their fixed weights: their right-hand side is 0, so any weight gives the same
        solution.
    """
    if sys.n_loops:
        raise ValueError("a free ra is not supported on a morphology with loops")
    key = ("pieces", ra.dtype, str(ra.device))
    if key not in sys._tensors:
        sys._tensors[key] = _pieces(sys, ra.dtype, ra.device)
    own, par, w, levels = sys._tensors[key]
    parent = levels[2]
    shape = (sys.n,) + (1,) * (ra.ndim - 1)
    own, par, w = own.view(shape), par.view(shape), w.view(shape)
    r = own * ra + par * ra.index_select(0, parent)  # MΩ
    g = torch.cat([torch.zeros_like(r[:1]), 1e-3 / r[1:]])  # mS; the root has no edge
    incident = g.index_add(0, parent[1:], g[1:])
    a, b = -g * w, -g * w.index_select(0, parent)
    return w * incident, {**coef, "ab": (a, b), "levels_t": levels}


def _pieces(sys: TreeSystem, dtype, device) -> tuple:
    """Edge resistances at unit ``ra`` (own, parent's half), row weights, and the levels of
    the tree as index tensors with the parents ``(elim, back, parent)``."""
    if sys.ra_pieces is None:
        raise ValueError("this morphology has no ra_pieces (not built from sections)")
    levels = tuple(
        [(torch.as_tensor(i, device=device), torch.as_tensor(p, device=device)) for i, p in lv]
        for lv in sys.levels
    )
    parent = torch.as_tensor(np.maximum(sys.parent, 0), device=device)
    return (
        torch.tensor(sys.ra_pieces[:, 0], dtype=dtype, device=device),
        torch.tensor(sys.ra_pieces[:, 1], dtype=dtype, device=device),
        torch.tensor(sys.row_weight, dtype=dtype, device=device),
        (*levels, parent),
    )


def _coupled(d: Tensor, r: Tensor, a: Tensor, b: Tensor, levels) -> Tensor:
    """``M⁻¹ r`` ``[n, B]`` for the tree matrix with diagonal ``d``, off-diagonals ``a`` (row
    ``i``, column parent) and ``b`` (row parent, column ``i``), all ``[n, B]``."""
    elim, back, _ = levels
    d, r = d.clone(), r.clone()
    for idx, par in elim:
        f = b.index_select(0, idx) / d.index_select(0, idx)
        d.index_add_(0, par, -f * a.index_select(0, idx))
        r.index_add_(0, par, -f * r.index_select(0, idx))
    x = torch.empty_like(r)
    x[0] = r[0] / d[0]
    for idx, par in back:
        xi = r.index_select(0, idx) - a.index_select(0, idx) * x.index_select(0, par)
        x.index_copy_(0, idx, xi / d.index_select(0, idx))
    return x


class _CoupledSolve(torch.autograd.Function):
    """``x = M⁻¹ r`` with per-batch off-diagonals; backward: ``λ = M⁻ᵀ ∂L/∂x`` (``a`` and
    ``b`` swapped), ``∂L/∂d = −λx``, ``∂L/∂a_i = −λ_i x_parent``, ``∂L/∂b_i = −λ_parent x_i``."""

    @staticmethod
    def forward(ctx, d, r, a, b, levels):
        with torch.no_grad():
            x = _coupled(d, r, a, b, levels)
        ctx.save_for_backward(d, a, b, x)
        ctx.levels = levels
        return x

    @staticmethod
    def backward(ctx, gx):
        d, a, b, x = ctx.saved_tensors
        lam = _coupled(d, gx, b, a, ctx.levels)
        parent = ctx.levels[2]
        ga = -lam * x.index_select(0, parent)
        gb = -lam.index_select(0, parent) * x
        ga[0] = gb[0] = 0.0  # the root has no parent
        return -lam * x, lam, ga, gb, None


def reduced_edges(morph: Morphology) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compartment-to-compartment coupling with junctions eliminated (Kron reduction).

    Loops (:attr:`Morphology.loops`) are edges like any other; tree edges of conductance 0
    (a detached part) are left out.

    Returns:
        ``(src, dst, coef)`` over directed edges: the axial current density into ``src`` is
        ``Σ coef · (V[dst] − V[src])`` with ``coef`` in mS/cm².
    """
    n_comp = morph.n_comp
    graph: dict[int, dict[int, float]] = {i: {} for i in range(morph.n_nodes)}
    for i, p in enumerate(morph.parents):
        if p >= 0 and morph.axial[i] > 0:
            graph[i][int(p)] = graph[int(p)][i] = float(morph.axial[i])
    for (i, j), g in zip(morph.loops.tolist(), morph.loop_axial.tolist()):
        graph[i][j] = graph[j][i] = graph[i].get(j, 0.0) + g  # compartments, never junctions
    for j in range(n_comp, morph.n_nodes):  # eliminate each junction: star → clique
        nbrs = graph.pop(j)
        total = sum(nbrs.values())
        for k in nbrs:
            del graph[k][j]
        keys = list(nbrs)
        for x, k in enumerate(keys):
            for m in keys[x + 1 :]:
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
