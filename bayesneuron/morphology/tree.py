"""The compartment tree: topology, membrane areas, capacitances and axial conductances.

A :class:`Morphology` knows nothing of channels. Its compartments are the electrical nodes a
user sees (stimulates, records, gives parameters to). Geometric cells may also carry internal
*junction* nodes: NEURON's zero-area nodes at a section's end where several children meet.
They have no membrane and are never exposed; keeping them makes the voltage update the exact
tree solve NEURON performs.

Graphs that are not trees (the paper's 184-node graph) are a spanning tree plus *loops*, extra
compartment-to-compartment conductances that every backend adds exactly, and detached parts
hung off the root by a tree edge of conductance 0 (:attr:`Morphology.n_components`).

Units. Abstract cells (the paper's model) are per unit membrane area: coupling conductances in
mS/cm², injected currents in µA/cm². Geometric cells use absolute conductances in mS (built from
µm and Ω·cm, see :mod:`bayesneuron.geometry`), areas in cm², injected currents in nA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from bayesneuron.errors import MorphologyError

__all__ = ["Morphology", "chain", "paper_chain"]


def _readonly(x, dtype) -> np.ndarray:
    a = np.array(x, dtype=dtype)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Morphology:
    """An electrically coupled tree of compartments.

    Nodes ``0 … n_comp-1`` are compartments; nodes ``n_comp … n_nodes-1`` are internal
    zero-area junctions. Build it with :func:`chain`, :meth:`from_parents`,
    :meth:`from_adjacency`, :func:`bayesneuron.geometry.from_sections` or
    :func:`bayesneuron.swc.load_swc` rather than directly.

    Args:
        names: compartment names, length ``n_comp``.
        parents: parent node of every node ``[n_nodes]``; ``-1`` marks the single root.
        axial: conductance from every node to its parent ``[n_nodes]`` (root entry ignored):
            mS/cm² for abstract cells, mS for geometric ones.
        area: membrane area per compartment ``[n_comp]`` in cm² (ones for abstract cells).
        cm: specific membrane capacitance per compartment ``[n_comp]`` in µF/cm².
        geometric: True when areas are real (currents are then injected in nA).
        distance: path distance of every compartment's centre from the root compartment's
            centre ``[n_comp]`` in µm (geometric cells; ``None`` for abstract ones).
        ra: axial resistivity of every compartment ``[n_comp]`` in Ω·cm (geometric cells).
        ra_pieces: the resistance of every node's edge to its parent at unit resistivity, split
            into the node's own half-segment and the parent's ``[n_nodes, 2]`` (MΩ per Ω·cm;
            0 at a junction), so that ``axial = 1e-3 / (pieces[:, 0]·ra[node] +
            pieces[:, 1]·ra[parent])`` mS; what lets ``ra`` be a free parameter.
        loops: extra edges that close cycles, pairs of distinct compartments ``[k, 2]``
            (default none; a pair already coupled is coupled once more, in parallel); the
            tree stays the spanning tree the solvers eliminate.
        loop_axial: conductance of every loop ``[k]``, in the units of ``axial``.

    A tree edge of an abstract cell may have ``axial`` 0 where it joins a compartment to the
    root: it carries no current, so the compartment's subtree is a separate part of the graph
    (:meth:`from_adjacency` with ``tree_only=False`` builds such cells; see
    :attr:`n_components`). Every other tree edge needs a conductance > 0.

    Raises:
        MorphologyError: on several roots, cycles in ``parents``, parents that do not exist,
            non-positive areas, capacitances or conductances, or loops that are not pairs of
            distinct compartments.
    """

    names: tuple[str, ...]
    parents: np.ndarray
    axial: np.ndarray
    area: np.ndarray
    cm: np.ndarray
    geometric: bool = False
    _junction_names: tuple[str, ...] = field(default=(), repr=False)
    distance: np.ndarray | None = field(default=None, repr=False)
    ra: np.ndarray | None = field(default=None, repr=False)
    ra_pieces: np.ndarray | None = field(default=None, repr=False)
    loops: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    loop_axial: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "parents", _readonly(self.parents, np.int64))
        object.__setattr__(self, "axial", _readonly(self.axial, np.float64))
        object.__setattr__(self, "area", _readonly(self.area, np.float64))
        object.__setattr__(self, "cm", _readonly(self.cm, np.float64))
        n_comp, n_nodes = len(self.names), len(self.parents)
        if n_comp == 0:
            raise MorphologyError("a morphology needs at least one compartment")
        if len(set(self.names)) != n_comp:
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise MorphologyError(f"compartment names must be unique; repeated: {dup[:5]}")
        if self.axial.shape != (n_nodes,):
            raise MorphologyError(
                f"axial has shape {self.axial.shape}; expected one conductance per node ({n_nodes},)"
            )
        for what, arr in (("area", self.area), ("cm", self.cm)):
            if arr.shape != (n_comp,):
                raise MorphologyError(f"{what} has shape {arr.shape}; expected ({n_comp},)")
            bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))
            if bad.size:
                i = int(bad[0])
                raise MorphologyError(
                    f"compartment {i} ({self.names[i]!r}) has {what} = {arr[i]}; "
                    f"{what} must be finite and > 0"
                )
        _check_tree(self.parents, self._node_name)
        self._check_cable()
        nonroot = self.parents >= 0
        good = np.isfinite(self.axial) & (self.axial > 0)
        if not self.geometric:  # a detached part (class docstring)
            root = int(np.flatnonzero(self.parents == -1)[0])
            good |= (self.axial == 0) & (self.parents == root)
        bad = np.flatnonzero(nonroot & ~good)
        if bad.size:
            i = int(bad[0])
            hint = (
                "; 0 is allowed only on an edge to the root, where it detaches a part of the "
                "graph (Morphology.from_adjacency(..., tree_only=False) builds such cells)"
                if not self.geometric and self.axial[i] == 0
                else " (check diameters, lengths and Ra)"
            )
            raise MorphologyError(
                f"the axial conductance between node {i} ({self._node_name(i)!r}) and its parent "
                f"is {self.axial[i]}; it must be finite and > 0{hint}"
            )
        self._check_loops()

    def _check_loops(self) -> None:
        """``loops`` ``[k, 2]``: pairs of distinct compartments; ``loop_axial`` ``[k]``: finite
        and > 0."""
        loops = np.array(self.loops, dtype=np.int64)
        if loops.size == 0:
            loops = loops.reshape(0, 2)
        g = _readonly(self.loop_axial, np.float64)
        object.__setattr__(self, "loops", _readonly(loops, np.int64))
        object.__setattr__(self, "loop_axial", g)
        if loops.ndim != 2 or loops.shape[1] != 2:
            raise MorphologyError(
                f"loops has shape {loops.shape}; expected [k, 2] pairs of compartments"
            )
        if g.shape != (len(loops),):
            raise MorphologyError(
                f"loop_axial has shape {g.shape}; expected one conductance per loop ({len(loops)},)"
            )
        n = self.n_comp
        for x, (i, j) in enumerate(loops.tolist()):
            out = next((k for k in (i, j) if not 0 <= k < n), None)
            if out is not None:
                what = "a junction" if out < self.n_nodes else "no node"
                why = f"joins node {out}, which is {what}; loops join compartments (0–{n - 1})"
            elif i == j:
                why = "joins a compartment to itself"
            elif not (np.isfinite(g[x]) and g[x] > 0):
                why = f"has conductance {g[x]}; it must be finite and > 0"
            else:
                continue
            raise MorphologyError(f"loop {x} ({i}–{j}) {why}")

    def _check_cable(self) -> None:
        """``distance``, ``ra`` and ``ra_pieces``: absent, or of their shapes and finite."""
        shapes = {
            "distance": (self.n_comp,),
            "ra": (self.n_comp,),
            "ra_pieces": (self.n_nodes, 2),
        }
        for what, shape in shapes.items():
            x = getattr(self, what)
            if x is None:
                continue
            object.__setattr__(self, what, _readonly(x, np.float64))
            x = getattr(self, what)
            if x.shape != shape or not np.all(np.isfinite(x)) or np.any(x < 0):
                raise MorphologyError(
                    f"{what} has shape {x.shape}; expected {shape}, finite and ≥ 0"
                )
        if self.ra is not None and np.any(self.ra <= 0):
            raise MorphologyError("ra must be > 0 (Ω·cm) in every compartment")

    # ------------------------------------------------------------------ views
    @property
    def n_comp(self) -> int:
        """Number of compartments (electrical nodes with membrane)."""
        return len(self.names)

    @property
    def n_nodes(self) -> int:
        """Compartments plus internal zero-area junctions."""
        return len(self.parents)

    @property
    def current_unit(self) -> str:
        """Unit of injected currents: ``"nA"`` (geometric) or ``"uA/cm2"`` (abstract)."""
        return "nA" if self.geometric else "uA/cm2"

    def _node_name(self, i: int) -> str:
        if i < len(self.names):
            return self.names[i]
        k = i - len(self.names)
        return self._junction_names[k] if k < len(self._junction_names) else f"junction {k}"

    @property
    def n_loops(self) -> int:
        """Number of loops: edges beyond the spanning tree (0 for a tree)."""
        return len(self.loops)

    @cached_property
    def components(self) -> np.ndarray:
        """The connected part (by tree edges of conductance > 0 and loops) of every compartment
        ``[n_comp]``: 0 for the root's, then 1, 2, … in order of their lowest compartment."""
        label = np.arange(self.n_nodes)

        def find(i):
            while label[i] != i:
                label[i] = label[label[i]]
                i = label[i]
            return i

        edges = [(i, int(p)) for i, p in enumerate(self.parents) if p >= 0 and self.axial[i] > 0]
        for i, j in edges + [tuple(e) for e in self.loops.tolist()]:
            label[find(i)] = find(j)
        root = int(np.flatnonzero(self.parents == -1)[0])
        reps = [find(root)] + [find(i) for i in range(self.n_comp)]
        number = {r: k for k, r in enumerate(dict.fromkeys(reps))}
        return np.array([number[r] for r in reps[1:]], dtype=np.int64)

    @property
    def n_components(self) -> int:
        """Number of connected parts of the graph (1 for a connected cell): more than one
        means currents injected in one part never reach the others."""
        return int(self.components.max()) + 1

    @cached_property
    def compartment_parents(self) -> np.ndarray:
        """Nearest compartment ancestor of every compartment ``[n_comp]`` (-1 for the root and
        for the root of a detached part)."""
        out = np.empty(self.n_comp, dtype=np.int64)
        for i in range(self.n_comp):
            p = self.parents[i]
            if p >= 0 and self.axial[i] == 0:
                p = -1
            while p >= self.n_comp:
                p = self.parents[p]
            out[i] = p
        return out

    def index(self, site: int | str) -> int:
        """Resolve a compartment given by index (negative counts from the end) or name.

        Raises:
            MorphologyError: if the compartment does not exist.
        """
        n = self.n_comp
        if isinstance(site, str):
            try:
                return self.names.index(site)
            except ValueError:
                close = [m for m in self.names if site.lower() in m.lower()][:5]
                hint = f"; similar names: {close}" if close else ""
                raise MorphologyError(f"no compartment named {site!r}{hint}") from None
        if isinstance(site, (bool, np.bool_)) or not isinstance(site, (int, np.integer)):
            raise MorphologyError(f"compartment {site!r} must be an int index or a name")
        if not -n <= site < n:
            raise MorphologyError(
                f"compartment {site} does not exist: the cell has {n} compartments "
                f"(0–{n - 1}, or -{n}–-1 from the end)"
            )
        return int(site) % n

    def indices(self, sites: Sequence[int | str] | None) -> tuple[int, ...]:
        """Resolve a list of compartments (``None`` means all) to sorted unique indices."""
        if sites is None:
            return tuple(range(self.n_comp))
        if isinstance(sites, (str, int, np.integer)):
            sites = [sites]
        out = sorted({self.index(s) for s in sites})
        if not out:
            raise MorphologyError(
                "an empty list of compartments; give at least one, or None for all"
            )
        return tuple(out)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_parents(
        cls,
        parents: Sequence[int],
        ax: float | Sequence[float] = 0.5,
        cm: float | Sequence[float] = 1.0,
        names: Sequence[str] | None = None,
    ) -> Morphology:
        """Abstract (unit-area) tree from a parent array.

        Args:
            parents: parent index of each compartment ``[n]``; exactly one ``-1`` (the root).
            ax: coupling conductance to the parent in mS/cm², scalar or ``[n]``.
            cm: membrane capacitance in µF/cm², scalar or ``[n]``.
            names: optional compartment names (default ``"0"``, ``"1"``, …).

        Example:
            >>> m = Morphology.from_parents([-1, 0, 0], ax=0.5)   # a soma with two children
        """
        parents = np.asarray(parents)
        if parents.ndim != 1 or not np.issubdtype(parents.dtype, np.integer):
            raise MorphologyError(f"parents must be a 1-D list of ints; got {parents!r}")
        n = len(parents)
        names = tuple(str(i) for i in range(n)) if names is None else tuple(names)
        if len(names) != n:
            raise MorphologyError(f"{len(names)} names for {n} compartments")
        return cls(
            names=names,
            parents=parents,
            axial=np.broadcast_to(np.asarray(ax, dtype=float), (n,)),
            area=np.ones(n),
            cm=np.broadcast_to(np.asarray(cm, dtype=float), (n,)),
        )

    @classmethod
    def from_adjacency(
        cls,
        adjacency,
        ax: float = 0.5,
        cm: float = 1.0,
        root: int = 0,
        names: Sequence[str] | None = None,
        tree_only: bool = True,
    ) -> Morphology:
        """Abstract cell from a symmetric 0/1 adjacency matrix, as in the paper's code.

        The paper couples compartments by ``I_ax,i = ax · Σ_k A_ik (V_k − V_i)``. By default
        only trees are accepted: a graph with a cycle or a disconnected part (such as the
        paper's own 184-node graph) is rejected with the offending nodes named.

        Args:
            adjacency: symmetric 0/1 matrix ``[n, n]`` with a zero diagonal.
            ax: coupling conductance of every edge in mS/cm².
            cm: membrane capacitance in µF/cm², scalar or ``[n]``.
            root: the root compartment (the soma).
            names: optional compartment names.
            tree_only: ``False`` accepts any graph, coupled exactly as the paper's rule says:
                a breadth-first spanning tree from ``root`` (then from the lowest node of
                every part not reached) carries the tree edges, the remaining edges become
                :attr:`loops`, and each part not reached hangs off ``root`` by an edge of
                conductance 0 (:attr:`n_components` reports them).

        Raises:
            MorphologyError: on a malformed matrix, or (``tree_only``) a cycle or a part
                that cannot be reached from the root.

        Example:
            >>> a = np.array([[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
            >>> m = Morphology.from_adjacency(a, tree_only=False)  # a triangle and a node
            >>> m.loops.tolist(), m.n_components
            ([[1, 2]], 2)
        """
        a = _checked_adjacency(adjacency, root)
        parents, detached, loops = _spanning_forest(a, root, tree_only)
        axial = np.where(detached, 0.0, float(ax))
        tree = cls.from_parents(parents, ax=axial, cm=cm, names=names)
        return replace(tree, loops=loops, loop_axial=np.full(len(loops), float(ax)))


