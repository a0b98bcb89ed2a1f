"""Generate ``l23_geometry_neuron.npz``: NEURON's segment areas and axial resistances of the
bundled human L2/3 cell, loaded with NEURON's own SWC importer (Import3d).

Two compartmentalisations, Ra = 35.4 Ω·cm and cm = 1 µF/cm² (bayesneuron's defaults):
``nseg1`` (one segment per section) and ``dlambda`` (stdlib's d_lambda rule, d_lambda = 0.1 at
100 Hz). For each, keys ``<tag>_names`` / ``<tag>_area`` (µm², ``seg.area()``) / ``<tag>_ri``
(MΩ, ``seg.ri()``) per segment, and ``<tag>_end_names`` / ``<tag>_end_ri`` for every section's
x = 1 end (``sec(1).ri()``: the last segment's right half). Names follow bayesneuron
(``soma``, ``axon``, ``dend[k]``, ``apic[k]``; segment ``f"{sec}({x:.4g})"``).

Run from the repository root:  python tests/reference/generate_neuron_l23_geometry.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SWC = ROOT / "bayesneuron" / "data" / "gidon2020_L23_171122005.swc"
OUT = Path(__file__).with_name("l23_geometry_neuron.npz")
RA, CM, D_LAMBDA, FREQ = 35.4, 1.0, 0.1, 100.0


def import3d(h, path):
    """Instantiate an SWC file with Import3d; returns ``{bayesneuron name: section}``."""
    h.load_file("stdlib.hoc")
    h.load_file("import3d.hoc")
    before = {s.hoc_internal_name() for s in h.allsec()}
    reader = h.Import3d_SWC_read()
    reader.quiet = 1
    reader.input(str(path))
    h.Import3d_GUI(reader, False).instantiate(None)
    secs = [s for s in h.allsec() if s.hoc_internal_name() not in before]
    bases = [s.name().split("[")[0] for s in secs]
    return {(b if bases.count(b) == 1 else s.name()): s for b, s in zip(bases, secs, strict=True)}


def tables(secs: dict, prefix: str) -> dict:
    """Per-segment area/ri and per-section x = 1 ri, keyed with ``prefix``."""
    names, area, ri, end_names, end_ri = [], [], [], [], []
    for name, sec in secs.items():
        for seg in sec:
            names.append(f"{name}({seg.x:.4g})")
            area.append(seg.area())
            ri.append(seg.ri())
        end_names.append(f"{name}(1)")
        end_ri.append(sec(1.0).ri())
    return {
        f"{prefix}_names": np.array(names),
        f"{prefix}_area": np.array(area),
        f"{prefix}_ri": np.array(ri),
        f"{prefix}_end_names": np.array(end_names),
        f"{prefix}_end_ri": np.array(end_ri),
    }


def main():
    from neuron import h

    secs = import3d(h, SWC)
    for sec in secs.values():
        sec.Ra, sec.cm, sec.nseg = RA, CM, 1
    out = tables(secs, "nseg1")
    for sec in secs.values():
        sec.nseg = int((sec.L / (D_LAMBDA * h.lambda_f(FREQ, sec=sec)) + 0.9) / 2) * 2 + 1
    out.update(tables(secs, "dlambda"))
    np.savez_compressed(OUT, **out)
    print(
        f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB): {len(secs)} sections, "
        f"{len(out['nseg1_names'])} / {len(out['dlambda_names'])} segments, "
        f"total area {out['nseg1_area'].sum():.2f} µm²"
    )


if __name__ == "__main__":
    main()
