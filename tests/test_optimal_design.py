"""Optimal stimulus design: bounded stimulus families, the differentiable Fisher information
against the fused kernel's exact sensitivities, the criterion's gradient against central
differences, the criteria on a linear-Gaussian problem with an exact answer, and the
optimiser (improvement, determinism, checkpoint/resume)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from _scripts import load_script

from bayesneuron import Design
from bayesneuron.errors import FitError, StimulusError
from bayesneuron.inference.criteria import compartment_fisher, linear_gaussian_eig
from bayesneuron.inference.priors import ScaledUniformPrior
from bayesneuron.optimal_design import (
    FAMILIES,
    Chirp,
    DesignProblem,
    OptimizeConfig,
    PiecewiseConstant,
    Ramps,
    SineSum,
    Steps,
    StimulusFamily,
    criterion_values,
    exact_fisher,
    exchange_sites,
    fisher,
    greedy_sites,
    objective,
    optimize_stimulus,
    problem_from_model,
)
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.reference.paper import paper_currents, paper_experiment, paper_toy_cell
from bayesneuron.simulation.solvers import CrankNicolson

F64 = torch.float64


def _problem(design: Design, n_traces: int, n_theta=1, dt=0.05, backend="auto", **kw):
    """A small problem on the paper's cell: θ drawn from the paper's prior (not the truth);
    ``backend="auto"`` runs the fused kernel (its adjoint gives ∂/∂currents)."""
    model, _, _ = paper_experiment(design, n_traces=n_traces, solver=CrankNicolson(dt=dt))
    solver = CrankNicolson(dt=dt, backend=backend)
    return model, problem_from_model(model, n_theta=n_theta, seed=3, solver=solver, **kw)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_families_keep_currents_inside_their_bounds(name):
    fam = FAMILIES[name](n_traces=3, sites=(0, 5), lo=-2.0, hi=7.5)
    for scale in (0.1, 3.0, 100.0):
        z = fam.init(seed=1, scale=scale)
        stim = fam(z)
        assert isinstance(stim, Stimulus) and stim.sites == (0, 5)
        assert stim.values.shape == (3, 2, 48) and stim.dt == 0.1
        v = stim.values
        assert float(v.min()) >= -2.0 and float(v.max()) <= 7.5
        assert bool((v[..., 0] == 0).all() and (v[..., -1] == 0).all())  # the paper's ends
    # the interior spans the range for large parameters
    v = fam(fam.init(seed=2, scale=100.0)).values[..., 1:-1]
    assert float(v.min()) < -1.9 and float(v.max()) > 7.4
    fam2 = dataclasses.replace(fam, zero_ends=False, lo=1.0)
    assert float(fam2(fam2.init(seed=1)).values.min()) >= 1.0


def test_family_errors_and_fit_to_the_paper_currents():
    with pytest.raises(StimulusError, match="zero_ends"):
        PiecewiseConstant(n_traces=1, sites=(0,), lo=1.0, hi=5.0)
    with pytest.raises(StimulusError, match="lo < hi"):
        SineSum(n_traces=1, sites=(0,), lo=5.0, hi=5.0)
    with pytest.raises(StimulusError, match="distinct"):
        PiecewiseConstant(n_traces=1, sites=(0, 0))
    fam = PiecewiseConstant(n_traces=4, sites=(0, 1, 5))
    paper = paper_currents(n_traces=4)
    got = fam(fam.fit(paper)).values
    want = paper.values[:, [0, 1, 5]]
    assert float((got - want).abs().max()) <= 19.0 * 1e-3 + 1e-12  # the clamp off the bounds
    with pytest.raises(StimulusError, match="shape"):
        fam(torch.zeros(2, 3, 48, dtype=F64))


def _fine_average(knots, levels, linear: bool, n_bins=48, dt=0.1, sub=2000):
    """Bin averages of a piecewise-constant (or piecewise-linear) current with epoch
    boundaries ``knots`` (from 0 to the sweep's end), on ``sub`` midpoints per bin."""
    import numpy as np

    t = (np.arange(n_bins * sub) + 0.5) * dt / sub
    if linear:
        cur = np.interp(t, knots, levels)
    else:
        cur = np.asarray(levels)[np.clip(np.searchsorted(knots[1:], t), 0, len(levels) - 1)]
    return cur.reshape(n_bins, sub).mean(1)


@pytest.mark.parametrize("cls", [Steps, Ramps])
def test_epoch_families_hold_the_exact_bin_average_of_their_current(cls):
    """Steps and ramps against an independent fine-grid average of the same current (the
    levels and epoch boundaries read off ``z``); each epoch boundary may fall inside a bin."""
    fam = cls(n_traces=2, sites=(0, 3), lo=-5.0, hi=19.0, zero_ends=False, n_epochs=4)
    z = fam.init(seed=7, scale=1.5)
    got = fam.values(z)
    n = fam.n_levels
    levels = -5.0 + 24.0 * torch.sigmoid(z[..., :n])
    dur = 4.8 * torch.softmax(z[..., n:], -1)
    for i in range(2):
        for k in range(2):
            knots = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(dur[i, k], 0)]).numpy()
            want = _fine_average(knots, levels[i, k].numpy(), linear=cls is Ramps)
            err = float(abs(got[i, k].numpy() - want).max())
            # the midpoint rule: O(1/sub²) at a ramp's kink, 1/sub of a step's jump
            assert err < (1e-6 if cls is Ramps else 24.0 / 2000 + 1e-9), err
    assert torch.autograd.gradcheck(
        lambda x: cls(n_traces=1, sites=(0,), n_bins=6, n_epochs=2).values(x),
        (cls(n_traces=1, sites=(0,), n_bins=6, n_epochs=2).init(seed=1).requires_grad_(),),
    )


