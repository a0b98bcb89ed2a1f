"""The tutorial notebooks: committed clean, in step with their generator, and executing without
errors in small mode (``BAYESNEURON_NOTEBOOK_SMALL=1``), as Pyro's CI runs its examples."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 600  # per cell: generous, for a busy machine


def test_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_quickstart.ipynb",
        "02_identifiability.ipynb",
        "03_design_comparison.ipynb",
        "04_real_recording.ipynb",
        "05_designing_stimuli.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_valid(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    assert "BAYESNEURON_NOTEBOOK_SMALL" in code[0].source, "the first code cell reads the switch"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, (
            f"{path.name}: committed with outputs; rebuild with python notebooks/_build.py"
        )


def test_notebooks_match_generator():
    pytest.importorskip("nbformat")
    run = subprocess.run(
        [sys.executable, str(ROOT / "notebooks" / "_build.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr


def _kernelspec(root: Path) -> str:
    """A kernelspec under ``root`` (put on ``JUPYTER_PATH``) that runs this very interpreter:
    the installed ``python3`` spec runs whatever ``python`` is first on PATH."""
    name = "bayesneuron-test"
    spec = root / "kernels" / name
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "bayesneuron test", "language": "python"})
    )
    return name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_in_small_mode(path, tmp_path, monkeypatch):
    # the kernel inherits the environment: small mode, one thread each (2-core CI machines)
    monkeypatch.setenv("BAYESNEURON_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # silences jupyter_core's migration warning
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    kernel = _kernelspec(tmp_path / "jupyter")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},  # any file a notebook writes lands here
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    wall = time.perf_counter() - t0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} displayed no figure"
    print(f"{path.name}: {wall:.1f} s, {len(images)} figures")
