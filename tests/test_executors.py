"""Executors: the identifiability study on a Dask LocalCluster gives the local numbers."""

import csv
from pathlib import Path

import pytest

from bayesneuron.cli import main
from bayesneuron.errors import BayesneuronError
from bayesneuron.studies.executors import LocalExecutor, make_executor

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "paper_toy_identifiability"


def _rows(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _number(x):
    try:
        return float(x)
    except ValueError:
        return x


def test_dask_local_cluster_matches_local_executor(tmp_path):
    pytest.importorskip("distributed")
    import torch

    local, dask = tmp_path / "local", tmp_path / "dask"
    # Dask's workers run torch on one thread (OMP_NUM_THREADS=1); so does the local run here, so
    # that sums are taken in the same order and the numbers agree to the last bits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["study", "run", str(STUDY), "--out", str(local), "--smoke", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    argv = ["study", "run", str(STUDY), "--out", str(dask), "--smoke", "--quiet"]
    assert main(argv + ["--executor", "dask", "--workers", "2"]) == 0
    a, b = _rows(local / "designs.csv"), _rows(dask / "designs.csv")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if k == "wall_s":
                continue
            x, y = _number(ra[k]), _number(rb[k])
            if isinstance(x, float):
                assert x == pytest.approx(y, rel=1e-9, abs=1e-12, nan_ok=True), k
            else:
                assert x == y, k
    assert sorted(p.name for p in (dask / "idata").rglob("*.nc")) == sorted(
        p.name for p in (local / "idata").rglob("*.nc")
    )


def test_local_executor_runs_in_order():
    out = list(LocalExecutor().run({"b": (pow, (2, 3)), "a": (pow, (3, 2))}))
    assert out == [("b", 8), ("a", 9)]


def test_executor_errors():
    with pytest.raises(BayesneuronError, match="unknown"):
        make_executor("slurm")
    with pytest.raises(BayesneuronError, match="--scheduler needs --executor dask"):
        make_executor("local", "tcp://x:1")
