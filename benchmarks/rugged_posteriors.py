"""Reference samplers on the rugged soma-recorded designs of
``studies/paper_toy_identifiability`` (issue 13): NUTS and tempered SMC, each checked, and a
study's reported posterior compared with them.

    python benchmarks/rugged_posteriors.py run --method nuts|smc [--designs "[0,-1]|[0]" ...]
        [--chains 2 --warmup 200 --samples 250] [--particles 512 --settle 60]
        [--kernel walk|hmc --leapfrog 8 --max-moves 20] [--population J]
        [--device cuda] [--out benchmarks/results/rugged_posteriors]
    python benchmarks/rugged_posteriors.py settle --kernel hmc --rounds 12   # after run --population
        [--resume]   # continue smc_settled/ where an earlier settle stopped
    python benchmarks/rugged_posteriors.py compare --reference smc|nuts|smc_settled
        [--against nuts|smc | --study-out DIR | --study-reference DIR] [--json FILE]

``run``: per design, the study's data (its seed, noise and dt) and its MAP (the base values
and prior draws, the continuation windows — never the truth); then NUTS (dense mass matrix,
whitened by the best mode's Laplace approximation, chains started at the distinct modes) or
tempered SMC from the prior (two populations, :func:`bayesneuron.inference.smc.tempered_smc`).
Writes ``<method>/<design>.npz`` (draws ``[chain, draw, comp]``) and ``<method>/<design>.json``
(R̂, ESS, divergences or stages, |z| of the truth, wall time).

``settle``: the populations of ``run --population J`` continued at β = 1 with ``--kernel``
sweeps, 5 per round, until R̂ and ESS pass or ``--rounds`` are done (``smc_settled/``);
``--resume`` continues the populations of ``smc_settled/`` instead (sweep count, wall time and
R̂ of every round carried on; new seeds).

``compare``: per parameter ``|mean − mean_ref| / sd_ref`` (agreement: ≤ 0.3) and
``sd / sd_ref`` (agreement: within 25 %) of the other method's draws, or of a study run's
posterior (``DIR/idata/<run>/<design>.nc``) or its tables (``--study-reference``: its
``parameters.csv``/``designs.csv``, then also the mean contraction, the reference's against
the study's), against the reference's; with the reference's
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


def _setup(study, label: str):
    """The study's data for design ``label`` and its MAP (never the truth): ``(model, v,
    truth, modes, laps)``, the Laplace approximations at the modes, best first."""
    from bayesneuron.inference.fit import fit_map
    from bayesneuron.inference.laplace import laplace_map
    from bayesneuron.studies.experiment import build_experiment

    inf = study.infers[0]
    design = next(d for d in inf.designs if d.label == label)
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
    return model, v, truth, modes, [laplace_map(model, v, m, progress=False) for m in modes]


def _on_device(study, label: str, model, v, laps, device: str | None):
    """The sampler's ``(model, v, laps)`` on ``device``: the same data and Laplace
    approximations (found on the CPU) with the model built there (on CUDA, ``simulate``
    runs the Triton kernel; building it simulates the data once more, unused); as given
    without ``--device``."""
    import dataclasses

    from bayesneuron.inference.space import ParameterSpace
    from bayesneuron.studies.experiment import build_experiment

    if device is None:
        return model, v, laps
    inf = study.infers[0]
    design = next(d for d in inf.designs if d.label == label)
    model = build_experiment(study, design, study.priors, device, inf.noise_sigma)[0]
    space = ParameterSpace(model)
    moved = [
        dataclasses.replace(lp, space=space, center=lp.center.to(device), cov=lp.cov.to(device))
        for lp in laps
    ]
    return model, v.to(device), moved


def run(args) -> None:
    """Run ``args.method`` on every design; write its draws and diagnostics. With
    ``--population J`` (SMC): population ``J`` alone (seed ``seed + J``, no settling at β = 1),
    to ``smc/<design>.pop<J>.*``; ``merge`` joins such files."""
    import torch

    from bayesneuron.inference.diagnostics import chain_diagnostics
    from bayesneuron.inference.nuts import run_nuts
    from bayesneuron.inference.smc import tempered_smc
    from bayesneuron.studies.config import load_study

    torch.set_num_threads(args.threads)
    study = load_study(args.study, smoke=args.smoke)
    args.out.mkdir(parents=True, exist_ok=True)
    for label in args.designs:
        t0 = time.perf_counter()
        model, v, truth, modes, laps = _setup(study, label)
        model, v, laps = _on_device(study, label, model, v, laps, args.device)
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
            one = args.population is not None
            samples, diag = tempered_smc(
                model,
                v,
                laps[0],
                num_samples=args.particles,
                n_particles=args.particles,
                n_populations=1 if one else args.chains,
                max_settle=0 if one else args.settle,
                kernel=args.kernel,
                leapfrog_steps=args.leapfrog,
                max_moves=args.max_moves,
                seed=args.seed + (args.population or 0),
                max_seconds=args.max_seconds,
                progress=not args.quiet,
            )
        diag |= {
            "max_abs_z": _max_abs_z(samples, truth),
            "n_modes": len(modes),
            "wall_s": time.perf_counter() - t0,
            "settings": vars(args) | {"out": str(args.out), "study": str(args.study)},
        }
        tag = "" if args.population is None else f".pop{args.population}"
        _save(args.out / args.method / (_file(label) + tag), samples, diag)
        print(
            f"{label:>16}  {args.method}{tag}  R̂ {diag['rhat_max']:.3f}  ESS bulk "
            f"{diag['ess_bulk_min']:.0f} tail {diag['ess_tail_min']:.0f}  "
            f"divergences {diag.get('num_divergences', '-')}  max|z| truth "
            f"{diag['max_abs_z']:.2f}  {diag['wall_s']:.0f} s"
            + (f"  OUT OF TIME at β {diag['beta_final']:.3g}" if diag.get("out_of_time") else ""),
            flush=True,
        )


def _save(stem: Path, samples: dict, diag: dict) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    np.savez(str(stem) + ".npz", **samples)
    Path(str(stem) + ".json").write_text(json.dumps(diag, indent=1, default=str))


def merge(args) -> None:
    """Join the single-population SMC runs ``smc/<design>.pop*`` (run side by side, one per
    process) into ``smc/<design>.*``: the populations as chains, checked like ``run``'s."""
    from bayesneuron.inference.diagnostics import chain_diagnostics
    from bayesneuron.studies.config import load_study
    from bayesneuron.studies.experiment import build_experiment

    study = load_study(args.study, smoke=args.smoke)
    inf = study.infers[0]
    for label in args.designs:
        parts = sorted((args.out / "smc").glob(_file(label) + ".pop*.npz"))
        if len(parts) < 2:
            print(f"{label:>16}  fewer than 2 populations", file=sys.stderr)
            continue
        draws = [dict(np.load(f)) for f in parts]
        diags = [json.loads(f.with_suffix(".json").read_text()) for f in parts]
        samples = {k: np.concatenate([d[k] for d in draws]) for k in draws[0]}
        design = next(d for d in inf.designs if d.label == label)
        truth = build_experiment(study, design, study.priors, "cpu", inf.noise_sigma)[2]
        diag = chain_diagnostics(samples) | {
            "num_chains": len(parts),
            "beta_final": min(d["beta_final"] for d in diags),
            "n_stages": max(d["n_stages"] for d in diags),
            "log_evidence": " ".join(d["log_evidence"] for d in diags),
            "stage_correlation_max": max(d["stage_correlation_max"] for d in diags),
            "n_simulations": sum(d["n_simulations"] for d in diags),
            "wall_s": max(d["wall_s"] for d in diags),
            "max_abs_z": _max_abs_z(samples, truth),
            "populations": [f.name for f in parts],
        }
        _save(args.out / "smc" / _file(label), samples, diag)
        print(
            f"{label:>16}  smc ({len(parts)} populations of {draws[0]['g_na'].shape[1]})  "
            f"R̂ {diag['rhat_max']:.3f}  ESS bulk {diag['ess_bulk_min']:.0f}  log Z "
            f"{diag['log_evidence']}  max|z| truth {diag['max_abs_z']:.2f}  "
            f"{diag['wall_s']:.0f} s (slowest population)",
            flush=True,
        )


