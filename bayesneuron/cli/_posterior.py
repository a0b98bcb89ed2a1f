"""``bayesneuron infer`` (one design's posterior) and ``bayesneuron compare`` (many designs'
posteriors, ranked)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bayesneuron.cli._common import (
    backend,
    check_args,
    check_device,
    check_out,
    config,
    design,
    free_names,
    model_sigma,
    remove_if_empty,
    say,
    split_labels,
    staged,
    write_provenance,
)
from bayesneuron.errors import BayesneuronError
from bayesneuron.studies.output import safe_label, write_csv

__all__ = ["cmd_compare", "cmd_infer"]


def _what(args) -> str:
    """What is inferred, for the study's question: "12 per-compartment Na/K parameters (g_na,
    g_k)" on a 6-compartment cell with the default free parameters."""
    from bayesneuron.reference.presets import get_preset
    from bayesneuron.studies.tables import column_key

    free = free_names(args) or ("g_na", "g_k")
    n = get_preset(args.preset).cell().n_comp * len(free)
    keys = "/".join(column_key(k).capitalize() for k in free)
    return f"{n} per-compartment {keys} parameters ({', '.join(free)})"


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
        sigma=model_sigma(args),
        priors=args.priors,
        dt=args.dt,
        preset=args.preset,
        free=free_names(args),
        backend=backend(args),
        num_particles=args.particles,
        max_steps=args.steps,
        num_samples=args.samples,
        map_starts=args.map_starts,
        map_steps=args.map_steps,
        map_init=args.map_init,
        warmup_steps=getattr(args, "warmup", 100),
        num_chains=getattr(args, "chains", 1),
        chain_workers=chain_workers(args),
    )


def chain_workers(args) -> int:
    """``--chain-workers``, or as many NUTS chains side by side as this machine's cores."""
    from bayesneuron.inference.nuts import usable_cores

    if getattr(args, "chain_workers", None) is not None:
        return args.chain_workers
    return max(1, min(getattr(args, "chains", 1), usable_cores()))


def _posterior_config(args, study, wall: float) -> dict:
    inf = study.infers[0]
    return config(
        args,
        name=study.name,
        question=study.question,
        backend=study.backend,
        designs=[d.label for d in inf.designs],
        infer={**inf.__dict__, "designs": [d.label for d in inf.designs]},
        wall_s=wall,
    )


def cmd_infer(args) -> int:
    from bayesneuron.studies.posteriors import infer_design, not_ok_mark

    if args.config:
        from bayesneuron.cli._config import run_config

        return run_config(args, "posterior")
    check_args(args)
    out = Path(args.out)
    check_out(out)
    check_device(args.device)
    d = design(args.design, args.preset)
    study = _study_from_args(
        args,
        [d],
        name="infer",
        question=f"How well do {args.traces} noisy traces under the design {d.label} "
        f"(stimulated | recorded compartments) determine the {_what(args)}?",
    )
    inf = study.infers[0]
    what = f"{args.method} ({args.guide} guide)" if args.method == "svi" else args.method
    say(args, f"[infer] {d.label}: {args.traces} traces; MAP, Laplace, then {what} …")
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    res = infer_design(study, inf, 0, args.device, progress=not args.quiet)
    wall = time.perf_counter() - start
    with staged(out) as tmp:
        say(args, "[infer] writing the InferenceData, tables, figures and report …")
        _write_infer(args, tmp, study, res, wall)
    row = res["row"]
    check = not_ok_mark(row)
    print(
        f"{row.get('posterior_method', what)} posterior of {d.label}{check}: contraction mean "
        f"{row['mean_contraction']:.3f}, min {row['min_contraction']:.3f}, max |z| "
        f"{row['max_abs_z']:.2f} in {wall:.1f} s; results in {out}/"
    )
    if check:
        print(f"  attempts: {row.get('attempts', '?')}")
    return 0


def _write_infer(args, tmp: Path, study, res: dict, wall: float) -> None:
    """Everything ``bayesneuron infer`` writes, into the staging folder ``tmp``."""

    from bayesneuron import reports
    from bayesneuron.studies.posteriors import rank_designs, rebuild_report

    inf, row, label = study.infers[0], res["row"], study.infers[0].designs[0].label
    reports.save_inference_data(res["idata"], tmp / "posterior.nc")
    reports.summary(res["idata"]).to_csv(tmp / "summary.csv", index_label="parameter")
    write_csv(tmp / "designs.csv", [row])
    write_csv(tmp / "parameters.csv", res["parameters"])
    write_csv(tmp / "ranking.csv", rank_designs([row]))
    elbos = {}
    if res["elbo"] is not None:
        elbos[(inf.name, label)] = res["elbo"]
        fig, ax = reports.subplots(figsize=(5, 2.6))
        ax.plot(res["elbo"])
        ax.set(xlabel="SVI step", ylabel="ELBO (nats)", title=label)
        fig.tight_layout()
        fig.savefig(tmp / "elbo.png", dpi=110)
        np.savetxt(tmp / "elbo.csv", np.asarray(res["elbo"]), header="elbo", comments="")
    write_provenance(tmp, _posterior_config(args, study, wall))
    rebuild_report(tmp, tmp / "report.html", elbos=elbos, figures=True)
    pre, safe = f"{inf.name}_", safe_label(label)  # the report's figures, named plainly
    renames = [(f"{pre}{safe}_vs.png", "posterior_vs_prior.png")]
    renames += [(f"{pre}{safe}_predictive.png", "predictive.png")]
    renames += [(q.name, q.name[len(pre) :]) for q in tmp.glob(f"{pre}forest_*.png")]
    for old, new in renames:
        if (tmp / old).is_file():
            (tmp / old).replace(tmp / new)


def cmd_compare(args) -> int:
    from bayesneuron.studies.executors import make_executor
    from bayesneuron.studies.posteriors import rank_designs, run_infers

    check_args(args)
    executor = make_executor(args.executor, args.scheduler, args.workers)
    out = Path(args.out)
    check_out(out)
    check_device(args.device)
    spec = args.designs.strip()
    designs = spec if "|" not in spec else [design(s, args.preset) for s in split_labels(spec)]
    study = _study_from_args(
        args,
        designs,
        name="compare",
        question=f"Which stimulation/recording design determines the {_what(args)} of the "
        f"{args.preset} cell best, from {args.traces} noisy traces?",
    )
    existed = out.exists()
    start = time.perf_counter()
    try:
        rows = run_infers(
            study,
            out,
            device=args.device,
            resume=args.resume,
            progress=not args.quiet,
            executor=executor,
        )
    except BayesneuronError:
        if not existed:
            remove_if_empty(out)  # failed before writing anything: leave nothing
        raise
    wall = time.perf_counter() - start
    write_provenance(out, _posterior_config(args, study, wall))
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
