"""The ``bayesneuron`` command line.

``bayesneuron simulate --preset paper_toy --out results/demo`` simulates a ready-made cell and
protocol and writes the traces (``traces.npz``), a figure (``traces.png``), the resolved
configuration (``config.json``) and an environment manifest (``environment.json``).

On the paper's toy cell with synthetic data (its ground truth, its random currents, Gaussian
recording noise), one design at a time or many:

* ``bayesneuron fit --design "[0,-1]|all" --out DIR`` — a MAP fit (``fit.json``, ``table.csv``,
  figures);
* ``bayesneuron infer --design 'all|all' --method svi --out DIR`` — one posterior
  (``posterior.nc``, ``summary.csv``, ``designs.csv``, figures, ``report.html``);
* ``bayesneuron compare --designs paper9 --method laplace --out DIR`` — posteriors of many
  designs and their ranking (``designs.csv``, ``ranking.csv``, heatmaps, ``idata/``,
  ``report.html``), here or on a Dask cluster;
* ``bayesneuron report DIR`` — ``report.html`` of a results folder, rebuilt;
* ``bayesneuron study run FOLDER --out DIR`` — a study folder's ``config.toml`` end to end.

Every command writes ``config.json`` (the resolved arguments) and ``environment.json``; a
command that fails on bad input says why in one line, exits with status 1 (2 for a malformed
command line) and leaves no results folder behind.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from bayesneuron.errors import BayesneuronError
from bayesneuron.studies.output import environment, json_default, safe_label, write_csv

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
    from bayesneuron.simulation.api import check_device

    check_device(name)


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
    from bayesneuron.studies.executors import make_executor
    from bayesneuron.studies.run import run_study

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


# =========================================================================== fit, infer, compare
DEFAULT_SEED = 20230619
DEFAULT_DESIGNS = "all|all,[0,-1]|all,all|[0]"


def _say(args, message: str) -> None:
    """Progress on stderr (stdout keeps the one-line result), unless ``--quiet``."""
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _backend(args) -> str:
    """``--backend``: ``auto`` (the fused C kernel where it applies), ``fused`` or ``torch``;
    ``numba`` is a deprecated alias of ``fused``."""
    backend = "fused" if args.backend == "numba" else args.backend
    if backend == "fused" and torch.device(args.device).type != "cpu":
        raise BayesneuronError(
            f"--backend fused runs on the CPU only; use --backend torch (or auto) with "
            f"--device {args.device}"
        )
    return backend


def _check_args(args) -> None:
    """The numbers every command shares, checked before any work (one-line errors)."""
    if args.traces < 1:
        raise BayesneuronError(f"--traces {args.traces}: need at least 1 stimulus trace")
    if not (math.isfinite(args.noise) and args.noise >= 0):
        raise BayesneuronError(f"--noise {args.noise}: the recording noise must be ≥ 0 mV")
    if not (math.isfinite(args.sigma) and args.sigma > 0):
        raise BayesneuronError(f"--sigma {args.sigma}: the model's noise sd must be > 0 mV")
    if args.dt is not None and not (math.isfinite(args.dt) and args.dt > 0):
        raise BayesneuronError(f"--dt {args.dt}: the solver step must be > 0 ms (e.g. 0.004)")
    for opt in ("starts", "steps", "particles", "samples", "map_starts", "map_steps", "chains"):
        x = getattr(args, opt, None)
        if x is not None and x < 1:
            raise BayesneuronError(f"--{opt.replace('_', '-')} {x}: must be ≥ 1")
    if getattr(args, "warmup", 0) < 0:
        raise BayesneuronError(f"--warmup {args.warmup}: must be ≥ 0")


def _design(label: str):
    """A design label checked against the paper's 6-compartment cell."""
    from bayesneuron.protocol.design import Design
    from bayesneuron.reference.paper import paper_toy_cell

    design = Design.from_label(label)
    morph = paper_toy_cell().morphology
    design.stim_index(morph), design.rec_index(morph)
    return design


