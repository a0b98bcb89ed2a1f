"""Studies: a folder with a ``config.toml`` (and a README stating the question) → one command
→ a results folder of tables, figures and provenance.

``bayesneuron study run studies/paper_toy_map --out results/map [--smoke]``

The config (every key checked; unknown keys are errors)::

    [study]       name, question
    [experiment]  preset ("paper_toy" | "hh_tree" | "paper_l23", see
                  :mod:`bayesneuron.reference.presets`),
                  seed, n_traces, noise_sigma (mV, added to the data)
    [model]       free (the per-compartment parameters to infer, e.g. ["g_na", "g_k", "g_l"];
                  default the preset's, ["g_na", "g_k"]), sigma (mV, or "infer": inferred
                  under LogNormal(log 1 mV, 1)), priors ("paper":
                  base × U(0.7, 1.3) | "lognormal" | "none"), dt (ms, Crank–Nicolson; default
                  the preset's), backend ("auto" | "fused" | "torch"; "numba" is a deprecated
                  alias of "fused")
    [[run]]       name, protocol ("paper" | "bayesneuron"), designs ("grid": every stim × rec
                  pair of the preset's site sets | "paper9" | "grid25" (paper_toy) |
                  ["all|all", "[0]|all", …]), n_starts, max_steps, priors and noise_sigma
                  (override [model] / [experiment]), horizons / windows (continuation), dt,
                  variant (the preset's experiment variant, e.g. paper_l23's "faithful" |
                  "graph" | "right"), seeds (one fit per seed instead of [experiment] seed)
    [[infer]]     name, method ("svi" | "laplace" | "nuts"), guide ("mvn" | "normal" |
                  "lowrank" | "iaf"), designs, num_particles, max_steps (SVI), num_samples,
                  map_starts, map_steps, map_init ("starts": base values and prior draws;
                  "truth": the ground truth and prior draws) — the MAP each posterior
                  starts from; warmup_steps, num_chains, chain_workers (NUTS; chains
                  side by side in processes), priors, noise_sigma, ladder
                  (methods tried until one passes its checks, default [guide, "svi:iaf",
                  "importance"] for SVI; see bayesneuron.inference.posterior), map_windows
                  (the MAP's continuation over time windows, as [[run]] windows),
                  map_horizons (its multiple-shooting horizons; [] fits the plain objective),
                  psis_samples (draws for each method's k̂ check, default 2000),
                  smc_particles (per population of the "smc" rung, default 512),
                  smc_kernel (its move: "walk", the default, or "hmc") and adaptive_rounds
                  (the most rounds of the "adaptive_importance" rung, default 4)
    [laplace]     designs: designs whose Fisher/Laplace analysis at the ground truth to report;
                  variants: the preset's variants to analyse (default its first)
    [expected]    designs ranked in expectation over stimulus and prior draws (:mod:`.expected`)
    [smoke]       n_traces, n_times, max_steps, n_starts, svi_steps, num_samples, designs: a
                  tiny version of the study, for tests and a first look

Columns named after a free parameter follow :mod:`bayesneuron.studies.tables`: ``g_<x>``
gives ``gte_<x>_final``, ``contraction_<x>_<compartment>`` …, so the paper's ``g_na`` and
``g_k`` give ``gte_na_final`` and ``gte_k_final``.

Outputs in ``--out``: ``table.csv`` (one row per run × seed × design: ``seed, variant, stim,
rec, protocol, L0, L_final``, ``gte_<x>_initial`` and ``gte_<x>_final`` per free parameter,
``steps, wall_s``, then extras), ``fit_parameters.csv`` (long: per run × design × parameter
and compartment), ``laplace.csv`` and ``laplace_parameters.csv`` (long: prior and posterior
sd and contraction per parameter), ``fits.json`` (every fit with its optimum, starts and settings),
``histories.npz``, figures (``<run>_loss_gte.png`` — ``<run>_seed<seed>_…`` with ``seeds``, ``<run>_trajectories_<design>.png``,
``<run>_gte_grid_<param>.png``), ``config.json`` (resolved) and ``environment.json``. Each run
checkpoints to ``<out>/checkpoints/``; ``--resume`` continues an interrupted study.

``[[infer]]`` runs write ``designs.csv`` (one row per run × design: ``stim, rec, guide,
mean_contraction, min_contraction, max_abs_z, coverage_90, logdet_fisher, elbo, wall_s``, then
extras), ``parameters.csv`` (long: per design × parameter), ``ranking.csv``, one netCDF
InferenceData per design (``idata/<run>/<design>.nc``), figures (``<run>_contraction.png``,
``<run>_forest_<param>.png``, per-design posterior/pair/predictive plots for up to 9 designs)
and ``report.html`` (self-contained).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bayesneuron.errors import BayesneuronError
from bayesneuron.protocol.design import Design
from bayesneuron.simulation.solvers import BACKENDS
from bayesneuron.studies import expected as expected_table
from bayesneuron.studies.experiment import build_experiment, prior_spec, variant_seeds_problem
from bayesneuron.studies.infer_config import (
    DESIGN_COLUMNS,
    INFER_KEYS,
    METHODS,
    Infer,
    infer_problem,
)
from bayesneuron.studies.tables import table_columns

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DESIGN_COLUMNS",
    "METHODS",
    "Study",
    "StudyError",
    "TABLE_COLUMNS",
    "build_experiment",
    "check_free",
    "load_study",
    "prior_spec",
    "study_from_config",
]

TABLE_COLUMNS = table_columns(("g_na", "g_k"))
"""The leading columns of ``table.csv`` for the paper's model (free ``g_na``, ``g_k``)."""


