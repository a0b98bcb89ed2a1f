"""Noise-free recovery of the paper's toy model by the Levenberg–Marquardt MAP from starts that
do not use the truth (time-window continuation), and the recovered / flat / local-minimum
classification of :mod:`bayesneuron.inference.recovery`."""

from types import SimpleNamespace

import numpy as np
import pytest

from bayesneuron import CrankNicolson, Design, fit_map, paper_experiment
from bayesneuron.inference.recovery import (
    _in_prior_widths,
    distinct_modes,
    fisher_spectrum,
    recovery_reason,
    recovery_row,
)

SOLVER = CrankNicolson(dt=0.01)


def _max_rel(fit, truth) -> float:
    return max(float(np.max(np.abs(fit.params[k] - truth[k]) / truth[k])) for k in fit.free)


def test_time_windows_recover_a_design_the_horizons_miss():
    """[0,1]|[0,1,−1] (compartments 3 and 4 neither stimulated nor recorded), 20 traces, from
    the cell's base values: continuation over restart horizons stops in a local minimum (the
    study's grid25 run did too, at full size); over growing time windows it finds the truth."""
    model, v, truth = paper_experiment(
        Design.from_label("[0,1]|[0,1,-1]"), n_traces=20, solver=SOLVER
    )
    kw = dict(truth=truth, n_starts=1, max_steps=30, progress=False)
    horizons = fit_map(model, v, **kw)  # the default continuation, (1, 4, 16)
    windows = fit_map(model, v, horizons=(), windows=range(8, 48, 4), **kw)
    assert _max_rel(horizons, truth) > 0.1, horizons.params
    assert _max_rel(windows, truth) < 1e-6, windows.params
    assert windows.mse[0] < 1e-12 < horizons.mse[0]
    stages = np.unique(windows.history["stage"][:, 0])
    assert len(stages) == 11  # ten windows (8 … 44 of 48 output times), then the plain fit


def test_windows_longer_than_the_data_are_skipped_and_bad_windows_refused():
    model, v, truth = paper_experiment(Design(), n_traces=2, solver=SOLVER)
    fit = fit_map(
        model, v, n_starts=1, max_steps=2, horizons=(), windows=(40, 48, 60), progress=False
    )
    assert np.unique(fit.history["stage"][:, 0]).tolist() == [0, 1]  # 40, then the plain fit
    with pytest.raises(Exception, match="windows"):
        fit_map(model, v, n_starts=1, max_steps=2, windows=(16, 8), progress=False)
    with pytest.raises(Exception, match="windows"):
        fit_map(model, v, protocol="paper", max_steps=2, windows=(8,), progress=False)


def test_reasons_flat_direction_local_minimum_and_recovered():
    """Soma-only stimulation and recording leaves the distal conductances unseen: the Fisher
    rank at the prior-based tolerance is below 12 and the reason says which; a full-rank
    design whose fit stays above zero is a local minimum; a fit at the truth is recovered."""
    model, v, truth = paper_experiment(Design.from_label("[0]|[0]"), n_traces=4, solver=SOLVER)
    spec = fisher_spectrum(model, truth)
    assert spec["rank"] < 12 and spec["eigvals"][0] < spec["tol"] <= spec["eigvals"][-1]
    unseen = {lab for group in spec["flat"] for lab in group}
    assert unseen & {"g_na[4]", "g_na[5]"}
    why = recovery_reason(False, spec, 1e-6, 8, 0.4)
    assert why.startswith("flat direction: Fisher rank") and "g_na[" in why
    assert why.endswith("best of 8 starts: objective 1e-06 at max rel err 0.4")
    full = dict(spec, rank=12)
    why = recovery_reason(False, full, 3.5, 8, 0.2)
    assert (
        why == "local minimum: best of 8 starts: objective 3.5 at max rel err 0.2 (objective > 0)"
    )
    assert recovery_reason(True, spec, 0.0, 8, 1e-9) == "recovered"

    fit = fit_map(
        model, v, truth=truth, init=truth, n_starts=1, max_steps=3, horizons=(), progress=False
    )
    row = recovery_row(fit, model, truth, spectrum=spec)
    assert row["recovered"] and row["reason"] == "recovered" and row["max_rel_err"] < 1e-9
    assert row["fisher_rank"] == spec["rank"] and row["n_modes"] == 1
    # the error in prior widths: the paper's prior base·U(0.7, 1.3) is 0.6·base wide
    base = np.concatenate([model.base[k].numpy() for k in model.free])
    assert abs(_in_prior_widths(model, 0.03 * base) - 0.05) < 1e-12
    err = np.random.default_rng(0).uniform(0, 0.1, base.size) * base
    assert abs(_in_prior_widths(model, err) - np.max(err / (0.6 * base))) < 1e-12


def test_distinct_modes_counts_equally_good_but_different_optima():
    model, _, truth = paper_experiment(Design(), n_traces=2, solver=SOLVER)
    g = {k: np.stack([truth[k], truth[k] * 1.0001, truth[k] * 1.2, truth[k] * 0.8]) for k in truth}
    fake = SimpleNamespace(free=model.free, starts=g, mse=np.array([0.0, 1e-12, 1e-12, 5.0]))
    # starts 0 and 1 are one mode; 2 is as good but elsewhere; 3 is worse and does not count
    assert distinct_modes(fake, model) == 2


def test_benchmark_script_writes_a_row_per_design(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "rec.json"
    args = ["--quick", "--starts", "1", "--max-steps", "2", "--windows", "8:24:8", "--quiet"]
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "map_recovery.py"), *args]
        + ["--designs", "all|all;[0]|[0]", "--threads", "1", "--json", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["stim"], r["rec"]) for r in rows] == [("all", "all"), ("[0]", "[0]")]
    assert rows[0]["fisher_rank"] == 12 and rows[1]["fisher_rank"] < 12
    assert rows[1]["reason"].startswith("flat direction") or rows[1]["recovered"]
    assert all(0 <= r["max_err_prior_width"] < 10 for r in rows)  # base·U(0.7, 1.3): 0.6·base
    assert "recovered" in proc.stdout