def settle(args) -> None:
    """Continue the populations of ``smc/<design>.pop*`` (``run --population J``) at β = 1:
    ``--rounds`` rounds of 5 ``--kernel`` sweeps of every population, R̂ and ESS over them
    after each round, until they pass; the result to ``smc_settled/<design>.*``."""
    import torch

    from bayesneuron.inference import smc
    from bayesneuron.inference.diagnostics import chain_diagnostics
    from bayesneuron.inference.whitened import WhitenedModel
    from bayesneuron.studies.config import load_study

    torch.set_num_threads(args.threads)
    study = load_study(args.study, smoke=args.smoke)
    for label in args.designs:
        t0 = time.perf_counter()
        parts, before = _settle_sources(args, label)
        model, v, truth, _, laps = _setup(study, label)
        wm = WhitenedModel(model, v, laps[0])
        runs, kern = [], smc._Kernel(args.kernel, args.leapfrog)
        for f, j in parts:
            g = {k: torch.as_tensor(a[j]) for k, a in np.load(f).items() if k in model.free}
            z = wm.whiten(wm.space.unconstrain(g))
            with torch.no_grad():
                lp, ll = wm.log_prior(z), smc._loglik(wm, z)
            scale = kern.initial_scale(z.shape[1])
            runs.append(
                {
                    "z": z,
                    "lp": lp,
                    "ll": ll,
                    "beta": 1.0,
                    "scale": scale,
                    "n_sim": 0,
                    "accept": np.nan,
                }
            )  # accept: NaN until a sweep (none where R̂ passes already)
        target, sweeps = (
            (wm.log_prior, lambda z, wm=wm: smc._loglik(wm, z)),
            before.get("settle_sweeps", 0),
        )
        trace = list(before.get("rhat_by_round", []))
        for r in range(args.rounds):
            seed = args.seed + 100 + r + (10_000 if args.resume else 0)  # a resumed run: new draws
            sweeps += smc._settle(runs, target, kern, seed, 5)
            with torch.no_grad():
                z = torch.stack([x["z"] for x in runs])
                samples = {k: x.cpu().numpy() for k, x in wm.params(z).items()}
            diag = chain_diagnostics(samples) | {
                "num_chains": len(runs), "kernel": args.kernel, "settle_sweeps": sweeps,
                "accept_final": float(np.mean([x["accept"] for x in runs])),
                "max_abs_z": _max_abs_z(samples, truth),
                "wall_s": before.get("wall_s", 0.0) + time.perf_counter() - t0,
                "populations": before.get("populations", [f.name for f, _ in parts]),
            }  # fmt: skip
            trace.append(round(float(diag["rhat_max"]), 4))
            diag["rhat_by_round"] = trace
            _save(args.out / "smc_settled" / _file(label), samples, diag)
            print(
                f"{label:>16}  settle round {r + 1}: {sweeps} sweeps  R̂ {diag['rhat_max']:.3f}"
                f"  ESS bulk {diag['ess_bulk_min']:.0f} tail {diag['ess_tail_min']:.0f}  "
                f"max|z| truth {diag['max_abs_z']:.2f}  {diag['wall_s']:.0f} s",
                flush=True,
            )
            if diag["rhat_max"] <= 1.01 and min(diag["ess_bulk_min"], diag["ess_tail_min"]) >= 100:
                break