def test_chirp_at_one_frequency_is_a_sine_and_sweeps_otherwise():
    fam = Chirp(n_traces=1, sites=(0,), f_min=0.1, f_max=5.0)
    sine = SineSum(n_traces=1, sites=(0,), n_sines=1, f_min=0.1, f_max=5.0)
    c, a, fz, phase = 0.3, 2.0, 0.4, 1.1
    z = torch.tensor([[[c, a, fz, fz, phase]]], dtype=F64)
    zs = torch.tensor([[[c, a, fz, phase]]], dtype=F64)
    assert torch.allclose(fam.waveform(z), sine.waveform(zs), atol=1e-12)
    up = fam.waveform(torch.tensor([[[0.0, 1.0, -3.0, 3.0, 0.0]]], dtype=F64))[0, 0]
    crossings = (torch.sign(up[1:]) != torch.sign(up[:-1])).nonzero().flatten()
    gaps = torch.diff(crossings)
    assert int(gaps[0]) > int(gaps[-1])  # the frequency rises: zero crossings come faster
    assert torch.autograd.gradcheck(
        lambda x: Chirp(n_traces=1, sites=(0,), n_bins=8).values(x),
        (Chirp(n_traces=1, sites=(0,), n_bins=8).init(seed=2).requires_grad_(),),
    )


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_fits_a_constant_and_steps_fit_the_paper_currents(name):
    """``fit`` (least squares; exact for bins) reaches a constant level per trace, which the
    "ladder" start asks of every family; the paper's currents — two change points per trace,
    the quirk of ``paper-model.md`` §4.2 — are three-epoch steps, which ``Steps`` fits."""
    fam = FAMILIES[name](n_traces=3, sites=(0, 5))
    levels = torch.tensor([2.0, 9.5, 17.0], dtype=F64)[:, None, None].expand(3, 2, 48).clone()
    got = fam(fam.fit(Stimulus(levels, 0.1, 0.0, "uA/cm2", (0, 5)))).values[..., 1:-1]
    assert float((got - levels[..., 1:-1]).abs().max()) < 0.05, name
    if name in ("steps", "ramps"):
        paper = paper_currents(n_traces=3)
        want = paper.values[:, [0, 5]]
        fitted = fam(fam.fit(paper)).values
        flat = want[..., 1:-1].mean(-1, keepdim=True).expand_as(want[..., 1:-1])
        rms = float((fitted - want).pow(2).mean().sqrt())
        assert rms < 0.5 * float((flat - want[..., 1:-1]).pow(2).mean().sqrt()), rms
    if name == "steps":  # every sweep, exactly (the clamp at the bounds: 1e-3 of 19 µA/cm²)
        assert float((fitted - want).abs().max()) < 0.02


