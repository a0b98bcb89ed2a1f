"""Bad recording files, in one table: each row makes a damaged or unsuitable file (or asks for
something a good file cannot give), the fragment of the :class:`RecordingError` message that
says what is wrong, and checks that nothing in the folder changed — no input file modified,
nothing half-written left behind.

Add a row here when you guard a new case.
"""

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import pytest
import torch
from pyabf.abfWriter import writeABF1
from test_io import make_nwb

from bayesneuron.errors import BayesneuronError, RecordingError
from bayesneuron.io import (
    Recording,
    example_abf_path,
    read_abf,
    read_nwb,
    read_recording,
    write_nwb,
)
from bayesneuron.protocol import ElectrodeStimulus


def _abf(d: Path) -> Path:
    return Path(shutil.copy(example_abf_path(), d / "rec.abf"))


def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _nwb(d: Path, specs=({}, {}), **kw) -> Path:
    make_nwb(d / "rec.nwb", list(specs), **kw)
    return d / "rec.nwb"


def _unit(path: Path, series: str, unit: str) -> Path:
    with h5py.File(path, "r+") as f:
        f[f"{series}/data"].attrs["unit"] = unit
    return path


def _abf1(d: Path, units: str) -> Path:
    data = np.random.default_rng(0).normal(-60.0, 2.0, (3, 2000))  # pyabf needs ≥ 4.6 kB
    writeABF1(data, str(d / "old.abf"), 20000, units=units)
    return d / "old.abf"


def _garbage(d: Path, name: str) -> Path:
    (d / name).write_bytes(np.random.default_rng(1).bytes(4096))
    return d / name


def _plain_hdf5(d: Path) -> Path:
    with h5py.File(d / "plain.nwb", "w") as f:
        f["x"] = np.arange(3)
    return d / "plain.nwb"


def _existing(d: Path) -> Path:
    (d / "out.nwb").write_bytes(b"precious")
    return d / "out.nwb"


_SIM = ElectrodeStimulus(0, torch.zeros(2, 10), dt=0.1)
_SIM_REC = Recording.from_simulation(np.zeros((2, 10)), _SIM)
CC_NO_STIM = ({}, {"stim": False})


class Case(NamedTuple):
    name: str
    make: Callable  # folder → what the failing call takes (files made here)
    call: Callable  # that → raises
    match: str


def _folder(d: Path) -> Path:
    return d


