"""Generate ``cortical_neuron.npz``: NEURON traces of the cortical channel library, one channel
(plus leak) at a time, on the cell of ``generate_neuron_hh_tree.py``.

The NMODL files in ``mod/`` (one per channel of ``bayesneuron.channels.cortical``, the same
equations, no tables, ``METHOD cnexp``) are compiled with ``nrnivmodl`` in a temporary folder.
The hh tree's geometry (cylinders, nseg = 1, Ra = 100 Ω·cm, cm = 1 µF/cm²) carries, in every
section, ``pas`` (the leak, g 0.05 mS/cm², e −70 mV) and, per configuration, one channel of the
library at the conductance in ``CHANNELS``, or all five at once (``"all"``), or none (``"l"``).
NEURON's default fixed-step backward-Euler scheme (cvode off, ``secondorder = 0``, dt = 0.025
ms, celsius = 37 °C) runs from ``finitialize(−70)``, and so does its staggered Crank–Nicolson
(``secondorder = 2``, set before ``finitialize``); an IClamp at soma(0.5) (delay 5 ms, duration
30 ms) takes the amplitudes in ``AMPLITUDES``; 40 ms.

Saved (float64): ``configs [config]`` and ``channels [config, channel]`` (1 where the channel
is in), ``channel_names``, ``g [channel]`` mS/cm², ``e [channel]`` mV, ``g_l``, ``e_l``,
``celsius``, ``v0``, ``dt``, ``every``, ``amplitudes [amp]`` nA, ``t [time]`` ms and
``v [config, amp, comp, time]`` mV by backward Euler and ``v_cn`` (same shape) by
``secondorder = 2`` (every ``every``-th step, to keep the file small), in bayesneuron's
compartment order (``names [comp]``).

Run from the repository root:  python tests/reference/generate_neuron_cortical.py
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
MOD = HERE / "mod"
OUT = HERE / "cortical_neuron.npz"

# name in bayesneuron: (NMODL suffix, g mS/cm², e mV); e enters as ena / ek / e_bn_ih
CHANNELS = {
    "na": ("bn_na", 40.0, 50.0),
    "kdr": ("bn_kdr", 20.0, -90.0),
    "kv31": ("bn_kv31", 10.0, -90.0),
    "km": ("bn_km", 0.5, -90.0),
    "ih": ("bn_ih", 1.0, -45.0),
}
CONFIGS = ["na", "kdr", "kv31", "km", "ih", "l", "all"]
G_L, E_L = 0.05, -70.0  # mS/cm², mV
AMPLITUDES = np.array([-0.05, 0.05, 0.2])  # nA: Ih sag, subthreshold, spiking
DT, T_STOP, DELAY, DUR, V0, CELSIUS, EVERY = 0.025, 40.0, 5.0, 30.0, -70.0, 37.0, 8


def _hh_tree():
    spec = importlib.util.spec_from_file_location("hh_tree", HERE / "generate_neuron_hh_tree.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def nrnivmodl() -> str | None:
    """The ``nrnivmodl`` next to this Python (a venv's) or on ``PATH``; None if neither."""
    here = Path(sys.executable).with_name("nrnivmodl")
    return str(here) if here.exists() else shutil.which("nrnivmodl")


def load_mechanisms(h) -> None:
    """Compile ``mod/*.mod`` in a temporary folder and load them (once per process)."""
    if hasattr(h, "q10_bn_na"):  # a GLOBAL of bn_na.mod: loaded already
        return
    exe = nrnivmodl()
    if exe is None:
        raise RuntimeError("nrnivmodl not found: install NEURON (pip install neuron)")
    tmp = Path(tempfile.mkdtemp(prefix="bn_cortical_mod_"))
    for f in sorted(MOD.glob("*.mod")):
        shutil.copy(f, tmp / f.name)
    subprocess.run([exe], cwd=tmp, check=True, capture_output=True, timeout=600)
    (lib,) = [p for p in tmp.glob("*/libnrnmech.so") if p.is_file()] or [None]
    if lib is None or not h.nrn_load_dll(str(lib)):
        raise RuntimeError(f"could not load the compiled mechanisms from {tmp}")
    shutil.rmtree(tmp, ignore_errors=True)  # the loaded library stays mapped


def build(h, config: str):
    """The hh tree with ``pas`` and the channels of ``config``; sections in bayesneuron's order."""
    names = list(CHANNELS) if config == "all" else [c for c in CHANNELS if c == config]
    secs = []
    for name, parent, x, length, diam in _hh_tree().SECTIONS:
        sec = h.Section(name=name)
        sec.L, sec.diam, sec.nseg, sec.Ra, sec.cm = length, diam, 1, 100.0, 1.0
        sec.insert("pas")
        sec.g_pas, sec.e_pas = G_L * 1e-3, E_L
        for ch in names:
            suffix, g, e = CHANNELS[ch]
            sec.insert(suffix)
            setattr(sec, f"gbar_{suffix}", g * 1e-3)  # mS/cm² → S/cm²
            if ch == "na":
                sec.ena = e
            elif ch == "ih":
                sec.e_bn_ih = e
            else:
                sec.ek = e
        if parent is not None:
            sec.connect(secs[parent](x), 0)
        secs.append(sec)
    return secs


def run(h, secs, amplitudes, secondorder=0):
    """Voltages ``[amp, comp, time]`` (mV) at every step and times ``[time]`` (ms)."""
    h.celsius = CELSIUS
    h.dt = DT
    h.secondorder = secondorder  # before finitialize, which depends on it
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


def simulate_all(h, configs=CONFIGS, amplitudes=AMPLITUDES, secondorder=0):
    """``v [config, amp, comp, time]`` at every step, ``t``, and the compartment names."""
    load_mechanisms(h)
    out = []
    for config in configs:
        secs = build(h, config)
        v, t = run(h, secs, amplitudes, secondorder)
        names = [f"{sec.name()}({seg.x:.4g})" for sec in secs for seg in sec]
        out.append(v)
        for sec in reversed(secs):
            h.delete_section(sec=sec)
    return np.stack(out), t, names


def main():
    from neuron import h

    h.load_file("stdrun.hoc")
    v, t, names = simulate_all(h)
    v_cn = simulate_all(h, secondorder=2)[0]
    members = np.array([[c == ch or c == "all" for ch in CHANNELS] for c in CONFIGS], dtype=float)
    np.savez_compressed(
        OUT,
        configs=np.array(CONFIGS),
        channels=members,
        channel_names=np.array(list(CHANNELS)),
        g=np.array([g for _, g, _ in CHANNELS.values()]),
        e=np.array([e for _, _, e in CHANNELS.values()]),
        g_l=G_L,
        e_l=E_L,
        celsius=CELSIUS,
        v0=V0,
        dt=DT,
        every=EVERY,
        amplitudes=AMPLITUDES,
        t=t[::EVERY],
        v=v[..., ::EVERY],
        v_cn=v_cn[..., ::EVERY],
        names=np.array(names),
    )
    soma = v[:, :, 0]
    spikes = ((soma[..., 1:] > 0) & (soma[..., :-1] <= 0)).sum(-1)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB); soma 0-mV crossings [config, amp]:")
    for c, s in zip(CONFIGS, spikes):
        print(
            f"  {c:5s} {s.tolist()}  V range {soma[CONFIGS.index(c)].min():.1f}…"
            f"{soma[CONFIGS.index(c)].max():.1f} mV"
        )


if __name__ == "__main__":
    main()
