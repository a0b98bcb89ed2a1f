"""Time grids of the fixed-step schemes, the injected currents as the backends take them, and
numpy-rule shape broadcasting."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from bayesneuron.errors import SolverError
from bayesneuron.protocol.stimulus import Stimulus

__all__ = ["Currents", "broadcast_shapes", "currents", "step_grid"]


class Currents(NamedTuple):
    """Injected currents as every backend takes them: only the stimulated compartments.

    Each backend scatters ``values[bin]`` into its per-step current buffer at ``sites``
    (zero elsewhere); no ``[bins, comp]`` array is ever built, so one electrode on a
    1000-compartment cell costs one row.

    Attributes:
        values: current densities ``[bins, …, trace, site]`` (µA/cm²), time first.
        sites: the compartment of each site column ``[site]`` (int64, distinct).
    """

    values: Tensor
    sites: Tensor


def currents(stimulus: Stimulus, morph, dtype, device) -> Currents:
    """The :class:`Currents` of a checked ``stimulus`` on ``morph`` (nA → µA/cm² by area)."""
    sites = stimulus.site_index(morph.n_comp)
    vals = stimulus.values.to(device=device, dtype=dtype)
    if stimulus.unit == "nA":
        area = torch.tensor(morph.area[list(sites)], dtype=dtype, device=device)
        vals = vals * (1e-3 / area)[:, None]
    return Currents(vals.movedim(-1, 0), torch.tensor(sites, dtype=torch.int64, device=device))


def broadcast_shapes(*shapes) -> torch.Size:
    """``torch.broadcast_shapes`` by numpy's rules (the same), without importing sympy as
    torch's own does on its first call. Raises ``ValueError`` where the shapes do not
    broadcast."""
    return torch.Size(np.broadcast_shapes(*(tuple(x) for x in shapes)))


def channel_param_grads(grad: Tensor, batch, n_comp: int, shapes, needs) -> list:
    """The kernels' ``∂L/∂(g, e)`` ``[B, channel, 2, comp]`` as one gradient per parameter
    tensor ``[g_0, e_0, g_1, …]`` of shape ``shapes[i]`` (summed over the dims it was
    broadcast along), ``None`` where ``needs[i]`` is false."""
    out = []
    for idx, shape in enumerate(shapes):
        if not needs[idx]:
            out.append(None)
            continue
        gx = grad[:, idx // 2, idx % 2].reshape(tuple(batch) + (n_comp,))
        out.append(gx.sum_to_size(tuple(shape[:-1]) + (1, n_comp)).reshape(shape))
    return out


def step_grid(stimulus: Stimulus, t_eval: np.ndarray, dt_max: float):
    """Step boundaries through every output time and bin edge; sub-steps of at most ``dt_max``.

    Returns ``(dts [K], t_mid [K], is_output [K])`` where ``is_output[k]`` marks steps ending
    on an output time.
    """
    t0, t1 = t_eval[0], t_eval[-1]
    edges = stimulus.edges()
    points = np.union1d(t_eval, edges[(edges > t0) & (edges < t1)])
    gaps = np.diff(points)
    keep = np.concatenate([[True], gaps > 1e-9 * max(1.0, abs(t1))])
    points = points[keep]  # merge near-duplicates (an edge that is also an output time)
    points[-1] = t1
    # an output time within the tolerance of a point (its neighbours in t_eval are the nearest)
    j = np.clip(np.searchsorted(t_eval, points), 1, len(t_eval) - 1)
    near = np.minimum(np.abs(points - t_eval[j - 1]), np.abs(points - t_eval[j]))
    is_out_point = np.isin(points, t_eval) | (near <= 1e-9 * max(1.0, abs(t1)))
    n_sub = np.maximum(1, np.ceil(np.diff(points) / dt_max - 1e-9).astype(np.int64))
    dts = np.repeat(np.diff(points) / n_sub, n_sub)
    first = np.repeat(np.cumsum(n_sub) - n_sub, n_sub)  # each sub-step's index in its gap
    t_start = np.repeat(points[:-1], n_sub) + (np.arange(len(dts)) - first) * dts
    is_output = np.zeros(len(dts), dtype=bool)
    is_output[np.cumsum(n_sub) - 1] = is_out_point[1:]
    if is_output.sum() != len(t_eval) - 1:
        raise SolverError("internal error: output times not all on step boundaries")
    return dts, t_start + dts / 2, is_output
