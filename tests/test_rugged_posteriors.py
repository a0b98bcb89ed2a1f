"""Smoke test of ``benchmarks/rugged_posteriors.py``: single-population SMC runs, merged into
one checked run, settled with HMC, reweighted, compared with NUTS and with the study's
reference tables — on the study's smoke sizes."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "rugged_posteriors.py"
DESIGN = "[0]|all"


def _run(tmp_path, *args):
    cmd = [sys.executable, str(SCRIPT), *args, "--designs", DESIGN, "--out", str(tmp_path)]
    proc = subprocess.run(
        [*cmd, "--smoke", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_populations_merge_reweight_and_compare(tmp_path):
    for j in (0, 1):
        out = _run(tmp_path, "run", "--method", "smc", "--particles", "16", "--population", str(j))
        assert f"smc.pop{j}" in out
    out = _run(tmp_path, "merge")
    assert "2 populations of 16" in out
    merged = json.loads((tmp_path / "smc" / "0__all.json").read_text())
    assert merged["num_chains"] == 2 and len(merged["populations"]) == 2
    assert merged["n_simulations"] > 2 * 16 and merged["beta_final"] == 1.0
    log_z = [float(x) for x in merged["log_evidence"].split()]
    assert len(log_z) == 2 and all(map(lambda x: x == x, log_z))  # two finite estimates
    out = _run(tmp_path, "settle", "--kernel", "hmc", "--leapfrog", "2", "--rounds", "1")
    settled = json.loads((tmp_path / "smc_settled" / "0__all.json").read_text())
    assert "settle round 1" in out and settled["settle_sweeps"] in (0, 5)  # 0: passed already
    assert settled["kernel"] == "hmc" and settled["num_chains"] == 2
    _run(tmp_path, "settle", "--kernel", "hmc", "--leapfrog", "2", "--rounds", "1", "--resume")
    resumed = json.loads((tmp_path / "smc_settled" / "0__all.json").read_text())
    more = 5 if settled["rhat_max"] > 1.01 else 0  # settling sweeps only while R̂ fails
    assert resumed["settle_sweeps"] == settled["settle_sweeps"] + more  # carried on
    assert len(resumed["rhat_by_round"]) == len(settled["rhat_by_round"]) + 1
    assert resumed["wall_s"] > settled["wall_s"] and resumed["num_chains"] == 2
    report = tmp_path / "reweight.json"
    out = _run(tmp_path, "reweight", "--method", "smc", "--rounds", "2", "--proposals", "200",
               "--components", "2", "--json", str(report))  # fmt: skip
    rounds = json.loads(report.read_text())[DESIGN]["rounds"]
    assert len(rounds) == 2 and all(r["ess"] >= 1 for r in rounds)
    _run(tmp_path, "run", "--method", "nuts", "--chains", "2", "--warmup", "5", "--samples", "5")
    out = _run(tmp_path, "compare", "--reference", "smc", "--against", "nuts")
    assert "vs smc" in out
    tables = ROOT / "studies" / "paper_toy_identifiability" / "reference"
    report = tmp_path / "vs_study.json"
    _run(tmp_path, "compare", "--reference", "smc_settled", "--study-reference", str(tables),
         "--json", str(report))  # fmt: skip
    row = json.loads(report.read_text())[DESIGN]
    assert row["against"] == "study" and 0 < row["sd_ratio_min"] <= row["sd_ratio_max"]
    assert row["reference_mean_contraction"] < 1 and row["study_mean_contraction"] > 0


def test_the_sampler_on_a_named_device_sees_the_same_data_and_laplace(tmp_path):
    """``--device`` rebuilds the model there and moves the CPU's data and Laplace
    approximations to it: on the CPU the draws are those of the plain run, bit for bit."""
    import numpy as np

    args = ("run", "--method", "smc", "--particles", "16", "--population", "0")
    _run(tmp_path / "plain", *args)
    _run(tmp_path / "named", *args, "--device", "cpu")
    a, b = (np.load(tmp_path / d / "smc" / "0__all.pop0.npz") for d in ("plain", "named"))
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