def _split_labels(text: str) -> list[str]:
    """``"all|all,[0,-1]|all"`` → ``["all|all", "[0,-1]|all"]``: commas inside brackets stay."""
    parts, depth, cur = [], 0, ""
    for c in text:
        depth += (c == "[") - (c == "]")
        if c == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += c
    parts.append(cur.strip())
    if not all(parts):
        raise BayesneuronError(
            f"--designs {text!r}: an empty label; write e.g. 'all|all,[0,-1]|all' (no spaces "
            "needed), 'paper9' or 'grid25'"
        )
    return parts


@contextmanager
def _staged(out: Path):
    """A hidden folder next to ``out`` to write results into; its files move into ``out`` only
    once all are written, so a failure leaves no half-written results folder."""
    new = next((q for q in reversed(out.parents) if not q.exists()), None)  # made here
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    ok = False
    try:
        yield tmp
        out.mkdir(exist_ok=True)
        for q in sorted(tmp.iterdir()):
            dest = out / q.name
            if q.is_dir() and dest.is_dir():
                shutil.rmtree(dest)
            q.replace(dest)
        ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok and new is not None:
            _remove_if_empty(new)


def _write_json(path: Path, obj) -> None:

    path.write_text(json.dumps(obj, indent=2, default=json_default))


def _config(args, **extra) -> dict:
    config = {k: v for k, v in vars(args).items() if k != "func"}
    return {**config, **extra}


def cmd_fit(args) -> int:
    import matplotlib.pyplot as plt

    from bayesneuron import reports
    from bayesneuron.inference.fit import fit_map, start_points
    from bayesneuron.reference.presets import get_preset
    from bayesneuron.studies.config import Study, build_experiment

    _check_args(args)
    out = Path(args.out)
    _check_out(out)
    _check_device(args.device)
    design = _design(args.design)
    backend = _backend(args)
    study = Study(
        folder=Path("."),
        name="fit",
        question="",
        seed=args.seed,
        n_traces=args.traces,
        noise_sigma=args.noise,
        sigma=args.sigma,
        priors=args.priors,
        dt=args.dt or get_preset(args.preset).dt,
        backend=backend,
        preset=args.preset,
    )
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    _say(args, f"[fit] {design.label}: simulating {args.traces} synthetic traces …")
    model, v, truth = build_experiment(study, design, args.priors, args.device)
    n_starts = args.starts or (4 if args.protocol == "bayesneuron" else 1)
    init, horizons = None, None
    if args.init == "truth":  # start 0 at the ground truth, the others as usual
        init = {k: x.cpu().numpy() for k, x in start_points(model, n_starts, args.seed).items()}
        for k in model.free:
            init[k][0] = truth[k]
        horizons = () if args.protocol == "bayesneuron" else None  # no continuation needed
    _say(args, f"[fit] {design.label}: {args.protocol} protocol, {n_starts} start(s) …")
    fit = fit_map(
        model,
        v,
        protocol=args.protocol,
        truth=truth,
        n_starts=n_starts,
        max_steps=args.steps,
        seed=args.seed,
        init=init,
        horizons=horizons,
        progress=not args.quiet,
    )
    frac = len(model.rec_index) / model.n_comp  # the paper's loss: MSE over recorded · |rec|/n
    stim, rec = design.label.split("|")
    row = {
        "stim": stim,
        "rec": rec,
        "protocol": args.protocol,
        "L0": fit.history["mse"][0, 0] * frac,
        "L_final": fit.history["mse"][-1, fit.best] * frac,
        "gte_na_final": fit.history["gte_g_na"][-1, fit.best],
        "gte_k_final": fit.history["gte_g_k"][-1, fit.best],
        "steps": fit.steps,
        "wall_s": round(fit.wall_s, 2),
        "run": "fit",
        "priors": args.priors,
        "noise_sigma": args.noise,
        "horizons": " ".join(map(str, fit.settings.get("horizons", []))),
        "dt": study.dt,
        "n_starts": len(fit.objective),
        "converged": int(fit.converged.sum()),
        "spread_na_max": float(fit.spread()["g_na"].max()),
        "spread_k_max": float(fit.spread()["g_k"].max()),
        "init": args.init,
        "n_traces": args.traces,
        "sigma_mv": args.sigma,
    }
    row = {k: (x.item() if isinstance(x, (np.floating, np.integer)) else x) for k, x in row.items()}
    wall = time.perf_counter() - start
    with _staged(out) as tmp:
        _write_json(tmp / "fit.json", fit.to_dict())
        write_csv(tmp / "table.csv", [row])
        np.savez_compressed(tmp / "history.npz", **fit.history)
        fig = reports.plot_loss_and_gte([fit], title=f"{design.label}: {args.protocol} protocol")
        fig.savefig(tmp / "loss_gte.png", dpi=110)
        fig = reports.plot_trajectories(fit)
        fig.savefig(tmp / "trajectories.png", dpi=100)
        plt.close("all")
        config = _config(
            args, backend=backend, n_starts=n_starts, solver=repr(model.solver), wall_s=wall
        )
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "environment.json", environment())
    gte = fit.gte()
    print(
        f"MAP fit of {design.label}: ground-truth error g_na {gte['g_na']:.3g}, "
        f"g_k {gte['g_k']:.3g} mS/cm² after {fit.steps} steps in {wall:.1f} s; results in {out}/"
    )
    return 0


