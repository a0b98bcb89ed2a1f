"""Profile likelihoods: how well one conductance is determined when all others may adjust.

For a chosen parameter ``θ_j`` and each value ``c`` on a grid, maximise the log-likelihood
(or the log posterior) over all other parameters with ``θ_j = c`` held fixed — constrained
gradient descent by L-BFGS in unconstrained coordinates, warm-started from the neighbouring
grid point. A flat profile means the data cannot tell values of ``θ_j`` apart once the others
compensate (a non-identifiable direction); a sharp one, that ``θ_j`` is determined. The
likelihood-ratio interval ``{c : 2 (max − profile(c)) ≤ χ²₁(0.95) = 3.84}`` is reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bayesneuron.errors import FitError
from bayesneuron.inference._runtime import progress_bar
from bayesneuron.inference.laplace import log_likelihood
from bayesneuron.inference.space import ParameterSpace

__all__ = ["Profile", "profile_likelihood"]

_CHI2_95 = 3.841458820694124


@dataclass
class Profile:
    """``values`` ``[G]`` of ``name[comp]``, the maximised objective ``[G]`` (nats) and the
    other parameters at each maximum (name → ``[G, comp]``)."""

    name: str
    comp: int
    values: np.ndarray
    objective: np.ndarray
    params: dict[str, np.ndarray]
    posterior: bool

    def interval(self, level: float = _CHI2_95) -> tuple[float, float]:
        """Smallest and largest grid value with ``2 (max − profile) ≤ level`` (95 % by
        default); a bound at the grid's end means the interval reaches past the grid."""
        ok = 2 * (np.nanmax(self.objective) - self.objective) <= level
        inside = self.values[ok]
        return float(inside.min()), float(inside.max())


def profile_likelihood(
    model,
    v_obs,
    name: str,
    comp: int,
    values: Sequence[float],
    init: Mapping,
    *,
    posterior: bool = False,
    max_iter: int = 100,
    progress: bool = True,
) -> Profile:
    """Profile of ``name[comp]`` over ``values`` (the parameter's units), starting the other
    parameters at ``init`` (name → ``[comp]``, e.g. a MAP). ``posterior=True`` profiles the
    log posterior in ``u`` instead of the log-likelihood. ``progress``: a progress bar over
    the grid (``False``: silent)."""
    if name not in model.free:
        raise FitError(f"{name!r} is not a free parameter of the model; it has {list(model.free)}")
    n = model.sizes[name]
    if not 0 <= comp < n:
        what = model.parametrisation.site(name).dim.replace("_region", " region")
        raise FitError(f"comp = {comp} is not a {what} (0 … {n - 1})")
    v_obs = model.check_data(v_obs)
    space = ParameterSpace(model)
    j = sum(model.sizes[k] for k in model.free[: model.free.index(name)]) + comp
    u = space.unconstrain(init).detach().clone()
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim != 1 or vals.size < 2:
        raise FitError("values must be a 1-D grid of at least 2 values")
    order = np.argsort(np.abs(vals - float(np.asarray(init[name])[comp])))  # nearest first
    obj = np.full(vals.size, np.nan)
    others = {k: np.full((vals.size, model.sizes[k]), np.nan) for k in model.free}
    bar = progress_bar(vals.size, progress, f"profile {name}[{comp}]")
    for i in order:
        point = {
            **{k: np.asarray(init[k]) for k in model.free},
            name: _with(init[name], comp, vals[i]),
        }
        nearest = _nearest_done(vals, obj, i)
        x0 = u.clone() if nearest is None else torch.as_tensor(_u_of(space, others, nearest))
        obj[i], g = _maximise_others(model, v_obs, space, j, point, x0, posterior, max_iter)
        for k in model.free:
            others[k][i] = g[k].cpu().numpy()
        bar.update(1)
    bar.close()
    return Profile(name, comp, vals, obj, others, posterior)


def _maximise_others(model, v_obs, space, j: int, point, x0, posterior: bool, max_iter: int):
    """The objective maximised over every coordinate but ``u[j]``, held at ``point``'s;
    (maximum, the parameters name → ``[comp]`` there), from ``x0``."""
    u_j = space.unconstrain(point)[j]

    def full(f):
        return torch.cat([f[:j], u_j.reshape(1), f[j:]])

    def objective(f):
        g, _ = space.constrain(full(f))
        val = log_likelihood(model, v_obs, g).sum()
        return val + space.log_prior(full(f)) if posterior else val

    free = _maximise(objective, torch.cat([x0[:j], x0[j + 1 :]]), max_iter)
    with torch.no_grad():
        return float(objective(free)), space.constrain(full(free))[0]


def _maximise(objective, x0, max_iter: int):
    """L-BFGS (strong Wolfe line search) on ``−objective`` from ``x0``."""
    free = x0.detach().clone().requires_grad_()
    opt = torch.optim.LBFGS([free], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -objective(free)
        loss.backward()
        return loss

    opt.step(closure)
    return free.detach()


def _with(x, comp: int, value: float) -> np.ndarray:
    x = np.array(x, dtype=np.float64).reshape(-1)
    x[comp] = value
    return x


def _nearest_done(vals, obj, i):
    done = np.flatnonzero(np.isfinite(obj))
    if done.size == 0:
        return None
    return int(done[np.argmin(np.abs(vals[done] - vals[i]))])


def _u_of(space, others, i) -> np.ndarray:
    return space.unconstrain({k: v[i] for k, v in others.items()}).numpy()