def _settle_sources(args, label: str) -> tuple[list[tuple[Path, int]], dict]:
    """``([(npz, population index)], earlier diagnostics)``: the ``run --population J`` files,
    or with ``--resume`` the populations of ``smc_settled/<design>`` and its diagnostics."""
    if not args.resume:
        return [(f, 0) for f in sorted((args.out / "smc").glob(_file(label) + ".pop*.npz"))], {}
    stem = args.out / "smc_settled" / _file(label)
    if not Path(str(stem) + ".npz").exists():
        raise SystemExit(f"--resume: no {stem}.npz (run settle first)")
    n = next(iter(np.load(str(stem) + ".npz").values())).shape[0]
    before = json.loads(Path(str(stem) + ".json").read_text())
    return [(Path(str(stem) + ".npz"), j) for j in range(n)], before


def reweight(args) -> None:
    """Importance sampling from a Student-t mixture fitted to a ``run``'s draws (the
    populations pooled), refitted to its own weighted draws for ``--rounds`` rounds: can a
    proposal that covers every region SMC found weigh them right? k̂ and ESS per round."""
    import torch

    from bayesneuron.inference.diagnostics import khat_threshold, psis_weights
    from bayesneuron.inference.importance import fit_mixture, log_target
    from bayesneuron.inference.whitened import WhitenedModel
    from bayesneuron.studies.config import load_study

    torch.set_num_threads(args.threads)
    study = load_study(args.study, smoke=args.smoke)
    out = {}
    for label in args.designs:
        got = _draws_of(args, args.method, label)
        if got is None:
            print(f"{label:>16}  missing a {args.method} run", file=sys.stderr)
            continue
        model, v, truth, _, laps = _setup(study, label)
        wm = WhitenedModel(model, v, laps[0])
        x = {k: torch.as_tensor(a.reshape(-1, a.shape[-1])) for k, a in got[0].items()}
        z = wm.whiten(wm.space.unconstrain({k: x[k] for k in model.free}))
        flat = np.full(z.shape[0], -np.log(z.shape[0]))
        seeded = fit_mixture(z, flat, args.components, args.seed)
        q, gen, rounds = seeded, torch.Generator().manual_seed(args.seed), []
        for r in range(args.rounds):
            zq = q.sample(args.proposals, gen)
            lw, k = psis_weights(log_target(wm, zq) - q.log_prob(zq))
            w = np.exp(lw - lw.max())
            w /= w.sum()
            draws = wm.params(
                zq[torch.as_tensor(np.random.default_rng(r).choice(len(w), 1000, p=w))]
            )
            rounds.append(
                {"khat": k, "ess": float(1 / np.sum(w**2)), "max_abs_z": _max_abs_z(
                    {n: d[None].numpy() for n, d in draws.items()}, truth)}
            )  # fmt: skip
            print(
                f"{label:>16}  round {r}: k̂ {k:.2f} (threshold "
                f"{khat_threshold(args.proposals):.2f})  ESS {rounds[-1]['ess']:.0f}  "
                f"max|z| truth {rounds[-1]['max_abs_z']:.2f}",
                flush=True,
            )
            q = fit_mixture(zq, lw, args.components, args.seed + r + 1).mix(seeded, 0.1)
        out[label] = {
            "from": args.method,
            "median_norm_whitened": float(z.norm(dim=1).median()),
            "rounds": rounds,
        }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


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


