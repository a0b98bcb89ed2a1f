"""Exceptions raised at bayesneuron's boundaries.

Every error says what was wrong and how to fix it. All derive from ``ValueError`` so
callers that already catch ``ValueError`` keep working.
"""

__all__ = [
    "BayesneuronError",
    "MorphologyError",
    "ChannelError",
    "ParameterError",
    "StimulusError",
    "SolverError",
    "DesignError",
    "DataError",
    "FitError",
    "RecordingError",
]


class BayesneuronError(ValueError):
    """Base class of every user-facing bayesneuron error."""


class MorphologyError(BayesneuronError):
    """The compartment tree or its geometry is invalid."""


class ChannelError(BayesneuronError):
    """A channel definition or placement is invalid."""


class ParameterError(BayesneuronError):
    """Parameter values have the wrong name, shape or value."""


class StimulusError(BayesneuronError):
    """Injected currents have the wrong shape, units or values."""


class SolverError(BayesneuronError):
    """Solver settings or the requested time grid are invalid."""


class DesignError(BayesneuronError):
    """A stimulation/recording design names no or non-existent compartments."""


class DataError(BayesneuronError):
    """Observed data have the wrong shape or contain NaN/inf."""


class FitError(BayesneuronError):
    """A fit cannot start or continue (bad settings, a checkpoint that does not match)."""


class RecordingError(BayesneuronError):
    """A recording file cannot be read or written as asked, or its sweeps are invalid."""
