"""The ``[[infer]]`` part of a study: a posterior per design, its metrics, a ranking, a report.

Per design: MAP fits (every design in one batch, multi-start Levenberg–Marquardt), the Laplace
approximation at the MAP, then the run's method (SVI with a guide, NUTS, or the Laplace draws
themselves); identifiability metrics (:mod:`.metrics`) against the ground truth; the log-det
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
from bayesneuron.inference.laplace import laplace, laplace_map
from bayesneuron.inference.metrics import identifiability
from bayesneuron.inference.nuts import run_nuts
from bayesneuron.inference.svi import fit_svi
from bayesneuron.studies.output import safe_label, write_csv

__all__ = ["infer_design", "make_study", "rank_designs", "rebuild_report", "run_infers"]

CRITERIA = (  # column, better, what it measures
    ("logdet_fisher", "max", "log-det Fisher information (volume of information)"),
    ("max_rel_sd", "min", "worst-case relative posterior sd (the least determined parameter)"),
    ("mean_contraction", "max", "mean posterior contraction"),
)


def _prior_draws(model, n: int, seed: int) -> dict[str, np.ndarray]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {k: model.priors[k].sample((n,)).cpu().numpy() for k in model.free}


def _predictions(model, v, samples: dict, seed: int, chunk: int = 100):
    """Posterior predictive draws ``[draw, trace, n_rec, time]`` and the per-trace
    log-likelihood ``[draw, trace]``, from one simulation per draw."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.as_tensor(v, dtype=model.dtype, device=model.device)
    ppc, ll = [], []
    n = len(next(iter(samples.values())))
    for i in range(0, n, chunk):
        part = {k: torch.as_tensor(x[i : i + chunk], dtype=model.dtype) for k, x in samples.items()}
        with torch.no_grad():
            sim = model.simulate(part)
        r = (sim - v) / model.sigma
        m = r.shape[-1] * r.shape[-2]
        ll.append(
            -0.5 * r.pow(2).sum((-1, -2)) - m * math.log(model.sigma * math.sqrt(2 * math.pi))
        )
        noise = torch.randn(sim.shape, generator=gen, dtype=sim.dtype).to(sim.device)
        ppc.append(sim + model.sigma * noise)
    return torch.cat(ppc).cpu().numpy(), torch.cat(ll).cpu().numpy()


