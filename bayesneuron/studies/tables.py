"""Rows of the results tables, named after the model's free parameters.

A free parameter ``g_<channel>`` (a channel's maximal conductance) gives its columns the
channel's name: ``gte_na_final``, ``spread_na_max``, ``contraction_na_0``, ``map_gte_na`` for
``g_na``; any other parameter name is used as it is (``gte_cm_final`` for ``cm``). The paper's
model (``g_na``, ``g_k``) so keeps the column names of its reference results, and a model with
a leak conductance ``g_l`` free gains ``gte_l_final`` and the rest.

Wide tables (one row per design: ``table.csv``, ``laplace.csv``, ``designs.csv``) carry one
column per free parameter; the long tables (``fit_parameters.csv``, ``parameters.csv``) one row
per parameter and compartment (``g_na[3]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "column_key",
    "fit_parameter_rows",
    "fit_row",
    "gte_columns",
    "laplace_parameter_rows",
    "laplace_row",
    "plain",
    "table_columns",
]


def column_key(name: str) -> str:
    """The part of a column name that stands for free parameter ``name``: ``"g_na"`` →
    ``"na"``, ``"g_l"`` → ``"l"``, ``"cm"`` → ``"cm"``."""
    return name[2:] if name.startswith("g_") and len(name) > 2 else name


def gte_columns(free: Sequence[str]) -> tuple[str, ...]:
    """``gte_<key>_final`` per free parameter, in order."""
    return tuple(f"gte_{column_key(k)}_final" for k in free)


def table_columns(free: Sequence[str]) -> tuple[str, ...]:
    """The leading columns of ``table.csv`` (one row per MAP fit) for these free parameters:
    ``seed, variant, stim, rec, protocol, L0, L_final``, ``gte_<key>_initial`` and
    ``gte_<key>_final`` per parameter, ``steps, wall_s``."""
    gte = [f"gte_{column_key(k)}_{when}" for k in free for when in ("initial", "final")]
    return ("seed", "variant", "stim", "rec", "protocol", "L0", "L_final", *gte, "steps", "wall_s")


def plain(row: dict) -> dict:
    """``row`` with numpy scalars as Python numbers (for CSV and JSON)."""
    return {
        k: (x.item() if isinstance(x, (np.floating, np.integer)) else x) for k, x in row.items()
    }


def fit_row(
    fit, model, protocol: str, *, run: str, priors: str, noise_sigma, dt, seed: int, variant=""
) -> dict:
    """One ``table.csv`` row of a MAP fit: :func:`table_columns`, then the run's settings,
    ``n_starts``, ``converged`` and ``spread_<key>_max`` per free parameter (the largest
    per-compartment sd of the equally good optima). ``gte_<key>_initial`` is the error at
    the first start before any step (the paper's tables quote it after one step)."""
    frac = len(model.rec_index) / model.n_comp  # the paper's loss: MSE over recorded · |rec|/n
    stim, rec = fit.design.split("|")
    h = fit.history
    spread = fit.spread()
    gte = {}
    for k in fit.free:
        g = h.get(f"gte_{k}")
        gte[f"gte_{column_key(k)}_initial"] = math.nan if g is None else g[0, 0]
        gte[f"gte_{column_key(k)}_final"] = math.nan if g is None else g[-1, fit.best]
    row = {
        "seed": seed,
        "variant": variant,
        "stim": stim,
        "rec": rec,
        "protocol": protocol,
        "L0": h["mse"][0, 0] * frac,  # start 0 is at the base values (or the truth)
        "L_final": h["mse"][-1, fit.best] * frac,
        **gte,
        "steps": fit.steps,
        "wall_s": round(fit.wall_s, 2),
        "run": run,
        "priors": priors,
        "noise_sigma": noise_sigma,
        "horizons": " ".join(map(str, fit.settings.get("horizons", []))),
        "windows": " ".join(map(str, fit.settings.get("windows", []))),
        "dt": dt,
        "n_starts": len(fit.objective),
        "converged": int(fit.converged.sum()),
        **{f"spread_{column_key(k)}_max": float(spread[k].max()) for k in fit.free},
    }
    return plain(row)


def fit_parameter_rows(fit, run: str) -> list[dict]:
    """Long format of a MAP fit: one row per free parameter and compartment with the best
    start's estimate, the ground truth, their difference and the spread over the starts."""
    spread = fit.spread()
    rows = []
    for k in fit.free:
        for c, est in enumerate(np.asarray(fit.params[k], dtype=float)):
            truth = None if fit.truth is None else float(np.asarray(fit.truth[k])[c])
            rows.append(
                {
                    "run": run,
                    "design": fit.design,
                    "parameter": f"{k}[{c}]",
                    "estimate": float(est),
                    "truth": truth,
                    "error": None if truth is None else float(est) - truth,
                    "spread": float(spread[k][c]),
                }
            )
    return rows


def laplace_row(lp, label: str, sigma: float) -> dict:
    """One ``laplace.csv`` row: the Laplace/Fisher analysis of a design at the ground truth,
    ``contraction_<key>_<compartment>`` per free parameter."""
    c = lp.per_param(lp.contraction)
    stim, rec = label.split("|")
    return {
        "stim": stim,
        "rec": rec,
        "min_contraction": float(lp.contraction.min()),
        "mean_contraction": float(lp.contraction.mean()),
        **{
            f"contraction_{column_key(k)}_{i}": float(x)
            for k in lp.free
            for i, x in enumerate(c[k])
        },
        "logdet_fisher": lp.logdet_fisher,
        "fisher_condition": float(lp.fisher_eigvals.max() / max(lp.fisher_eigvals.min(), 1e-300)),
        "sigma_mv": sigma,
    }


def laplace_parameter_rows(lp, model, truth, label: str) -> list[dict]:
    """Long format of a Laplace analysis: one row per free coordinate (a compartment's or a
    region's value) with its label, the truth, prior and posterior sd and contraction."""
    stim, rec = label.split("|")
    truth_vec = np.concatenate([np.ravel(np.asarray(truth[k], dtype=float)) for k in lp.free])
    prior_sd = np.sqrt(lp.prior_var)
    return [
        plain(
            {
                "stim": stim,
                "rec": rec,
                "parameter": lab,
                "truth": truth_vec[i] if truth_vec.size == lp.mean.size else math.nan,
                "prior_sd": prior_sd[i],
                "posterior_sd": lp.sd[i],
                "contraction": lp.contraction[i],
            }
        )
        for i, lab in enumerate(model.labels)
    ]
