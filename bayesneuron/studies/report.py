"""The ``report.html`` of posterior results: written after ``[[infer]]`` runs, or rebuilt from
a results folder (``designs.csv``, ``ranking.csv``, InferenceData files, ``config.json``).

Every section comes from what the results hold: the free parameters are the posterior's
per-compartment variables (``g_na``, ``g_k``, ``g_l``, …), one forest plot each.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bayesneuron.protocol.design import row_label
from bayesneuron.studies.expected import expected_sections
from bayesneuron.studies.output import safe_label
from bayesneuron.studies.ranking import CRITERIA, rank_designs

__all__ = ["free_parameters", "rebuild_report", "write_report"]


def free_parameters(idatas) -> list[str]:
    """The free parameters of InferenceData objects: their posterior's variables per
    compartment or per region, in first-seen order."""
    names: dict[str, None] = {}
    for idata in idatas:
        post = idata.posterior
        names.update(
            {
                k: None
                for k in post.data_vars
                if any(d == "compartment" or d.endswith("_region") for d in post[k].dims)
            }
        )
    return list(names)


def write_report(study, out: Path, rows, ranking, idatas, elbos) -> None:
    """Figures of every run into ``out`` and ``out/report.html`` gathering them with the
    tables. ``idatas``/``elbos``: ``{(run, design label): InferenceData / ELBO history}``."""
    import pandas as pd

    from bayesneuron import reports
    from bayesneuron.reports import Text

    table = pd.DataFrame(rows)
    methods = {(r["run"], row_label(r)): r.get("posterior_method") for r in rows}
    free = free_parameters(idatas.values())
    sections = [
        Text("Question", study.question or study.name),
        Text(
            "Setting",
            f"{_describe(study)}; free parameters {', '.join(free)} (per compartment or region); "
            f"{rows[0]['n_traces']} input traces, observation noise σ = {rows[0]['sigma_mv']} "
            f"mV, prior {study.priors}. Per design: MAP (multi-start Levenberg–Marquardt), "
            "Laplace at the MAP, then the posterior method named in the table. Contraction = "
            "1 − Var_post/Var_prior; z = (mean − truth)/sd.",
        ),
    ]
    for i, run in enumerate(dict.fromkeys(r["run"] for r in rows)):
        sub = table[table["run"] == run]
        sections += _tables(run, sub, ranking, out)
        sections += expected_sections(out) if i == 0 else []  # beside the single-draw ranking
        labels = [lab for (r, lab) in idatas if r == run]
        sections += _forests(run, {lab: idatas[(run, lab)] for lab in labels}, out)
        for lab in _highlights(labels):
            elbo, method = elbos.get((run, lab)), methods.get((run, lab))
            sections += _design_figures(run, lab, idatas[(run, lab)], elbo, out, method)
        sections += _morphologies(out, f"{run}_morphology_*.png", f"{run}: posterior contraction")
    sections += _morphologies(out, "laplace_morphology_*.png", "Laplace contraction at the truth")
    reports.write_html_report(out / "report.html", f"{study.name}: identifiability", sections)


def _tables(run: str, sub, ranking, out: Path) -> list:
    """A run's design table, its best designs, its ranking and stim × rec heatmaps."""
    import pandas as pd

    from bayesneuron import reports
    from bayesneuron.reports import Figure, Table, Text
    from bayesneuron.studies.config import DESIGN_COLUMNS

    extra = ["max_rel_sd", "khat", *(c for c in sub if c.startswith("map_gte_"))]
    cols = [c for c in (*DESIGN_COLUMNS, *extra) if c in sub]
    sections = [Table(f"{run}: designs", sub[cols], caption="one row per design")]
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
    return sections


def _morphologies(out: Path, pattern: str, what: str) -> list:
    """The morphology figures (PNG) matching ``pattern`` in ``out``, one section each."""
    from bayesneuron.reports import Figure

    return [
        Figure(f"{what}: {p.stem.split('morphology_', 1)[1]}", p)
        for p in sorted(Path(out).glob(pattern))
    ]


def _forests(run: str, idatas: dict, out: Path) -> list:
    """One forest plot per free parameter: its posterior per compartment across designs."""

    from bayesneuron import reports
    from bayesneuron.reports import Figure

    sections = []
    for var in free_parameters(idatas.values()):
        fig = reports.plot_forest_designs(idatas, var, path=out / f"{run}_forest_{var}.png")
        sections.append(Figure(f"{run}: {var} across designs", fig))
    return sections


