"""Write the tutorial notebooks from the cell sources below (no outputs, stable cell ids).

    python notebooks/_build.py            # (re)write 01_quickstart.ipynb, 02_…, …, 05_…
    python notebooks/_build.py --check    # exit 1 if a committed notebook differs from this file

Edit the notebooks here, not in Jupyter, and rebuild: the committed ``.ipynb`` files stay clean
(no outputs, no execution counts) and reviewable. Every notebook's first code cell reads
``BAYESNEURON_NOTEBOOK_SMALL``: ``1`` runs a smoke-sized version (``tests/test_notebooks.py``
executes them so in CI), unset runs the real analysis.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

SWITCH = """\
import os
import warnings

# BAYESNEURON_NOTEBOOK_SMALL=1: a smoke-sized run (few traces, coarse dt, few steps) that CI
# executes in seconds. Unset (or 0): the real analysis.
flag = os.environ.get("BAYESNEURON_NOTEBOOK_SMALL", "0")
SMALL = flag.strip().lower() not in ("", "0", "false", "no")
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
"""

INLINE = """\
%matplotlib inline
# (Every bayesneuron.reports.plot_* returns a matplotlib Figure and never shows it, nor
# touches pyplot: `display(fig)` shows one here.)"""


def md(text: str) -> tuple[str, str]:
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(*parts: str) -> tuple[str, str]:
    """A code cell from source parts, each dedented on its own, joined by newlines."""
    return ("code", "\n\n".join(textwrap.dedent(p).strip("\n") for p in parts))