def _posterior(inf, model, v, mp_params, seed: int, progress: bool):
    """Draws name → ``[chain, draw, comp]`` for the metrics, sample stats, extras."""
    lap = laplace_map(model, v, mp_params)
    extras = {"laplace_hessian": lap.hessian}
    if inf.method == "svi":
        fit = fit_svi(
            model,
            v,
            mp_params,
            guide=inf.guide,
            num_particles=inf.num_particles,
            max_steps=inf.max_steps,
            min_steps=min(100, inf.max_steps),
            window=min(50, max(1, inf.max_steps // 2)),
            num_samples=max(2000, inf.num_samples),
            laplace=lap,
            seed=seed,
            progress=progress,
        )
        draws = {k: x[None] for k, x in fit.samples.items()}
        extras.update(
            elbo=fit.elbo_final,
            iw_elbo=fit.iw_elbo,
            khat=fit.khat,
            svi_steps=fit.steps,
            svi_converged=int(fit.converged),
            svi_skipped=fit.skipped,
        )
        return draws, {}, extras, fit.elbo
    if inf.method == "laplace":
        draws = {k: x[None] for k, x in lap.sample(max(2000, inf.num_samples), seed).items()}
        return draws, {}, {**extras, "elbo": math.nan}, None
    run = run_nuts(
        model,
        v,
        mp_params,
        num_samples=inf.num_samples,
        warmup_steps=inf.warmup_steps,
        num_chains=inf.num_chains,
        laplace=lap,
        seed=seed,
        progress=progress,
    )
    extras.update(elbo=math.nan, divergences=run.num_divergences)
    return run.samples, run.sample_stats, extras, None


def _truth_init(model, truth, n_starts: int, seed: int) -> dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k in model.free:
        d = model.priors[k]
        rows = [np.asarray(truth[k], dtype=np.float64)]
        for _ in range(n_starts - 1):
            u = torch.rand(model.n_comp, generator=gen, dtype=torch.float64)
            rows.append(d.icdf(u.to(model.dtype)).cpu().numpy())
        out[k] = np.stack(rows)
    return out


def rank_designs(rows: list[dict]) -> list[dict]:
    """Per design its rank (1 = most informative) under each criterion of :data:`CRITERIA`."""
    out = [{"design": f"{r['stim']}|{r['rec']}", "run": r.get("run", "")} for r in rows]
    for col, better, _ in CRITERIA:
        vals = np.array([float(r[col]) for r in rows])
        vals = np.where(np.isfinite(vals), vals, -np.inf if better == "max" else np.inf)
        order = np.argsort(-vals if better == "max" else vals, kind="stable")
        ranks = np.empty(len(rows), dtype=int)
        ranks[order] = np.arange(1, len(rows) + 1)
        for o, r, k in zip(out, rows, ranks):
            o[col] = r[col]
            o[f"rank_{col}"] = int(k)
    return out


def infer_design(study, inf, j: int, device="cpu", progress=False) -> dict:
    """Design ``inf.designs[j]`` of an ``[[infer]]`` run, start to finish, in one process:
    data, MAP, posterior, metrics, InferenceData. Returns ``{"row", "parameters", "idata",
    "elbo"}`` — the unit of work an executor ships (a function of its arguments only)."""
    from bayesneuron import reports
    from bayesneuron.studies.config import DESIGN_COLUMNS, build_experiment

    t0 = time.perf_counter()
    priors = inf.priors or study.priors
    model, v, truth = build_experiment(study, inf.designs[j], priors, device, inf.noise_sigma)
    init = None
    if inf.map_init == "truth":  # start 0 at the truth, the others at prior draws
        init = _truth_init(model, truth, inf.map_starts, study.seed)
    mp = fit_map(
        model,
        v,
        truth=truth,
        init=init,
        horizons=() if init is not None else None,  # from the truth: no continuation
        n_starts=inf.map_starts,
        max_steps=inf.map_steps,
        seed=study.seed,
    )
    draws, stats, extras, elbo_hist = _posterior(inf, model, v, mp.params, study.seed + j, progress)
    met = identifiability(draws, model, truth)
    summ = met.summary()
    fisher = laplace(model, mp.params).logdet_fisher
    keep = {k: x[:, : inf.num_samples] for k, x in draws.items()}
    flat = {k: x.reshape(-1, model.n_comp) for k, x in keep.items()}
    n_chain, n_draw = next(iter(keep.values())).shape[:2]
    ppc, ll = _predictions(model, v, flat, study.seed + j)
    stats = {k: np.asarray(x)[:, : inf.num_samples] for k, x in stats.items()}
    label = model.design.label
    stim, rec = label.split("|")
    gte = mp.gte()
    row = {
        "stim": stim,
        "rec": rec,
        "guide": inf.guide if inf.method == "svi" else inf.method,
        **{k: summ[k] for k in DESIGN_COLUMNS if k in summ},
        "logdet_fisher": fisher,
        "elbo": extras.pop("elbo"),
        "wall_s": round(time.perf_counter() - t0, 2),
        "run": inf.name,
        "method": inf.method,
        "max_rel_sd": summ["max_rel_sd"],
        "sloppiest_sd": summ["sloppiest_sd"],
        **{
            f"contraction_{k}_{i}": float(c)
            for k, cs in _split(met, model).items()
            for i, c in enumerate(cs)
        },
        "map_gte_na": gte.get("g_na", math.nan),
        "map_gte_k": gte.get("g_k", math.nan),
        "map_steps": mp.steps,
        "n_traces": model.n_trace,
        "sigma_mv": model.sigma,
        **extras,
    }
    row = {k: (x.item() if isinstance(x, (np.floating, np.integer)) else x) for k, x in row.items()}
    idata = reports.to_inference_data(
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
            **{k: row[k] for k in DESIGN_COLUMNS[3:]},
        },
    )
    params = [{"run": inf.name, "design": label, **p} for p in met.per_parameter()]
    return {"row": row, "parameters": params, "idata": idata, "elbo": elbo_hist}


def run_infers(study, out: Path, *, device="cpu", resume=False, progress=True, executor=None):
    """Run every ``[[infer]]`` of ``study`` into ``out``, one task per design through
    ``executor`` (default: this process, in order); returns the ``designs.csv`` rows."""
    from bayesneuron import reports
    from bayesneuron.studies.executors import LocalExecutor

    executor = executor or LocalExecutor()
    results = {}
    for inf in study.infers:
        folder = out / "idata" / inf.name
        folder.mkdir(parents=True, exist_ok=True)
        paths = [
            (folder / f"{safe_label(d.label)}.nc", folder / f"{safe_label(d.label)}.json")
            for d in inf.designs
        ]
        todo = []
        for j, (nc, done) in enumerate(paths):
            if resume and nc.is_file() and done.is_file():
                saved = json.loads(done.read_text())
                idata = reports.load_inference_data(nc)
                results[(inf.name, j)] = {**saved, "idata": idata, "elbo": None}
            else:
                todo.append(j)
        if progress:
            what = f"{inf.method}{' (' + inf.guide + ')' if inf.method == 'svi' else ''}"
            print(
                f"[{study.name}] {inf.name}: MAP then {what} for {len(todo)} design(s) "
                f"({len(inf.designs) - len(todo)} done before) on {executor}",
                file=sys.stderr,
                flush=True,
            )
        tasks = {j: (infer_design, (study, inf, j, device)) for j in todo}
        for j, res in executor.run(tasks):
            nc, done = paths[j]
            reports.save_inference_data(res["idata"], nc)
            done.write_text(
                json.dumps({"row": res["row"], "parameters": res["parameters"]}, default=_num)
            )
            results[(inf.name, j)] = res
            row = res["row"]
            if progress:
                print(
                    f"  {inf.designs[j].label:>16}  contraction mean {row['mean_contraction']:.3f}"
                    f" min {row['min_contraction']:.3f}  max|z| {row['max_abs_z']:.2f}  "
                    f"{row['wall_s']:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
            done_rows = [results[k]["row"] for k in sorted(results, key=_order(study))]
            write_csv(out / "designs.csv", done_rows)  # partial results stay usable
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
    _figures_and_report(study, out, rows, ranking, idatas, elbos)
    return rows


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


def _figures_and_report(study, out: Path, rows, ranking, idatas, elbos) -> None:
    import matplotlib.pyplot as plt
    import pandas as pd

    from bayesneuron import reports
    from bayesneuron.reports import Figure, Table, Text

    table = pd.DataFrame(rows)
    sections = [
        Text("Question", study.question or study.name),
        Text(
            "Setting",
            f"{_describe(study)}; {rows[0]['n_traces']} input traces, observation "
            f"noise σ = {rows[0]['sigma_mv']} mV, prior {study.priors}. Per design: MAP "
            "(multi-start Levenberg–Marquardt), Laplace at the MAP, then the posterior method "
            "named in the table. Contraction = 1 − Var_post/Var_prior; z = (mean − truth)/sd.",
        ),
    ]
    for run in dict.fromkeys(r["run"] for r in rows):
        sub = table[table["run"] == run]
        cols = [c for c in (*_design_cols(), "max_rel_sd", "khat", "map_gte_na") if c in sub]
        sections.append(Table(f"{run}: designs", sub[cols], caption="one row per design"))
        rk = pd.DataFrame([r for r in ranking if r["run"] == run])
        best = []
        for col, _better, what in CRITERIA:
            top = rk.sort_values(f"rank_{col}").iloc[0]
            best.append(f"By {what}: {top['design']} ({col} = {float(top[col]):.4g}).")
        sections.append(Text(f"{run}: the most informative design", "\n\n".join(best)))
        sections.append(Table(f"{run}: ranking", rk, caption="rank 1 = most informative"))
        if len(sub) > 1:  # stim × rec heatmaps (designs not run stay blank)
            for value in ("mean_contraction", "min_contraction"):
                fig = reports.plot_contraction_heatmap(
                    sub,
                    value=value,
                    title=f"{run}: {value.replace('_', ' ')}",
                    path=out / f"{run}_{value}.png",
                )
                sections.append(Figure(f"{run}: {value.replace('_', ' ')}", fig))
                plt.close(fig)
        labels = [lab for (r, lab) in idatas if r == run]
        for var in ("g_na", "g_k"):
            fig = reports.plot_forest_designs(
                {lab: idatas[(run, lab)] for lab in labels},
                var,
                path=out / f"{run}_forest_{var}.png",
            )
            sections.append(Figure(f"{run}: {var} across designs", fig))
            plt.close(fig)
        for lab in _highlights(labels):
            idata = idatas[(run, lab)]
            safe = safe_label(lab)
            for name, fn in (
                ("posterior vs prior", reports.plot_posterior_vs_prior),
                ("posterior predictive", reports.plot_ppc_traces),
            ):
                fig = fn(idata, path=out / f"{run}_{safe}_{name.split()[1]}.png")
                sections.append(Figure(f"{run} {lab}: {name}", fig))
                plt.close(fig)
            if (run, lab) in elbos:
                fig, ax = plt.subplots(figsize=(5, 2.6))
                ax.plot(elbos[(run, lab)])
                ax.set_xlabel("SVI step")
                ax.set_ylabel("ELBO (nats)")
                ax.set_title(f"{run} {lab}")
                fig.tight_layout()
                sections.append(Figure(f"{run} {lab}: ELBO", fig))
                plt.close(fig)
    reports.write_html_report(out / "report.html", f"{study.name}: identifiability", sections)


def _describe(study) -> str:
    from bayesneuron.reference.presets import PRESETS, get_preset

    name = getattr(study, "preset", "paper_toy")
    return get_preset(name).description.capitalize() if name in PRESETS else f"Preset {name}"


def _design_cols():
    from bayesneuron.studies.config import DESIGN_COLUMNS

    return DESIGN_COLUMNS


def _highlights(labels: list[str]) -> list[str]:
    """The designs that get their own figures: all of ≤ 4, else all|all, [0]|all and ≤ 2 more."""
    if len(labels) <= 4:
        return labels
    keep = [lab for lab in ("all|all", "[0]|all") if lab in labels]
    return keep + [lab for lab in labels if lab not in keep][: 4 - len(keep)]


def make_study(
    designs,
    *,
    method: str = "svi",
    guide: str = "mvn",
    name: str = "bayesneuron",
    question: str = "",
    run: str = "posterior",
    preset: str = "paper_toy",
    seed: int = 20230619,
    n_traces: int = 20,
    noise_sigma: float = 1.0,
    sigma: float = 1.0,
    priors: str = "paper",
    dt: float | None = None,
    backend: str = "auto",
    num_particles: int = 4,
    max_steps: int = 300,
    num_samples: int = 200,
    map_starts: int = 1,
    map_steps: int = 20,
    map_init: str = "truth",
    warmup_steps: int = 100,
    num_chains: int = 1,
):
    """A :class:`~bayesneuron.study.Study` with one ``[[infer]]`` run, built in code instead of
    from a ``config.toml`` and checked by the same rules (a
    :class:`~bayesneuron.study.StudyError` says what is wrong before any work is done).

    ``designs``: ``"grid"`` (or a preset's named list such as ``"paper9"``), a list of labels
    (``["all|all", "[0,-1]|all"]``) or of :class:`~bayesneuron.Design`. ``dt`` defaults to the
    preset's. The other defaults are the quickstart's: 20 noisy traces, SVI with a
    multivariate-normal guide, the MAP started at the ground truth (synthetic data).

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
    )
    raw = {
        "study": {"name": name, "question": question},
        "experiment": {
            "preset": preset,
            "seed": seed,
            "n_traces": n_traces,
            "noise_sigma": noise_sigma,
        },
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


def rebuild_report(
    results: str | Path, path: str | Path | None = None, elbos=None, figures: bool = False
) -> Path:
    """Write the ``report.html`` of an existing results folder again, from its ``designs.csv``,
    ``ranking.csv`` (recomputed if absent) and InferenceData files (``idata/<run>/<design>.nc``,
    or ``posterior.nc`` for a one-design folder of ``bayesneuron infer``); the study's name,
    question and prior come from its ``config.json`` where there is one.

    Only ``path`` (default ``results/report.html``) is written: the figures are drawn into a
    temporary folder and embedded (``figures=True``: into ``results``, and kept there). ``elbos``: optional ``{(run, design): ELBO history}`` (not
    stored in results folders, so a rebuilt report has no ELBO plots otherwise).
    """
    import shutil
    import tempfile
    from types import SimpleNamespace

    import pandas as pd

    from bayesneuron import reports
    from bayesneuron.studies.config import StudyError

    results = Path(results)
    if not results.is_dir():
        raise StudyError(f"{results} is not a results folder (no such folder)")
    table = results / "designs.csv"
    if not table.is_file():
        raise StudyError(
            f"{results} has no posterior results (no designs.csv); make some with "
            "'bayesneuron compare', 'bayesneuron infer' or a study with [[infer]] runs"
        )
    try:
        df = pd.read_csv(table, dtype={"stim": str, "rec": str, "run": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise StudyError(f"{table}: cannot read: {str(e).splitlines()[0]}") from None
    need = {"stim", "rec", "run", "n_traces", "sigma_mv", *(c for c, _, _ in CRITERIA)}
    if df.empty or not need <= set(df.columns):
        missing = sorted(need - set(df.columns)) or ["any rows"]
        raise StudyError(f"{table} is not a designs table: it lacks {', '.join(missing)}")
    rows = df.to_dict("records")
    ranking = None
    if (results / "ranking.csv").is_file():
        try:
            rk = pd.read_csv(results / "ranking.csv", dtype={"design": str, "run": str})
            ranking = rk.to_dict("records")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            ranking = None
        if ranking is not None and not (
            all(f"rank_{c}" in rk for c, _, _ in CRITERIA)
            and sorted((str(r["run"]), str(r["design"])) for r in ranking)
            == sorted((str(r["run"]), f"{r['stim']}|{r['rec']}") for r in rows)
        ):
            ranking = None  # another set of designs than designs.csv: rank them again
    if ranking is None:
        ranking = []
        for run in dict.fromkeys(r["run"] for r in rows):
            ranking += rank_designs([r for r in rows if r["run"] == run])
    idatas = {}
    for r in rows:
        label = f"{r['stim']}|{r['rec']}"
        files = [results / "idata" / str(r["run"]) / f"{safe_label(label)}.nc"]
        if len(rows) == 1:
            files.append(results / "posterior.nc")
        nc = next((f for f in files if f.is_file()), None)
        if nc is None:
            raise StudyError(f"{results}: the InferenceData of {label} is missing ({files[0]})")
        try:
            idatas[(r["run"], label)] = reports.load_inference_data(nc)
        except (OSError, ValueError) as e:
            raise StudyError(f"{nc}: cannot read the InferenceData: {e}") from None
    info = {"name": results.name, "question": "", "priors": "paper", "preset": "paper_toy"}
    try:
        cfg = json.loads((results / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    if isinstance(cfg, dict):
        raw = cfg.get("config") if isinstance(cfg.get("config"), dict) else cfg  # study run
        st = raw.get("study") if isinstance(raw.get("study"), dict) else raw
        mo = raw.get("model") if isinstance(raw.get("model"), dict) else raw
        ex = raw.get("experiment") if isinstance(raw.get("experiment"), dict) else {}
        for key, src in (("name", st), ("question", st), ("priors", mo), ("preset", ex)):
            if isinstance(src.get(key), str):
                info[key] = src[key]
    study = SimpleNamespace(**info)
    if elbos is None and len(rows) == 1 and (results / "elbo.csv").is_file():
        try:  # a one-design folder of ``bayesneuron infer`` keeps its ELBO history
            hist = np.loadtxt(results / "elbo.csv", skiprows=1, ndmin=1)
            elbos = {(rows[0]["run"], f"{rows[0]['stim']}|{rows[0]['rec']}"): hist}
        except ValueError:
            elbos = None
    path = results / "report.html" if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=path.parent))
    try:
        where = results if figures else tmp
        _figures_and_report(study, where, rows, ranking, idatas, dict(elbos or {}))
        (where / "report.html").replace(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
