"""Figures and reports: the only part of bayesneuron that imports matplotlib, and ArviZ (but
for :func:`bayesneuron.inference.diagnostics.psis_khat`, which calls ``arviz.psislw``).

Figures are bare ``matplotlib.figure.Figure`` objects, returned and never shown: no backend is
chosen and pyplot is not used (:mod:`.figures`). The ArviZ functions (:mod:`.arviz`) are
imported on first use, as importing ArviZ is slow.
"""

from .figures import subplots
from .fits import plot_design_heatmap, plot_loss_and_gte, plot_trajectories
from .html import Figure, Table, Text, write_html_report
from .morphology_plots import plot_morphology
from .posterior_plots import (
    plot_contraction_heatmap,
    plot_forest_designs,
    plot_pairs,
    plot_posterior_vs_prior,
    plot_ppc_traces,
)
from .recording_plots import plot_recording_predictive
from .traces import plot_traces

_ARVIZ = (
    "load_inference_data",
    "save_inference_data",
    "stack_channels",
    "summary",
    "to_inference_data",
)

__all__ = [
    "subplots",
    "Figure",
    "Table",
    "Text",
    "load_inference_data",
    "plot_contraction_heatmap",
    "plot_design_heatmap",
    "plot_forest_designs",
    "plot_loss_and_gte",
    "plot_morphology",
    "plot_pairs",
    "plot_posterior_vs_prior",
    "plot_recording_predictive",
    "plot_ppc_traces",
    "plot_traces",
    "plot_trajectories",
    "save_inference_data",
    "stack_channels",
    "summary",
    "to_inference_data",
    "write_html_report",
]


def __getattr__(name: str):
    if name in _ARVIZ:
        from . import arviz

        return getattr(arviz, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
