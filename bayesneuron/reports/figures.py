"""Figures without pyplot: no backend is chosen, no figure is registered or shown.

:func:`subplots` is ``pyplot.subplots`` on a bare :class:`matplotlib.figure.Figure` (which
renders through Agg when saved): the library never touches matplotlib's global state, the
caller's backend stays whatever the caller chose, and a figure is freed when it is no longer
referenced (no ``plt.close`` needed). In a notebook, display one with ``display(fig)`` or by
ending a cell with it. matplotlib itself is imported on first use (it registers exit hooks).
"""

from __future__ import annotations

__all__ = ["colormap", "subplots"]


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, **kw):
    """``(Figure, axes)`` as ``pyplot.subplots`` returns them, without pyplot."""
    from matplotlib.figure import Figure  # on first use: importing matplotlib is slow

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def colormap(name: str, n: int | None = None):
    """``pyplot.get_cmap(name, n)`` without pyplot: the colormap, resampled to ``n`` colours."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return cmap if n is None else cmap.resampled(n)
