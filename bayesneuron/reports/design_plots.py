"""Figures of design rankings in expectation (``ranking_expected.csv`` rows)."""

from __future__ import annotations

from collections.abc import Sequence

from bayesneuron.protocol.design import row_label
from bayesneuron.reports.figures import subplots

__all__ = ["plot_expected_ranking"]


def plot_expected_ranking(rows: Sequence[dict], title: str = ""):
    """One panel per criterion: each design's mean ± sd over the draws, best mean rank at the
    top, annotated with ``p_best`` (the fraction of draws where it is the best design) and its
    mean rank.

    Args:
        rows: records with ``stim, rec, criterion, mean, sd, rank_mean, p_best``.
        title: figure title.

    Returns:
        A matplotlib ``Figure`` (not shown).
    """
    crits = list(dict.fromkeys(r["criterion"] for r in rows))
    n_des = max(sum(r["criterion"] == c for r in rows) for c in crits)
    long = max(len(row_label(r)) for r in rows) > 32  # compartment names
    if long:  # panels stacked, labels wrapped at the bar
        fig, axes = subplots(
            len(crits), 1, figsize=(10.0, len(crits) * (0.8 + 0.42 * n_des)), squeeze=False
        )
        axes = axes.T
    else:
        fig, axes = subplots(
            1, len(crits), figsize=(4.2 * len(crits), 1.2 + 0.24 * n_des), squeeze=False
        )
    for ax, crit in zip(axes[0], crits):
        sub = sorted((r for r in rows if r["criterion"] == crit), key=lambda r: -r["rank_mean"])
        y = range(len(sub))
        means = [float(r["mean"]) for r in sub]
        ax.errorbar(means, y, xerr=[float(r["sd"]) for r in sub], fmt="o", ms=3, capsize=2)
        sep = "|\n" if long else "|"
        ax.set_yticks(list(y), [f"{r['stim']}{sep}{r['rec']}" for r in sub], fontsize=7)
        for i, r in enumerate(sub):
            note = f"rank {float(r['rank_mean']):.1f}"
            if float(r["p_best"]) > 0:
                note += f", p_best {float(r['p_best']):.2f}"
            ax.annotate(
                note,
                (1.0, i),
                xycoords=("axes fraction", "data"),
                xytext=(3, 0),
                textcoords="offset points",
                fontsize=6,
                va="center",
            )
        ax.set(title=crit, xlabel="mean ± sd over draws")
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
