"""Figures and reports: the only part of bayesneuron that imports matplotlib."""

from .fits import plot_design_heatmap, plot_loss_and_gte, plot_trajectories
from .traces import plot_traces

__all__ = ["plot_design_heatmap", "plot_loss_and_gte", "plot_trajectories", "plot_traces"]
