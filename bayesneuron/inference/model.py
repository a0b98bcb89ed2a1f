"""The Pyro model: priors over per-compartment parameters, the simulator as the likelihood.

::

    with plate("compartment", n_comp):            # dim −1
        g_na ~ prior_na ;  g_k ~ prior_k           # [comp] each (any free parameter)
    sigma = fixed, or sigma ~ prior_sigma          # mV
    V = simulate(cell, g, stimulus)[..., rec, :]   # [trace, n_rec, time]
    with plate("trace", n_trace):                  # dim −1
        v_obs ~ Normal(V, sigma).to_event(2)       # [trace, n_rec, time]

Site names and shapes are stable: one site per free parameter, named as the cell's parameter
(``g_na``, ``g_k``, …), shape ``[comp]``; ``sigma`` (scalar, only when inferred); ``v_obs``
``[trace, n_rec, time]``. Outer plates (Pyro's vectorised particles, ``Predictive(parallel=True)``)
add leading dimensions that go through the simulator as a batch, not a Python loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from bayesneuron.cell import Cell
from bayesneuron.errors import DataError, DesignError, ParameterError
from bayesneuron.inference.priors import LogNormalPrior, resolve_priors
from bayesneuron.protocol.design import Design
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.simulation.api import check_device, runs_fused, simulate
from bayesneuron.simulation.solvers import BackwardEuler, CrankNicolson, Torchdiffeq

__all__ = ["NeuronModel"]

DEFAULT_PRIOR = LogNormalPrior(sd=0.5)
DEFAULT_SIGMA_LOC, DEFAULT_SIGMA_SCALE = 0.0, 1.0
"""``sigma="infer"``: ``log σ ~ Normal(log 1 mV, 1)``, i.e. ``σ`` mostly within 0.2–5 mV (90 %)."""


class NeuronModel:
    """A Bayesian model of current-clamp recordings from one cell under one design.

    Args:
        cell: the cell; its parameter values are the priors' base values and the fits' start.
        stimulus: currents ``[trace, comp, bins]``; compartments outside ``design.stim`` are
            zeroed (the design decides where current goes).
        t_eval: observation times ``[time]`` in ms (the simulation starts at ``t_eval[0]``).
        design: stimulated and recorded compartments (default: all and all).
        free: the per-compartment parameters to infer (default ``("g_na", "g_k")``).
        priors: one spec for all free parameters or a mapping name → spec (see
            :mod:`bayesneuron.inference.priors`; default ``LogNormalPrior(sd=0.5)``). ``None`` (no prior)
            is allowed for maximum-likelihood fits only.
        sigma: observation noise sd in mV: a number (fixed), a Pyro distribution over a
            positive scalar (inferred, site ``sigma``), or ``"infer"`` (inferred under the
            default prior ``LogNormal(log 1 mV, 1)``).
        solver: simulator settings (default ``CrankNicolson(dt=0.004)``, whose error on the
            paper's model is ≈ 0.3 mV, the paper's own numerical error).
        dtype, device: where and in which precision the simulator runs.
    """

    def __init__(
        self,
        cell: Cell,
        stimulus: Stimulus,
        t_eval: Sequence[float] | np.ndarray,
        design: Design | None = None,
        *,
        free: Sequence[str] = ("g_na", "g_k"),
        priors=DEFAULT_PRIOR,
        sigma: float | dist.Distribution = 1.0,
        solver: CrankNicolson | BackwardEuler | Torchdiffeq | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ):
        self.cell = cell
        self.design = Design() if design is None else design
        if not isinstance(self.design, Design):
            raise DesignError(f"design must be a bayesneuron.Design, got {type(design).__name__}")
        morph = cell.morphology
        self.stim_index = self.design.stim_index(morph)
        self.rec_index = self.design.rec_index(morph)
        if not isinstance(stimulus, Stimulus):
            raise DataError(
                f"stimulus must be a bayesneuron.Stimulus, got {type(stimulus).__name__}"
            )
        if stimulus.values.ndim != 3 or stimulus.n_comp != cell.n_comp:
            raise DataError(
                f"stimulus has shape {tuple(stimulus.values.shape)}; expected [trace, "
                f"{cell.n_comp}, bins] for this {cell.n_comp}-compartment cell"
            )
        self.stimulus = stimulus.masked(self.stim_index)
        try:
            self.t_eval = np.asarray(t_eval, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"t_eval must be a 1-D array of times in ms, got {t_eval!r}") from None
        if self.t_eval.ndim != 1 or self.t_eval.size < 2:
            raise DataError(f"t_eval must be 1-D with ≥ 2 times, got shape {self.t_eval.shape}")
        if not np.all(np.isfinite(self.t_eval)) or np.any(np.diff(self.t_eval) <= 0):
            raise DataError(
                "t_eval must be finite and strictly increasing (ms); got "
                f"{np.array2string(self.t_eval, threshold=8)}"
            )
        self.free = (free,) if isinstance(free, str) else tuple(free)
        if not self.free:
            raise ParameterError("free is empty: name at least one parameter to infer")
        unknown = [k for k in self.free if k not in cell.params]
        if unknown:
            raise ParameterError(
                f"free parameters {unknown} are not parameters of this cell; it has "
                f"{list(cell.param_names)}"
            )
        if len(set(self.free)) != len(self.free):
            raise ParameterError(f"free lists a parameter twice: {list(self.free)}")
        self.dtype = dtype
        self.device = check_device("cpu" if device is None else device)
        self.solver = CrankNicolson(dt=0.004) if solver is None else solver
        self.base = {
            k: torch.tensor(np.array(cell.params[k]), dtype=dtype, device=self.device)
            for k in self.free
        }
        self.priors = resolve_priors(self.free, priors, self.base)
        self.sigma, self.sigma_prior = _noise_sd(sigma, dtype, self.device)
        self._rec = torch.as_tensor(self.rec_index, device=self.device)

    # ------------------------------------------------------------------ shapes
    @property
    def n_comp(self) -> int:
        return self.cell.n_comp

    @property
    def n_trace(self) -> int:
        return self.stimulus.n_trace

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        """Shape of ``v_obs``: ``(trace, n_rec, time)``."""
        return (self.n_trace, len(self.rec_index), self.t_eval.size)

    # ------------------------------------------------------------------ pieces
    def simulate(self, params: Mapping[str, Tensor], recorded: bool = True) -> Tensor:
        """Voltages ``[sample…, trace, n_rec, time]`` (all compartments if ``recorded=False``)
        for free-parameter values ``params[name]`` of shape ``[sample…, comp]``."""
        v = simulate(
            self.cell,
            dict(params),
            self.stimulus,
            self.t_eval,
            self.solver,
            dtype=self.dtype,
            device=self.device,
        ).v
        return v.index_select(-2, self._rec) if recorded else v

    @property
    def exact_sensitivities(self) -> bool:
        """Whether :func:`~bayesneuron.simulation.sensitivities` applies: the fused CPU kernel in
        float64, and every free parameter a channel's maximal conductance ``g_<channel>``."""
        chans = {f"g_{c.name}" for c in self.cell.channels}
        return all(k in chans for k in self.free) and runs_fused(
            self.cell, self.solver, self.dtype, self.device
        )

    def check_data(self, v_obs) -> Tensor:
        """``v_obs`` as a tensor of :attr:`obs_shape`, or a :class:`DataError` saying why not."""
        try:
            v = torch.as_tensor(
                v_obs if isinstance(v_obs, Tensor) else np.asarray(v_obs, dtype=np.float64),
                dtype=self.dtype,
                device=self.device,
            )
        except (TypeError, ValueError):
            raise DataError(
                f"observed data must be a numeric array {self.obs_shape} = (trace, recorded "
                f"compartments, time); got {type(v_obs).__name__}"
            ) from None
        if tuple(v.shape) != self.obs_shape:
            raise DataError(
                f"observed data have shape {tuple(v.shape)}; this model expects "
                f"{self.obs_shape} = (trace, recorded compartments {list(self.rec_index)}, time)"
            )
        if not bool(torch.isfinite(v).all()):
            bad = torch.nonzero(~torch.isfinite(v))[0].tolist()
            raise DataError(f"observed data contain NaN or inf (first at index {bad})")
        return v

    # ------------------------------------------------------------------ Pyro
    def __call__(self, v_obs: Tensor | None = None) -> Tensor:
        """The Pyro model; returns the simulated recorded voltages."""
        if v_obs is not None:
            v_obs = self.check_data(v_obs)
        missing = [k for k, d in self.priors.items() if d is None]
        if missing:
            raise ParameterError(
                f"{missing} have no prior: sampling needs a proper prior (priors=None is for "
                "fit_map only)"
            )
        with pyro.plate("compartment", self.n_comp, dim=-1):
            params = {k: pyro.sample(k, self.priors[k]) for k in self.free}
        if self.sigma_prior is not None:
            sigma = pyro.sample("sigma", self.sigma_prior)
            sigma = sigma.reshape(sigma.shape + (1, 1))
        else:
            sigma = self.sigma
        v = self.simulate(params)
        with pyro.plate("trace", self.n_trace, dim=-1):
            pyro.sample("v_obs", dist.Normal(v, sigma).to_event(2), obs=v_obs)
        return v

    def __repr__(self) -> str:
        return (
            f"NeuronModel({self.n_comp} compartments, {self.n_trace} traces, design "
            f"{self.design.label}, free {list(self.free)}, sigma "
            f"{self.sigma if self.sigma is not None else self.sigma_prior})"
        )