def _study_from_args(args, designs, name: str, question: str):
    from bayesneuron.studies.posteriors import make_study

    return make_study(
        designs,
        method=args.method,
        guide=args.guide,
        name=name,
        question=question,
        seed=args.seed,
        n_traces=args.traces,
        noise_sigma=args.noise,
        sigma=args.sigma,
        priors=args.priors,
        dt=args.dt,
        preset=args.preset,
        backend=_backend(args),
        num_particles=args.particles,
        max_steps=args.steps,
        num_samples=args.samples,
        map_starts=args.map_starts,
        map_steps=args.map_steps,
        map_init=args.map_init,
        warmup_steps=getattr(args, "warmup", 100),
        num_chains=getattr(args, "chains", 1),
    )


def _posterior_config(args, study) -> dict:
    inf = study.infers[0]
    return _config(
        args,
        name=study.name,
        question=study.question,
        backend=study.backend,
        designs=[d.label for d in inf.designs],
        infer={**inf.__dict__, "designs": [d.label for d in inf.designs]},
    )


def cmd_infer(args) -> int:
    import matplotlib.pyplot as plt

    from bayesneuron import reports
    from bayesneuron.studies.posteriors import infer_design, rank_designs, rebuild_report

    _check_args(args)
    out = Path(args.out)
    _check_out(out)
    _check_device(args.device)
    design = _design(args.design)
    study = _study_from_args(
        args,
        [design],
        name="infer",
        question=f"How well do {args.traces} noisy traces under the design {design.label} "
        "(stimulated | recorded compartments) determine the 12 Na/K conductances?",
    )
    inf = study.infers[0]
    what = f"{args.method} ({args.guide} guide)" if args.method == "svi" else args.method
    _say(args, f"[infer] {design.label}: {args.traces} traces; MAP, Laplace, then {what} …")
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    res = infer_design(study, inf, 0, args.device, progress=not args.quiet)
    wall = time.perf_counter() - start
    row, idata = res["row"], res["idata"]
    with _staged(out) as tmp:
        _say(args, "[infer] writing the InferenceData, tables, figures and report …")
        reports.save_inference_data(idata, tmp / "posterior.nc")
        reports.summary(idata).to_csv(tmp / "summary.csv", index_label="parameter")
        write_csv(tmp / "designs.csv", [row])
        write_csv(tmp / "parameters.csv", res["parameters"])
        write_csv(tmp / "ranking.csv", rank_designs([row]))
        elbos = {}
        if res["elbo"] is not None:
            elbos[(inf.name, design.label)] = res["elbo"]
            fig, ax = plt.subplots(figsize=(5, 2.6))
            ax.plot(res["elbo"])
            ax.set(xlabel="SVI step", ylabel="ELBO (nats)", title=design.label)
            fig.tight_layout()
            fig.savefig(tmp / "elbo.png", dpi=110)
            np.savetxt(tmp / "elbo.csv", np.asarray(res["elbo"]), header="elbo", comments="")
        plt.close("all")
        _write_json(tmp / "config.json", _posterior_config(args, study) | {"wall_s": wall})
        _write_json(tmp / "environment.json", environment())
        rebuild_report(tmp, tmp / "report.html", elbos=elbos, figures=True)
        plt.close("all")
        pre, safe = f"{inf.name}_", safe_label(design.label)  # the report's figures, named plainly
        for old, new in (
            (f"{pre}{safe}_vs.png", "posterior_vs_prior.png"),
            (f"{pre}{safe}_predictive.png", "predictive.png"),
            (f"{pre}forest_g_na.png", "forest_g_na.png"),
            (f"{pre}forest_g_k.png", "forest_g_k.png"),
        ):
            if (tmp / old).is_file():
                (tmp / old).replace(tmp / new)
    print(
        f"{what} posterior of {design.label}: contraction mean {row['mean_contraction']:.3f}, "
        f"min {row['min_contraction']:.3f}, max |z| {row['max_abs_z']:.2f} in {wall:.1f} s; "
        f"results in {out}/"
    )
    return 0