def _checked_adjacency(adjacency, root: int) -> np.ndarray:
    """The adjacency as an array, or an error naming what makes it no graph."""
    a = np.asarray(adjacency)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise MorphologyError(f"adjacency must be a square matrix; got shape {a.shape}")
    if not np.array_equal(a, a.T):
        i, j = map(int, np.argwhere(a != a.T)[0])
        raise MorphologyError(
            f"adjacency is not symmetric (A[{i},{j}] = {a[i, j]} but A[{j},{i}] = {a[j, i]}); "
            "with the paper's coupling an asymmetric edge carries no current — symmetrise it"
        )
    if np.any(np.diag(a) != 0):
        i = int(np.flatnonzero(np.diag(a))[0])
        raise MorphologyError(f"adjacency has a self-loop at node {i}; the diagonal must be 0")
    if not np.all((a == 0) | (a == 1)):
        raise MorphologyError("adjacency entries must be 0 or 1 (use ax for the conductance)")
    if not 0 <= root < a.shape[0]:
        raise MorphologyError(f"root {root} does not exist (graph has {a.shape[0]} nodes)")
    return a


def _spanning_forest(a: np.ndarray, root: int, tree_only: bool) -> tuple:
    """Breadth-first spanning tree from ``root``, then from the lowest node of every part not
    reached, hung off ``root``: ``(parents [n], detached [n] bool, loops [k, 2])`` with the
    edges left over as sorted pairs. ``tree_only``: a cycle or a part not reached is an error."""
    n = a.shape[0]
    parents = np.full(n, -2, dtype=np.int64)
    detached = np.zeros(n, dtype=bool)
    loops: set[tuple[int, int]] = set()
    for start in [root, *(i for i in range(n) if i != root)]:
        if start != root and parents[start] != -2:
            continue
        if start != root:
            if tree_only:
                missing = np.flatnonzero(parents == -2)
                raise MorphologyError(
                    f"the graph is disconnected: {missing.size} node(s) cannot be reached from "
                    f"the root {root}, e.g. {missing[:8].tolist()}; connect them or remove them "
                    "(or pass tree_only=False to simulate the parts apart)"
                )
            detached[start] = True
        parents[start] = -1 if start == root else root
        order, head = [start], 0
        while head < len(order):
            i = order[head]
            head += 1
            for j in map(int, np.flatnonzero(a[i])):
                if j == parents[i]:
                    continue
                if parents[j] != -2:
                    if tree_only:
                        raise MorphologyError(
                            f"the graph has a cycle through nodes {i} and {j}: a neuron must "
                            "be a tree; remove one edge of the cycle (or pass tree_only=False "
                            "to couple it as a loop)"
                        )
                    loops.add((min(i, j), max(i, j)))
                    continue
                parents[j] = i
                order.append(j)
    return parents, detached, np.array(sorted(loops), dtype=np.int64).reshape(-1, 2)


