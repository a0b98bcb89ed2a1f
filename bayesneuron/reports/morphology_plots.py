"""A reconstructed cell drawn from its 3-D points, each section painted by a value (a
posterior contraction, a conductance) and the electrodes marked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .figures import colormap, subplots

__all__ = ["plot_morphology"]

_MARKERS = {"stim": ("v", "tab:red"), "rec": ("o", "tab:blue")}


def plot_morphology(
    sections: Sequence,
    values: Mapping[str, float] | Sequence[float],
    *,
    electrodes: Mapping[str, Sequence[str]] | None = None,
    ax=None,
    title: str = "",
    label: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "viridis",
    plane: str = "xy",
):
    """Draw ``sections`` projected on ``plane``, each painted by its value.

    Args:
        sections: :class:`~bayesneuron.geometry.Section` objects with 3-D ``points``
            (``bayesneuron.swc.read_swc_sections``).
        values: one value per section, by section name (``{"dend[16]": 0.93, …}``; sections
            missing from it are grey) or in the order of ``sections`` (NaN: grey).
        electrodes: marker groups, name → section names, drawn at each section's middle
            point; ``"stim"`` (red triangles) and ``"rec"`` (blue circles) have fixed styles.
        ax: axes to draw into (default: a new figure).
        title, label: axes title and colour-bar label.
        vmin, vmax, cmap: the colour scale.
        plane: two of ``"xyz"``, the projection.

    Returns:
        The ``Figure``.

    Example:
        >>> from importlib import resources
        >>> from bayesneuron.swc import read_swc_sections
        >>> swc = resources.files("bayesneuron") / "data" / "gidon2020_L23_171122005.swc"
        >>> secs = read_swc_sections(swc)
        >>> fig = plot_morphology(secs, {"soma": 1.0}, electrodes={"rec": ["soma"]})
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    axes = ["xyz".index(c) for c in plane]
    if len(axes) != 2 or axes[0] == axes[1]:
        raise ValueError(f"plane = {plane!r}; give two of 'xyz', e.g. 'xy'")
    names = [s.name for s in sections]
    vals = _section_values(values, names)
    if ax is None:
        fig, ax = subplots(figsize=(6.5, 6.5))
    fig = ax.figure
    norm, cm = Normalize(vmin, vmax), colormap(cmap)
    segs, colors, widths = [], [], []
    for sec, v in zip(sections, vals):
        p = np.asarray(sec.points, dtype=float)
        xy = p[:, axes]
        segs += [xy[i : i + 2] for i in range(len(xy) - 1)]
        c = (0.8, 0.8, 0.8, 1.0) if not np.isfinite(v) else cm(norm(v))
        colors += [c] * (len(xy) - 1)
        widths += np.clip(0.5 * (p[:-1, 3] + p[1:, 3]) * 0.35, 0.4, 6.0).tolist()
    ax.add_collection(LineCollection(segs, colors=colors, linewidths=widths, capstyle="round"))
    ax.autoscale_view()
    ax.set_aspect("equal")
    ax.set_xlabel(f"{plane[0]} (µm)")
    ax.set_ylabel(f"{plane[1]} (µm)")
    _draw_electrodes(ax, sections, names, electrodes or {}, axes)
    if electrodes:
        ax.legend(loc="upper right", fontsize=8)
    fig.colorbar(ScalarMappable(norm, cm), ax=ax, label=label, shrink=0.7)
    ax.set_title(title)
    return fig


def _section_values(values, names: list[str]) -> np.ndarray:
    """One value per section name (NaN where a mapping has none)."""
    if isinstance(values, Mapping):
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"values name sections the cell does not have: {unknown[:5]}")
        return np.array([values.get(n, np.nan) for n in names], dtype=float)
    vals = np.asarray(values, dtype=float)
    if vals.shape != (len(names),):
        raise ValueError(f"values has shape {vals.shape}; expected ({len(names)},)")
    return vals


def _draw_electrodes(ax, sections, names: list[str], electrodes: Mapping, axes) -> None:
    """Markers at the middle point of each electrode's section."""
    for group, secs in (electrodes or {}).items():
        marker, color = _MARKERS.get(group, ("s", "k"))
        pts = []
        for n in secs:
            if n not in names:
                raise ValueError(f"electrode section {n!r} is not a section of the cell")
            p = np.asarray(sections[names.index(n)].points, dtype=float)
            pts.append(p[len(p) // 2, axes])
        if pts:
            pts = np.asarray(pts)
            ax.scatter(  # a recording ring is larger and below, so a stimulus shows on it
                pts[:, 0],
                pts[:, 1],
                marker=marker,
                s=130 if group == "rec" else 60,
                c=color,
                edgecolors="k",
                linewidths=0.6,
                zorder=3 if group == "rec" else 4,
                label=group,
            )
