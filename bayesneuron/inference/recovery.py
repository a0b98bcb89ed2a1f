"""Was the ground truth recovered, and if not, why: a MAP fit on simulated data scored
against its truth, with the Fisher information at the truth and the spread of the starts.

Three questions per design, each a number in :func:`recovery_row`:

* **Recovered?** The best start's largest relative error ``max |g − g_true| / g_true`` over
  every free parameter is below ``rel_tol`` (default 1e-3: on noise-free data simulated by the
  fit's own solver the truth is an exact zero of the data term, and a converged
  Levenberg–Marquardt fit lands within 1e-6 of it where the data determine it).
* **Does the design see every direction?** The Fisher information at the truth in relative
  coordinates, ``F = Jᵀ J / σ²`` with ``J = ∂v_rec / ∂ log g`` ``[M, P]`` (σ the model's,
  1 mV in the paper's studies): its eigenvalues, condition number and rank counted at
  ``fisher_tol``. The default, 1 / Var(log g) of the paper's prior base · U(0.7, 1.3) ≈ 33,
  counts a direction as seen when data with noise σ would determine it better than the prior
  does (Laplace contraction above ≈ 0.5); below it a direction is *flat* for practical
  purposes even where noise-free data, in exact arithmetic, still carry it.
* **How many optima?** :func:`distinct_modes` counts the starts whose data term
  ``½ Σ r²`` is within ``obj_tol`` of the best (default 1e-3, i.e. σ = 1 mV: summed squared
  errors within 2e-3 mV² over thousands of recorded values, far below the solver's own
  0.3 mV discretisation error) and whose parameters differ from every mode found so far by
  more than ``x_tol`` (relative, default 1 %): several mean equally good but different
  answers.

Each row also gives ``max_err_prior_width``: the largest ``|g − g_true|`` over the free
parameters in units of the prior's width, taken as ``√12 ·`` the prior sd (the width of a
uniform prior; for the presets' base · U(0.7, 1.3), 0.6 · base); ``None`` without priors.

The reason is then ``"recovered"``, ``"flat direction: …"`` (Fisher rank below ``P``) or
``"local minimum: …"`` (full rank, but the best start's data term stays above zero).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bayesneuron.inference.laplace import jacobian
from bayesneuron.inference.model import NeuronModel
from bayesneuron.inference.space import ParameterSpace

__all__ = [
    "FISHER_TOL",
    "REL_TOL",
    "data_term",
    "distinct_modes",
    "fisher_spectrum",
    "recovery_reason",
    "recovery_row",
]

REL_TOL = 1e-3  # largest relative error of a recovered fit
FISHER_TOL = 12 / 0.6**2  # 1 / Var(log g) of base·U(0.7, 1.3), to first order: ≈ 33.3


def fisher_spectrum(model: NeuronModel, truth: Mapping, tol: float = FISHER_TOL) -> dict:
    """The Fisher information at ``truth`` in relative coordinates (``∂v/∂ log g``, noise
    ``model.sigma``): ``eigvals`` ascending ``[P]``, ``rank`` (eigenvalues ≥ ``tol``),
    ``condition`` (largest / smallest) and ``flat``: for each eigenvalue below ``tol``, the
    parameters that make up most of its eigenvector (``"g_na[4]"``, …)."""
    g = np.concatenate([np.asarray(truth[k], dtype=np.float64) for k in model.free])
    J = jacobian(model, truth).cpu().numpy() * g[None, :] / model.sigma
    ev, vec = np.linalg.eigh(J.T @ J)
    labels = model.labels
    flat = []
    for j in np.nonzero(ev < tol)[0]:
        w = vec[:, j] ** 2
        flat.append([labels[i] for i in np.argsort(-w) if w[i] >= 0.2])
    return {
        "eigvals": ev,
        "rank": int(np.sum(ev >= tol)),
        "condition": float(ev[-1] / max(ev[0], 1e-300)),
        "flat": flat,
        "tol": tol,
    }


def data_term(fit, model: NeuronModel) -> np.ndarray:
    """``½ Σ ((v̂ − v)/σ)²`` per start ``[start]``, from the fit's MSE over the recorded
    entries of ``model`` (the objective less the prior's term, which is constant inside a
    uniform prior)."""
    n_obs = model.n_trace * len(model.rec_index) * model.t_eval.size
    return 0.5 * np.asarray(fit.mse) * n_obs / model.sigma**2


def _near_best(obj: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """Starts whose data term is within ``tol`` (absolute) plus 1e-3 (relative) of the best."""
    return obj <= obj.min() * (1 + 1e-3) + tol


def distinct_modes(fit, model: NeuronModel, obj_tol: float = 1e-3, x_tol: float = 1e-2) -> int:
    """How many different optima the starts of ``fit`` reached with about the best data term
    (within ``obj_tol`` of it, absolute, plus 1e-3 of it, relative): optima that differ in
    some parameter by more than ``x_tol`` (relative) count apart."""
    obj = data_term(fit, model)
    good = np.nonzero(_near_best(obj, obj_tol))[0]
    x = np.log(np.concatenate([fit.starts[k] for k in fit.free], axis=-1))  # [start, P]
    modes: list[np.ndarray] = []
    for s in good[np.argsort(obj[good])]:
        if all(np.abs(x[s] - m).max() > x_tol for m in modes):
            modes.append(x[s])
    return len(modes)


def recovery_reason(
    recovered: bool, spectrum: dict, best_obj: float, n_starts: int, max_rel: float
) -> str:
    """Why a fit did or did not recover the truth (see the module's docstring); ``best_obj``
    is the best start's data term, ``max_rel`` its largest relative error."""
    P = len(spectrum["eigvals"])
    if recovered:
        return "recovered"
    fit = f"best of {n_starts} starts: objective {best_obj:.2g} at max rel err {max_rel:.2g}"
    if spectrum["rank"] < P:
        seen = sorted({lab for group in spectrum["flat"] for lab in group[:2]})
        return (
            f"flat direction: Fisher rank {spectrum['rank']}/{P} at tolerance "
            f"{spectrum['tol']:.3g} (smallest eigenvalue {spectrum['eigvals'][0]:.2g}; "
            f"{', '.join(seen)} barely seen); {fit}"
        )
    return f"local minimum: {fit} (objective > 0)"


def _in_prior_widths(model: NeuronModel, err: np.ndarray) -> float | None:
    """``max(err / (√12 · prior sd))`` over the free parameters ``err`` ``[P]``; ``None``
    where a free parameter has no prior."""
    if any(model.priors.get(k) is None for k in model.free):
        return None
    width = np.sqrt(12.0 * ParameterSpace(model).prior_variance().cpu().numpy())
    return float(np.max(err / width))


def recovery_row(
    fit, model: NeuronModel, truth: Mapping, *, rel_tol: float = REL_TOL, spectrum=None
) -> dict:
    """One table row: the design, the best start's errors, Fisher rank and eigenvalues at the
    truth, the number of distinct optima and the reason (see the module's docstring)."""
    spectrum = spectrum or fisher_spectrum(model, truth)
    err = {k: np.abs(fit.params[k] - truth[k]) for k in fit.free}
    rel = max(float(np.max(err[k] / np.abs(truth[k]))) for k in fit.free)
    obj = data_term(fit, model)
    recovered = rel < rel_tol
    stim, rec = fit.design.split("|")
    gte = fit.gte()
    return {
        "stim": stim,
        "rec": rec,
        "recovered": recovered,
        **{f"gte_{k.removeprefix('g_')}": gte[k] for k in fit.free},
        "max_rel_err": rel,
        "max_err_prior_width": _in_prior_widths(
            model, np.concatenate([e.reshape(-1) for e in err.values()])
        ),
        "best_objective": float(obj[fit.best]),
        "fisher_rank": spectrum["rank"],
        "n_params": len(spectrum["eigvals"]),
        "fisher_min_eig": float(spectrum["eigvals"][0]),
        "fisher_condition": spectrum["condition"],
        "n_starts": len(obj),
        "n_at_best": int(np.sum(_near_best(obj))),
        "n_modes": distinct_modes(fit, model),
        "reason": recovery_reason(recovered, spectrum, float(obj[fit.best]), len(obj), rel),
    }
