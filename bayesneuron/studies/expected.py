"""``[expected]``: every design judged in expectation over stimulus draws and parameters drawn
from the prior, with the uncertainty of its rank — not from one draw of the currents.

Per stimulus draw ``s`` (``n_stimulus_draws`` seeds derived from the study's seed; the preset
builds its currents from each) and ``n_theta`` parameter points ``θ`` from the prior (the same
points for every design of that draw; the ground truth is not used): the Fisher information of
every design at every ``θ`` (:func:`~bayesneuron.inference.criteria.compartment_fisher`, once
per stimulated set with every compartment recorded; a recording set's Fisher information is
the sum over its compartments), then the criteria of
:data:`~bayesneuron.inference.criteria.CRITERIA`. A *draw* is one ``(s, θ)`` pair; per design
and criterion ``ranking_expected.csv`` holds the ``mean`` and ``sd`` over the draws, the mean of
the design's per-draw rank (``rank_mean``; 1 = best) and ``p_best``, the fraction of draws in
which the design is the best one. ``expected_draws.npz`` keeps every per-draw value
(``<criterion>`` ``[draw, design]``, ``designs``); ``ranking_expected.png`` draws the table.

Config (``study.toml``/``config.toml``)::

    [expected]   n_stimulus_draws (10), n_theta (10), n_traces (default: the study's),
                 criteria (default all: "bayes_d_opt", "contraction", "eig_laplace"),
                 designs ("grid" or a list of labels)
    [smoke]      expected_draws (2), expected_theta (2): sizes under --smoke
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bayesneuron.errors import BayesneuronError
from bayesneuron.inference.criteria import (
    CRITERIA,
    compartment_fisher,
    design_criteria,
    prior_entropy,
)
from bayesneuron.inference.space import ParameterSpace, prior_draws
from bayesneuron.protocol.design import Design
from bayesneuron.studies.experiment import build_experiment
from bayesneuron.studies.output import write_csv

__all__ = [
    "EXPECTED_KEYS",
    "EXPECTED_SMOKE_KEYS",
    "RANKING_COLUMNS",
    "Expected",
    "expected_sections",
    "expected_values",
    "from_config",
    "parse_expected",
    "rank_summary",
    "run_expected",
]

EXPECTED_KEYS = {
    "n_stimulus_draws": int,
    "n_theta": int,
    "n_traces": int,
    "criteria": list,
    "designs": (str, list),
}
"""Keys of the ``[expected]`` table and their TOML types."""
EXPECTED_SMOKE_KEYS = {"expected_draws": int, "expected_theta": int}
"""Keys of ``[smoke]`` that size ``[expected]`` under ``--smoke``."""
RANKING_COLUMNS = ("stim", "rec", "criterion", "mean", "sd", "rank_mean", "p_best")
"""The columns of ``ranking_expected.csv``, in order."""


@dataclass(frozen=True)
class Expected:
    """The ``[expected]`` settings (see the module docstring); ``n_traces=None``: the study's."""

    designs: tuple[Design, ...]
    n_stimulus_draws: int = 10
    n_theta: int = 10
    n_traces: int | None = None
    criteria: tuple[str, ...] = tuple(CRITERIA)

    def smoke(self, sm: dict) -> Expected:
        """The ``--smoke`` version: ``[smoke]`` sizes (2 × 2 draws), the study's traces."""
        return dataclasses.replace(
            self,
            n_stimulus_draws=sm.get("expected_draws", 2),
            n_theta=sm.get("expected_theta", 2),
            n_traces=None,
        )


