"""bayesneuron's BackwardEuler is NEURON's fixed-step scheme: same cell, same traces.

Reference: ``tests/reference/hh_tree_neuron.npz`` from ``generate_neuron_hh_tree.py`` (the
hh tree of :func:`bayesneuron.reference.cells.hh_tree_cell`, 12 IClamp amplitudes 0–0.5 nA at soma(0.5),
dt = 0.025 ms, 20 ms). Identical scheme ⇒ agreement to round-off, so the bound is tight.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _scripts import load_script

from bayesneuron.protocol.stimulus import step_current
from bayesneuron.reference.cells import hh_tree_cell
from bayesneuron.simulation.api import simulate
from bayesneuron.simulation.solvers import BackwardEuler

REF = Path(__file__).parent / "reference"
TOL_MV = 1e-4


def _simulate(amplitudes, n_steps=800, dt=0.025):
    cell = hh_tree_cell()
    stim = step_current(
        amplitudes,
        site=0,
        n_comp=cell.n_comp,
        delay=1.0,
        duration=15.0,
        t_stop=n_steps * dt,
        dt=dt,
        unit="nA",
    )
    tr = simulate(
        cell,
        params=None,
        stimulus=stim,
        t_eval=np.arange(n_steps + 1) * dt,
        solver=BackwardEuler(dt=dt),
    )
    return tr.v.detach().numpy()


def test_backward_euler_matches_committed_neuron_traces():
    ref = np.load(REF / "hh_tree_neuron.npz")
    assert list(ref["names"]) == list(hh_tree_cell().morphology.names)
    v = _simulate(ref["amplitudes"])
    assert v.shape == ref["v"].shape
    np.testing.assert_allclose(ref["t"], np.arange(801) * 0.025)
    err = np.abs(v - ref["v"])
    assert err.max() <= TOL_MV, (
        f"max |ΔV| = {err.max():.3g} mV at {np.unravel_index(err.argmax(), err.shape)}"
    )
    # the reference has teeth: sub- and supra-threshold traces
    spiked = (ref["v"][:, 0] > 0).any(axis=-1)
    assert not spiked[0] and spiked[-1]


@pytest.mark.neuron
def test_backward_euler_matches_neuron_live():
    pytest.importorskip("neuron")
    from neuron import h

    gen = load_script(REF / "generate_neuron_hh_tree.py")
    amps = np.array([0.05, 0.3])  # one below, one above threshold
    v_nrn, t = gen.run(h, gen.build(h), amps)
    v = _simulate(amps)
    assert (v_nrn[1, 0] > 0).any() and not (v_nrn[0, 0] > 0).any()
    assert np.abs(v - v_nrn).max() <= TOL_MV