def test_steps_hold_every_sweep_of_the_paper_protocol():
    """The protocol draws ≤ 3 levels per sweep on the bin grid, so ``Steps(n_epochs=3).fit``
    holds each of 100 sweeps to the clamp (least squares from a random start alone misses
    most), and more epochs than runs split one: still exact; fewer merge the closest."""
    paper = paper_currents(20230620, n_traces=100)
    want = paper.values[:, [0]]
    for n_epochs in (3, 5):
        fam = Steps(n_traces=100, sites=(0,), n_epochs=n_epochs)
        assert float((fam(fam.fit(paper)).values - want).abs().max()) < 0.02, n_epochs
    fam = Steps(n_traces=100, sites=(0,))
    generic = StimulusFamily.fit(fam, paper)  # the least-squares start alone
    assert float((fam(generic).values - want).abs().amax(-1).gt(0.05).float().mean()) > 0.5
    two = Steps(n_traces=100, sites=(0,), n_epochs=2)
    err = (two(two.fit(paper)).values - want).pow(2).mean()
    assert float(err) < float((want - want[..., 1:-1].mean(-1, keepdim=True)).pow(2).mean())


def test_max_charge_caps_each_waveform_and_keeps_the_rest():
    cap = (5.0, 2.0)  # nC/cm² per trace at sites 0 and 5
    free = PiecewiseConstant(n_traces=3, sites=(0, 5), lo=0.0, hi=19.0)
    capped = dataclasses.replace(free, max_charge=cap)
    z = free.init(seed=1, scale=2.0)
    v0, v1 = free(z).values, capped(z).values
    q0, q1 = v0.abs().sum(-1) * 0.1, v1.abs().sum(-1) * 0.1  # [trace, site]
    limit = torch.tensor(cap, dtype=torch.float64)
    assert bool((q0 > limit).any())  # the cap binds somewhere ...
    assert bool((q1 <= limit + 1e-12).all())  # ... and is kept everywhere
    under = q0 <= limit
    assert torch.equal(v1[under], v0[under])  # waveforms under the cap are untouched
    assert bool((v1 >= 0).all() and (v1 <= 19.0).all())
    tiny = PiecewiseConstant(n_traces=1, sites=(0,), lo=0.0, hi=19.0, n_bins=5, max_charge=0.5)
    zt = tiny.init(seed=0).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: tiny.values(x), (zt,))
    with pytest.raises(StimulusError, match="max_charge"):
        PiecewiseConstant(n_traces=1, sites=(0,), max_charge=-1.0)
    with pytest.raises(StimulusError, match="lo ≤ 0 ≤ hi"):
        PiecewiseConstant(n_traces=1, sites=(0,), lo=1.0, hi=2.0, zero_ends=False, max_charge=1.0)


def test_moved_from_keeps_shared_electrodes_and_silences_new_ones():
    old = PiecewiseConstant(n_traces=2, sites=(0, 5), lo=0.0, hi=19.0)
    new = PiecewiseConstant(n_traces=2, sites=(0, 3, 5), lo=(0.0, -2.0, 0.0), hi=19.0)
    z = old.init(seed=3)
    v_old, v_new = old(z).values, new(new.moved_from(z, old.sites)).values
    assert torch.equal(v_new[:, [0, 2]], v_old)  # same bounds at 0 and 5: same currents
    assert float(v_new[:, 1].abs().max()) < 0.03  # the new electrode is silent
    with pytest.raises(StimulusError, match="shape"):
        new.moved_from(z, (0, 3, 5))


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"bins"}))
def test_every_family_moves_to_a_site_set_one_electrode_away(name):
    """The warm start of site selection: shared electrodes keep their currents, a new one
    carries ≤ 1e-10 µA/cm² (the criterion changes by ~1e-3 nats for 1e-6 near a threshold)."""
    old = FAMILIES[name](n_traces=2, sites=(0, 5))
    new = FAMILIES[name](n_traces=2, sites=(0, 3, 5))
    z = old.init(seed=3, scale=2.0)
    v_old, v_new = old(z).values, new(new.moved_from(z, old.sites)).values
    assert torch.equal(v_new[:, [0, 2]], v_old)
    assert float(v_new[:, 1].abs().max()) < 1e-10
    with pytest.raises(StimulusError, match="shape"):
        new.moved_from(z, (0, 3, 5))