def parse_expected(table: dict, preset: str) -> Expected:
    """The ``[expected]`` table (types already checked against :data:`EXPECTED_KEYS`) as an
    :class:`Expected`; a :class:`BayesneuronError` says what is wrong."""
    from bayesneuron.reference.presets import get_preset

    for key in ("n_stimulus_draws", "n_theta", "n_traces"):
        if key in table and table[key] < 1:
            raise BayesneuronError(f"{key} = {table[key]} must be ≥ 1")
    crits = table.get("criteria", list(CRITERIA))
    bad = [c for c in crits if not isinstance(c, str) or c not in CRITERIA]
    if bad or not crits or len(set(crits)) != len(crits):
        raise BayesneuronError(f"criteria = {crits!r}; list distinct names among {list(CRITERIA)}")
    spec = table.get("designs", "grid")
    p = get_preset(preset)
    designs = (
        p.designs(spec) if isinstance(spec, str) else [Design.from_label(str(s)) for s in spec]
    )
    labels = [d.label for d in designs]
    if len(designs) < 2 or len(set(labels)) != len(labels):
        raise BayesneuronError(f"designs: need ≥ 2 distinct designs to rank, got {labels}")
    morph = p.cell().morphology
    for d in designs:
        d.stim_index(morph), d.rec_index(morph)  # DesignError for a site the cell lacks
    return Expected(
        designs=tuple(designs),
        n_stimulus_draws=table.get("n_stimulus_draws", 10),
        n_theta=table.get("n_theta", 10),
        n_traces=table.get("n_traces"),
        criteria=tuple(crits),
    )


def from_config(raw: dict, preset: str, smoke: bool, error=BayesneuronError, where: str = ""):
    """A study config's ``[expected]`` as an :class:`Expected` (``None`` without one; under
    ``smoke`` with ``[smoke]``'s sizes); a problem raises ``error`` naming ``where``."""
    if "expected" not in raw:
        return None
    try:
        cfg = parse_expected(raw["expected"], preset)
    except BayesneuronError as e:
        raise error(f"{where} [expected]: {e}") from None
    return cfg.smoke(raw.get("smoke", {})) if smoke else cfg


def _seeds(seed: int, n: int) -> np.ndarray:
    """``[n, 2]`` seeds in ``[0, 2³²)`` (currents, prior draws) derived from ``seed``."""
    return np.random.SeedSequence(int(seed)).generate_state(2 * n).reshape(n, 2)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="expected criteria", leave=False, disable=not enabled)


def expected_values(
    study, cfg: Expected, *, device: str = "cpu", progress: bool = True
) -> dict[str, np.ndarray]:
    """Every criterion at every draw: name → ``[draw, design]`` (draws stimulus-major:
    draw ``s · n_theta + j`` is stimulus draw ``s``, prior point ``j``; designs as
    ``cfg.designs``). ``study``: a :class:`~bayesneuron.studies.config.Study`; its fixed noise
    sd ``sigma`` enters the Fisher information (with ``sigma = "infer"``, its ``noise_sigma``,
    the noise in the data, or 1 mV without noise)."""
    sigma = study.sigma if not isinstance(study.sigma, str) else (study.noise_sigma or 1.0)
    sub = dataclasses.replace(study, n_traces=cfg.n_traces or study.n_traces, sigma=sigma)
    groups: dict = {}
    for j, d in enumerate(cfg.designs):
        groups.setdefault(d.stim, []).append(j)
    n = cfg.n_theta
    out = {c: np.full((cfg.n_stimulus_draws * n, len(cfg.designs)), np.nan) for c in cfg.criteria}
    entropy = None
    bar = _progress(cfg.n_stimulus_draws * len(groups), progress)
    try:
        for s, (stim_seed, theta_seed) in enumerate(_seeds(study.seed, cfg.n_stimulus_draws)):
            params = None
            for stim, cols in groups.items():
                at = dataclasses.replace(sub, seed=int(stim_seed))
                model, _, _ = build_experiment(at, Design(stim, None), study.priors, device)
                if params is None:  # the same θ for every design of this draw
                    params = prior_draws(model, n, int(theta_seed))
                    entropy = prior_entropy(model) if entropy is None else entropy
                fc = compartment_fisher(model, params)  # [n, comp, P, P]
                recs = [list(cfg.designs[j].rec_index(model.cell.morphology)) for j in cols]
                fisher = torch.stack([fc[:, r].sum(1) for r in recs])  # [design, n, P, P]
                crit = design_criteria(fisher, ParameterSpace(model), params, entropy)
                for c in cfg.criteria:
                    out[c][s * n : (s + 1) * n, cols] = crit[c].detach().cpu().numpy().T
                bar.update(1)
    finally:
        bar.close()
    return out


