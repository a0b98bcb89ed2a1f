"""Choosing sweeps from a pool of candidate stimuli: greedy, then Fedorov exchange, on the
Fisher information of each candidate trace (:func:`~.objective.exact_fisher`), scored by the
design problem's criterion and robustness (mean or worst over its θ points).

Information adds over independent sweeps, so the pool's per-trace Fisher information is
computed once and every candidate set is scored by summing it: thousands of candidates cost
one batched sensitivity run. Useful to pick the ``k`` most informative sweeps among
protocols an amplifier already delivers, or as a start for :func:`~.optimize.optimize_stimulus`.

Example:
    >>> f = exact_fisher(problem, pool)          # [n, N, P, P]: N candidate traces
    >>> chosen = select_traces(problem, f, k=5)  # indices into the pool
    >>> set_value(problem, f, chosen)            # the criterion of those 5 together
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.optimal_design.objective import DesignProblem, criterion_values

__all__ = ["select_traces", "set_value"]


def _robust(problem: DesignProblem, per: Tensor) -> Tensor:
    """Mean or worst over the θ axis (the last) of ``per``, as ``problem.robust`` says."""
    return per.mean(-1) if problem.robust == "mean" else per.min(-1).values


def set_value(problem: DesignProblem, f_trace: Tensor, chosen: Sequence[int]) -> float:
    """The robust criterion of the traces ``chosen`` together (``f_trace`` ``[n, N, P, P]``)."""
    total = f_trace[:, list(chosen)].sum(1)
    return float(_robust(problem, criterion_values(problem, total)))


def _with_each(problem: DesignProblem, base: Tensor, f_trace: Tensor, chunk: int) -> Tensor:
    """The robust criterion of ``base`` (``[n, P, P]``) plus each candidate in turn ``[N]``."""
    out = []
    for block in f_trace.split(chunk, dim=1):
        total = base[None] + block.transpose(0, 1)  # [chunk, n, P, P]
        out.append(_robust(problem, criterion_values(problem, total)))
    return torch.cat(out)


def _check(f_trace: Tensor, k: int) -> None:
    if f_trace.ndim != 4 or f_trace.shape[-1] != f_trace.shape[-2]:
        raise FitError(
            f"f_trace must be [n, N, P, P] Fisher information, not {tuple(f_trace.shape)}"
        )
    if not 1 <= k <= f_trace.shape[1]:
        raise FitError(f"k = {k} traces cannot be chosen from a pool of {f_trace.shape[1]}")


def select_traces(
    problem: DesignProblem,
    f_trace: Tensor,
    k: int,
    *,
    exchange: bool = True,
    max_rounds: int = 10,
    chunk: int = 256,
) -> list[int]:
    """The ``k`` traces of a pool whose summed Fisher information maximises ``problem``'s
    robust criterion: greedy, one trace at a time, then (``exchange``) swaps of one chosen
    trace for the best unchosen one until no swap improves the set or ``max_rounds`` passes.
    Without replacement; the result of the exchange is a local optimum under single swaps.

    Args:
        problem: supplies the criterion, prior variances and robustness (its θ points must be
            those ``f_trace`` was computed at).
        f_trace: per-trace Fisher information ``[n, N, P, P]`` (n θ points, N candidates).
        k: traces to choose, ``1 ≤ k ≤ N``.
        chunk: candidates scored at once (memory ``≈ chunk · n · P²`` numbers).

    Returns:
        indices into the pool, in the order chosen (swapped ones in place).
    """
    _check(f_trace, k)
    zero = torch.zeros_like(f_trace[:, 0])
    chosen: list[int] = []
    for _ in range(k):
        base = f_trace[:, chosen].sum(1) if chosen else zero
        vals = _with_each(problem, base, f_trace, chunk)
        vals[chosen] = -torch.inf
        chosen.append(int(vals.argmax()))
    if not exchange:
        return chosen
    current = set_value(problem, f_trace, chosen)
    for _ in range(max_rounds):
        improved = False
        for pos in range(k):
            rest = chosen[:pos] + chosen[pos + 1 :]
            base = f_trace[:, rest].sum(1) if rest else zero
            vals = _with_each(problem, base, f_trace, chunk)
            vals[rest] = -torch.inf
            best = int(vals.argmax())
            gain = float(vals[best]) - current
            if best != chosen[pos] and gain > 1e-12 * max(1.0, abs(current)):
                chosen[pos], current, improved = best, float(vals[best]), True
        if not improved:
            break
    return chosen
