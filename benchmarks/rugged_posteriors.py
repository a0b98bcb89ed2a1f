"""Reference samplers on the rugged soma-recorded designs of
``studies/paper_toy_identifiability`` (issue 13): NUTS and tempered SMC, each checked, and a
study's reported posterior compared with them.

    python benchmarks/rugged_posteriors.py run --method nuts|smc [--designs "[0,-1]|[0]" ...]
        [--chains 2 --warmup 200 --samples 250] [--particles 512 --settle 60]
        [--out benchmarks/results/rugged_posteriors]
    python benchmarks/rugged_posteriors.py compare --reference smc|nuts
        [--against nuts|smc | --study-out DIR] [--json FILE]

``run``: per design, the study's data (its seed, noise and dt) and its MAP (the base values
and prior draws, the continuation windows — never the truth); then NUTS (dense mass matrix,
whitened by the best mode's Laplace approximation, chains started at the distinct modes) or
tempered SMC from the prior (two populations, :func:`bayesneuron.inference.smc.tempered_smc`).
Writes ``<method>/<design>.npz`` (draws ``[chain, draw, comp]``) and ``<method>/<design>.json``
(R̂, ESS, divergences or stages, |z| of the truth, wall time).

``compare``: per parameter ``|mean − mean_ref| / sd_ref`` (agreement: ≤ 0.3) and
``sd / sd_ref`` (agreement: within 25 %) of the other method's draws, or of a study run's
posterior (``DIR/idata/<run>/<design>.nc``), against the reference's; with the reference's
own checks beside them (a reference that fails R̂ or ESS is not a reference, and the table
says so).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RUGGED = ["[0,-1]|[0]", "[0,-1]|[0,1]", "[0,1,-1]|[0]", "[0,1,-1]|[0,1]"]
STUDY = "studies/paper_toy_identifiability"


def _file(label: str) -> str:
    from bayesneuron.studies.output import safe_label

    return safe_label(label)


def run(args) -> None:
    """Run ``args.method`` on every design; write its draws and diagnostics."""
    import torch

    from bayesneuron.inference.diagnostics import chain_diagnostics
    from bayesneuron.inference.fit import fit_map
    from bayesneuron.inference.laplace import laplace_map
    from bayesneuron.inference.nuts import run_nuts
    from bayesneuron.inference.smc import tempered_smc
    from bayesneuron.studies.config import load_study
    from bayesneuron.studies.experiment import build_experiment

    torch.set_num_threads(args.threads)
    study = load_study(args.study)
    inf = study.infers[0]
    args.out.mkdir(parents=True, exist_ok=True)
    for label in args.designs:
        design = next(d for d in inf.designs if d.label == label)
        t0 = time.perf_counter()
        model, v, truth = build_experiment(study, design, study.priors, "cpu", inf.noise_sigma)
        mp = fit_map(
            model,
            v,
            truth=truth,
            horizons=(),
            windows=inf.map_windows,
            n_starts=inf.map_starts,
            max_steps=inf.map_steps,
            seed=study.seed,
            progress=False,
        )
        modes = mp.modes()
        laps = [laplace_map(model, v, m, progress=False) for m in modes]
        if args.method == "nuts":
            res = run_nuts(
                model,
                v,
                None,
                laplace=laps[0],
                inits=[lp.center for lp in laps],
                num_samples=args.samples,
                warmup_steps=args.warmup,
                num_chains=args.chains,
                full_mass=True,
                seed=args.seed,
                progress=not args.quiet,
            )
            samples = res.samples
            diag = chain_diagnostics(samples) | {
                "num_chains": args.chains,
                "num_divergences": res.num_divergences,
            }
        else:
            samples, diag = tempered_smc(
                model,
                v,
                laps[0],
                n_particles=args.particles,
                max_settle=args.settle,
                seed=args.seed,
                progress=not args.quiet,
            )
        diag |= {
            "max_abs_z": _max_abs_z(samples, truth),
            "n_modes": len(modes),
            "wall_s": time.perf_counter() - t0,
            "settings": vars(args) | {"out": str(args.out), "study": str(args.study)},
        }
        stem = args.out / args.method / _file(label)
        stem.parent.mkdir(parents=True, exist_ok=True)
        np.savez(stem.with_suffix(".npz"), **samples)
        stem.with_suffix(".json").write_text(json.dumps(diag, indent=1, default=str))
        print(
            f"{label:>16}  {args.method}  R̂ {diag['rhat_max']:.3f}  ESS bulk "
            f"{diag['ess_bulk_min']:.0f} tail {diag['ess_tail_min']:.0f}  "
            f"divergences {diag.get('num_divergences', '-')}  max|z| truth "
            f"{diag['max_abs_z']:.2f}  {diag['wall_s']:.0f} s",
            flush=True,
        )


def _max_abs_z(samples: dict, truth: dict) -> float:
    """Largest |mean − truth| / sd over the parameters (the truth only scores)."""
    z = []
    for k, x in samples.items():
        if k in truth:
            x = x.reshape(-1, x.shape[-1])
            z.append(np.abs(x.mean(0) - truth[k]) / x.std(0))
    return float(np.max(np.concatenate(z)))


def _draws_of(args, method: str, label: str) -> tuple[dict, dict] | None:
    """``(draws name → [chain, draw, comp], diagnostics)`` of a ``run`` of ``method``."""
    stem = args.out / method / _file(label)
    if not stem.with_suffix(".npz").is_file():
        return None
    diag = json.loads(stem.with_suffix(".json").read_text())
    return dict(np.load(stem.with_suffix(".npz"))), diag


def _study_draws(args, label: str) -> tuple[dict, dict] | None:
    """The study run's reported posterior draws and its design row."""
    from bayesneuron import reports

    nc = next((args.study_out / "idata").glob(f"*/{_file(label)}.nc"), None)
    if nc is None:
        return None
    row = json.loads(nc.with_suffix(".json").read_text())["row"]
    post = reports.load_inference_data(nc).posterior
    return {k: post[k].values for k in post.data_vars if k.startswith("g_")}, row


