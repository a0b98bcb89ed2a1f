"""Your own cell and recording: the [cell]/[data]/[parameters] config, its errors, the
real_recording study in --smoke mode (predictive.csv), another file of the same protocol, and
``fit``/``infer --config``."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from bayesneuron.cli import main
from bayesneuron.io import example_abf_path
from bayesneuron.studies.recording_config import ConfigError, load_recording_study
from bayesneuron.studies.recording_model import build_model, load_sweeps
from bayesneuron.studies.recording_run import PREDICTIVE_COLUMNS, count_spikes
from bayesneuron.studies.run import run_study

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "real_recording"
TEXT = (STUDY / "config.toml").read_text()


def variant(tmp_path, *subs, path=None) -> Path:
    """The study's config with ``(pattern, replacement)`` substitutions, in a new folder
    (its data path made absolute, or ``path``)."""
    text = TEXT.replace(
        "../../bayesneuron/data/17o05028_ic_steps.abf", str(path or example_abf_path())
    )
    for pat, rep in subs:
        text, n = re.subn(pat, rep, text, count=1, flags=re.M)
        assert n == 1, pat
    d = tmp_path / "mine"
    d.mkdir(exist_ok=True)
    (d / "config.toml").write_text(text)
    return d


def test_config_parses_with_paths_relative_to_it():
    s = load_recording_study(STUDY)
    assert Path(s.data["path"]) == example_abf_path().resolve()
    assert s.data["fit_sweeps"] == [1, 4, 7, 10, 13] and len(s.data["held_out"]) == 11
    assert s.parameters["sigma"] == "infer" and s.cell["channels"][0] == "na"
    smoke = load_recording_study(STUDY / "config.toml", smoke=True)
    assert smoke.data["window"] == [130.0, 230.0] and smoke.fit["n_starts"] == 1
    rec = load_sweeps(smoke, smoke.data["fit_sweeps"])
    assert rec.dt == pytest.approx(0.5) and rec.voltage.shape == (2, 200)
    model = build_model(smoke, rec)
    assert model.labels == [
        "g_na[soma]",
        "g_kdr[soma]",
        "g_km[soma]",
        "g_ih[all]",
        "g_l[all]",
        "e_l[all]",
    ]
    assert model.sigma is None and model.n_comp == 4 and model.obs_shape == (2, 1, 200)
    # per-region defaults: a passive dendrite, the soma's own Na
    assert list(model.cell.params["g_na"]) == [40.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "subs, message",
    [
        ([(r'"ih", "l"\]', '"ih", "cal", "l"]')], "unknown or repeated channel 'cal'"),
        ([(r"^path = .*$", 'path = "nowhere.abf"')], "does not exist"),
        ([(r"^held_out = .*$", "held_out = [3, 16]")], "16"),
        ([(r"^held_out = .*$", "held_out = [1, 2]")], "both fitted and held out"),
        ([(r"^window = .*$", "window = [700.0, 100.0]")], "start < stop"),
        ([(r"^window = .*$", "window = [5000.0, 6000.0]")], "fewer than 2 samples"),
        ([(r"^dt = 0.25 .*$", "dt = 0.13")], "whole multiple"),
        ([(r"^\[fit\]", "[fitting]")], "unknown section [fitting]"),
        ([(r"^max_steps = 30", "max_step = 30")], "unknown key 'max_step'"),
        ([(r'^name = "g_km"', 'name = "g_kv31"')], "g_kv31"),
        ([(r"^soma = \{ g_na", "apical = { g_na")], "region 'apical'"),
        ([(r'^site = "soma"', 'site = "axon"')], "axon"),
        ([(r'^sigma = "infer"', "sigma = -1.0")], "sigma"),
    ],
)
def test_bad_configs_say_what_to_fix(tmp_path, subs, message):
    folder = variant(tmp_path, *subs)
    with pytest.raises(ConfigError, match=re.escape(message)):
        s = load_recording_study(folder)
        rec = load_sweeps(s, s.data["held_out"])
        build_model(s, rec)


def test_count_spikes():
    t = np.arange(6.0)
    n, first = count_spikes(np.array([[-60, 0, -60, 10, -60, -60], [-60.0] * 6]), t, -10.0)
    assert n.tolist() == [2, 0] and first[0] == 1.0 and np.isnan(first[1])


def test_real_recording_smoke(tmp_path):
    out = tmp_path / "res"
    res = run_study(STUDY, out, smoke=True, progress=False)
    with (out / "predictive.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0])[: len(PREDICTIVE_COLUMNS)] == PREDICTIVE_COLUMNS
    assert (
        [int(r["sweep"]) for r in rows] == [4, 6, 10, 12] == [r["sweep"] for r in res["predictive"]]
    )
    assert [r["held_out"] for r in rows] == ["False", "True", "False", "True"]
    for r in rows:
        assert (
            float(r["spikes_pred_q05"])
            <= float(r["spikes_pred_median"])
            <= float(r["spikes_pred_q95"])
        )
        assert float(r["rmse_mv"]) > 0
    post = json.loads((out / "posterior.json").read_text())
    assert post["posterior_method"] == "svi:mvn" and "posterior_ok" in post
    for name in ("report.html", "predictive_held_out.png", "parameters.csv", "config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["wall_s"] < 60


def test_same_config_on_another_file_of_the_protocol(tmp_path, capsys):
    """The config pointed at an NWB copy of other sweeps runs without code changes, from the
    CLI's fit and infer commands."""
    from bayesneuron.io import abf_to_nwb

    nwb = abf_to_nwb(example_abf_path(), tmp_path / "other.nwb", sweeps=[3, 5, 9, 11])
    folder = variant(
        tmp_path,
        (r"^fit_sweeps = \[4, 10\]", "fit_sweeps = [5, 11]"),
        (r"^held_out = \[6, 12\]", "held_out = [3, 9]"),
        path=nwb,
    )
    cfg = str(folder / "config.toml")
    assert main(["fit", "--config", cfg, "--smoke", "--quiet", "--out", str(tmp_path / "f")]) == 0
    assert "MAP fit" in capsys.readouterr().out
    assert not (tmp_path / "f" / "posterior.json").exists()
    assert main(["infer", "--config", cfg, "--smoke", "--quiet", "--out", str(tmp_path / "i")]) == 0
    with (tmp_path / "i" / "predictive.csv").open() as fh:
        assert [int(r["sweep"]) for r in csv.DictReader(fh)] == [3, 5, 9, 11]