class StudyError(BayesneuronError):
    """A study folder or its config is invalid."""


_SMOKE_SIZES = ("svi_steps", "num_samples", "n_traces", "n_times", "max_steps", "n_starts")
_SCHEMA = {
    "study": {"name": str, "question": str},
    "experiment": {"preset": str, "seed": int, "n_traces": int, "noise_sigma": float},
    "model": {
        "free": (str, list),
        "sigma": (float, int, str),
        "priors": str,
        "dt": float,
        "backend": str,
    },
    "laplace": {"designs": (str, list), "variants": list},
    "expected": expected_table.EXPECTED_KEYS,
    "smoke": dict.fromkeys(_SMOKE_SIZES, int)
    | {"designs": (str, list), **expected_table.EXPECTED_SMOKE_KEYS},
}
_RUN_KEYS = {
    "name": str,
    "protocol": str,
    "designs": (str, list),
    "n_starts": int,
    "max_steps": int,
    "priors": str,
    "noise_sigma": float,
    "horizons": list,
    "windows": list,
    "dt": float,
    "variant": str,
    "seeds": list,
}


@dataclass
class Run:
    name: str
    protocol: str
    designs: list[Design]
    n_starts: int | None = None
    max_steps: int | None = None
    priors: str | None = None
    noise_sigma: float | None = None
    horizons: tuple[int, ...] | None = None
    windows: tuple[int, ...] = ()
    dt: float | None = None
    variant: str | None = None  # the preset's experiment variant (None: its default)
    seeds: tuple[int, ...] | None = None  # one fit per seed (None: the study's seed)


@dataclass
class Study:
    folder: Path
    name: str
    question: str
    seed: int = 20230619
    n_traces: int = 100
    n_times: int | None = None  # None: all of the preset's output times (--smoke: fewer)
    noise_sigma: float = 0.0
    sigma: float | str = 1.0  # mV, or "infer"
    priors: str = "paper"
    dt: float = 0.004
    preset: str = "paper_toy"
    backend: str = "auto"
    free: tuple[str, ...] | None = None  # None: the preset's (g_na, g_k)
    runs: list[Run] = field(default_factory=list)
    infers: list[Infer] = field(default_factory=list)
    laplace: list[Design] = field(default_factory=list)
    laplace_variants: tuple[str, ...] | None = None  # [laplace] variants (None: the default)
    expected: expected_table.Expected | None = None  # [expected]
    raw: dict = field(default_factory=dict)


def _designs(spec, where: str, preset: str = "paper_toy") -> list[Design]:
    from bayesneuron.reference.presets import get_preset

    if isinstance(spec, str):
        try:
            return get_preset(preset).designs(spec)
        except BayesneuronError as e:
            raise StudyError(f"{where}: {e}") from None
    if isinstance(spec, list) and spec and all(isinstance(s, str) for s in spec):
        return [Design.from_label(s) for s in spec]
    raise StudyError(
        f"{where}: designs = {spec!r}; use 'grid', a named list ('paper9', 'grid25' for "
        "paper_toy) or a list of labels like ['all|all', '[0,-1]|all']"
    )


