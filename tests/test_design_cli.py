"""``bayesneuron design optimize``: the TOML config checked before any work, smoke runs on
paper_toy and hh_tree (CSV columns, stimulus files, figures, resume), the worker count not
changing a number; the stimulus NWB writer/reader; per-site bounds of stimulus families."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesneuron import Design
from bayesneuron.cli import main
from bayesneuron.errors import RecordingError
from bayesneuron.io import read_stimulus_nwb, write_stimulus_nwb
from bayesneuron.optimal_design import PiecewiseConstant
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.reference.paper import paper_currents, paper_experiment
from bayesneuron.studies.config import StudyError
from bayesneuron.studies.design_config import design_study_from_dict, load_design_study

REQUIRED = (
    "stim rec family crit_paper crit_steps crit_optimised gain_nats_per_trace crit_paper_truth "
    "crit_optimised_truth crit_optimised_on_opt_theta contraction_paper contraction_optimised "
    "crit_opt5 contraction_opt5 crit_steps_sd best_start wall_s gain_se_nats_per_trace"
).split()
TINY = """
[experiment]
preset = "{preset}"
n_traces = 2
[design]
designs = {designs}
steps = 2
dt_opt = 0.05
dt_eval = 0.05
theta_opt = 2
theta_eval = 2
step_draws = 2
workers = {workers}
"""


def _config(tmp_path, preset="paper_toy", designs='["all|all"]', workers=1, name="c.toml"):
    path = tmp_path / name
    path.write_text(TINY.format(preset=preset, designs=designs, workers=workers))
    return path


def _rows(out):
    with (out / "optimal_design.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"design": {"steps": 2}}, r"\[experiment\] preset is missing"),
        ({"experiment": {"preset": "l23"}}, r"preset 'l23'"),
        ({"experiment": {"preset": "paper_toy", "seeds": 1}}, r"unknown key 'seeds'"),
        ({"experiment": {"preset": "paper_toy"}, "fit": {}}, r"unknown section \[fit\]"),
        (
            {"experiment": {"preset": "paper_toy"}, "design": {"designs": ["all|[9]"]}},
            r"all\|\[9\]",
        ),
        ({"experiment": {"preset": "paper_toy"}, "design": {"designs": "nope"}}, r"'nope'"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"bounds": [5.0, 1.0]}}, r"bounds"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"bounds": [0.0]}}, r"bounds"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"steps": -1}}, r"steps = -1"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"steps": "2"}}, r"steps = '2'"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"family": "spline"}}, r"family"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"init": ["flat"]}}, r"init"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"criterion": "a_opt"}}, r"criterion"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"dt_eval": -1.0}}, r"dt_eval"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"refine_steps": -1}}, r"refine_steps"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"max_charge": 0.0}}, r"max_charge"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"lr_final": 0.0}}, r"lr_final"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"theta": "x.nc"}}, r"no such file"),
        ({"experiment": {"preset": "paper_toy"}, "design": {"theta_select": -1}}, r"theta_select"),
        (
            {
                "experiment": {"preset": "paper_toy"},
                "design": {"theta_select": 4, "resample": False},
            },
            r"theta_select = 4: needs resample = true",
        ),
        (
            {"experiment": {"preset": "paper_toy"}, "design": {"family_options": {"n_epochs": 2}}},
            r"family_options \['n_epochs'\] unknown to family 'bins'; allowed: none",
        ),
        (
            {
                "experiment": {"preset": "paper_toy"},
                "design": {"family": "steps", "family_options": {"n_epochs": 0}},
            },
            r"family_options: n_epochs = 0",
        ),
        (
            {
                "experiment": {"preset": "paper_toy"},
                "design": {"family": "sines", "family_options": {"lo": 1.0}},
            },
            r"\['lo'\] unknown to family 'sines'; allowed: \['f_max', 'f_min', 'n_sines'\]",
        ),
    ],
)
def test_config_errors_name_the_key(raw, match):
    with pytest.raises(StudyError, match=match):
        design_study_from_dict(raw, "c.toml")


def test_config_defaults_and_the_preset_grid():
    """The code's defaults (the reference config sets its own starts: paper, chosen)."""
    paper = design_study_from_dict({"experiment": {"preset": "paper_toy"}})
    assert len(paper.designs) == 25 and paper.designs[0] == "[0]|[0]"
    assert (paper.steps, paper.theta_opt, paper.theta_eval, paper.step_draws) == (80, 8, 10, 5)
    assert (paper.dt_opt, paper.dt_eval, paper.opt_seed, paper.bounds) == (0.02, 0.004, 0, (0, 19))
    assert paper.init == ("paper", "ladder", "random") and paper.figures == paper.designs
    assert "family_options" not in paper.settings()  # runs from before the key still resume
    assert "theta_select" not in paper.settings() and paper.theta_select == 0
    hh = design_study_from_dict({"experiment": {"preset": "hh_tree"}}, designs="all|all,[0]|all")
    assert hh.designs == ("all|all", "[0]|all") and (hh.dt_opt, hh.bounds) == (0.025, (0, 20))


