"""Figures of posteriors held in ArviZ ``InferenceData`` (as built by :mod:`.arviz`).

Every function returns a matplotlib ``Figure`` (never shown) and, given ``path``, also saves it
as PNG (parent folders created). No backend is chosen and nothing is registered with pyplot
(:mod:`._figures`).

Example:
    >>> fig = plot_posterior_vs_prior(idata, path="out/posterior.png")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bayesneuron.errors import DataError
from bayesneuron.reports.figures import colormap, subplots

__all__ = [
    "plot_contraction_heatmap",
    "plot_forest_designs",
    "plot_pairs",
    "plot_posterior_vs_prior",
    "plot_ppc_traces",
]

_MAX_PANELS = 12


# --------------------------------------------------------------------------- helpers
def _save(fig, path: str | os.PathLike | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def _group(idata, name: str):
    if name not in idata.groups():
        raise DataError(f"the InferenceData has no {name!r} group; it has {idata.groups()}")
    return idata[name]


def _const(idata, name: str):
    """``constant_data[name]`` or None."""
    if "constant_data" in idata.groups() and name in idata["constant_data"]:
        return idata["constant_data"][name]
    return None


def _params(post, var_names) -> list[str]:
    """Posterior variables to draw (default: all), checked to exist."""
    names = list(post.data_vars) if var_names is None else list(var_names)
    unknown = [k for k in names if k not in post.data_vars]
    if unknown:
        raise DataError(f"posterior has no variables {unknown}; it has {list(post.data_vars)}")
    return names


def _compartments(post, compartments, limit: int | None = _MAX_PANELS) -> list[int]:
    """Checked compartment indices; default the first ``limit`` (all if ``limit`` is None)."""
    if "compartment" not in post.dims:
        return []
    n = post.sizes["compartment"]
    if compartments is None:
        return list(range(n if limit is None else min(n, limit)))
    bad = [c for c in compartments if not 0 <= c < n]
    if bad:
        raise DataError(f"compartments {bad} do not exist: the posterior has {n} (0–{n - 1})")
    return list(compartments)


def _entries(post, var: str, comps) -> list[int | None]:
    """Panels of one variable: the chosen compartments, every region of a parameter shared by
    region (``<name>_region``), or None for a scalar."""
    if "compartment" in post[var].dims:
        return list(comps)
    return list(range(post[var].shape[2])) if post[var].ndim > 2 else [None]


def _cells(post, names, comps) -> list[tuple[str, int | None]]:
    """(variable, compartment or region index, or None for scalars) for every panel."""
    return [(k, c) for k in names for c in _entries(post, k, comps)]


def _draws(ds, var: str, comp: int | None) -> np.ndarray:
    """All draws of ``var`` (at entry ``comp`` of its compartment or region dim), flattened
    over chain and draw."""
    x = ds[var] if comp is None else ds[var].isel({ds[var].dims[2]: comp})
    return np.asarray(x.values, dtype=float).ravel()


def _const_at(idata, name: str, comp: int | None) -> float | None:
    v = _const(idata, name)
    if v is None:
        return None
    return float(v if comp is None or v.ndim == 0 else v.isel({v.dims[0]: comp}))


def _label(var: str, comp: int | None, post=None) -> str:
    if comp is None:
        return var
    if post is not None and var in post and post[var].dims[2] != "compartment":
        return f"{var}[{post[post[var].dims[2]].values[comp]}]"  # a region's name
    name = ""
    if post is not None and "compartment_name" in post.coords:
        n = str(post["compartment_name"].values[comp])
        name = "" if n == str(comp) else f" {n}"
    return f"{var}[{comp}]{name}"


def _prior_interval(idata, var, comp, prob) -> tuple[float, float] | None:
    """Central ``prob`` interval of the prior draws, else prior mean ± sd, else None."""
    if "prior" in idata.groups() and var in idata["prior"]:
        q = (1 - prob) / 2
        lo, hi = np.quantile(_draws(idata["prior"], var, comp), [q, 1 - q])
        return float(lo), float(hi)
    m, s = _const_at(idata, f"{var}_prior_mean", comp), _const_at(idata, f"{var}_prior_sd", comp)
    return None if m is None or s is None else (m - s, m + s)


# --------------------------------------------------------------------------- figures
def plot_posterior_vs_prior(
    idata, var_names=None, compartments: Sequence[int] | None = None, bins: int = 30, path=None
):
    """Posterior histogram over the prior, one panel per parameter and compartment.

    The prior is a histogram of the ``prior`` group when there is one, else a band of prior
    mean ± sd from ``constant_data``; ground truth ``<name>_true`` is a dashed line.

    Args:
        idata: InferenceData with a ``posterior`` (``[chain, draw, compartment]`` variables).
        var_names: parameters (default: all posterior variables).
        compartments: compartment indices (default: the first 12).
        bins: histogram bins.
        path: optional PNG path.
    """
    post = _group(idata, "posterior")
    names = _params(post, var_names)
    comps = _compartments(post, compartments)
    ncol = max(len(comps), 1)
    fig, axes = subplots(len(names), ncol, figsize=(2.4 * ncol, 2.0 * len(names)), squeeze=False)
    for i, k in enumerate(names):
        row = _entries(post, k, comps)
        for j in range(ncol):
            ax = axes[i][j]
            if j >= len(row):
                ax.set_axis_off()
                continue
            _posterior_panel(ax, idata, post, k, row[j], bins)
    axes[0][0].legend(fontsize=6, loc="best")
    fig.suptitle(f"posterior vs prior ({idata.posterior.attrs.get('design', '')})", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _posterior_panel(ax, idata, post, var, comp, bins):
    x = _draws(post, var, comp)
    if "prior" in idata.groups() and var in idata["prior"]:
        ax.hist(
            _draws(idata["prior"], var, comp),
            bins=bins,
            density=True,
            color="0.6",
            histtype="stepfilled",
            alpha=0.5,
            label="prior",
        )
    else:
        iv = _prior_interval(idata, var, comp, 0.9)  # no prior draws: mean ± sd
        if iv is not None:
            ax.axvspan(*iv, color="0.85", label="prior mean ± sd")
    ax.hist(x, bins=bins, density=True, color="C0", alpha=0.75, label="posterior")
    truth = _const_at(idata, f"{var}_true", comp)
    if truth is not None:
        ax.axvline(truth, color="k", ls="--", lw=1, label="truth")
    ax.set_title(_label(var, comp, post), fontsize=8)
    ax.tick_params(labelsize=6)
    ax.set_yticks([])


def plot_pairs(idata, var_names=None, compartments: Sequence[int] | None = None, path=None):
    """Scatter matrix of posterior draws (≤ 12 parameters), truth marked in red.

    Args:
        idata: InferenceData with a ``posterior``.
        var_names: parameters (default: all posterior variables).
        compartments: compartments to include (default: all, at most 12 panels in total).
        path: optional PNG path.

    Raises:
        DataError: more than 12 parameter-compartment pairs were selected.
    """
    post = _group(idata, "posterior")
    names = _params(post, var_names)
    comps = _compartments(post, compartments, limit=None)
    cells = _cells(post, names, comps)
    if len(cells) > _MAX_PANELS:
        raise DataError(
            f"plot_pairs draws at most {_MAX_PANELS} parameters; {len(names)} variable(s) × "
            f"{len(comps)} compartments gives {len(cells)}: pass var_names or compartments"
        )
    n = len(cells)
    data = [_draws(post, k, c) for k, c in cells]
    truth = [_const_at(idata, f"{k}_true", c) for k, c in cells]
    fig, axes = subplots(n, n, figsize=(1.5 * n + 1, 1.5 * n + 1), squeeze=False)
    for i in range(n):
        for j in range(n):
            _pair_panel(axes[i][j], data, truth, i, j)
        k, c = cells[i]  # region parameters by region name, compartments by index
        lab = _label(k, c, post if c is not None and "compartment" not in post[k].dims else None)
        axes[n - 1][i].set_xlabel(lab, fontsize=7)
        axes[i][0].set_ylabel(lab if i else "", fontsize=7)
    fig.suptitle("posterior pairs (red: truth)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _pair_panel(ax, data, truth, i, j):
    ax.tick_params(labelsize=5)
    if j > i:
        ax.set_axis_off()
    elif i == j:
        ax.hist(data[i], bins=25, color="C0", alpha=0.8)
        ax.set_yticks([])
        if truth[i] is not None:
            ax.axvline(truth[i], color="r", lw=1)
    else:
        ax.scatter(data[j], data[i], s=2, alpha=0.3, color="C0", rasterized=True)
        if truth[i] is not None and truth[j] is not None:
            ax.plot(truth[j], truth[i], "r+", ms=8, mew=1.5)


def plot_forest_designs(idatas: Mapping[str, object], var_name: str, prob: float = 0.9, path=None):
    """Posterior intervals of one parameter across designs, per compartment (or region).

    Thin line: central ``prob`` interval; thick: 50 %; dot: median. Grey boxes: the prior's
    central ``prob`` interval (from prior draws) or mean ± sd; black ``|``: ground truth.

    Args:
        idatas: design label → InferenceData (each with ``var_name`` over ``compartment`` or
            a ``<name>_region`` dim).
        var_name: the parameter, e.g. ``"g_na"``.
        prob: width of the outer interval.
        path: optional PNG path.
    """
    if not idatas:
        raise DataError("plot_forest_designs needs at least one design → InferenceData")
    sizes = {}
    for label, idata in idatas.items():
        post = _group(idata, "posterior")
        dims = post[var_name].dims if var_name in post else ()
        if len(dims) != 3 or not (dims[2] == "compartment" or dims[2].endswith("_region")):
            raise DataError(
                f"design {label!r}: posterior has no {var_name!r} per compartment or region "
                f"([chain, draw, compartment]); it has {list(post.data_vars)}"
            )
        sizes[label] = post.sizes[dims[2]]
    if len(set(sizes.values())) != 1:
        raise DataError(f"the designs have different numbers of compartments/regions: {sizes}")
    n, labels = next(iter(sizes.values())), list(idatas)
    first = idatas[labels[0]]
    D = len(labels)
    fig, axes = subplots(
        1, n, sharey=True, figsize=(max(6.0, 1.9 * n), 1.2 + 0.24 * max(D, 2)), squeeze=False
    )
    cmap = colormap("viridis", max(D, 2))
    q = (1 - prob) / 2
    for c, ax in enumerate(axes[0]):
        iv = _prior_interval(first, var_name, c, prob)
        if iv is not None:
            ax.axvspan(*iv, color="0.9", lw=0, label="prior")
        truth = _const_at(first, f"{var_name}_true", c)
        if truth is not None:
            ax.axvline(truth, color="k", lw=1.2, label="truth")
        for d, label in enumerate(labels):
            x = _draws(idatas[label].posterior, var_name, c)
            lo, lo50, med, hi50, hi = np.quantile(x, [q, 0.25, 0.5, 0.75, 1 - q])
            col = cmap(d)
            ax.plot([lo, hi], [d, d], color=col, lw=1)
            ax.plot([lo50, hi50], [d, d], color=col, lw=3)
            ax.plot(med, d, "o", color=col, ms=3)
        ax.set_title(_label(var_name, c, first.posterior), fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_yticks(range(D), labels, fontsize=7)
    axes[0, 0].set_ylabel("design (stim|rec)")
    axes[0, 0].invert_yaxis()
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"{var_name}: {prob:.0%} (thin) and 50 % (thick) posterior intervals by design")
    fig.supxlabel(var_name, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_ppc_traces(idata, n_traces: int = 3, prob: float = 0.9, path=None):
    """Posterior predictive bands vs observed voltages, per trace and recorded compartment.

    Band: central ``prob`` (light) and 50 % (dark) intervals of ``posterior_predictive.v_obs``
    ``[chain, draw, trace, rec_compartment, time]`` in mV; black: ``observed_data.v_obs``.
    Draws the first ``n_traces`` traces and at most 6 recorded compartments.
    """
    pp = _group(idata, "posterior_predictive")
    if "v_obs" not in pp:
        raise DataError(f"posterior_predictive has no 'v_obs'; it has {list(pp.data_vars)}")
    v = pp["v_obs"]
    obs = idata["observed_data"]["v_obs"] if "observed_data" in idata.groups() else None
    n_tr, n_rec = min(n_traces, v.sizes["trace"]), min(v.sizes["rec_compartment"], 6)
    t = v["time"].values
    flat = v.values.reshape(-1, *v.shape[2:])  # [sample, trace, rec, time]
    q = (1 - prob) / 2
    lo, lo50, med, hi50, hi = np.quantile(flat, [q, 0.25, 0.5, 0.75, 1 - q], axis=0)
    fig, axes = subplots(n_tr, n_rec, figsize=(3.0 * n_rec, 2.0 * n_tr), sharex=True, squeeze=False)
    for i in range(n_tr):
        for j in range(n_rec):
            ax = axes[i][j]
            ax.fill_between(t, lo[i, j], hi[i, j], color="C0", alpha=0.25, lw=0)
            ax.fill_between(t, lo50[i, j], hi50[i, j], color="C0", alpha=0.45, lw=0)
            ax.plot(t, med[i, j], color="C0", lw=1)
            if obs is not None:
                ax.plot(t, obs.values[i, j], "k.", ms=2)
            rec = v["rec_compartment"].values[j]
            ax.set_title(f"trace {i}, compartment {rec}", fontsize=8)
            ax.tick_params(labelsize=6)
        axes[i][0].set_ylabel("V (mV)", fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("t (ms)", fontsize=7)
    fig.suptitle(f"posterior predictive ({prob:.0%} / 50 % bands; dots: data)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _hatch_not_ok(ax, df, stim: list[str], rec: list[str], ok: str) -> int:
    """Hatch the cells of designs whose ``ok`` column is false; returns their number."""
    from matplotlib.patches import Rectangle

    bad = df[~df[ok].map(_truthy)]
    for s, r in zip(bad["stim"].astype(str), bad["rec"].astype(str)):
        i, j = stim.index(s), rec.index(r)
        ax.add_patch(
            Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="red", lw=1.5)
        )
        ax.text(j, i + 0.32, "not ok", ha="center", va="center", fontsize=6, color="red")
    return len(bad)


def _truthy(x) -> bool:
    """``posterior_ok`` as written to or read back from a CSV (bool, 0/1, "True"/"False")."""
    if isinstance(x, str):
        return x.strip().lower() in ("true", "1", "yes")
    return bool(x) if x == x else False


def _site_order(labels) -> list[str]:
    """Site labels ordered as the paper's tables: by number of sites, then by index with
    negative (from the end) after positive, ``"all"`` last: [0], [0,1], [0,-1], [0,1,-1], all."""

    def key(label: str):
        sites = [s.strip() for s in label.strip("[]").split(",")]
        pos = [
            (0, int(s) if int(s) >= 0 else 10**9 + int(s)) if _is_int(s) else (1, s) for s in sites
        ]
        return (label == "all", len(sites), pos)

    return sorted(dict.fromkeys(labels), key=key)


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit()


def plot_contraction_heatmap(
    table,
    value: str = "mean_contraction",
    title: str | None = None,
    path=None,
    ok: str | None = "posterior_ok",
):
    """A stim × rec grid of one number per design, cells annotated; designs whose posterior
    failed its checks (column ``ok`` false, where the table has it) are hatched and marked
    "not ok" — their numbers are not results.

    Args:
        table: a pandas DataFrame (or list of records) with columns ``stim``, ``rec`` (site
            labels such as ``"all"``, ``"[0]"``, ``"[0,-1]"``) and ``value``; one row per design.
        value: the column to show (e.g. mean posterior contraction, 0–1).
        title: figure title (default: ``value``).
        path: optional PNG path.
        ok: the column saying whether a design's posterior passed its checks.
    """
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame.from_records(table)
    missing = [c for c in ("stim", "rec", value) if c not in df.columns]
    if missing:
        raise DataError(
            f"the table lacks columns {missing}; expected 'stim', 'rec' and {value!r}, "
            f"it has {list(df.columns)}"
        )
    dup = df.duplicated(["stim", "rec"])
    if dup.any():
        raise DataError(
            f"the table has several rows for designs {df.loc[dup, ['stim', 'rec']].values.tolist()}; "
            "aggregate them first (e.g. df.groupby(['stim', 'rec']).mean())"
        )
    stim, rec = _site_order(df["stim"].astype(str)), _site_order(df["rec"].astype(str))
    grid = (
        df.assign(stim=df["stim"].astype(str), rec=df["rec"].astype(str))
        .pivot(index="stim", columns="rec", values=value)
        .reindex(index=stim, columns=rec)
        .to_numpy(dtype=float)
    )
    fig, ax = subplots(figsize=(1.0 * len(rec) + 2.2, 0.8 * len(stim) + 1.4))
    im = ax.imshow(grid, cmap="viridis")
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    for i in range(len(stim)):
        for j in range(len(rec)):
            if np.isfinite(grid[i, j]):
                light = hi > lo and (grid[i, j] - lo) / (hi - lo) > 0.6
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="k" if light else "w",
                )
    n_bad = _hatch_not_ok(ax, df, stim, rec, ok) if ok in df.columns else 0
    ax.set_xticks(range(len(rec)), rec, rotation=30)
    ax.set_yticks(range(len(stim)), stim)
    note = f"\nhatched: posterior not ok ({n_bad})" if n_bad else ""
    ax.set(xlabel="recorded", ylabel="stimulated", title=(title or value) + note)
    fig.colorbar(im, ax=ax, label=value)
    fig.tight_layout()
    return _save(fig, path)
