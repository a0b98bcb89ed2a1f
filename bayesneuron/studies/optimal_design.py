"""Optimal stimulus design per stim|rec design of a preset's cell (``bayesneuron design
optimize``): for each design, the stimulus that maximises a design criterion under the
preset's constraints (trace count, sweep grid, amplitude bounds, stimulated sites), judged
against the preset's own random protocol.

Per design (``n_traces`` traces, σ = 1 mV, the prior base × U(0.7, 1.3)), the criterion
(nats for ``bayes_d_opt``) of

* ``crit_paper`` — the preset's protocol currents (``[experiment] seed``; the paper's
  currents on paper_toy) at the stimulated sites;
* ``crit_steps`` — fresh draws of the same random protocol (seeds ``seed + 1 …``), the mean
  over ``step_draws`` draws (``crit_steps_sd`` their sd);
* ``crit_optimised`` — the stimulus of :func:`~bayesneuron.optimal_design.optimize_stimulus`
  (Adam on the fused kernel at ``dt_opt``, the criterion averaged over ``theta_opt`` prior
  draws, from the starts ``init``; ``best_start`` names the winner, ``best_step`` the
  optimiser steps it had taken: 0 where the start itself was best);

all judged on ``theta_eval`` *held-out* prior draws (never the optimiser's, never the truth)
with the fused kernel's exact sensitivities at ``dt_eval``. ``*_truth`` columns: the same at
the preset's ground truth; ``contraction_*``: mean posterior contraction (Gaussian
surrogate); ``*_opt5``: the best 5 optimised traces (greedy) against all the protocol's;
``gain_se_nats_per_trace``: the standard error of the gain, from the paired per-draw
differences. The best of the starts is chosen on the optimiser's draws, or with
``theta_select`` on as many further draws that neither the optimiser nor the judgement sees.

Example:
    >>> study = load_design_study("studies/optimal_design/config.toml", designs="all|all")
    >>> rows = run_design_study(study, Path("results/od"))
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import active_children, get_context
from pathlib import Path

import numpy as np
import torch

from bayesneuron.inference.criteria import posterior_contraction, prior_geometry
from bayesneuron.inference.space import ParameterSpace
from bayesneuron.io import write_stimulus_nwb
from bayesneuron.optimal_design import (
    FAMILIES,
    OptimizeConfig,
    StimulusFamily,
    criterion_values,
    exact_fisher,
    optimize_stimulus,
    problem_from_model,
    select_traces,
)
from bayesneuron.protocol.design import Design, row_label
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.reference.presets import get_preset
from bayesneuron.simulation.solvers import CrankNicolson
from bayesneuron.studies.config import StudyError
from bayesneuron.studies.design_config import DesignStudy
from bayesneuron.studies.design_inputs import cell_draws, starts
from bayesneuron.studies.output import environment, write_csv, write_json

__all__ = [
    "CSV",
    "chosen_sweeps",
    "criteria",
    "design_problems",
    "design_tag",
    "make_family",
    "protocol_currents",
    "refine_on_contraction",
    "run_design",
    "run_design_study",
    "selection_problem",
    "site_scale",
]

CSV = "optimal_design.csv"
_SHOWN = ("crit_paper", "crit_steps", "crit_optimised")  # in the line per finished design


def design_tag(label: str) -> str:
    """A design label as a file-name part: ``"[0,1,-1]|all"`` → ``"01-1_all"``."""
    return label.replace("|", "_").replace(",", "").replace("[", "").replace("]", "")


def protocol_currents(preset: str, cell, seed: int, n_traces: int) -> Stimulus:
    """The preset's random protocol, dense ``[trace, comp, bins]``: the paper's currents
    (µA/cm²) on paper_toy, :func:`~bayesneuron.reference.presets.hh_tree_currents` (nA) on
    hh_tree."""
    if preset == "paper_toy":
        from bayesneuron.reference.paper import paper_currents

        return paper_currents(seed, n_traces=n_traces, n_comp=cell.n_comp)
    if preset == "hh_tree":
        from bayesneuron.reference.presets import hh_tree_currents

        return hh_tree_currents(cell, seed, n_traces=n_traces)
    raise StudyError(f"preset {preset!r} has no random protocol here; use paper_toy or hh_tree")


def site_scale(cell, sites, unit: str) -> np.ndarray:
    """Per site, the factor from µA/cm² to the stimulus unit: 1, or area (cm²) · 1e3 for nA."""
    if unit != "nA":
        return np.ones(len(sites))
    return np.asarray(cell.morphology.area, dtype=np.float64)[list(sites)] * 1e3


def make_family(study: DesignStudy, model, sites=None) -> StimulusFamily:
    """The study's stimulus family on ``model``'s stimulated sites (or the compartment indices
    ``sites``) and protocol grid; bounds ``study.bounds`` µA/cm² (and ``max_charge`` nC/cm²),
    per site in nA (pC) on a geometric cell."""
    proto = model.stimulus
    sites = tuple(model.stim_index) if sites is None else tuple(int(s) for s in sites)
    lo, hi, q = *study.bounds, study.max_charge
    if proto.unit == "nA":  # the same density on every site: nA bounds (and pC) by area
        scale = site_scale(model.cell, sites, proto.unit)
        lo, hi = (tuple(float(b * s) for s in scale) for b in study.bounds)
        q = None if q is None else tuple(float(q * s) for s in scale)
    return FAMILIES[study.family](
        n_traces=study.n_traces,
        sites=sites,
        lo=lo,
        hi=hi,
        max_charge=q,
        n_bins=proto.n_bins,
        dt=proto.dt,
        t0=proto.t0,
        unit=proto.unit,
        **study.family_options,
    )


def criteria(problem, stimulus: Stimulus, solver) -> tuple[float, float, torch.Tensor]:
    """(mean criterion, mean contraction, per-trace Fisher ``[n, trace, P, P]``) at
    ``problem``'s θ, by exact sensitivities with ``solver``."""
    f = exact_fisher(problem, stimulus, solver)
    total = f.sum(1)
    d = criterion_values(problem, total).mean()
    c = posterior_contraction(total, problem.prior_var).mean()
    return float(d), float(c), f


