"""Figures and reports: the only part of bayesneuron that imports matplotlib."""

from .traces import plot_traces

__all__ = ["plot_traces"]
