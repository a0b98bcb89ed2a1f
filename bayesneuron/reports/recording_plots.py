"""Recorded sweeps against the model's posterior predictive: median and 90 % band."""

from __future__ import annotations

import numpy as np

from .figures import subplots

__all__ = ["plot_recording_predictive"]


def plot_recording_predictive(t, v_obs, band, sweeps, *, title: str = "", max_panels: int = 12):
    """One panel per sweep: the recording (black), the prediction's median (blue) and its 90 %
    band (shaded).

    Args:
        t: times ``[time]`` in ms.
        v_obs: recorded voltages ``[sweep, time]`` in mV.
        band: the prediction's 5 %, 50 % and 95 % quantiles ``[3, sweep, time]`` in mV.
        sweeps: the sweeps' numbers ``[sweep]``.
        title: the figure's title.
        max_panels: at most this many sweeps (the first ones).

    Returns:
        A matplotlib ``Figure``.
    """
    n = min(len(sweeps), max_panels)
    fig, axes = subplots(n, 1, figsize=(8, 1.6 * n + 0.6), sharex=True, squeeze=False)
    t = np.asarray(t)
    for j, ax in enumerate(axes[:, 0]):
        ax.fill_between(t, band[0][j], band[2][j], color="C0", alpha=0.3, lw=0, label="90 %")
        ax.plot(t, band[1][j], color="C0", lw=0.8, label="median")
        ax.plot(t, v_obs[j], color="k", lw=0.6, label="recorded")
        ax.set_ylabel(f"sweep {sweeps[j]}\nmV", fontsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("time (ms)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