def _truth_problem(held_out, model, truth):
    """``held_out`` at the ground truth (with the prior's geometry there)."""
    theta = {k: torch.as_tensor(np.asarray(truth[k]), dtype=torch.float64)[None] for k in truth}
    theta = {k: v for k, v in theta.items() if k in held_out.free}
    _, dg, hess = prior_geometry(ParameterSpace(model), theta)
    return dataclasses.replace(held_out, theta=theta, dg_du=dg, prior_hessian_u=hess)


def design_problems(study: DesignStudy, model, eval_solver, cell=None):
    """``(problem, held_out)``: ``model``'s design problem at ``study.theta_opt`` prior draws
    (seed ``opt_seed``, ``CrankNicolson(dt_opt)``), the one the optimiser sees, and at
    ``theta_eval`` held-out draws (seed ``opt_seed + 1000``, ``eval_solver``) — or, with a
    posterior as ``study.theta``, its draws split by :func:`cell_draws` (``cell``: that split,
    if already made)."""
    kw = dict(criterion=study.criterion)
    pool, held = cell_draws(study, model) if cell is None else cell
    problem = problem_from_model(
        model, study.theta_opt, study.opt_seed, solver=CrankNicolson(dt=study.dt_opt),
        draws=pool, **kw,
    )  # fmt: skip
    held_out = problem_from_model(
        model, study.theta_eval, study.opt_seed + 1000, solver=eval_solver, draws=held, **kw
    )
    return problem, held_out


CHOSEN_POOL = 5  # protocol draws of 100 sweeps the "chosen" start picks from


def chosen_sweeps(study: DesignStudy, model, pool=None) -> Stimulus:
    """The ``"chosen"`` start: the ``study.n_traces`` sweeps of ``CHOSEN_POOL`` × 100 sweeps of
    the preset's protocol (seeds ``seed + 1 …``) whose Fisher information together maximises
    ``study.criterion`` (:func:`~bayesneuron.optimal_design.select_traces`: greedy, then
    exchange) on ``max(theta_select, theta_opt)`` further points (seed ``opt_seed + 3000``,
    ``CrankNicolson(dt_opt)``; of a fitted cell's ``pool`` if given) — draws that neither
    choose the best start nor judge it. On the paper's cell these sweeps alone beat the
    paper's currents on every one of the 25 designs (``studies/optimal_design/chosen.py``)."""
    problem = problem_from_model(
        model, max(study.theta_select, study.theta_opt), study.opt_seed + 3000,
        solver=CrankNicolson(dt=study.dt_opt), draws=pool, criterion=study.criterion,
    )  # fmt: skip
    seeds = range(study.seed + 1, study.seed + 1 + CHOSEN_POOL)
    blocks = [protocol_currents(study.preset, model.cell, s, 100) for s in seeds]
    pool_stim = blocks[0].masked(model.stim_index)
    values = torch.cat([b.masked(model.stim_index).values for b in blocks])
    pool_stim = dataclasses.replace(pool_stim, values=values)
    chosen = select_traces(problem, exact_fisher(problem, pool_stim), study.n_traces)
    return dataclasses.replace(pool_stim, values=values[chosen])


