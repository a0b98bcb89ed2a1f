"""The ``[[infer]]`` part of a study: a posterior per design, its metrics, a ranking, a report.

Per design: MAP fits (every design in one batch, multi-start Levenberg–Marquardt), the Laplace
approximation at the MAP, then the run's method (SVI with a guide, NUTS, or the Laplace draws
themselves); identifiability metrics (:mod:`bayesneuron.inference.metrics`) against the ground truth; the log-det
Fisher information at the MAP; an InferenceData (posterior, prior, posterior predictive,
per-trace log-likelihood, observed data, truth) saved as netCDF. Then ``designs.csv``,
``parameters.csv``, ``ranking.csv``, heatmaps, forest plots and ``report.html``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bayesneuron.inference.fit import fit_map
from bayesneuron.inference.laplace import gaussian_log_likelihood, laplace
from bayesneuron.inference.metrics import identifiability
from bayesneuron.inference.posterior import checked_posterior
from bayesneuron.inference.space import prior_draws
from bayesneuron.studies.output import safe_label, write_csv
from bayesneuron.studies.ranking import CRITERIA, rank_designs
from bayesneuron.studies.report import rebuild_report, write_report
from bayesneuron.studies.tables import column_key, plain

__all__ = [
    "CRITERIA",
    "infer_design",
    "make_study",
    "rank_designs",
    "rebuild_report",
    "run_infers",
]


def _prior_draws(model, n: int, seed: int) -> dict[str, np.ndarray]:
    return {k: x.cpu().numpy() for k, x in prior_draws(model, n, seed).items()}


def _predictions(model, v, samples: dict, seed: int, chunk: int = 100):
    """Posterior predictive draws ``[draw, trace, n_rec, time]`` and the per-trace
    log-likelihood ``[draw, trace]``, from one simulation per draw (each draw's ``sigma``
    ``[draw]`` when the model infers it)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.as_tensor(v, dtype=model.dtype, device=model.device)
    ppc, ll = [], []
    n = len(next(iter(samples.values())))
    for i in range(0, n, chunk):
        part = {k: torch.as_tensor(x[i : i + chunk], dtype=model.dtype) for k, x in samples.items()}
        with torch.no_grad():
            sim = model.simulate({k: part[k] for k in model.free})
        sigma = model.sigma if model.sigma is not None else part["sigma"]
        ll.append(gaussian_log_likelihood(sim, v, sigma))
        noise = torch.randn(sim.shape, generator=gen, dtype=sim.dtype).to(sim.device)
        scale = sigma if model.sigma is not None else sigma[:, None, None, None]
        ppc.append(sim + scale * noise)
    return torch.cat(ppc).cpu().numpy(), torch.cat(ll).cpu().numpy()