CASES = [
    Case("missing file", lambda d: d / "nope.abf", read_abf, "no such file"),
    Case("missing file, any reader", lambda d: d / "x.nwb", read_recording, "no such file"),
    Case("a folder", _folder, read_nwb, "is not a file"),
    Case("empty file", lambda d: _cut(_abf(d), 0.0), read_abf, "is empty"),
    Case("garbage as ABF", lambda d: _garbage(d, "g.abf"), read_abf, "is not an ABF"),
    Case("garbage as NWB", lambda d: _garbage(d, "g.nwb"), read_nwb, "is not an NWB"),
    Case("garbage, any reader", lambda d: _garbage(d, "g"), read_recording, "not an ABF or NWB"),
    Case("NWB given to read_abf", _nwb, read_abf, "NWB .* not ABF .* read_nwb"),
    Case("ABF given to read_nwb", _abf, read_nwb, "ABF .* not NWB .* read_abf"),
    Case("truncated ABF 2", lambda d: _cut(_abf(d), 0.5), read_abf, "rec.abf .* is truncated"),
    Case("truncated ABF 2 header", lambda d: _cut(_abf(d), 0.002), read_abf, "is truncated"),
    Case(
        "truncated ABF 1 data",
        lambda d: _cut(_abf1(d, "mV"), 0.6),
        read_abf,
        "truncated: its header promises 14048 bytes",
    ),
    Case("truncated NWB", lambda d: _cut(_nwb(d), 0.5), read_nwb, "truncated"),
    Case("HDF5 that is not NWB", _plain_hdf5, read_nwb, "not a readable NWB"),
    Case(
        "NWB voltage in amperes",
        lambda d: _unit(_nwb(d), "acquisition/resp1", "amperes"),
        read_nwb,
        "voltage in unit 'amperes'.*voltage-clamp",
    ),
    Case(
        "NWB current in volts",
        lambda d: _unit(_nwb(d), "stimulus/presentation/stim0", "volts"),
        read_nwb,
        "current in unit 'volts'",
    ),
    Case(
        "NWB voltage in an unknown unit",
        lambda d: _unit(_nwb(d), "acquisition/resp0", "furlongs"),
        read_nwb,
        "unit 'furlongs'; expected one of mV, V, volts",
    ),
    Case("ABF voltage in pA", lambda d: _abf1(d, "pA"), read_abf, "voltage in unit 'pA'"),
    Case("ABF without command", lambda d: _abf1(d, "mV"), read_abf, "no command waveform"),
    Case(
        "voltage clamp offered as current clamp",
        lambda d: _nwb(d, [{"kind": "vc"}]),
        read_nwb,
        "VoltageClampSeries 'vc0'.*not current clamp",
    ),
    Case(
        "a voltage-clamp sweep selected",
        lambda d: _nwb(d, [{}, {"kind": "vc"}]),
        lambda p: read_nwb(p, sweeps=[0, 1]),
        "sweep 1 .*not current clamp",
    ),
    Case(
        "current clamp without stimulus (table)",
        lambda d: _nwb(d, CC_NO_STIM),
        read_nwb,
        "'resp1' \\(sweep 1\\) has no stimulus series",
    ),
    Case(
        "current clamp without stimulus (no table)",
        lambda d: _nwb(d, CC_NO_STIM, table=False),
        read_nwb,
        "has no stimulus series",
    ),
    Case(
        "ABF sweep out of range",
        _abf,
        lambda p: read_abf(p, sweeps=[3, 16]),
        "sweep 16 is out of range: rec.abf has 16 sweeps \\(0–15\\)",
    ),
    Case(
        "NWB sweep out of range",
        _nwb,
        lambda p: read_nwb(p, sweeps=5),
        "sweep 5 is out of range: rec.nwb has 2 sweeps \\(0–1\\)",
    ),
    Case("empty sweep selection", _abf, lambda p: read_abf(p, sweeps=[]), "empty sweep selection"),
    Case("a sweep twice", _nwb, lambda p: read_nwb(p, sweeps=[1, 1]), "selected twice"),
    Case("ABF channel missing", _abf, lambda p: read_abf(p, channel=1), "channel 1 does not exist"),
    Case(
        "resample to a non-multiple",
        lambda d: read_abf(_abf(d), sweeps=0),
        lambda rec: rec.to_grid(0.07),
        "0.07 ms is not a whole multiple of the sampling interval 0.05 ms",
    ),
    Case(
        "resample finer",
        lambda d: read_abf(_abf(d), sweeps=0),
        lambda rec: rec.to_grid(0.025),
        "finer than the sampling interval 0.05 ms",
    ),
    Case(
        "NWB voltage and stimulus lengths differ",
        lambda d: _nwb(d, [{}, {"n_i": 150}]),
        read_nwb,
        "sweep 1's voltage has 200 samples but its stimulus 150",
    ),
    Case(
        "simulated voltage and stimulus lengths differ",
        lambda d: np.zeros((2, 11)),
        lambda v: Recording.from_simulation(v, _SIM),
        "one voltage sample per stimulus bin",
    ),
    Case(
        "sweeps of different lengths",
        lambda d: _nwb(d, [{}, {"n": 300, "n_i": 300}]),
        read_nwb,
        "select sweeps of one length",
    ),
    Case("NaN in an NWB file", lambda d: _nwb(d, [{}, {"nan": True}]), read_nwb, "sweep 1 .*NaN"),
    Case(
        "NaN in a recording",
        lambda d: [[1.0, np.nan]],
        lambda v: Recording(v, [[0.0, 0.0]], dt=0.1),
        "voltage of sweep 0 contains NaN or inf \\(first at sample 1",
    ),
    Case(
        "two electrodes, none chosen",
        lambda d: _nwb(d, [{}, {"electrode": "e1"}]),
        read_nwb,
        "electrodes \\['e0', 'e1'\\]; choose one",
    ),
    Case(
        "write over an existing file",
        _existing,
        lambda p: write_nwb(_SIM_REC, p),
        "exists; pass overwrite=True",
    ),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_file_is_refused_clearly_and_nothing_changes(case, tmp_path):
    given = case.make(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(RecordingError, match=case.match):
        case.call(given)
    assert _snapshot(tmp_path) == before, "the failed call changed files or left some behind"


def test_there_are_enough_cases_and_errors_are_value_errors():
    assert len(CASES) >= 30
    assert issubclass(RecordingError, BayesneuronError) and issubclass(RecordingError, ValueError)