def test_committed_reference_was_run_with_the_committed_config():
    """studies/optimal_design: reference/run.json's settings are the config's (the rerun
    command in its README resumes, i.e. reproduces, rather than refusing the folder)."""
    root = Path(__file__).resolve().parents[1] / "studies" / "optimal_design"
    study = load_design_study(root / "config.toml")
    old = json.loads((root / "reference" / "run.json").read_text())
    assert old["finished"] and old["settings"] == json.loads(json.dumps(study.settings()))
    assert study.init == ("paper", "chosen")
    rows = _rows(root / "reference")
    assert [f"{r['stim']}|{r['rec']}" for r in rows] == list(study.designs)


def test_cli_bad_config_fails_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[experiment]\npreset = "paper_toy"\n[design]\nlr = -1.0\n')
    assert main(["design", "optimize", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 1
    assert "lr = -1.0" in capsys.readouterr().err and not (tmp_path / "o").exists()


def _check_run(out, tag, unit):
    rows = _rows(out)
    assert len(rows) == 1 and set(REQUIRED) <= set(rows[0])
    nums = [float(rows[0][k]) for k in REQUIRED if k not in ("stim", "rec", "family", "best_start")]
    assert all(math.isfinite(x) for x in nums)
    assert rows[0]["best_start"] in ("paper", "ladder", "random")
    assert int(rows[0]["best_step"]) in (0, 2)  # the start itself, or after its 2 steps
    pt = torch.load(out / f"stimulus_{tag}_bins.pt")
    nwb = read_stimulus_nwb(out / f"stimulus_{tag}_bins.nwb")
    assert torch.equal(nwb.values, pt["values"]) and nwb.unit == pt["unit"] == unit
    assert nwb.sites == pt["sites"] and nwb.dt == pt["dt"]
    assert (out / f"waveforms_{tag}_bins.png").stat().st_size > 1000
    meta = json.loads((out / "run.json").read_text())
    assert meta["finished"] and meta["config"]["steps"] == 2 and "torch" in str(meta["environment"])
    return rows[0]


def test_cli_smoke_paper_toy_writes_everything_and_resumes(tmp_path, capsys):
    cfg, out = _config(tmp_path), tmp_path / "out"
    argv = ["design", "optimize", "--config", str(cfg), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    row = _check_run(out, "all_all", "uA/cm2")
    assert "all|all paper" in capsys.readouterr().out
    assert not list(out.glob("checkpoint_*"))
    before = (out / "optimal_design.csv").read_text()
    assert main(argv) == 0  # resumes: the design is in the CSV, nothing is redone
    assert (out / "optimal_design.csv").read_text() == before
    assert "all|all paper" not in capsys.readouterr().out
    assert float(row["crit_paper"]) > 0
    # other settings into the same folder: refused, naming the setting
    assert main([*argv, "--steps", "3"]) == 1
    assert "steps: 2 there, 3 now" in capsys.readouterr().err


def test_refine_stage_moves_the_stimulus_on_the_contraction(tmp_path):
    out0, out1 = tmp_path / "r0", tmp_path / "r1"
    cfg = _config(tmp_path)
    refined = tmp_path / "refined.toml"
    refined.write_text(cfg.read_text().replace("steps = 2", "steps = 2\nrefine_steps = 3"))
    for c, out in ((cfg, out0), (refined, out1)):
        assert main(["design", "optimize", "--config", str(c), "--out", str(out), "--quiet"]) == 0
    r0, r1 = _rows(out0)[0], _rows(out1)[0]
    # the first stage is the same run; the second ran on the contraction (it keeps its start
    # where its 3 steps did not improve on it: test_optimal_design checks that rule)
    assert r0["crit_optimised_on_opt_theta"] == r1["crit_optimised_on_opt_theta"]
    v1 = torch.load(out1 / "stimulus_all_all_bins.pt")["values"]
    assert bool((v1 >= 0).all() and (v1 <= 19.0).all())
    assert json.loads((out1 / "run.json").read_text())["config"]["refine_steps"] == 3
    assert not list(out1.glob("checkpoint_*"))


def test_theta_select_chooses_on_other_draws_and_the_gain_has_a_standard_error(tmp_path):
    out0, out1 = tmp_path / "s0", tmp_path / "s1"
    cfg = _config(tmp_path)
    chosen = tmp_path / "select.toml"
    extra = "steps = 2\ntheta_select = 3\nrefine_steps = 2"
    chosen.write_text(
        cfg.read_text().replace("steps = 2", extra).replace("theta_eval = 2", "theta_eval = 1")
    )
    for c, out in ((cfg, out0), (chosen, out1)):
        assert main(["design", "optimize", "--config", str(c), "--out", str(out), "--quiet"]) == 0
    r0, r1 = _rows(out0)[0], _rows(out1)[0]
    assert float(r0["gain_se_nats_per_trace"]) > 0  # two held-out draws: a paired spread
    assert float(r1["gain_se_nats_per_trace"]) == 0.0  # one: no spread to speak of
    assert json.loads((out1 / "run.json").read_text())["config"]["theta_select"] == 3
    assert "theta_select" not in json.loads((out0 / "run.json").read_text())["settings"]
    v1 = torch.load(out1 / "stimulus_all_all_bins.pt")["values"]
    assert bool((v1 >= 0).all() and (v1 <= 19.0).all())


def test_cli_smoke_hh_tree_in_nA_inside_per_site_bounds(tmp_path):
    from bayesneuron.reference.cells import hh_tree_cell

    cfg, out = _config(tmp_path, "hh_tree", '["[0,5]|all"]'), tmp_path / "out"
    assert main(["design", "optimize", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    _check_run(out, "05_all", "nA")
    v = torch.load(out / "stimulus_05_all_bins.pt")["values"]  # [trace, site, bins] nA
    hi = 20.0 * hh_tree_cell().morphology.area[[0, 5]] * 1e3  # 20 µA/cm² by area
    assert v.shape == (2, 2, 40) and bool((v >= 0).all())
    assert bool((v.amax(dim=(0, 2)).numpy() <= hi + 1e-12).all())
    assert v[:, 1].max() < 0.5 * hi[0]  # the thin tip's bound, not the soma's


def test_max_charge_reaches_the_stimulus_per_site_in_pC(tmp_path):
    from bayesneuron.reference.cells import hh_tree_cell

    cfg, out = _config(tmp_path, "hh_tree", '["[0,5]|all"]'), tmp_path / "out"
    cfg.write_text(cfg.read_text().replace("steps = 2", "steps = 2\nmax_charge = 20.0"))
    assert main(["design", "optimize", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    v = torch.load(out / "stimulus_05_all_bins.pt")["values"]  # [trace, site, bins] nA
    charge = v.abs().sum(-1) * 0.5  # pC per trace and site (0.5 ms bins)
    cap = torch.as_tensor(20.0 * hh_tree_cell().morphology.area[[0, 5]] * 1e3)  # nC/cm² · cm²
    assert bool((charge <= cap + 1e-9).all()) and bool((charge > 0.5 * cap).any())


def test_worker_count_changes_no_number(tmp_path):
    designs = '["[0]|all", "all|[0]"]'
    outs = []
    for w in (1, 2):
        cfg, out = (
            _config(tmp_path, designs=designs, workers=w, name=f"c{w}.toml"),
            tmp_path / f"w{w}",
        )
        assert main(["design", "optimize", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
        outs.append([{k: v for k, v in r.items() if k != "wall_s"} for r in _rows(out)])
    assert [(r["stim"], r["rec"]) for r in outs[0]] == [("[0]", "all"), ("all", "[0]")]
    assert outs[0] == outs[1]


@pytest.mark.parametrize("unit", ["nA", "uA/cm2"])
def test_stimulus_nwb_round_trip(tmp_path, unit):
    vals = torch.rand(3, 2, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    stim = Stimulus(vals, dt=0.004, t0=0.5, unit=unit, sites=(1, 5))
    path = write_stimulus_nwb(stim, tmp_path / "s.nwb")
    back = read_stimulus_nwb(path)
    assert torch.equal(back.values, vals) and back.sites == (1, 5)
    assert (back.dt, back.t0, back.unit) == (0.004, 0.5, unit)
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        series = io.read().stimulus["stimulus_0002_site_5"]
        if unit == "nA":
            assert series.unit == "amperes" and series.conversion == 1e-9
            assert series.electrode.location == "compartment 5"
        else:  # a density is not a current: never amperes
            assert series.unit == "uA/cm2" and "not a current" in series.description
    dense = Stimulus(vals[:, :1], dt=0.1, unit=unit)  # dense: every compartment is a site
    assert read_stimulus_nwb(write_stimulus_nwb(dense, tmp_path / "d.nwb")).sites == (0,)


def test_stimulus_nwb_bad_inputs_write_nothing(tmp_path):
    path = tmp_path / "s.nwb"
    with pytest.raises(RecordingError, match="expected a Stimulus"):
        write_stimulus_nwb(np.zeros((1, 1, 4)), path)
    assert not path.exists()
    stim = Stimulus(torch.ones(1, 1, 4), dt=0.1, unit="nA", sites=(0,))
    write_stimulus_nwb(stim, path)
    before = path.read_bytes()
    with pytest.raises(RecordingError, match="exists"):
        write_stimulus_nwb(Stimulus(torch.zeros(1, 1, 4), dt=0.1, unit="nA"), path)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(RecordingError):
        read_stimulus_nwb(tmp_path / "missing.nwb")


def test_family_per_site_bounds():
    fam = PiecewiseConstant(n_traces=2, sites=(0, 5), lo=(0.0, -1.0), hi=(1.0, 10.0))
    v = fam(fam.init(seed=0, scale=100.0)).values[..., 1:-1]
    assert float(v[:, 0].max()) <= 1.0 and float(v[:, 0].max()) > 0.99
    assert float(v[:, 1].min()) >= -1.0 and float(v[:, 1].max()) > 9.9
    want = torch.tensor([[0.5], [4.0]], dtype=torch.float64).expand(2, 48)
    z = fam.fit(Stimulus(want.expand(2, 2, 48).clone(), dt=0.1, sites=(0, 5)))
    assert torch.allclose(fam(z).values[..., 1:-1], want[None, :, 1:-1])
    with pytest.raises(Exception, match="one per site"):
        PiecewiseConstant(n_traces=1, sites=(0, 5), lo=(0.0,), hi=1.0)
    with pytest.raises(Exception, match="lo < hi"):
        PiecewiseConstant(n_traces=1, sites=(0, 5), lo=0.0, hi=(1.0, 0.0))


def test_cli_steps_family_from_the_paper_and_ladder_starts(tmp_path, capsys):
    """An amplifier-style family (steps, its epoch count from the config) starts from its
    least-squares fits to the paper's currents and the ladder, and writes its stimulus."""
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + "family_options = {n_epochs = 2}\n")
    out = tmp_path / "out"
    argv = ["design", "optimize", "--config", str(cfg), "--out", str(out), "--family", "steps"]
    assert main([*argv, "--quiet"]) == 0
    (row,) = _rows(out)
    assert row["family"] == "steps" and row["best_start"] in ("paper", "ladder", "random")
    assert math.isfinite(float(row["crit_optimised"]))
    values = torch.load(out / "stimulus_all_all_steps.pt")["values"]  # [trace, site, bins]
    jumps = (values[..., 2:-1] - values[..., 1:-2]).abs() > 1e-6  # inside the zero ends
    assert int(jumps.sum(-1).max()) <= 2  # two epochs: one boundary, at most two bins move
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["family_options"] == {"n_epochs": 2}


def test_chosen_start_is_the_most_informative_protocol_sweeps(tmp_path, capsys):
    """init "chosen": the n_traces sweeps of 500 protocol sweeps that inform most together,
    on draws neither the start choice nor the judgement sees; with it as the only start and
    no steps of the optimiser that count (2), the optimised stimulus is those sweeps as the
    family fits them, and it beats the paper's first sweeps on the held-out draws."""
    from bayesneuron.studies.design_config import load_design_study
    from bayesneuron.studies.optimal_design import chosen_sweeps

    cfg = _config(tmp_path, designs='["all|[0]"]')
    cfg.write_text(cfg.read_text().replace("steps = 2", 'steps = 2\ninit = ["chosen"]'))
    out = tmp_path / "out"
    assert main(["design", "optimize", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    (row,) = _rows(out)
    assert row["best_start"] == "chosen"
    assert float(row["crit_optimised"]) > float(row["crit_paper"])
    study = load_design_study(cfg)
    model, _, _ = paper_experiment(Design.from_label("all|[0]"), n_traces=2)
    picked = chosen_sweeps(study, model)
    assert picked.values.shape == model.stimulus.values.shape
    pool = torch.cat([paper_currents(s, n_traces=100).values for s in range(20230620, 20230625)])
    for sweep in picked.values:  # each one a sweep of the protocol's draws, whole
        assert bool((pool == sweep).all(-1).all(-1).any())
    # --steps 0: no optimiser, the chosen sweeps themselves (as the family represents them)
    argv = ["design", "optimize", "--config", str(cfg), "--out", str(tmp_path / "o0"), "--quiet"]
    assert main([*argv, "--steps", "0"]) == 0
    (row0,) = _rows(tmp_path / "o0")
    assert (row0["best_start"], row0["best_step"]) == ("chosen", "0")
    saved = torch.load(tmp_path / "o0" / "stimulus_all_0_bins.pt")
    gap = (saved["values"] - picked.values[:, list(saved["sites"])]).abs().max()
    assert gap < 0.05  # µA/cm²: the sigmoid reaches the bounds 0 and 19 only in the limit
    again = ["design", "optimize", "--config", str(cfg), "--out", str(tmp_path / "o2"), "--quiet"]
    assert main([*again, "--init", "ladder, random"]) == 0  # --init overrides the config's
    assert _rows(tmp_path / "o2")[0]["best_start"] in ("ladder", "random")
    bad = ["design", "optimize", "--config", str(cfg), "--out", str(tmp_path / "o3")]
    assert main([*bad, "--init", "flat"]) == 1
    assert "init" in capsys.readouterr().err and not (tmp_path / "o3").exists()


SITES = """
[sites]
n_electrodes = 2
candidates = [0, 1, 5]
rec = "all"
"""


@pytest.mark.parametrize(
    "sites, match",
    [
        ({"n_electrodes": 0}, r"\[sites\] n_electrodes = 0: must be 1 … 6"),
        ({"n_electrodes": 4, "candidates": [0, 1, 5]}, r"n_electrodes = 4: must be 1 … 3"),
        ({"n_electrodes": "2"}, r"\[sites\] n_electrodes = '2' has the wrong type"),
        ({"n_electrodes": 1, "candidates": [0, 6]}, r"candidates = \[0, 6\]: compartments are 0–5"),
        ({"n_electrodes": 1, "candidates": [1, -5]}, r"candidates = \[1, -5\]: .* twice"),
        ({"n_electrodes": 1, "candidates": "some"}, r"candidates = 'some'"),
        ({"n_electrodes": 1, "electrodes": 2}, r"\[sites\] unknown key 'electrodes'"),
        ({"n_electrodes": 1, "rec": "[7]"}, r"\[sites\] rec = '\[7\]': .*compartment 7"),
        ({"n_electrodes": 1, "max_rounds": -1}, r"\[sites\] max_rounds = -1"),
        ({"n_electrodes": 1, "init": ["flat"]}, r"\[sites\] init"),
        ({"n_electrodes": 1, "init": ["chosen"]}, r"\[sites\] init"),  # one site set's sweeps
        ({"candidates": [0, 1]}, r"\[sites\] n_electrodes is missing"),
    ],
)
def test_sites_config_errors_name_the_key(sites, match):
    with pytest.raises(StudyError, match=match):
        design_study_from_dict({"experiment": {"preset": "paper_toy"}, "sites": sites}, "c.toml")


def test_sites_config_defaults_and_overrides():
    raw = {"experiment": {"preset": "paper_toy", "n_traces": 7}, "sites": {"n_electrodes": 3}}
    s = design_study_from_dict(raw)
    assert s.sites.candidates == (0, 1, 2, 3, 4, 5) and s.sites.rec == "all"
    assert s.sites.n_traces == 7  # the study's
    assert (s.sites.steps, s.sites.exchange, s.sites.max_rounds) == (80, True, 3)
    raw["sites"] |= {"candidates": [5, 0, -2], "rec": "[0, -1]"}
    s2 = design_study_from_dict(raw, sites={"steps": 2, "n_traces": None})
    assert (s2.sites.candidates, s2.sites.rec) == ((0, 4, 5), "[0,-1]")
    assert (s2.sites.steps, s2.sites.n_traces) == (2, 7)  # a None override keeps the value
    assert s.settings() == design_study_from_dict({**raw, "sites": {}}).settings()  # no number
    assert design_study_from_dict({"experiment": {"preset": "paper_toy"}}).sites is None


def test_cli_design_sites_greedy_exchange_and_grid(tmp_path, capsys):
    cfg, out = _config(tmp_path), tmp_path / "out"
    bare = cfg.read_text()
    argv = ["design", "sites", "--config", str(cfg), "--out", str(out), "--quiet"]
    assert main(argv) == 1  # no [sites] section, no --n-electrodes: nothing done
    assert "no [sites] section" in capsys.readouterr().err and not out.exists()
    cfg.write_text(bare + SITES)
    assert main([*argv, "--n-traces", "1"]) == 0
    assert "(exchange)" in capsys.readouterr().out
    with (out / "sites.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = "step method sites rec n_traces crit_opt_theta crit_heldout contraction_heldout wall_s"
    assert set(need.split()) <= set(rows[0])
    assert all(math.isfinite(float(r[k])) for r in rows for k in need.split()[4:])
    greedy = [r for r in rows if r["method"] == "greedy"]
    (ex,) = [r for r in rows if r["method"] == "exchange"]
    assert [len(json.loads(r["sites"])) for r in greedy] == [1, 2]
    # the second electrode starts from the first's stimulus (warm start): it does not lose
    one, two = (float(r["crit_opt_theta"]) for r in greedy)
    assert two >= one - 0.05, (one, two)
    assert float(ex["crit_opt_theta"]) >= float(greedy[-1]["crit_opt_theta"])
    grid = [r["label"] for r in rows if r["method"] == "grid"]
    assert grid == ["[0]|all", "[0,1]|all", "[0,-1]|all"]
    assert {r["rec"] for r in rows} == {"all"} and {r["n_traces"] for r in rows} == {"1"}
    assert (out / "sites.png").stat().st_size > 1000
    meta = json.loads((out / "sites.json").read_text())
    assert meta["finished"] and meta["spec"]["candidates"] == [0, 1, 5]
    assert meta["history"][0]["round"] == 0 and "torch" in str(meta["environment"])
    assert {r["crit_select"] for r in rows} == {""}  # no theta_select: nothing held apart


def test_cli_design_sites_compares_sets_on_the_select_draws(tmp_path):
    from bayesneuron.studies.design_config import load_design_study
    from bayesneuron.studies.site_selection import run_site_selection

    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + "theta_select = 2\n" + SITES + "exchange = false\n")
    study = load_design_study(cfg)
    rows = run_site_selection(study, study.sites, tmp_path / "out", progress=False)
    greedy = [r for r in rows if r["method"] == "greedy"]
    assert all(math.isfinite(r["crit_select"]) for r in greedy)
    assert greedy[0]["crit_select"] != greedy[0]["crit_opt_theta"]  # other draws


def test_design_for_one_fitted_cell_from_its_posterior(tmp_path, capsys):
    """``[design] theta = "cell.nc"`` (relative to the config): the cell's posterior draws
    replace the prior's, for the optimiser and the held-out judgement; errors name the key."""
    from bayesneuron import Design
    from bayesneuron.reference.paper import paper_experiment, paper_ground_truth
    from bayesneuron.reports.arviz import (
        load_inference_data,
        save_inference_data,
        to_inference_data,
    )

    model = paper_experiment(Design.from_label("all|all"), n_traces=2)[0]
    truth, gen = paper_ground_truth(), np.random.default_rng(0)
    post = {
        k: torch.as_tensor(np.asarray(truth[k]) * (1 + 0.005 * gen.standard_normal((1, 20, 6))))
        for k in model.free
    }
    save_inference_data(to_inference_data(model, post), tmp_path / "cell.nc")
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + 'theta = "cell.nc"\n')  # the last section is [design]
    out, prior_out = tmp_path / "cell", tmp_path / "prior"
    assert main(["design", "optimize", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    argv = ["design", "optimize", "--config", str(cfg), "--out", str(prior_out), "--quiet"]
    assert main([*argv, "--theta", "prior"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["theta"] == str(tmp_path / "cell.nc")
    cell, prior = _rows(out)[0], _rows(prior_out)[0]
    # judged on draws within 0.5 % of the truth, the paper's currents score as at the truth;
    # on the prior's draws they do not
    gap = abs(float(cell["crit_paper"]) - float(cell["crit_paper_truth"]))
    assert gap < 0.2 * abs(float(prior["crit_paper"]) - float(prior["crit_paper_truth"]))
    assert cell["crit_paper_truth"] == prior["crit_paper_truth"]
    # errors, each before any result is written: no such file; a posterior without the free
    # parameters; fewer draws than theta_eval + max(theta_opt, theta_select)
    few = {k: v[:, :3] for k, v in post.items()}
    save_inference_data(to_inference_data(model, few), tmp_path / "few.nc")
    no_gk = load_inference_data(tmp_path / "cell.nc")
    no_gk.posterior = no_gk.posterior.drop_vars("g_k")
    save_inference_data(no_gk, tmp_path / "na.nc")
    for name, match in (("nope", "no such file"), ("few", "3 draws"), ("na", "no variable 'g_k'")):
        bad = ["design", "optimize", "--config", str(cfg), "--out", str(tmp_path / f"o_{name}")]
        assert main([*bad, "--quiet", "--theta", str(tmp_path / f"{name}.nc")]) == 1
        assert match in capsys.readouterr().err
        assert not (tmp_path / f"o_{name}" / "optimal_design.csv").exists()


def test_start_from_an_earlier_run_is_one_more_start(tmp_path, capsys):
    """``--start-from DIR``: the earlier run's stimulus of the design is the start
    ``previous``; with ``init = []`` the only one. A folder without it is refused."""
    first, again = tmp_path / "first", tmp_path / "again"
    cfg = _config(tmp_path)
    assert main(["design", "optimize", "--config", str(cfg), "--out", str(first), "--quiet"]) == 0
    only = tmp_path / "only.toml"
    only.write_text(cfg.read_text() + "init = []\nlr_final = 0.01\n")
    argv = ["design", "optimize", "--config", str(only), "--out", str(again), "--quiet"]
    assert main([*argv, "--start-from", str(first)]) == 0
    row = _rows(again)[0]
    assert row["best_start"] == "previous"
    cfg_run = json.loads((again / "run.json").read_text())["config"]
    assert cfg_run["start_from"] == str(first) and cfg_run["lr_final"] == 0.01
    v0 = torch.load(first / "stimulus_all_all_bins.pt")["values"]
    v1 = torch.load(again / "stimulus_all_all_bins.pt")["values"]
    assert v1.shape == v0.shape and not torch.equal(v0, v1)  # moved on from the start
    (tmp_path / "empty").mkdir()
    bad = ["design", "optimize", "--config", str(only), "--out", str(tmp_path / "o")]
    assert main([*bad, "--quiet", "--start-from", str(tmp_path / "empty")]) == 1
    assert "no stimulus_all_all_bins.pt there" in capsys.readouterr().err
    assert main([*bad, "--quiet"]) == 1  # init = [] needs start_from
    assert "or [] with start_from" in capsys.readouterr().err


def test_site_selection_warm_starts_any_family(tmp_path):
    """With steps (not bins) the second electrode also starts from the first's stimulus,
    fitted to the family with the new electrode silent: greedy does not lose by adding it."""
    from bayesneuron.studies.design_config import load_design_study
    from bayesneuron.studies.site_selection import run_site_selection

    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + 'family = "steps"\n' + SITES + "exchange = false\n")
    study = load_design_study(cfg)
    rows = run_site_selection(study, study.sites, tmp_path / "out", progress=False)
    one, two = (float(r["crit_opt_theta"]) for r in rows if r["method"] == "greedy")
    assert two >= one - 0.05, (one, two)


def test_an_interrupt_stops_the_worker_processes(tmp_path):
    """SIGTERM / Ctrl-C during a --workers 2 run ends the workers at once, not after their
    designs finish: every process started since the pool, joined before the error returns."""
    import multiprocessing
    import signal

    from bayesneuron.studies.design_config import load_design_study
    from bayesneuron.studies.optimal_design import _results

    cfg = _config(tmp_path, designs='["[0]|all", "all|[0]"]', workers=2)
    study = load_design_study(cfg, steps=20_000)  # minutes of work per design

    def stop(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(3)
    try:
        with pytest.raises(KeyboardInterrupt):
            next(_results(study, study.designs, tmp_path / "out", False))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert [p for p in multiprocessing.active_children() if p.is_alive()] == []