def cmd_compare(args) -> int:
    from bayesneuron.studies.executors import make_executor
    from bayesneuron.studies.posteriors import rank_designs, run_infers

    _check_args(args)
    executor = make_executor(args.executor, args.scheduler, args.workers)
    out = Path(args.out)
    _check_out(out)
    _check_device(args.device)
    spec = args.designs.strip()
    designs = spec if "|" not in spec else [_design(s) for s in _split_labels(spec)]
    study = _study_from_args(
        args,
        designs,
        name="compare",
        question=f"Which stimulation/recording design determines the 12 Na/K conductances of "
        f"the {args.preset} cell best, from {args.traces} noisy traces?",
    )
    existed = out.exists()
    start = time.perf_counter()
    try:
        rows = run_infers(
            study, out, device=args.device, progress=not args.quiet, executor=executor
        )
    except BayesneuronError:
        if not existed:
            _remove_if_empty(out)  # failed before writing anything: leave nothing
        raise
    wall = time.perf_counter() - start
    _write_json(out / "config.json", _posterior_config(args, study) | {"wall_s": wall})
    _write_json(out / "environment.json", environment())
    ranking = rank_designs(rows)
    best = {
        what: next(r["design"] for r in ranking if r[f"rank_{col}"] == 1)
        for col, what in (("logdet_fisher", "log-det Fisher"), ("mean_contraction", "contraction"))
    }
    print(
        f"{len(rows)} posteriors ({args.method}) in {wall:.1f} s; most informative design by "
        + " and by ".join(f"{what}: {lab}" for what, lab in best.items())
        + f"; ranking.csv and report.html in {out}/"
    )
    return 0