def _check(table: dict, schema: dict, where: str) -> None:
    for k, v in table.items():
        if k not in schema:
            raise StudyError(f"{where}: unknown key {k!r}; allowed: {sorted(schema)}")
        want = schema[k]
        ok = isinstance(v, want) and not (want is int and isinstance(v, bool))
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            ok = True
        if not ok:
            raise StudyError(f"{where}.{k} = {v!r} has the wrong type")


def load_study(folder: str | Path, smoke: bool = False) -> Study:
    """Read and validate ``folder/config.toml``."""
    folder = Path(folder)
    if folder.is_file() and folder.name == "config.toml":
        raise StudyError(f"give the study folder ({folder.parent}), not its config file")
    path = folder / "config.toml"
    if not path.is_file():
        raise StudyError(f"{folder} is not a study folder: {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"{path}: malformed TOML: {e}") from None
    except UnicodeDecodeError:
        raise StudyError(f"{path}: cannot read: not UTF-8 text") from None
    return study_from_config(raw, folder, smoke=smoke, source=path)


def study_from_config(
    raw: dict, folder: str | Path = ".", *, smoke: bool = False, source: str | Path = "config"
) -> Study:
    """Validate a study config given as a dict (the parsed ``config.toml``; see the module
    docstring) and build the :class:`Study`. ``source`` names it in error messages."""
    folder, path = Path(folder), Path(source)
    _check_sections(raw, path)
    study = _header(raw, folder, path)
    runs, infers = raw.get("run", []), raw.get("infer", [])
    if not isinstance(runs, list) or not isinstance(infers, list) or not (runs or infers):
        raise StudyError(f"{path}: no [[run]] or [[infer]] tables; add at least one")
    _load_infers(study, infers, path)
    _load_runs(study, runs, path)
    if "laplace" in raw:
        study.laplace = _designs(raw["laplace"].get("designs", "grid"), "[laplace]", study.preset)
        if "variants" in raw["laplace"]:
            variants = raw["laplace"]["variants"]
            for v in variants:
                _check_variant_seeds({"variant": v}, study.preset, f"{path.name} [laplace]")
            if not variants:
                raise StudyError(
                    f"{path.name} [laplace]: variants is empty; remove it or list some"
                )
            study.laplace_variants = tuple(variants)
    study.expected = expected_table.from_config(raw, study.preset, smoke, StudyError, path.name)
    _check_study(study, path)
    if smoke:
        _apply_smoke(study, raw.get("smoke", {}))
    return study


def _check_sections(raw: dict, path: Path) -> None:
    allowed = set(_SCHEMA) | {"run", "infer"}
    for k in raw:
        if k not in allowed:
            raise StudyError(f"{path}: unknown section [{k}]; allowed: {sorted(allowed)}")
    for sec, schema in _SCHEMA.items():
        if not isinstance(raw.get(sec, {}), dict):
            raise StudyError(f"{path}: [{sec}] must be a table")
        _check(raw.get(sec, {}), schema, f"{path.name} [{sec}]")


def _header(raw: dict, folder: Path, path: Path) -> Study:
    """The study's [study], [experiment] and [model] settings."""
    from bayesneuron.reference.presets import PRESETS, get_preset

    st, ex, mo = raw.get("study", {}), raw.get("experiment", {}), raw.get("model", {})
    if "name" not in st:
        raise StudyError(f"{path}: [study] needs a name")
    preset = ex.get("preset", "paper_toy")
    if preset not in PRESETS:
        raise StudyError(f"{path}: preset {preset!r} unknown; available: {sorted(PRESETS)}")
    free = check_free(mo["free"], preset, f"{path.name} [model]") if "free" in mo else None
    backend = mo.get("backend", "auto")
    return Study(
        folder=folder,
        name=st["name"],
        question=st.get("question", ""),
        seed=ex.get("seed", 20230619),
        n_traces=ex.get("n_traces", 100),
        noise_sigma=float(ex.get("noise_sigma", 0.0)),
        sigma=_sigma(mo.get("sigma", 1.0), path),
        priors=mo.get("priors", "paper"),
        dt=float(mo.get("dt", get_preset(preset).dt)),
        backend="fused" if backend == "numba" else backend,  # deprecated alias, one release
        preset=preset,
        free=free,
        raw=raw,
    )


def _sigma(value, path: Path) -> float | str:
    """``[model] sigma``: a number of mV (fixed noise) or ``"infer"``."""
    if isinstance(value, str) and value == "infer":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StudyError(
            f"{path.name} [model].sigma = {value!r} has the wrong type; give the noise sd in "
            "mV (e.g. 1.0) or 'infer' to infer it"
        )
    return float(value)


def check_free(free, preset: str, where: str = "free") -> tuple[str, ...]:
    """``free`` (a list of parameter names) checked against the preset's cell: distinct names
    of per-compartment parameters with positive base values (the priors scale them)."""
    from bayesneuron.reference.presets import get_preset

    if isinstance(free, str):
        free = [free]
    if not (isinstance(free, (list, tuple)) and free and all(isinstance(k, str) for k in free)):
        raise StudyError(
            f"{where}: free = {free!r}; give a list of parameter names, e.g. ['g_na', 'g_k']"
        )
    cell = get_preset(preset).cell()
    unknown = [k for k in free if k not in cell.params]
    if unknown:
        raise StudyError(
            f"{where}: free parameters {unknown} are not parameters of the {preset} cell; "
            f"it has {list(cell.param_names)}"
        )
    dup = sorted({k for k in free if list(free).count(k) > 1})
    if dup:
        raise StudyError(f"{where}: free lists {dup[0]!r} twice; list each parameter once")
    bad = [k for k in free if not np.all(np.asarray(cell.params[k], dtype=float) > 0)]
    if bad:
        raise StudyError(
            f"{where}: free parameter {bad[0]!r} has base values ≤ 0 in the {preset} cell; the "
            "priors are relative to a positive base value (free a conductance such as 'g_l')"
        )
    return tuple(free)


def _load_runs(study: Study, runs: list, path: Path) -> None:
    for i, r in enumerate(runs):
        where = f"{path.name} [[run]] #{i + 1}"
        if not isinstance(r, dict):
            raise StudyError(f"{where}: must be a table")
        _check(r, _RUN_KEYS, where)
        if r.get("protocol") not in ("paper", "bayesneuron"):
            raise StudyError(f"{where}: protocol must be 'paper' or 'bayesneuron'")
        if r.get("dt", 1.0) <= 0:
            raise StudyError(f"{where}: dt must be > 0 (ms)")
        for key in ("n_starts", "max_steps"):
            if key in r and r[key] < 1:
                raise StudyError(f"{where}: {key} must be ≥ 1")
        if r.get("noise_sigma", 0) < 0:
            raise StudyError(f"{where}: noise_sigma must be ≥ 0")
        for key in ("horizons", "windows"):  # windows: increasing output counts
            x = r.get(key, [])
            ok = all(isinstance(v, int) and v >= 1 for v in x) and (key < "w" or x == sorted(x))
            if x and (r["protocol"] != "bayesneuron" or not ok):
                raise StudyError(f"{where}: {key} must be ints ≥ 1, for protocol 'bayesneuron'")
        _check_variant_seeds(r, study.preset, where)
        study.runs.append(
            Run(
                name=r.get("name", f"run{i + 1}"),
                protocol=r["protocol"],
                designs=_designs(r.get("designs", "grid"), where, study.preset),
                n_starts=r.get("n_starts"),
                max_steps=r.get("max_steps"),
                priors=r.get("priors"),
                noise_sigma=float(r["noise_sigma"]) if "noise_sigma" in r else None,
                horizons=tuple(r["horizons"]) if "horizons" in r else None,
                windows=tuple(r.get("windows", ())),
                dt=float(r["dt"]) if "dt" in r else None,
                variant=r.get("variant"),
                seeds=tuple(r["seeds"]) if "seeds" in r else None,
            )
        )


def _check_variant_seeds(r: dict, preset: str, where: str) -> None:
    if (problem := variant_seeds_problem(r, preset)) is not None:
        raise StudyError(f"{where}: {problem}")


def _check_study(study: Study, path: Path) -> None:
    """What needs the whole study: distinct names and designs, priors, backend, numbers."""
    for r in study.runs + study.infers:
        labels = [d.label for d in r.designs]
        dup = sorted({lab for lab in labels if labels.count(lab) > 1})
        if dup:
            raise StudyError(f"{path}: design {dup[0]} is listed twice in {r.name}; list it once")
    names = [r.name for r in study.runs] + [r.name for r in study.infers]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: run names must be distinct, got {names}")
    vals = [study.priors] + [r.priors for r in study.runs + study.infers if r.priors]
    bad = [v for v in vals if v not in ("paper", "lognormal", "none")]
    if bad:
        raise StudyError(f"{path}: priors {bad[0]!r} unknown; use 'paper', 'lognormal' or 'none'")
    if study.backend not in BACKENDS:
        raise StudyError(f"{path}: backend {study.backend!r} unknown; use one of {BACKENDS}")
    sigma = 1.0 if study.sigma == "infer" else study.sigma
    finite = all(math.isfinite(x) for x in (sigma, study.dt, study.noise_sigma))
    if not (finite and study.n_traces >= 1 and sigma > 0 and study.dt > 0) or not (
        study.noise_sigma >= 0
    ):
        raise StudyError(
            f"{path}: need n_traces ≥ 1, finite sigma > 0, dt > 0 (ms) and noise_sigma ≥ 0 (mV)"
        )
    improper = [i.name for i in study.infers if (i.priors or study.priors) == "none"]
    if improper:
        raise StudyError(
            f"{path}: [[infer]] {improper[0]}: a posterior needs a proper prior; "
            "use priors = 'paper' or 'lognormal'"
        )
    _check_designs(study, path)


def _apply_smoke(study: Study, sm: dict) -> None:
    """``--smoke``: the [smoke] table's (or tiny default) sizes."""
    study.n_traces = sm.get("n_traces", 8)
    study.n_times = sm.get("n_times", 16)
    keep = _designs(sm["designs"], "[smoke]", study.preset) if "designs" in sm else None
    for r in study.runs:
        r.max_steps = sm.get("max_steps", 3)
        r.n_starts = min(r.n_starts, sm.get("n_starts", 2)) if r.n_starts else None
        if keep is not None:
            r.designs = [d for d in r.designs if d in keep] or r.designs[:1]
    for r in study.infers:
        r.max_steps = sm.get("svi_steps", 10)
        r.num_samples = sm.get("num_samples", 50)
        r.map_steps = sm.get("max_steps", 3)
        r.map_starts = min(r.map_starts, sm.get("n_starts", 2))
        r.warmup_steps, r.num_chains = min(r.warmup_steps, 10), 1
        r.num_particles = min(r.num_particles, 4)
        if keep is not None:
            r.designs = [d for d in r.designs if d in keep] or r.designs[:1]
    study.laplace = study.laplace[:2]


def _load_infers(study: Study, infers: list, path: Path) -> None:
    for i, r in enumerate(infers):
        where = f"{path.name} [[infer]] #{i + 1}"
        if not isinstance(r, dict):
            raise StudyError(f"{where}: must be a table")
        _check(r, INFER_KEYS, where)
        if problem := infer_problem(r):
            raise StudyError(f"{where}: {problem}")
        kw = {k: v for k, v in r.items() if k not in ("name", "designs", "method")}
        for key in ("ladder", "map_windows", "map_horizons"):
            if key in kw:
                kw[key] = tuple(kw[key])
        study.infers.append(
            Infer(
                name=r.get("name", f"infer{i + 1}"),
                method=r.get("method", "svi"),
                designs=_designs(r.get("designs", "grid"), where, study.preset),
                **kw,
            )
        )


def _check_designs(study: Study, path: Path) -> None:
    """Every design names compartments the preset's cell has (checked before any output)."""
    from bayesneuron.errors import DesignError
    from bayesneuron.reference.presets import get_preset

    morph = get_preset(study.preset).cell().morphology
    groups = [(f"[[run]] {r.name}", r.designs) for r in study.runs]
    groups += [(f"[[infer]] {r.name}", r.designs) for r in study.infers]
    groups += [("[laplace]", study.laplace)]
    for where, designs in groups:
        for d in designs:
            try:
                d.stim_index(morph), d.rec_index(morph)
            except DesignError as e:
                raise StudyError(f"{path.name} {where}: design {d.label}: {e}") from None
