"""Does the Levenberg–Marquardt MAP recover the truth on noise-free data, design by design,
from starts that do not use the truth — and where not, why?

    python benchmarks/map_recovery.py [--study studies/paper_toy_map] [--starts 8]
        [--max-steps 15] [--windows 8:48:4] [--horizons ""] [--designs grid25] [--quick]
        [--csv FILE] [--json FILE]

The experiment is the study's (by default ``studies/paper_toy_map``: the paper's seed, 100
traces, Crank–Nicolson dt 0.004 ms, prior base · U(0.7, 1.3), σ = 1 mV) with noise_sigma = 0.
Every design is fitted in one batch from ``--starts`` starts (the base values, then prior
draws: the truth only scores). Per design: recovered (largest relative error < 1e-3), GTE, the
largest error in prior widths, the Fisher information's rank / smallest eigenvalue / condition
number at the truth, the number of distinct optima among the starts and the reason
(:mod:`bayesneuron.inference.recovery`).

With ``--noise SIGMA`` (mV) the data carry Gaussian noise (seed: the experiment's + 1; ``--seed``) and each
design also gets a checked posterior from the MAP's modes (``--ladder``, default Laplace, then
the multivariate-normal guide, then importance resampling:
:func:`~bayesneuron.inference.posterior.checked_posterior`), scored against the truth: the
method that passed (or the last tried, ``posterior_ok`` False), max |z| of the truth, 90 %
coverage and contraction (:func:`~bayesneuron.inference.metrics.identifiability`).

The region-shared L2/3 cell (issue 15, part 2b), the exciting four-electrode design::

    D='[soma(0.5),apic[45](0.5),dend[57](0.5),apic[55](0.5)]'
    python benchmarks/map_recovery.py --study studies/l23_design --designs "$D|$D" \
        --horizons "" --windows "" --starts 4 --max-steps 30 [--noise 1]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "paper_toy_map"


def _ints(spec: str) -> tuple[int, ...]:
    """``"8:48:4"`` → range(8, 48, 4); ``"1,4,16"`` → (1, 4, 16); ``""`` → ()."""
    if not spec:
        return ()
    if ":" in spec:
        return tuple(range(*(int(x) for x in spec.split(":"))))
    return tuple(int(x) for x in spec.split(","))


def _experiments(args):
    from bayesneuron.protocol.design import Design
    from bayesneuron.reference.presets import get_preset
    from bayesneuron.studies.config import load_study
    from bayesneuron.studies.experiment import build_experiment

    study = load_study(args.study, smoke=False)
    if args.quick:  # seconds: few traces, the first output times
        study.n_traces, study.n_times = 20, 24
    if "|" in args.designs:
        designs = [Design.from_label(x) for x in args.designs.split(";")]
    else:
        designs = get_preset(study.preset).designs(args.designs)
    exps = [build_experiment(study, d, "paper", "cpu", args.noise, seed=args.seed) for d in designs]
    return study, [e[0] for e in exps], [e[1] for e in exps], exps[0][2]


def run(args) -> list[dict]:
    import torch

    from bayesneuron.inference.fit import fit_map_designs
    from bayesneuron.inference.recovery import fisher_spectrum, recovery_row

    torch.set_num_threads(args.threads)
    study, models, data, truth = _experiments(args)
    t0 = time.perf_counter()
    fits = fit_map_designs(
        models,
        data,
        truth=truth,
        n_starts=args.starts,
        max_steps=args.max_steps,
        horizons=_ints(args.horizons),
        windows=_ints(args.windows),
        seed=study.seed,
        progress=not args.quiet,
    )
    wall = time.perf_counter() - t0
    rows = []
    for fit, model, v in zip(fits, models, data):
        row = recovery_row(fit, model, truth, spectrum=fisher_spectrum(model, truth))
        row.update(steps=fit.steps, wall_s=round(wall, 1))
        if args.noise > 0:
            row.update(_posterior(args, study, model, v, fit, truth))
        rows.append(row)
    return rows


def _posterior(args, study, model, v, fit, truth) -> dict:
    """The checked posterior from the fit's modes, scored against the truth."""
    from bayesneuron.inference.metrics import identifiability
    from bayesneuron.inference.posterior import checked_posterior

    t0 = time.perf_counter()
    post = checked_posterior(
        model, v, fit.modes(), ladder=args.ladder.split(","), seed=study.seed,
        svi={"num_particles": args.svi_particles, "max_steps": args.svi_steps},
        nuts={"num_samples": args.nuts_draws, "warmup_steps": args.nuts_draws},
        adaptive={"rounds": args.ais_rounds},
    )  # fmt: skip
    ident = identifiability(post.draws, model, truth).summary()
    keep = ("max_abs_z", "coverage_90", "mean_contraction", "min_contraction")
    diag = post.diagnostics
    return {
        "posterior_method": post.method,
        "posterior_ok": post.ok,
        **{k: ident[k] for k in keep},
        "khat": diag.get("khat"),
        "ess": diag.get("ess"),
        "khat_rounds": diag.get("khat_rounds"),
        "map_fit_z": diag.get("map_fit_z"),
        "attempts": diag["attempts"],
        "posterior_s": round(time.perf_counter() - t0, 1),
    }