def _design_figures(run: str, lab: str, idata, elbo, out: Path, method=None) -> list:
    """Posterior vs prior, posterior predictive and (SVI) ELBO of one design; where the
    reported posterior is not SVI's (``method``), the ELBO's title says it is the SVI
    attempt's."""

    from bayesneuron import reports
    from bayesneuron.reports import Figure

    sections = []
    safe = safe_label(lab)
    for name, fn in (
        ("posterior vs prior", reports.plot_posterior_vs_prior),
        ("posterior predictive", reports.plot_ppc_traces),
    ):
        fig = fn(idata, path=out / f"{run}_{safe}_{name.split()[1]}.png")
        sections.append(Figure(f"{run} {lab}: {name}", fig))
    if elbo is not None:
        fig, ax = reports.subplots(figsize=(5, 2.6))
        ax.plot(elbo)
        ax.set(xlabel="SVI step", ylabel="ELBO (nats)", title=f"{run} {lab}")
        fig.tight_layout()
        name = "ELBO"
        if method and not str(method).startswith("svi"):
            name = f"ELBO of the SVI guide tried (the posterior reported is {method}'s)"
        sections.append(Figure(f"{run} {lab}: {name}", fig))
    return sections


def _describe(study) -> str:
    from bayesneuron.reference.presets import PRESETS, get_preset

    name = getattr(study, "preset", "paper_toy")
    if name not in PRESETS:
        return f"Preset {name}"
    text = get_preset(name).description  # the first letter up; the rest as written (mV, µA)
    return text[:1].upper() + text[1:]


def _highlights(labels: list[str]) -> list[str]:
    """The designs that get their own figures: all of ≤ 4, else all|all, [0]|all and ≤ 2 more."""
    if len(labels) <= 4:
        return labels
    keep = [lab for lab in ("all|all", "[0]|all") if lab in labels]
    return keep + [lab for lab in labels if lab not in keep][: 4 - len(keep)]


# =========================================================================== rebuilding
def rebuild_report(
    results: str | Path, path: str | Path | None = None, elbos=None, figures: bool = False
) -> Path:
    """Write the ``report.html`` of an existing results folder again, from its ``designs.csv``,
    ``ranking.csv`` (recomputed if absent) and InferenceData files (``idata/<run>/<design>.nc``,
    or ``posterior.nc`` for a one-design folder of ``bayesneuron infer``); the study's name,
    question and prior come from its ``config.json`` where there is one.

    Only ``path`` (default ``results/report.html``) is written: the figures are drawn into a
    temporary folder and embedded (``figures=True``: into ``results``, and kept there).
    ``elbos``: optional ``{(run, design): ELBO history}`` (not stored in results folders, so a
    rebuilt report has no ELBO plots otherwise).
    """
    from bayesneuron.studies.config import StudyError

    results = Path(results)
    if not results.is_dir():
        raise StudyError(f"{results} is not a results folder (no such folder)")
    rows = _read_designs(results)
    ranking = _read_ranking(results, rows)
    idatas = _read_idatas(results, rows)
    study = SimpleNamespace(**_study_info(results))
    if elbos is None:
        elbos = _read_elbos(results, rows)
    path = results / "report.html" if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=path.parent))
    try:
        where = results if figures else tmp
        if not figures and (results / "ranking_expected.csv").is_file():
            shutil.copy(results / "ranking_expected.csv", tmp)  # for expected_sections
        write_report(study, where, rows, ranking, idatas, dict(elbos or {}))
        (where / "report.html").replace(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _read_designs(results: Path) -> list[dict]:
    import pandas as pd

    from bayesneuron.studies.config import StudyError

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
    return df.to_dict("records")


def _read_ranking(results: Path, rows: list[dict]) -> list[dict]:
    """``ranking.csv`` if it ranks exactly the designs of ``rows``, else ranked again."""
    import pandas as pd

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
            == sorted((str(r["run"]), row_label(r)) for r in rows)
        ):
            ranking = None  # another set of designs than designs.csv: rank them again
    if ranking is None:
        ranking = []
        for run in dict.fromkeys(r["run"] for r in rows):
            ranking += rank_designs([r for r in rows if r["run"] == run])
    return ranking


def _read_idatas(results: Path, rows: list[dict]) -> dict:
    from bayesneuron import reports
    from bayesneuron.studies.config import StudyError

    idatas = {}
    for r in rows:
        label = row_label(r)
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
    return idatas


def _study_info(results: Path) -> dict:
    """Name, question, prior and preset of the study, from ``config.json`` where it says."""
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
    return info


def _read_elbos(results: Path, rows: list[dict]):
    """A one-design folder of ``bayesneuron infer`` keeps its ELBO history (``elbo.csv``)."""
    if len(rows) != 1 or not (results / "elbo.csv").is_file():
        return None
    try:
        hist = np.loadtxt(results / "elbo.csv", skiprows=1, ndmin=1)
    except ValueError:
        return None
    return {(rows[0]["run"], row_label(rows[0])): hist}