def rank_summary(designs, values: dict[str, np.ndarray]) -> list[dict]:
    """Rows of ``ranking_expected.csv`` (:data:`RANKING_COLUMNS`) from per-draw values
    name → ``[draw, design]`` (larger is better): per draw the designs' ranks (1 = best;
    ties keep the design order), then per design the mean, sd (ddof 1; 0 for one draw), mean
    rank and the fraction of draws where it ranks first."""
    rows = []
    for crit, v in values.items():
        v = np.where(np.isfinite(v), v, -np.inf)
        n_draw, n_des = v.shape
        order = np.argsort(-v, axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.broadcast_to(np.arange(1, n_des + 1), v.shape), 1)
        p_best = np.bincount(order[:, 0], minlength=n_des) / n_draw
        for j, d in enumerate(designs):
            stim, rec = d.label.split("|")
            x = v[:, j]
            rows.append(
                {
                    "stim": stim,
                    "rec": rec,
                    "criterion": crit,
                    "mean": float(x.mean()),
                    "sd": float(x.std(ddof=1)) if n_draw > 1 else 0.0,
                    "rank_mean": float(ranks[:, j].mean()),
                    "p_best": float(p_best[j]),
                }
            )
    return rows


def run_expected(study, out: Path, *, device: str = "cpu", progress: bool = True) -> list[dict]:
    """``[expected]`` of ``study``: ``ranking_expected.csv``, ``expected_draws.npz`` and
    ``ranking_expected.png`` in ``out``; returns the CSV's rows."""
    from bayesneuron.reports.design_plots import plot_expected_ranking

    cfg = study.expected
    t0 = time.perf_counter()
    if progress:
        print(
            f"[{study.name}] expected ranking: {len(cfg.designs)} designs × "
            f"{cfg.n_stimulus_draws} stimulus draws × {cfg.n_theta} prior draws, "
            f"{cfg.n_traces or study.n_traces} traces …",
            file=sys.stderr,
            flush=True,
        )
    values = expected_values(study, cfg, device=device, progress=progress)
    rows = rank_summary(cfg.designs, values)
    write_csv(out / "ranking_expected.csv", rows)
    labels = np.array([d.label for d in cfg.designs])
    np.savez_compressed(out / "expected_draws.npz", designs=labels, **values)
    plot_expected_ranking(rows).savefig(out / "ranking_expected.png", dpi=110)
    if progress:
        print(
            f"[{study.name}] expected ranking in {time.perf_counter() - t0:.1f} s", file=sys.stderr
        )
    return rows


def expected_sections(out: Path) -> list:
    """Report sections of ``out/ranking_expected.csv`` (none if it is absent): the best design
    per criterion, the table (one row per design) and its figure."""
    import pandas as pd

    from bayesneuron.reports import Figure, Table, Text
    from bayesneuron.reports.design_plots import plot_expected_ranking

    path = Path(out) / "ranking_expected.csv"
    if not path.is_file():
        return []
    df = pd.read_csv(path, dtype={"stim": str, "rec": str, "criterion": str})
    if df.empty or list(df.columns) != list(RANKING_COLUMNS):
        return []
    df["design"] = df["stim"] + "|" + df["rec"]
    best = []
    for crit, sub in df.groupby("criterion", sort=False):
        top = sub.sort_values("rank_mean").iloc[0]
        fav = sub.sort_values("p_best", ascending=False).iloc[0]
        best.append(
            f"By {CRITERIA.get(crit, crit)}: {top['design']} has the best mean rank "
            f"({top['rank_mean']:.2f}; mean {top['mean']:.4g} ± {top['sd']:.3g}); "
            f"{fav['design']} is best in {fav['p_best']:.0%} of the draws."
        )
    wide = df.pivot(
        index="design", columns="criterion", values=["mean", "sd", "rank_mean", "p_best"]
    )
    wide.columns = [f"{c} {stat}" for stat, c in wide.columns]
    order = list(dict.fromkeys(df["design"]))
    wide = wide.loc[order, sorted(wide.columns, key=lambda s: s.split(" ")[0])].reset_index()
    return [
        Text("Designs in expectation (stimulus draws × prior draws)", "\n\n".join(best)),
        Table(
            "Expected ranking",
            wide,
            caption="mean ± sd over draws of (stimulus realisation, θ from the prior); "
            "rank_mean: mean per-draw rank (1 = best); p_best: fraction of draws where the "
            "design is best (ranking_expected.csv)",
        ),
        Figure("Expected ranking", plot_expected_ranking(df.to_dict("records"))),
    ]
