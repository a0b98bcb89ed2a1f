"""``bayesneuron fit --config`` / ``infer --config``: your own cell and recording, from the
same ``config.toml`` a study uses (:mod:`bayesneuron.studies.recording_config`)."""

from __future__ import annotations

import time
from pathlib import Path

from bayesneuron.cli._common import check_out, remove_if_empty
from bayesneuron.errors import BayesneuronError

__all__ = ["add_config", "run_config"]


def add_config(p) -> None:
    p.add_argument(
        "--config",
        default=None,
        metavar="TOML",
        help="your own cell and recording: a config.toml with [cell], [data] and [parameters] "
        "(as studies/real_recording/config.toml); the options of the synthetic data are then "
        "ignored",
    )
    p.add_argument("--smoke", action="store_true", help="with --config: its [smoke] sizes")


def run_config(args, stage: str) -> int:
    """The MAP (``stage="map"``) or the whole posterior run of ``args.config`` into
    ``args.out``; prints one summary line."""
    from bayesneuron.studies.recording_run import run_recording_study

    out = Path(args.out)
    check_out(out)
    existed = out.exists()
    start = time.perf_counter()
    try:
        res = run_recording_study(
            args.config, out, smoke=args.smoke, stage=stage, progress=not args.quiet
        )
    except BayesneuronError:
        if not existed:
            remove_if_empty(out)
        raise
    rows = [r for r in res["predictive"] if r["held_out"]]
    inside = sum(r["inside_90"] for r in rows)
    what = "MAP fit" if stage == "map" else f"posterior ({res['posterior'].method})"
    print(
        f"{what} of {args.config}: spike count inside the 90 % predictive interval on "
        f"{inside} of {len(rows)} held-out sweeps, in {time.perf_counter() - start:.1f} s; "
        f"results in {out}/"
    )
    return 0
