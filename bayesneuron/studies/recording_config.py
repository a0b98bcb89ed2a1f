"""A study of your own cell and recording: ``[cell]``, ``[data]`` and ``[parameters]`` in a
``config.toml`` (no preset), checked at load with errors that say how to fix them.

::

    [study]       name, question
    [cell]        swc (a file) | soma = {length, diam} and dendrites = [{name, length, diam,
                  nseg}] (cylinders at the soma's far end); nseg or d_lambda; ra (Ω·cm),
                  cm (µF/cm²), celsius (°C), v0 (mV or "data": the recorded voltage at the
                  window's start), channels (names in the cortical library: na, kdr, kv31,
                  km, ih, l)
    [cell.values] per-region defaults: a table per region name ("all" first), e.g.
                  soma = {g_na = 40.0}; applied in the order given
    [data]        path (.abf or .nwb), fit_sweeps, held_out, site (electrode compartment:
                  name or index), channel (ABF input), offset_mv, dt (output resolution,
                  ms: a multiple of the sampling interval, by block averaging), window
                  ([start, stop] ms)
    [parameters]  sigma (mV or "infer"), prior_sd (log-normal sd of conductances; Normal sd
                  in mV of reversal potentials), [[parameters.free]] tables: name, and
                  regions = [...] (Shared; default the whole cell) or form = "exp_distance"
                  with region, g0, lam (µm), free (["g0", "lam"]); optional prior_sd
    [solver]      dt (ms, Crank–Nicolson), backend
    [fit]         n_starts (base values, then prior draws), max_steps, horizons, seed
    [posterior]   ladder, svi_steps, num_particles, num_samples, psis_samples,
                  predictive_draws, spike_threshold_mv
    [smoke]       any [data]/[fit]/[posterior] key: a tiny run for tests and a first look

Paths are relative to the config file. Units: mV, ms, nA.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from bayesneuron.errors import BayesneuronError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["RecordingStudy", "is_recording_config", "load_recording_study", "read_config"]

_NUM = (int, float)
_SCHEMA = {
    "study": {"name": str, "question": str},
    "cell": {
        "swc": str,
        "soma": dict,
        "dendrites": list,
        "nseg": int,
        "d_lambda": float,
        "ra": _NUM,
        "cm": _NUM,
        "celsius": _NUM,
        "v0": (str, int, float),
        "channels": list,
        "values": dict,
    },
    "data": {
        "path": str,
        "fit_sweeps": list,
        "held_out": list,
        "site": (str, int),
        "channel": int,
        "offset_mv": _NUM,
        "dt": _NUM,
        "window": list,
    },
    "parameters": {"sigma": (str, int, float), "prior_sd": _NUM, "free": list},
    "solver": {"dt": _NUM, "backend": str},
    "fit": {"n_starts": int, "max_steps": int, "horizons": list, "seed": int},
    "posterior": {
        "ladder": list,
        "svi_steps": int,
        "num_particles": int,
        "num_samples": int,
        "psis_samples": int,
        "predictive_draws": int,
        "spike_threshold_mv": _NUM,
    },
}
_SMOKE = {k: v for sec in ("data", "fit", "posterior") for k, v in _SCHEMA[sec].items()}
_FREE_KEYS = {
    "name": str,
    "regions": list,
    "form": str,
    "region": str,
    "g0": _NUM,
    "lam": _NUM,
    "free": list,
    "prior_sd": _NUM,
}


class ConfigError(BayesneuronError):
    """A config of your own cell and recording is invalid."""


@dataclass(frozen=True)
class RecordingStudy:
    """A validated ``[cell]``/``[data]``/``[parameters]`` config (module docstring): the
    tables as given, with paths resolved against the config's folder and ``--smoke`` applied.
    Defaults fill every key not given."""

    name: str
    question: str
    folder: Path
    source: Path
    cell: dict
    data: dict
    parameters: dict
    solver: dict
    fit: dict
    posterior: dict
    smoke: bool = False
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def recording_path(self) -> Path:
        return Path(self.data["path"])

    def with_data(self, **changes) -> RecordingStudy:
        """The same study with ``[data]`` keys replaced (another file, other sweeps)."""
        return replace(self, data={**self.data, **changes})


_DEFAULTS = {
    "cell": {"nseg": 1, "ra": 100.0, "cm": 1.0, "celsius": 34.0, "v0": "data", "values": {}},
    "data": {"site": 0, "channel": 0, "offset_mv": 0.0, "dt": 0.25, "window": None},
    "parameters": {"sigma": "infer", "prior_sd": 0.5},
    "solver": {"dt": 0.05, "backend": "auto"},
    "fit": {"n_starts": 4, "max_steps": 30, "horizons": None, "seed": 20230619},
    "posterior": {
        "ladder": ["svi:mvn", "svi:iaf", "importance", "nuts"],
        "svi_steps": 300,
        "num_particles": 4,
        "num_samples": 400,
        "psis_samples": 2000,
        "predictive_draws": 200,
        "spike_threshold_mv": -10.0,
    },
}


def read_config(path: str | Path) -> dict:
    """The parsed TOML of ``path`` (a ``config.toml`` or a study folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.toml"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: give a config.toml or a folder holding one")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read: not UTF-8 text") from None