def cmd_report(args) -> int:
    from bayesneuron.studies.posteriors import rebuild_report

    results = Path(args.results)
    if args.out is not None:
        _check_out(Path(args.out).parent)
        if Path(args.out).is_dir():
            raise BayesneuronError(f"--out {args.out} is a folder; give the report's file name")
    _say(args, f"[report] rebuilding from {results}/ …")
    path = rebuild_report(results, args.out)
    print(f"report written to {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: what was wrong, and where the help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Help(argparse.HelpFormatter):
    """Wraps each paragraph of a description, keeps indented (example) lines as they are, and
    appends each option's default to its help."""

    def _fill_text(self, text, width, indent):
        paras = []
        for para in text.split("\n\n"):
            lines = para.splitlines()
            if any(line.startswith("  ") for line in lines):
                paras.append("\n".join(indent + line for line in lines))
            else:
                paras.append(
                    textwrap.fill(
                        " ".join(para.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                    )
                )
        return "\n\n".join(paras)

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and action.option_strings
            and default is not None
            and default is not False
            and default is not argparse.SUPPRESS
        ):
            text += " (default: %(default)s)"
        return text


_SYNTHETIC = (
    "The data are synthetic: the paper's 6-compartment Na/K chain (Jones & Kording 2024) with its "
    "ground-truth conductances, driven by its random step currents at the stimulated "
    "compartments, recorded at the recorded ones with Gaussian noise (--noise). A design is "
    "'STIM|REC', each side 'all' or a list of compartments 0-5 (negative counts from the end): "
    "'all|all', '[0,-1]|all' (stimulate both ends, record everywhere), 'all|[0]' (record the "
    "soma only). --preset hh_tree swaps in a branched cell with NEURON's hh channels "
    "(compartments 0 soma, 1 dend[0], 2-5 the tips; currents in nA by area; 20 ms traces)."
)


def _add_common(p, out_help: str) -> None:
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (data and fits)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index>")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")


def _add_data(p, priors=("paper", "lognormal", "none")) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--preset",
        choices=("paper_toy", "hh_tree"),
        default="paper_toy",
        help="paper_toy: the paper's 6-compartment chain; hh_tree: a branched cell with NEURON's "
        "hh (compartments 0 soma, 1-5 dendrites)",
    )
    g.add_argument("--traces", type=int, default=20, help="number of stimulus traces")
    g.add_argument("--noise", type=float, default=1.0, help="recording noise sd added (mV)")
    g.add_argument("--sigma", type=float, default=1.0, help="noise sd the model assumes (mV)")
    g.add_argument(
        "--priors",
        choices=priors,
        default="paper",
        help="paper: base x Uniform(0.7, 1.3); lognormal: LogNormal(log base, 0.5)"
        + ("; none: no prior (MAP = maximum likelihood)" if "none" in priors else ""),
    )
    g.add_argument(
        "--dt",
        type=float,
        default=None,
        help="Crank-Nicolson step in ms (default: the preset's, 0.004 paper_toy, 0.025 hh_tree)",
    )
    g.add_argument(
        "--backend",
        choices=("auto", "fused", "torch", "numba"),
        default="auto",
        help="simulator kernel; auto: the fused C kernel where it applies (CPU, float64), "
        "torch elsewhere; numba: deprecated alias of fused",
    )


def _add_posterior(p, methods, method: str) -> None:
    g = p.add_argument_group("posterior")
    g.add_argument(
        "--method",
        choices=methods,
        default=method,
        help="svi: variational (with --guide); laplace: Gaussian at the MAP (fastest)"
        + (
            "; nuts: Hamiltonian Monte Carlo, the gold standard (minutes)"
            if "nuts" in methods
            else ""
        ),
    )
    g.add_argument(
        "--guide",
        choices=("mvn", "normal", "lowrank", "iaf"),
        default="mvn",
        help="SVI guide: full-covariance normal, diagonal, low-rank, or inverse autoregressive flow",
    )
    g.add_argument("--particles", type=int, default=4, help="SVI: ELBO particles per step")
    g.add_argument("--steps", type=int, default=300, help="SVI: largest number of steps")
    g.add_argument("--samples", type=int, default=200, help="posterior draws kept")
    g.add_argument("--map-starts", type=int, default=1, help="MAP starts before the posterior")
    g.add_argument("--map-steps", type=int, default=20, help="MAP Levenberg-Marquardt steps")
    g.add_argument(
        "--map-init",
        choices=("truth", "starts"),
        default="truth",
        help="where the MAP starts: truth = at the ground truth, as the studies do for "
        "synthetic data (finds the posterior mode next to it); starts = base values and prior draws",
    )
    if "nuts" in methods:
        g.add_argument("--warmup", type=int, default=100, help="NUTS warm-up steps")
        g.add_argument("--chains", type=int, default=1, help="NUTS chains (run one after another)")


