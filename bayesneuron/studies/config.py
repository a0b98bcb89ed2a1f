"""Studies: a folder with a ``config.toml`` (and a README stating the question) → one command
→ a results folder of tables, figures and provenance.

``bayesneuron study run studies/paper_toy_map --out results/map [--smoke]``

The config (every key checked; unknown keys are errors)::

    [study]       name, question
    [experiment]  preset ("paper_toy" | "hh_tree", see :mod:`.presets`), seed, n_traces,
                  noise_sigma (mV, added to the data)
    [model]       sigma (mV), priors ("paper": base × U(0.7, 1.3) | "lognormal" | "none"),
                  dt (ms, Crank–Nicolson; default the preset's), backend ("auto" | "fused" | "torch":
                  see CrankNicolson)
    [[run]]       name, protocol ("paper" | "bayesneuron"), designs ("grid": every stim × rec
                  pair of the preset's site sets | "paper9" | "grid25" (paper_toy) |
                  ["all|all", "[0]|all", …]), n_starts, max_steps, priors and noise_sigma
                  (override [model] / [experiment]), horizons (multiple-shooting stages), dt
    [[infer]]     name, method ("svi" | "laplace" | "nuts"), guide ("mvn" | "normal" |
                  "lowrank" | "iaf"), designs, num_particles, max_steps (SVI), num_samples,
                  map_starts, map_steps, map_init ("starts": base values and prior draws;
                  "truth": the ground truth and prior draws) — the MAP each posterior
                  starts from; warmup_steps,
                  num_chains (NUTS), priors, noise_sigma
    [laplace]     designs: designs whose Fisher/Laplace analysis at the ground truth to report
    [smoke]       n_traces, n_times, max_steps, n_starts, designs: a minutes-long version

Outputs in ``--out``: ``table.csv`` (one row per run × design: ``stim, rec, protocol, L0,
L_final, gte_na_final, gte_k_final, steps, wall_s``, then extras), ``laplace.csv``,
``fits.json`` (every fit with its optimum, starts and settings), ``histories.npz``, figures
(``<run>_loss_gte.png``, ``<run>_trajectories_<design>.png``, ``<run>_gte_grid.png``),
``config.json`` (resolved) and ``environment.json``. Each run checkpoints to
``<out>/checkpoints/``; ``--resume`` continues an interrupted study.

``[[infer]]`` runs write ``designs.csv`` (one row per run × design: ``stim, rec, guide,
mean_contraction, min_contraction, max_abs_z, coverage_90, logdet_fisher, elbo, wall_s``, then
extras), ``parameters.csv`` (per design × parameter), ``ranking.csv``, one netCDF
InferenceData per design (``idata/<run>/<design>.nc``), figures (``<run>_contraction.png``,
``<run>_forest_<param>.png``, per-design posterior/pair/predictive plots for up to 9 designs)
and ``report.html`` (self-contained).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bayesneuron.errors import BayesneuronError
from bayesneuron.protocol.design import Design
from bayesneuron.simulation.solvers import BACKENDS

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
    "load_study",
    "prior_spec",
    "study_from_config",
]

TABLE_COLUMNS = (
    "stim",
    "rec",
    "protocol",
    "L0",
    "L_final",
    "gte_na_final",
    "gte_k_final",
    "steps",
    "wall_s",
)


class StudyError(BayesneuronError):
    """A study folder or its config is invalid."""


_SCHEMA = {
    "study": {"name": str, "question": str},
    "experiment": {"preset": str, "seed": int, "n_traces": int, "noise_sigma": float},
    "model": {"sigma": float, "priors": str, "dt": float, "backend": str},
    "laplace": {"designs": (str, list)},
    "smoke": {
        "svi_steps": int,
        "num_samples": int,
        "n_traces": int,
        "n_times": int,
        "max_steps": int,
        "n_starts": int,
        "designs": (str, list),
    },
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
    "dt": float,
}


_INFER_KEYS = {
    "name": str,
    "method": str,
    "guide": str,
    "designs": (str, list),
    "num_particles": int,
    "max_steps": int,
    "num_samples": int,
    "map_starts": int,
    "map_steps": int,
    "map_init": str,
    "warmup_steps": int,
    "num_chains": int,
    "priors": str,
    "noise_sigma": float,
}
METHODS = ("svi", "laplace", "nuts")
DESIGN_COLUMNS = (
    "stim",
    "rec",
    "guide",
    "mean_contraction",
    "min_contraction",
    "max_abs_z",
    "coverage_90",
    "logdet_fisher",
    "elbo",
    "wall_s",
)


@dataclass
class Infer:
    name: str
    method: str
    designs: list[Design]
    guide: str = "mvn"
    num_particles: int = 8
    max_steps: int = 400
    num_samples: int = 400
    map_starts: int = 4
    map_steps: int = 50
    map_init: str = "starts"
    warmup_steps: int = 200
    num_chains: int = 2
    priors: str | None = None
    noise_sigma: float | None = None


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
    dt: float | None = None


@dataclass
class Study:
    folder: Path
    name: str
    question: str
    seed: int = 20230619
    n_traces: int = 100
    n_times: int | None = None  # None: all of the preset's output times (--smoke: fewer)
    noise_sigma: float = 0.0
    sigma: float = 1.0
    priors: str = "paper"
    dt: float = 0.004
    preset: str = "paper_toy"
    backend: str = "auto"
    runs: list[Run] = field(default_factory=list)
    infers: list[Infer] = field(default_factory=list)
    laplace: list[Design] = field(default_factory=list)
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
    allowed = set(_SCHEMA) | {"run", "infer"}
    for k in raw:
        if k not in allowed:
            raise StudyError(f"{path}: unknown section [{k}]; allowed: {sorted(allowed)}")
    for sec, schema in _SCHEMA.items():
        if not isinstance(raw.get(sec, {}), dict):
            raise StudyError(f"{path}: [{sec}] must be a table")
        _check(raw.get(sec, {}), schema, f"{path.name} [{sec}]")
    st, ex, mo = raw.get("study", {}), raw.get("experiment", {}), raw.get("model", {})
    if "name" not in st:
        raise StudyError(f"{path}: [study] needs a name")
    from bayesneuron.reference.presets import PRESETS, get_preset

    preset = ex.get("preset", "paper_toy")
    if preset not in PRESETS:
        raise StudyError(f"{path}: preset {preset!r} unknown; available: {sorted(PRESETS)}")
    study = Study(
        folder=folder,
        name=st["name"],
        question=st.get("question", ""),
        seed=ex.get("seed", 20230619),
        n_traces=ex.get("n_traces", 100),
        noise_sigma=float(ex.get("noise_sigma", 0.0)),
        sigma=float(mo.get("sigma", 1.0)),
        priors=mo.get("priors", "paper"),
        dt=float(mo.get("dt", get_preset(preset).dt)),
        backend=mo.get("backend", "auto"),
        preset=preset,
        raw=raw,
    )
    runs, infers = raw.get("run", []), raw.get("infer", [])
    if not isinstance(runs, list) or not isinstance(infers, list) or not (runs or infers):
        raise StudyError(f"{path}: no [[run]] or [[infer]] tables; add at least one")
    _load_infers(study, infers, path)
    for i, r in enumerate(runs):
        where = f"{path.name} [[run]] #{i + 1}"
        _check(r, _RUN_KEYS, where)
        if r.get("protocol") not in ("paper", "bayesneuron"):
            raise StudyError(f"{where}: protocol must be 'paper' or 'bayesneuron'")
        study.runs.append(
            Run(
                name=r.get("name", f"run{i + 1}"),
                protocol=r["protocol"],
                designs=_designs(r.get("designs", "grid"), where, preset),
                n_starts=r.get("n_starts"),
                max_steps=r.get("max_steps"),
                priors=r.get("priors"),
                noise_sigma=float(r["noise_sigma"]) if "noise_sigma" in r else None,
                horizons=tuple(r["horizons"]) if "horizons" in r else None,
                dt=float(r["dt"]) if "dt" in r else None,
            )
        )
        if r.get("dt", 1.0) <= 0:
            raise StudyError(f"{where}: dt must be > 0 (ms)")
        for key in ("n_starts", "max_steps"):
            if key in r and r[key] < 1:
                raise StudyError(f"{where}: {key} must be ≥ 1")
        if r.get("noise_sigma", 0) < 0:
            raise StudyError(f"{where}: noise_sigma must be ≥ 0")
        if "horizons" in r and (
            r["protocol"] != "bayesneuron"
            or not all(isinstance(x, int) and x >= 1 for x in r["horizons"])
        ):
            raise StudyError(f"{where}: horizons must be ints ≥ 1, for protocol 'bayesneuron'")
    for r in study.runs + study.infers:
        labels = [d.label for d in r.designs]
        dup = sorted({lab for lab in labels if labels.count(lab) > 1})
        if dup:
            raise StudyError(f"{path}: design {dup[0]} is listed twice in {r.name}; list it once")
    names = [r.name for r in study.runs] + [r.name for r in study.infers]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: run names must be distinct, got {names}")
    if "laplace" in raw:
        study.laplace = _designs(raw["laplace"].get("designs", "grid"), "[laplace]", preset)
    vals = [study.priors] + [r.priors for r in study.runs + study.infers if r.priors]
    bad = [v for v in vals if v not in ("paper", "lognormal", "none")]
    if bad:
        raise StudyError(f"{path}: priors {bad[0]!r} unknown; use 'paper', 'lognormal' or 'none'")
    if study.backend == "numba":  # deprecated alias, one release
        object.__setattr__(study, "backend", "fused")
    if study.backend not in BACKENDS:
        raise StudyError(f"{path}: backend {study.backend!r} unknown; use one of {BACKENDS}")
    finite = all(math.isfinite(x) for x in (study.sigma, study.dt, study.noise_sigma))
    if not (finite and study.n_traces >= 1 and study.sigma > 0 and study.dt > 0) or not (
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
    if smoke:
        sm = raw.get("smoke", {})
        study.n_traces = sm.get("n_traces", 8)
        study.n_times = sm.get("n_times", 16)
        keep = _designs(sm["designs"], "[smoke]", preset) if "designs" in sm else None
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
    return study


def _load_infers(study: Study, infers: list, path: Path) -> None:
    for i, r in enumerate(infers):
        where = f"{path.name} [[infer]] #{i + 1}"
        if not isinstance(r, dict):
            raise StudyError(f"{where}: must be a table")
        _check(r, _INFER_KEYS, where)
        method = r.get("method", "svi")
        if method not in METHODS:
            raise StudyError(f"{where}: method {method!r} unknown; use one of {list(METHODS)}")
        from bayesneuron.inference.svi import GUIDES

        if r.get("guide", "mvn") not in GUIDES:
            raise StudyError(f"{where}: guide {r['guide']!r} unknown; use one of {sorted(GUIDES)}")
        for key in (
            "num_particles",
            "max_steps",
            "num_samples",
            "map_starts",
            "map_steps",
            "num_chains",
        ):
            if key in r and r[key] < 1:
                raise StudyError(f"{where}: {key} must be ≥ 1")
        if r.get("map_init", "starts") not in ("starts", "truth"):
            raise StudyError(f"{where}: map_init must be 'starts' or 'truth'")
        if r.get("noise_sigma", 0) < 0 or r.get("warmup_steps", 0) < 0:
            raise StudyError(f"{where}: noise_sigma and warmup_steps must be ≥ 0")
        kw = {k: v for k, v in r.items() if k not in ("name", "designs", "method")}
        study.infers.append(
            Infer(
                name=r.get("name", f"infer{i + 1}"),
                method=method,
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


def prior_spec(name: str):
    from bayesneuron.inference.priors import LogNormalPrior, ScaledUniformPrior

    return {"paper": ScaledUniformPrior(0.7, 1.3), "lognormal": LogNormalPrior(0.5), "none": None}[
        name
    ]


def build_experiment(study: Study, design: Design, priors: str, device, noise_sigma=None, dt=None):
    from bayesneuron.reference.presets import get_preset
    from bayesneuron.simulation.solvers import CrankNicolson

    model, v, truth = get_preset(study.preset).experiment(
        design,
        n_traces=study.n_traces,
        seed=study.seed,
        noise_sigma=study.noise_sigma if noise_sigma is None else noise_sigma,
        sigma=study.sigma,
        priors=prior_spec(priors),
        solver=CrankNicolson(dt=dt or study.dt, backend=study.backend),
        device=device,
    )
    if (
        study.n_times is not None and study.n_times < model.t_eval.size
    ):  # smoke: the first n_times output times only
        from bayesneuron.inference.model import NeuronModel

        model = NeuronModel(
            model.cell,
            model.stimulus,
            model.t_eval[: study.n_times],
            design,
            priors=prior_spec(priors),
            sigma=study.sigma,
            solver=model.solver,
            device=device,
        )
        v = v[..., : study.n_times]
    return model, v, truth