def compare(args) -> dict:
    """Compare ``--against`` (a method's run, or ``--study-out``) with ``--reference``."""
    from bayesneuron.inference.diagnostics import RHAT_MAX, min_ess

    out = {}
    for label in args.designs:
        ref = _draws_of(args, args.reference, label)
        other = (
            _study_draws(args, label) if args.study_out else _draws_of(args, args.against, label)
        )
        if ref is None or other is None:
            print(f"{label:>16}  missing a run", file=sys.stderr)
            continue
        (x_ref, d_ref), (x_oth, _) = ref, other
        dz, ratio = [], []
        for k, x in x_ref.items():
            x = x.reshape(-1, x.shape[-1])
            y = x_oth[k].reshape(-1, x.shape[-1])
            sd = x.std(0)
            dz += list(np.abs(y.mean(0) - x.mean(0)) / sd)
            ratio += list(y.std(0) / sd)
        ref_ok = (
            d_ref["rhat_max"] <= RHAT_MAX
            and min(d_ref["ess_bulk_min"], d_ref["ess_tail_min"]) >= min_ess(d_ref["num_chains"])
            and not d_ref.get("num_divergences")
        )
        res = {
            "reference": args.reference,
            "against": "study" if args.study_out else args.against,
            "max_mean_diff_sd": float(np.max(dz)),
            "sd_ratio_min": float(np.min(ratio)),
            "sd_ratio_max": float(np.max(ratio)),
            "agrees": bool(np.max(dz) <= 0.3 and 0.75 <= np.min(ratio) and np.max(ratio) <= 1.25),
            "reference_ok": bool(ref_ok),
            "reference_rhat_max": d_ref["rhat_max"],
            "reference_ess_bulk_min": d_ref["ess_bulk_min"],
            "reference_max_abs_z": d_ref.get("max_abs_z"),
        }
        out[label] = res
        print(
            f"{label:>16}  {res['against']} vs {args.reference}: |Δmean|/sd ≤ "
            f"{res['max_mean_diff_sd']:.2f}, sd ratio {res['sd_ratio_min']:.2f}–"
            f"{res['sd_ratio_max']:.2f}  {'AGREES' if res['agrees'] else 'differs'}  "
            f"({args.reference} R̂ {d_ref['rhat_max']:.3f}, ESS {d_ref['ess_bulk_min']:.0f}"
            f"{'' if ref_ok else ', NOT a valid reference'})"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["run", "compare"])
    p.add_argument("--method", choices=["nuts", "smc"], default="smc")
    p.add_argument("--reference", choices=["nuts", "smc"], default="smc")
    p.add_argument("--against", choices=["nuts", "smc"], default="nuts")
    p.add_argument("--designs", nargs="+", default=RUGGED)
    p.add_argument("--study", type=Path, default=Path(STUDY))
    p.add_argument("--study-out", type=Path, help="a study run's --out (for compare)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/rugged_posteriors"))
    p.add_argument("--particles", type=int, default=512, help="SMC particles per population")
    p.add_argument("--settle", type=int, default=60, help="SMC sweeps at β = 1, at most")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--samples", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    run(args) if args.what == "run" else compare(args)


if __name__ == "__main__":
    main()
