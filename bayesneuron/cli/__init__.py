"""The ``bayesneuron`` command line.

``bayesneuron simulate --preset paper_toy --out results/demo`` simulates a ready-made cell and
protocol and writes the traces (``traces.npz``), a figure (``traces.png``), the resolved
configuration (``config.json``) and an environment manifest (``environment.json``).

On the paper's toy cell with synthetic data (its ground truth, its random currents, Gaussian
recording noise), one design at a time or many:

* ``bayesneuron fit --design "[0,-1]|all" --out DIR`` — a MAP fit (``fit.json``, ``table.csv``,
  ``fit_parameters.csv``, figures);
* ``bayesneuron infer --design 'all|all' --method svi --out DIR`` — one posterior
  (``posterior.nc``, ``summary.csv``, ``designs.csv``, figures, ``report.html``);
* ``bayesneuron compare --designs paper9 --method laplace --out DIR`` — posteriors of many
  designs and their ranking (``designs.csv``, ``ranking.csv``, heatmaps, ``idata/``,
  ``report.html``), here or on a Dask cluster;
* ``bayesneuron report DIR`` — ``report.html`` of a results folder, rebuilt;
* ``bayesneuron study run FOLDER --out DIR`` — a study folder's ``config.toml`` end to end.

``--free g_na,g_k,g_l`` chooses the parameters inferred; every table column, figure and report
section follows them. ``--backend auto|fused|torch`` chooses the simulator kernel.

Every command writes ``config.json`` (the resolved arguments) and ``environment.json``
(versions of bayesneuron, torch, pyro, arviz; the fused kernel build); long commands report
progress on stderr unless ``--quiet``. A command that fails on bad input says why in one line,
exits with status 1 (2 for a malformed command line) and leaves no results folder behind.
Interrupted by SIGTERM or SIGINT (Ctrl-C), it says in one line what it saved and how to
continue, and exits with status 128 + the signal number (143, 130).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bayesneuron.cli._common import remove_if_empty
from bayesneuron.cli._interrupt import Interrupted, interrupt_message, raise_on_signals
from bayesneuron.cli._parser import build_parser
from bayesneuron.errors import BayesneuronError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # figures go to files; the library itself never picks a backend
    out = Path(args.out) if getattr(args, "out", None) and args.command != "report" else None
    existed = out is None or out.exists()
    try:
        with raise_on_signals():
            return args.func(args)
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else 2  # KeyboardInterrupt: SIGINT
        if not existed:
            remove_if_empty(out)  # interrupted before writing anything: leave nothing
        print(interrupt_message(args, argv, signum), file=sys.stderr, flush=True)
        return 128 + signum
    except BayesneuronError as e:
        print(f"bayesneuron: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a path the user gave cannot be read or written
        where = f": {e.filename}" if e.filename else ""
        print(f"bayesneuron: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