def test_fisher_equals_the_fused_exact_sensitivities():
    """Central-difference tangents (fused kernel) give the fused kernel's exact
    Fisher information (same scheme, same steps), per trace and as compartment_fisher sums
    it over the recorded compartments."""
    design = Design([0, -1], [0, 2])
    model, problem = _problem(design, n_traces=3, n_theta=2)
    fam = PiecewiseConstant(n_traces=3, sites=(0, 5))
    stim = fam(fam.fit(model.stimulus))
    f = fisher(problem, stim)
    exact = exact_fisher(problem, stim)
    assert f.shape == exact.shape == (2, 3, 12, 12)
    assert float((f - exact).abs().max() / exact.abs().max()) < 5e-8  # O(h²) at h = 1e-6·g
    # compartment_fisher on a model holding the same currents
    same, _, _ = paper_experiment(design, n_traces=3, solver=CrankNicolson(dt=0.05))
    prior = ScaledUniformPrior(0.7, 1.3)  # the paper's
    same = type(same)(same.cell, stim, same.t_eval, design, priors=prior, solver=same.solver)
    fc = compartment_fisher(same, problem.theta).sum(1)  # [n, rec, P, P] → the set
    assert float((f.sum(1) - fc).abs().max() / fc.abs().max()) < 5e-8


def test_forward_mode_tangents_are_exact():
    model, problem = _problem(Design([0], None), n_traces=1, dt=0.1, tangents="forward")
    fam = PiecewiseConstant(n_traces=1, sites=(0,))
    stim = fam(fam.fit(model.stimulus))
    exact = exact_fisher(problem, stim)
    assert torch.allclose(fisher(problem, stim), exact, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "criterion, robust, family, eps, backend",
    [
        ("bayes_d_opt", "mean", "bins", 3e-4, "fused"),
        ("bayes_d_opt", "mean", "bins", 3e-4, "torch"),
        ("contraction", "worst", "bins", 3e-4, "fused"),
        ("eig_laplace", "mean", "sines", 3e-5, "fused"),  # phases move fast: a smaller step
        ("bayes_d_opt", "mean", "steps", 3e-4, "fused"),  # epoch boundaries inside bins
    ],
)
def test_criterion_gradient_matches_central_differences(criterion, robust, family, eps, backend):
    """The gradient w.r.t. the stimulus parameters — through the fused kernel's adjoint in
    the currents, or the torch backend's autograd — against finite differences."""
    kw = dict(criterion=criterion, robust=robust, rel_step=1e-4, backend=backend)
    if criterion == "contraction":
        kw["targets"] = (0, 6, 11)
    _, problem = _problem(Design([0, -1], None), n_traces=2, n_theta=2, dt=0.1, **kw)
    fam = FAMILIES[family](n_traces=2, sites=(0, 5))
    z = fam.init(seed=4).requires_grad_()
    value, _ = objective(problem, fam(z))
    (grad,) = torch.autograd.grad(value, z)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        d = torch.randn(z.shape, generator=gen, dtype=F64)
        d = d / d.norm()
        with torch.no_grad():
            up, dn = (objective(problem, fam(z + s * eps * d))[0] for s in (1, -1))
            up2, dn2 = (objective(problem, fam(z + s * 2 * eps * d))[0] for s in (1, -1))
        fd = (8 * (up - dn) - (up2 - dn2)) / (12 * eps)  # fourth-order stencil
        ad = (grad * d).sum()
        assert float(abs(fd - ad)) < 1e-5 * float(abs(ad)) + 1e-10, (float(fd), float(ad))


