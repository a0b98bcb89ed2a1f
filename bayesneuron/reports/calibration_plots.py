"""Figures of a simulation-based calibration (:class:`~bayesneuron.inference.calibration.SbcResult`):
rank histograms with the binomial band, and ECDF differences with their simultaneous band.

Both take the result, return a matplotlib ``Figure`` (one panel per parameter) and never call
``show()``.
"""

from __future__ import annotations

import math

import numpy as np

from bayesneuron.reports.figures import subplots

__all__ = ["ecdf_difference_figure", "rank_histogram_figure"]


def _grid(n: int, ncols: int, panel=(2.2, 1.7)):
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = subplots(
        nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False, sharex=True
    )
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _title(res, ax, i: int, extra: str) -> None:
    ax.set_title(f"{res.labels[i]}  {extra}", fontsize=8)
    ax.tick_params(labelsize=7)


def rank_histogram_figure(res, bins: int = 10, level: float = 0.99, ncols: int = 6):
    """Rank histograms, one panel per parameter, with the central ``level`` band of a bin's
    count under uniform ranks (``Binomial(n_ok, 1/bins)``, grey) and the χ² p-value.

    Args:
        res: an :class:`~bayesneuron.inference.calibration.SbcResult`.
        bins: equal bins over the ranks ``0 … n_draws``.
        level: coverage of the grey band per bin (not simultaneous over the bins).
        ncols: panels per row.

    Returns:
        The ``Figure``.
    """
    from scipy.stats import binom

    h, p = res.histogram(bins), res.uniformity_pvalues(bins)
    lo, hi = binom.ppf([(1 - level) / 2, (1 + level) / 2], res.n_ok, 1 / bins)
    fig, axes = _grid(len(res.labels), ncols)
    centres = np.arange(bins) + 0.5
    for i, ax in enumerate(axes[: len(res.labels)]):
        ax.axhspan(lo, hi, color="0.85", zorder=0)
        ax.axhline(res.n_ok / bins, color="0.5", lw=0.8)
        ax.bar(centres, h[i], width=0.9, color="C0")
        ax.set_xticks([])
        _title(res, ax, i, f"p={p[i]:.2g}")
    fig.suptitle(
        f"SBC rank histograms: {res.n_ok} runs, L = {res.n_draws} draws, {bins} bins, "
        f"grey: {level:.0%} binomial band",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def ecdf_difference_figure(res, alpha: float = 0.05, ncols: int = 6):
    """ECDF of the fractional ranks minus the uniform CDF, one panel per parameter, inside
    the simultaneous band of :meth:`~bayesneuron.inference.calibration.SbcResult.band`
    (level ``1 − alpha/P`` per parameter, grey). A curve leaving the band is drawn red.

    Returns:
        The ``Figure``.
    """
    z, diff = res.ecdf()
    _, lo, hi = res.band(alpha)
    inside = res.inside_band(alpha)
    fig, axes = _grid(len(res.labels), ncols)
    for i, ax in enumerate(axes[: len(res.labels)]):
        ax.fill_between(z, lo, hi, step="post", color="0.85", lw=0)
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.step(z, diff[i], where="post", color="C0" if inside[i] else "C3", lw=1.0)
        _title(res, ax, i, "inside" if inside[i] else "OUTSIDE")
    fig.suptitle(
        f"SBC ECDF difference: {res.n_ok} runs, simultaneous band 1 − {alpha}/"
        f"{len(res.labels)} per parameter",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
