"""Tables, figures and reports follow the model's free parameters: a study with the leak
conductance free as well (g_na, g_k, g_l) runs end to end, and bad free names are refused."""

import csv
import re

import numpy as np
import pytest

from bayesneuron.cli import main
from bayesneuron.studies.config import StudyError, load_study, study_from_config
from bayesneuron.studies.posteriors import make_study
from bayesneuron.studies.run import run_study
from bayesneuron.studies.tables import column_key, table_columns

FREE = ("g_na", "g_k", "g_l")
CONFIG = """
[study]
name = "leak"
[experiment]
n_traces = 2
noise_sigma = 1.0
[model]
free = ["g_na", "g_k", "g_l"]
[[run]]
name = "map"
protocol = "bayesneuron"
designs = ["all|all"]
n_starts = 1
[[infer]]
name = "post"
method = "laplace"
designs = ["all|all", "[0]|all"]
map_starts = 1
map_init = "truth"
[laplace]
designs = ["all|all"]
[smoke]
n_traces = 2
n_times = 8
max_steps = 2
num_samples = 10
"""


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_column_names_keep_the_papers_and_follow_any_other():
    assert [column_key(k) for k in ("g_na", "g_k", "g_l", "cm", "g_")] == [
        "na",
        "k",
        "l",
        "cm",
        "g_",
    ]
    assert table_columns(("g_na", "g_k"))[7:11] == (
        "gte_na_initial",
        "gte_na_final",
        "gte_k_initial",
        "gte_k_final",
    )
    assert "gte_cm_final" in table_columns(("cm",))


def test_a_study_with_the_leak_free_runs_end_to_end(tmp_path):
    folder = tmp_path / "leak"
    folder.mkdir()
    (folder / "config.toml").write_text(CONFIG)
    out = tmp_path / "res"
    res = run_study(folder, out, smoke=True, progress=False)
    (fit,) = rows(out / "table.csv")
    assert list(fit)[: len(table_columns(FREE))] == list(table_columns(FREE))
    assert {"spread_na_max", "spread_k_max", "spread_l_max"} <= set(fit)
    assert all(np.isfinite(float(fit[f"gte_{k}_final"])) for k in ("na", "k", "l"))
    long = rows(out / "fit_parameters.csv")
    assert [r["parameter"] for r in long] == [f"{k}[{c}]" for k in FREE for c in range(6)]
    (lap,) = rows(out / "laplace.csv")
    assert {f"contraction_{k}_{c}" for k in ("na", "k", "l") for c in range(6)} <= set(lap)
    designs = rows(out / "designs.csv")
    assert len(designs) == 2 == len(res["designs"])
    assert {"map_gte_na", "map_gte_k", "map_gte_l", "contraction_g_l_5"} <= set(designs[0])
    params = {r["parameter"] for r in rows(out / "parameters.csv")}
    assert {"g_na[0]", "g_k[0]", "g_l[5]"} <= params
    for k in FREE:
        assert (out / f"post_forest_{k}.png").stat().st_size > 1000, k
    html = (out / "report.html").read_text()
    assert "post: g_l across designs" in html and "free parameters g_na, g_k, g_l" in html


@pytest.mark.parametrize(
    "free, match",
    [
        ('["g_na", "g_x"]', r"free parameters \['g_x'\] are not parameters of the paper_toy cell"),
        ('["g_na", "g_na"]', r"free lists 'g_na' twice"),
        ('["e_k"]', r"free parameter 'e_k' has base values ≤ 0"),
        ("[]", r"give a list of parameter names"),
        ("3", r"\[model\]\.free = 3 has the wrong type"),
    ],
)
def test_bad_free_names_are_refused(tmp_path, free, match):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "config.toml").write_text(CONFIG.replace('["g_na", "g_k", "g_l"]', free))
    with pytest.raises(StudyError, match=match):
        load_study(folder)


def test_free_defaults_to_the_presets_and_make_study_checks_it():
    raw = {"study": {"name": "x"}, "run": [{"protocol": "paper", "designs": ["all|all"]}]}
    assert study_from_config(raw).free is None  # the preset's: g_na, g_k
    study = make_study(["all|all"], free=["g_na", "g_k", "g_l"], preset="hh_tree")
    assert study.free == FREE
    with pytest.raises(StudyError, match=r"not parameters of the hh_tree cell; it has \["):
        make_study(["all|all"], free=["gna"], preset="hh_tree")


def test_fit_command_with_free(tmp_path, capsys):
    out = tmp_path / "fit"
    argv = ["fit", "--free", "g_na,g_k,g_l", "--traces", "2", "--starts", "1", "--steps", "1"]
    assert main([*argv, "--quiet", "--out", str(out)]) == 0
    assert "g_l" in capsys.readouterr().out
    (row,) = rows(out / "table.csv")
    assert list(row)[8:13:2] == ["gte_na_final", "gte_k_final", "gte_l_final"]
    assert list(row)[:2] == ["seed", "variant"]
    assert main([*argv, "--free", "g_na,g_q", "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert re.search(r"--free: free parameters \['g_q'\] are not parameters", err), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_a_grid_run_draws_one_error_heatmap_per_free_parameter(tmp_path):
    folder = tmp_path / "grid"
    folder.mkdir()
    text = '[study]\nname = "g"\n[experiment]\nn_traces = 2\n[model]\nfree = ["g_na", "g_l"]\n'
    text += '[[run]]\nname = "grid"\nprotocol = "bayesneuron"\ndesigns = "grid"\nn_starts = 1\n'
    (folder / "config.toml").write_text(text + "[smoke]\nn_times = 6\nmax_steps = 1\n")
    run_study(folder, tmp_path / "out", smoke=True, progress=False)
    assert len(rows(tmp_path / "out" / "table.csv")) == 25
    for k in ("g_na", "g_l"):
        assert (tmp_path / "out" / f"grid_gte_grid_{k}.png").stat().st_size > 1000, k