def selection_problem(study: DesignStudy, model, criterion: str, pool=None):
    """The ``study.theta_select`` points (seed ``opt_seed + 2000``, ``CrankNicolson(dt_opt)``)
    on which the best of the starts is chosen with ``criterion``; ``None`` for
    ``theta_select = 0`` (the optimiser's own draws). With a fitted cell's posterior they come
    from the optimiser's ``pool`` of its draws (never the held-out ones), which the resampling
    optimiser visits too; from the prior they are new draws."""
    if not study.theta_select:
        return None
    return problem_from_model(
        model, study.theta_select, study.opt_seed + 2000, solver=CrankNicolson(dt=study.dt_opt),
        draws=pool, criterion=criterion,
    )  # fmt: skip


def refine_on_contraction(
    model, fam, cfg: OptimizeConfig, first, *, steps: int, n_theta: int, seed: int, solver,
    checkpoint=None, draws=None, select=None,
):  # fmt: skip
    """The second stage: from ``first``'s best point, ``steps`` steps on the mean posterior
    contraction (Gaussian surrogate) at ``n_theta`` prior draws of ``model`` (``seed``,
    ``solver``; of ``draws`` instead, if given, as :func:`problem_from_model`; the better of
    the first and last point chosen on ``select``'s points if given). Bayesian
    D-optimality from several starts finds an informative stimulus; the contraction, set by
    the worst-determined conductances, then moves information into them
    (on all|all of the paper's cell, 5 traces: 1 − contraction 3.2e-4 → 1.5e-4 on held-out
    draws, where contraction alone from the same starts gave 3.8e-4).

    Returns:
        ``(result, problem)``: the refined :class:`DesignResult` and the contraction problem.
    """
    problem = problem_from_model(  # not dataclasses.replace: the sampler must keep the criterion
        model, n_theta, seed, solver=solver, criterion="contraction", draws=draws
    )
    cfg = dataclasses.replace(cfg, steps=steps, n_starts=1, checkpoint=checkpoint)
    return optimize_stimulus(problem, fam, cfg, init=[first.z], select=select), problem