# =========================================================================== 01 quickstart
QUICKSTART = [
    md(
        r"""
        # Quickstart: simulate, fit and check a 6-compartment neuron

        This notebook walks once through the whole loop on the toy cell of Jones & Kording,
        *Optimization of fully differentiable ODE neurons using gradient descent*
        (arXiv 2407.04025):

        1. build the cell — an unbranched chain of 6 compartments (0 = soma, 5 = distal end),
           each with Hodgkin–Huxley-type Na⁺ and K⁺ channels and a leak;
        2. inject random step currents and simulate the membrane voltage;
        3. make synthetic recordings (the voltage at the *true* conductances plus 1 mV noise);
        4. find the maximum a posteriori (MAP) estimate of the 12 unknowns — the per-compartment
           maximal conductances $\bar g_\mathrm{Na}$ and $\bar g_\mathrm{K}$ — and compare it
           with the truth.

        Units throughout: mV, ms, mS/cm² (conductances), µA/cm² (currents: the compartments are
        abstract unit-area patches, as in the paper). Set `BAYESNEURON_NOTEBOOK_SMALL=1` for a
        run of a few seconds; leave it unset for the paper's 100 traces and a full fit.
        """
    ),
    code(
        SWITCH,
        """
        N_TRACES = 8 if SMALL else 100  # input current traces (the paper: 100)
        DT = 0.01 if SMALL else 0.004  # ms, solver step (0.004: ≈ 0.3 mV error, the paper's own)
        N_STARTS = 2 if SMALL else 4  # MAP starts: the cell's defaults, then prior draws
        MAX_STEPS = 10 if SMALL else 50  # Levenberg–Marquardt iterations per continuation stage
        N_FINE = 100 if SMALL else 400  # time points of the smooth plotting grid
        NOISE_MV = 1.0  # sd of the recording noise (mV)
        print(f"{'small' if SMALL else 'full'} mode: {N_TRACES} traces, dt = {DT} ms")
        """,
    ),
    code(
        """
        import time

        import matplotlib.pyplot as plt
        import numpy as np
        import pandas as pd
        import torch

        import bayesneuron as bn
        from bayesneuron import (
            Cell,
            CrankNicolson,
            Design,
            NeuronModel,
            ScaledUniformPrior,
            fit_map,
            paper_chain,
            paper_channels,
            paper_currents,
            paper_ground_truth,
            paper_time_grid,
            reports,
            simulate,
            synthetic_data,
        )
        from bayesneuron.inference.laplace import laplace
        """,
        INLINE,
    ),
    md(
        """
        ## 1. The cell

        `paper_chain()` is the paper's 6-compartment chain with its (abstract) axial coupling;
        `paper_channels()` are its Na, K and leak channels. Each compartment has its own value
        of every channel parameter; the defaults, 100 and 45 mS/cm² for $\\bar g_\\mathrm{Na}$
        and $\\bar g_\\mathrm{K}$, are where the fits below start. The resting voltage at
        $t = 0$ is −60 mV. (`bn.paper_toy_cell()` builds exactly this cell in one call.)
        """
    ),
    code(
        """
        cell = Cell(paper_chain(), paper_channels(), v0=-60.0)
        pd.DataFrame(cell.params, index=pd.Index(cell.morphology.names, name="compartment"))
        """
    ),
    md(
        """
        The ground truth is the paper's: each conductance is its default times a factor drawn
        uniformly from [0.7, 1.3] (seed 20230619), so every compartment differs.
        """
    ),
    code(
        """
        truth = {k: v.numpy() for k, v in paper_ground_truth().items()}  # name → [comp], mS/cm²
        pd.DataFrame(truth).rename_axis("compartment").round(2)
        """
    ),
    md(
        """
        ## 2. Stimulus and simulation

        `paper_currents` rebuilds the paper's random protocol bit for bit: per trace and
        compartment, a current that steps between three levels (0–19 µA/cm²) at two random
        times, in 0.1 ms bins over 4.8 ms. Every compartment gets its own current — the
        *stim all* design; other designs zero the unstimulated compartments.
        """
    ),
    code(
        """
        stim = paper_currents(n_traces=N_TRACES)  # values [trace, comp, bins] in µA/cm²
        edges = stim.t0 + stim.dt * np.arange(stim.values.shape[-1] + 1)
        fig, ax = plt.subplots(figsize=(7, 2.6))
        colors = plt.get_cmap("viridis", cell.n_comp)
        for c in range(cell.n_comp):
            ax.stairs(stim.values[0, c].numpy(), edges, color=colors(c), lw=1.4, label=f"comp {c}")
        ax.set(xlabel="t (ms)", ylabel="I (µA/cm²)", title="injected current, trace 0")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        """
    ),
    md(
        """
        `simulate(cell, params, stimulus, t_eval, solver)` is a pure function: it returns a
        `Trace` whose `v` has shape `[trace, comp, time]` (and a leading sample dimension for
        every batch dimension of the parameters). `CrankNicolson` is the default second-order,
        stiff-stable scheme; on the CPU in float64 it runs each trajectory in a compiled C kernel
        with an exact adjoint (the default, `backend="auto"`; compiled in about a second on
        first use, then cached).

        The fits below see the paper's coarse 48-point output grid; for plotting we simulate on
        a finer one, which the solver handles at no loss of accuracy.
        """
    ),
    code(
        """
        solver = CrankNicolson(dt=DT)
        t_fine = np.linspace(paper_time_grid()[0], 5.0, N_FINE)
        g_true = {k: torch.as_tensor(v) for k, v in truth.items()}
        t0 = time.perf_counter()
        sim = simulate(cell, g_true, stim, t_fine, solver)
        print(f"v: {tuple(sim.v.shape)} = (trace, comp, time), {time.perf_counter() - t0:.2f} s")
        fig = reports.plot_traces(sim, traces=(0, 1), title="membrane voltage at the ground truth")
        display(fig)
        """
    ),
    md(
        """
        ## 3. The Bayesian model and synthetic data

        `NeuronModel` is the Pyro model of the experiment: a prior on each free conductance
        (here the distribution the truth was drawn from, base × U(0.7, 1.3)), the simulator as
        the mean of the recordings, and Gaussian recording noise of sd `sigma` (mV). The
        `Design` says which compartments receive current and which are recorded —
        `Design()` is *all|all*. `synthetic_data` simulates the recordings at the truth and adds
        noise.
        """
    ),
    code(
        """
        design = Design()  # stimulate all, record all: "all|all"
        model = NeuronModel(
            cell,
            stim,
            paper_time_grid(),
            design,
            priors=ScaledUniformPrior(0.7, 1.3),
            sigma=NOISE_MV,
            solver=solver,
        )
        v_obs = synthetic_data(model, truth, noise_sigma=NOISE_MV, seed=bn.reference.PAPER_SEED + 1)
        print(model)
        print("v_obs:", tuple(v_obs.shape), "= (trace, recorded compartment, time)")

        # paper_experiment does all of the above in one call:
        model2, v_obs2, truth2 = bn.paper_experiment(
            design, n_traces=N_TRACES, noise_sigma=NOISE_MV, solver=solver
        )
        assert torch.equal(v_obs, v_obs2)
        """
    ),
    code(
        """
        def show_fit(sim_fine, v_obs, traces=(0, 1), comps=(0, 5), label="ground truth"):
            \"\"\"Data (dots) against a simulation on the fine grid (lines).\"\"\"
            fig, axes = plt.subplots(
                len(traces),
                len(comps),
                figsize=(3.6 * len(comps), 2.3 * len(traces)),
                sharex=True,
                squeeze=False,
            )
            for i, k in enumerate(traces):
                for j, c in enumerate(comps):
                    ax = axes[i][j]
                    ax.plot(t_fine, sim_fine.v[k, c].detach().numpy(), color="C0", label=label)
                    ax.plot(model.t_eval, v_obs[k, c].numpy(), "k.", ms=3, label="data")
                    ax.set_title(f"trace {k}, compartment {c}", fontsize=9)
                axes[i][0].set_ylabel("V (mV)")
            for ax in axes[-1]:
                ax.set_xlabel("t (ms)")
            axes[0][0].legend(fontsize=7)
            fig.tight_layout()
            return fig


        fig = show_fit(sim, v_obs)
        """
    ),
    md(
        """
        ## 4. The MAP fit

        `fit_map` minimises the negative log posterior
        $\\tfrac12\\sum (\\hat V - V_\\mathrm{obs})^2/\\sigma^2 - \\log p(\\bar g)$ by
        Levenberg–Marquardt in log-conductance coordinates, from several starts at once (the
        defaults, then prior draws). Spikes make this objective full of local minima; the fit
        therefore first matches short predictions that restart from the recorded voltage every
        1, 4 and 16 samples (*multiple shooting*), then the plain simulation. (`protocol="paper"`
        runs the paper's Adam protocol instead.)
        """
    ),
    code(
        """
        fit = fit_map(model, v_obs, truth=truth, n_starts=N_STARTS, max_steps=MAX_STEPS)
        print(f"{fit.steps} iterations, {fit.wall_s:.1f} s; converged per start: {fit.converged}")
        print("MSE per start (mV²):", fit.mse.round(3), f"(noise variance {NOISE_MV**2:.2f})")
        print(
            "ground-truth error, mean |g − g_true| (mS/cm²):",
            {k: round(v, 3) for k, v in fit.gte().items()},
        )
        """
    ),
    code(
        """
        fig = reports.plot_loss_and_gte([fit], title="MAP fit, all|all")
        display(fig)
        fig = reports.plot_trajectories(fit)
        display(fig)
        """
    ),
    md(
        """
        A good fit leaves residuals that look like the noise: a mean squared error near
        σ² = 1 mV² on the recorded entries. The fitted voltage on the fine grid:
        """
    ),
    code(
        """
        g_map = {k: torch.as_tensor(v) for k, v in fit.params.items()}
        sim_map = simulate(cell, g_map, stim, t_fine, solver)
        fig = show_fit(sim_map, v_obs, label="MAP")
        resid = (model.simulate(g_map) - v_obs).detach()
        print(f"rms residual {resid.pow(2).mean().sqrt():.3f} mV (noise sd {NOISE_MV} mV)")
        """
    ),
    md(
        """
        ## 5. Parameter recovery

        The MAP alone does not say how well each conductance is determined. The Laplace
        approximation — a Gaussian at the MAP whose precision is the Fisher information
        $J^\\top J/\\sigma^2$ ($J$ = sensitivities of the recorded voltages to the
        conductances) plus the prior's — gives an error bar per conductance at the cost of
        one batched simulation. Notebook 02 replaces it with a full variational posterior.
        """
    ),
    code(
        """
        post = laplace(model, fit.params)
        sd = post.per_param(post.sd)
        rows = []
        for k in model.free:
            for c in range(cell.n_comp):
                rows.append(
                    dict(parameter=k, compartment=c, truth=truth[k][c], map=fit.params[k][c], sd=sd[k][c])
                )
        recovery = pd.DataFrame(rows)
        recovery["z"] = (recovery["map"] - recovery["truth"]) / recovery["sd"]
        recovery.round(3)
        """
    ),
    code(
        """
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        comps = np.arange(cell.n_comp)
        for ax, k in zip(axes, model.free):
            base = model.base[k].numpy()
            ax.fill_between(comps, 0.7 * base, 1.3 * base, color="0.9", label="prior range")
            ax.plot(comps, base, color="0.5", ls=":", label="start (defaults)")
            ax.plot(comps, truth[k], "k_", ms=18, mew=2, label="truth")
            ax.errorbar(
                comps,
                fit.params[k],
                yerr=2 * sd[k],
                fmt="o",
                color="C3",
                ms=4,
                capsize=3,
                label="MAP ± 2 sd (Laplace)",
            )
            ax.set(xlabel="compartment", ylabel=f"{k} (mS/cm²)", title=k)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        """
    ),
    md(
        """
        **Reading the result.** With every compartment stimulated and recorded, each of the 12
        conductances is pinned down far more tightly than the prior range: the error bars are a
        fraction of a mS/cm², and the truth lies within a few of them. (In small mode the fit
        gets few iterations and few traces, so expect larger errors.)

        Whether this survives a realistic experiment — current injected and voltage recorded
        at one or two sites — is the question of the next notebooks:
        [02_identifiability](02_identifiability.ipynb) computes full posteriors under two
        designs and explains what *identifiable* means; [03_design_comparison](03_design_comparison.ipynb)
        ranks a grid of designs before any data are taken.
        """
    ),
]

