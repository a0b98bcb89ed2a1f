"""The ArviZ boundary: Pyro site arrays → one labelled :class:`arviz.InferenceData` per fit.

This is the only module of bayesneuron that imports ArviZ, but for ``arviz.psislw`` in
:func:`bayesneuron.inference.diagnostics.psis_khat`. The contract is the Pyro model's
site names (:mod:`bayesneuron.inference.model`): one variable per free parameter (``g_na``, ``g_k``, …)
over ``compartment`` — or, for a parameter shared by region (:mod:`bayesneuron.inference.forms`),
over ``<name>_region`` with the region names as coordinates (``g_k`` over ``g_k_region`` =
``["soma", "dend"]``; a distance law's ``g_ih_g0``, ``g_ih_lam`` over ``g_ih_region``) — the
scalar ``sigma`` (mV) when it is inferred, and ``v_obs`` over ``(trace, rec_compartment, time)``.

======================  =======================================  ==============================
group                   variables                                dims (after chain, draw)
======================  =======================================  ==============================
posterior, prior        ``g_na``, ``g_k``, … ; ``sigma``         ``compartment`` or
                                                                 ``<name>_region`` ; ()
posterior_predictive,   ``v_obs`` (mV)                           ``trace, rec_compartment, time``
prior_predictive
log_likelihood          ``v_obs`` (one value per trace)          ``trace``
observed_data           ``v_obs`` (mV, no chain/draw)            ``trace, rec_compartment, time``
sample_stats            ``diverging``, ``lp``, ``log_weight`` …  ()
constant_data           ``stim_sites``, ``rec_sites``,           ``stim_site``, ``rec_site``,
                        ``t_eval`` (ms), ``<p>_true``,           ``time``, ``compartment``
                        ``<p>_prior_mean``, ``<p>_prior_sd``
======================  =======================================  ==============================

Coordinates: ``compartment`` = 0 … n−1 (with ``compartment_name``), ``rec_compartment`` = the
recorded indices (with ``rec_compartment_name``), ``time`` = ``model.t_eval`` in ms, ``trace``
= 0 … n_trace−1. Attrs (on the file and on every group): ``design`` (label), ``inference``,
``bayesneuron_version``, ``free`` (JSON list) and the caller's own.

Example:
    >>> idata = to_inference_data(model, {"g_na": s_na, "g_k": s_k}, truth=truth,
    ...                           attrs={"inference": "nuts"})
    >>> save_inference_data(idata, "out/fit.nc")
    >>> summary(load_inference_data("out/fit.nc"))[["mean", "truth", "contraction"]]
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bayesneuron.errors import DataError

with warnings.catch_warnings():
    # ArviZ ≥ 0.21 announces its 1.0 refactor with a FutureWarning once a day on import.
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = [
    "load_inference_data",
    "posterior_draws",
    "save_inference_data",
    "stack_channels",
    "summary",
    "to_inference_data",
]

_VOLT_DIMS = ("trace", "rec_compartment", "time")
_PARAM = "[chain, draw, comp]"


# --------------------------------------------------------------------------- conversion
def to_inference_data(
    model,
    posterior: Mapping,
    *,
    prior: Mapping | None = None,
    posterior_predictive: Mapping | None = None,
    prior_predictive: Mapping | None = None,
    log_likelihood: Mapping | None = None,
    observed=None,
    sample_stats: Mapping | None = None,
    truth: Mapping | None = None,
    attrs: Mapping | None = None,
) -> az.InferenceData:
    """Label draws of a :class:`~bayesneuron.NeuronModel` fit as an ArviZ ``InferenceData``.

    Args:
        model: the ``NeuronModel`` that was fitted (gives dims, coords, design, priors).
        posterior: name → ``[chain, draw, size]`` for every name in ``model.free`` (``size``
            the compartments, or the regions of a parameter shared by region; mS/cm² for
            conductances); optionally ``"sigma"`` → ``[chain, draw]`` in mV. numpy or torch.
        prior: the same layout for prior draws (chain/draw counts may differ).
        posterior_predictive, prior_predictive: ``{"v_obs": [chain, draw, trace, n_rec, time]}``
            in mV.
        log_likelihood: ``{"v_obs": [chain, draw, trace]}``: the log density of each trace
            (so ``az.loo`` leaves out one trace at a time).
        observed: the data ``[trace, n_rec, time]`` in mV.
        sample_stats: name → ``[chain, draw]`` (``diverging``, ``lp``, ``log_weight``, …).
        truth: name → ``[size]`` ground truth (simulated data), stored as ``<name>_true``.
        attrs: provenance; ``"inference"`` names the method (``"nuts"``,
            ``"svi:AutoMultivariateNormal"``, ``"laplace"``). Values must be JSON-serialisable;
            dicts, lists and booleans are stored as JSON strings.

    Returns:
        An ``InferenceData`` with the groups given (see the module docstring).

    Raises:
        DataError: a free parameter is missing, a variable is not a site of the model, or an
            array has the wrong shape (the message names the variable and the expected shape).
    """
    n_chain, n_draw = _check_params(model, posterior, "posterior")
    groups = {"posterior": _param_dataset(model, posterior)}
    if prior is not None:
        _check_params(model, prior, "prior")
        groups["prior"] = _param_dataset(model, prior)
    for name, data in (
        ("posterior_predictive", posterior_predictive),
        ("prior_predictive", prior_predictive),
    ):
        if data is not None:
            groups[name] = _voltage_dataset(model, data, name)
    if log_likelihood is not None:
        groups["log_likelihood"] = _loglik_dataset(model, log_likelihood, (n_chain, n_draw))
    if observed is not None:
        v = _array(observed, "observed v_obs", model.obs_shape, "[trace, n_rec, time]")
        groups["observed_data"] = xr.Dataset(
            {"v_obs": (_VOLT_DIMS, v.astype(np.float64), {"units": "mV"})},
            coords=_volt_coords(model),
        )
    if sample_stats is not None:
        groups["sample_stats"] = _stats_dataset(sample_stats, (n_chain, n_draw))
    groups["constant_data"] = _constant_dataset(model, truth)
    meta = _attrs(model, attrs)
    for ds in groups.values():
        ds.attrs.update(meta)
    return az.InferenceData(attrs=dict(meta), **groups)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _array(x, what: str, shape: tuple, spelled: str) -> np.ndarray:
    """``x`` as numpy of ``shape`` (``None`` entries match any size), or a DataError."""
    a = _to_numpy(x)
    ok = a.ndim == len(shape) and all(s is None or s == n for s, n in zip(shape, a.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise DataError(f"{what} has shape {a.shape}; expected {spelled} = {want}")
    return a


def _check_params(model, draws: Mapping, group: str) -> tuple[int, int]:
    """Check every free parameter is present, with ``[chain, draw, comp]``; return chain, draw."""
    if not isinstance(draws, Mapping):
        raise DataError(f"{group} must be a mapping name → array, got {type(draws).__name__}")
    missing = [k for k in model.free if k not in draws]
    sizes = model.sizes
    if missing:
        raise DataError(
            f"{group} lacks free parameter(s) {missing}: give each of {list(model.free)} as "
            f"[chain, draw, {sizes[missing[0]]}]"
        )
    inferred_sigma = model.sigma_prior is not None
    extra = sorted(set(draws) - set(model.free) - ({"sigma"} if inferred_sigma else set()))
    if extra:
        why = "" if inferred_sigma else f" (sigma is fixed at {model.sigma} mV, not a site)"
        raise DataError(
            f"{group} has variables {extra} that are not sites of this model{why}; expected the "
            f"free parameters {list(model.free)}" + (" and 'sigma'" if inferred_sigma else "")
        )
    k0 = model.free[0]
    n_chain, n_draw, _ = _array(draws[k0], f"{group} {k0!r}", (None, None, sizes[k0]), _PARAM).shape
    for k in draws:
        shape = (n_chain, n_draw) if k == "sigma" else (n_chain, n_draw, sizes[k])
        _array(draws[k], f"{group} {k!r}", shape, "[chain, draw]" if k == "sigma" else _PARAM)
    return n_chain, n_draw


def _names(model) -> np.ndarray:
    return np.array(model.cell.morphology.names, dtype=object).astype(str)


def _comp_coords(model) -> dict:
    """The ``compartment`` coordinates, and the region names of every ``<name>_region`` dim."""
    out = {
        "compartment": np.arange(model.n_comp),
        "compartment_name": ("compartment", _names(model)),
    }
    for s in model.parametrisation.sites:
        if s.dim != "compartment":
            out[s.dim] = np.array(s.labels, dtype=str)
    return out


def _dims(model) -> dict[str, str]:
    """The dim of every free parameter: ``compartment`` or ``<name>_region``."""
    return {s.name: s.dim for s in model.parametrisation.sites}


def _volt_coords(model) -> dict:
    rec = np.asarray(model.rec_index, dtype=np.int64)
    return {
        "trace": np.arange(model.n_trace),
        "rec_compartment": rec,
        "rec_compartment_name": ("rec_compartment", _names(model)[rec]),
        "time": ("time", np.asarray(model.t_eval, dtype=np.float64), {"units": "ms"}),
    }


def _chain_draw(n_chain: int, n_draw: int) -> dict:
    return {"chain": np.arange(n_chain), "draw": np.arange(n_draw)}


def _param_dataset(model, draws: Mapping) -> xr.Dataset:
    """Parameter draws ``[chain, draw, comp]`` (and ``sigma [chain, draw]``) as a Dataset."""
    data, dims = {}, _dims(model)
    for k in draws:
        a = np.asarray(_to_numpy(draws[k]), dtype=np.float64)
        if k == "sigma":
            data[k] = (("chain", "draw"), a, {"units": "mV"})
        else:
            data[k] = (("chain", "draw", dims[k]), a)
    n_chain, n_draw = np.shape(_to_numpy(draws[model.free[0]]))[:2]
    return xr.Dataset(data, coords={**_chain_draw(n_chain, n_draw), **_comp_coords(model)})


def _voltage_dataset(model, data: Mapping, group: str) -> xr.Dataset:
    """``{"v_obs": [chain, draw, trace, n_rec, time]}`` as a Dataset."""
    _only_v_obs(data, group)
    shape = (None, None, *model.obs_shape)
    v = _array(data["v_obs"], f"{group} 'v_obs'", shape, "[chain, draw, trace, n_rec, time]")
    return xr.Dataset(
        {"v_obs": (("chain", "draw", *_VOLT_DIMS), v.astype(np.float64), {"units": "mV"})},
        coords={**_chain_draw(*v.shape[:2]), **_volt_coords(model)},
    )


def _loglik_dataset(model, data: Mapping, chain_draw: tuple[int, int]) -> xr.Dataset:
    """``{"v_obs": [chain, draw, trace]}`` as a Dataset."""
    _only_v_obs(data, "log_likelihood")
    shape = (*chain_draw, model.n_trace)
    v = _array(data["v_obs"], "log_likelihood 'v_obs'", shape, "[chain, draw, trace]")
    return xr.Dataset(
        {"v_obs": (("chain", "draw", "trace"), v.astype(np.float64))},
        coords={**_chain_draw(*chain_draw), "trace": np.arange(model.n_trace)},
    )


def _only_v_obs(data: Mapping, group: str) -> None:
    if not isinstance(data, Mapping) or set(data) != {"v_obs"}:
        keys = list(data) if isinstance(data, Mapping) else type(data).__name__
        raise DataError(
            f"{group} must be {{'v_obs': array}} (the model's one observed site); got {keys}"
        )


def _stats_dataset(stats: Mapping, chain_draw: tuple[int, int]) -> xr.Dataset:
    """Sampler statistics name → ``[chain, draw]`` as a Dataset."""
    data = {
        k: (("chain", "draw"), _array(v, f"sample_stats {k!r}", chain_draw, "[chain, draw]"))
        for k, v in stats.items()
    }
    return xr.Dataset(data, coords=_chain_draw(*chain_draw))


def _prior_moments(d) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and sd ``[comp]`` of a Pyro prior, or None where they are not available."""
    if d is None:
        return None
    try:
        mean, sd = _to_numpy(d.mean).astype(np.float64), _to_numpy(d.stddev).astype(np.float64)
    except (NotImplementedError, AttributeError):
        return None
    return (mean, sd) if np.all(np.isfinite(mean)) and np.all(np.isfinite(sd)) else None