def run_design(study: DesignStudy, label: str, out: Path, progress: bool = True) -> dict:
    """Optimise and judge one design; writes its stimulus (``.pt``, ``.nwb``) and figure into
    ``out`` and returns its CSV row (a checkpoint in ``out`` makes a rerun resume)."""
    t0 = time.perf_counter()
    design = Design.from_label(label)
    eval_solver = CrankNicolson(dt=study.dt_eval)
    experiment = get_preset(study.preset).experiment
    model, _, truth = experiment(
        design, n_traces=study.n_traces, seed=study.seed, solver=eval_solver
    )
    cell = cell_draws(study, model)  # (None, None) for the prior
    problem, held_out = design_problems(study, model, eval_solver, cell)
    fam = make_family(study, model)
    tag = f"{design_tag(design.label)}_{study.family}"
    proto = model.stimulus  # the protocol's currents at the stimulated sites
    chosen = chosen_sweeps(study, model, cell[0]) if "chosen" in study.init else None
    names, init = starts(study, fam, proto, tag, chosen)
    cfg = OptimizeConfig(
        steps=study.steps,
        lr=study.lr,
        lr_final=study.lr_final,
        n_starts=len(init),
        seed=study.opt_seed,
        resample_theta=study.resample,
        checkpoint=out / f"checkpoint_{tag}.pt",
        progress=progress,
    )
    select = selection_problem(study, model, study.criterion, cell[0])
    res = optimize_stimulus(problem, fam, cfg, init=init, select=select)
    value_opt = res.value
    if study.refine_steps:
        res, _ = refine_on_contraction(
            model, fam, cfg, res, steps=study.refine_steps, n_theta=study.theta_opt,
            seed=study.opt_seed, solver=problem.solver,
            checkpoint=out / f"checkpoint_{tag}_refine.pt", draws=cell[0],
            select=selection_problem(study, model, "contraction", cell[0]),
        )  # fmt: skip
    d_paper, c_paper, f_paper = criteria(held_out, proto, eval_solver)
    d_opt, c_opt, f_opt = criteria(held_out, res.stimulus, eval_solver)
    gain = criterion_values(held_out, f_opt.sum(1)) - criterion_values(held_out, f_paper.sum(1))
    steps = []
    for s in range(study.seed + 1, study.seed + 1 + study.step_draws):
        cur = protocol_currents(study.preset, model.cell, s, study.n_traces)
        steps.append(criteria(held_out, cur.masked(model.stim_index), eval_solver)[0])
    f5 = f_opt[:, select_traces(held_out, f_opt, min(5, f_opt.shape[1]), exchange=False)].sum(1)
    truth_problem = _truth_problem(held_out, model, truth)
    _save_stimulus(res.stimulus, out / f"stimulus_{tag}", design.label, study)
    if design.label in study.figures:
        hi = fam.bounds()[1].expand(len(fam.sites), 1)[:, 0].tolist()
        _figure(design.label, res.stimulus, proto, hi, out / f"waveforms_{tag}.png")
    stim_label, rec_label = design.label.split("|")
    return {
        "stim": stim_label,
        "rec": rec_label,
        "family": study.family,
        "crit_paper": d_paper,
        "crit_steps": float(np.mean(steps)),
        "crit_optimised": d_opt,
        "gain_nats_per_trace": (d_opt - d_paper) / study.n_traces,
        "gain_se_nats_per_trace": _paired_se(gain) / study.n_traces,
        "crit_paper_truth": criteria(truth_problem, proto, eval_solver)[0],
        "crit_optimised_truth": criteria(truth_problem, res.stimulus, eval_solver)[0],
        "crit_optimised_on_opt_theta": value_opt,
        "contraction_paper": c_paper,
        "contraction_optimised": c_opt,
        "crit_opt5": float(criterion_values(held_out, f5).mean()),
        "contraction_opt5": float(posterior_contraction(f5, held_out.prior_var).mean()),
        "crit_steps_sd": float(np.std(steps, ddof=1)) if len(steps) > 1 else 0.0,
        "best_start": names[res.best_start],
        "best_step": res.best_step,  # 0: that start unchanged was best
        "wall_s": time.perf_counter() - t0,
    }


def _paired_se(diff: torch.Tensor) -> float:
    """Standard error of the mean of per-θ differences (both stimuli on the same points);
    0 for one point."""
    n = diff.numel()
    return float(diff.std(correction=1) / n**0.5) if n > 1 else 0.0


def _save_stimulus(stim: Stimulus, stem: Path, label: str, study: DesignStudy) -> None:
    values = stim.values.detach().clone()
    torch.save(
        {"values": values, "sites": stim.sites, "dt": stim.dt, "unit": stim.unit},
        stem.with_suffix(".pt"),
    )
    write_stimulus_nwb(
        Stimulus(values, stim.dt, stim.t0, stim.unit, stim.sites),
        stem.with_suffix(".nwb"),
        overwrite=True,
        description=f"optimised stimulus of design {label} on {study.preset} "
        f"({study.n_traces} sweeps, criterion {study.criterion}, family {study.family})",
    )


