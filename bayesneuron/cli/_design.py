"""``bayesneuron design optimize --config FILE.toml --out DIR``: an optimised stimulus per
stim|rec design of a preset's cell (:mod:`bayesneuron.studies.optimal_design`);
``bayesneuron design sites``: where to put the stimulating electrodes
(:mod:`bayesneuron.studies.site_selection`)."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bayesneuron.cli._common import check_out, remove_if_empty, say
from bayesneuron.cli._interrupt import Interrupted, saved_files
from bayesneuron.cli._options import Help
from bayesneuron.errors import BayesneuronError

__all__ = ["add_design", "cmd_design_optimize", "cmd_design_sites"]


def add_design(sub) -> None:
    """The ``design`` command and its ``optimize`` and ``sites`` subcommands."""
    d = sub.add_parser("design", help="optimal experimental design: stimuli that inform most")
    d_sub = d.add_subparsers(dest="design_command", required=True)
    o = d_sub.add_parser(
        "optimize",
        help="optimise a stimulus per design of a config.toml and judge it against the protocol",
        formatter_class=Help,
        description="For each stim|rec design of the config's preset (paper_toy or hh_tree), "
        "optimise the stimulus (traces, bins and bounds of the preset's protocol, the "
        "stimulated compartments only) for a design criterion (Bayesian D-optimality by "
        "default) over prior draws, then judge it, the protocol's currents and fresh draws "
        "of the protocol on held-out prior draws.\n\n"
        "Writes optimal_design.csv (one row per design, rewritten as each finishes), "
        "stimulus_<design>_<family>.pt and .nwb, waveforms_<design>_<family>.png and "
        "run.json (resolved config, versions, wall time). Run again into the same --out "
        "(same settings) to resume: finished designs are skipped and checkpoints resume "
        "the one that was interrupted. The config is studies/optimal_design/config.toml's "
        "shape; options below override it.\n\n"
        "Example:\n"
        "  bayesneuron design optimize --config studies/optimal_design/config.toml "
        "--out results/optimal_design --workers 2\n"
        "  bayesneuron design optimize --config studies/optimal_design/config.toml "
        "--out /tmp/od --designs 'all|all' --steps 2 --n-traces 2",
    )
    o.add_argument("--config", required=True, metavar="TOML", help="the study's config.toml")
    o.add_argument("--out", required=True, help="results folder (created; a rerun resumes it)")
    o.add_argument(
        "--designs",
        default=None,
        help="grid (the preset's 25), grid25 / paper9 (paper_toy) or labels separated by "
        "commas, e.g. 'all|all,[0]|all'",
    )
    o.add_argument("--steps", type=int, default=None, help="Adam steps per start (0: none)")
    o.add_argument("--workers", type=int, default=None, help="processes, one design each")
    o.add_argument("--n-traces", type=int, default=None, help="traces per stimulus")
    o.add_argument(
        "--family",
        default=None,
        help="stimulus family: bins (one level per bin), steps or ramps (an amplifier's "
        "epochs), sines, chirp; its own settings from the config's [design] family_options",
    )
    o.add_argument(
        "--init",
        default=None,
        help="the optimiser's starts, separated by commas, among paper, ladder, random and "
        "chosen (the most informative sweeps of 500 of the protocol's), e.g. "
        "'paper,ladder,random' as before session 21",
    )
    o.add_argument(
        "--refine-steps",
        type=int,
        default=None,
        help="steps of a second stage on the mean posterior contraction (0: none)",
    )
    o.add_argument(
        "--lr-final",
        type=float,
        default=None,
        help="Adam's learning rate at each start's last step (geometric decay from lr)",
    )
    o.add_argument(
        "--theta",
        default=None,
        metavar="NC",
        help="design for one fitted cell: a posterior .nc of the preset's free parameters "
        "(written by 'bayesneuron infer' or a study run) whose draws replace the prior "
        "draws; 'prior' (the config's default) designs for every cell of the prior",
    )
    o.add_argument(
        "--start-from",
        default=None,
        metavar="DIR",
        help="the --out folder of an earlier run: its stimulus of each design is one more "
        "start (e.g. a design for the prior, refined here for a fitted cell with --theta)",
    )
    o.add_argument("--quiet", action="store_true", help="no progress output")
    o.set_defaults(func=cmd_design_optimize)
    _add_sites(d_sub)


def _add_sites(d_sub) -> None:
    s = d_sub.add_parser(
        "sites",
        help="choose the stimulating electrodes' compartments (greedy, then exchange)",
        formatter_class=Help,
        description="Place the [sites] section's n_electrodes stimulating electrodes among "
        "its candidate compartments, the recording fixed: greedy (one electrode at a time, "
        "each candidate set's stimulus optimised as 'design optimize' does), then an "
        "exchange pass (swap one electrode while that raises the criterion). Every chosen "
        "set and the preset's grid designs with as many electrodes and the same recording "
        "are judged on held-out prior draws.\n\n"
        "Writes sites.csv (a row per greedy step, the exchange result and each grid "
        "design), sites.json (settings, exchange history, versions) and sites.png. A rerun "
        "starts over and replaces them.\n\n"
        "Example:\n"
        "  bayesneuron design sites --config studies/optimal_design/config.toml "
        "--out results/sites\n"
        "  bayesneuron design sites --config studies/optimal_design/config.toml "
        "--out /tmp/sites --n-electrodes 2 --steps 2 --n-traces 2",
    )
    s.add_argument("--config", required=True, metavar="TOML", help="the study's config.toml")
    s.add_argument("--out", required=True, help="results folder (created)")
    s.add_argument("--n-electrodes", type=int, default=None, help="electrodes to place")
    s.add_argument("--steps", type=int, default=None, help="optimiser steps per start")
    s.add_argument("--n-traces", type=int, default=None, help="traces per stimulus")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=cmd_design_sites)


def _paths(args) -> tuple[Path, Path]:
    """``(out, config)``, refused before any work if ``out`` cannot hold results."""
    out, config = Path(args.out), Path(args.config)
    check_out(out)
    if config.parent.resolve() == out.resolve():
        raise BayesneuronError(
            f"--out {out} is the folder of the config {config}; write the results elsewhere, "
            f"e.g. --out {config.parent / 'reference'} or results/{config.stem}"
        )
    return out, config


def _guarded(out: Path, work: Callable[[], object], again: str):
    """``work()``; a failure leaves no new empty ``out``; an interrupt returns ``(None, exit
    status)`` after saying what is saved and ``again`` (how to continue)."""
    existed = out.exists()
    try:
        return work(), 0
    except BayesneuronError:
        if not existed:
            remove_if_empty(out)
        raise
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        if not existed:
            remove_if_empty(out)
        saved = saved_files(out)
        what = f"saved in {out}: {saved}" if saved else f"nothing saved in {out} yet"
        print(
            f"bayesneuron: interrupted by {signal.Signals(signum).name}; {what}; {again}",
            file=sys.stderr,
            flush=True,
        )
        return None, 128 + signum


def cmd_design_optimize(args) -> int:
    from bayesneuron.studies.design_config import load_design_study
    from bayesneuron.studies.optimal_design import CSV, run_design_study

    out, config = _paths(args)
    study = load_design_study(
        config, designs=args.designs, steps=args.steps, workers=args.workers,
        n_traces=args.n_traces, refine_steps=args.refine_steps, theta=args.theta,
        lr_final=args.lr_final, start_from=args.start_from, family=args.family,
        init=None if args.init is None else [x.strip() for x in args.init.split(",")],
    )  # fmt: skip
    say(args, f"[design] {len(study.designs)} designs of {study.preset} → {out}/")
    start = time.perf_counter()
    rows, status = _guarded(
        out,
        lambda: run_design_study(study, out, progress=not args.quiet),
        f"continue by running the same command again ({CSV} keeps the finished designs)",
    )
    if rows is None:
        return status
    print(
        f"{len(rows)} designs in {out / CSV} ({len(study.designs)} asked) in "
        f"{time.perf_counter() - start:.1f} s; results in {out}/"
    )
    return 0


def cmd_design_sites(args) -> int:
    from bayesneuron.studies.design_config import load_design_study
    from bayesneuron.studies.site_selection import CSV, run_site_selection

    out, config = _paths(args)
    over = {"n_electrodes": args.n_electrodes, "steps": args.steps, "n_traces": args.n_traces}
    study = load_design_study(config, sites=over)
    if study.sites is None:
        raise BayesneuronError(
            f"{config} has no [sites] section; add one (e.g. n_electrodes = 3, candidates = "
            '"all", rec = "all") or give --n-electrodes'
        )
    spec = study.sites
    say(
        args,
        f"[design] {spec.n_electrodes} electrodes among compartments {list(spec.candidates)} "
        f"of {study.preset}, rec {spec.rec} → {out}/",
    )
    start = time.perf_counter()
    rows, status = _guarded(
        out,
        lambda: run_site_selection(study, spec, out, progress=not args.quiet),
        "run the same command again to start over",
    )
    if rows is None:
        return status
    best = [r for r in rows if r["method"] != "grid"][-1]  # exchange's, else greedy's last
    print(
        f"sites {best['sites']} ({best['method']}): {best['crit_heldout']:.2f} on held-out "
        f"draws; {len(rows)} rows in {out / CSV} in {time.perf_counter() - start:.1f} s"
    )
    return 0
