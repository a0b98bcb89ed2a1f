"""``bayesneuron design optimize --config FILE.toml --out DIR``: an optimised stimulus per
stim|rec design of a preset's cell (:mod:`bayesneuron.studies.optimal_design`)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from bayesneuron.cli._common import check_out, remove_if_empty, say
from bayesneuron.cli._interrupt import Interrupted, saved_files
from bayesneuron.cli._options import Help
from bayesneuron.errors import BayesneuronError

__all__ = ["add_design", "cmd_design_optimize"]


def add_design(sub) -> None:
    """The ``design`` command and its ``optimize`` subcommand."""
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
    o.add_argument("--steps", type=int, default=None, help="optimiser steps per start")
    o.add_argument("--workers", type=int, default=None, help="processes, one design each")
    o.add_argument("--n-traces", type=int, default=None, help="traces per stimulus")
    o.add_argument("--quiet", action="store_true", help="no progress output")
    o.set_defaults(func=cmd_design_optimize)


def cmd_design_optimize(args) -> int:
    from bayesneuron.studies.design_config import load_design_study
    from bayesneuron.studies.optimal_design import CSV, run_design_study

    out, config = Path(args.out), Path(args.config)
    check_out(out)
    if config.parent.resolve() == out.resolve():
        raise BayesneuronError(
            f"--out {out} is the folder of the config {config}; write the results elsewhere, "
            f"e.g. --out {config.parent / 'reference'} or results/{config.stem}"
        )
    study = load_design_study(
        config, designs=args.designs, steps=args.steps, workers=args.workers,
        n_traces=args.n_traces,
    )  # fmt: skip
    existed = out.exists()
    say(args, f"[design] {len(study.designs)} designs of {study.preset} → {out}/")
    start = time.perf_counter()
    try:
        rows = run_design_study(study, out, progress=not args.quiet)
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
            f"bayesneuron: interrupted by {signal.Signals(signum).name}; {what}; continue by "
            f"running the same command again ({CSV} keeps the finished designs)",
            file=sys.stderr,
            flush=True,
        )
        return 128 + signum
    print(
        f"{len(rows)} designs in {out / CSV} ({len(study.designs)} asked) in "
        f"{time.perf_counter() - start:.1f} s; results in {out}/"
    )
    return 0