# =========================================================================== 02 identifiability
IDENTIFIABILITY = [
    md(
        r"""
        # Identifiability: what do the data determine?

        A recording constrains the conductances only through the voltages it measures. Some
        combinations of conductances change those voltages a lot and are *identified*; others
        barely change them and stay as uncertain as they were before the experiment. A
        posterior distribution shows both at once.

        We compare two designs on the paper's 6-compartment cell, both recording every
        compartment (1 mV noise):

        * **all|all** — current injected into every compartment;
        * **[0]|all** — current injected into the soma only, the paper's hardest design.

        Model: prior $p(\bar g)$ = default × U(0.7, 1.3) on each of the 12 conductances;
        likelihood $V_\mathrm{obs} \sim \mathcal N(V(\bar g), \sigma^2)$, σ = 1 mV. The
        posterior is approximated by stochastic variational inference (SVI): a
        full-covariance Gaussian in whitened coordinates, started from the Laplace
        approximation at the MAP.

        Two numbers summarise a posterior here:

        * **contraction** $= 1 - \mathrm{Var}_\mathrm{post}/\mathrm{Var}_\mathrm{prior}$ per
          conductance: 1 — the data pin it down; 0 — nothing was learned, the posterior is the
          prior.
        * **stiff and sloppy directions**: the eigen-decomposition of the posterior covariance
          of $\log \bar g$. Each eigenvalue λ is the variance along one combination of
          conductances; $\sqrt\lambda$ is roughly its relative sd. Stiff directions (small λ)
          are tightly constrained; sloppy ones (large λ) are not. A sloppy direction made of
          one conductance means that conductance is unidentified; one that mixes several
          (say $\bar g_\mathrm{Na}$ and $\bar g_\mathrm{K}$ of one compartment, moving
          together) means only a *trade-off* is unknown — each one alone may look
          uncertain, while some combination of them is known precisely. The posterior
          correlation matrix shows such trade-offs directly.
        """
    ),
    code(
        SWITCH,
        """
        N_TRACES = 6 if SMALL else 20  # input current traces
        DT = 0.01 if SMALL else 0.004  # ms, solver step
        MAP_STEPS = 10 if SMALL else 15  # Levenberg–Marquardt iterations per window
        MAP_STARTS = 2 if SMALL else 4  # the base values, then prior draws (never the truth)
        WINDOWS = (16, 32) if SMALL else tuple(range(8, 48, 4))  # output times fitted first
        SVI_STEPS = 30 if SMALL else 1000  # at most; SVI stops earlier once the ELBO plateaus
        N_PARTICLES = 4 if SMALL else 8  # ELBO particles per step (one batched simulation)
        N_DRAWS = 200 if SMALL else 1000  # posterior draws (and prior / predictive draws)
        NOISE_MV = 1.0  # recording noise sd (mV), known to the model
        DESIGNS = ["all|all", "[0]|all"]  # stim|rec
        print(f"{'small' if SMALL else 'full'} mode: {N_TRACES} traces, dt {DT} ms, {SVI_STEPS} SVI steps")
        """,
    ),
    code(
        """
        import matplotlib.pyplot as plt
        import numpy as np
        import pandas as pd
        import torch

        from bayesneuron import (
            CrankNicolson,
            Design,
            fit_map,
            fit_svi,
            identifiability,
            paper_experiment,
            reports,
        )
        from bayesneuron.inference.svi import predictive
        """,
        INLINE,
    ),
    md(
        """
        ## 1. Data and MAP

        For each design, `paper_experiment` builds the model (the paper's cell, currents,
        48-point time grid and ground truth) and simulates noisy data. The posterior
        approximation needs a mode to start from. Soma-only stimulation makes the MAP search
        itself hard (local minima where spikes appear or vanish; see
        `studies/paper_toy_map/README.md`), so the MAP starts as in
        `studies/paper_toy_identifiability`: from the cell's base values and prior draws
        (`n_starts`), fitting the first output times and then more (`windows`, a continuation
        that walks past those minima) — never from the ground truth, which only scores the
        result (`|MAP − truth|`). The noisy data move the MAP away from the truth, by about as
        much as the posterior is wide.
        """
    ),
    code(
        """
        solver = CrankNicolson(dt=DT)
        runs = {}
        for label in DESIGNS:
            model, v_obs, truth = paper_experiment(
                Design.from_label(label), n_traces=N_TRACES, noise_sigma=NOISE_MV, solver=solver
            )
            mp = fit_map(
                model, v_obs, truth=truth, horizons=(), windows=WINDOWS, n_starts=MAP_STARTS,
                max_steps=MAP_STEPS,
            )  # fmt: skip
            runs[label] = dict(model=model, v_obs=v_obs, truth=truth, map=mp)
            gte = {k: round(v, 3) for k, v in mp.gte().items()}
            print(
                f"{label:>8}: v_obs {tuple(v_obs.shape)}, MAP in {mp.wall_s:.1f} s, "
                f"MSE {mp.mse[mp.best]:.3f} mV², |MAP − truth| {gte} mS/cm²"
            )
        """
    ),
    md(
        """
        ## 2. Variational posteriors

        `fit_svi` rewrites the model exactly in whitened coordinates $z$ (the Laplace
        approximation at the MAP maps to $z \\sim \\mathcal N(0, I)$), then fits a
        full-covariance Gaussian guide by maximising the ELBO. Each step simulates all
        particles in one batch. `khat` is the Pareto-smoothed importance-sampling diagnostic
        of the final guide against the true posterior: below 0.5 the approximation is good,
        0.5–0.7 usable, above 0.7 poor (expect poor values in small mode, where SVI barely
        starts).
        """
    ),
    code(
        """
        for label, r in runs.items():
            svi = fit_svi(
                r["model"],
                r["v_obs"],
                r["map"].params,
                guide="mvn",
                num_particles=N_PARTICLES,
                max_steps=SVI_STEPS,
                min_steps=min(100, SVI_STEPS),
                window=min(50, SVI_STEPS // 2),
                num_samples=N_DRAWS,
                seed=0,
            )
            r["svi"] = svi
            print(
                f"{label:>8}: {svi.steps} steps in {svi.wall_s:.1f} s (converged: {svi.converged}), "
                f"ELBO {svi.elbo_final:.1f}, k̂ {svi.khat:.2f}, Laplace Hessian: {svi.laplace.hessian}"
            )

        fig, ax = plt.subplots(figsize=(6, 2.8))
        for label, r in runs.items():
            elbo = r["svi"].elbo
            ax.plot(elbo - np.nanmax(elbo), label=label)
        ax.set(xlabel="SVI step", ylabel="ELBO − max (nats)", title="SVI convergence")
        ax.set_ylim(bottom=-200)
        ax.legend(fontsize=8)
        fig.tight_layout()
        """
    ),
    md(
        """
        ## 3. One labelled InferenceData per fit

        `bayesneuron.reports.to_inference_data` labels the draws for ArviZ: posterior and
        prior (`g_na`, `g_k` over `compartment`), posterior predictive and observed voltages
        (`v_obs` over `trace, rec_compartment, time`), the ground truth, prior moments and the
        design as provenance. Everything in `arviz` then works on it.
        """
    ),
    code(
        """
        def prior_draws(model, n, seed=0):
            \"\"\"n draws of each free conductance from the model's prior, name → [n, comp].\"\"\"
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return {k: model.priors[k].sample((n,)).numpy() for k in model.free}


        for r in runs.values():
            model, svi = r["model"], r["svi"]
            ppc = predictive(model, svi.samples, seed=1)  # [draw, trace, n_rec, time], mV
            r["idata"] = reports.to_inference_data(
                model,
                {k: v[None] for k, v in svi.samples.items()},  # add the chain dimension
                prior={k: v[None] for k, v in prior_draws(model, N_DRAWS).items()},
                posterior_predictive={"v_obs": ppc[None]},
                observed=r["v_obs"],
                truth=r["truth"],
                attrs={"inference": "svi:AutoMultivariateNormal", "khat": svi.khat},
            )
        runs["[0]|all"]["idata"]
        """
    ),
    md(
        """
        `reports.summary` is `arviz.summary` plus the ground truth and the contraction of
        each conductance:
        """
    ),
    code(
        """
        for label, r in runs.items():
            print(f"--- {label}")
            print(reports.summary(r["idata"]).round(3).to_string())
        """
    ),
    md(
        """
        ## 4. Contraction per compartment

        Under all|all every conductance contracts by more than 0.99: the data leave less than
        1 % of the prior variance. Under [0]|all the soma and its neighbours are still pinned
        down, but the distal $\\bar g_\\mathrm{Na}$ (compartments 3–5) barely contract, and
        the distal $\\bar g_\\mathrm{K}$ only partly.
        """
    ),
    code(
        """
        contraction = pd.concat(
            {label: reports.summary(r["idata"])["contraction"] for label, r in runs.items()}, axis=1
        )
        contraction.index = pd.MultiIndex.from_tuples(
            [(k.split("[")[0], int(k.split("[")[1][:-1])) for k in contraction.index],
            names=["parameter", "compartment"],
        )
        display(contraction.unstack("parameter").reindex(columns=["g_na", "g_k"], level=1).round(3))

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.0), sharey=True)
        comps = np.arange(6)
        for ax, k in zip(axes, ["g_na", "g_k"]):
            for i, label in enumerate(runs):
                ax.bar(comps + (i - 0.5) * 0.38, contraction.loc[k, label], width=0.38, label=label)
            ax.axhline(1, color="0.6", lw=0.8)
            ax.set(xlabel="compartment", title=f"{k}: contraction (1 = pinned down)")
        axes[0].set_ylabel("1 − Var_post / Var_prior")
        axes[0].legend(fontsize=8, title="stim|rec", title_fontsize=8)
        fig.tight_layout()
        """
    ),
    md(
        """
        **Why?** Look at the voltages themselves. For each compartment: the highest voltage it
        reaches at the truth (over all traces), and the largest change of the *recorded*
        voltages when that compartment's conductance moves from the bottom to the top of its
        prior range (0.7 → 1.3 × default), everything else held at the truth. Compare both
        with a spike (≈ +25 mV) and with the noise (1 mV per sample).
        """
    ),
    code(
        """
        def sweep_effect(model, truth, name):
            \"\"\"Per compartment: max |ΔV| (mV) of the recorded voltages when `name` in that
            compartment goes from 0.7 to 1.3 × its default, the rest at the truth.\"\"\"
            n = model.n_comp
            g = {k: torch.as_tensor(v).repeat(2 * n, 1) for k, v in truth.items()}
            for c in range(n):  # rows 2c, 2c + 1: compartment c at the prior's two ends
                g[name][2 * c, c] = 0.7 * model.base[name][c]
                g[name][2 * c + 1, c] = 1.3 * model.base[name][c]
            with torch.no_grad():
                v = model.simulate(g).reshape(n, 2, *model.obs_shape)  # one batched simulation
            return (v[:, 1] - v[:, 0]).abs().amax(dim=(1, 2, 3)).numpy()


        why = {}
        for label, r in runs.items():
            g_true = {k: torch.as_tensor(v) for k, v in r["truth"].items()}
            with torch.no_grad():
                v_all = r["model"].simulate(g_true, recorded=False)  # [trace, comp, time]
            why[(label, "peak V")] = v_all.amax(dim=(0, 2)).numpy()
            for name in ("g_na", "g_k"):
                why[(label, f"max |ΔV|, {name}")] = sweep_effect(r["model"], r["truth"], name)
        pd.DataFrame(why).rename_axis("compartment").round(2)
        """
    ),
    md(
        """
        With current at the soma only, the spike fades within two compartments: compartments
        3–5 stay within about 2 mV of their starting −60 mV, their sodium channels stay closed,
        and moving their $\\bar g_\\mathrm{Na}$ across the whole prior range changes the
        recorded voltage by less than the noise sd (1 mV). Their potassium channels, partly open
        near rest,
        still leave a small mark — hence the partial contraction of distal
        $\\bar g_\\mathrm{K}$. With current everywhere, every compartment spikes and every
        conductance shapes its own spike by tens of mV.
        """
    ),
    md(
        """
        ## 5. Posteriors against the prior

        Grey: the prior; blue: the posterior; dashed: the truth. Under all|all every
        posterior is a spike inside the prior; under [0]|all the distal sodium posteriors
        spread over much of the prior range — no experiment of this design could tell those
        values apart.
        """
    ),
    code(
        """
        for r in runs.values():
            fig = reports.plot_posterior_vs_prior(r["idata"])
            display(fig)
        """
    ),
    md(
        """
        Pairs of parameters show the trade-offs: a tilted cloud means two conductances
        compensate for each other. Here the soma (0) and the distal end (5); red: the truth.
        """
    ),
    code(
        """
        for label, r in runs.items():
            fig = reports.plot_pairs(r["idata"], var_names=["g_na", "g_k"], compartments=[0, 5])
            fig.suptitle(f"{label}: posterior pairs (red: truth)", fontsize=9)
            display(fig)
        """
    ),
    md(
        """
        **Posterior predictive check.** Voltages simulated from posterior draws plus noise,
        against the data. Both designs reproduce their data equally well: a wide posterior is
        not a bad fit, it is many parameter values fitting equally well.
        """
    ),
    code(
        """
        fig = reports.plot_ppc_traces(runs["[0]|all"]["idata"], n_traces=2)
        display(fig)
        """
    ),
    md(
        """
        ## 6. Stiff and sloppy directions

        `identifiability(draws, model, truth)` computes, from posterior draws of any method,
        the per-conductance metrics (mean, sd, contraction, z-score of the truth, 90 %
        coverage), the posterior correlation matrix, and the eigen-decomposition of the
        covariance of $\\log \\bar g$ (`log_cov_eigvals`, ascending, with eigenvectors
        `log_cov_eigvecs` as columns).
        """
    ),
    code(
        """
        ident = {
            label: identifiability(r["svi"].samples, r["model"], r["truth"]) for label, r in runs.items()
        }
        pd.DataFrame({label: m.summary() for label, m in ident.items()}).round(4)
        """
    ),
    md(
        """
        The correlation matrices: the strongest correlations are positive ones between
        $\\bar g_\\mathrm{Na}$ and $\\bar g_\\mathrm{K}$ of the same compartment (the
        off-diagonal bands) — more inward sodium current can be balanced by more outward
        potassium current, so the data constrain their balance better than either alone.
        """
    ),
    code(
        """
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
        for ax, (label, m) in zip(axes, ident.items()):
            im = ax.imshow(m.correlation, cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_xticks(range(len(m.labels)), m.labels, rotation=90, fontsize=7)
            ax.set_yticks(range(len(m.labels)), m.labels, fontsize=7)
            ax.set_title(f"{label}: posterior correlation", fontsize=9)
        cbar = fig.colorbar(im, ax=axes, shrink=0.8, label="correlation")
        """
    ),
    md(
        """
        The spectrum: $\\sqrt\\lambda$ of each eigen-direction of $\\log \\bar g$, i.e. roughly
        the relative sd along it (0.01 = 1 %). The prior, uniform over ±30 %, has a relative sd
        of about 0.17 in every direction; a direction near that line is not informed by the
        data.
        """
    ),
    code(
        """
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw=dict(width_ratios=[1, 1.6]))
        for label, m in ident.items():
            axes[0].semilogy(np.sqrt(m.log_cov_eigvals)[::-1], "o-", ms=4, label=label)
        axes[0].axhline(0.6 / np.sqrt(12), color="0.5", ls=":", label="prior (≈ 0.17)")
        axes[0].set(
            xlabel="direction (sloppiest first)",
            ylabel="sd of log g along it",
            title="stiff and sloppy directions",
        )
        axes[0].legend(fontsize=7)

        m = ident["[0]|all"]
        x = np.arange(len(m.labels))
        for i in (1, 2):  # the two sloppiest directions
            vec = m.log_cov_eigvecs[:, -i]
            vec = vec * np.sign(vec[np.argmax(np.abs(vec))])
            axes[1].bar(
                x + (i - 1.5) * 0.4,
                vec,
                width=0.4,
                label=f"sloppiest #{i}: sd {np.sqrt(m.log_cov_eigvals[-i]):.3f}",
            )
        axes[1].set_xticks(x, m.labels, rotation=90, fontsize=7)
        axes[1].set(ylabel="loading", title="[0]|all: the two sloppiest directions of log g")
        axes[1].axhline(0, color="k", lw=0.5)
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        """
    ),
    md(
        """
        ## What this means

        * **Identifiability is a property of the design, not only of the cell.** The same 12
          conductances, the same noise and the same number of traces: stimulating every
          compartment pins all of them down; stimulating only the soma leaves the distal
          sodium conductances at their prior.
        * **Contraction near 0 is a statement about the data, not a failure of the fit.** The
          posterior predictive is as good under [0]|all as under all|all; no optimiser can
          recover a conductance the voltages do not depend on. This is why the paper's
          gradient-descent fits of soma-stimulated cells ended far from the truth.
        * **The sloppy directions name what is missing.** Under [0]|all the sloppiest
          directions are dominated by distal $\\bar g_\\mathrm{Na}$: to learn them, current
          must reach the distal dendrite (notebook 03 ranks the designs that do so), or the
          prior must carry the information.
        * **Read the numbers with their error.** The contraction of a conductance the data do
          not inform scatters around 0: slightly negative values come from the Monte Carlo
          error of a variance estimated from a finite number of draws (≈ ±0.03 for 1000 draws)
          and from a Gaussian guide fitting a flat posterior; read them as 0.
        * **Check the approximation.** A Gaussian guide is exact only for a Gaussian posterior.
          A posterior that is flat across the prior's box, as for the distal sodium
          conductances under [0]|all, is not Gaussian in the guide's coordinates, and k̂ above
          0.7 says so. The posterior-vs-prior panels show whether the marginals are still
          sensible; where tail probabilities matter, compare with NUTS
          (`bayesneuron.run_nuts`). In small mode SVI barely starts: run the full mode for
          numbers to report.
        """
    ),
]

