"""The Pyro model: priors over the free parameters, the simulator as the likelihood.

::

    with plate("compartment", n_comp):            # dim −1
        g_na ~ prior_na ;  g_k ~ prior_k           # [comp] each (any free parameter)
    with plate("g_l_region", n_regions):          # parameters shared by region, if any
        g_l ~ prior_l                              # [region]
    sigma = fixed, or sigma ~ prior_sigma          # mV
    V = simulate(cell, expand(g), stimulus)[..., rec, :]   # [trace, n_rec, time]
    with plate("trace", n_trace):                  # dim −1
        v_obs ~ Normal(V, sigma).to_event(2)       # [trace, n_rec, time]

Site names and shapes are stable: one site per free parameter, named as the cell's parameter
(``g_na``, ``g_k``, …), shape ``[comp]`` by default; a parameter shared by region
(:mod:`.forms`) is a site ``[region]`` over its own plate ``<name>_region``, a distance law
has sites ``<name>_g0`` and ``<name>_lam``; ``expand`` turns them into per-compartment values
differentiably. ``sigma`` (scalar, only when inferred); ``v_obs`` ``[trace, n_rec, time]``.
Outer plates (Pyro's vectorised particles, ``Predictive(parallel=True)``) add leading
dimensions that go through the simulator as a batch, not a Python loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from bayesneuron.cell import Cell
from bayesneuron.errors import DataError, DesignError, ParameterError, StimulusError
from bayesneuron.inference.forms import Form, Parametrisation
from bayesneuron.inference.priors import LogNormalPrior, NormalPrior, resolve_priors
from bayesneuron.protocol.design import Design
from bayesneuron.protocol.electrode import ElectrodeStimulus
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
        stimulus: currents ``[trace, comp, bins]``, or a sparse stimulus ``[trace, site, bins]``
            (``sites=…``, or an :class:`ElectrodeStimulus`; kept sparse); compartments outside ``design.stim`` are zeroed (the
            design decides where current goes).
        t_eval: observation times ``[time]`` in ms (the simulation starts at ``t_eval[0]``).
        design: stimulated and recorded compartments (default: all and all).
        free: the parameters to infer (default ``("g_na", "g_k")``, per compartment): names
            of the cell's parameters (``g_l``, ``e_l``, ``e_na``, ``cm``, ``ra``, …; one value per
            compartment) or forms shared by region (:class:`~.forms.Shared`,
            :class:`~.forms.ExpDistance`).
        priors: one spec for all free parameters or a mapping site name → spec (see
            :mod:`bayesneuron.inference.priors`; default ``LogNormalPrior(sd=0.5)``, and
            ``NormalPrior(sd=10)`` mV for reversal potentials). ``None`` (no prior) is allowed
            for maximum-likelihood fits only.
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
        stimulus: Stimulus | ElectrodeStimulus,
        t_eval: Sequence[float] | np.ndarray,
        design: Design | None = None,
        *,
        free: Sequence[str | Form] = ("g_na", "g_k"),
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
        if isinstance(stimulus, ElectrodeStimulus):
            stimulus = stimulus.as_stimulus()  # sparse: a view of the waveform
        if not isinstance(stimulus, Stimulus):
            raise DataError(
                f"stimulus must be a bayesneuron.Stimulus or ElectrodeStimulus, got "
                f"{type(stimulus).__name__}"
            )
        if stimulus.values.ndim != 3 or stimulus.n_comp not in (None, cell.n_comp):
            raise DataError(
                f"stimulus has shape {tuple(stimulus.values.shape)}; expected [trace, "
                f"{cell.n_comp}, bins] (or [trace, site, bins] with sites=) for this "
                f"{cell.n_comp}-compartment cell"
            )
        try:
            stimulus.site_index(cell.n_comp)
        except StimulusError as e:
            raise DataError(str(e)) from None
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
        self.dtype = dtype
        self.device = check_device("cpu" if device is None else device)
        self.solver = CrankNicolson(dt=0.004) if solver is None else solver
        free = (free,) if isinstance(free, (str, Form)) else tuple(free)
        self.parametrisation = Parametrisation(cell, free, dtype, self.device)
        self.free = self.parametrisation.names
        sites = self.parametrisation.sites
        self.base = {s.name: torch.tensor(s.base, dtype=dtype, device=self.device) for s in sites}
        defaults = {s.name: NormalPrior() if s.signed else LogNormalPrior() for s in sites}
        self.priors = resolve_priors(
            self.free, {} if priors is DEFAULT_PRIOR else priors, self.base, defaults
        )
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

    @property
    def sizes(self) -> dict[str, int]:
        """Values per free parameter (site): ``n_comp``, or its number of regions."""
        return {s.name: s.size for s in self.parametrisation.sites}

    @property
    def labels(self) -> list[str]:
        """``"g_na[0]"`` (per compartment), ``"g_k[soma]"`` (per region), … in the order
        of the free vector."""
        return [f"{s.name}[{lab}]" for s in self.parametrisation.sites for lab in s.labels]

    def plates(self) -> list[tuple[str, int, tuple[str, ...]]]:
        """``(plate name, size, sites)`` per dim of the free parameters, in order:
        ``"compartment"`` and/or ``"<name>_region"``."""
        out: dict[str, tuple[int, list[str]]] = {}
        for s in self.parametrisation.sites:
            out.setdefault(s.dim, (s.size, []))[1].append(s.name)
        return [(dim, size, tuple(names)) for dim, (size, names) in out.items()]

    # ------------------------------------------------------------------ pieces
    def expand(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Free-parameter values (site → ``[sample…, size]``) → the cell's parameters
        ``[sample…, comp]`` that :func:`~bayesneuron.simulate` takes (per-compartment models:
        unchanged)."""
        if self.parametrisation.per_compartment:
            return dict(params)
        return self.parametrisation.expand(params)

    def simulate(self, params: Mapping[str, Tensor], recorded: bool = True) -> Tensor:
        """Voltages ``[sample…, trace, n_rec, time]`` (all compartments if ``recorded=False``)
        for free-parameter values ``params[name]`` of shape ``[sample…, size]`` (``size``
        the compartments, or the regions of a parameter shared by region)."""
        v = simulate(
            self.cell,
            self.expand(params),
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
        float64, and every free parameter sets a channel's maximal conductance
        ``g_<channel>`` (per region through :meth:`expansion_jacobian`)."""
        chans = {f"g_{c.name}" for c in self.cell.channels}
        return all(k in chans for k in self.parametrisation.targets) and runs_fused(
            self.cell, self.solver, self.dtype, self.device
        )

    @property
    def tangents_pay(self) -> bool:
        """Whether exact forward sensitivities are the cheaper Jacobian here. They cost one
        tangent per cell parameter *per compartment* (a simulation each on a large cell),
        differences one or two simulations per free value: with a few parameters shared by
        region on a large cell (the 184-compartment L2/3 cell, 10 regional conductances:
        368 tangents against 20 simulations) differences win; per-compartment parameters
        always take the tangents."""
        n_tangents = len(self.parametrisation.targets) * self.n_comp
        return self.exact_sensitivities and n_tangents <= 8 * sum(self.sizes.values())

    def expansion_jacobian(self, params: Mapping[str, Tensor]) -> Tensor:
        """``∂ expand(params) / ∂ params`` ``[sample…, T·comp, P]``: rows the cell parameters
        :attr:`Parametrisation.targets` per compartment, columns the free vector (site-major)
        at ``params`` (site → ``[sample…, size]``)."""
        sizes = list(self.sizes.values())
        x = torch.cat([torch.as_tensor(params[k]).to(self.dtype) for k in self.free], -1)
        x = x.detach().requires_grad_()
        with torch.enable_grad():
            out = self.parametrisation.expand(dict(zip(self.free, x.split(sizes, -1))))
            out = torch.cat([out[k] for k in self.parametrisation.targets], -1)
            # J·e_j by two reverse passes: uᵀJ is linear in u, and its u-gradient is J's column
            u = torch.zeros_like(out, requires_grad=True)
            (ujac,) = torch.autograd.grad(out, x, u, create_graph=True)
            cols = [
                torch.autograd.grad(ujac[..., j].sum(), u, retain_graph=True, allow_unused=True)[0]
                for j in range(x.shape[-1])
            ]
        return torch.stack([torch.zeros_like(out) if c is None else c for c in cols], -1).detach()

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
        params = {}
        for dim, size, names in self.plates():
            with pyro.plate(dim, size, dim=-1):
                params.update({k: pyro.sample(k, self.priors[k]) for k in names})
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
