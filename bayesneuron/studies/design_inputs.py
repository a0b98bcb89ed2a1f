"""What a design run starts from and is judged on (:mod:`.optimal_design`): the optimiser's
starts (the protocol's currents, a ladder of levels, random, the most informative of many
protocol sweeps, an earlier run's stimulus), a
fitted cell's posterior draws in place of prior draws, and the stimulus files runs write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bayesneuron.errors import BayesneuronError
from bayesneuron.optimal_design import StimulusFamily
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.studies.config import StudyError
from bayesneuron.studies.design_config import DesignStudy

__all__ = ["cell_draws", "initial_parameters", "load_stimulus", "starts"]


def initial_parameters(
    fam: StimulusFamily,
    init,
    seed: int,
    protocol: Stimulus,
    bounds=(0.0, 19.0),
    chosen: Stimulus | None = None,
) -> list[torch.Tensor]:
    """Starting parameters per entry of ``init``: ``"paper"`` (the protocol's currents),
    ``"ladder"`` (one constant level per trace, evenly spaced inside ``bounds`` µA/cm²,
    scaled per site like the family's bounds), ``"random"`` (``fam.init(seed + k)``) or
    ``"chosen"`` (the sweeps ``chosen``, e.g. from
    :func:`~bayesneuron.studies.optimal_design.chosen_sweeps`)."""
    out = []
    for k, name in enumerate(init):
        if name == "random":
            out.append(fam.init(seed=seed + k))
        elif name == "paper":
            out.append(fam.fit(protocol))
        elif name == "chosen":
            if chosen is None:
                raise StudyError("init 'chosen' needs the chosen sweeps (chosen=)")
            out.append(fam.fit(chosen))
        elif name == "ladder":
            lo, hi = fam.bounds()
            scale = (hi - lo) / (bounds[1] - bounds[0])  # µA/cm² → the family's unit, per site
            margin = (bounds[1] - bounds[0]) / 38.0  # [0, 19] µA/cm² → levels 0.5 … 18.5
            b = (bounds[0] + margin, bounds[1] - margin)
            density = torch.linspace(*b, fam.n_traces, dtype=torch.float64)[:, None, None]
            levels = (density * scale).expand(-1, len(fam.sites), fam.n_bins)
            out.append(fam.fit(Stimulus(levels.clone(), fam.dt, fam.t0, fam.unit, fam.sites)))
        else:
            raise StudyError(f"init {name!r}: use random, paper, ladder or chosen")
    return out


def starts(
    study: DesignStudy, fam, proto: Stimulus, tag: str, chosen: Stimulus | None = None
) -> tuple[list[str], list]:
    """``(names, parameters)`` of the starts: ``study.init``'s (``chosen``: the sweeps of the
    ``"chosen"`` start), after ``"previous"`` — the stimulus ``stimulus_<tag>.pt`` of the
    earlier run in ``study.start_from`` — if given."""
    names, init = (
        list(study.init),
        initial_parameters(fam, study.init, study.opt_seed, proto, study.bounds, chosen),
    )
    if study.start_from is None:
        return names, init
    path = Path(study.start_from) / f"stimulus_{tag}.pt"
    if not path.is_file():
        raise StudyError(
            f"[design] start_from = {study.start_from!r}: no {path.name} there (a 'design "
            "optimize' run of this design, family and preset writes it)"
        )
    try:
        z = fam.fit(load_stimulus(path))
    except BayesneuronError as e:
        raise StudyError(f"[design] start_from: {path}: {e}") from None
    return ["previous", *names], [z, *init]


def cell_draws(study: DesignStudy, model) -> tuple[dict | None, dict | None]:
    """``(optimiser's pool, held-out points)`` of ``study.theta``'s posterior draws (name →
    ``[S, comp]``; split once with ``opt_seed``: ``theta_eval`` held out, the rest the pool
    the optimiser draws from), or ``(None, None)`` for ``theta = "prior"``."""
    if study.theta == "prior":
        return None, None
    from bayesneuron.reports.arviz import load_inference_data, posterior_draws

    try:
        draws = posterior_draws(load_inference_data(study.theta), model.free)
    except (OSError, ValueError, BayesneuronError) as e:
        raise StudyError(f"[design] theta = {study.theta!r}: {e}") from None
    n = len(next(iter(draws.values())))
    need = study.theta_eval + max(study.theta_opt, study.theta_select)
    if n < need:
        raise StudyError(
            f"[design] theta = {study.theta!r}: {n} draws; need at least theta_eval + "
            f"max(theta_opt, theta_select) = {need}"
        )
    perm = np.random.default_rng(study.opt_seed).permutation(n)
    held, pool = perm[: study.theta_eval], perm[study.theta_eval :]
    return {k: v[pool] for k, v in draws.items()}, {k: v[held] for k, v in draws.items()}


def load_stimulus(path) -> Stimulus:
    """The stimulus of a ``stimulus_<design>_<family>.pt`` a design run writes (or a ``.pt``
    with the same ``values``, ``dt``, ``unit``, ``sites``), from t = 0, float64."""
    saved = torch.load(path, weights_only=True)
    sites = tuple(int(k) for k in saved["sites"])
    return Stimulus(saved["values"].double(), saved["dt"], 0.0, saved["unit"], sites)
