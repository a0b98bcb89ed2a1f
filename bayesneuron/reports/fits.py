"""Figures of MAP fits, in the spirit of the paper's Figures 2–3."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bayesneuron.inference.fit import MapFit
from bayesneuron.protocol.design import Design
from bayesneuron.reports.figures import colormap, subplots


def plot_loss_and_gte(fits: Sequence[MapFit], title: str = ""):
    """Loss (mean squared error over recorded entries, log scale), GTE_Na and GTE_K against
    iteration, one line per design (the best start of each)."""
    names = [k for k in fits[0].free][:2]
    fig, axes = subplots(1, 1 + len(names), figsize=(4.2 * (1 + len(names)), 3.6))
    cmap = colormap("viridis", max(len(fits), 2))
    for i, f in enumerate(fits):
        kw = dict(color=cmap(i), lw=1.4, label=f.design)
        axes[0].semilogy(np.maximum(f.history["mse"][:, f.best], 1e-16), **kw)
        for ax, k in zip(axes[1:], names):
            if f"gte_{k}" in f.history:
                ax.semilogy(np.maximum(f.history[f"gte_{k}"][:, f.best], 1e-12), **kw)
    axes[0].set(xlabel="iteration", ylabel="MSE on recorded sites (mV²)", title="loss")
    for ax, k in zip(axes[1:], names):
        ax.set(xlabel="iteration", ylabel=f"GTE {k} (mS/cm²)", title=f"ground-truth error {k}")
    axes[-1].legend(fontsize=7, title="stim|rec", title_fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_trajectories(fit: MapFit, title: str = "", max_lines: int = 12):
    """Per-compartment parameter trajectories (best start) against dashed ground truth; with
    more than ``max_lines`` compartments, each compartment's error ``g − g_true`` (faint)
    and the ground-truth error (mean |g − g_true|, bold) instead."""
    names = list(fit.free)
    fig, axes = subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    colors = colormap("tab10")
    for ax, k in zip(axes[0], names):
        traj = fit.history[k][:, fit.best]  # [iteration, comp]
        if traj.shape[1] > max_lines and fit.truth is not None:
            err = traj - np.asarray(fit.truth[k])[None, :]
            ax.plot(err, color="0.6", lw=0.4, alpha=0.5)
            ax.plot(np.abs(err).mean(1), color="k", lw=2.0, label="mean |error| (GTE)")
            ax.axhline(0.0, color="k", ls="--", lw=0.8)
            ax.set(xlabel="iteration", ylabel=f"{k} − truth (mS/cm²)", title=k)
            ax.legend(fontsize=7)
            continue
        for c in range(traj.shape[1]):
            ax.plot(traj[:, c], color=colors(c % 10), lw=1.3, label=f"comp {c}")
            if fit.truth is not None:
                ax.axhline(fit.truth[k][c], color=colors(c % 10), ls="--", lw=0.9)
        ax.set(xlabel="iteration", ylabel=f"{k} (mS/cm²)", title=k)
        if traj.shape[1] <= max_lines:
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title or f"{fit.design} ({fit.protocol}); dashed: ground truth")
    fig.tight_layout()
    return fig


def plot_design_heatmap(values: dict[str, float], site_sets: Sequence, label: str, title: str):
    """A stim × rec grid of one number per design (e.g. final GTE or contraction)."""
    from bayesneuron.protocol.design import format_sites

    keys = [format_sites(Design(s).stim) for s in site_sets]
    grid = np.full((len(keys), len(keys)), np.nan)
    for i, s in enumerate(keys):
        for j, r in enumerate(keys):
            grid[i, j] = values.get(f"{s}|{r}", np.nan)
    fig, ax = subplots(figsize=(5.2, 4.4))
    im = ax.imshow(grid, cmap="magma_r")
    for i in range(len(keys)):
        for j in range(len(keys)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(len(keys)), keys, rotation=30)
    ax.set_yticks(range(len(keys)), keys)
    ax.set(xlabel="recorded", ylabel="stimulated", title=title)
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    return fig