def test_criteria_on_a_linear_gaussian_problem_are_exact():
    """With a Gaussian prior (identity transform) and the Fisher information AᵀA/σ² of
    ``y = Aθ + ε``, D-optimality and the Laplace EIG equal the exact EIG and the contraction
    its closed form."""
    gen = torch.Generator().manual_seed(0)
    P = 12
    a = 2.0 * torch.randn(30, P, generator=gen, dtype=F64)
    var = torch.linspace(0.5, 3.0, P, dtype=F64)
    sigma = 1.5
    exact = linear_gaussian_eig(a, sigma, var)
    entropy = 0.5 * float(torch.log(2 * math.pi * math.e * var).sum())
    base = dict(
        cell=paper_toy_cell(),
        t_eval=[0.0, 1.0],
        theta={"g_na": torch.ones(2, 6, dtype=F64), "g_k": torch.ones(2, 6, dtype=F64)},
        prior_var=var,
        rec=(0,),
        solver=CrankNicolson(backend="torch"),
        dg_du=torch.ones(2, P, dtype=F64),
        prior_hessian_u=(1.0 / var).expand(2, P),
        entropy=entropy,
    )
    f = (a.T @ a / sigma**2).expand(2, P, P)
    got = {
        c: criterion_values(DesignProblem(criterion=c, **base), f)
        for c in ("bayes_d_opt", "eig_laplace", "contraction")
    }
    assert torch.allclose(got["bayes_d_opt"], torch.full((2,), exact, dtype=F64), rtol=1e-12)
    assert torch.allclose(got["eig_laplace"], torch.full((2,), exact, dtype=F64), rtol=1e-12)
    post = torch.linalg.inv(a.T @ a / sigma**2 + torch.diag(1 / var))
    contraction = 1 - (post.diagonal() / var).mean()
    assert torch.allclose(got["contraction"], contraction.expand(2), rtol=1e-10)
    assert exact > math.log(1e4)  # an informative design: nested Monte Carlo would saturate


def test_problem_checks_its_inputs():
    _, problem = _problem(Design(None, None), n_traces=1)
    with pytest.raises(FitError, match="forward-mode AD"):
        dataclasses.replace(problem, solver=CrankNicolson(backend="fused"), tangents="forward")
    with pytest.raises(FitError, match="criterion"):
        dataclasses.replace(problem, criterion="d_opt")
    with pytest.raises(FitError, match="rec"):
        dataclasses.replace(problem, rec=(6,))
    fam = PiecewiseConstant(n_traces=1, sites=(0, 3))
    with pytest.raises(FitError, match="not allowed"):
        optimize_stimulus(problem, fam, OptimizeConfig(steps=1), allowed_sites=(0, 1))


def test_optimiser_beats_its_start_and_the_paper_currents():
    """all|all, 3 traces: a few Adam steps from a random start raise the criterion over the
    start and over the paper's random currents (both judged at the same prior draws)."""
    model, problem = _problem(Design(None, None), n_traces=3, dt=0.1)
    fam = PiecewiseConstant(n_traces=3, sites=tuple(range(6)))
    cfg = OptimizeConfig(steps=8, lr=0.1, progress=False)
    res = optimize_stimulus(problem, fam, cfg)
    paper = float(objective(problem, fam(fam.fit(model.stimulus)))[0])
    start = res.history[0, 0]
    assert res.value > start + 1.0 and res.value > paper + 1.0
    assert res.value == pytest.approx(float(res.start_values.max()))
    assert res.trace_values.shape == (3,) and res.nats_per_trace == res.value / 3
    v = res.stimulus.values
    assert float(v.min()) >= 0.0 and float(v.max()) <= 19.0
    exact = criterion_values(problem, exact_fisher(problem, res.stimulus).sum(1)).mean()
    assert float(exact) == pytest.approx(res.value, rel=1e-7)


def test_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    import bayesneuron.optimal_design.optimize as opt_mod

    _, problem = _problem(Design([0], [0]), n_traces=1, dt=0.1)
    fam = PiecewiseConstant(n_traces=1, sites=(0,))
    cfg = OptimizeConfig(steps=4, lr=0.2, n_starts=2, seed=7, progress=False)
    whole = optimize_stimulus(problem, fam, cfg)

    real, calls = opt_mod._value_and_grad, []

    def dies_in_start_1(*args):
        calls.append(1)
        if len(calls) == 7:  # start 0's 4 steps, then step 3 of start 1
            raise KeyboardInterrupt
        return real(*args)

    ck = tmp_path / "design.pt"
    with_ck = dataclasses.replace(cfg, checkpoint=ck, checkpoint_every=1)
    monkeypatch.setattr(opt_mod, "_value_and_grad", dies_in_start_1)
    with pytest.raises(KeyboardInterrupt):
        optimize_stimulus(problem, fam, with_ck)
    monkeypatch.setattr(opt_mod, "_value_and_grad", real)
    state = torch.load(ck, weights_only=False)
    assert (state["start"], state["step"]) == (1, 2)
    resumed = optimize_stimulus(problem, fam, with_ck)
    assert torch.equal(resumed.z, whole.z)
    assert resumed.history.shape == whole.history.shape == (2, 5)
    assert torch.allclose(torch.as_tensor(resumed.history), torch.as_tensor(whole.history))
    # another problem does not resume from this file
    other = dataclasses.replace(problem, sigma=2.0)
    fresh = optimize_stimulus(other, fam, with_ck)
    assert fresh.value != resumed.value


