"""The channels of a cell as one set of states, on the torch backends' internal layouts."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Kinetics", "exp_euler", "kinetics", "lay_out"]


class Kinetics:
    """The channels of a cell as one set of states; parameters are passed in (``local``)."""

    def __init__(self, channels):
        self.channels = channels
        self.keys = [(i, s) for i, ch in enumerate(channels) for s in ch.state_names]

    def lay_out(self, p: dict[str, Tensor], index: Tensor | None, node_first=None) -> list:
        """Per channel, ``{local name: tensor}`` on the internal layout (see :func:`lay_out`)."""
        return [
            {k: lay_out(p[f"{k}_{ch.name}"], index, node_first) for k in ch.param_defaults()}
            for ch in self.channels
        ]

    def init(self, v: Tensor, local) -> list[Tensor]:
        states = [ch.init_gates(v, q) for ch, q in zip(self.channels, local)]
        return [states[i][s].expand_as(v) for i, s in self.keys]

    def gates(self, v: Tensor, local) -> list[tuple[Tensor, Tensor]]:
        g = [ch.gates(v, q) for ch, q in zip(self.channels, local)]
        return [g[i][s] for i, s in self.keys]

    def conductance(self, x: list[Tensor], local) -> tuple[Tensor, Tensor]:
        """Total conductance ``g`` (mS/cm²) and ``Σ g·e`` (µA/cm²)."""
        per = [{} for _ in self.channels]
        for (i, s), xi in zip(self.keys, x):
            per[i][s] = xi
        g_tot = ge_tot = None
        for ch, q, xs in zip(self.channels, local, per):
            g, e = ch.conductance(xs, q)
            g_tot = g if g_tot is None else g_tot + g
            ge_tot = g * e if ge_tot is None else ge_tot + g * e
        return g_tot, ge_tot


_KINETICS: dict = {}


def kinetics(channels) -> Kinetics:
    # One object per channel set (channels are frozen, hashable dataclasses).
    if channels not in _KINETICS:
        _KINETICS[channels] = Kinetics(channels)
    return _KINETICS[channels]


def lay_out(x: Tensor, index: Tensor | None, node_first: int | None) -> Tensor:
    """``[sample…, comp]`` → ``[sample…, 1, nodes]``, or ``[nodes, 1…, sample…, 1]`` with
    ``node_first`` batch dims; junction nodes (``index == n_comp``) get 0."""
    if index is not None:
        x = torch.cat([x, x.new_zeros(x.shape[:-1] + (1,))], -1).index_select(-1, index)
    if node_first is None:
        return x.unsqueeze(-2)
    x = x.movedim(-1, 0).unsqueeze(-1)
    return x.reshape(x.shape[:1] + (1,) * (node_first + 1 - x.ndim) + x.shape[1:])


def exp_euler(gates, x, neg_h) -> list[Tensor]:
    # x(t+h) = x_inf + (x − x_inf)·exp(−h/τ): exact for frozen voltage.
    return [
        torch.lerp(inf, xi, torch.exp(tau.reciprocal() * neg_h)) for (inf, tau), xi in zip(gates, x)
    ]
