"""Recordings in and out: real current-clamp sweeps (ABF, NWB) as the model's stimulus and
observed voltages, recordings (measured or simulated) written as NWB, and designed stimuli
written and read as NWB (:func:`write_stimulus_nwb`, :func:`read_stimulus_nwb`).

``pyabf`` and ``pynwb`` are imported when a file is read or written, not with this package.

Example:
    >>> from bayesneuron.io import example_abf_path, read_abf
    >>> rec = read_abf(example_abf_path(), sweeps=[3, 4]).to_grid(0.1)
    >>> stim = rec.electrode_stimulus(site=0)        # [sweep, time] nA at compartment 0
    >>> v_obs, t = rec.observed(), rec.time           # [sweep, 1, time] mV at t ms
"""

from bayesneuron.io.abf import example_abf_path, read_abf
from bayesneuron.io.formats import abf_to_nwb, read_recording
from bayesneuron.io.nwb import read_nwb, read_stimulus_nwb, write_nwb, write_stimulus_nwb
from bayesneuron.io.recording import Recording

__all__ = [
    "Recording",
    "abf_to_nwb",
    "example_abf_path",
    "read_abf",
    "read_nwb",
    "read_recording",
    "read_stimulus_nwb",
    "write_nwb",
    "write_stimulus_nwb",
]
