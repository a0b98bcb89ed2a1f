"""Smoke tests of ``benchmarks/simulator.py``: the quick paper_toy run writes well-formed JSON;
the quick l23_cell run's peers agree (slow); ``benchmarks/gpu_throughput.py`` runs its CPU rows
(a GPU session should not find the script broken)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "simulator.py"
ROW_KEYS = {
    "case",
    "impl",
    "dtype",
    "fwd_s",
    "fwd_bwd_s",
    "peak_mem_mb",
    "max_abs_err_mv",
    "err_reference",
}


def test_quick_paper_toy_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--cases", "paper_toy", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    machine = data["machine"]
    for key in ("cores", "torch", "device", "cpu_model", "threads"):
        assert key in machine
    rows = data["rows"]
    impls = {r["impl"] for r in rows}
    assert "torchdiffeq-dopri5-adjoint" in impls
    assert any(i.startswith("bayesneuron-cn-dt") for i in impls)
    for row in rows:
        assert ROW_KEYS <= set(row), sorted(ROW_KEYS - set(row))
        assert row["case"] == "paper_toy"
        assert "failed" not in (row.get("note") or ""), row["note"]
        assert row["fwd_s"] is not None and row["fwd_s"] > 0
        assert row["max_abs_err_mv"] is not None
    # Every solver row (not the reference) has a gradient timing and a finite error.
    solved = [r for r in rows if r["err_reference"] != "(reference)"]
    assert solved
    for row in solved:
        assert row["fwd_bwd_s"] is not None and row["fwd_bwd_s"] > 0
        assert row["peak_mem_mb"] is not None
        assert 0 <= row["max_abs_err_mv"] < 5.0
    assert "paper_toy" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("neuron") is None or importlib.util.find_spec("jaxley") is None,
    reason="needs NEURON and Jaxley (the bench extra)",
)
def test_quick_l23_cell_peers_agree(tmp_path):
    """The quick l23_cell run: NEURON, bayesneuron's BackwardEuler and Jaxley run one scheme on
    one 490-compartment cell and agree; the fused rows time forward and gradient."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--cases", "l23_cell", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["impl"], r.get("cell")): r for r in json.loads(out.read_text())["rows"]}
    for row in rows.values():
        assert ROW_KEYS <= set(row), sorted(ROW_KEYS - set(row))
        assert "failed" not in (row.get("note") or ""), row["note"]
    fine = "d_lambda=0.1"
    assert rows[("neuron", fine)]["area_rel_diff_vs_bayesneuron"] < 1e-12
    assert rows[("bayesneuron-be-dt0.025", fine)]["max_abs_err_mv"] < 1e-9
    jaxley = rows[("jaxley", fine)]
    assert jaxley["n_comp"] == 490
    assert jaxley["max_abs_err_mv"] < 1e-5  # the soma branch point's JAXLEY_SOMA_EPS
    assert jaxley["grad_rel_diff_vs_bayesneuron_be"] < 1e-6
    fused = rows[("bayesneuron-cn-dt0.025-fused", fine)]
    assert fused["fwd_bwd_s"] > 0 and fused["fwd_bwd_vs_jaxley"]["median"] > 0


def test_gpu_throughput_cpu_rows_write_json(tmp_path):
    out = tmp_path / "gpu.json"
    args = ["--cases", "paper_particles,l23_particles", "--particles", "2", "--traces", "2"]
    args += ["--cpu-particles", "1", "--repeat", "1", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["case"], r["impl"]) for r in rows] == [
        ("paper_particles", "fused-cpu"),
        ("l23_particles", "fused-cpu"),
    ]
    assert [r["traces"] for r in rows] == [4, 10]  # 2 particles x 2 traces; 1 x 10 steps
    for r in rows:
        assert "error" not in r, r
        assert r["fwd_traces_per_s"] == r["traces"] / r["fwd_s"]
        assert r["speedup_fwd"] == 1.0 and r["speedup_fwd_bwd"] == 1.0
