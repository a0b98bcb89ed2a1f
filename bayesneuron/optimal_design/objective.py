"""The design criterion of a stimulus, differentiable in the stimulus: Fisher information of the
free conductances at parameter points drawn from the prior, then a criterion in nats.

``F(θ) = Σ_trace Jᵀ J / σ²`` with ``J = ∂V[rec]/∂g`` (mV per mS/cm²; ``P`` columns ordered
free-name-major as :class:`~bayesneuron.inference.space.ParameterSpace` orders them), computed
so that autograd reaches the currents (the fused kernel's adjoint gives ∂/∂currents; the torch
backend's autograd too). The tangents ``J`` come from

* ``tangents="central"`` (default): central differences ``(V(θ + h eₚ) − V(θ − h eₚ)) / 2h``,
  ``h = rel_step·|θₚ|``, all ``2P`` points in one batched simulation; reverse mode through it.
  Error ``O(h²)`` plus rounding ``O(ε/h)``: on the paper's cell (spiking, dt 0.02–0.05 ms)
  the largest error relative to max |F| is 4e-4 / 2e-6 / 2e-8 / 1e-7 at ``rel_step`` 1e-4 /
  1e-5 / 1e-6 (the default) / 1e-7. Measured (all|all, 20 traces, 2 θ, dt 0.02 ms,
  1 thread): 0.11 s for value and gradient on the fused kernel (the default solver), 1.1 s on
  the torch backend;
* ``tangents="forward"``: exact forward-mode AD, one pass with ``P`` one-hot tangents in the
  batch; 14–19 s for the same case, as torch 2.13 runs forward AD of ops with Python
  scalars through TorchScript-compiled decompositions (≈ 350 µs per op instead of 6 µs).

The value reported for a finished design should come from :func:`exact_fisher` (the fused
kernel's exact sensitivities, milliseconds, not differentiable in the currents).

Criteria (larger is better), per θ: ``bayes_d_opt`` (:func:`bayesian_d_optimality`, nats),
``contraction`` (mean ``1 − Var_post/Var_prior`` over ``targets``, the A-type criterion:
expected posterior variance of chosen parameters relative to the prior's) and ``eig_laplace``
(:func:`laplace_eig_terms`, nats; needs the prior's geometry, see :func:`problem_from_model`).
``robust="mean"`` averages them over the θ draws, ``"worst"`` takes the smallest.

Example:
    >>> problem = problem_from_model(model, n_theta=2, seed=0)
    >>> value, per_theta = objective(problem, stimulus)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor

from bayesneuron.cell import Cell
from bayesneuron.errors import FitError
from bayesneuron.inference.criteria import (
    bayesian_d_optimality,
    laplace_eig_terms,
    posterior_contraction,
    prior_entropy,
    prior_geometry,
)
from bayesneuron.inference.space import ParameterSpace, prior_draws
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.simulation.api import sensitivities, simulate
from bayesneuron.simulation.solvers import CrankNicolson

__all__ = [
    "CRITERIA",
    "DesignProblem",
    "criterion_values",
    "exact_fisher",
    "fisher",
    "objective",
    "problem_from_model",
]

CRITERIA = ("bayes_d_opt", "contraction", "eig_laplace")
"""Criteria :func:`criterion_values` computes; larger is better for each."""
TANGENTS = ("central", "forward")


def _default_solver() -> CrankNicolson:
    return CrankNicolson(dt=0.02)


@dataclass(frozen=True, eq=False)
class DesignProblem:
    """What a stimulus is judged on: the cell, the recording, the parameter points and prior.

    Args:
        cell: the cell (its ``v0``, channels and the parameters not in ``free``).
        t_eval: observation times ``[time]`` ms (the simulation starts at ``t_eval[0]``).
        theta: parameter points name → ``[n, comp]`` (draws from the prior, never the truth
            for a design that is to be judged fairly).
        prior_var: prior variances of the free parameters ``[P]`` ((mS/cm²)²).
        rec: recorded compartments.
        sigma: observation noise sd (mV).
        free: per-compartment channel conductances ``g_<channel>``.
        solver: a :class:`CrankNicolson` (default ``dt=0.02``, fused kernel on the CPU in
            float64; ``tangents="forward"`` needs the torch backend).
        tangents: ``"central"`` or ``"forward"`` (module docstring).
        rel_step: relative step of central differences.
        criterion: one of :data:`CRITERIA`.
        robust: ``"mean"`` over θ or ``"worst"`` (the smallest).
        targets: parameter indices (into ``P``) the ``contraction`` criterion counts; all
            when ``None``.
        dg_du, prior_hessian_u, entropy: the prior's geometry in unconstrained coordinates
            at ``theta`` (``[n, P]``, ``[n, P]``, nats) for ``eig_laplace``.
        sampler: ``seed → `` the same problem at ``n`` fresh prior draws (what
            :class:`~bayesneuron.optimal_design.optimize.OptimizeConfig` ``resample_theta`` calls);
            :func:`problem_from_model` sets it.
    """

    cell: Cell
    t_eval: np.ndarray
    theta: Mapping[str, Tensor]
    prior_var: Tensor
    rec: tuple[int, ...]
    sigma: float = 1.0
    free: tuple[str, ...] = ("g_na", "g_k")
    solver: CrankNicolson = field(default_factory=_default_solver)
    tangents: str = "central"
    rel_step: float = 1e-6
    criterion: str = "bayes_d_opt"
    robust: str = "mean"
    targets: tuple[int, ...] | None = None
    dg_du: Tensor | None = None
    prior_hessian_u: Tensor | None = None
    entropy: float | None = None
    sampler: Callable[[int], DesignProblem] | None = None

    def __post_init__(self):
        object.__setattr__(self, "t_eval", np.asarray(self.t_eval, dtype=np.float64))
        object.__setattr__(self, "rec", tuple(int(k) for k in self.rec))
        object.__setattr__(self, "free", tuple(self.free))
        n_comp = self.cell.n_comp
        if not self.rec or min(self.rec) < 0 or max(self.rec) >= n_comp:
            raise FitError(f"rec = {self.rec}: recorded compartments must lie in 0–{n_comp - 1}")
        if self.tangents == "forward" and getattr(self.solver, "backend", None) == "fused":
            raise FitError(
                "tangents='forward' needs forward-mode AD, which the fused kernel has not: use "
                "CrankNicolson(backend='torch') or 'auto', or tangents='central'"
            )
        for what, val, allowed in (
            ("tangents", self.tangents, TANGENTS),
            ("criterion", self.criterion, CRITERIA),
            ("robust", self.robust, ("mean", "worst")),
        ):
            if val not in allowed:
                raise FitError(f"{what} = {val!r}; choose one of {allowed}")
        missing = [k for k in self.free if k not in self.theta]
        if missing:
            raise FitError(f"theta lacks {missing}: give name → [n, comp] for every free name")
        if self.prior_var.shape != (self.n_params,):
            raise FitError(
                f"prior_var has shape {tuple(self.prior_var.shape)}; need [P={self.n_params}]"
            )
        if self.criterion == "eig_laplace" and self.entropy is None:
            raise FitError("eig_laplace needs the prior geometry: build with problem_from_model")

    @property
    def n_theta(self) -> int:
        """Number of parameter points."""
        return int(self.theta[self.free[0]].shape[0])

    @property
    def n_params(self) -> int:
        """``P = len(free) · n_comp``."""
        return len(self.free) * self.cell.n_comp

    def flat_theta(self) -> Tensor:
        """The parameter points as ``[n, P]`` (float64, free-name-major)."""
        return torch.cat(
            [torch.as_tensor(self.theta[k], dtype=torch.float64) for k in self.free], -1
        )

    def at(self, index) -> DesignProblem:
        """The same problem at a subset ``index`` of the parameter points."""
        sub = {k: v[index] for k, v in self.theta.items()}
        geo = {
            k: getattr(self, k)[index]
            for k in ("dg_du", "prior_hessian_u")
            if getattr(self, k) is not None
        }
        return dataclasses.replace(self, theta=sub, **geo)


def _split(problem: DesignProblem, g: Tensor) -> dict[str, Tensor]:
    return dict(zip(problem.free, g.split(problem.cell.n_comp, -1)))


def _tangents_central(problem: DesignProblem, stimulus: Stimulus) -> Tensor:
    """``J`` ``[n, P, trace, rec, time]`` by central differences (one batched run)."""
    g = problem.flat_theta()  # [n, P]
    n, P = g.shape
    h = problem.rel_step * g.abs().clamp_min(1e-12)
    step = h[:, :, None] * torch.eye(P, dtype=g.dtype)  # [n, P, P]: row p steps parameter p
    pts = torch.cat([g[:, None] + step, g[:, None] - step], 1)  # [n, 2P, P]
    v = simulate(problem.cell, _split(problem, pts), stimulus, problem.t_eval, problem.solver).v
    v = v[..., list(problem.rec), :]  # [n, 2P, trace, rec, time]
    return (v[:, :P] - v[:, P:]) / (2.0 * h[:, :, None, None, None])


def _tangents_forward(problem: DesignProblem, stimulus: Stimulus) -> Tensor:
    """``J`` ``[n, P, trace, rec, time]`` by forward-mode AD, ``P`` one-hot tangents."""
    g = problem.flat_theta()
    n, P = g.shape
    solver = dataclasses.replace(problem.solver, checkpoint_every=None)  # no custom chunks
    primal = g[:, None, :].expand(n, P, P).contiguous()
    tangent = torch.eye(P, dtype=g.dtype).expand(n, P, P).contiguous()
    with fwad.dual_level(), warnings.catch_warnings():
        # torch scripts its forward-AD decompositions and warns about its own jit.script
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        params = _split(problem, fwad.make_dual(primal, tangent))
        v = simulate(problem.cell, params, stimulus, problem.t_eval, solver).v
        jac = fwad.unpack_dual(v).tangent
    return jac[..., list(problem.rec), :]


def fisher(problem: DesignProblem, stimulus: Stimulus) -> Tensor:
    """Fisher information of each trace ``[n, trace, P, P]`` ((mS/cm²)⁻²), differentiable in
    ``stimulus.values``; the Fisher information of the sweep set is the sum over traces."""
    run = _tangents_central if problem.tangents == "central" else _tangents_forward
    jac = run(problem, stimulus)
    return torch.einsum("nptcs,nqtcs->ntpq", jac, jac) / problem.sigma**2


def exact_fisher(problem: DesignProblem, stimulus: Stimulus, solver=None) -> Tensor:
    """:func:`fisher` from the fused kernel's exact sensitivities (``solver``: a fused-capable
    :class:`CrankNicolson`, default ``dt`` of ``problem.solver``); not differentiable in the
    currents. ``[n, trace, P, P]``."""
    solver = CrankNicolson(dt=problem.solver.dt) if solver is None else solver
    params = {k: torch.as_tensor(problem.theta[k], dtype=torch.float64) for k in problem.free}
    values = stimulus.values.detach()
    stim = Stimulus(values, stimulus.dt, stimulus.t0, stimulus.unit, stimulus.sites)
    _, jac = sensitivities(problem.cell, params, stim, problem.t_eval, solver, wrt=problem.free)
    jac = jac[..., list(problem.rec), :]  # [n, trace, P, rec, time]
    return torch.einsum("ntpcs,ntqcs->ntpq", jac, jac) / problem.sigma**2


def criterion_values(problem: DesignProblem, fisher: Tensor) -> Tensor:
    """``problem.criterion`` at each θ ``[n]`` from the Fisher information ``[n, P, P]`` of
    the whole sweep set (sum :func:`fisher` over traces first)."""
    if problem.criterion == "bayes_d_opt":
        return bayesian_d_optimality(fisher, problem.prior_var)
    if problem.criterion == "contraction":
        return posterior_contraction(fisher, problem.prior_var, problem.targets)
    d = problem.dg_du
    fisher_u = fisher * d[:, :, None] * d[:, None, :]
    return laplace_eig_terms(fisher_u, problem.prior_hessian_u, problem.entropy)


def objective(problem: DesignProblem, stimulus: Stimulus) -> tuple[Tensor, Tensor]:
    """``(value, per_theta)``: the robust criterion (mean or worst over θ, a scalar) and the
    criterion at each θ ``[n]``, differentiable in ``stimulus.values``."""
    per = criterion_values(problem, fisher(problem, stimulus).sum(1))
    return (per.mean() if problem.robust == "mean" else per.min()), per


def _pick(draws: Mapping, free: Sequence[str], n: int, seed: int, like: Mapping) -> dict:
    """``n`` of ``draws``' points (name → ``[S, comp]``), without replacement, seeded; checked
    against the names and shapes of ``like`` (prior draws of the same model)."""
    missing = [k for k in free if k not in draws]
    if missing:
        raise FitError(f"draws lack the free parameters {missing}; they have {sorted(draws)}")
    pool = {k: torch.as_tensor(draws[k], dtype=torch.float64) for k in free}
    sizes = {int(v.shape[0]) for v in pool.values()}
    bad = [k for k in free if tuple(pool[k].shape[1:]) != tuple(like[k].shape[1:])]
    if bad or len(sizes) != 1:
        shapes = {k: tuple(v.shape) for k, v in pool.items()}
        raise FitError(f"draws {shapes} do not match the model's parameters {_shapes(like)}")
    (size,) = sizes
    if size < n:
        raise FitError(f"{size} draws are fewer than the {n} points asked for")
    idx = torch.randperm(size, generator=torch.Generator().manual_seed(int(seed)))[:n]
    return {k: v[idx] for k, v in pool.items()}


def _shapes(theta: Mapping) -> dict:
    """name → shape without the leading draw axis (for messages)."""
    return {k: ("S", *tuple(v.shape[1:])) for k, v in theta.items()}


def problem_from_model(
    model, n_theta: int = 4, seed: int = 0, *, rec=None, solver=None, draws=None, **kw
) -> DesignProblem:
    """A :class:`DesignProblem` for ``model`` (:class:`~bayesneuron.inference.NeuronModel`
    with a fixed ``sigma`` and per-compartment free conductances): its cell, times, recorded
    compartments (or ``rec``), noise sd and priors; ``n_theta`` points drawn from the prior
    with ``seed`` — or, with ``draws`` (name → ``[S, comp]``, e.g. a fitted cell's posterior
    draws), ``n_theta`` of those points, chosen with ``seed`` (a stimulus designed for that
    cell; the criteria stay relative to the prior, and ``eig_laplace`` becomes the mean of its
    per-point terms over those points rather than an expectation under the prior).
    ``solver``: default ``CrankNicolson(dt=0.02)``; other :class:`DesignProblem` fields as
    keywords."""
    if model.sigma is None:
        raise FitError("problem_from_model needs a model with a fixed sigma (mV)")
    if not model.parametrisation.per_compartment:
        raise FitError("problem_from_model supports per-compartment free conductances only")
    space = ParameterSpace(model)
    theta = prior_draws(model, n_theta, seed)
    if draws is not None:
        theta = _pick(draws, tuple(model.free), n_theta, seed, theta)
    _, dg_du, hess = prior_geometry(space, theta)

    def sampler(new_seed: int) -> DesignProblem:
        return problem_from_model(
            model, n_theta, new_seed, rec=rec, solver=solver, draws=draws, **kw
        )

    return DesignProblem(
        cell=model.cell,
        t_eval=model.t_eval,
        theta=theta,
        prior_var=space.prior_variance().detach(),
        rec=tuple(model.rec_index) if rec is None else tuple(rec),
        sigma=float(model.sigma),
        free=tuple(model.free),
        solver=_default_solver() if solver is None else solver,
        dg_du=dg_du,
        prior_hessian_u=hess,
        entropy=prior_entropy(model),
        sampler=sampler,
        **kw,
    )
