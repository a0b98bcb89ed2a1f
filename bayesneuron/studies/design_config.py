"""The config of an optimal-design study (``bayesneuron design optimize --config FILE.toml``):
every key checked before any work starts, unknown keys and sections are errors.

::

    [study]       name, question
    [experiment]  preset ("paper_toy" | "hh_tree"), seed (of the preset's random protocol and
                  ground truth), n_traces
    [design]      designs ("grid": the preset's 25 stim × rec pairs | "grid25" | "paper9"
                  (paper_toy) | ["all|all", "[0]|all", …]), family ("bins" | "sines" |
                  "chirp" | "steps" | "ramps"; "paper" and "ladder" starts are fitted to it),
                  family_options (optional table of the family's own settings, e.g.
                  {n_epochs = 5} for steps/ramps, {n_sines = 2, f_max = 2.0} for sines),
                  criterion ("bayes_d_opt" | "contraction" | "eig_laplace"), lr and
                  lr_final (optional: Adam's rate decays geometrically from lr to it over
                  each start's steps), bounds
                  ([lo, hi] current density in µA/cm²; on a geometric cell nA per site through
                  the compartment's area), max_charge (optional: the largest charge
                  Σ|I|·dt per trace and electrode, nC/cm², likewise by area), steps (Adam
                  steps per start; 0: no optimiser, the best of the starts — with init =
                  ["chosen"] the best sweeps of the protocol, chosen rather than designed),
                  lr, init (starts among "paper", "ladder", "random", "chosen": the sweeps
                  of 500 of the protocol's that inform most together, chosen on further
                  prior draws), refine_steps (> 0: a second stage of that many steps on the
                  mean posterior contraction from the first stage's best point), theta_opt,
                  theta_eval (prior draws the optimiser sees / the
                  held-out ones the result is judged on), theta_select (optional, default 0:
                  prior draws, seen by neither, on which the best of the starts' first and
                  final points is chosen; 0: on the optimiser's theta_opt draws),
                  resample (fresh draws every step),
                  dt_opt, dt_eval (ms), step_draws (fresh draws of the preset's protocol),
                  seed (of the optimiser: prior draws, random starts), workers (processes),
                  theta ("prior", the default: design for every cell of the prior | the
                  path of a posterior .nc of the preset's free parameters, relative to the
                  config file: design for that fitted cell, its draws in place of prior
                  draws), start_from (optional: the --out folder of an earlier run whose
                  stimulus of each design is one more start, "previous", e.g. a design for
                  the prior refined for a fitted cell)
    [output]      figures ("all" | "none" | a list of design labels)
    [sites]       optional, for ``bayesneuron design sites``: n_electrodes (stimulating
                  electrodes to place), candidates ("all" | compartment indices), rec (the
                  fixed recording, a label part: "all", "[0]", …), n_traces, steps (default:
                  the study's), exchange (true: an exchange pass after greedy), max_rounds,
                  init (starts per site set, default ["ladder"])

Defaults reproduce the reference run of ``studies/optimal_design`` on the paper's cell; the
bounds and steps ``dt_opt`` / ``dt_eval`` default to the preset's (:data:`PRESET_DEFAULTS`).

Example:
    >>> study = load_design_study("studies/optimal_design/config.toml", steps=2)
    >>> study.designs[:2]
    ('[0]|[0]', '[0]|[0,1]')
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from bayesneuron.errors import BayesneuronError
from bayesneuron.protocol.design import split_labels
from bayesneuron.studies.config import StudyError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "PRESET_DEFAULTS",
    "DesignStudy",
    "SiteSelection",
    "design_study_from_dict",
    "load_design_study",
]

PRESET_DEFAULTS = {
    "paper_toy": {"bounds": (0.0, 19.0), "dt_opt": 0.02, "dt_eval": 0.004},
    # hh_tree: D-optimality of its protocol (all|all, 20 traces, 10 prior draws) is 59.366 /
    # 59.362 / 59.361 nats at dt 0.025 / 0.0125 / 0.005 ms
    "hh_tree": {"bounds": (0.0, 20.0), "dt_opt": 0.025, "dt_eval": 0.0125},
}
"""Per preset: the default ``bounds`` (µA/cm²), ``dt_opt`` and ``dt_eval`` (ms)."""
INITS = ("paper", "ladder", "random", "chosen")
_SCHEMA = {
    "study": {"name": str, "question": str},
    "experiment": {"preset": str, "seed": int, "n_traces": int},
    "design": {
        "designs": (str, list),
        "family": str,
        "family_options": dict,
        "criterion": str,
        "bounds": list,
        "max_charge": float,
        "steps": int,
        "refine_steps": int,
        "lr": float,
        "lr_final": float,
        "init": list,
        "theta_opt": int,
        "theta_eval": int,
        "theta_select": int,
        "resample": bool,
        "dt_opt": float,
        "dt_eval": float,
        "step_draws": int,
        "seed": int,
        "workers": int,
        "theta": str,
        "start_from": str,
    },
    "output": {"figures": (str, list)},
    "sites": {
        "n_electrodes": int,
        "candidates": (str, list),
        "rec": str,
        "n_traces": int,
        "steps": int,
        "exchange": bool,
        "max_rounds": int,
        "init": list,
    },
}
_FLAT = {"design.seed": "opt_seed", "experiment.seed": "seed"}
_NOT_RESULTS = ("name", "question", "designs", "workers", "figures", "sites")  # change no number


@dataclass(frozen=True)
class SiteSelection:
    """Electrode site selection (``[sites]``): greedy placement of ``n_electrodes``
    stimulating electrodes among ``candidates`` with the recording ``rec`` fixed, then (if
    ``exchange``) Fedorov exchange of at most ``max_rounds`` swaps; every site set's stimulus
    optimised with the study's settings but ``n_traces``, ``steps`` and the starts ``init``.

    Attributes:
        n_electrodes: electrodes to place (1 … ``len(candidates)``).
        candidates: compartments that may carry one, sorted indices ≥ 0.
        rec: the recorded compartments as a label part (``"all"``, ``"[0,-1]"``).
        n_traces, steps: traces per stimulus and optimiser steps per start.
        exchange: run the exchange pass after greedy.
        max_rounds: the most swaps of the exchange pass.
        init: starts per site set among ``"paper"``, ``"ladder"``, ``"random"``.
    """

    n_electrodes: int
    candidates: tuple[int, ...]
    rec: str = "all"
    n_traces: int = 20
    steps: int = 80
    exchange: bool = True
    max_rounds: int = 3
    init: tuple[str, ...] = ("ladder",)


@dataclass(frozen=True)
class DesignStudy:
    """A resolved, checked optimal-design study (fields as the config's keys; ``seed`` is
    ``[experiment] seed``, ``opt_seed`` is ``[design] seed``; ``designs`` are labels)."""

    preset: str
    designs: tuple[str, ...]
    name: str = "optimal_design"
    question: str = ""
    seed: int = 20230619
    n_traces: int = 20
    family: str = "bins"
    family_options: dict = dataclasses.field(default_factory=dict)
    criterion: str = "bayes_d_opt"
    bounds: tuple[float, float] = (0.0, 19.0)
    max_charge: float | None = None
    steps: int = 80
    refine_steps: int = 0
    lr: float = 0.1
    lr_final: float | None = None
    init: tuple[str, ...] = INITS[:3]  # "chosen" when asked for
    theta_opt: int = 8
    theta_eval: int = 10
    theta_select: int = 0
    resample: bool = True
    dt_opt: float = 0.02
    dt_eval: float = 0.004
    step_draws: int = 5
    opt_seed: int = 0
    workers: int = 1
    figures: tuple[str, ...] = ()
    sites: SiteSelection | None = None
    theta: str = "prior"
    start_from: str | None = None

    def settings(self) -> dict:
        """The fields that change the numbers (a resumed run must match them; empty
        ``family_options`` and ``theta_select = 0`` are left out, so a run started before
        they existed resumes)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_RESULTS}
        for key in ("family_options", "theta_select"):
            if not out[key]:
                del out[key]
        return out