def _noise_sd(sigma, dtype: torch.dtype, device) -> tuple[float | None, dist.Distribution | None]:
    """``(fixed σ in mV, None)`` or ``(None, prior of σ)`` from :class:`NeuronModel`'s
    ``sigma`` argument (a number, a scalar Pyro distribution over σ > 0, or ``"infer"``)."""
    if isinstance(sigma, str) and sigma == "infer":
        loc = torch.tensor(DEFAULT_SIGMA_LOC, dtype=dtype, device=device)
        sigma = dist.LogNormal(loc, torch.full_like(loc, DEFAULT_SIGMA_SCALE))
    if isinstance(sigma, dist.Distribution):
        if sigma.batch_shape != () or sigma.event_shape != ():
            raise ParameterError("a sigma prior must be a scalar distribution")
        if bool(sigma.support.check(torch.tensor(-1e-6, dtype=dtype))):
            raise ParameterError(
                f"the sigma prior {sigma} allows σ < 0; use one over σ > 0 (mV), e.g. "
                "dist.LogNormal(0.0, 1.0) or dist.HalfNormal(5.0)"
            )
        return None, sigma
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise ParameterError(
            f"sigma = {sigma!r} must be a number of mV (fixed noise), a Pyro "
            "distribution over a positive scalar or 'infer' (inferred noise)"
        ) from None
    if not (np.isfinite(s) and s > 0):
        raise ParameterError(
            f"sigma = {sigma} mV must be finite and > 0 (the observation noise sd)"
        )
    return s, None
