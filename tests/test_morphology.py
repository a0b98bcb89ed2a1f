import numpy as np
import pytest

from bayesneuron import Morphology, MorphologyError, chain, paper_chain


def test_chain_structure():
    m = chain(4, ax=0.2, cm=0.45)
    assert m.n_comp == 4 and m.n_nodes == 4
    assert m.parents.tolist() == [-1, 0, 1, 2]
    assert np.allclose(m.axial[1:], 0.2) and np.allclose(m.cm, 0.45)
    assert m.current_unit == "uA/cm2"


def test_paper_chain_matches_paper_adjacency():
    m = paper_chain()
    a = np.zeros((6, 6))
    for i in range(5):
        a[i, i + 1] = a[i + 1, i] = 1
    m2 = Morphology.from_adjacency(a, ax=0.5, cm=0.45)
    assert m.parents.tolist() == m2.parents.tolist()
    assert np.allclose(m.cm, 0.45) and np.allclose(m.axial[1:], 0.5)


def test_site_resolution():
    m = paper_chain()
    assert m.indices(None) == tuple(range(6))
    assert m.indices([0, -1]) == (0, 5)
    assert m.index("3") == 3
    with pytest.raises(MorphologyError, match="compartment 7 does not exist.*6 compartments"):
        m.index(7)
    with pytest.raises(MorphologyError, match="no compartment named 'dend'"):
        m.index("dend")
    with pytest.raises(MorphologyError, match="empty list"):
        m.indices([])


@pytest.mark.parametrize(
    "parents, match",
    [
        ([-1, 0, 5], r"node 2 .* names parent 5, which does not exist"),
        ([-1, 0, -1], r"2 roots \(nodes \[0, 2\]"),
        ([-1, 2, 1], r"nodes \[1, 2\] .* form a cycle"),
        ([1, 0], r"no root"),
        ([-1, 1], r"node 1 .* is its own parent"),
    ],
)
def test_invalid_trees_name_the_culprit(parents, match):
    with pytest.raises(MorphologyError, match=match):
        Morphology.from_parents(parents)


def test_adjacency_with_cycle_or_disconnected_part_is_rejected():
    # A 5-cycle, as in the paper's 184-node graph (paper-model.md §2.2).
    a = np.zeros((6, 6), dtype=int)
    for i, j in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 1)]:
        a[i, j] = a[j, i] = 1
    a[0, 5] = a[5, 0] = 1
    with pytest.raises(MorphologyError, match="cycle"):
        Morphology.from_adjacency(a)
    b = np.zeros((4, 4), dtype=int)
    b[0, 1] = b[1, 0] = b[2, 3] = b[3, 2] = 1
    with pytest.raises(MorphologyError, match=r"disconnected: 2 node\(s\).*\[2, 3\]"):
        Morphology.from_adjacency(b)
    c = np.zeros((3, 3), dtype=int)
    c[0, 1] = 1
    with pytest.raises(MorphologyError, match="not symmetric"):
        Morphology.from_adjacency(c)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(ax=-0.5), "axial conductance .* must be finite and > 0"),
        (dict(cm=0.0), r"compartment 0 \('0'\) has cm = 0.0"),
        (dict(cm=[1.0, np.nan, 1.0]), r"compartment 1 .* has cm = nan"),
    ],
)
def test_non_positive_values_rejected(kw, match):
    with pytest.raises(MorphologyError, match=match):
        Morphology.from_parents([-1, 0, 1], **kw)


def test_chain_needs_a_compartment():
    with pytest.raises(MorphologyError, match="n ≥ 1"):
        chain(0)
