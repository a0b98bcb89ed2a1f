"""A study's synthetic experiment under one design: the preset's cell, currents and ground
truth, the study's free parameters, priors, noise, solver and (``--smoke``) output times."""

from __future__ import annotations

from bayesneuron.protocol.design import Design

__all__ = ["build_experiment", "prior_spec", "variant_seeds_problem"]


def prior_spec(name: str):
    """A study's ``priors`` value as a prior spec: ``"paper"`` base × U(0.7, 1.3),
    ``"lognormal"`` LogNormal(log base, 0.5), ``"none"`` no prior."""
    from bayesneuron.inference.priors import LogNormalPrior, ScaledUniformPrior

    return {"paper": ScaledUniformPrior(0.7, 1.3), "lognormal": LogNormalPrior(0.5), "none": None}[
        name
    ]


def build_experiment(
    study, design: Design, priors: str, device, noise_sigma=None, dt=None, seed=None, variant=None
):
    """``(model, v_obs, truth)`` of ``study`` (a :class:`~bayesneuron.studies.config.Study`)
    under ``design``; ``seed`` (default ``study.seed``) and the preset's ``variant`` (default
    its first) choose the experiment.

    The preset's experiment, as it is for the preset's own free parameters (``g_na``, ``g_k``).
    With other free parameters (``[model] free``) the model infers those, the ground truth of
    each is the preset's where it has one and ``base · U(0.7, 1.3)`` (seed ``seed``)
    otherwise, the parameters not free keep the cell's values, and the data are simulated
    again from that truth (noise seed ``seed + 1``, as the presets do). ``--smoke``
    keeps the first ``study.n_times`` output times. ``study.sigma = "infer"``: the model
    infers the noise sd (:class:`~bayesneuron.NeuronModel`'s ``sigma="infer"``), and the
    truth has ``"sigma"``, the noise sd of the data (mV).
    """
    from bayesneuron.reference.presets import get_preset
    from bayesneuron.simulation.solvers import CrankNicolson

    noise = study.noise_sigma if noise_sigma is None else noise_sigma
    seed = study.seed if seed is None else seed
    extra = {} if variant is None else {"variant": variant}
    model, v, truth = get_preset(study.preset).experiment(
        design,
        **extra,
        n_traces=study.n_traces,
        seed=seed,
        noise_sigma=noise,
        sigma=study.sigma,
        priors=prior_spec(priors),
        solver=CrankNicolson(dt=dt or study.dt, backend=study.backend),
        device=device,
    )
    free = tuple(study.free or model.free)
    if free != model.free:
        model, v, truth = _with_free(study, model, truth, free, priors, noise, seed)
    if study.n_times is not None and study.n_times < model.t_eval.size:
        model = _remodel(model, free, priors, study.sigma, t_eval=model.t_eval[: study.n_times])
        v = v[..., : study.n_times]
    if model.sigma is None:
        truth = {**truth, "sigma": float(noise)}
    return model, v, truth


def _remodel(model, free, priors: str, sigma: float | str, t_eval=None):
    from bayesneuron.inference.model import NeuronModel

    if tuple(free) == tuple(model.free):  # keep its forms (parameters shared by region …)
        free = model.parametrisation.forms
    return NeuronModel(
        model.cell,
        model.stimulus,
        model.t_eval if t_eval is None else t_eval,
        model.design,
        free=free,
        priors=prior_spec(priors),
        sigma=sigma,
        solver=model.solver,
        dtype=model.dtype,
        device=model.device,
    )


def _with_free(study, model, truth: dict, free: tuple[str, ...], priors: str, noise: float, seed):
    from bayesneuron.inference.synthetic import draw_truth, synthetic_data

    drawn = draw_truth(model.cell, free, seed=seed)
    truth = {k: truth[k] if k in truth else drawn[k] for k in free}
    model = _remodel(model, free, priors, study.sigma)
    v = synthetic_data(model, truth, noise_sigma=noise, seed=seed + 1)
    return model, v, truth


def variant_seeds_problem(run: dict, preset: str) -> str | None:
    """What is wrong with a run's ``variant`` (one of the preset's) and ``seeds`` (distinct
    ints ≥ 0, at least one), or None."""
    from bayesneuron.reference.presets import get_preset

    variants = get_preset(preset).variants
    if "variant" in run and run["variant"] not in variants:
        have = f"one of {list(variants)}" if variants else "none (remove the key)"
        return f"variant {run['variant']!r} unknown for {preset}; it has {have}"
    seeds = run.get("seeds")
    if seeds is not None and not (
        seeds
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds)
        and len(set(seeds)) == len(seeds)
    ):
        return f"seeds = {seeds!r}; give distinct ints ≥ 0, e.g. [1, 2, 3]"
    return None
