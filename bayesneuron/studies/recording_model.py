"""From a checked :class:`~.recording_config.RecordingStudy` to the model's pieces: the cell,
the recordings (fitted and held-out sweeps, windowed and decimated) and a
:class:`~bayesneuron.NeuronModel` per set of sweeps."""

from __future__ import annotations

import numpy as np

from bayesneuron.errors import BayesneuronError
from bayesneuron.studies.recording_config import ConfigError, RecordingStudy

__all__ = ["build_cell", "build_model", "electrode_index", "free_forms", "load_sweeps"]


def _morphology(cfg: dict):
    from bayesneuron.morphology import Section, from_sections, load_swc

    kw = dict(ra=float(cfg["ra"]), cm=float(cfg["cm"]), nseg=int(cfg["nseg"]))
    if "d_lambda" in cfg:
        kw["d_lambda"] = float(cfg["d_lambda"])
    if "swc" in cfg:
        return load_swc(cfg["swc"], **kw)
    soma = cfg["soma"]
    secs = [Section("soma", None, length=float(soma["length"]), diam=float(soma["diam"]))]
    for i, d in enumerate(cfg.get("dendrites", [])):
        secs.append(
            Section(
                str(d.get("name", f"dend[{i}]")),
                0,
                1.0,
                length=float(d["length"]),
                diam=float(d["diam"]),
                nseg=d.get("nseg"),
            )
        )
    return from_sections(secs, **kw)


def build_cell(study: RecordingStudy, v0: float = -65.0):
    """The cell of ``[cell]``: the morphology, the listed channels of the cortical library at
    ``celsius``, and the per-region values of ``[cell.values]``; ``v0`` (mV) unless the config
    gives a number.

    Raises:
        ConfigError: a bad geometry, a region the cell lacks, a parameter no channel has.
    """
    from bayesneuron.cell import Cell
    from bayesneuron.channels.cortical import cortical_channels
    from bayesneuron.morphology.regions import as_region

    cfg = study.cell
    where = f"{study.source.name} [cell]"
    lib = {ch.name: ch for ch in cortical_channels(float(cfg["celsius"]))}
    try:
        morph = _morphology(cfg)
        cell = Cell(morph, [lib[c] for c in cfg["channels"]], v0=_v0(cfg, v0))
        params = {k: np.array(v) for k, v in cell.params.items()}
        for region, vals in cfg["values"].items():
            idx = list(as_region(region).indices(morph))
            for k, x in vals.items():
                if k not in params:
                    raise ConfigError(
                        f"{where}.values.{region}: {k!r} is not a parameter of this cell; it "
                        f"has {sorted(params)}"
                    )
                params[k][idx] = float(x)
        return cell.with_params(**params)
    except ConfigError:
        raise
    except BayesneuronError as e:
        raise ConfigError(f"{where}: {e}") from None


def _v0(cfg: dict, v0: float) -> float:
    return float(v0) if isinstance(cfg["v0"], str) else float(cfg["v0"])


def electrode_index(study: RecordingStudy, cell) -> int:
    """The compartment of ``[data].site`` (a name such as ``"soma(0.5)"``, a region such as
    ``"soma"`` — its first compartment — or an index)."""
    from bayesneuron.morphology.regions import as_region

    site = study.data["site"]
    morph = cell.morphology
    try:
        if isinstance(site, str) and site not in morph.names:
            return int(as_region(site).indices(morph)[0])
        return int(morph.index(site))
    except BayesneuronError as e:
        raise ConfigError(
            f"{study.source.name} [data].site = {site!r}: {e} (compartments: "
            f"{list(morph.names)[:8]}…)"
        ) from None


def load_sweeps(study: RecordingStudy, sweeps):
    """The recording's ``sweeps``, offset-corrected, windowed and block-averaged to
    ``[data].dt``.

    Raises:
        ConfigError: a sweep the file lacks, or a window or resolution that does not fit.
    """
    from bayesneuron.io import read_recording

    d = study.data
    where = f"{study.source.name} [data]"
    opts = {"channel": d["channel"]} if d["path"].lower().endswith(".abf") else {}
    try:
        rec = read_recording(d["path"], sweeps, offset_mv=float(d["offset_mv"]), **opts)
    except BayesneuronError as e:
        raise ConfigError(f"{where}: sweeps {list(sweeps)}: {e}") from None
    try:
        if d["window"] is not None:
            rec = rec.window(*map(float, d["window"]))
        return rec.to_grid(float(d["dt"]))
    except BayesneuronError as e:
        raise ConfigError(f"{where}: {e}") from None


def free_forms(study: RecordingStudy, cell):
    """``(free, priors)`` for :class:`~bayesneuron.NeuronModel` from ``[parameters]``:
    :class:`~bayesneuron.inference.forms.Shared` or
    :class:`~bayesneuron.inference.forms.ExpDistance` forms, and per-site priors (log-normal
    around the cell's values for positive parameters, Normal in mV for reversal
    potentials)."""
    from bayesneuron.inference.forms import ExpDistance, Shared
    from bayesneuron.inference.priors import LogNormalPrior, NormalPrior

    par = study.parameters
    free, priors = [], {}
    for f in par["free"]:
        sd = float(f.get("prior_sd", par["prior_sd"]))
        if f.get("form", "shared") == "exp_distance":
            form = ExpDistance(
                f["name"],
                f["region"],
                float(f["g0"]),
                float(f["lam"]),
                tuple(f.get("free", ("g0", "lam"))),
            )
            for k in form.free:
                priors[f"{f['name']}_{k}"] = (
                    LogNormalPrior(sd) if k == "g0" or form.lam > 0 else None
                )
        else:
            form = Shared(f["name"], tuple(f.get("regions", ("all",))))
            signed = f["name"].startswith("e_")
            priors[f["name"]] = NormalPrior(sd=sd * 20.0) if signed else LogNormalPrior(sd)
        free.append(form)
    return free, {k: v for k, v in priors.items() if v is not None}


def build_model(study: RecordingStudy, rec, cell=None):
    """The :class:`~bayesneuron.NeuronModel` of ``rec`` (a windowed, decimated
    :class:`~bayesneuron.io.Recording`): the electrode's current in, its voltage observed.

    ``v0 = "data"``: the cell starts at the mean recorded voltage of the first output times.
    """
    from bayesneuron.inference.model import NeuronModel
    from bayesneuron.protocol.design import Design
    from bayesneuron.simulation.solvers import CrankNicolson

    v0 = float(np.mean(rec.voltage[:, : max(1, int(round(2.0 / rec.dt)))]))
    cell = build_cell(study, v0) if cell is None else cell
    site = electrode_index(study, cell)
    free, priors = free_forms(study, cell)
    solver = CrankNicolson(dt=float(study.solver["dt"]), backend=study.solver["backend"])
    try:
        return NeuronModel(
            cell,
            rec.stimulus(site, cell.n_comp),  # sparse: [sweep, 1, time] at the electrode
            rec.time,
            Design(stim=[site], rec=[site]),
            free=free,
            priors=priors,
            sigma=study.parameters["sigma"],
            solver=solver,
        )
    except BayesneuronError as e:
        raise ConfigError(f"{study.source.name} [parameters]: {e}") from None