def test_greedy_sites_picks_one_electrode_at_a_time():
    _, problem = _problem(Design([0], [0]), n_traces=1, dt=0.1)

    def make(sites):
        return PiecewiseConstant(n_traces=1, sites=sites)

    path = greedy_sites(
        problem, make, candidates=(0, 5), n_sites=2, config=OptimizeConfig(steps=1, progress=False)
    )
    assert [len(s) for s, _ in path] == [1, 2]
    assert path[1][0] == (0, 5)
    assert all(res.select_value is None and res.score == res.value for _, res in path)


def test_site_sets_are_compared_on_the_select_points():
    """With ``select``, greedy and exchange compare site sets by the criterion on points the
    optimiser never saw (each result's ``select_value``), not on the optimiser's own."""
    _, problem = _problem(Design([0], [0]), n_traces=1, dt=0.1)
    select = problem.sampler(99)
    cfg = OptimizeConfig(steps=2, lr=0.1, resample_theta=True, progress=False)

    def make(sites):
        return PiecewiseConstant(n_traces=1, sites=sites)

    cache = {}
    path = greedy_sites(problem, make, (0, 2, 5), 1, cfg, cache=cache, select=select)
    for res in cache.values():
        assert res.select_value == pytest.approx(float(objective(select, res.stimulus)[0]))
    assert path[0][1].select_value == max(r.select_value for r in cache.values())
    sites, res, hist = exchange_sites(problem, make, (0, 2, 5), (2,), cfg, select=select)
    assert hist[0]["value"] == pytest.approx(float(objective(select, make((2,))(cache[(2,)].z))[0]))
    assert res.select_value == max(h["value"] for h in hist)


def test_resampled_theta_is_deterministic_and_judged_on_the_problems_points():
    _, problem = _problem(Design([0], [0]), n_traces=1, dt=0.1)
    fam = PiecewiseConstant(n_traces=1, sites=(0,))
    cfg = OptimizeConfig(steps=3, lr=0.1, n_starts=2, resample_theta=True, progress=False)
    a, b = (optimize_stimulus(problem, fam, cfg) for _ in range(2))
    assert torch.equal(a.z, b.z) and a.history.shape == (2, 4)
    fixed = optimize_stimulus(problem, fam, dataclasses.replace(cfg, resample_theta=False))
    assert not torch.equal(a.z, fixed.z)  # other points, other steps
    # the result is the best of the starts' first and final points on the problem's own θ
    finals = a.history[:, -1]
    assert a.value >= float(finals.max()) - 1e-12
    firsts = [float(objective(problem, fam(z))[0]) for z in (fam.init(seed=k) for k in (0, 1))]
    assert a.value == pytest.approx(max(float(finals.max()), *firsts))
    # a start its steps make worse on those points is kept as it was
    good = optimize_stimulus(problem, fam, dataclasses.replace(cfg, resample_theta=False))
    wild = dataclasses.replace(cfg, lr=20.0, n_starts=1)
    kept = optimize_stimulus(problem, fam, wild, init=[good.z])
    assert float(kept.history[0, -1]) < good.value  # the wild steps lost
    assert torch.equal(kept.z, good.z) and kept.value == pytest.approx(good.value)
    assert kept.best_step == 0 and good.best_step == int(
        np.nanargmax(good.history[good.best_start])
    )
    with pytest.raises(FitError, match="sampler"):
        optimize_stimulus(dataclasses.replace(problem, sampler=None), fam, cfg)


