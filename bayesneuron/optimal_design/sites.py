"""Electrode-site selection over the continuous stimulus optimisation (:mod:`.optimize`):
greedy placement, one electrode at a time, then Fedorov exchange; every site set's stimulus
optimised once (a cache keyed by the sorted sites). Site sets are compared by
:attr:`DesignResult.score`: the criterion on ``select``'s points where given (θ draws the
optimiser never saw: a set whose stimulus over-fits the optimiser's draws gains nothing by
it), else on the optimiser's own.

Example:
    >>> make = lambda s: PiecewiseConstant(n_traces=5, sites=s, lo=0.0, hi=19.0)
    >>> path = greedy_sites(problem, make, candidates=range(6), n_sites=2)
    >>> [(sites, round(res.value, 2)) for sites, res in path]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.optimal_design.families import StimulusFamily
from bayesneuron.optimal_design.objective import DesignProblem
from bayesneuron.optimal_design.optimize import DesignResult, OptimizeConfig, optimize_stimulus

__all__ = ["SiteResults", "exchange_sites", "greedy_sites", "optimized_site_set"]

SiteResults = dict[tuple[int, ...], DesignResult]
"""Optimised results per electrode-site set (sorted compartment indices)."""


def _candidates(candidates: Sequence[int]) -> tuple[int, ...]:
    cand = tuple(int(c) for c in candidates)
    if not cand:
        raise FitError("candidates is empty; give the compartments that may carry an electrode")
    if any(c < 0 for c in cand) or len(set(cand)) != len(cand):
        raise FitError(f"candidates {list(cand)} must be distinct compartment indices ≥ 0")
    return cand


def optimized_site_set(
    problem: DesignProblem,
    make_family: Callable[[tuple[int, ...]], StimulusFamily],
    sites: tuple[int, ...],
    config: OptimizeConfig,
    *,
    make_init: Callable[[StimulusFamily], Sequence[Tensor]] | None = None,
    cache: SiteResults,
    callback: Callable[[tuple[int, ...], DesignResult], None] | None = None,
    select: DesignProblem | None = None,
) -> DesignResult:
    """The optimised result of one site set ``sites`` (sorted), as :func:`greedy_sites` and
    :func:`exchange_sites` optimise each candidate: from ``cache``, or by
    :func:`optimize_stimulus` (no checkpoint), then stored in ``cache`` and reported to
    ``callback``. Arguments as in :func:`greedy_sites`."""
    if sites in cache:
        return cache[sites]
    fam = make_family(sites)
    init = None if make_init is None else make_init(fam)
    cfg = dataclasses.replace(config, checkpoint=None)
    res = optimize_stimulus(problem, fam, cfg, init=init, select=select)
    cache[sites] = res
    if callback is not None:
        callback(sites, res)
    return res


def greedy_sites(
    problem: DesignProblem,
    make_family: Callable[[tuple[int, ...]], StimulusFamily],
    candidates: Sequence[int],
    n_sites: int,
    config: OptimizeConfig | None = None,
    *,
    make_init: Callable[[StimulusFamily], Sequence[Tensor]] | None = None,
    cache: SiteResults | None = None,
    callback: Callable[[tuple[int, ...], DesignResult], None] | None = None,
    select: DesignProblem | None = None,
) -> list[tuple[tuple[int, ...], DesignResult]]:
    """Greedy electrode placement: add, one at a time, the candidate compartment whose
    optimised stimulus (``make_family(sites)``, :func:`optimize_stimulus` with ``config``)
    scores best.

    Args:
        problem: the criterion.
        make_family: sorted site tuple → the stimulus family on those electrodes.
        candidates: compartments that may carry an electrode (distinct indices ≥ 0).
        n_sites: electrodes to place (at most ``len(candidates)`` are).
        config: optimiser settings (default: ``OptimizeConfig(progress=False)``).
        make_init: family → starting parameters (``optimize_stimulus``'s ``init``).
        cache: results per site set, read and filled (:func:`exchange_sites` reuses it:
            the optimisation is deterministic, so a set is optimised once).
        callback: called with ``(sites, result)`` after each optimisation actually run.
        select: θ points (same criterion) on which each set's stimulus is chosen and the
            sets compared (:func:`optimize_stimulus`'s ``select``; needs
            ``config.resample_theta``); ``None``: the optimiser's own points.

    Returns:
        ``[(sites, result)]`` per added electrode.

    Raises:
        FitError: empty, negative or repeated candidates.
    """
    cfg = OptimizeConfig(progress=False) if config is None else config
    cand = _candidates(candidates)
    memo: SiteResults = {} if cache is None else cache
    hooks = dict(make_init=make_init, cache=memo, callback=callback, select=select)
    chosen: tuple[int, ...] = ()
    path = []
    for _ in range(n_sites):
        best = None
        for c in cand:
            if c in chosen:
                continue
            sites = tuple(sorted(chosen + (c,)))
            res = optimized_site_set(problem, make_family, sites, cfg, **hooks)
            if best is None or res.score > best[1].score:
                best = (sites, res)
        if best is None:
            break
        chosen = best[0]
        path.append(best)
    return path


def exchange_sites(
    problem: DesignProblem,
    make_family: Callable[[tuple[int, ...]], StimulusFamily],
    candidates: Sequence[int],
    sites: Sequence[int],
    config: OptimizeConfig | None = None,
    max_rounds: int = 5,
    *,
    make_init: Callable[[StimulusFamily], Sequence[Tensor]] | None = None,
    cache: SiteResults | None = None,
    callback: Callable[[tuple[int, ...], DesignResult], None] | None = None,
    select: DesignProblem | None = None,
) -> tuple[tuple[int, ...], DesignResult, list[dict]]:
    """Fedorov-style exchange of electrode sites: each round tries every swap of one chosen
    electrode for one unused candidate (each set's stimulus optimised as in
    :func:`greedy_sites`) and takes the best swap that raises the criterion; it stops when
    none does or after ``max_rounds`` rounds. The result is never worse than the start.

    Args:
        problem, make_family, candidates, config, make_init, cache, callback, select: as in
            :func:`greedy_sites` (pass greedy's ``cache`` to start from its result for free).
        sites: the starting electrode set (distinct, among ``candidates``).
        max_rounds: the most swaps made (≥ 0).

    Returns:
        ``(sites, result, history)``: the final sorted sites, their :class:`DesignResult`,
        and per accepted round ``{"round", "sites", "value"}`` (round 0: the start; the
        value is the :attr:`~DesignResult.score` sets are compared by).

    Raises:
        FitError: bad candidates, sites not among them or repeated, a bad ``max_rounds``.

    Example:
        >>> path = greedy_sites(problem, make, (0, 1, 5), 2, cfg, cache=cache)
        >>> sites, res, hist = exchange_sites(problem, make, (0, 1, 5), path[-1][0], cfg,
        ...                                   cache=cache)
    """
    cfg = OptimizeConfig(progress=False) if config is None else config
    cand = _candidates(candidates)
    start = tuple(int(s) for s in sites)
    if not start:
        raise FitError("sites is empty; give the starting electrode set")
    if len(set(start)) != len(start):
        raise FitError(f"sites {list(start)} list a compartment twice; give distinct sites")
    if set(start) - set(cand):
        outside = sorted(set(start) - set(cand))
        raise FitError(f"sites {outside} are not among the candidates {list(cand)}")
    if isinstance(max_rounds, bool) or not (isinstance(max_rounds, int) and max_rounds >= 0):
        raise FitError(f"max_rounds = {max_rounds!r} must be an int ≥ 0")
    memo: SiteResults = {} if cache is None else cache

    def run(s):
        return optimized_site_set(
            problem, make_family, s, cfg,
            make_init=make_init, cache=memo, callback=callback, select=select,
        )  # fmt: skip

    current = tuple(sorted(start))
    best = run(current)
    history = [{"round": 0, "sites": current, "value": best.score}]
    for r in range(1, max_rounds + 1):
        top = None
        for out in current:
            for c in cand:
                if c in current:
                    continue
                s = tuple(sorted((set(current) - {out}) | {c}))
                res = run(s)
                if res.score > best.score and (top is None or res.score > top[1].score):
                    top = (s, res)
        if top is None:
            break
        current, best = top
        history.append({"round": r, "sites": current, "value": best.score})
    return current, best, history