def load_design_study(path, **overrides) -> DesignStudy:
    """The study of the TOML file ``path``; ``overrides`` (field → value, ``None`` ignored)
    replace its values, e.g. ``designs="all|all"``, ``steps=2``, ``workers=2``; ``sites=``
    a dict of ``[sites]`` keys does the same for :class:`SiteSelection`.

    Raises:
        StudyError: the file cannot be read, or a section, key or value is wrong (the message
            names it).
    """
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise StudyError(f"--config {p}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise StudyError(f"{p}: not a readable TOML file ({e})") from None
    table = raw.get("design") if isinstance(raw.get("design"), dict) else {}
    for key in ("theta", "start_from"):  # files and folders named relative to the config
        value = table.get(key)
        if isinstance(value, str) and value != "prior":
            table = table | {key: str(p.parent / Path(value).expanduser())}
    if table:
        raw["design"] = table
    return design_study_from_dict(raw, str(p), **overrides)


def design_study_from_dict(
    raw: dict, where: str = "config", *, sites: dict | None = None, **overrides
) -> DesignStudy:
    """:func:`load_design_study` of a parsed TOML table."""
    raw = dict(raw)
    sites_raw = raw.pop("sites", None)
    flat = _flatten(raw, where)
    flat |= {k: v for k, v in overrides.items() if v is not None}
    preset = flat.get("preset")
    if preset is None:
        raise StudyError(f"{where}: [experiment] preset is missing; use one of {_presets()}")
    if preset not in PRESET_DEFAULTS:
        raise StudyError(f"{where}: [experiment] preset {preset!r}; use one of {_presets()}")
    flat = {"designs": "grid"} | PRESET_DEFAULTS[preset] | flat
    flat["designs"] = _designs(flat["designs"], preset, where)
    flat["figures"] = _figures(flat.pop("figures", "all"), flat["designs"], where)
    for key in ("bounds", "init"):
        if key in flat:
            flat[key] = tuple(flat[key])
    study = DesignStudy(**flat)
    _check(study, where)
    found = {} if sites_raw is None else _flatten({"sites": sites_raw}, where)
    found |= {k: v for k, v in (sites or {}).items() if v is not None}
    if not found:
        return study
    return dataclasses.replace(study, sites=_site_selection(found, study, where))


def _presets() -> list[str]:
    return sorted(PRESET_DEFAULTS)


def _flatten(raw: dict, where: str) -> dict:
    flat = {}
    for section, table in raw.items():
        if section not in _SCHEMA:
            raise StudyError(f"{where}: unknown section [{section}]; allowed: {sorted(_SCHEMA)}")
        if not isinstance(table, dict):
            raise StudyError(f"{where}: [{section}] must be a table")
        for key, value in table.items():
            kind = _SCHEMA[section].get(key)
            if kind is None:
                raise StudyError(
                    f"{where}: [{section}] unknown key {key!r}; allowed: {sorted(_SCHEMA[section])}"
                )
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise StudyError(
                    f"{where}: [{section}] {key} = {value!r} has the wrong type; expected "
                    f"{_kind_name(kind)}"
                )
            flat[_FLAT.get(f"{section}.{key}", key)] = value
    return flat


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return " or ".join(names.get(k, "a list") for k in kinds)


def _designs(spec, preset: str, where: str) -> tuple[str, ...]:
    """Design labels of ``spec`` (a list name, comma-separated labels or a list), checked."""
    from bayesneuron.protocol.design import Design
    from bayesneuron.reference.presets import get_preset

    p = get_preset(preset)
    if isinstance(spec, str) and (spec == "grid" or spec in p.named):
        return tuple(d.label for d in p.designs(spec))
    labels = [q for q in split_labels(spec) if q] if isinstance(spec, str) else list(spec)
    if not labels:
        raise StudyError(f"{where}: [design] designs is empty; give 'grid' or design labels")
    morph, out = p.cell().morphology, []
    for label in labels:
        try:
            d = Design.from_label(str(label))
            d.stim_index(morph), d.rec_index(morph)
        except BayesneuronError as e:
            raise StudyError(f"{where}: [design] designs: {label!r}: {e}") from None
        out.append(d.label)
    if len(set(out)) != len(out):
        raise StudyError(f"{where}: [design] designs lists a design twice: {out}")
    return tuple(out)


def _figures(spec, designs: tuple[str, ...], where: str) -> tuple[str, ...]:
    if spec == "all":
        return designs
    if spec == "none":
        return ()
    if isinstance(spec, str):
        raise StudyError(f"{where}: [output] figures = {spec!r}; use 'all', 'none' or labels")
    from bayesneuron.protocol.design import Design

    try:
        labels = tuple(Design.from_label(str(s)).label for s in spec)
    except BayesneuronError as e:
        raise StudyError(f"{where}: [output] figures: {e}") from None
    return tuple(lab for lab in labels if lab in designs)  # those of this run


def _check_family_options(s: DesignStudy, where: str) -> None:
    """The family's own settings: known to it (not the bounds, grid or sites the study sets)
    and valid (the family's checks, on a one-trace instance)."""
    from bayesneuron.errors import StimulusError
    from bayesneuron.optimal_design import FAMILIES, StimulusFamily

    cls = FAMILIES[s.family]
    own = {f.name for f in dataclasses.fields(cls)} - {
        f.name for f in dataclasses.fields(StimulusFamily)
    }
    unknown = sorted(set(s.family_options) - own)
    if unknown:
        raise StudyError(
            f"{where}: [design] family_options {unknown} unknown to family {s.family!r}; "
            f"allowed: {sorted(own) or 'none'}"
        )
    try:
        cls(n_traces=1, sites=(0,), **s.family_options)
    except (StimulusError, TypeError) as e:
        raise StudyError(f"{where}: [design] family_options: {e}") from None


def _check(s: DesignStudy, where: str) -> None:
    from bayesneuron.optimal_design import CRITERIA, FAMILIES

    def bad(key: str, what: str):
        raise StudyError(f"{where}: {key} = {getattr(s, key.split()[-1])!r}: {what}")

    if s.family not in FAMILIES:
        bad("[design] family", f"use one of {sorted(FAMILIES)}")
    _check_family_options(s, where)
    if s.criterion not in CRITERIA:
        bad("[design] criterion", f"use one of {list(CRITERIA)}")
    lo_hi = s.bounds
    if len(lo_hi) != 2 or not all(isinstance(b, (int, float)) for b in lo_hi):
        bad("[design] bounds", "give [lo, hi] in µA/cm², e.g. [0.0, 19.0]")
    if not (math.isfinite(lo_hi[0]) and math.isfinite(lo_hi[1]) and lo_hi[0] <= 0.0 < lo_hi[1]):
        bad("[design] bounds", "need finite lo ≤ 0 < hi (the first and last bins are zero)")
    for key in ("n_traces", "steps", "theta_opt", "theta_eval", "step_draws", "workers"):
        v, least = getattr(s, key), 0 if key == "steps" else 1  # steps 0: the best start
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= least):
            bad(f"[{'experiment' if key == 'n_traces' else 'design'}] {key}", f"must be ≥ {least}")
    if s.max_charge is not None and not (math.isfinite(s.max_charge) and s.max_charge > 0):
        bad("[design] max_charge", "must be > 0 (nC/cm² per trace and electrode)")
    if not (isinstance(s.refine_steps, int) and s.refine_steps >= 0):
        bad("[design] refine_steps", "must be ≥ 0 (0: no second stage)")
    if not (isinstance(s.theta_select, int) and s.theta_select >= 0):
        bad("[design] theta_select", "must be ≥ 0 (0: choose on the optimiser's own draws)")
    if s.theta_select and not s.resample:
        bad("[design] theta_select", "needs resample = true (else every step is a candidate)")
    for key in ("lr", "dt_opt", "dt_eval"):
        if not (math.isfinite(getattr(s, key)) and getattr(s, key) > 0):
            bad(f"[design] {key}", "must be > 0")
    if s.lr_final is not None and not (math.isfinite(s.lr_final) and s.lr_final > 0):
        bad("[design] lr_final", "must be > 0 (the learning rate at a start's last step)")
    empty = not s.init and s.start_from is None  # start_from alone is a start
    if empty or any(i not in INITS for i in s.init) or len(set(s.init)) != len(s.init):
        bad("[design] init", f"give distinct starts among {list(INITS)} (or [] with start_from)")
    if s.start_from is not None and not Path(s.start_from).is_dir():
        bad("[design] start_from", "no such folder; give the --out folder of an earlier run")
    if s.theta != "prior" and not Path(s.theta).is_file():
        bad(
            "[design] theta",
            "no such file; give 'prior' or a posterior .nc (bayesneuron infer, a study run)",
        )