def _table(rows: list[dict]) -> str:
    gtes = [k for k in rows[0] if k.startswith("gte_")]
    width = max(18, *(len(r["stim"] + r["rec"]) + 1 for r in rows))
    head = f"{'design':{width}s} {'rec':>3s} {'max_rel':>8s} {'/width':>8s} "
    head += (
        "".join(f"{k:>9s}" for k in gtes) + f" {'rank':>5s} {'min_eig':>8s} {'modes':>5s}  reason"
    )
    lines = [head]
    for r in rows:
        w = r["max_err_prior_width"]
        lines.append(
            f"{r['stim'] + '|' + r['rec']:{width}s} {'yes' if r['recovered'] else 'no':>3s} "
            f"{r['max_rel_err']:8.1e} {'–' if w is None else f'{w:8.1e}':>8s} "
            + "".join(f"{r[k]:9.1e}" for k in gtes)
            + f" {r['fisher_rank']:>2d}/{r['n_params']:<2d} {r['fisher_min_eig']:8.1e} "
            f"{r['n_modes']:>5d}  {r['reason']}"
        )
    for r in rows:
        if "posterior_method" in r:
            lines.append(
                f"  posterior: {r['posterior_method']} ok={r['posterior_ok']} max|z| "
                f"{r['max_abs_z']:.2f} coverage_90 {r['coverage_90']:.2f} contraction "
                f"{r['mean_contraction']:.2f} (min {r['min_contraction']:.2f}); {r['attempts']}"
            )
    n = sum(r["recovered"] for r in rows)
    full = [r for r in rows if r["fisher_rank"] == r["n_params"]]
    lines.append(
        f"recovered {n}/{len(rows)}; with full-rank Fisher information "
        f"{sum(r['recovered'] for r in full)}/{len(full)}; wall {rows[0]['wall_s']} s"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", type=Path, default=STUDY, help="a study folder (its config)")
    ap.add_argument("--starts", type=int, default=8, help="starts per design (base + draws)")
    ap.add_argument("--max-steps", type=int, default=15, help="LM iterations per stage")
    ap.add_argument("--windows", default="8:48:4", help="time windows (output times)")
    ap.add_argument("--horizons", default="", help="multiple-shooting horizons first")
    ap.add_argument(
        "--designs",
        default="grid25",
        help="a preset's named list (grid25, placements) or 'a|b;c|d'",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--seed", type=int, default=None, help="the experiment's seed (default: the study's)"
    )
    ap.add_argument("--noise", type=float, default=0.0, help="mV of data noise (0: noise-free)")
    ap.add_argument("--svi-steps", type=int, default=300, help="SVI steps at most, with --noise")
    ap.add_argument("--svi-particles", type=int, default=2, help="ELBO particles, with --noise")
    ap.add_argument("--nuts-draws", type=int, default=300, help="NUTS warm-up and draws per chain")
    ap.add_argument(
        "--ais-rounds", type=int, default=4, help="adaptive importance rounds at most, with --noise"
    )
    ap.add_argument(
        "--ladder", default="laplace,svi:mvn,importance", help="posterior methods, with --noise"
    )
    ap.add_argument("--quick", action="store_true", help="20 traces, 24 output times")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--csv", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = run(args)
    print(_table(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("csv", "json")}
        settings["study"] = str(args.study)
        args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
