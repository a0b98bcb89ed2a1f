"""Electrode site selection on a preset's cell (``bayesneuron design sites``): which
compartments should carry ``n_electrodes`` stimulating electrodes, the recording fixed.

Greedy placement (:func:`~bayesneuron.optimal_design.greedy_sites`) adds one electrode at a
time; every candidate site set gets its own optimised stimulus (as ``bayesneuron design
optimize`` makes one: Adam at ``dt_opt`` over ``theta_opt`` prior draws, the ``[sites]``
starts) and is scored by the criterion on those draws, or, with ``theta_select`` > 0, on
that many further prior draws the optimiser never sees (the starts' best stimulus is chosen
on them too, as ``design optimize`` does). An exchange pass
(:func:`~bayesneuron.optimal_design.exchange_sites`) then swaps one electrode at a time while
that raises the score. Each chosen set, and the preset's grid designs with as many
electrodes and the same recording, optimised alike, is judged on ``theta_eval`` *held-out*
prior draws with exact sensitivities at ``dt_eval`` (``crit_heldout``,
``contraction_heldout``), as :mod:`~bayesneuron.studies.optimal_design` judges stimuli.

Writes ``sites.csv`` (one row per greedy step, the exchange result, each grid design),
``sites.json`` (spec, settings, exchange history, environment) and ``sites.png``.

Example:
    >>> study = load_design_study("studies/optimal_design/config.toml", sites={"steps": 2})
    >>> rows = run_site_selection(study, study.sites, Path("results/sites"))
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from bayesneuron.optimal_design import (
    DesignResult,
    OptimizeConfig,
    exchange_sites,
    greedy_sites,
    optimized_site_set,
)
from bayesneuron.protocol.design import Design, format_sites, parse_sites
from bayesneuron.reference.presets import get_preset
from bayesneuron.simulation.solvers import CrankNicolson
from bayesneuron.studies.design_config import DesignStudy, SiteSelection
from bayesneuron.studies.design_inputs import initial_parameters
from bayesneuron.studies.optimal_design import (
    criteria,
    design_problems,
    make_family,
    selection_problem,
)
from bayesneuron.studies.output import environment, write_csv, write_json

__all__ = ["CSV", "grid_sites", "run_site_selection"]

CSV = "sites.csv"


def grid_sites(preset: str, spec: SiteSelection) -> list[tuple[str, tuple[int, ...]]]:
    """The preset's grid designs that record ``spec.rec`` and stimulate 1 … ``n_electrodes``
    compartments, as ``(label, sorted stimulated indices)`` (one per distinct site set)."""
    p = get_preset(preset)
    morph = p.cell().morphology
    rec = Design(None, parse_sites(spec.rec)).rec_index(morph)
    out, seen = [], set()
    for d in p.designs("grid"):
        sites = d.stim_index(morph)
        if d.rec_index(morph) == rec and len(sites) <= spec.n_electrodes and sites not in seen:
            seen.add(sites)
            out.append((d.label, sites))
    return out


class _Selection:
    """One run's state: the model and problems, every site set's optimised result (the
    cache greedy and exchange share), optimisation and judging wall times, the bar."""

    def __init__(self, run: DesignStudy, spec: SiteSelection, bar):
        self.run, self.spec, self.bar, self.phase = run, spec, bar, "greedy"
        self.eval_solver = CrankNicolson(dt=run.dt_eval)
        experiment = get_preset(run.preset).experiment
        design = Design(None, parse_sites(spec.rec))  # every site: the protocol's currents
        self.model, _, _ = experiment(
            design, n_traces=run.n_traces, seed=run.seed, solver=self.eval_solver
        )
        self.problem, self.held_out = design_problems(run, self.model, self.eval_solver)
        self.select = selection_problem(run, self.model, run.criterion)
        self.config = OptimizeConfig(
            steps=run.steps,
            lr=run.lr,
            lr_final=run.lr_final,
            n_starts=len(run.init) + 1,  # the last: a warm start (:meth:`init`)
            seed=run.opt_seed,
            resample_theta=run.resample,
            progress=False,
        )
        self.cache: dict[tuple[int, ...], DesignResult] = {}
        self.spent: dict[tuple[str, tuple[int, ...]], float] = {}  # (phase, sites) → s
        self.judged: dict[tuple[int, ...], tuple[float, float, float]] = {}

    def family(self, sites):
        return make_family(self.run, self.model, sites)

    def init(self, fam):
        """The configured starts, then a warm start: the best stimulus found so far on a site
        set one electrode away (one fewer, or one swapped), the new electrode silent. So
        adding an electrode starts where the smaller set ended and cannot lose by it, as it
        could from the cold starts alone (an optimiser short of convergence on more
        parameters). Without such a set the extra start is a random one."""
        proto = self.model.stimulus
        starts = initial_parameters(fam, self.run.init, self.run.opt_seed, proto, self.run.bounds)
        warm = self._warm(fam)
        return starts + ([warm] if warm is not None else [])

    def _warm(self, fam):
        new = set(fam.sites)
        near = [
            (res.value, sites)
            for sites, res in self.cache.items()
            if len(set(sites) - new) + len(new - set(sites)) in (1, 2)
            and len(set(sites) & new) == len(new) - 1
        ]
        if not near:
            return None
        _, sites = max(near)
        return fam.moved_from(self.cache[sites].z, sites)

    def done(self, sites: tuple[int, ...], res: DesignResult) -> None:
        """After each optimisation: its wall time, the bar."""
        self.spent[(self.phase, sites)] = res.wall_s
        self.bar.update(1)
        self.bar.set_postfix(sites=format_sites(sites), value=f"{res.value:.2f}")

    def hooks(self) -> dict:
        return {
            "make_init": self.init,
            "cache": self.cache,
            "callback": self.done,
            "select": self.select,
        }

    def optimise(self, sites: tuple[int, ...]) -> DesignResult:
        """``sites``' result, optimised here (as greedy and exchange optimise theirs) unless
        greedy or exchange already did."""
        return optimized_site_set(self.problem, self.family, sites, self.config, **self.hooks())

    def row(self, step: int, method: str, sites, wall: float, n_opt: int, label=None) -> dict:
        """The CSV row of site set ``sites``, judged on the held-out draws (once per set)."""
        res = self.cache[sites]
        if sites not in self.judged:
            t0 = time.perf_counter()
            d, c, _ = criteria(self.held_out, res.stimulus, self.eval_solver)
            self.judged[sites] = (d, c, time.perf_counter() - t0)
        d, c, judge_s = self.judged[sites]
        return {
            "step": step,
            "method": method,
            "sites": format_sites(sites),
            "rec": self.spec.rec,
            "label": label or f"{format_sites(sites)}|{self.spec.rec}",
            "n_sites": len(sites),
            "n_traces": self.run.n_traces,
            "crit_opt_theta": res.value,
            "crit_select": res.select_value,
            "crit_heldout": d,
            "contraction_heldout": c,
            "nats_per_trace_heldout": d / self.run.n_traces,
            "n_optimised": n_opt,
            "wall_s": wall + judge_s,
        }

    def wall(self, phase: str, n_sites: int | None = None) -> tuple[float, int]:
        """Optimisation seconds and count of ``phase`` (greedy: its step of ``n_sites``)."""
        w = [
            v
            for (p, s), v in self.spent.items()
            if p == phase and (n_sites is None or len(s) == n_sites)
        ]
        return sum(w), len(w)


def _n_optimisations(spec: SiteSelection, n_grid: int) -> int:
    """At most this many optimisations (the bar's length; the cache saves some)."""
    n, m = spec.n_electrodes, len(spec.candidates)
    greedy = sum(m - k for k in range(n))
    return greedy + n_grid + (spec.max_rounds * n * (m - n) if spec.exchange else 0)


def _echo_row(row: dict) -> str:
    return (
        f"{row['method']:>8} {row['step']}  {row['label']:>16}  opt θ {row['crit_opt_theta']:8.2f}"
        f"  held-out {row['crit_heldout']:8.2f}  ({row['wall_s']:.0f} s)"
    )


def run_site_selection(
    study: DesignStudy,
    spec: SiteSelection,
    out: Path,
    *,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> list[dict]:
    """Greedy selection of ``spec.n_electrodes`` stimulating sites among ``spec.candidates``,
    an exchange pass, and the preset's grid designs, into ``out``: ``sites.csv`` (rewritten
    as each phase ends), ``sites.json``, ``sites.png``.

    Args:
        study: the design study (its criterion, bounds, family, draws, dt and seeds).
        spec: the selection (:class:`~bayesneuron.studies.design_config.SiteSelection`);
            its ``n_traces``, ``steps`` and ``init`` replace the study's (and no
            ``refine_steps`` stage).
        out: the results folder (created; earlier ``sites.*`` files are replaced).
        progress: a tqdm bar over the optimisations.
        echo: where a line per row goes (default: the bar's ``write``).

    Returns:
        The CSV's rows: ``step`` (electrodes), ``method`` (greedy | exchange | grid),
        ``sites``, ``rec``, ``label``, ``n_traces``, ``crit_opt_theta`` (the optimiser's draws),
        ``crit_select`` (the ``theta_select`` draws the sets are compared on; empty without
        them), ``crit_heldout``, ``contraction_heldout``, ``n_optimised``, ``wall_s`` (the row's
        optimisations and judging, s).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = dataclasses.replace(  # one stage: no refine_steps
        study, n_traces=spec.n_traces, steps=spec.steps, init=spec.init, refine_steps=0
    )
    grid = grid_sites(run.preset, spec)
    meta = {"spec": dataclasses.asdict(spec), "settings": run.settings(), "grid": grid}
    meta |= {"config": dataclasses.asdict(study), "environment": environment()}
    write_json(out / "sites.json", meta | {"finished": False})
    bar = tqdm(total=_n_optimisations(spec, len(grid)), desc="site sets", disable=not progress)
    say = echo or bar.write
    try:
        sel = _Selection(run, spec, bar)
        rows, history = _greedy_and_exchange(sel, say, out)
        sel.phase = "grid"
        for label, sites in grid:
            res = sel.optimise(sites)
            n_opt = int(("grid", sites) in sel.spent)  # 0: greedy or exchange had it
            rows.append(sel.row(len(sites), "grid", sites, res.wall_s, n_opt, label))
            say(_echo_row(rows[-1]))
        write_csv(out / CSV, rows)
        bar.total = bar.n  # the cache saved the rest
    finally:
        bar.close()
    _figure(rows, run, spec, out / "sites.png")
    wall = time.perf_counter() - t0
    write_json(out / "sites.json", meta | {"history": history, "finished": True, "wall_s": wall})
    return rows


def _greedy_and_exchange(sel: _Selection, say, out: Path) -> tuple[list[dict], list[dict]]:
    """Greedy rows, then (if asked) the exchange row; and the exchange history."""
    spec = sel.spec
    cand = spec.candidates
    path = greedy_sites(sel.problem, sel.family, cand, spec.n_electrodes, sel.config, **sel.hooks())
    rows = []
    for k, (sites, _) in enumerate(path, 1):
        rows.append(sel.row(k, "greedy", sites, *sel.wall("greedy", k)))
        say(_echo_row(rows[-1]))
    write_csv(out / CSV, rows)
    history: list[dict] = []
    if spec.exchange:
        sel.phase = "exchange"
        sites, _, history = exchange_sites(
            sel.problem, sel.family, cand, path[-1][0], sel.config, spec.max_rounds, **sel.hooks()
        )
        rows.append(sel.row(len(sites), "exchange", sites, *sel.wall("exchange")))
        rows[-1]["rounds"] = len(history) - 1
        say(_echo_row(rows[-1]))
        write_csv(out / CSV, rows)
    history = [h | {"sites": format_sites(h["sites"])} for h in history]
    return rows, history


def _figure(rows: list[dict], run: DesignStudy, spec: SiteSelection, path: Path) -> None:
    """The criterion on held-out draws against the number of electrodes: the greedy path,
    the exchange result and the grid designs."""
    from bayesneuron.reports.figures import subplots

    fig, ax = subplots(1, 1, figsize=(6.4, 4.2))
    styles = {"greedy": ("o-", "C0"), "exchange": ("*", "C3"), "grid": ("s", "C2")}
    for method, (marker, color) in styles.items():
        sub = [r for r in rows if r["method"] == method]
        if not sub:
            continue
        x, y = [r["step"] for r in sub], [r["crit_heldout"] for r in sub]
        ms = 14 if method == "exchange" else 7
        ax.plot(x, y, marker, color=color, ms=ms, label=method, alpha=0.85)
        for r in sub:
            text = r["sites"] if method != "grid" else r["label"].split("|")[0]
            ax.annotate(text, (r["step"], r["crit_heldout"]), fontsize=7, color=color,
                        xytext=(5, -10 if method == "grid" else 4), textcoords="offset points")  # fmt: skip
    ax.set_xticks(range(1, spec.n_electrodes + 1))
    ax.set_xlabel("stimulating electrodes")
    unit = "" if run.criterion == "contraction" else " (nats)"
    ax.set_ylabel(f"{run.criterion} on held-out draws{unit}")
    ax.set_title(f"{run.preset}: electrode sites, rec {spec.rec}, {run.n_traces} traces")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
