"""Generate ``hh_tree_neuron.npz``: NEURON traces of ``bayesneuron.cells.hh_tree_cell``.

The same cell is built in NEURON (cylinders, nseg = 1, Ra = 100 Ω·cm, cm = 1 µF/cm², ``hh``
everywhere with exact rates, ``usetable_hh = 0``), stepped with NEURON's default fixed-step
backward-Euler scheme (cvode off, dt = 0.025 ms, celsius = 6.3 °C) from ``finitialize(-65)``.
An IClamp at soma(0.5) (delay 1 ms, duration 15 ms) takes 12 amplitudes from 0 to 0.5 nA;
the voltage of every segment is recorded at every step, t = 0 … 20 ms.

Saved (float64): ``amplitudes [amp]`` nA, ``t [time]`` ms, ``v [amp, comp, time]`` mV in
bayesneuron's compartment order, ``names [comp]``, and NEURON's per-segment ``area`` (µm²) and
``ri`` (MΩ, ``seg.ri()``) plus ``junction_names`` / ``junction_ri`` (``sec(x).ri()`` of the
end nodes where children attach) for the geometry tests.

Run from the repository root:  python tests/reference/generate_neuron_hh_tree.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("hh_tree_neuron.npz")
AMPLITUDES = np.linspace(0.0, 0.5, 12)  # nA; the first spike comes between 0.09 and 0.14 nA
DT, T_STOP, DELAY, DUR, V0, CELSIUS = 0.025, 20.0, 1.0, 15.0, -65.0, 6.3

# (name, parent, parent_x, L µm, diam µm): must match bayesneuron.cells.hh_tree_sections()
SECTIONS = [
    ("soma", None, 1.0, 20.0, 20.0),
    ("dend[0]", 0, 1.0, 200.0, 2.0),
    ("dend[1]", 0, 1.0, 150.0, 1.5),
    ("dend[2]", 0, 0.0, 100.0, 1.0),
    ("dend[3]", 1, 1.0, 120.0, 1.0),
    ("dend[4]", 1, 1.0, 180.0, 0.8),
]


def build(h):
    """The hh tree in NEURON; returns the sections in bayesneuron's order."""
    secs = []
    for name, parent, x, length, diam in SECTIONS:
        sec = h.Section(name=name)
        sec.L, sec.diam, sec.nseg, sec.Ra, sec.cm = length, diam, 1, 100.0, 1.0
        sec.insert("hh")
        if parent is not None:
            sec.connect(secs[parent](x), 0)
        secs.append(sec)
    return secs


def run(h, secs, amplitudes):
    """Voltages ``[amp, comp, time]`` (mV) and times ``[time]`` (ms)."""
    h.usetable_hh = 0
    h.celsius = CELSIUS
    h.dt = DT
    h.secondorder = 0
    h.CVode().active(0)
    stim = h.IClamp(secs[0](0.5))
    stim.delay, stim.dur = DELAY, DUR
    n_steps = int(round(T_STOP / DT))
    segs = [seg for sec in secs for seg in sec]
    out = np.empty((len(amplitudes), len(segs), n_steps + 1))
    for a, amp in enumerate(amplitudes):
        stim.amp = float(amp)
        h.finitialize(V0)
        out[a, :, 0] = [seg.v for seg in segs]
        for k in range(1, n_steps + 1):
            h.fadvance()
            out[a, :, k] = [seg.v for seg in segs]
    return out, np.arange(n_steps + 1) * DT


def geometry(secs):
    """Per-segment area (µm²) and ri (MΩ); ri of the end nodes that have children."""
    names = [f"{sec.name()}({seg.x:.4g})" for sec in secs for seg in sec]
    area = np.array([seg.area() for sec in secs for seg in sec])
    ri = np.array([seg.ri() for sec in secs for seg in sec])
    ends = sorted(
        {(SECTIONS[i][1], SECTIONS[i][2]) for i in range(len(secs)) if SECTIONS[i][1] is not None}
    )
    j_names = [f"{SECTIONS[p][0]}({x:g})" for p, x in ends]
    # NEURON's ri at x = 1 is the last segment's right half; at the root's x = 0 it is the
    # first segment's left half, which seg.ri() of that segment also reports.
    j_ri = [secs[p](1.0).ri() if x == 1.0 else secs[p](0.5).ri() for p, x in ends]
    return names, area, ri, j_names, np.array(j_ri)


def main():
    from neuron import h

    h.load_file("stdrun.hoc")
    secs = build(h)
    v, t = run(h, secs, AMPLITUDES)
    names, area, ri, j_names, j_ri = geometry(secs)
    np.savez_compressed(
        OUT,
        amplitudes=AMPLITUDES,
        t=t,
        v=v,
        names=np.array(names),
        area=area,
        ri=ri,
        junction_names=np.array(j_names),
        junction_ri=j_ri,
    )
    spikes = [(np.diff((v[a, 0] > 0).astype(int)) == 1).sum() for a in range(len(AMPLITUDES))]
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB); soma spikes per amplitude: {spikes}")


if __name__ == "__main__":
    main()
