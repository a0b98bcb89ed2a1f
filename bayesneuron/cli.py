"""The ``bayesneuron`` command line.

``bayesneuron simulate --preset paper_toy --out results/demo`` simulates a ready-made cell and
protocol and writes the traces (``traces.npz``), a figure (``traces.png``), the resolved
configuration (``config.json``) and an environment manifest (``environment.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .errors import BayesneuronError

PRESETS = ("paper_toy", "hh_tree", "l23")
SOLVERS = ("cn", "be", "dopri5", "rk4")


def _preset(name: str, n_traces: int, seed: int):
    """(cell, params, stimulus, t_eval, default dt) of a ready-made problem."""
    from .cells import hh_tree_cell, l23_cell
    from .stimulus import step_current

    if name == "paper_toy":
        from .paper import paper_currents, paper_ground_truth, paper_time_grid, paper_toy_cell

        stim = paper_currents(seed=seed, n_traces=n_traces)
        return paper_toy_cell(), paper_ground_truth(seed), stim, paper_time_grid(), 0.0015
    cell = hh_tree_cell() if name == "hh_tree" else l23_cell()
    amps = np.linspace(0.0, 0.5 if name == "hh_tree" else 1.0, n_traces)
    stim = step_current(
        amps, site=0, n_comp=cell.n_comp, delay=1.0, duration=40.0, t_stop=50.0, dt=0.025, unit="nA"
    )
    return cell, None, stim, np.arange(2001) * 0.025, 0.025


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot become a results folder, before any work is done."""
    for q in (out, *out.parents):
        if q.exists():
            if not q.is_dir():
                what = f"--out {out}" if q == out else f"--out {out}: {q}"
                raise BayesneuronError(
                    f"{what} is a file, not a folder; give a folder path for the results"
                )
            break


def _check_device(name: str) -> None:
    from .simulate import check_device

    check_device(name)


def _solver(name: str, dt: float):
    from .solvers import BackwardEuler, CrankNicolson, Torchdiffeq

    return {
        "cn": lambda: CrankNicolson(dt=dt),
        "be": lambda: BackwardEuler(dt=dt),
        "dopri5": lambda: Torchdiffeq("dopri5", rtol=1e-8, atol=1e-8),
        "rk4": lambda: Torchdiffeq("rk4", step_size=dt),
    }[name]()


def environment() -> dict:
    """Versions, device and git commit: what a result folder needs to be reproduced."""
    import bayesneuron

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "bayesneuron": bayesneuron.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit,
    }


def cmd_simulate(args) -> int:
    from .reports import plot_traces
    from .simulate import simulate

    if args.traces < 1:
        raise BayesneuronError(f"--traces {args.traces}: need at least 1 stimulus trace")
    out = Path(args.out)
    _check_out(out)
    _check_device(args.device)
    torch.manual_seed(args.seed)
    cell, params, stim, t_eval, dt = _preset(args.preset, args.traces, args.seed)
    solver = _solver(args.solver, dt if args.dt is None else args.dt)
    dtype = torch.float32 if args.float32 else torch.float64
    start = time.perf_counter()
    tr = simulate(cell, params, stim, t_eval, solver, dtype=dtype, device=args.device)
    wall = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "traces.npz",
        t=tr.t.cpu().numpy(),
        v=tr.v.detach().cpu().numpy(),
        names=np.array(tr.names),
    )
    fig = plot_traces(
        tr, traces=(0, tr.v.shape[0] - 1), compartments=None, title=f"{args.preset}: {solver}"
    )
    fig.savefig(out / "traces.png", dpi=120)
    config = {**vars(args), "solver": repr(solver), "n_steps": tr.n_steps, "wall_s": wall}
    config.pop("func", None)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (out / "environment.json").write_text(json.dumps(environment(), indent=2))
    print(
        f"simulated {tuple(tr.v.shape)} [trace, comp, time] in {wall:.2f} s "
        f"({tr.n_steps or 'adaptive'} steps); results in {out}/"
    )
    return 0