def test_the_best_start_is_chosen_on_the_select_points():
    """``select``: the starts' first and final points are compared on points the optimiser
    never sees; the result's value stays on the problem's own points."""
    _, problem = _problem(Design([0], [0]), n_traces=1, dt=0.1)
    select = problem.sampler(99)
    fam = PiecewiseConstant(n_traces=1, sites=(0,))
    cfg = OptimizeConfig(steps=3, lr=0.1, n_starts=2, resample_theta=True, progress=False)
    res = optimize_stimulus(problem, fam, cfg, select=select)
    firsts = [fam.init(seed=k) for k in (0, 1)]
    on_select = [float(objective(select, fam(z))[0]) for z in firsts]
    candidates = on_select + [float(v) for v in res.history[:, -1]]  # finals: on select
    best = float(objective(select, fam(res.z))[0])
    assert best == pytest.approx(max(candidates))
    assert res.value == pytest.approx(float(objective(problem, fam(res.z))[0]))
    assert res.select_value == pytest.approx(best) and res.score == res.select_value
    k, first = int(np.argmax(candidates)) % 2, max(candidates) in on_select
    assert (res.best_start, res.best_step) == (k, 0 if first else cfg.steps)
    plain = optimize_stimulus(problem, fam, cfg)  # same steps, finals judged elsewhere
    assert (plain.history[:, -1] != res.history[:, -1]).any()
    with pytest.raises(FitError, match="resample_theta"):
        optimize_stimulus(
            problem, fam, dataclasses.replace(cfg, resample_theta=False), select=select
        )
    with pytest.raises(FitError, match="criterion"):
        optimize_stimulus(
            problem, fam, cfg, select=dataclasses.replace(select, criterion="contraction")
        )


def test_fresh_data_validation_runs_end_to_end(tmp_path):
    """studies/optimal_design/validate.py on a tiny setting: an optimised stimulus inside
    its bounds at the design's stimulated sites only, one row per stimulus × replicate with
    finite metrics against a replicate truth, and the summary's exact binomial interval."""
    val = load_script("studies/optimal_design/validate.py", "od_validate")
    s = val.Settings(
        out=tmp_path, n_opt=1, n_paper=1, steps=2, theta_opt=1, init="ladder", dt=0.05,
        replicates=1, map_starts=1, num_samples=100, psis_samples=200,
    )  # fmt: skip
    rows, info = val.validate_design(Design([0, -1], None), s, tmp_path)
    assert [(r["stimulus"], r["replicate"]) for r in rows] == [
        ("opt1", "prior0"), ("paper1", "prior0"), ("opt1", "paper"), ("paper1", "paper"),
    ]  # fmt: skip
    for r in rows:
        assert math.isfinite(r["mean_contraction"]) and r["mean_contraction"] <= 1.0
        assert math.isfinite(r["max_abs_z"]) and r["n_params"] == 12
        assert 0 <= r["n_covered_90"] <= 12 and isinstance(r["posterior_ok"], bool)
    saved = torch.load(tmp_path / "stimulus_0-1_all_opt1.pt", weights_only=False)
    v = saved["values"]
    assert saved["sites"] == (0, 5) and v.shape == (1, 2, 48)
    assert float(v.min()) >= 0.0 and float(v.max()) <= 19.0
    assert bool((v[..., 0] == 0).all() and (v[..., -1] == 0).all())
    assert info["best_start"] == "ladder" and math.isfinite(info["crit_opt"])
    summary = val.summarise(rows)
    assert [r["n_replicates"] for r in summary] == [2, 2]
    verdicts = val.verdict(summary, 1, 1)
    assert verdicts[0]["design"] == "[0,-1]|all" and isinstance(verdicts[0]["pass"], bool)
    # a stimulus designed elsewhere, on 2 new recordings of the paper's cell
    given = dataclasses.replace(
        s, stimulus=str(tmp_path / "stimulus_0-1_all_opt1.pt"), replicates=0, paper_noise=2
    )
    rows2, info2 = val.validate_design(Design([0, -1], None), given)
    assert info2 == {"stimulus": given.stimulus, "n_traces": 1}
    assert [(r["stimulus"], r["replicate"]) for r in rows2] == [
        ("opt1", "paper"), ("paper1", "paper"), ("opt1", "paper_n1"), ("paper1", "paper_n1"),
    ]  # fmt: skip
    assert rows2[0]["mean_contraction"] != rows2[2]["mean_contraction"]  # fresh noise
    with pytest.raises(SystemExit, match="--n-opt"):
        val.validate_design(Design([0, -1], None), dataclasses.replace(given, n_opt=2))
    lo, hi = val.clopper_pearson(9, 10)
    assert lo == pytest.approx(0.5550, abs=1e-4) and hi == pytest.approx(0.99747, abs=1e-4)