# =========================================================================== 03 design comparison
DESIGN_COMPARISON = [
    md(
        r"""
        # Choosing an experiment: ranking stimulation/recording designs

        Before recording anything, an experimenter chooses where to inject current and where to
        record. Which choice will determine the conductances best? For a model with known
        noise this can be answered *before* the experiment, from the model alone:

        * the **Fisher information** $F = J^\top J/\sigma^2$, with $J = \partial V_\mathrm{rec} /
          \partial \bar g$ the sensitivity of the recorded voltages to each conductance, at a
          plausible parameter value (here the ground truth; in practice a prior guess). Its
          log-determinant, the log-volume of the information, is the classical *D-optimal*
          design criterion;
        * the **Laplace posterior** $\mathcal N(\bar g, (F + H_\mathrm{prior})^{-1})$ built from
          it, which gives each conductance's expected contraction
          $1 - \mathrm{Var}_\mathrm{post}/\mathrm{Var}_\mathrm{prior}$ and its relative sd.

        Both cost one batched simulation of 2 × 12 perturbed parameter sets per design. We then
        check the ranking against posteriors from simulated data (MAP + Laplace at the MAP).

        Designs are written `stim|rec`: `[0,-1]|all` injects current at the soma (0) and the
        distal end (−1) and records every compartment.
        """
    ),
    code(
        SWITCH,
        """
        N_TRACES = 6 if SMALL else 20  # input current traces per design
        DT = 0.01 if SMALL else 0.004  # ms, solver step
        MAP_STEPS = 10 if SMALL else 15  # Levenberg–Marquardt iterations per window
        MAP_STARTS = 2 if SMALL else 4  # the base values, then prior draws (never the truth)
        WINDOWS = (16, 32) if SMALL else tuple(range(8, 48, 4))  # output times fitted first
        N_DRAWS = 500 if SMALL else 4000  # draws of each Laplace posterior
        NOISE_MV = 1.0  # recording noise sd (mV)
        if SMALL:  # stim ∈ {all, both ends, soma} × rec ∈ {all, soma}
            STIM, REC = ["all", "[0,-1]", "[0]"], ["all", "[0]"]
        else:  # the paper's 5 × 5 grid
            STIM = REC = ["[0]", "[0,1]", "[0,-1]", "[0,1,-1]", "all"]
        DESIGNS = [f"{s}|{r}" for s in STIM for r in REC]  # stim|rec labels
        print(f"{'small' if SMALL else 'full'} mode: {len(DESIGNS)} designs, {N_TRACES} traces, dt {DT} ms")
        """,
    ),
    code(
        """
        import time

        import matplotlib.pyplot as plt
        import pandas as pd

        from bayesneuron import (
            CrankNicolson,
            Design,
            fit_map_designs,
            identifiability,
            paper_experiment,
            reports,
        )
        from bayesneuron.inference.laplace import laplace, laplace_map
        from bayesneuron.studies.posteriors import CRITERIA, rank_designs
        """,
        INLINE,
    ),
    md(
        """
        ## 1. Expected information of each design, at the truth

        For each design: the model and its synthetic data (`paper_experiment`; the data are
        used only in section 4), then `laplace(model, truth)`.
        """
    ),
    code(
        """
        solver = CrankNicolson(dt=DT)
        experiments, rows, per_param = {}, [], {}
        t0 = time.perf_counter()
        for label in DESIGNS:
            model, v_obs, truth = paper_experiment(
                Design.from_label(label), n_traces=N_TRACES, noise_sigma=NOISE_MV, solver=solver
            )
            experiments[label] = (model, v_obs, truth)
            post = laplace(model, truth)
            stim, rec = label.split("|")
            rows.append(
                dict(
                    stim=stim,
                    rec=rec,
                    logdet_fisher=post.logdet_fisher,
                    mean_contraction=post.contraction.mean(),
                    min_contraction=post.contraction.min(),
                    max_rel_sd=(post.sd / post.mean).max(),
                )
            )
            per_param[label] = post.contraction
        labels = [f"{k}[{c}]" for k in model.free for c in range(model.n_comp)]
        table = pd.DataFrame(rows)
        print(f"{len(DESIGNS)} designs in {time.perf_counter() - t0:.1f} s")
        table.sort_values("logdet_fisher", ascending=False).round(4)
        """
    ),
    md(
        """
        ## 2. The ranking

        `rank_designs` ranks the designs (1 = most informative) under three criteria that
        answer different questions:

        * **log-det Fisher** (larger is better): the total volume of information — how much the
          data shrink the joint uncertainty of all 12 conductances together;
        * **max relative sd** (smaller is better): the worst-determined conductance — the
          criterion to use when *every* conductance matters;
        * **mean contraction** (larger is better): the average over conductances of how much
          is learned relative to the prior.
        """
    ),
    code(
        """
        ranking = pd.DataFrame(rank_designs(rows)).drop(columns="run").set_index("design")
        display(ranking.sort_values("rank_logdet_fisher"))
        for col, _better, what in CRITERIA:
            best = ranking[f"rank_{col}"].idxmin()
            print(f"best by {what}: {best} ({col} = {ranking.loc[best, col]:.4g})")
        """
    ),
    md(
        """
        ## 3. Heatmaps over the stim × rec grid

        Rows: where current is injected; columns: where voltage is recorded.
        """
    ),
    code(
        """
        fig = reports.plot_contraction_heatmap(table, value="mean_contraction", title="mean contraction")
        display(fig)
        fig = reports.plot_contraction_heatmap(
            table, value="min_contraction", title="worst conductance's contraction"
        )
        display(fig)
        fig = reports.plot_contraction_heatmap(
            table, value="logdet_fisher", title="log-det Fisher information"
        )
        display(fig)
        """
    ),
    md(
        """
        Where the information goes missing, conductance by conductance:
        """
    ),
    code(
        """
        grid = pd.DataFrame(per_param, index=labels).T.loc[ranking.sort_values("rank_logdet_fisher").index]
        fig, ax = plt.subplots(figsize=(8, 0.32 * len(grid) + 1.6))
        im = ax.imshow(grid.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(grid)), grid.index, fontsize=8)
        ax.set_title("expected contraction per conductance (rows: designs, best log-det first)", fontsize=9)
        fig.colorbar(im, ax=ax, label="contraction")
        fig.tight_layout()
        """
    ),
    md(
        """
        ## 4. Check with data: posteriors from one simulated experiment per design

        The expected information is local (it assumes the truth and a Gaussian posterior). We
        check it on the data simulated above: the MAP of every design (all designs in one
        batched fit from the base values and prior draws with a continuation over time
        windows, as `studies/paper_toy_identifiability`: the truth only scores), the Laplace
        approximation at each MAP in the unconstrained coordinates
        that respect the prior's bounds (`laplace_map`), draws from it, and the
        `identifiability` metrics of those draws — including whether the truth falls inside
        the 90 % intervals.
        """
    ),
    code(
        """
        t0 = time.perf_counter()
        models = [experiments[label][0] for label in DESIGNS]
        data = [experiments[label][1] for label in DESIGNS]
        maps = fit_map_designs(
            models, data, truth=truth, horizons=(), windows=WINDOWS, n_starts=MAP_STARTS,
            max_steps=MAP_STEPS,
        )  # fmt: skip
        checked = []
        for label, model, v_obs, mp in zip(DESIGNS, models, data, maps):
            lap = laplace_map(model, v_obs, mp.params)
            met = identifiability(lap.sample(N_DRAWS, seed=0), model, truth)
            stim, rec = label.split("|")
            checked.append(
                dict(
                    design=label,
                    stim=stim,
                    rec=rec,
                    **met.summary(),
                    logdet_fisher=laplace(model, mp.params).logdet_fisher,  # Fisher at the MAP
                    map_gte_na=mp.gte()["g_na"],
                    map_gte_k=mp.gte()["g_k"],
                )
            )
        checked = pd.DataFrame(checked).set_index("design")
        print(f"MAP + Laplace of {len(DESIGNS)} designs in {time.perf_counter() - t0:.1f} s")
        checked.round(3)
        """
    ),
    code(
        """
        ranked_data = pd.DataFrame(rank_designs(checked.to_dict("records"))).set_index("design")
        compare = pd.DataFrame(
            {
                "expected: rank mean contraction": ranking["rank_mean_contraction"],
                "data: rank mean contraction": ranked_data["rank_mean_contraction"],
                "expected: rank max rel sd": ranking["rank_max_rel_sd"],
                "data: rank max rel sd": ranked_data["rank_max_rel_sd"],
                "data: coverage 90 %": checked["coverage_90"],
            }
        ).sort_values("expected: rank mean contraction")
        compare
        """
    ),
    code(
        """
        fig = reports.plot_contraction_heatmap(
            checked, value="mean_contraction", title="mean contraction, Laplace at the MAP"
        )
        display(fig)
        """
    ),
    md(
        """
        ## What the ranking means for choosing an experiment

        The numbers quoted here are from the full mode (20 traces, the 5 × 5 grid); small mode
        shows the same pattern more noisily.

        * **Soma-only stimulation cannot identify the distal sodium conductances.** In the
          `[0]` row, whatever is recorded, $\\bar g_\\mathrm{Na}$ of compartments 3–5 keep
          their prior width (per-conductance heatmap): as notebook 02 shows, those
          compartments never spike, so their sodium channels never shape a voltage.
        * **Reaching the distal end is what counts.** Once current goes beyond the soma, every
          design that records the distal end (`[0,-1]`, `[0,1,-1]`, `all`) has mean
          contraction ≥ 0.97; two electrodes at the two ends, each injecting current and
          recording (`[0,-1]|[0,-1]`), come close to the all|all ideal (0.98, worst
          conductance 0.94). A second *stimulation* site at the distal end is worth more than
          recording everywhere: `[0,-1]|[0]` beats `[0]|all` on all three criteria (with the
          paper's 100 traces, `studies/paper_toy_map`, every conductance contracts by ≥ 0.93
          under `[0,-1]|[0]`).
        * **The criteria answer different questions.** Log-det Fisher measures the total
          volume of information and ranks `[0,-1]|all` first and all|all only fourth, while
          the worst conductance (max relative sd) and the mean contraction both prefer
          all|all. If one conductance is the object of study (say distal
          $\\bar g_\\mathrm{Na}$), rank by its own contraction — the per-conductance heatmap.
        * **Past a point, more electrodes buy little.** Among designs that already determine
          everything, differences are in the third or fourth decimal of contraction: choose
          among them by cost (an extra electrode), not by these numbers.
        * **Expected and realised information agree here.** The ranks from one noisy
          experiment per design (section 4) follow the expected ranks closely, and the 90 %
          Laplace intervals cover most of the true conductances (full mode, MAP from the base
          values and prior draws: the truth within 2.6 sd everywhere). A contraction below 0
          there (a conductance the data do not inform; down to −0.35 on `[0,1,-1]|[0]` in
          full mode) is an artefact of a Gaussian in the prior's logit coordinates: read it
          as 0.
        * **The analysis is local and model-based.** It assumes the cell model, the noise
          level and a parameter value near the truth; the data check (section 4) shows whether
          the expected ranking survives one noisy experiment, and whether the Laplace
          intervals cover the truth. For a design decision that matters, repeat it at a few
          plausible parameter values (prior draws), or compare full posteriors as in
          notebook 02 (`bayesneuron study run studies/paper_toy_identifiability`).
        """
    ),
]

