"""``bayesneuron simulate``, ``bayesneuron study run`` and ``bayesneuron report``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bayesneuron.cli._common import (
    check_device,
    check_out,
    config,
    remove_if_empty,
    say,
    write_provenance,
)
from bayesneuron.errors import BayesneuronError

__all__ = ["PRESETS", "SOLVERS", "cmd_report", "cmd_simulate", "cmd_study_run"]

PRESETS = ("paper_toy", "hh_tree", "l23")
SOLVERS = ("cn", "be", "dopri5", "rk4")


def _preset(name: str, n_traces: int, seed: int):
    """(cell, params, stimulus, t_eval, default dt) of a ready-made problem."""
    from bayesneuron.protocol.stimulus import step_current
    from bayesneuron.reference.cells import hh_tree_cell, l23_cell

    if name == "paper_toy":
        from bayesneuron.reference.paper import (
            paper_currents,
            paper_ground_truth,
            paper_time_grid,
            paper_toy_cell,
        )

        stim = paper_currents(seed=seed, n_traces=n_traces)
        return paper_toy_cell(), paper_ground_truth(seed), stim, paper_time_grid(), 0.0015
    cell = hh_tree_cell() if name == "hh_tree" else l23_cell()
    amps = np.linspace(0.0, 0.5 if name == "hh_tree" else 1.0, n_traces)
    stim = step_current(
        amps, site=0, n_comp=cell.n_comp, delay=1.0, duration=40.0, t_stop=50.0, dt=0.025, unit="nA"
    )
    return cell, None, stim, np.arange(2001) * 0.025, 0.025


def _solver(name: str, dt: float):
    from bayesneuron.simulation.solvers import BackwardEuler, CrankNicolson, Torchdiffeq

    return {
        "cn": lambda: CrankNicolson(dt=dt),
        "be": lambda: BackwardEuler(dt=dt),
        "dopri5": lambda: Torchdiffeq("dopri5", rtol=1e-8, atol=1e-8),
        "rk4": lambda: Torchdiffeq("rk4", step_size=dt),
    }[name]()


def cmd_simulate(args) -> int:

    from bayesneuron.reports import plot_traces
    from bayesneuron.simulation.api import simulate

    if args.traces < 1:
        raise BayesneuronError(f"--traces {args.traces}: need at least 1 stimulus trace")
    out = Path(args.out)
    check_out(out)
    check_device(args.device)
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
    cfg = config(args, solver=repr(solver), n_steps=tr.n_steps, wall_s=wall)
    write_provenance(out, cfg)
    print(
        f"simulated {tuple(tr.v.shape)} [trace, comp, time] in {wall:.2f} s "
        f"({tr.n_steps or 'adaptive'} steps); results in {out}/"
    )
    return 0


def check_study_out(folder: Path, out: Path) -> None:
    """Refuse an ``--out`` that is the study folder or inside it: the results would mix with
    (and ``config.json`` sit beside) the study's own ``config.toml``."""
    if not folder.is_dir():
        return
    f, o = folder.resolve(), out.resolve()
    if o == f or f in o.parents:
        where = "is the study folder" if o == f else f"is inside the study folder {folder}"
        raise BayesneuronError(
            f"--out {out} {where}; write the results elsewhere, e.g. --out results/{f.name}"
        )


def cmd_study_run(args) -> int:
    from bayesneuron.studies.executors import make_executor
    from bayesneuron.studies.run import run_study

    out = Path(args.out)
    check_study_out(Path(args.folder), out)
    executor = make_executor(args.executor, args.scheduler, args.workers)
    check_out(out)
    check_device(args.device)
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
            remove_if_empty(out)  # a study that failed before writing anything leaves nothing
        raise
    done = [f"{len(res['fits'])} MAP fits"] if res["fits"] else []
    done += [f"{len(res['designs'])} posteriors"] if res["designs"] else []
    done += [f"predictions of {len(res['predictive'])} sweeps"] if res.get("predictive") else []
    print(f"{' and '.join(done)} in {time.perf_counter() - start:.1f} s; results in {out}/")
    return 0


def cmd_report(args) -> int:
    from bayesneuron.studies.posteriors import rebuild_report

    results = Path(args.results)
    if args.out is not None:
        check_out(Path(args.out).parent)
        if Path(args.out).is_dir():
            raise BayesneuronError(f"--out {args.out} is a folder; give the report's file name")
    say(args, f"[report] rebuilding from {results}/ …")
    path = rebuild_report(results, args.out)
    print(f"report written to {path}")
    return 0
