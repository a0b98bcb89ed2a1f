"""Studies: the paper_toy_map study end to end in --smoke mode, and config errors."""

import csv
import json
from pathlib import Path

import pytest

from bayesneuron.cli import main
from bayesneuron.studies.config import TABLE_COLUMNS, StudyError, load_study

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "paper_toy_map"


def test_paper_toy_map_smoke(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["study", "run", str(STUDY), "--out", str(out), "--smoke", "--quiet"]) == 0
    with (out / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[: len(TABLE_COLUMNS)] == list(TABLE_COLUMNS)
    study = load_study(STUDY, smoke=True)
    assert len(rows) == sum(len(r.designs) for r in study.runs)
    assert {r["protocol"] for r in rows} == {"paper", "bayesneuron"}
    for r in rows:
        assert r["stim"] in ("all", "[0]") and r["rec"] == "all"
        assert float(r["L_final"]) <= float(r["L0"]) + 1e-9  # no fit ends worse than it began
    fits = json.loads((out / "fits.json").read_text())
    assert len(fits) == len(rows) and "gte" in fits[0]
    for name in ("paper9_paper_loss_gte.png", "laplace.csv", "config.json", "fit_parameters.csv"):
        assert (out / name).is_file(), name
    env = json.loads((out / "environment.json").read_text())
    assert {"bayesneuron", "torch", "pyro", "arviz", "fused_kernel"} <= set(env)
    assert "results in" in capsys.readouterr().out


def write(tmp_path, text):
    d = tmp_path / "study"
    d.mkdir()
    (d / "config.toml").write_text(text)
    return d


GOOD = '[study]\nname = "x"\n[[run]]\nprotocol = "paper"\ndesigns = ["all|all"]\n'


@pytest.mark.parametrize(
    "text, match",
    [
        ("[study\nname=1", "malformed TOML"),
        (GOOD + "[model]\nsgima = 1.0\n", "unknown key 'sgima'"),
        (GOOD + "[plots]\nx = 1\n", r"unknown section \[plots\]"),
        (GOOD.replace('"paper"', '"adam"'), "protocol must be"),
        (GOOD.replace('["all|all"]', '["all"]'), "stim\\|rec"),
        (GOOD.replace('["all|all"]', '"paper10"'), "paper9"),
        (GOOD + "[model]\nsigma = -1.0\n", "sigma > 0"),
        (GOOD + "[model]\npriors = 'flat'\n", "priors 'flat' unknown"),
        ('[study]\nname = "x"\n', "no \\[\\[run\\]\\]"),
        (GOOD + "[experiment]\nn_traces = 'many'\n", "wrong type"),
        (GOOD + "[model]\nbackend = 'jax'\n", "backend 'jax' unknown"),
        (GOOD + "dt = -0.1\n", "dt must be > 0"),
        (GOOD + "horizons = [0]\n", "horizons must be ints"),
    ],
)
def test_bad_configs(tmp_path, capsys, text, match):
    folder = write(tmp_path, text)
    out = tmp_path / "out"
    assert main(["study", "run", str(folder), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bayesneuron: error:") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(match, err), err
    assert not out.exists()  # nothing written for a config that does not validate


def test_missing_study_folder(tmp_path, capsys):
    assert main(["study", "run", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "not a study folder" in capsys.readouterr().err


def test_make_study_is_checked_like_a_config_file():
    import numpy as np

    from bayesneuron.studies.posteriors import make_study

    study = make_study(["all|all"], method="laplace", n_traces=np.int64(5), preset="hh_tree")
    assert study.n_traces == 5 and study.preset == "hh_tree" and study.dt == 0.025
    with pytest.raises(StudyError, match=r"design all\|all is listed twice"):
        make_study(["all|all", "all|all"])
    with pytest.raises(StudyError, match=r"a posterior needs a proper prior"):
        make_study(["all|all"], priors="none")
    with pytest.raises(StudyError, match=r"guide 'flow' unknown"):
        make_study(["all|all"], guide="flow")
