"""Recordings in and out: the bundled real ABF file, the Recording's processing (selection,
offset, decimation), its conversion to the model's stimulus and data, and NWB round trips
(ABF → NWB → read, simulation → NWB → read, files written by other tools)."""

import subprocess
import sys
from datetime import datetime, timezone

import h5py
import numpy as np
import pytest
import torch

from bayesneuron import CrankNicolson, hh_tree_cell, simulate, step_current
from bayesneuron.errors import StimulusError
from bayesneuron.io import (
    Recording,
    abf_to_nwb,
    example_abf_path,
    read_abf,
    read_nwb,
    read_recording,
    write_nwb,
)
from bayesneuron.protocol import ElectrodeStimulus, Stimulus

DT = 0.05  # ms, the example's 20 kHz


@pytest.fixture(scope="module")
def abf():
    return read_abf(example_abf_path())


@pytest.fixture(scope="module")
def abf_nwb(tmp_path_factory):
    return abf_to_nwb(example_abf_path(), tmp_path_factory.mktemp("nwb") / "17o05028.nwb")


def make_nwb(path, specs, *, table=True, names=None):
    """An NWB file as another tool might write it: per sweep a dict with ``kind`` ("cc", "vc"
    or "izero"), ``n`` voltage samples, ``n_i`` current samples, ``stim`` (False: none), ``nan``,
    ``electrode``, ``number`` (None: no sweep_number); voltage stored in volts and current in
    amperes with ``conversion=1``. ``table=False`` leaves the icephys table out. Returns the
    voltages (mV) and currents (nA) written."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.icephys import (
        CurrentClampSeries,
        CurrentClampStimulusSeries,
        IZeroClampSeries,
        VoltageClampSeries,
        VoltageClampStimulusSeries,
    )

    nwb = NWBFile(
        session_description="test",
        identifier="id",
        session_start_time=datetime(2020, 1, 2, tzinfo=timezone.utc),
    )
    dev = nwb.create_device(name="amp")
    els, out = {}, []
    for k, sp in enumerate(specs):
        e = sp.get("electrode", "e0")
        if e not in els:
            els[e] = nwb.create_icephys_electrode(
                name=e, description="", device=dev, location=f"{e} soma"
            )
        t = np.arange(sp.get("n", 200))
        v = -65.0 + 5 * np.sin(t / 7.0) + k
        i = np.where((t >= 50) & (t < 150), 0.1 * (k + 1), 0.0)[: sp.get("n_i", t.size)]
        if sp.get("nan"):
            v[10] = np.nan
        number = sp.get("number", k)
        common = dict(electrode=els[e], gain=1.0, rate=10000.0, starting_time=2.0 * k)
        if number is not None:
            common["sweep_number"] = np.uint32(number)
        name = names[k] if names else None
        if sp.get("kind") == "izero":
            resp, stim = IZeroClampSeries(name=f"i0_{k}", data=v * 1e-3, **common), None
        elif sp.get("kind") == "vc":
            resp = VoltageClampSeries(name=name or f"vc{k}", data=i * 1e-9, **common)
            stim = VoltageClampStimulusSeries(name=f"vcs{k}", data=v * 1e-3, **common)
        else:
            resp = CurrentClampSeries(name=name or f"resp{k}", data=v * 1e-3, **common)
            stim = CurrentClampStimulusSeries(name=name or f"stim{k}", data=i * 1e-9, **common)
            stim = stim if sp.get("stim", True) else None
        if table:
            nwb.add_intracellular_recording(electrode=els[e], stimulus=stim, response=resp)
        else:
            nwb.add_acquisition(resp)
            if stim is not None:
                nwb.add_stimulus(stim)
        out.append((v, i))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return out


# ---------------------------------------------------------------------- the real ABF file
def test_example_abf_is_bundled_small_and_documented():
    p = example_abf_path()
    assert p.is_file() and p.parent.name == "data" and p.parent.parent.name == "bayesneuron"
    assert p.stat().st_size == 1927168 < 5 * 2**20
    readme = (p.parent / "README.md").read_text()
    assert p.name in readme and "MIT" in readme and "swharden/pyABF" in readme


def test_example_abf_sweeps_times_and_units(abf):
    assert abf.n_sweeps == 16 and abf.sweeps == tuple(range(16))
    assert abf.n_samples == 60000 and abf.dt == DT and abf.rate_hz == 20000.0
    assert abf.n_samples * abf.dt == pytest.approx(3000.0)  # 3 s sweeps
    np.testing.assert_allclose(abf.time[:3], [0.0, 0.05, 0.1])
    assert abf.start_times[:3] == (0.0, 3.0, 6.0)
    assert abf.file_units == ("mV", "pA") and abf.site == "soma"
    assert abf.protocol == "0112 steps dual -50 to 150 step 10"
    assert abf.session_start == datetime(2017, 10, 5, 14, 42, 46, 899000)
    assert abf.voltage.dtype == np.float64 and not abf.voltage.flags.writeable


def test_example_abf_command_levels_in_nA(abf):
    levels = (-50.0 + 10.0 * np.arange(16)) / 1000.0  # nA
    at = {ms: int(round(ms / DT)) for ms in (50, 300, 1200, 1800, 2500)}
    np.testing.assert_allclose(abf.current[:, at[300]], levels, atol=1e-12)
    np.testing.assert_allclose(abf.current[:, at[1800]], levels, atol=1e-12)
    np.testing.assert_allclose(abf.current[:, at[1200]], -0.05, atol=1e-12)  # the −50 pA pulse
    assert not abf.current[:, at[50]].any() and not abf.current[:, at[2500]].any()
    # the step starts at sample 2937 (146.85 ms), as pyabf's epoch table says
    assert np.flatnonzero(np.diff(abf.current[3]))[0] == 2936


def test_example_abf_voltages_are_plausible(abf):
    v = abf.voltage
    assert -115.0 < v.min() < -110.0 and 40.0 < v.max() < 42.0
    assert -55.0 < np.median(v) < -45.0
    spikes = ((v[:, :-1] < 0) & (v[:, 1:] >= 0)).sum(1)  # upward zero crossings
    assert spikes[0] == 10 and spikes[15] == 42 and np.all(np.diff(spikes) >= 0)


def test_selection_offset_and_their_history(abf):
    part = read_abf(example_abf_path(), sweeps=[15, 0], offset_mv=10.0)
    assert part.sweeps == (15, 0) and part.start_times == (45.0, 0.0)
    np.testing.assert_array_equal(part.voltage, abf.voltage[[15, 0]] - 10.0)
    np.testing.assert_array_equal(part.current, abf.current[[15, 0]])
    assert part.offset_mv == 10.0 and part.history == ("subtracted 10 mV from the voltages",)
    again = part.corrected(-2.5).select(0)
    assert again.offset_mv == 7.5 and again.sweeps == (0,)
    np.testing.assert_array_equal(again.voltage[0], abf.voltage[0] - 7.5)
    assert len(again.history) == 3 and part.corrected(0.0) is part
    assert read_abf(example_abf_path(), sweeps=4).sweeps == (4,)


# ---------------------------------------------------------------------- decimation
def test_to_grid_block_means_keep_charge_and_centre_the_voltage():
    v = np.arange(14.0).reshape(2, 7)
    i = np.array([[1.0, 3.0, 0.0, 0.0, 2.0, 2.0, 9.0], [0.0] * 7])
    rec = Recording(v, i, dt=0.1, t0=0.0, current_t0=0.0)
    out = rec.to_grid(0.2)
    assert out.dt == pytest.approx(0.2) and out.n_samples == 3  # the 7th sample is dropped
    np.testing.assert_allclose(out.voltage[0], [0.5, 2.5, 4.5])
    np.testing.assert_allclose(out.current[0], [2.0, 0.0, 2.0])
    assert out.t0 == pytest.approx(0.05) and out.current_t0 == 0.0  # voltage: block centres
    np.testing.assert_allclose(out.current.sum(1) * out.dt, rec.current[:, :6].sum(1) * rec.dt)
    assert "dropped the last 1" in out.history[-1]
    assert rec.to_grid(0.1) is rec


def test_to_grid_on_the_real_recording(abf):
    out = abf.to_grid(0.5)  # 20 kHz → 2 kHz
    assert out.voltage.shape == (16, 6000) and out.dt == pytest.approx(0.5)
    np.testing.assert_allclose(out.current[:, 600], (-50 + 10 * np.arange(16)) / 1000.0)
    np.testing.assert_allclose(out.voltage[:, 0], abf.voltage[:, :10].mean(1))
    assert out.time[0] == pytest.approx(0.225)


# ---------------------------------------------------------------------- model inputs
def test_electrode_stimulus_is_sparse_and_densifies_exactly(abf):
    sparse = abf.electrode_stimulus(site=2)
    assert sparse.site == 2 and tuple(sparse.waveform.shape) == (16, 60000)
    assert sparse.unit == "nA" and sparse.dt == DT and sparse.t0 == 0.0
    stim = abf.select([0, 9]).stimulus(site=2, n_comp=4)  # sparse: one row, at site 2
    assert isinstance(stim, Stimulus) and tuple(stim.values.shape) == (2, 1, 60000)
    assert stim.sites == (2,) and stim.n_comp is None
    dense = stim.dense(4)
    assert tuple(dense.values.shape) == (2, 4, 60000)
    np.testing.assert_array_equal(dense.values[:, 2].numpy(), abf.current[[0, 9]])
    assert not dense.values[:, [0, 1, 3]].any()
    # the simulator's lookup I(t) = values[floor((t - t0)/dt)] gives sample k on [t_k, t_k+1)
    k = dense.bin_index(np.array([146.81, 146.84, 146.86, 146.89]))
    assert k.tolist() == [2936, 2936, 2937, 2937]
    obs = abf.observed()
    assert obs.shape == (16, 1, 60000) and obs.dtype == torch.float64


def test_electrode_stimulus_round_trips_a_dense_single_site_stimulus():
    dense = step_current([0.1, 0.2], site=3, n_comp=5, delay=1, duration=2, t_stop=5, dt=0.5)
    sparse = ElectrodeStimulus.from_stimulus(dense)
    assert sparse.site == 3 and tuple(sparse.waveform.shape) == (2, 10)
    assert torch.equal(sparse.dense(5).values, dense.values)
    assert ElectrodeStimulus.from_stimulus(dense, site=3).site == 3
    assert sparse.n_trace == 2 and sparse.n_bins == 10 and sparse.t_end == 5.0
    batched = ElectrodeStimulus(1, torch.ones(3, 2, 4), dt=0.1)  # leading sample dims
    assert tuple(batched.dense(2).values.shape) == (3, 2, 2, 4)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ElectrodeStimulus(5, torch.ones(1, 3), 0.1).dense(3), "does not exist"),
        (lambda: ElectrodeStimulus(0, torch.ones(3), 0.1), "expected \\[trace, bins\\]"),
        (lambda: ElectrodeStimulus(0, [[1.0, float("nan")]], 0.1), "NaN"),
        (lambda: ElectrodeStimulus(-1, torch.ones(1, 3), 0.1), "≥ 0"),
        (lambda: ElectrodeStimulus(0, torch.ones(1, 3), 0.0), "dt"),
        (lambda: ElectrodeStimulus(0, torch.ones(1, 3), 0.1, unit="pA"), "unit"),
        (lambda: ElectrodeStimulus.from_stimulus(Stimulus(torch.ones(1, 2, 3), 0.1)), "one"),
        (
            lambda: ElectrodeStimulus.from_stimulus(
                step_current([1.0], site=0, n_comp=3, delay=0, duration=1, t_stop=2, dt=0.5),
                site=1,
            ),
            "not only at site 1",
        ),
    ],
)
def test_electrode_stimulus_rejects_bad_input(make, match):
    with pytest.raises(StimulusError, match=match):
        make()


# ---------------------------------------------------------------------- NWB round trips
def _assert_same_sweeps(a: Recording, b: Recording):
    np.testing.assert_array_equal(a.voltage, b.voltage)
    np.testing.assert_array_equal(a.current, b.current)
    assert a.sweeps == b.sweeps and a.dt == pytest.approx(b.dt, rel=1e-15)
    assert a.t0 == pytest.approx(b.t0, abs=1e-9) and a.current_t0 == b.current_t0
    np.testing.assert_allclose(a.start_times, b.start_times, rtol=0, atol=1e-12)
    assert a.site == b.site and a.protocol == b.protocol


def test_abf_to_nwb_reads_back_identical_sweeps(abf, abf_nwb):
    back = read_nwb(abf_nwb)
    _assert_same_sweeps(abf, back)
    assert back.file_units == ("volts", "amperes") and back.source == str(abf_nwb)
    assert back.session_start == abf.session_start.replace(tzinfo=timezone.utc)
    _assert_same_sweeps(abf.select([7, 2]), read_nwb(abf_nwb, sweeps=[7, 2]))
    _assert_same_sweeps(abf.select([5]), read_recording(abf_nwb, sweeps=[5]))
    _assert_same_sweeps(abf.select([5]), read_recording(example_abf_path(), sweeps=[5]))


def test_written_nwb_is_standard_icephys(abf_nwb):
    from pynwb import NWBHDF5IO
    from pynwb.icephys import CurrentClampSeries, CurrentClampStimulusSeries

    with NWBHDF5IO(str(abf_nwb), "r") as io:
        nwb = io.read()
        table = nwb.intracellular_recordings
        assert len(table) == 16
        r = table["responses"]["response"][3].timeseries
        s = table["stimuli"]["stimulus"][3].timeseries
        assert isinstance(r, CurrentClampSeries) and isinstance(s, CurrentClampStimulusSeries)
        assert (r.unit, r.conversion, s.unit, s.conversion) == ("volts", 1e-3, "amperes", 1e-9)
        assert r.sweep_number == s.sweep_number == 3 and r.rate == 20000.0
        assert r.electrode.location == "soma" and "17o05028_ic_steps.abf" in nwb.notes
        assert nwb.identifier == "17o05028_ic_steps"


def test_decimated_and_corrected_recording_round_trips(abf, tmp_path):
    rec = abf.select([1, 14]).corrected(8.0).to_grid(0.2)
    back = read_nwb(write_nwb(rec, tmp_path / "dec.nwb"), offset_mv=0.0)
    _assert_same_sweeps(rec, back)
    assert back.t0 == pytest.approx(0.075)
    nwb_notes = h5py.File(tmp_path / "dec.nwb", "r")["general/notes"][()]
    assert b"8 mV" in nwb_notes and b"block-averaged 4" in nwb_notes


def test_simulation_writes_and_reads_back_equal(tmp_path):
    stim = ElectrodeStimulus.from_stimulus(
        step_current([0.0, 0.3], site=0, n_comp=6, delay=1, duration=5, t_stop=10, dt=0.05)
    )
    trace = simulate(hh_tree_cell(), None, stim.dense(6), solver=CrankNicolson(backend="torch"))
    v = trace.v[:, stim.site, :-1]  # samples at the bin starts, one per bin
    assert v[1].max() > 0.0  # the 0.3 nA step fires a spike
    rec = Recording.from_simulation(v, stim, site="soma(0.5)")
    assert rec.source == "simulation" and rec.site == "soma(0.5)" and rec.sweeps == (0, 1)
    back = read_nwb(write_nwb(rec, tmp_path / "sim.nwb"))
    _assert_same_sweeps(rec, back)
    np.testing.assert_array_equal(back.voltage, v.numpy())
    assert torch.equal(back.electrode_stimulus(0).waveform, stim.waveform)
    dense = Recording.from_simulation(v, stim.dense(6))  # the dense form works alike
    np.testing.assert_array_equal(dense.current, rec.current)
    assert dense.site == "compartment 0"


def test_write_refuses_to_replace_unless_asked(abf, tmp_path):
    target = tmp_path / "x.nwb"
    target.write_bytes(b"precious")
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        write_nwb(abf.select(0), target)
    assert target.read_bytes() == b"precious"
    write_nwb(abf.select(0), target, overwrite=True)
    assert read_nwb(target).sweeps == (0,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nwb"]  # no temporary left


# ---------------------------------------------------------------------- other writers' NWB
@pytest.mark.parametrize("table", [True, False])
def test_nwb_in_volts_and_amperes_is_converted(tmp_path, table):
    written = make_nwb(tmp_path / "f.nwb", [{}, {}, {}], table=table)
    rec = read_nwb(tmp_path / "f.nwb")
    assert rec.sweeps == (0, 1, 2) and rec.dt == pytest.approx(0.1) and rec.site == "e0 soma"
    assert rec.start_times == (0.0, 2.0, 4.0) and rec.file_units == ("volts", "amperes")
    for row, (v, i) in enumerate(written):
        np.testing.assert_allclose(rec.voltage[row], v, rtol=1e-15)
        np.testing.assert_allclose(rec.current[row], i, rtol=1e-15)


def test_nwb_without_table_or_sweep_numbers_pairs_by_name(tmp_path):
    specs = [{"number": None}, {"number": None}]
    make_nwb(tmp_path / "f.nwb", specs, table=False, names=["Sweep_12", "Sweep_4"])
    rec = read_nwb(tmp_path / "f.nwb")
    assert rec.sweeps == (4, 12)
    assert rec.current[0].max() == pytest.approx(0.2)  # Sweep_4 was written second


def test_nwb_choose_electrode_and_skip_voltage_clamp(tmp_path):
    specs = [{"electrode": "e0"}, {"electrode": "e1"}, {"electrode": "e1", "kind": "vc"}]
    make_nwb(tmp_path / "f.nwb", specs)
    rec = read_nwb(tmp_path / "f.nwb", electrode="e1")
    assert rec.sweeps == (1,) and rec.site == "e1 soma"


def test_nwb_izero_sweep_reads_as_zero_current(tmp_path):
    written = make_nwb(tmp_path / "f.nwb", [{}, {"kind": "izero"}])
    rec = read_nwb(tmp_path / "f.nwb")
    assert rec.sweeps == (0, 1) and not rec.current[1].any() and rec.current[0].any()
    np.testing.assert_allclose(rec.voltage[1], written[1][0], rtol=1e-15)


# ---------------------------------------------------------------------- packaging
def test_importing_bayesneuron_loads_neither_pynwb_nor_pyabf():
    code = (
        "import sys, bayesneuron, bayesneuron.io, bayesneuron.protocol\n"
        "bad = [m for m in ('pynwb', 'pyabf', 'hdmf') if m in sys.modules]\n"
        "print(bad or 'ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stdout + out.stderr[-2000:]
