"""The command line's shared options, their help, and the parser and help formatter classes."""

from __future__ import annotations

import argparse
import textwrap

from bayesneuron.cli._common import DEFAULT_SEED

__all__ = [
    "BACKEND_CHOICES",
    "DeprecatedAlias",
    "SYNTHETIC",
    "Help",
    "Parser",
    "add_common",
    "add_data",
    "add_executor",
    "add_posterior",
    "backend_name",
    "version",
]

BACKEND_CHOICES = ("auto", "fused", "torch")


class DeprecatedAlias(str):
    """A choice given by its deprecated alias (``--backend numba`` → ``"fused"``)."""

    alias: str = ""


def backend_name(text: str) -> str:
    """``--backend``'s value; ``numba``, a deprecated alias, becomes ``fused``."""
    if text == "numba":
        name = DeprecatedAlias("fused")
        name.alias = text
        return name
    return text


def version() -> str:
    """The installed distribution's version (``importlib.metadata``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("bayesneuron")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "unknown (not installed)"


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: what was wrong, and where the help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class Help(argparse.HelpFormatter):
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


SYNTHETIC = (
    "The data are synthetic: the paper's 6-compartment Na/K chain (Jones & Kording 2024) with its "
    "ground-truth conductances, driven by its random step currents at the stimulated "
    "compartments, recorded at the recorded ones with Gaussian noise (--noise). A design is "
    "'STIM|REC', each side 'all' or a list of compartments 0-5 (negative counts from the end): "
    "'all|all', '[0,-1]|all' (stimulate both ends, record everywhere), 'all|[0]' (record the "
    "soma only). --preset hh_tree swaps in a branched cell with NEURON's hh channels "
    "(compartments 0 soma, 1 dend[0], 2-5 the tips; currents in nA by area; 20 ms traces). "
    "--free chooses the per-compartment parameters inferred (default g_na,g_k; e.g. "
    "g_na,g_k,g_l adds the leak); the others keep the cell's values."
)


def add_common(p, out_help: str) -> None:
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (data and fits)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index>")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")


def add_data(p, priors=("paper", "lognormal", "none")) -> None:
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--preset",
        choices=("paper_toy", "hh_tree"),
        default="paper_toy",
        help="paper_toy: the paper's 6-compartment chain; hh_tree: a branched cell with NEURON's "
        "hh (compartments 0 soma, 1-5 dendrites)",
    )
    g.add_argument(
        "--free",
        default=None,
        metavar="NAMES",
        help="the per-compartment parameters to infer, separated by commas, e.g. g_na,g_k,g_l "
        "(default: the preset's, g_na,g_k)",
    )
    g.add_argument("--traces", type=int, default=20, help="number of stimulus traces")
    g.add_argument("--noise", type=float, default=1.0, help="recording noise sd added (mV)")
    g.add_argument("--sigma", type=float, default=1.0, help="noise sd the model assumes (mV)")
    g.add_argument(
        "--infer-sigma",
        action="store_true",
        help="infer the noise sd instead of assuming --sigma: one more parameter with the prior "
        "LogNormal(log 1 mV, 1) (90 %% of its mass within 0.19-5.2 mV), carried through the "
        "MAP, Laplace, SVI and NUTS",
    )
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
        type=backend_name,
        choices=BACKEND_CHOICES,
        default="auto",
        help="simulator kernel: auto = the fused C kernel where it applies (CPU, float64) and "
        "torch elsewhere; fused = the C kernel (CPU only); torch = PyTorch ops (any device). "
        "'numba' is a deprecated alias of fused",
    )


def add_posterior(p, methods, method: str) -> None:
    g = p.add_argument_group("posterior")
    g.add_argument(
        "--method",
        choices=methods,
        default=method,
        help="svi: variational (with --guide); laplace: Gaussian at the MAP (fastest)"
        + (
            "; nuts: Hamiltonian Monte Carlo, the gold standard (slowest)"
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
    g.add_argument("--map-starts", type=int, default=4, help="MAP starts before the posterior")
    g.add_argument("--map-steps", type=int, default=20, help="MAP Levenberg-Marquardt steps")
    g.add_argument(
        "--map-init",
        choices=("starts", "truth"),
        default="starts",
        help="where the MAP starts: starts = the base values and prior draws (the truth "
        "only scores); truth = at the ground truth, for local analyses only",
    )
    if "nuts" in methods:
        g.add_argument("--warmup", type=int, default=100, help="NUTS warm-up steps")
        g.add_argument("--chains", type=int, default=1, help="NUTS chains")
        g.add_argument(
            "--chain-workers",
            type=int,
            default=None,
            help="NUTS chains run side by side, one process each (default: as many as chains "
            "and this machine's cores allow; 1: one after another); the draws do not change",
        )


def add_executor(parser, what: str) -> None:
    """``--executor``, ``--scheduler``, ``--workers`` (see :mod:`bayesneuron.studies.executors`)."""
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