def _add_commands(sub) -> None:
    f = sub.add_parser(
        "fit",
        help="MAP fit of the paper's cell under one design (synthetic data)",
        formatter_class=_Help,
        description="Fit the 12 Na/K conductances of the paper's toy cell to synthetic data by "
        "maximum a posteriori (MAP): bayesneuron's Levenberg-Marquardt protocol (multi-start, "
        "multiple-shooting continuation) or the paper's own (Adam, lr 0.5, 200 steps, its "
        "loss).\n\n"
        + _SYNTHETIC
        + "\n\nWrites fit.json (optimum, every start, settings), table.csv (one row, the study "
        "table's columns: loss, ground-truth errors, steps), history.npz, loss_gte.png, "
        "trajectories.png, config.json and environment.json. The defaults (20 traces, 4 "
        "starts) take about half a minute on 2 cores.\n\n"
        "Example:\n"
        "  bayesneuron fit --design '[0,-1]|all' --out results/fit\n"
        "  bayesneuron fit --design 'all|[0]' --protocol paper --out results/fit_paper",
    )
    f.add_argument("--design", default="all|all", help="design label 'STIM|REC'")
    f.add_argument(
        "--protocol",
        choices=("bayesneuron", "paper"),
        default="bayesneuron",
        help="bayesneuron: Levenberg-Marquardt MAP; paper: Adam on the paper's loss",
    )
    f.add_argument(
        "--starts", type=int, default=None, help="starts (default: 4 bayesneuron, 1 paper)"
    )
    f.add_argument(
        "--steps", type=int, default=None, help="step limit (default: 50 per stage, 200 paper)"
    )
    f.add_argument(
        "--init",
        choices=("starts", "truth"),
        default="starts",
        help="starts: the cell's base values, then prior draws; truth: the first start at the "
        "ground truth (no continuation)",
    )
    _add_data(f)
    _add_common(f, "results folder (created)")
    f.set_defaults(func=cmd_fit)

    i = sub.add_parser(
        "infer",
        help="posterior of the paper's cell under one design (synthetic data)",
        formatter_class=_Help,
        description="The posterior of the 12 Na/K conductances of the paper's toy cell under "
        "one design: a MAP fit (started at the ground truth by default, as the studies do for "
        "synthetic data), the Laplace approximation there, then SVI, the Laplace draws or NUTS; "
        "identifiability metrics (contraction = 1 - Var_post/Var_prior, z of the truth, 90 % "
        "coverage) and the log-det Fisher information.\n\n"
        + _SYNTHETIC
        + "\n\nWrites posterior.nc (ArviZ InferenceData: posterior, prior, predictive, "
        "log-likelihood, data, truth), summary.csv (per parameter: mean, sd, truth, "
        "contraction), designs.csv (the design's row), parameters.csv, ranking.csv, "
        "posterior_vs_prior.png, predictive.png, forest_g_na.png, forest_g_k.png, "
        "elbo.png/elbo.csv (SVI), report.html, "
        "config.json and environment.json. The defaults (20 traces, SVI of at most 300 steps "
        "with 4 particles) take about 40 s on 2 cores; --method laplace about 15 s.\n\n"
        "Example:\n"
        "  bayesneuron infer --design '[0]|all' --method svi --out results/infer\n"
        "  bayesneuron infer --design 'all|all' --method laplace --traces 50 --out results/lap",
    )
    i.add_argument("--design", default="all|all", help="design label 'STIM|REC'")
    _add_posterior(i, ("svi", "laplace", "nuts"), "svi")
    _add_data(i, priors=("paper", "lognormal"))
    _add_common(i, "results folder (created)")
    i.set_defaults(func=cmd_infer)

    c = sub.add_parser(
        "compare",
        help="posteriors under many designs, ranked: which experiment to run",
        formatter_class=_Help,
        description="Compare stimulation/recording designs: the posterior of the paper's cell "
        "under each (as 'bayesneuron infer' does for one), then a ranking by log-det Fisher "
        "information, worst relative posterior sd and mean contraction. --designs is 'paper9' "
        "(the paper's 9 designs), 'grid25' (every stim x rec pair of [0], [0,1], [0,-1], "
        "[0,1,-1], all) or a comma-separated list of labels.\n\n"
        + _SYNTHETIC
        + "\n\nWrites designs.csv (one row per design), parameters.csv, ranking.csv, "
        "idata/posterior/<design>.nc, contraction heatmaps, forest plots, report.html, "
        "config.json and environment.json; designs.csv grows as designs finish. Independent "
        "designs can run on a Dask cluster (--executor dask). The defaults (3 designs, "
        "Laplace, 20 traces) take about 45 s on 2 cores, paper9 about 2 min; SVI adds about "
        "30 s per design.\n\n"
        "Example:\n"
        "  bayesneuron compare --designs 'all|all,[0,-1]|all,all|[0]' --out results/cmp\n"
        "  bayesneuron compare --designs grid25 --method svi --executor dask --out results/grid",
    )
    c.add_argument(
        "--designs",
        default=DEFAULT_DESIGNS,
        help="grid (every stim x rec pair of the preset's site sets), paper9, grid25 "
        "(paper_toy) or labels separated by commas",
    )
    _add_posterior(c, ("svi", "laplace"), "laplace")
    _add_data(c, priors=("paper", "lognormal"))
    _add_common(c, "results folder (created; an existing one is added to)")
    _add_executor(c, "the designs")
    c.set_defaults(func=cmd_compare)

    r = sub.add_parser(
        "report",
        help="rebuild report.html of a results folder",
        formatter_class=_Help,
        description="Write the self-contained HTML report of a results folder again — one "
        "made by 'bayesneuron compare', 'bayesneuron infer' or 'bayesneuron study run' with "
        "[[infer]] runs — from its designs.csv, ranking.csv and InferenceData files (idata/ "
        "or posterior.nc): after deleting rows of designs.csv (the ranking is recomputed "
        "when it no longer matches), to add a folder's report to a notebook or after "
        "upgrading bayesneuron. Only the report file is written. SVI's ELBO curves are kept "
        "by 'bayesneuron infer' only (elbo.csv); reports of other folders come back without "
        "them.\n\n"
        "Example:\n"
        "  bayesneuron report results/cmp\n"
        "  bayesneuron report results/cmp --out /tmp/cmp_report.html",
    )
    r.add_argument("results", help="results folder holding designs.csv")
    r.add_argument("--out", default=None, help="report file (default: RESULTS/report.html)")
    r.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    r.set_defaults(func=cmd_report)


def _add_executor(parser, what: str) -> None:
    """``--executor``, ``--scheduler``, ``--workers`` (see :mod:`bayesneuron.executors`)."""
    parser.add_argument(
        "--executor",
        choices=("local", "dask"),
        default="local",
        help=f"where {what} run: this process (local) or a Dask cluster",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        help="Dask scheduler address (e.g. tcp://host:8786, from dask-jobqueue on Slurm); "
        "default with --executor dask: a LocalCluster on this machine",
    )
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="bayesneuron",
        description="Bayesian inference on differentiable multicompartment neuron models.",
        formatter_class=_Help,
        epilog="Each command explains itself: bayesneuron COMMAND --help. A first look (one "
        "posterior in under a minute, the paper's 9 designs in about two, on 2 cores):\n\n"
        "  bayesneuron infer --design '[0]|all' --out results/infer\n"
        "  bayesneuron compare --designs paper9 --method laplace --out results/paper9",
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
    _add_executor(r, "the [[infer]] designs")
    r.set_defaults(func=cmd_study_run)
    _add_commands(sub)
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
