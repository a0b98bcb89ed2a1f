import json
import signal
import subprocess
import sys
import time
from importlib.metadata import version

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


# --------------------------------------------------------------------------- the front door
ENV_KEYS = {"bayesneuron", "torch", "pyro", "arviz", "fused_kernel"}


def test_version_and_python_dash_m(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"bayesneuron {version('bayesneuron')}"
    out = subprocess.run(
        [sys.executable, "-m", "bayesneuron", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"bayesneuron {version('bayesneuron')}"
    out = subprocess.run([sys.executable, "-m", "bayesneuron"], capture_output=True, text=True)
    assert out.returncode == 2 and "required: command" in out.stderr


def test_main_picks_the_agg_backend_and_writes_the_environment(tmp_path):
    import matplotlib

    out = tmp_path / "sim"
    assert main(["simulate", "--traces", "1", "--dt", "0.01", "--out", str(out)]) == 0
    assert matplotlib.get_backend().lower() == "agg"
    env = json.loads((out / "environment.json").read_text())
    assert ENV_KEYS <= set(env) and env["pyro"] and env["arviz"] and env["torch"]
    assert isinstance(env["fused_kernel"], dict)  # which build of the C kernel ran


STUDY = '[study]\nname = "x"\n[[run]]\nprotocol = "paper"\ndesigns = ["all|all"]\n'


@pytest.mark.parametrize("inside", [".", "res"])
def test_study_out_inside_the_study_folder_is_refused(tmp_path, capsys, inside):
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "config.toml").write_text(STUDY)
    out = folder / inside
    assert main(["study", "run", str(folder), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "the study folder" in err, err
    assert "write the results elsewhere, e.g. --out results/study" in err
    assert sorted(p.name for p in folder.iterdir()) == ["config.toml"]  # nothing written


SLOW = """[study]
name = "slow"
[experiment]
n_traces = 2
[[run]]
name = "quick"
protocol = "paper"
designs = ["all|all"]
max_steps = 1
[[run]]
name = "slow"
protocol = "paper"
designs = ["all|all"]
max_steps = 1000000
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_study_says_what_was_saved_and_how_to_resume(tmp_path, signum):
    folder, out = tmp_path / "study", tmp_path / "res"
    folder.mkdir()
    (folder / "config.toml").write_text(SLOW)
    argv = ["study", "run", str(folder), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bayesneuron", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "slow.pt").is_file():  # the slow run has started
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    name = signal.Signals(signum).name
    assert lines[0].startswith(f"bayesneuron: interrupted by {name}; saved in {out}: "), err
    assert "table.csv" in err and "checkpoints/slow.pt" in err, err
    assert err.strip().endswith(f"continue with: bayesneuron {' '.join(argv)} --resume"), err


def test_interrupted_one_shot_commands_say_nothing_was_saved():
    from types import SimpleNamespace

    from bayesneuron.cli._interrupt import interrupt_message

    args = SimpleNamespace(command="fit", out="results/fit")
    msg = interrupt_message(args, ["fit", "--out", "results/fit"], signal.SIGTERM)
    assert msg == (
        "bayesneuron: interrupted by SIGTERM; nothing was saved (fit writes its results when "
        "it finishes); run it again: bayesneuron fit --out results/fit"
    )
