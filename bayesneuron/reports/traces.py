"""Voltage-trace figures."""

from __future__ import annotations

from collections.abc import Sequence

from bayesneuron.reports.figures import colormap, subplots
from bayesneuron.simulation.api import Trace


def plot_traces(
    trace: Trace,
    traces: Sequence[int] = (0,),
    compartments: Sequence[int] | None = None,
    title: str | None = None,
):
    """Membrane voltage against time, one panel per selected trace.

    Args:
        trace: a simulation result (``v`` of shape ``[trace, comp, time]``; sample dims are
            not plotted — index them away first).
        traces: which traces (stimulus rows) to draw.
        compartments: which compartments; default all (at most 12 are drawn).
        title: figure title.

    Returns:
        The matplotlib ``Figure`` (never shown; save it with ``fig.savefig``).
    """
    v = trace.v.detach().cpu()
    if v.ndim != 3:
        raise ValueError(f"plot_traces wants v [trace, comp, time]; got shape {tuple(v.shape)}")
    comps = list(range(min(v.shape[1], 12))) if compartments is None else list(compartments)
    t = trace.t.detach().cpu().numpy()
    fig, axes = subplots(len(traces), 1, figsize=(7, 2.4 * len(traces)), sharex=True, squeeze=False)
    cmap = colormap("viridis", max(len(comps), 2))
    for ax, k in zip(axes[:, 0], traces):
        for j, c in enumerate(comps):
            ax.plot(t, v[k, c].numpy(), color=cmap(j), lw=1.2, label=trace.names[c])
        ax.set_ylabel(f"trace {k}\nV (mV)")
    axes[-1, 0].set_xlabel("t (ms)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles, labels, fontsize=7, ncol=min(len(comps), 6), loc="lower center", frameon=False
    )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