def _constant_dataset(model, truth: Mapping | None) -> xr.Dataset:
    """Design sites, time grid, ground truth and prior moments."""
    dims, sizes = _dims(model), model.sizes
    data = {
        "stim_sites": (("stim_site",), np.asarray(model.stim_index, dtype=np.int64)),
        "rec_sites": (("rec_site",), np.asarray(model.rec_index, dtype=np.int64)),
        "t_eval": (("time",), np.asarray(model.t_eval, dtype=np.float64), {"units": "ms"}),
    }
    for k in truth or {}:
        if k == "sigma":
            data["sigma_true"] = ((), float(_array(truth[k], "truth 'sigma'", (), "a scalar")))
            continue
        if k not in model.free:
            raise DataError(
                f"truth has {k!r}, which is not a site of this model; expected names from "
                f"{list(model.free)} or 'sigma'"
            )
        n = sizes[k]
        a = _array(truth[k], f"truth {k!r}", (n,), f"[{dims[k]}={n}]")
        data[f"{k}_true"] = ((dims[k],), a.astype(np.float64))
    for k, d in model.priors.items():
        m, n = _prior_moments(d), sizes[k]
        if m is not None:
            data[f"{k}_prior_mean"] = ((dims[k],), np.broadcast_to(m[0], (n,)).copy())
            data[f"{k}_prior_sd"] = ((dims[k],), np.broadcast_to(m[1], (n,)).copy())
    m = _prior_moments(model.sigma_prior)
    if m is not None:
        data["sigma_prior_mean"], data["sigma_prior_sd"] = ((), float(m[0])), ((), float(m[1]))
    coords = {**_comp_coords(model), "time": _volt_coords(model)["time"]}
    return xr.Dataset(data, coords=coords)