def cmd_study_run(args) -> int:
    from .executors import make_executor
    from .study import run_study

    executor = make_executor(args.executor, args.scheduler, args.workers)
    out = Path(args.out)
    _check_out(out)
    _check_device(args.device)
    existed = out.exists()
    start = time.perf_counter()
    try:
        res = run_study(
            args.folder,
            out,
            smoke=args.smoke,
            resume=args.resume,
            device=args.device,
            progress=not args.quiet,
            executor=executor,
        )
    except BayesneuronError:
        if not existed:
            _remove_if_empty(out)  # a study that failed before writing anything leaves nothing
        raise
    done = [f"{len(res['fits'])} MAP fits"] if res["fits"] else []
    done += [f"{len(res['designs'])} posteriors"] if res["designs"] else []
    print(f"{' and '.join(done)} in {time.perf_counter() - start:.1f} s; results in {out}/")
    return 0


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but empty folders (never a file)."""
    if not folder.is_dir() or any(q.is_file() or q.is_symlink() for q in folder.rglob("*")):
        return
    for q in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        q.rmdir()
    folder.rmdir()


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: what was wrong, and where the help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="bayesneuron",
        description="Bayesian inference on differentiable multicompartment neuron models.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "simulate",
        help="simulate a ready-made cell and protocol; write traces, a figure and provenance",
        description="Simulate a ready-made cell: paper_toy (the Jones & Kording 6-compartment "
        "chain on its 100-trace random protocol, ground-truth conductances), hh_tree (a small "
        "branched HH cell, step currents 0-0.5 nA at the soma), l23 (the human L2/3 cell).",
    )
    s.add_argument("--preset", choices=PRESETS, default="paper_toy", help="which problem")
    s.add_argument(
        "--solver",
        choices=SOLVERS,
        default="cn",
        help="cn: Crank-Nicolson (default), be: NEURON's backward Euler, dopri5/rk4: torchdiffeq",
    )
    s.add_argument("--dt", type=float, default=None, help="step in ms (default: preset's)")
    s.add_argument("--traces", type=int, default=100, help="number of stimulus traces")
    s.add_argument("--seed", type=int, default=20230619, help="random seed")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--float32", action="store_true", help="single precision")
    s.add_argument("--out", required=True, help="results folder (created)")
    s.set_defaults(func=cmd_simulate)

    st = sub.add_parser("study", help="run a study folder (config.toml) end to end")
    st_sub = st.add_subparsers(dest="study_command", required=True)
    r = st_sub.add_parser(
        "run",
        help="run every fit of a study and write tables, figures and provenance",
        description="Run a study: FOLDER/config.toml says which cell, data, designs and fits; "
        "results (table.csv, figures, fits.json, config.json, environment.json) go to --out. "
        "Example: bayesneuron study run studies/paper_toy_map --out results/map --smoke",
    )
    r.add_argument("folder", help="study folder holding config.toml")
    r.add_argument("--out", required=True, help="results folder (created)")
    r.add_argument("--smoke", action="store_true", help="tiny version: seconds, for a first look")
    r.add_argument("--resume", action="store_true", help="continue from the runs' checkpoints")
    r.add_argument("--device", default="cpu", help="cpu or cuda")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.add_argument(
        "--executor",
        choices=("local", "dask"),
        default="local",
        help="where the [[infer]] designs run: this process (local) or a Dask cluster",
    )
    r.add_argument(
        "--scheduler",
        default=None,
        help="Dask scheduler address (e.g. tcp://host:8786, from dask-jobqueue on Slurm); "
        "default with --executor dask: a LocalCluster on this machine",
    )
    r.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    r.set_defaults(func=cmd_study_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BayesneuronError as e:
        print(f"bayesneuron: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a path the user gave cannot be read or written
        where = f": {e.filename}" if e.filename else ""
        print(f"bayesneuron: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
