"""Cable geometry and SWC import: NEURON's areas, axial resistances and tree, and the errors.

NEURON references: committed tables in ``tests/reference`` (always run) and NEURON itself,
live (``neuron`` marker).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _scripts import load_script

from bayesneuron.errors import MorphologyError
from bayesneuron.morphology.geometry import Section, from_sections, section_nseg, segment_geometry
from bayesneuron.morphology.swc import load_swc, read_swc_sections
from bayesneuron.reference.cells import L23_SWC, hh_tree_cell, l23_cell

REF = Path(__file__).parent / "reference"
SWC_PATH = Path(__file__).parents[1] / "bayesneuron" / "data" / L23_SWC
PI = math.pi


def _load_script(name):
    return load_script(REF / f"{name}.py")


def _node_names(m):
    return list(m.names) + list(m._junction_names)


def _ri(m):
    """Resistance (MΩ) from every non-root node to its parent, by node name."""
    names = _node_names(m)
    return {names[i]: 1e-3 / m.axial[i] for i in range(m.n_nodes) if m.parents[i] >= 0}


def _steady_state(m, g_pas, e_pas, site, amp):
    """Passive steady state (mV) of every compartment: ``g_pas`` mS/cm², ``amp`` nA at ``site``."""
    n = m.n_nodes
    a, b = np.zeros((n, n)), np.zeros(n)
    for i, p in enumerate(m.parents):
        if p >= 0:
            g = m.axial[i]
            a[i, i] += g
            a[p, p] += g
            a[i, p] -= g
            a[p, i] -= g
    gm = g_pas * m.area  # mS
    a[np.arange(m.n_comp), np.arange(m.n_comp)] += gm
    b[: m.n_comp] += gm * e_pas
    b[site] += amp * 1e-3  # nA → µA, with mS·mV = µA
    return np.linalg.solve(a, b)[: m.n_comp]


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# --------------------------------------------------------------------------- hh tree
def test_hh_tree_structure():
    m = hh_tree_cell().morphology
    assert m.n_comp == 6 and m.n_nodes == 9 and m.geometric
    assert m.names == tuple(["soma(0.5)"] + [f"dend[{k}](0.5)" for k in range(5)])
    assert m._junction_names == ("soma(0)", "soma(1)", "dend[0](1)")
    # dend0, dend1 on soma(1); dend2 on soma(0); dend3, dend4 on dend0(1)
    assert m.parents.tolist() == [-1, 7, 7, 6, 8, 8, 0, 0, 1]
    assert m.cm.tolist() == [1.0] * 6


def test_hh_tree_geometry_matches_committed_neuron():
    ref = np.load(REF / "hh_tree_neuron.npz")
    m = hh_tree_cell().morphology
    assert list(ref["names"]) == list(m.names)
    np.testing.assert_allclose(m.area * 1e8, ref["area"], rtol=1e-12)
    ri = _ri(m)
    for name, r in zip(ref["names"][1:], ref["ri"][1:], strict=True):
        assert ri[name] == pytest.approx(r, rel=1e-12)
    for name, r in zip(ref["junction_names"], ref["junction_ri"], strict=True):
        assert ri[name] == pytest.approx(r, rel=1e-12)


@pytest.mark.neuron
def test_hh_tree_geometry_matches_neuron_live():
    pytest.importorskip("neuron")
    from neuron import h

    gen = _load_script("generate_neuron_hh_tree")
    secs = gen.build(h)
    names, area, ri, j_names, j_ri = gen.geometry(secs)
    m = hh_tree_cell().morphology
    np.testing.assert_allclose(m.area * 1e8, area, rtol=1e-12)
    mine = _ri(m)
    for name, r in list(zip(names[1:], ri[1:], strict=True)) + list(
        zip(j_names, j_ri, strict=True)
    ):
        assert mine[name] == pytest.approx(r, rel=1e-12)


# --------------------------------------------------------------------------- formulas by hand
def test_cylinder_formulas_by_hand():
    ra, length, diam = 100.0, 100.0, 2.0
    m = from_sections(
        [
            Section("a", None, length=length, diam=diam, nseg=2),
            Section("b", 0, 0.5, length=50.0, diam=1.0),
            Section("c", 0, 0.25, length=50.0, diam=1.0),
            Section("d", 0, 1.0, length=50.0, diam=1.0),
        ],
        ra=ra,
        cm=[1.0, 2.0, 1.0, 1.0],
    )
    assert m.names == ("a(0.25)", "a(0.75)", "b(0.5)", "c(0.5)", "d(0.5)")
    dx = length / 2
    np.testing.assert_allclose(m.area[:2], PI * diam * dx * 1e-8)  # µm² → cm²
    np.testing.assert_allclose(m.area[2:], PI * 1.0 * 50.0 * 1e-8)
    r_half_a = 0.01 * ra * (dx / 2) / (PI * diam**2 / 4)  # MΩ
    r_half_child = 0.01 * ra * 25.0 / (PI / 4)
    assert m.axial[1] == pytest.approx(1e-3 / (2 * r_half_a))  # mS
    # b at 0.5 → segment int(0.5·2) = 1; c at 0.25 → segment 0; d at 1 → the end junction
    assert m.parents[2] == 1 and m.parents[3] == 0 and m.parents[4] == 5
    assert m.axial[2] == pytest.approx(1e-3 / r_half_child)  # only the child's own half
    assert m.parents[5] == 1 and m.axial[5] == pytest.approx(1e-3 / r_half_a)
    assert m.cm.tolist() == [1.0, 1.0, 2.0, 1.0, 1.0]


def test_tapered_points_by_hand():
    # one frustum, d 4 → 2 µm over 30 µm along x, and a duplicated point with a diameter step
    ra, L, d0, d1 = 70.0, 30.0, 4.0, 2.0
    pts = np.array([[0, 0, 0, d0], [L, 0, 0, d1]], dtype=float)
    area, r = segment_geometry(Section("t", points=pts), 1, ra)
    dm = (d0 + d1) / 2
    frustum = lambda a, b, h: PI / 2 * (a + b) * math.hypot(h, (b - a) / 2)  # noqa: E731
    assert area[0] == pytest.approx(frustum(d0, dm, L / 2) + frustum(dm, d1, L / 2), rel=1e-6)
    assert r[0, 0] == pytest.approx(0.04 * ra * (L / 2) / (PI * d0 * dm), rel=1e-6)
    assert r[0, 1] == pytest.approx(0.04 * ra * (L / 2) / (PI * dm * d1), rel=1e-6)
    step = np.array([[0, 0, 0, 2.0], [10, 0, 0, 2.0], [10, 0, 0, 1.0], [20, 0, 0, 1.0]])
    area, r = segment_geometry(Section("s", points=step), 1, ra)
    annulus = PI / 4 * (2.0**2 - 1.0**2)
    assert area[0] == pytest.approx(PI * 2.0 * 10 + PI * 1.0 * 10 + annulus, rel=1e-6)
    assert r.sum() == pytest.approx(0.04 * ra * (10 / 4.0 + 10 / 1.0) / PI, rel=1e-6)


def test_points_like_a_cylinder_equal_the_cylinder():
    pts = np.array([[0, 0, 0, 2.0], [30, 40, 0, 2.0], [30, 40, 50, 2.0]])  # L = 100 µm
    a1, r1 = segment_geometry(Section("p", points=pts), 4, 50.0)
    a2, r2 = segment_geometry(Section("c", length=100.0, diam=2.0), 4, 50.0)
    np.testing.assert_allclose(a1, a2, rtol=1e-12)
    np.testing.assert_allclose(r1, r2, rtol=1e-12)


def test_nseg_rules():
    ra, cm = 100.0, 1.0
    cyl = Section("c", length=1000.0, diam=2.0)
    lam = 1e5 * math.sqrt(2.0 / (4 * PI * 100.0 * ra * cm))  # µm at 100 Hz
    expected = int((1000.0 / (0.1 * lam) + 0.9) / 2) * 2 + 1
    assert section_nseg(cyl, ra, cm, d_lambda=0.1) == expected
    assert section_nseg(cyl, ra, cm, nseg=4) == 4
    assert section_nseg(Section("c", length=1000.0, diam=2.0, nseg=2), ra, cm, d_lambda=0.1) == 2
    pts = np.array([[0, 0, 0, 2.0], [1000.0, 0, 0, 2.0]])
    assert section_nseg(Section("p", points=pts), ra, cm, d_lambda=0.1) == expected
    m = from_sections([cyl, Section("d", 0, length=10.0, diam=1.0, nseg=3)], ra=ra, nseg=5)
    assert m.n_comp == 8


# --------------------------------------------------------------------------- the L2/3 cell
def test_l23_cell_sections_and_area():
    secs = read_swc_sections(SWC_PATH)
    assert len(secs) == 184
    kinds = [s.name.split("[")[0] for s in secs]
    assert [kinds.count(k) for k in ("soma", "axon", "dend", "apic")] == [1, 1, 101, 81]
    soma = kinds.index("soma")
    kids = [s for s in secs if s.parent == soma]
    assert len(kids) == 11
    assert (
        sorted((s.name.split("[")[0], s.parent_x) for s in kids)
        == [("apic", 0.5)] + [("axon", 1.0)] + [("dend", 0.5)] * 9
    )
    cell = l23_cell()
    assert cell.n_comp == 184
    assert cell.morphology.area.sum() * 1e8 == pytest.approx(106620.5, rel=1e-4)
    # total area does not depend on the compartmentalisation
    m = l23_cell(d_lambda=0.1).morphology
    assert m.area.sum() * 1e8 == pytest.approx(106620.5, rel=1e-4)


@pytest.mark.parametrize("tag, kw", [("nseg1", {"nseg": 1}), ("dlambda", {"d_lambda": 0.1})])
def test_l23_geometry_matches_committed_neuron(tag, kw):
    ref = np.load(REF / "l23_geometry_neuron.npz")
    m = load_swc(SWC_PATH, ra=35.4, cm=1.0, **kw)
    area = dict(zip(ref[f"{tag}_names"], ref[f"{tag}_area"], strict=True))
    assert set(area) == set(m.names)
    got = m.area * 1e8
    want = np.array([area[n] for n in m.names])
    assert np.max(np.abs(got / want - 1)) < 1e-12
    ref_ri = dict(zip(ref[f"{tag}_names"], ref[f"{tag}_ri"], strict=True))
    ref_ri.update(zip(ref[f"{tag}_end_names"], ref[f"{tag}_end_ri"], strict=True))
    mine = _ri(m)
    assert len(mine) == m.n_nodes - 1
    rel = max(abs(r / ref_ri[name] - 1) for name, r in mine.items())
    assert rel < 1e-12


# --------------------------------------------------------------------------- SWC rules
_ONE_POINT_SOMA = """# a point soma with two dendrites and an axon
1 1 0 0 0 5 -1
2 3 6 0 0 1 1
3 3 10 1 0 0.9 2
4 3 14 2 1 0.8 3
5 3 16 5 1 0.5 4
6 3 18 7 1 0.5 5
7 3 16 -1 1 0.5 4
8 3 19 -3 2 0.4 7
9 4 0 7 0 1.5 1
10 4 0 12 0 1.2 9
11 2 -6 0 0 0.5 1
12 2 -20 0 0 0.5 11
13 3 22 -5 2 0.3 8
"""

_THREE_POINT_SOMA = """1 1 0 0 0 5 -1
2 1 0 -5 0 5 1
3 1 0 5 0 5 1
4 3 6 0 0 1 1
5 3 10 1 0 0.9 4
6 4 0 9 0 1.5 1
7 4 0 14 0 1.1 6
"""

_MULTI_POINT_SOMA = """1 1 0 0 0 4 -1
2 1 3 0 0 5 1
3 1 6 0 0 5.5 2
4 1 9 0 0 5 3
5 1 12 0 0 4 4
6 3 3 6 0 1 3
7 3 3 10 0 0.9 6
8 3 3 14 0 0.8 7
9 3 6 -6 0 1.2 3
10 3 6 -10 0 1.1 9
11 2 14 0 0 0.8 5
12 2 30 0 0 0.8 11
13 3 -3 0 0 1 1
14 3 -8 1 0 1 13
15 3 1 6 1 0.7 6
16 3 -1 9 1 0.6 15
17 4 12 5 0 2 5
18 4 12 10 0 1.5 17
19 4 14 15 0 1 18
20 4 10 15 0 1 18
"""

_SWC_CASES = {
    "one_point_soma": _ONE_POINT_SOMA,
    "three_point_soma": _THREE_POINT_SOMA,
    "multi_point_soma": _MULTI_POINT_SOMA,
}


def test_swc_point_soma_becomes_cylinder(tmp_path):
    secs = read_swc_sections(_write(tmp_path, "a.swc", _ONE_POINT_SOMA))
    soma = secs[0]
    assert soma.name == "soma" and soma.parent is None
    np.testing.assert_allclose(soma.points, [[-5, 0, 0, 10], [0, 0, 0, 10], [5, 0, 0, 10]])
    by_name = {s.name: s for s in secs}
    assert {s.parent_x for s in secs if s.parent == 0} == {0.5}
    # dendrites on the soma start at their own first point (a wire to the soma centre)
    np.testing.assert_allclose(by_name["dend[0]"].points[0], [6, 0, 0, 2])
    # a child repeats its parent's last point, with the parent's diameter
    child = by_name["dend[1]"]
    assert secs[child.parent].name == "dend[0]" and child.parent_x == 1.0
    np.testing.assert_allclose(child.points[0], [14, 2, 1, 1.6])
    # the single non-contiguous child of id 8 starts a section of its own
    assert len(secs) == 7


def test_swc_three_point_soma_is_a_sphere(tmp_path):
    secs = read_swc_sections(_write(tmp_path, "b.swc", _THREE_POINT_SOMA))
    assert [s.name for s in secs] == ["soma", "dend", "apic"]
    np.testing.assert_allclose(secs[0].points[:, 0], [-5, 0, 5])
    assert [s.parent_x for s in secs[1:]] == [0.5, 0.5]


def test_swc_multi_point_soma_rules(tmp_path):
    secs = read_swc_sections(_write(tmp_path, "c.swc", _MULTI_POINT_SOMA))
    by_name = {s.name: s for s in secs}
    assert len(by_name["soma"].points) == 5  # one section despite its dendrites
    where = {s.name: (secs[s.parent].name, s.parent_x) for s in secs if s.parent is not None}
    assert where["dend[0]"] == ("soma", 0.5)  # interior point: wire, no soma point
    np.testing.assert_allclose(by_name["dend[0]"].points[0], [3, 6, 0, 2])
    assert where["axon"] == ("soma", 1.0)  # last point: repeats it with its own diameter
    np.testing.assert_allclose(by_name["axon"].points[0], [12, 0, 0, 1.6])
    assert where["dend[2]"] == ("soma", 0.0)  # the root's first point
    # a branch off the first point of a soma dendrite attaches where that dendrite does
    assert where["dend[3]"] == ("soma", 0.5)
    np.testing.assert_allclose(by_name["dend[3]"].points[0], [3, 6, 0, 2])


def test_swc_comments_blank_lines_and_id_order(tmp_path):
    text = "# header\n\n  # indented comment\n" + "\n".join(
        reversed(_THREE_POINT_SOMA.strip().splitlines())
    )
    a = read_swc_sections(_write(tmp_path, "r.swc", text))
    b = read_swc_sections(_write(tmp_path, "s.swc", _THREE_POINT_SOMA))
    assert [s.name for s in a] == [s.name for s in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.points, y.points)


# --------------------------------------------------------------------------- NEURON live
def _import3d(h, path):
    gen = _load_script("generate_neuron_l23_geometry")
    return gen.import3d(h, path)


def _delete(h, secs):
    for sec in secs.values():
        h.delete_section(sec=sec)


def _neuron_nseg(h, secs, kw):
    for sec in secs.values():
        if "d_lambda" in kw:
            sec.nseg = (
                int((sec.L / (kw["d_lambda"] * h.lambda_f(100.0, sec=sec)) + 0.9) / 2) * 2 + 1
            )
        else:
            sec.nseg = kw["nseg"]


def _compare_live(h, path, ra, kw):
    """Sections, 3-D points, areas, ri and a passive steady state vs NEURON's Import3d.

    Asserts that sections and points are identical; returns the largest relative area and ri
    differences, and the steady-state error relative to the largest deflection.
    """
    secs = _import3d(h, path)
    stim = None
    try:
        mine = read_swc_sections(path)
        assert {s.name for s in mine} == set(secs)
        for s in mine:
            ns = secs[s.name]
            pts = np.array(
                [[ns.x3d(i), ns.y3d(i), ns.z3d(i), ns.diam3d(i)] for i in range(ns.n3d())]
            )
            np.testing.assert_array_equal(pts, s.points.astype(np.float32).astype(np.float64))
        for sec in secs.values():
            sec.Ra, sec.cm = ra, 1.0
            sec.insert("pas")
            sec.g_pas, sec.e_pas = 1e-4, -70.0
        _neuron_nseg(h, secs, kw)
        m = from_sections(mine, ra=ra, **kw)
        area = {f"{n}({seg.x:.4g})": seg.area() for n, sec in secs.items() for seg in sec}
        ri = {f"{n}({seg.x:.4g})": seg.ri() for n, sec in secs.items() for seg in sec}
        ri.update({f"{n}(1)": sec(1.0).ri() for n, sec in secs.items()})
        root = next(s.name for s in mine if s.parent is None)
        ri[f"{root}(0)"] = secs[root](0.5 / secs[root].nseg).ri()
        got = m.area * 1e8
        area_err = float(np.max(np.abs(got / np.array([area[n] for n in m.names]) - 1)))
        ri_err = max(abs(r / ri[n] - 1) for n, r in _ri(m).items())
        # the tree itself: a passive steady state (one huge backward-Euler step in NEURON)
        site = m.n_comp - 1
        sec_name, x = m.names[site][:-1].rsplit("(", 1)
        for sec in secs.values():
            sec.cm = 1e-9  # the huge step below then leaves no trace of the capacitance
        stim = h.IClamp(secs[sec_name](float(x)))
        stim.delay, stim.dur, stim.amp = 0.0, 1e12, 0.2
        h.CVode().active(0)
        h.secondorder, h.dt = 0, 1e9
        h.finitialize(-70.0)
        h.fadvance()
        v_nrn = {f"{n}({seg.x:.4g})": seg.v for n, sec in secs.items() for seg in sec}
        v = _steady_state(m, 0.1, -70.0, site, 0.2)
        err = np.max(np.abs(v - np.array([v_nrn[n] for n in m.names])))
        assert np.ptp(v) > 0.1  # the check has teeth: voltages do differ along the cell
        return area_err, ri_err, float(err / np.max(np.abs(v + 70.0)))
    finally:
        stim = None
        _delete(h, secs)


@pytest.mark.neuron
@pytest.mark.parametrize("kw", [{"nseg": 1}, {"d_lambda": 0.1}], ids=["nseg1", "dlambda"])
def test_l23_matches_neuron_import3d_live(kw):
    pytest.importorskip("neuron")
    from neuron import h

    area_err, ri_err, v_err = _compare_live(h, SWC_PATH, 35.4, kw)
    assert area_err < 1e-12 and ri_err < 1e-12 and v_err < 1e-9


@pytest.mark.neuron
@pytest.mark.parametrize("case", sorted(_SWC_CASES))
@pytest.mark.parametrize(
    "kw", [{"nseg": 1}, {"nseg": 2}, {"d_lambda": 0.02}], ids=["n1", "n2", "dl"]
)
def test_swc_soma_rules_match_neuron_live(tmp_path, case, kw):
    pytest.importorskip("neuron")
    from neuron import h

    area_err, ri_err, v_err = _compare_live(
        h, _write(tmp_path, f"{case}.swc", _SWC_CASES[case]), 150.0, kw
    )
    assert area_err < 1e-12 and ri_err < 1e-12 and v_err < 1e-9


# --------------------------------------------------------------------------- geometry errors
def _cyl(name="s", parent=None, x=1.0, **kw):
    args = {"length": 10.0, "diam": 1.0} | kw
    return Section(name, parent, x, **args)


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"length": 0.0}, ["'bad'", "length"]),
        ({"length": -3.0}, ["'bad'", "length"]),
        ({"length": float("nan")}, ["'bad'", "length"]),
        ({"diam": 0.0}, ["'bad'", "diam"]),
        ({"diam": float("nan")}, ["'bad'", "diam"]),
        ({"nseg": 0}, ["'bad'", "nseg"]),
        ({"nseg": 2.5}, ["'bad'", "nseg"]),
        ({"length": None}, ["'bad'", "length and diam"]),
    ],
)
def test_section_errors_name_the_section(kw, words):
    with pytest.raises(MorphologyError) as e:
        _cyl("bad", **kw)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("x", [-0.1, 1.5, float("nan")])
def test_parent_x_outside_unit_interval(x):
    with pytest.raises(MorphologyError, match=r"'d'.*parent_x"):
        _cyl("d", 0, x)


@pytest.mark.parametrize(
    "points, words",
    [
        (np.zeros((3, 3)), ["'p'", "shape"]),
        (np.array([[0, 0, 0, 1.0]]), ["'p'", "n ≥ 2"]),
        (np.array([[0, 0, 0, 1.0], [1, 0, 0, 0.0]]), ["'p'", "point 1", "diameter"]),
        (np.array([[0, 0, 0, 1.0], [1, 0, np.nan, 1.0]]), ["'p'", "point 1"]),
        (np.array([[2, 0, 0, 1.0], [2, 0, 0, 1.0]]), ["'p'", "zero length"]),
    ],
)
def test_point_errors_name_the_section(points, words):
    with pytest.raises(MorphologyError) as e:
        Section("p", points=points)
    for w in words:
        assert w in str(e.value)


def test_points_and_cylinder_together_rejected():
    with pytest.raises(MorphologyError, match=r"'p'.*both"):
        Section("p", length=3.0, diam=1.0, points=np.array([[0, 0, 0, 1.0], [1, 0, 0, 1.0]]))


@pytest.mark.parametrize("what", ["ra", "cm"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_ra_cm_name_the_section(what, bad):
    secs = [_cyl("soma"), _cyl("dend", 0)]
    with pytest.raises(MorphologyError, match=r"'dend'"):
        from_sections(secs, **{what: [1.0, bad]})


def test_per_section_values_need_one_per_section():
    with pytest.raises(MorphologyError, match=r"one value per section \(2,\)"):
        from_sections([_cyl("soma"), _cyl("dend", 0)], ra=[1.0, 2.0, 3.0])


@pytest.mark.parametrize("nseg", [0, -2, 1.5])
def test_bad_default_nseg(nseg):
    with pytest.raises(MorphologyError, match="nseg"):
        from_sections([_cyl("soma")], nseg=nseg)


def test_bad_d_lambda():
    with pytest.raises(MorphologyError, match="d_lambda"):
        from_sections([_cyl("soma")], d_lambda=-0.1)


def test_parent_out_of_range():
    with pytest.raises(MorphologyError, match=r"'dend'.*parent 5.*does not exist"):
        from_sections([_cyl("soma"), _cyl("dend", 5)])


def test_several_roots():
    with pytest.raises(MorphologyError, match=r"2 root sections.*'soma'.*'other'"):
        from_sections([_cyl("soma"), _cyl("other")])


def test_cycle_without_root():
    with pytest.raises(MorphologyError, match=r"no root section"):
        from_sections([_cyl("a", 1), _cyl("b", 0)])


def test_cycle_beside_root():
    secs = [_cyl("soma"), _cyl("a", 2), _cyl("b", 1)]
    with pytest.raises(MorphologyError, match=r"cycle") as e:
        from_sections(secs)
    assert "'a'" in str(e.value) and "'b'" in str(e.value)


def test_x0_only_on_root():
    secs = [_cyl("soma"), _cyl("dend", 0), _cyl("twig", 1, 0.0)]
    with pytest.raises(MorphologyError, match=r"'twig'.*x = 0.*'dend'.*not the root"):
        from_sections(secs)
    from_sections([_cyl("soma"), _cyl("dend", 0, 0.0)])  # fine on the root


def test_duplicate_section_names():
    with pytest.raises(MorphologyError, match=r"unique.*'dend'"):
        from_sections([_cyl("soma"), _cyl("dend", 0), _cyl("dend", 0)])


def test_not_a_section():
    with pytest.raises(MorphologyError, match=r"sections\[1\]"):
        from_sections([_cyl("soma"), {"name": "dend"}])


# --------------------------------------------------------------------------- SWC errors
@pytest.mark.parametrize(
    "text, words",
    [
        ("1 1 0 0 0 5 -1\n2 3 1 0 0 1\n", ["line 2", "6 columns"]),
        ("1 1 0 0 0 5 -1\n2 3 1 0 0 1 1 7\n", ["line 2", "8 columns"]),
        ("1 1 0 0 0 5 -1\n2 3 1 zero 0 1 1\n", ["line 2", "'zero'"]),
        ("1 1 0 0 0 5 -1\n2.5 3 1 0 0 1 1\n", ["line 2", "id"]),
        ("1 1 0 0 0 5 -1\n2 3 1 0 0 1 1\n2 3 2 0 0 1 1\n", ["id 2", "lines 2 and 3"]),
        ("1 1 0 0 0 5 -1\n2 3 1 0 0 1 7\n", ["line 2", "id 2", "parent 7"]),
        ("1 1 0 0 0 5 -1\n2 3 1 0 0 1 -1\n", ["2 roots", "line 1", "line 2"]),
        ("1 1 0 0 0 5 -1\n2 3 1 0 0 1 3\n3 3 2 0 0 1 2\n", ["cycle", "2", "3"]),
        ("1 3 0 0 0 5 2\n2 3 1 0 0 1 1\n", ["no root", "cycle"]),
        ("1 1 0 0 0 5 -1\n2 3 1 0 0 0 1\n", ["line 2", "id 2", "radius"]),
        ("1 1 0 0 0 5 -1\n2 3 1 0 0 -1 1\n", ["line 2", "radius"]),
        ("# only a comment\n\n", ["empty"]),
        ("", ["empty"]),
        ("1 1 0 0 0 5 -1\n2 3 0 0 0 1 1\n", ["line 2", "zero length"]),
    ],
)
def test_swc_errors_name_the_line(tmp_path, text, words):
    path = _write(tmp_path, "bad.swc", text)
    with pytest.raises(MorphologyError) as e:
        read_swc_sections(path)
    msg = str(e.value)
    for w in words:
        assert w in msg, msg


def test_swc_missing_file(tmp_path):
    with pytest.raises(MorphologyError, match="cannot read"):
        load_swc(tmp_path / "nope.swc")