def _check_tree(parents: np.ndarray, name) -> None:
    n = len(parents)
    if parents.ndim != 1:
        raise MorphologyError(f"parents must be 1-D; got shape {parents.shape}")
    bad = np.flatnonzero((parents < -1) | (parents >= n))
    if bad.size:
        i = int(bad[0])
        raise MorphologyError(
            f"node {i} ({name(i)!r}) names parent {parents[i]}, which does not exist "
            f"(valid: 0–{n - 1}, or -1 for the root)"
        )
    self_loops = np.flatnonzero(parents == np.arange(n))
    if self_loops.size:
        i = int(self_loops[0])
        raise MorphologyError(f"node {i} ({name(i)!r}) is its own parent")
    roots = np.flatnonzero(parents == -1)
    if roots.size != 1:
        if roots.size == 0:
            raise MorphologyError(
                "the tree has no root (no parent of -1): every node is in a cycle"
            )
        raise MorphologyError(
            f"the tree has {roots.size} roots (nodes {roots[:8].tolist()} have parent -1); "
            "a neuron is one connected tree — attach all but one of them to a parent"
        )
    cyc = find_cycle(parents, int(roots[0]))
    if cyc:
        raise MorphologyError(
            f"nodes {cyc[:8]} ({name(cyc[0])!r} …) form a cycle, disconnected from the "
            "root; a neuron must be a tree: break the cycle and attach it to the tree"
        )


