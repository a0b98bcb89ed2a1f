"""A cell: a morphology, the channels in its membrane, and per-compartment parameter values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bayesneuron.channels import Channel
from bayesneuron.errors import ChannelError, MorphologyError, ParameterError
from bayesneuron.morphology.tree import Morphology

__all__ = ["Cell"]


@dataclass(frozen=True, eq=False)
class Cell:
    """An immutable cell description.

    Every channel is present in every compartment; a conductance of 0 removes it locally.

    Args:
        morphology: the compartment tree.
        channels: channel instances with distinct names.
        params: overrides of channel defaults, ``{"g_na": value}`` with a scalar or one value
            per compartment ``[n_comp]`` (units of the channel: mS/cm², mV).
        v0: initial membrane voltage in mV (gates start at their steady state there).

    Example:
        >>> from bayesneuron import Cell, chain, hh_channels
        >>> cell = Cell(chain(3), hh_channels(), params={"g_k": [36.0, 30.0, 20.0]})
    """

    morphology: Morphology
    channels: tuple[Channel, ...]
    params: Mapping[str, np.ndarray] = field(default_factory=dict)
    v0: float = -65.0

    def __post_init__(self):
        if not isinstance(self.morphology, Morphology):
            raise MorphologyError(
                f"morphology must be a bayesneuron.Morphology, got {type(self.morphology).__name__}; "
                "build one with chain(n), Morphology.from_parents(...), from_sections(...) or "
                "load_swc(path)"
            )
        if isinstance(self.channels, Channel):
            raise ChannelError(
                f"channels must be a list of Channel instances; got one {self.channels!r} — "
                "wrap it in a list: [channel]"
            )
        channels = tuple(self.channels)
        object.__setattr__(self, "channels", channels)
        for ch in channels:
            if not isinstance(ch, Channel):
                raise ChannelError(f"{ch!r} is not a Channel; subclass bayesneuron.Channel")
        names = [ch.name for ch in channels]
        if len(set(names)) != len(names) or any(not n for n in names):
            raise ChannelError(
                f"channel names must be non-empty and distinct; got {names} — give each "
                "instance its own name=…"
            )
        n = self.morphology.n_comp
        values: dict[str, np.ndarray] = {}
        for ch in channels:
            for local, default in ch.param_defaults().items():
                values[f"{local}_{ch.name}"] = np.full(n, float(default))
        for key, val in dict(self.params).items():
            if key not in values:
                raise ParameterError(f"unknown parameter {key!r}; this cell has {sorted(values)}")
            values[key] = _per_compartment(key, val, n)
        for arr in values.values():
            arr.setflags(write=False)
        object.__setattr__(self, "params", values)
        if isinstance(self.v0, bool) or not (
            isinstance(self.v0, (int, float, np.integer, np.floating)) and np.isfinite(self.v0)
        ):
            raise ParameterError(f"v0 = {self.v0!r} mV must be a finite number")

    @property
    def n_comp(self) -> int:
        """Number of compartments."""
        return self.morphology.n_comp

    @property
    def param_names(self) -> tuple[str, ...]:
        """All parameter names (``g_na``, ``e_na``, …)."""
        return tuple(self.params)

    @property
    def all_param_names(self) -> tuple[str, ...]:
        """What a model may infer: :attr:`param_names`, then ``cm`` and, on cells built from
        sections (with ``morphology.ra``), ``ra``."""
        extra = ("cm", "ra") if self.morphology.ra is not None else ("cm",)
        return self.param_names + extra

    def value(self, name: str) -> np.ndarray:
        """Per-compartment values ``[n_comp]`` of a parameter: a channel's (``g_na`` mS/cm²,
        ``e_na`` mV, …) or the morphology's ``cm`` (µF/cm²) and ``ra`` (Ω·cm)."""
        if name in self.params:
            return self.params[name]
        if name in self.all_param_names:
            return getattr(self.morphology, name)
        raise ParameterError(
            f"unknown parameter {name!r}; this cell has {list(self.all_param_names)}"
        )

    def with_params(self, **params: float | Sequence[float]) -> Cell:
        """A copy with some parameter values replaced."""
        return Cell(self.morphology, self.channels, {**self.params, **params}, self.v0)


def _per_compartment(key: str, val, n: int) -> np.ndarray:
    try:
        arr = np.asarray(val, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError(
            f"{key} = {val!r} is not numeric; give a number or one value per compartment ({n},)"
        ) from None
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ParameterError(
            f"{key} has shape {arr.shape}; give a scalar or one value per compartment ({n},)"
        )
    if not np.all(np.isfinite(arr)):
        raise ParameterError(f"{key} contains non-finite values: {arr}")
    return arr.copy()