def is_recording_config(raw: dict) -> bool:
    """Whether a parsed config describes your own cell and recording (``[cell]``/``[data]``)
    rather than a preset's synthetic experiment."""
    return "cell" in raw or "data" in raw


def load_recording_study(path: str | Path, smoke: bool = False) -> RecordingStudy:
    """Read and check a config of your own cell and recording (module docstring).

    Args:
        path: the ``config.toml``, or the study folder holding it.
        smoke: apply the ``[smoke]`` table (a tiny run).

    Raises:
        ConfigError: an unknown section, key or channel, a wrong type, a missing file, sweeps
            out of range, a bad window or resolution — each saying what to change.
    """
    path = Path(path)
    source = path / "config.toml" if path.is_dir() else path
    raw = read_config(source)
    where = source.name
    for sec, table in raw.items():
        if sec != "smoke" and sec not in _SCHEMA:
            raise ConfigError(f"{where}: unknown section [{sec}]; allowed: {sorted(_SCHEMA)}")
        _check(table, _SMOKE if sec == "smoke" else _SCHEMA[sec], f"{where} [{sec}]")
    for need in ("study", "cell", "data", "parameters"):
        if need not in raw:
            raise ConfigError(f"{where}: missing section [{need}] (see `bayesneuron fit --help`)")
    if "name" not in raw["study"]:
        raise ConfigError(f"{where}: [study] needs a name")
    tables = {s: {**_DEFAULTS.get(s, {}), **raw.get(s, {})} for s in _SCHEMA if s != "study"}
    if smoke:
        for k, v in raw.get("smoke", {}).items():
            sec = next(s for s in ("data", "fit", "posterior") if k in _SCHEMA[s])
            tables[sec][k] = v
    folder = source.parent.resolve()
    _check_cell(tables["cell"], folder, where)
    _check_data(tables["data"], folder, where)
    _check_parameters(tables["parameters"], where)
    _check_numbers(tables, where)
    return RecordingStudy(
        name=raw["study"]["name"],
        question=raw["study"].get("question", ""),
        folder=folder,
        source=source.resolve(),
        smoke=smoke,
        raw=raw,
        **tables,
    )