def _attr_value(key: str, value):
    """A netCDF-safe attribute: str/int/float as is, anything else as a JSON string."""
    if isinstance(value, (str, int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    ):
        return value.item() if isinstance(value, np.generic) else value
    try:
        return json.dumps(value)
    except TypeError:
        raise DataError(
            f"attrs[{key!r}] = {value!r} is not JSON-serialisable; give a str, number, list or "
            "dict of those"
        ) from None


def _attrs(model, attrs: Mapping | None) -> dict:
    from importlib.metadata import version

    out = {
        "design": model.design.label,
        "inference": "unknown",
        "bayesneuron_version": version("bayesneuron"),
        "free": list(model.free),
        "inference_library": "pyro",
    }
    if model.sigma is not None:
        out["sigma_fixed_mV"] = float(model.sigma)
    if not model.parametrisation.per_compartment:
        out["parametrisation"] = [repr(f) for f in model.parametrisation.forms]
    out.update(attrs or {})
    return {str(k): _attr_value(str(k), v) for k, v in out.items()}


def stack_channels(idata: az.InferenceData, group: str = "posterior", var_names=None):
    """Per-compartment parameters stacked over a ``channel`` dim.

    Args:
        idata: from :func:`to_inference_data`.
        group: ``"posterior"`` or ``"prior"``.
        var_names: parameters to stack (default: every variable over ``compartment``).

    Returns:
        An ``xarray.DataArray`` ``[chain, draw, channel, compartment]``, channel coords = names.

    Example:
        >>> stack_channels(idata).sel(channel="g_na", compartment=0).mean()
    """
    ds = _group(idata, group)
    names = var_names or [k for k in ds.data_vars if ds[k].dims == ("chain", "draw", "compartment")]
    if not names:
        raise DataError(f"{group} has no per-compartment variables to stack")
    unknown = [k for k in names if k not in ds.data_vars]
    if unknown:
        raise DataError(f"{group} has no variables {unknown}; it has {list(ds.data_vars)}")
    out = xr.concat([ds[k] for k in names], dim="channel")
    out = out.assign_coords(channel=np.array(list(names), dtype=str))
    return out.transpose("chain", "draw", "channel", "compartment").rename("g")


def posterior_draws(idata: az.InferenceData, names, group: str = "posterior") -> dict:
    """The draws of variables ``names`` with chains and draws flattened: name → ``[S, …]``
    float64 arrays (``S`` = chains × draws), e.g. ``g_na [S, comp]`` of a posterior written by
    :func:`save_inference_data`.

    Raises:
        DataError: ``group`` or one of ``names`` is missing, or a variable has no
            ``chain``/``draw`` dims.
    """
    ds = _group(idata, group)
    out = {}
    for k in names:
        if k not in ds.data_vars:
            raise DataError(f"{group} has no variable {k!r}; it has {list(ds.data_vars)}")
        if ds[k].dims[:2] != ("chain", "draw"):
            raise DataError(f"{group} {k!r} has dims {ds[k].dims}; need (chain, draw, …)")
        a = np.asarray(ds[k].values, dtype=np.float64)
        out[k] = a.reshape(-1, *a.shape[2:])
    return out


def _group(idata, group: str) -> xr.Dataset:
    if group not in idata.groups():
        raise DataError(f"the InferenceData has no {group!r} group; it has {idata.groups()}")
    return idata[group]


# --------------------------------------------------------------------------- files
def save_inference_data(idata: az.InferenceData, path: str | os.PathLike) -> Path:
    """Write ``idata`` to a netCDF file atomically (temp file in the same folder, then rename).

    Creates the parent folder. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        idata.to_netcdf(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_inference_data(path: str | os.PathLike) -> az.InferenceData:
    """Read a netCDF file written by :func:`save_inference_data`, fully into memory
    (the file is closed on return, so it can be overwritten)."""
    with az.rc_context({"data.load": "eager"}):
        return az.from_netcdf(str(path))


# --------------------------------------------------------------------------- tables
def summary(idata: az.InferenceData, var_names=None) -> pd.DataFrame:
    """``az.summary`` of the posterior plus ``truth`` and ``contraction`` columns.

    ``contraction = 1 − sd_post² / sd_prior²`` per row, where ``constant_data`` holds
    ``<name>_prior_sd``; ``truth`` from ``<name>_true``. Missing entries are NaN. With one
    chain only the statistics are computed (no r_hat / ESS across chains).

    Returns:
        One row per parameter and compartment (``g_na[0]`` …), unrounded.
    """
    post = _group(idata, "posterior")
    names = list(post.data_vars) if var_names is None else list(var_names)
    unknown = [k for k in names if k not in post.data_vars]
    if unknown:
        raise DataError(f"posterior has no variables {unknown}; it has {list(post.data_vars)}")
    kind = "stats" if post.sizes["chain"] == 1 else "all"
    df = az.summary(idata, var_names=names, kind=kind, round_to="none")
    const = idata["constant_data"] if "constant_data" in idata.groups() else xr.Dataset()
    df["truth"] = df.index.map(_per_row(post, names, const, "_true")).astype(float)
    prior_sd = df.index.map(_per_row(post, names, const, "_prior_sd")).astype(float)
    df["contraction"] = 1.0 - (df["sd"] / prior_sd) ** 2
    return df


def _per_row(post: xr.Dataset, names, const: xr.Dataset, suffix: str) -> dict:
    """Row label (``g_na[3]``, ``g_k[soma]``, ``sigma``) → value of ``<name><suffix>`` in
    constant_data."""
    out = {}
    for k in names:
        if f"{k}{suffix}" not in const:
            continue
        v = const[f"{k}{suffix}"]
        if post[k].ndim > 2:  # over compartment or <name>_region
            dim = post[k].dims[2]
            for c, x in zip(v[dim].values, v.values):
                out[f"{k}[{c}]"] = float(x)
        else:
            out[k] = float(v)
    return out
