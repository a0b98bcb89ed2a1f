import json

import numpy as np
import pytest

from bayesneuron.cli import main


def test_simulate_writes_traces_figure_and_provenance(tmp_path):
    out = tmp_path / "run"
    rc = main(
        ["simulate", "--preset", "paper_toy", "--traces", "3", "--dt", "0.01", "--out", str(out)]
    )
    assert rc == 0
    data = np.load(out / "traces.npz")
    assert data["v"].shape == (3, 6, 48) and np.all(data["v"][..., 0] == -60.0)
    assert (out / "traces.png").stat().st_size > 10_000
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "paper_toy" and config["n_steps"] > 95
    env = json.loads((out / "environment.json").read_text())
    assert {"torch", "python", "bayesneuron", "git_commit"} <= set(env)


def test_user_errors_exit_non_zero_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["simulate", "--preset", "nope", "--out", str(tmp_path)])
    assert e.value.code == 2
    rc = main(["simulate", "--preset", "paper_toy", "--dt", "-1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 1 and "dt = -1.0 ms must be a finite number > 0" in err
    assert "Traceback" not in err and not (tmp_path / "x").exists()


def test_interpreter_exit_skips_the_final_garbage_collection():
    import subprocess
    import sys

    # a handler registered before the import runs after bayesneuron's (atexit is LIFO)
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"
        "import bayesneuron\n"
        "print('frozen before exit:', gc.get_freeze_count() > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["frozen before exit: False", "frozen at exit: True"]
