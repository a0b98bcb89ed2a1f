"""The ``bayesneuron`` parser: every command, its options and its help."""

from __future__ import annotations

import argparse

from bayesneuron.cli._commands import PRESETS, SOLVERS, cmd_report, cmd_simulate, cmd_study_run
from bayesneuron.cli._common import DEFAULT_SEED
from bayesneuron.cli._config import add_config
from bayesneuron.cli._design import add_design
from bayesneuron.cli._fit import cmd_fit
from bayesneuron.cli._options import (
    SYNTHETIC,
    Help,
    Parser,
    add_common,
    add_data,
    add_executor,
    add_posterior,
    version,
)
from bayesneuron.cli._posterior import cmd_compare, cmd_infer

__all__ = ["build_parser"]

DEFAULT_DESIGNS = "all|all,[0,-1]|all,all|[0]"


def build_parser() -> argparse.ArgumentParser:
    """The ``bayesneuron`` parser: every command, its options and help."""
    p = Parser(
        prog="bayesneuron",
        description="Bayesian inference on differentiable multicompartment neuron models.",
        formatter_class=Help,
        epilog="Each command explains itself: bayesneuron COMMAND --help. A first look (one "
        "posterior, then the paper's 9 designs compared):\n\n"
        "  bayesneuron infer --design '[0]|all' --out results/infer\n"
        "  bayesneuron compare --designs paper9 --method laplace --out results/paper9",
    )
    p.add_argument("--version", action="version", version=f"bayesneuron {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_simulate(sub)
    _add_study(sub)
    _add_fit(sub)
    _add_infer(sub)
    _add_compare(sub)
    _add_report(sub)
    add_design(sub)
    return p


def _add_simulate(sub) -> None:
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
    s.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--float32", action="store_true", help="single precision")
    s.add_argument("--out", required=True, help="results folder (created)")
    s.set_defaults(func=cmd_simulate)


def _add_study(sub) -> None:
    st = sub.add_parser("study", help="run a study folder (config.toml) end to end")
    st_sub = st.add_subparsers(dest="study_command", required=True)
    r = st_sub.add_parser(
        "run",
        help="run every fit of a study and write tables, figures and provenance",
        description="Run a study: FOLDER/config.toml says which cell, free parameters, data, "
        "designs and fits; results (table.csv, designs.csv, figures, fits.json, config.json, "
        "environment.json) go to --out, a folder outside the study folder. Interrupted "
        "(Ctrl-C, SIGTERM), it says what it saved and how to continue with --resume. "
        "Example: bayesneuron study run studies/paper_toy_map --out results/map --smoke",
    )
    r.add_argument("folder", help="study folder holding config.toml")
    r.add_argument("--out", required=True, help="results folder (created; not in FOLDER)")
    r.add_argument("--smoke", action="store_true", help="tiny version of the study: a first look")
    r.add_argument("--resume", action="store_true", help="continue from the runs' checkpoints")
    r.add_argument("--device", default="cpu", help="cpu or cuda")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    add_executor(r, "the [[infer]] designs")
    r.set_defaults(func=cmd_study_run)


def _add_fit(sub) -> None:
    f = sub.add_parser(
        "fit",
        help="MAP fit of the paper's cell under one design (synthetic data)",
        formatter_class=Help,
        description="Fit the per-compartment conductances of the paper's toy cell (g_na and g_k "
        "by default, --free for others) to synthetic data by maximum a posteriori (MAP): "
        "bayesneuron's Levenberg-Marquardt protocol (multi-start, multiple-shooting "
        "continuation) or the paper's own (Adam, lr 0.5, 200 steps, its loss).\n\n"
        + SYNTHETIC
        + "\n\nWrites fit.json (optimum, every start, settings), table.csv (one row, the study "
        "table's columns: loss, ground-truth errors gte_<x>_final per free parameter g_<x>, "
        "steps), fit_parameters.csv (one row per parameter and compartment), history.npz, "
        "loss_gte.png, trajectories.png, config.json and environment.json, all at the end.\n\n"
        "Example:\n"
        "  bayesneuron fit --design '[0,-1]|all' --out results/fit\n"
        "  bayesneuron fit --design 'all|[0]' --protocol paper --out results/fit_paper\n"
        "  bayesneuron fit --free g_na,g_k,g_l --out results/fit_leak\n"
        "  bayesneuron fit --config studies/real_recording/config.toml --out results/mine",
    )
    add_config(f)
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
    add_data(f)
    add_common(f, "results folder (created)")
    f.set_defaults(func=cmd_fit)


def _add_infer(sub) -> None:
    i = sub.add_parser(
        "infer",
        help="posterior of the paper's cell under one design (synthetic data)",
        formatter_class=Help,
        description="The posterior of the per-compartment conductances of the paper's toy cell "
        "(g_na and g_k by default) under one design: a MAP fit (from the base values and prior "
        "draws; the truth only scores), the Laplace approximation there, then "
        "SVI, the Laplace draws or NUTS; identifiability metrics (contraction = 1 - "
        "Var_post/Var_prior, z of the truth, 90 % coverage) and the log-det Fisher "
        "information.\n\n"
        + SYNTHETIC
        + "\n\nWrites posterior.nc (ArviZ InferenceData: posterior, prior, predictive, "
        "log-likelihood, data, truth), summary.csv (per parameter: mean, sd, truth, "
        "contraction), designs.csv (the design's row), parameters.csv, ranking.csv, "
        "posterior_vs_prior.png, predictive.png, forest_<param>.png per free parameter, "
        "elbo.png/elbo.csv (SVI), report.html, config.json and environment.json. --method "
        "laplace is the quickest, nuts the slowest.\n\n"
        "Example:\n"
        "  bayesneuron infer --design '[0]|all' --method svi --out results/infer\n"
        "  bayesneuron infer --design 'all|all' --method laplace --traces 50 --out results/lap\n"
        "  bayesneuron infer --config studies/real_recording/config.toml --out results/mine",
    )
    add_config(i)
    i.add_argument("--design", default="all|all", help="design label 'STIM|REC'")
    add_posterior(i, ("svi", "laplace", "nuts"), "svi")
    add_data(i, priors=("paper", "lognormal"))
    add_common(i, "results folder (created)")
    i.set_defaults(func=cmd_infer)


def _add_compare(sub) -> None:
    c = sub.add_parser(
        "compare",
        help="posteriors under many designs, ranked: which experiment to run",
        formatter_class=Help,
        description="Compare stimulation/recording designs: the posterior of the paper's cell "
        "under each (as 'bayesneuron infer' does for one), then a ranking by log-det Fisher "
        "information, worst relative posterior sd and mean contraction. --designs is 'paper9' "
        "(the paper's 9 designs), 'grid25' (every stim x rec pair of [0], [0,1], [0,-1], "
        "[0,1,-1], all) or a comma-separated list of labels.\n\n"
        + SYNTHETIC
        + "\n\nWrites designs.csv (one row per design), parameters.csv, ranking.csv, "
        "idata/posterior/<design>.nc, contraction heatmaps, forest plots, report.html, "
        "config.json and environment.json; designs.csv grows as designs finish, and --resume "
        "continues an interrupted comparison. Independent designs can run on a Dask cluster "
        "(--executor dask).\n\n"
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
    c.add_argument(
        "--resume", action="store_true", help="keep the designs already finished in --out"
    )
    add_posterior(c, ("svi", "laplace"), "laplace")
    add_data(c, priors=("paper", "lognormal"))
    add_common(c, "results folder (created; an existing one is added to)")
    add_executor(c, "the designs")
    c.set_defaults(func=cmd_compare)


def _add_report(sub) -> None:
    r = sub.add_parser(
        "report",
        help="rebuild report.html of a results folder",
        formatter_class=Help,
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