def _site_selection(vals: dict, study: DesignStudy, where: str) -> SiteSelection:
    """The checked :class:`SiteSelection` of ``[sites]`` keys ``vals`` (defaults: the
    study's ``n_traces`` and ``steps``)."""
    from bayesneuron.protocol.design import Design
    from bayesneuron.reference.presets import get_preset

    def bad(key: str, what: str):
        raise StudyError(f"{where}: [sites] {key} = {vals.get(key)!r}: {what}")

    if "n_electrodes" not in vals:
        raise StudyError(
            f"{where}: [sites] n_electrodes is missing; give the number of stimulating "
            "electrodes to place, e.g. n_electrodes = 3 (or --n-electrodes 3)"
        )
    cell = get_preset(study.preset).cell()
    n_comp = cell.n_comp
    cand = vals.get("candidates", "all")
    if cand == "all":
        cand = list(range(n_comp))
    if isinstance(cand, str) or not cand:
        bad("candidates", "give 'all' or a list of compartment indices, e.g. [0, 1, 5]")
    if any(
        isinstance(c, bool) or not isinstance(c, int) or not -n_comp <= c < n_comp for c in cand
    ):
        bad("candidates", f"compartments are 0–{n_comp - 1} (or -1 … -{n_comp} from the end)")
    cand = sorted(c % n_comp for c in cand)
    if len(set(cand)) != len(cand):
        bad("candidates", "lists a compartment twice")
    n = vals["n_electrodes"]
    if isinstance(n, bool) or not (isinstance(n, int) and 1 <= n <= len(cand)):
        bad("n_electrodes", f"must be 1 … {len(cand)} (the number of candidates)")
    try:
        design = Design.from_label(f"all|{vals.get('rec', 'all')}")
        design.rec_index(cell.morphology)
    except BayesneuronError as e:
        bad("rec", f"{e}; give 'all' or a list like '[0,-1]'")
    for key, least in (("n_traces", 1), ("steps", 1), ("max_rounds", 0)):
        v = vals.get(key, least)
        if isinstance(v, bool) or not (isinstance(v, int) and v >= least):
            bad(key, f"must be an integer ≥ {least}")
    init = tuple(vals.get("init", ("ladder",)))
    site_inits = INITS[:3]  # "chosen" picks sweeps for one site set, not for each candidate
    if not init or any(i not in site_inits for i in init) or len(set(init)) != len(init):
        bad("init", f"give distinct starts among {list(site_inits)}")
    return SiteSelection(
        n_electrodes=n,
        candidates=tuple(cand),
        rec=design.label.split("|")[1],
        n_traces=vals.get("n_traces", study.n_traces),
        steps=vals.get("steps", study.steps),
        exchange=vals.get("exchange", True),
        max_rounds=vals.get("max_rounds", 3),
        init=init,
    )
