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


def test_import_has_no_side_effects():
    """Importing the package registers no exit hook, freezes no garbage, picks no matplotlib
    backend and leaves torch's RNG alone."""
    import subprocess
    import sys

    code = (
        "import atexit, gc, sys, torch\n"
        "n, state = atexit._ncallbacks(), torch.random.get_rng_state()\n"
        "import bayesneuron, bayesneuron.reports\n"
        "assert atexit._ncallbacks() == n, 'atexit hook registered'\n"
        "assert gc.get_freeze_count() == 0, 'gc frozen'\n"
        "assert torch.equal(torch.random.get_rng_state(), state), 'RNG touched'\n"
        "import matplotlib\n"
        "assert matplotlib.rcParams._get_backend_or_none() is None, 'backend chosen'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