def _figure(label: str, stim: Stimulus, proto: Stimulus, hi: list[float], path: Path):
    """Protocol vs optimised currents, first 5 traces per stimulated site (``hi``: the upper
    bound per site, for the axes)."""
    from bayesneuron.reports.figures import subplots

    opt, ref = stim.values.detach().numpy(), proto.values.detach().numpy()
    sites = stim.sites
    t = proto.t0 + np.arange(opt.shape[-1] + 1) * stim.dt
    unit = "µA/cm²" if stim.unit == "uA/cm2" else "nA"
    fig, axes = subplots(len(sites), 2, figsize=(10, 1.6 * len(sites) + 0.8), squeeze=False)
    for i, s in enumerate(sites):
        for j, (vals, name) in enumerate(((ref[:, s], "protocol"), (opt[:, i], "optimised"))):
            ax = axes[i, j]
            for tr in vals[:5]:
                ax.stairs(tr, t, lw=1)
            ax.set_ylim(-0.05 * hi[i], 1.05 * hi[i])
            ax.set_ylabel(f"comp {s}\n{unit}")
            if i == 0:
                ax.set_title(f"{label}: {name} currents (first 5 traces)")
    for ax in axes[-1]:
        ax.set_xlabel("t (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _check_resume(study: DesignStudy, out: Path) -> None:
    """Refuse to add to a folder whose ``run.json`` has other settings."""
    meta = out / "run.json"
    if not meta.exists():
        return
    try:
        old = json.loads(meta.read_text()).get("settings", {})
    except (OSError, ValueError) as e:
        raise StudyError(f"{meta} cannot be read ({e}); remove it or use another --out") from None
    new = json.loads(json.dumps(study.settings()))
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        k = diff[0]
        raise StudyError(
            f"--out {out} holds a run with other settings ({k}: {old.get(k)!r} there, "
            f"{new.get(k)!r} now{'' if len(diff) == 1 else f'; and {diff[1:]}'}); use another "
            "--out, or the same settings to resume it"
        )


def _write_meta(study: DesignStudy, out: Path, **extra) -> None:
    meta = {
        "config": dataclasses.asdict(study),
        "settings": study.settings(),
        "environment": environment(),
    }
    write_json(out / "run.json", meta | extra)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _results(study, todo, out, progress):
    """``(label, row)`` as designs finish: here, or in ``study.workers`` processes."""
    if study.workers == 1 or len(todo) == 1:
        for label in todo:
            yield label, run_design(study, label, out, progress)
        return
    ctx = get_context("spawn")
    before = set(active_children())
    pool = ProcessPoolExecutor(min(study.workers, len(todo)), ctx, initializer=_worker_init)
    try:
        futures = {pool.submit(run_design, study, lab, out, False): lab for lab in todo}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    except BaseException:  # an interrupt or a failed design stops the others too
        pool.shutdown(wait=False, cancel_futures=True)
        # every process started since, also one an interrupt caught before the pool
        # registered it (the pool's own list misses that one)
        workers = [p for p in active_children() if p not in before]
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.join(timeout=5)
        raise
    pool.shutdown()  # all done: the idle workers exit by themselves


def run_design_study(
    study: DesignStudy,
    out: Path,
    *,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run every design of ``study`` into ``out``: ``optimal_design.csv`` (rewritten as each
    design finishes, rows in the study's design order), per design ``stimulus_<tag>_<family>``
    ``.pt`` / ``.nwb`` and ``waveforms_<tag>_<family>.png``, and ``run.json``. Designs already
    in the CSV are skipped; a checkpoint resumes an interrupted optimisation.

    Returns:
        The CSV's rows (this run's designs and any kept from before).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    _check_resume(study, out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _read_rows(out / CSV)
    done = {(r["stim"] + "|" + r["rec"], r["family"]) for r in rows}
    todo = [lab for lab in study.designs if (lab, study.family) not in done]
    _write_meta(study, out, finished=False)
    order = {lab: i for i, lab in enumerate(study.designs)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numbers in this process as in the workers
    t0 = time.perf_counter()
    n = len(study.designs)
    bar = tqdm(total=n, initial=n - len(todo), desc="designs", disable=not progress)
    try:
        for label, row in _results(study, todo, out, progress and study.workers == 1):
            rows.append(row)
            rows.sort(key=lambda r: order.get(row_label(r), len(order)))
            write_csv(out / CSV, rows)
            for end in ("", "_refine"):
                ckpt = out / f"checkpoint_{design_tag(label)}_{study.family}{end}.pt"
                ckpt.unlink(missing_ok=True)
            bar.update(1)
            c = study.criterion == "contraction"  # near 1: show 1 − contraction
            v = {k: f"1−c {1 - row[k]:.2e}" if c else f"{row[k]:7.2f}" for k in _SHOWN}
            fmt = ".2e" if c else ".2f"
            line = (
                f"{label:>16} paper {v['crit_paper']}  steps {v['crit_steps']}  optimised "
                f"{v['crit_optimised']}  gain/trace {row['gain_nats_per_trace']:+{fmt}} ± "
                f"{row['gain_se_nats_per_trace']:{fmt}}  best start {row['best_start']} after "
                f"{row['best_step']} steps  ({row['wall_s']:.0f} s)"
            )
            (echo or bar.write)(line)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    _write_meta(study, out, finished=True, wall_s=time.perf_counter() - t0, skipped=len(done))
    return rows