def find_cycle(parents, root: int) -> list[int] | None:
    """A cycle of parent links that never reaches ``root``, as node indices, or ``None``.

    Walks up from every node; a walk that meets its own path is a cycle.
    """
    state = [0] * len(parents)  # 0 unseen, 1 on the current path, 2 reaches the root
    state[root] = 2
    for start in range(len(parents)):
        path, i = [], start
        while state[i] == 0:
            state[i] = 1
            path.append(i)
            i = int(parents[i])
        if state[i] == 1:
            return path[path.index(i) :]
        for k in path:
            state[k] = 2
    return None


def chain(n: int, ax: float = 0.5, cm: float = 1.0) -> Morphology:
    """Linear chain ``0 – 1 – … – n-1`` rooted at 0 (abstract coupling ``ax`` in mS/cm²)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise MorphologyError(f"a chain needs n ≥ 1 compartments; got {n!r}")
    return Morphology.from_parents(np.arange(n) - 1, ax=ax, cm=cm)


def paper_chain() -> Morphology:
    """The paper's 6-compartment toy chain: 0 = soma, 1 = proximal, 5 = distal.

    Coupling ``ax = 0.5`` mS/cm² per edge and ``Cm = 0.45`` µF/cm², as in the paper.
    """
    return chain(6, ax=0.5, cm=0.45)