def _posterior(inf, model, v, mp, seed: int, progress: bool):
    """Draws name → ``[chain, draw, comp]`` for the metrics, sample stats, extras, ELBO
    history: the first method of the run's ladder whose checks pass
    (:func:`~bayesneuron.inference.posterior.checked_posterior`), started from the MAP's
    distinct modes, or the last one tried, flagged ``posterior_ok = False``."""
    res = checked_posterior(
        model,
        v,
        mp.modes(max_modes=4, within=5.0),  # distinct optima within 5 nats of the best
        ladder=inf.methods(),
        num_samples=max(1000, inf.num_samples) if inf.method != "nuts" else inf.num_samples,
        psis_samples=inf.psis_samples,
        svi=dict(
            num_particles=inf.num_particles,
            max_steps=inf.max_steps,
            min_steps=min(100, inf.max_steps),
            window=min(50, max(1, inf.max_steps // 2)),
        ),
        nuts=dict(
            warmup_steps=inf.warmup_steps, num_chains=inf.num_chains, workers=inf.chain_workers
        ),
        smc=dict(n_particles=inf.smc_particles, kernel=inf.smc_kernel),
        adaptive=dict(rounds=inf.adaptive_rounds),
        seed=seed,
        progress=progress,
    )
    diag = res.diagnostics
    extras = {
        "posterior_method": res.method,
        "posterior_ok": bool(res.ok),
        "n_modes": res.n_modes,
        "laplace_hessian": res.laplace.hessian,
        "elbo": diag.get("elbo", math.nan),
        **{k: diag[k] for k in _DIAGNOSTICS if k in diag},
        "attempts": diag["attempts"],
    }
    return res.samples, res.sample_stats, extras, res.elbo


_DIAGNOSTICS = (
    "khat",
    "khat_threshold",
    "iw_elbo",
    "iw_gap",
    "ess",
    "rhat_max",
    "ess_bulk_min",
    "ess_tail_min",
    "num_divergences",
    "log_evidence",
    "log_evidence_spread",
    "n_stages",
    "rounds",
    "khat_rounds",
    "map_fit_z",
    "map_fit_p",
)


def _attr(x):
    """A netCDF attribute (no booleans there)."""
    return int(x) if isinstance(x, bool | np.bool_) else x


def _truth_init(model, truth, n_starts: int, seed: int) -> dict[str, np.ndarray]:
    """MAP starts for ``map_init = "truth"``: row 0 the ground truth, then prior draws."""
    draws = _prior_draws(model, n_starts - 1, seed)
    return {
        k: np.concatenate([np.asarray(truth[k], dtype=np.float64)[None], draws[k]])
        for k in model.free
    }


def infer_design(study, inf, j: int, device="cpu", progress=False) -> dict:
    """Design ``inf.designs[j]`` of an ``[[infer]]`` run, start to finish, in one process:
    data, MAP, posterior, metrics, InferenceData. Returns ``{"row", "parameters", "idata",
    "elbo"}`` — the unit of work an executor ships (a function of its arguments only)."""
    from bayesneuron.studies.config import build_experiment

    t0 = time.perf_counter()
    priors = inf.priors or study.priors
    model, v, truth = build_experiment(study, inf.designs[j], priors, device, inf.noise_sigma)
    mp = _map(inf, model, v, truth, study.seed, progress)
    draws, stats, extras, elbo_hist = _posterior(inf, model, v, mp, study.seed + j, progress)
    met = identifiability(draws, model, truth)
    keep = {k: x[:, : inf.num_samples] for k, x in draws.items()}
    stats = {k: np.asarray(x)[:, : inf.num_samples] for k, x in stats.items()}
    row = _design_row(inf, model, mp, met, extras) | _sigma_columns(draws, truth)
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    row = _ordered(plain(row))
    idata = _inference_data(study, inf, j, model, v, truth, keep, stats, row)
    label = model.design.label
    params = [{"run": inf.name, "design": label, **p} for p in met.per_parameter()]
    return {"row": row, "parameters": params, "idata": idata, "elbo": elbo_hist}


def _map(inf, model, v, truth, seed: int, progress: bool):
    """The MAP each posterior starts from: at the truth and prior draws (``map_init =
    "truth"``, no continuation) or at the base values and prior draws."""
    init = None
    if inf.map_init == "truth":  # start 0 at the truth, the others at prior draws
        init = _truth_init(model, truth, inf.map_starts, seed)
    return fit_map(
        model,
        v,
        truth=truth,
        init=init,
        horizons=_horizons(inf, init),
        windows=inf.map_windows if init is None else (),  # from the truth: no continuation
        n_starts=inf.map_starts,
        max_steps=inf.map_steps,
        seed=seed,
        progress=progress,
    )


def _horizons(inf, init) -> tuple[int, ...] | None:
    """The MAP's multiple-shooting horizons: ``map_horizons`` if given; none from the truth
    or with time windows (see ``map_windows``); else the fit's default (None)."""
    if inf.map_horizons is not None:
        return inf.map_horizons
    return () if init is not None or inf.map_windows else None


def _design_row(inf, model, mp, met, extras: dict) -> dict:
    """A ``designs.csv`` row: the design, its metrics, per-parameter contractions
    (``contraction_<param>_<comp>``) and the MAP's ground-truth errors (``map_gte_<key>``)."""
    summ = met.summary()
    stim, rec = model.design.label.split("|")
    gte = mp.gte()
    extras = dict(extras)
    return {
        "stim": stim,
        "rec": rec,
        "guide": inf.guide if inf.method == "svi" else inf.method,
        **summ,
        "logdet_fisher": laplace(model, mp.params).logdet_fisher,
        "elbo": extras.pop("elbo"),
        "run": inf.name,
        "method": inf.method,
        **{
            f"contraction_{k}_{i}": float(c)
            for k, cs in _split(met, model).items()
            for i, c in enumerate(cs)
        },
        **{f"map_gte_{column_key(k)}": gte.get(k, math.nan) for k in model.free},
        "map_steps": mp.steps,
        "map_converged": int(np.sum(mp.converged)),  # starts its stopping rule ended
        "n_traces": model.n_trace,
        "sigma_mv": model.sigma,
        **extras,
    }


def _sigma_columns(draws: dict, truth: dict) -> dict:
    """An inferred noise sd's posterior: ``sigma_mv`` (mean), ``sigma_sd_mv`` and whether the
    data's noise sd lies in its central 90 % interval (``sigma_covered_90``)."""
    if "sigma" not in draws:
        return {}
    x = np.asarray(draws["sigma"], dtype=np.float64).reshape(-1)
    lo, hi = np.quantile(x, [0.05, 0.95])
    out = {"sigma_mv": float(x.mean()), "sigma_sd_mv": float(x.std(ddof=1))}
    if "sigma" in truth:
        out["sigma_covered_90"] = bool(lo <= truth["sigma"] <= hi)
    return out


def _ordered(row: dict) -> dict:
    """:data:`DESIGN_COLUMNS` first, then run, method, max_rel_sd, sloppiest_sd, the rest."""
    from bayesneuron.studies.config import DESIGN_COLUMNS

    first = [*DESIGN_COLUMNS, "run", "method", "max_rel_sd", "sloppiest_sd"]
    head = {k: row[k] for k in first if k in row}
    return head | {k: x for k, x in row.items() if k not in head}


def _inference_data(study, inf, j, model, v, truth, keep, stats, row):
    """Posterior, prior, posterior predictive, log-likelihood, data and truth of a design."""
    from bayesneuron import reports
    from bayesneuron.studies.config import DESIGN_COLUMNS

    flat = {k: x.reshape(-1, *x.shape[2:]) for k, x in keep.items()}
    n_chain, n_draw = next(iter(keep.values())).shape[:2]
    ppc, ll = _predictions(model, v, flat, study.seed + j)
    return reports.to_inference_data(
        model,
        keep,
        prior={k: x[None] for k, x in _prior_draws(model, n_draw, study.seed).items()},
        posterior_predictive={"v_obs": ppc.reshape(n_chain, n_draw, *model.obs_shape)},
        log_likelihood={"v_obs": ll.reshape(n_chain, n_draw, model.n_trace)},
        observed=v,
        sample_stats=stats or None,
        truth=truth,
        attrs={
            "inference": f"{inf.method}:{inf.guide}" if inf.method == "svi" else inf.method,
            "study": study.name,
            "run": inf.name,
            **{k: _attr(row[k]) for k in DESIGN_COLUMNS[3:]},
        },
    )


def run_infers(study, out: Path, *, device="cpu", resume=False, progress=True, executor=None):
    """Run every ``[[infer]]`` of ``study`` into ``out``, one task per design through
    ``executor`` (default: this process, in order); returns the ``designs.csv`` rows.
    ``designs.csv`` grows as designs finish; with ``resume`` the designs whose results are in
    ``out/idata`` are loaded, not run again."""
    from bayesneuron.studies.executors import LocalExecutor

    executor = executor or LocalExecutor()
    results = {}
    for inf in study.infers:
        paths = _paths(out, inf)
        todo = _load_done(inf, paths, results) if resume else list(range(len(inf.designs)))
        if progress:
            what = f"{inf.method}{' (' + inf.guide + ')' if inf.method == 'svi' else ''}"
            _say(
                f"[{study.name}] {inf.name}: MAP then {what} for {len(todo)} design(s) "
                f"({len(inf.designs) - len(todo)} done before) on {executor}"
            )
        tasks = {j: (infer_design, (study, inf, j, device)) for j in todo}
        for j, res in executor.run(tasks):
            _save_design(res, *paths[j])
            results[(inf.name, j)] = res
            row = res["row"]
            if progress:
                _say(
                    f"  {inf.designs[j].label:>16}  {row.get('posterior_method', '')}"
                    f"{not_ok_mark(row)}  contraction mean {row['mean_contraction']:.3f}"
                    f" min {row['min_contraction']:.3f}  max|z| {row['max_abs_z']:.2f}  "
                    f"{row['wall_s']:.1f} s"
                )
            done_rows = [results[k]["row"] for k in sorted(results, key=_order(study))]
            write_csv(out / "designs.csv", done_rows)  # partial results stay usable
    return _finish(study, out, results)


def not_ok_mark(row: dict) -> str:
    """`` — NOT OK …`` for a design row whose posterior failed its checks, else ``""``: every
    console line that prints a posterior's numbers says so."""
    return (
        "" if bool(row.get("posterior_ok", True)) else " — NOT OK, its checks failed (not a result)"
    )


def _paths(out: Path, inf) -> list[tuple[Path, Path]]:
    """Per design of ``inf``: its InferenceData file and its rows (JSON), in ``out/idata``."""
    folder = out / "idata" / inf.name
    folder.mkdir(parents=True, exist_ok=True)
    return [
        (folder / f"{safe_label(d.label)}.nc", folder / f"{safe_label(d.label)}.json")
        for d in inf.designs
    ]


def _load_done(inf, paths, results: dict) -> list[int]:
    """Load the designs of ``inf`` finished before into ``results``; the others' indices."""
    from bayesneuron import reports

    todo = []
    for j, (nc, done) in enumerate(paths):
        if nc.is_file() and done.is_file():
            saved = json.loads(done.read_text())
            results[(inf.name, j)] = {
                **saved,
                "idata": reports.load_inference_data(nc),
                "elbo": None,
            }
        else:
            todo.append(j)
    return todo


def _save_design(res: dict, nc: Path, done: Path) -> None:
    from bayesneuron import reports

    reports.save_inference_data(res["idata"], nc)
    done.write_text(json.dumps({"row": res["row"], "parameters": res["parameters"]}, default=_num))


def _finish(study, out: Path, results: dict) -> list[dict]:
    """``designs.csv``, ``parameters.csv``, ``ranking.csv``, figures and ``report.html``."""
    keys = sorted(results, key=_order(study))
    rows = [results[k]["row"] for k in keys]
    write_csv(out / "designs.csv", rows)
    write_csv(out / "parameters.csv", [p for k in keys for p in results[k]["parameters"]])
    ranking = rank_designs(rows)
    write_csv(out / "ranking.csv", ranking)
    idatas = {(r, _label(study, r, j)): results[(r, j)]["idata"] for r, j in keys}
    elbos = {
        (r, _label(study, r, j)): results[(r, j)]["elbo"]
        for r, j in keys
        if results[(r, j)]["elbo"] is not None
    }
    from bayesneuron.studies.morphology import infer_morphology

    infer_morphology(study, out, rows)  # before the report, which shows them
    write_report(study, out, rows, ranking, idatas, elbos)
    return rows


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _label(study, run: str, j: int) -> str:
    return next(i for i in study.infers if i.name == run).designs[j].label


def _order(study):
    names = [i.name for i in study.infers]
    return lambda key: (names.index(key[0]), key[1])


def _split(met, model) -> dict[str, np.ndarray]:
    return dict(zip(model.free, np.split(met.contraction, len(model.free))))


def _num(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


def make_study(
    designs,
    *,
    method: str = "svi",
    guide: str = "mvn",
    name: str = "bayesneuron",
    question: str = "",
    run: str = "posterior",
    preset: str = "paper_toy",
    free=None,
    seed: int = 20230619,
    n_traces: int = 20,
    noise_sigma: float = 1.0,
    sigma: float | str = 1.0,
    priors: str = "paper",
    dt: float | None = None,
    backend: str = "auto",
    num_particles: int = 4,
    max_steps: int = 300,
    num_samples: int = 200,
    map_starts: int = 4,
    map_steps: int = 20,
    map_init: str = "starts",
    warmup_steps: int = 100,
    num_chains: int = 1,
    chain_workers: int = 1,
):
    """A :class:`~bayesneuron.studies.config.Study` with one ``[[infer]]`` run, built in code
    instead of from a ``config.toml`` and checked by the same rules (a
    :class:`~bayesneuron.studies.config.StudyError` says what is wrong before any work is done).

    ``designs``: ``"grid"`` (or a preset's named list such as ``"paper9"``), a list of labels
    (``["all|all", "[0,-1]|all"]``) or of :class:`~bayesneuron.Design`. ``dt`` defaults to the
    preset's. ``free``: the parameters to infer (e.g. ``["g_na", "g_k", "g_l"]``; default the
    preset's, ``g_na`` and ``g_k``). ``sigma``: the model's noise sd in mV, or ``"infer"``.
    The other defaults are the quickstart's: 20 noisy traces, SVI with a multivariate-normal
    guide, the MAP from the base values and 3 prior draws (``map_init="truth"`` starts it at
    the ground truth instead, for local analyses only).

    Example:
        >>> study = make_study(["all|all"], method="laplace", n_traces=5)
        >>> infer_design(study, study.infers[0], 0)["row"]["mean_contraction"]  # doctest: +SKIP
    """
    from bayesneuron.protocol.design import Design
    from bayesneuron.studies.config import StudyError, study_from_config

    if not isinstance(designs, str):
        designs = [d.label if isinstance(d, Design) else str(d) for d in designs]
        if not designs:
            raise StudyError("no designs given; name at least one, e.g. 'all|all'")
    model = {"sigma": sigma, "priors": priors, "backend": backend}
    if dt is not None:
        model["dt"] = dt
    if free is not None:
        model["free"] = [free] if isinstance(free, str) else list(free)
    infer = dict(
        name=run,
        method=method,
        guide=guide,
        designs=designs,
        num_particles=num_particles,
        max_steps=max_steps,
        num_samples=num_samples,
        map_starts=map_starts,
        map_steps=map_steps,
        map_init=map_init,
        warmup_steps=warmup_steps,
        num_chains=num_chains,
        chain_workers=chain_workers,
    )
    raw = {
        "study": {"name": name, "question": question},
        "experiment": dict(preset=preset, seed=seed, n_traces=n_traces, noise_sigma=noise_sigma),
        "model": model,
        "infer": [infer],
    }
    return study_from_config(_plain(raw), source="make_study()")


def _plain(x):
    """``x`` with numpy scalars as Python numbers, through dicts and lists (as TOML gives)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x