# =========================================================================== 04 real recording
REAL_RECORDING = [
    md(
        r"""
        # Your cell, your channels, your recording: a posterior from real data

        The studies so far fitted synthetic data. Here the data are a real whole-cell
        current-clamp recording (the ABF file bundled with bayesneuron: 16 sweeps of 3 s at
        20 kHz, current steps of −50 + 10·i pA; `bayesneuron/data/README.md`), and the model is
        described in a config file with no preset: `studies/real_recording/config.toml`.

        1. read the recording and look at it;
        2. load the config: a soma + one dendrite, channels from the cortical library,
           conductances shared by region, the leak free, the noise sd inferred;
        3. run the study: MAP from the cell's values and prior draws, a checked posterior, the
           posterior predictive on held-out sweeps;
        4. read where the model fails.

        Units: mV, ms, nA. `BAYESNEURON_NOTEBOOK_SMALL=1` runs the config's `[smoke]` sizes.
        """
    ),
    code(SWITCH, INLINE),
    code(
        """
        import tempfile
        from pathlib import Path

        import pandas as pd
        from IPython.display import Image, display

        import bayesneuron
        from bayesneuron import reports
        from bayesneuron.io import example_abf_path, read_abf
        from bayesneuron.studies.recording_config import load_recording_study
        from bayesneuron.studies.recording_model import build_model, load_sweeps
        from bayesneuron.studies.recording_run import run_recording_study

        STUDY = Path(bayesneuron.__file__).resolve().parents[1] / "studies" / "real_recording"
        OUT = Path(tempfile.mkdtemp()) / "real_recording"
        """
    ),
    md(
        """
        ## 1. The recording

        Every sweep as read (voltage in mV, the command in nA). The cell fires spontaneously at
        0 pA and adapts under depolarising steps; the command is relative to an unknown
        holding current.
        """
    ),
    code(
        """
        rec = read_abf(example_abf_path())
        print(rec)
        fig, axes = reports.subplots(2, 1, figsize=(8, 4.5), sharex=True)
        for s in (0, 5, 10, 15):
            axes[0].plot(rec.time, rec.voltage[s], lw=0.5, label=f"sweep {s}")
            axes[1].plot(rec.time, rec.current[s], lw=0.8)
        axes[0].set_ylabel("V (mV)")
        axes[1].set_ylabel("I (nA)")
        axes[1].set_xlabel("time (ms)")
        axes[0].legend(fontsize=7, ncol=4)
        fig
        """
    ),
    md(
        """
        ## 2. The config: your cell and your data

        `[cell]` builds the geometry and places the channels (per-region values in
        `[cell.values]`), `[data]` says which sweeps to fit and which to hold out, the electrode,
        the time window and the output resolution, `[parameters]` the free parameters by region
        and the noise. Paths are relative to the config file.
        """
    ),
    code(
        """
        print((STUDY / "config.toml").read_text()[:1800])
        study = load_recording_study(STUDY, smoke=SMALL)
        fit_rec = load_sweeps(study, study.data["fit_sweeps"])
        model = build_model(study, fit_rec)
        print(model)
        print("free:", model.labels)
        """
    ),
    md(
        """
        ## 3. MAP, checked posterior, posterior predictive

        One call runs the study (as `bayesneuron study run studies/real_recording --out DIR`):
        the posterior is the first method of the ladder `svi:mvn → svi:iaf → importance → nuts`
        that passes its checks.
        """
    ),
    code(
        """
        res = run_recording_study(STUDY, OUT, smoke=SMALL, progress=False)
        post = res["posterior"]
        print(f"posterior: {post.method}, passed its checks: {post.ok}")
        print(post.diagnostics["attempts"])
        display(pd.read_csv(OUT / "parameters.csv"))
        pred = pd.read_csv(OUT / "predictive.csv")
        display(pred)
        held = pred[pred.held_out]
        print(
            f"observed spike count inside the 90 % interval: {held.inside_90.sum()} of "
            f"{len(held)} held-out sweeps"
        )
        """
    ),
    code(
        """
        display(Image(filename=str(OUT / "predictive_held_out.png")))
        """
    ),
    md(
        """
        ## 4. Where the model fails

        With a Gaussian likelihood on every voltage sample, the best deterministic fit to
        spikes that the model cannot time exactly is the *mean* voltage: the MAP lowers g_Na
        until the model no longer spikes and moves the leak reversal up to the mean voltage
        during firing, and the inferred noise sd (≈ 10 mV in the full run, far above the
        recording's noise) absorbs the spikes. So the prediction is good on the
        hyperpolarising steps and predicts no spikes where the cell fires: see
        `studies/real_recording/README.md` for the evidence sweep by sweep, and what a model
        would need (a spike-aware likelihood, a holding current, adaptation).
        """
    ),
]