def test_exchange_sites_leaves_a_bad_start_and_checks_its_inputs():
    _, problem = _problem(Design([0], [0]), n_traces=1, dt=0.1)

    def make(sites):
        return PiecewiseConstant(n_traces=1, sites=sites)

    cfg, cand, cache, runs = OptimizeConfig(steps=1, progress=False), (0, 1, 5), {}, []
    sites, res, hist = exchange_sites(
        problem,
        make,
        cand,
        (5,),
        cfg,
        max_rounds=2,
        cache=cache,
        callback=lambda s, r: runs.append(s),
    )
    start = cache[(5,)].value  # the distal end, recording the soma: a bad start
    assert hist[0] == {"round": 0, "sites": (5,), "value": start}
    assert sites != (5,) and res.value > start and hist[-1]["sites"] == sites
    assert all(b["value"] > a["value"] for a, b in zip(hist, hist[1:]))
    assert sorted(runs) == [(0,), (1,), (5,)]  # every set optimised once (the cache)
    again, res2, hist2 = exchange_sites(problem, make, cand, sites, cfg, cache=cache)
    assert again == sites and res2 is res and len(hist2) == 1  # nothing improves: it stays
    for bad, match in [((7,), r"\[7\] are not among"), ((0, 0), "twice"), ((), "empty")]:
        with pytest.raises(FitError, match=match):
            exchange_sites(problem, make, cand, bad, cfg)
    with pytest.raises(FitError, match="distinct"):
        exchange_sites(problem, make, (0, 0, 1), (0,), cfg)
    with pytest.raises(FitError, match="max_rounds"):
        exchange_sites(problem, make, cand, (0,), cfg, max_rounds=-1)


def test_problem_from_posterior_draws_uses_only_those_points():
    """``draws=`` (a fitted cell's posterior): the optimiser's points, first and resampled,
    are rows of the draws; bad draws are refused, naming what is wrong."""
    from bayesneuron.inference.space import prior_draws

    model, _ = _problem(Design([0], [0]), n_traces=1, dt=0.1)
    pool = prior_draws(model, 12, seed=5)
    rows = {tuple(torch.cat([pool[k][i] for k in model.free]).tolist()) for i in range(12)}
    p = problem_from_model(model, 3, 0, draws=pool)
    later = p.sampler(11)
    for q in (p, later):
        got = {tuple(torch.cat([q.theta[k][i] for k in model.free]).tolist()) for i in range(3)}
        assert len(got) == 3 and got <= rows  # without replacement, from the pool only
    assert not torch.equal(p.theta["g_na"], later.theta["g_na"])
    assert torch.equal(problem_from_model(model, 3, 0, draws=pool).theta["g_k"], p.theta["g_k"])
    with pytest.raises(FitError, match="lack the free parameters"):
        problem_from_model(model, 3, 0, draws={"g_na": pool["g_na"]})
    with pytest.raises(FitError, match="do not match"):
        problem_from_model(model, 3, 0, draws={k: v[:, :2] for k, v in pool.items()})
    with pytest.raises(FitError, match="fewer than"):
        problem_from_model(model, 20, 0, draws=pool)


def test_learning_rate_decays_geometrically_to_lr_final(monkeypatch):
    """``lr_final``: Adam's rate goes from ``lr`` at a start's first step to ``lr_final`` at
    its last, geometrically; ``None`` keeps it constant; bad values are refused."""
    import bayesneuron.optimal_design.optimize as opt_mod

    _, problem = _problem(Design([0], [0]), n_traces=1, dt=0.1)
    fam = PiecewiseConstant(n_traces=1, sites=(0,))
    seen = []
    real = torch.optim.Adam.step

    def spy(self, closure=None):
        seen.append(self.param_groups[0]["lr"])
        return real(self, closure)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    cfg = OptimizeConfig(steps=5, lr=0.1, lr_final=0.001, progress=False)
    optimize_stimulus(problem, fam, cfg)
    assert seen == pytest.approx([0.1 * 0.01 ** (k / 4) for k in range(5)], rel=1e-12)
    seen.clear()
    optimize_stimulus(problem, fam, dataclasses.replace(cfg, lr_final=None))
    assert seen == pytest.approx([0.1] * 5)
    assert opt_mod._learning_rate(dataclasses.replace(cfg, steps=1), 0) == 0.1
    for bad in (0.0, -1.0, "x"):
        with pytest.raises(FitError, match="lr_final"):
            OptimizeConfig(lr_final=bad)