def _moments(x, n_comp: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, sd)`` per compartment of draws ``[…, comp]`` or of a ``(mean, sd)`` pair."""
    if isinstance(x, tuple):
        return x
    x = x.reshape(-1, n_comp)
    return x.mean(0), x.std(0)


def _study_table(folder: Path, label: str) -> tuple[dict, dict] | None:
    """A study's reported posterior for ``label`` from its result tables (``parameters.csv``,
    ``designs.csv`` of a run or of its committed ``reference/``): name → ``(mean, sd)`` per
    compartment, and its design row with the prior variances (``prior_var``)."""
    import pandas as pd

    par, des = pd.read_csv(folder / "parameters.csv"), pd.read_csv(folder / "designs.csv")
    par = par[par.design == label]
    stim, rec = label.split("|")
    rows = des[(des.stim == stim) & (des.rec == rec)]
    if par.empty or rows.empty:
        return None
    name = par.parameter.str.split("[").str[0]
    comp = par.parameter.str.extract(r"\[(\d+)\]")[0].astype(int)
    out, prior_var = {}, {}
    for k in name.unique():
        sel = par[name == k].assign(c=comp[name == k]).sort_values("c")
        out[k] = (sel["mean"].to_numpy(), sel["sd"].to_numpy())
        prior_var[k] = sel["prior_sd"].to_numpy() ** 2
    return out, rows.iloc[0].to_dict() | {"prior_var": prior_var}


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
        if args.study_reference:
            other = _study_table(args.study_reference, label)
        elif args.study_out:
            other = _study_draws(args, label)
        else:
            other = _draws_of(args, args.against, label)
        if ref is None or other is None:
            print(f"{label:>16}  missing a run", file=sys.stderr)
            continue
        (x_ref, d_ref), (x_oth, row) = ref, other
        dz, ratio, contraction = [], [], []
        for k, x in x_ref.items():
            x = x.reshape(-1, x.shape[-1])
            mean, sd = _moments(x_oth[k], x.shape[-1])
            dz += list(np.abs(mean - x.mean(0)) / x.std(0))
            ratio += list(sd / x.std(0))
            if args.study_reference:
                contraction += list(1 - x.var(0) / row["prior_var"][k])
        ref_ok = (
            d_ref["rhat_max"] <= RHAT_MAX
            and min(d_ref["ess_bulk_min"], d_ref["ess_tail_min"]) >= min_ess(d_ref["num_chains"])
            and not d_ref.get("num_divergences")
        )
        res = {
            "reference": args.reference,
            "against": "study" if args.study_out or args.study_reference else args.against,
            "max_mean_diff_sd": float(np.max(dz)),
            "sd_ratio_min": float(np.min(ratio)),
            "sd_ratio_max": float(np.max(ratio)),
            "agrees": bool(np.max(dz) <= 0.3 and 0.75 <= np.min(ratio) and np.max(ratio) <= 1.25),
            "reference_ok": bool(ref_ok),
            "reference_rhat_max": d_ref["rhat_max"],
            "reference_ess_bulk_min": d_ref["ess_bulk_min"],
            "reference_max_abs_z": d_ref.get("max_abs_z"),
        }
        if contraction:  # the study's reported mean contraction against the reference's
            res |= {
                "reference_mean_contraction": float(np.mean(contraction)),
                "study_mean_contraction": row["mean_contraction"],
                "study_posterior_method": row["posterior_method"],
                "study_max_abs_z": row["max_abs_z"],
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
    p.add_argument("what", choices=["run", "merge", "settle", "compare", "reweight"])
    p.add_argument("--method", choices=["nuts", "smc"], default="smc")
    p.add_argument("--reference", choices=["nuts", "smc", "smc_settled"], default="smc")
    p.add_argument("--against", choices=["nuts", "smc"], default="nuts")
    p.add_argument("--designs", nargs="+", default=RUGGED)
    p.add_argument("--study", type=Path, default=Path(STUDY))
    p.add_argument("--study-out", type=Path, help="a study run's --out (for compare)")
    p.add_argument(
        "--study-reference", type=Path, help="compare: a study's tables (e.g. its reference/)"
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/rugged_posteriors"))
    p.add_argument("--particles", type=int, default=512, help="SMC particles per population")
    p.add_argument("--settle", type=int, default=60, help="SMC sweeps at β = 1, at most")
    p.add_argument("--kernel", choices=["walk", "hmc"], default="walk", help="SMC move")
    p.add_argument("--leapfrog", type=int, default=8, help="SMC: leapfrog steps per HMC sweep")
    p.add_argument("--max-moves", type=int, default=20, help="SMC: sweeps per stage, at most")
    p.add_argument(
        "--max-seconds", type=float, help="SMC: wall-time budget; stops where it is, not ok"
    )
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--samples", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--population", type=int, help="SMC: run this population alone (merge)")
    p.add_argument("--components", type=int, default=8, help="reweight: mixture components")
    p.add_argument("--proposals", type=int, default=4000, help="reweight: draws per round")
    p.add_argument(
        "--rounds", type=int, default=4, help="reweight: rounds; settle: rounds of 5 sweeps"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--device", help="run: where the sampler simulates, e.g. cuda (the MAP: on the CPU)"
    )
    p.add_argument("--json", type=Path)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--resume", action="store_true", help="settle: continue smc_settled/")
    p.add_argument("--smoke", action="store_true", help="the study's [smoke] sizes (a test)")
    args = p.parse_args(argv)
    whats = {"run": run, "merge": merge, "settle": settle, "compare": compare}
    (whats | {"reweight": reweight})[args.what](args)


if __name__ == "__main__":
    main()