# =========================================================================== 05 designing stimuli
DESIGN_STIMULUS = [
    md(
        r"""
        # Designing the stimulus: optimise the currents, then check them on fresh data

        Notebook 03 ranked the designs one could run with the paper's random step currents.
        Here the currents themselves are designed. For a chosen design (where to inject, where
        to record), bayesneuron optimises the injected waveforms to maximise the **Bayesian
        D-optimality** of the experiment,

        $$\tfrac12 \log\det\big(I + \Sigma_\mathrm{prior}^{1/2} F \,\Sigma_\mathrm{prior}^{1/2}\big),$$

        the expected information gain (nats) of a Gaussian approximation, averaged over cells
        drawn from the prior — the truth is unknown before the experiment, so a stimulus must
        serve every plausible cell. The Fisher information $F$ comes from the fused kernel's
        sensitivities and is differentiable in the currents, so Adam ascends it directly.

        1. set up the design problem: the cell, the recording, the prior, the stimulus family;
        2. optimise from two starts (the paper's currents and a ladder of constant levels),
           fresh prior draws every step, the best start chosen on draws the optimiser never
           saw;
        3. judge both stimuli on *held-out* prior draws, paired, with a standard error — and
           against the best sweeps *chosen* from many draws of the paper's own protocol;
        4. record a new cell under each stimulus and compare the posteriors.

        The design is `all|[0]`: every compartment stimulated, only the soma recorded — where
        the paper's random steps tell the least (`studies/optimal_design`). Units: mV, ms,
        µA/cm² (unit-area compartments), mS/cm².
        """
    ),
    code(
        SWITCH,
        """
        DESIGN = "all|[0]"  # stim|rec
        N_TRACES = 4 if SMALL else 20  # sweeps per stimulus (the study: 20)
        STEPS = 3 if SMALL else 80  # Adam steps per start
        THETA_OPT = 2 if SMALL else 8  # prior draws per optimiser step (fresh every step)
        THETA_SELECT = 3 if SMALL else 32  # further draws the best start is chosen on
        THETA_EVAL = 3 if SMALL else 10  # held-out draws both stimuli are judged on
        DT_OPT = 0.05 if SMALL else 0.02  # ms, while optimising
        DT_EVAL = 0.05 if SMALL else 0.004  # ms, when judging and fitting
        MAP_STEPS = 5 if SMALL else 15  # Levenberg–Marquardt iterations per window
        WINDOWS = (24,) if SMALL else tuple(range(8, 48, 4))  # output times fitted first
        print(f"{'small' if SMALL else 'full'} mode: {DESIGN}, {N_TRACES} sweeps, {STEPS} steps")
        """,
    ),
    code(
        """
        import dataclasses
        import math

        import matplotlib.pyplot as plt
        import numpy as np
        import pandas as pd
        import torch

        from bayesneuron import CrankNicolson, Design, identifiability, paper_experiment
        from bayesneuron.inference import checked_posterior
        from bayesneuron.inference.fit import fit_map
        from bayesneuron.inference.model import NeuronModel
        from bayesneuron.inference.space import prior_draws
        from bayesneuron.inference.synthetic import synthetic_data
        from bayesneuron.optimal_design import (
            OptimizeConfig,
            PiecewiseConstant,
            criterion_values,
            exact_fisher,
            optimize_stimulus,
            problem_from_model,
            select_traces,
        )
        from bayesneuron.reference.paper import preset_priors
        from bayesneuron.studies.design_inputs import initial_parameters
        """,
        INLINE,
    ),
    md(
        """
        ## 1. The design problem

        `paper_experiment` gives the model under the paper's currents (its `stimulus`, at the
        stimulated compartments). `problem_from_model` turns it into a design problem at prior
        draws: one set the optimiser starts from (and resamples every step), one it chooses
        its best start on, one held out for the judgement — three seeds, never the truth.
        The stimulus family has one free level per 0.1-ms bin, sweep and electrode, inside the
        paper's bounds [0, 19] µA/cm² (a sigmoid), first and last bin at zero.
        """
    ),
    code(
        """
        design = Design.from_label(DESIGN)
        model, _, _ = paper_experiment(design, n_traces=N_TRACES, solver=CrankNicolson(dt=DT_EVAL))
        paper = model.stimulus  # the paper's currents, [trace, site, bin]
        problem = problem_from_model(model, THETA_OPT, seed=0, solver=CrankNicolson(dt=DT_OPT))
        select = problem_from_model(model, THETA_SELECT, seed=2000, solver=CrankNicolson(dt=DT_OPT))
        held_out = problem_from_model(model, THETA_EVAL, seed=1000, solver=CrankNicolson(dt=DT_EVAL))
        family = PiecewiseConstant(n_traces=N_TRACES, sites=tuple(model.stim_index), lo=0.0, hi=19.0)
        starts = initial_parameters(family, ["paper", "ladder"], 0, paper)
        print(f"{family.n_traces} sweeps × {len(family.sites)} electrodes × {family.n_bins} bins")
        """
    ),
    md(
        """
        ## 2. Optimise

        Stochastic gradient ascent on the expected criterion: every step draws new cells from
        the prior. Each start's first and last point are candidates; the one with the highest
        criterion on the `select` draws wins (a start its steps made worse is kept as it was).
        """
    ),
    code(
        """
        config = OptimizeConfig(steps=STEPS, lr=0.1, n_starts=len(starts), resample_theta=True)
        result = optimize_stimulus(problem, family, config, init=starts, select=select)
        print(f"best start: {['paper', 'ladder'][result.best_start]}, {result.wall_s:.0f} s")

        fig, ax = plt.subplots(figsize=(6, 3.2))
        for k, name in enumerate(["paper", "ladder"]):
            ax.plot(result.history[k, :-1], label=f"start: {name}")
        ax.set(xlabel="Adam step", ylabel="D-optimality (nats)", title="on each step's fresh draws")
        ax.legend()
        plt.show()
        """
    ),
    md(
        """
        ## 3. Judge on held-out cells, paired

        Both stimuli on the same held-out prior draws, with exact sensitivities at the fine
        step: the gain per draw, its mean per sweep and the standard error of that mean. A
        gain within two standard errors of zero is no gain.
        """
    ),
    code(
        """
        def per_draw(stimulus):
            return criterion_values(held_out, exact_fisher(held_out, stimulus).sum(1)).numpy()


        d_paper, d_opt = per_draw(paper), per_draw(result.stimulus)
        diff = d_opt - d_paper
        gain, se = diff.mean() / N_TRACES, diff.std(ddof=1) / math.sqrt(diff.size) / N_TRACES
        print(f"paper {d_paper.mean():.2f} nats, optimised {d_opt.mean():.2f} nats")
        print(f"gain {gain:+.3f} ± {se:.3f} nats per sweep over {diff.size} held-out cells")

        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for a, b in zip(d_paper, d_opt):
            ax.plot([0, 1], [a, b], "o-", color="tab:blue", alpha=0.6)
        ax.set(
            xticks=[0, 1],
            xticklabels=["paper", "optimised"],
            xlim=(-0.3, 1.3),
            ylabel="D-optimality (nats)",
            title="each held-out cell",
        )
        plt.show()
        """
    ),
    code(
        """
        # the first three sweeps at the soma (0) and the distal end (5)
        t = paper.t0 + paper.dt * np.arange(paper.n_bins + 1)  # bin edges, ms
        fig, axes = plt.subplots(2, 2, figsize=(9, 4.5), sharex=True, sharey=True)
        for row, comp in enumerate((0, 5)):
            for col, (stim, name) in enumerate(((paper, "paper"), (result.stimulus, "optimised"))):
                i = list(stim.site_index(6)).index(comp)
                for sweep in stim.values.detach()[:3, i].numpy():
                    axes[row, col].stairs(sweep, t)
                axes[row, col].set_title(f"{name}, compartment {comp}")
        for ax in axes[:, 0]:
            ax.set_ylabel("µA/cm²")
        for ax in axes[1]:
            ax.set_xlabel("t (ms)")
        fig.tight_layout()
        plt.show()
        """
    ),
    md(
        """
        ### Or choose sweeps an amplifier already delivers

        Information adds over sweeps, so the most informative *set* of existing sweeps can be
        chosen rather than designed: `select_traces` takes the per-sweep Fisher information
        of a pool (here the paper's random-step protocol under further seeds, 100 sweeps
        each), picks sweeps greedily, then swaps one for another while that raises the
        criterion on the `select` draws. Judged on the same held-out cells as above.
        """
    ),
    code(
        """
        POOL_SEEDS = 1 if SMALL else 5  # × 100 sweeps of the paper's protocol
        pool_values = torch.cat(
            [
                paper_experiment(design, n_traces=100, seed=20230620 + k)[0].stimulus.values
                for k in range(POOL_SEEDS)
            ]
        )
        pool = dataclasses.replace(paper, values=pool_values)
        chosen = select_traces(select, exact_fisher(select, pool), N_TRACES)
        d_chosen = per_draw(dataclasses.replace(pool, values=pool_values[chosen]))
        for name, d in (("paper", d_paper), ("chosen", d_chosen), ("optimised", d_opt)):
            print(f"{name:>9}: {d.mean():6.2f} nats on the held-out cells")
        """
    ),
    md(
        """
        ## 4. A new cell, recorded under each stimulus

        The criterion is a Gaussian surrogate; the proof is a posterior. One cell drawn from
        the prior (a seed the optimiser and the judgement never used) is "recorded" under each
        stimulus with 1 mV noise; each recording gets a MAP from the base values and prior
        draws (never the truth) and a checked posterior. Its truth only scores.
        """
    ),
    code(
        """
        stimulus = dataclasses.replace(result.stimulus, values=result.stimulus.values.detach())
        designed = NeuronModel(
            model.cell,
            stimulus,
            model.t_eval,
            design,
            priors=preset_priors("paper"),
            sigma=1.0,
            solver=CrankNicolson(dt=DT_EVAL),
        )
        cell = {k: v[0].numpy() for k, v in prior_draws(model, 1, seed=4242).items()}
        rows = {}
        for name, m in (("paper", model), ("optimised", designed)):
            v = synthetic_data(m, cell, noise_sigma=1.0, seed=7)
            fit = fit_map(
                m, v, n_starts=2, max_steps=MAP_STEPS, windows=WINDOWS, horizons=(), seed=0, progress=False
            )
            post = checked_posterior(
                m,
                v,
                fit.modes(),
                ladder=("laplace", "svi:mvn", "importance"),
                num_samples=500 if SMALL else 2000,
                seed=1,
            )
            met = identifiability(post.samples, m, cell)
            rows[name] = met.summary() | {"posterior": post.method, "ok": post.ok}
            rows[name]["mean sd / prior sd"] = float(np.mean(met.sd / met.prior_sd))
        pd.DataFrame(rows).T[
            ["posterior", "ok", "mean_contraction", "mean sd / prior sd", "max_abs_z", "coverage_90"]
        ]
        """
    ),
    md(
        """
        Read the table by its columns: `mean sd / prior sd`, how much narrower each posterior
        is than the prior (the designed sweeps should give the smaller); `max_abs_z`, how far
        the truth lies from each posterior mean in posterior sds; `posterior` and `ok`, which
        method of the ladder produced the draws and whether they passed their checks. The
        `coverage_90` of *one* dataset is not a calibration test: its 12 conductances share
        one noise draw, so their errors are correlated and several intervals can miss
        together while every $|z|$ stays near 2. Calibration needs replicates
        (`studies/optimal_design/validate.py`: 9 cells per stimulus, coverage pooled with a
        binomial interval).
        """
    ),
    md(
        """
        ## Where it does not deliver

        * **One recording, one new cell, one noise draw**: section 4 is an illustration;
          `studies/optimal_design/validate.py` does it over 9 cells, with every posterior
          checked and the coverage pooled.
        * **A stimulus for every cell of the prior is not a stimulus for yours.** On the
          design `[0,1,−1]|all`, 5 designed sweeps do not reach 20 random ones over the prior;
          5 sweeps designed for a cell fitted from a 5-sweep pilot beat them
          (`design optimize --theta posterior.nc`; `studies/optimal_design/README.md`).
        * **With the soma alone stimulated, the gradient gains little**: a single electrode's
          information depends strongly on the cell and the criterion is rugged in the
          currents, so Adam stays near its start. Choosing the best sweeps of the protocol
          (`select_traces`, "Or choose sweeps" above) gains +0.19 to +0.26 nats per trace
          there, and the optimiser adds almost nothing to it. The study's table gives every
          design's gain with its standard error.
        """
    ),
]


NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_identifiability.ipynb": IDENTIFIABILITY,
    "03_design_comparison.ipynb": DESIGN_COMPARISON,
    "04_real_recording.ipynb": REAL_RECORDING,
    "05_designing_stimuli.ipynb": DESIGN_STIMULUS,
}


def build(name: str, cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            "name": "python3",
        },
        "language_info": {"name": "python"},
    }
    stem = name.split("_")[0]
    for i, (kind, src) in enumerate(cells):
        cell = (
            nbformat.v4.new_markdown_cell(src)
            if kind == "markdown"
            else nbformat.v4.new_code_cell(src)
        )
        cell.id = f"nb{stem}-{i:02d}"  # stable ids: rebuilding changes nothing
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    args = p.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        text = nbformat.writes(build(name, cells)) + "\n"
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run python notebooks/_build.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