def _check(table, schema: dict, where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    for k, v in table.items():
        if k not in schema:
            raise ConfigError(f"{where}: unknown key {k!r}; allowed: {sorted(schema)}")
        want = schema[k]
        want = want if isinstance(want, tuple) else (want,)
        if isinstance(v, bool) or not isinstance(v, want):
            if not (float in want and isinstance(v, int) and not isinstance(v, bool)):
                raise ConfigError(f"{where}.{k} = {v!r} has the wrong type")


def _file(value: str, folder: Path, what: str, where: str) -> str:
    p = Path(value).expanduser()
    p = p if p.is_absolute() else folder / p
    if not p.is_file():
        raise ConfigError(
            f"{where}: {what} {value!r} does not exist (looked for {p}); paths are relative "
            "to the config file's folder"
        )
    return str(p.resolve())


def _check_cell(cell: dict, folder: Path, where: str) -> None:
    from bayesneuron.channels.cortical import cortical_channels

    w = f"{where} [cell]"
    if ("swc" in cell) == ("soma" in cell):
        raise ConfigError(
            f"{w}: give either swc = 'cell.swc' or soma = {{length = 20.0, diam = 20.0}} "
            "(with dendrites = [...]), not both or neither"
        )
    if "swc" in cell:
        cell["swc"] = _file(cell["swc"], folder, "SWC file", w)
    elif cell.get("dendrites") and not all(isinstance(d, dict) for d in cell["dendrites"]):
        raise ConfigError(f"{w}: dendrites must be tables {{name, length, diam[, nseg]}}")
    known = [ch.name for ch in cortical_channels()]
    chans = cell.get("channels")
    if not chans or not all(isinstance(c, str) for c in chans):
        raise ConfigError(f"{w}: channels = {chans!r}; list channel names from {known}")
    bad = [c for c in chans if c not in known]
    if bad or len(set(chans)) != len(chans):
        raise ConfigError(
            f"{w}: unknown or repeated channel {(bad or chans)[0]!r}; the cortical library has "
            f"{known} (na NaT, kdr delayed rectifier, kv31 Kv3.1, km M-current, ih HCN, l leak)"
        )
    v0 = cell["v0"]
    if isinstance(v0, str) and v0 != "data":
        raise ConfigError(f"{w}: v0 = {v0!r}; give a voltage in mV or 'data'")
    for region, vals in cell["values"].items():
        if not isinstance(vals, dict) or not all(
            isinstance(x, _NUM) and not isinstance(x, bool) for x in vals.values()
        ):
            raise ConfigError(
                f"{w}.values.{region} must be a table of numbers, e.g. {{g_na = 40.0}}"
            )


def _sweeps(value, name: str, w: str) -> list[int]:
    if not (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    ):
        raise ConfigError(f"{w}: {name} = {value!r}; give a non-empty list of sweep numbers")
    if len(set(value)) != len(value):
        raise ConfigError(f"{w}: {name} lists a sweep twice: {value}")
    return list(value)


def _check_data(data: dict, folder: Path, where: str) -> None:
    w = f"{where} [data]"
    if "path" not in data:
        raise ConfigError(f"{w}: needs path = 'recording.abf' (or .nwb)")
    data["path"] = _file(data["path"], folder, "recording", w)
    if "fit_sweeps" not in data:
        raise ConfigError(f"{w}: needs fit_sweeps = [...], the sweeps to fit")
    fit = _sweeps(data["fit_sweeps"], "fit_sweeps", w)
    held = _sweeps(data["held_out"], "held_out", w) if "held_out" in data else []
    both = sorted(set(fit) & set(held))
    if both:
        raise ConfigError(f"{w}: sweep {both[0]} is both fitted and held out; list it once")
    win = data["window"]
    if win is not None and not (
        isinstance(win, list)
        and len(win) == 2
        and all(isinstance(x, _NUM) and not isinstance(x, bool) for x in win)
        and win[0] < win[1]
    ):
        raise ConfigError(f"{w}: window = {win!r}; give [start, stop] in ms with start < stop")


def _check_parameters(par: dict, where: str) -> None:
    w = f"{where} [parameters]"
    sigma = par["sigma"]
    if isinstance(sigma, str) and sigma != "infer" or not isinstance(sigma, str) and sigma <= 0:
        raise ConfigError(f"{w}: sigma = {sigma!r}; give the noise sd in mV (> 0) or 'infer'")
    free = par.get("free")
    if not free:
        raise ConfigError(f"{w}: no [[parameters.free]] tables; add at least one (name = 'g_l')")
    for i, f in enumerate(free):
        fw = f"{w} free #{i + 1}"
        _check(f, _FREE_KEYS, fw)
        if "name" not in f:
            raise ConfigError(f"{fw}: needs a name, e.g. name = 'g_na'")
        form = f.get("form", "shared")
        if form not in ("shared", "exp_distance"):
            raise ConfigError(f"{fw}: form = {form!r}; use 'shared' or 'exp_distance'")
        if form == "exp_distance" and not all(k in f for k in ("region", "g0", "lam")):
            raise ConfigError(f"{fw}: form 'exp_distance' needs region, g0 and lam (µm)")
        if f.get("prior_sd", 1.0) <= 0:
            raise ConfigError(f"{fw}: prior_sd must be > 0")


def _check_numbers(t: dict, where: str) -> None:
    checks = [
        ("data", "dt", t["data"]["dt"] > 0),
        ("solver", "dt", t["solver"]["dt"] > 0),
        ("cell", "ra", t["cell"]["ra"] > 0),
        ("cell", "cm", t["cell"]["cm"] > 0),
        ("parameters", "prior_sd", t["parameters"]["prior_sd"] > 0),
    ]
    checks += [("fit", k, t["fit"][k] >= 1) for k in ("n_starts", "max_steps")]
    checks += [
        ("posterior", k, t["posterior"][k] >= 1)
        for k in ("svi_steps", "num_particles", "num_samples", "psis_samples", "predictive_draws")
    ]
    for sec, key, ok in checks:
        if not ok:
            raise ConfigError(f"{where} [{sec}].{key} = {t[sec][key]!r} must be > 0")
    ratio = t["data"]["dt"] / t["solver"]["dt"]
    if abs(ratio - round(ratio)) > 1e-6:
        raise ConfigError(
            f"{where}: [data].dt = {t['data']['dt']} ms must be a whole multiple of "
            f"[solver].dt = {t['solver']['dt']} ms (output times on the solver's grid)"
        )
    from bayesneuron.simulation.solvers import BACKENDS

    if t["solver"]["backend"] not in BACKENDS:
        raise ConfigError(f"{where} [solver].backend must be one of {BACKENDS}")
    from bayesneuron.inference.posterior import LADDER
    from bayesneuron.inference.svi import GUIDES

    known = ("laplace", *LADDER, *(f"svi:{g}" for g in GUIDES))
    lad = t["posterior"]["ladder"]
    if not lad or any(m not in known for m in lad):
        raise ConfigError(f"{where} [posterior].ladder = {lad!r}; use methods among {known}")
