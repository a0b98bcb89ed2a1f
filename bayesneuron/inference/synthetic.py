"""Synthetic experiments: ground truth drawn as in the paper, data simulated under a design.

Example:
    >>> from bayesneuron import NeuronModel, Design, paper_toy_cell, paper_currents, paper_time_grid
    >>> from bayesneuron.inference.synthetic import draw_truth, synthetic_data
    >>> cell = paper_toy_cell()
    >>> model = NeuronModel(cell, paper_currents(n_traces=4), paper_time_grid(), Design(rec=[0]))
    >>> truth = draw_truth(cell, model.free, seed=1)
    >>> synthetic_data(model, truth, noise_sigma=1.0, seed=2).shape
    torch.Size([4, 1, 48])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from bayesneuron.cell import Cell
from bayesneuron.errors import ParameterError
from bayesneuron.inference.model import NeuronModel
from bayesneuron.simulation.api import simulate

__all__ = ["draw_truth", "synthetic_data"]


def draw_truth(
    cell: Cell,
    free: Sequence[str] = ("g_na", "g_k"),
    *,
    low: float = 0.7,
    high: float = 1.3,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Ground truth ``base · U(low, high)`` per compartment, the paper's recipe (§3.1).

    One float32 ``[len(free), n_comp]`` uniform fill from a torch generator seeded with
    ``seed``, row ``i`` scaling ``cell.params[free[i]]``; for the paper's cell and seed this is
    exactly the paper's targets. The global RNG is not touched.
    """
    if not 0 <= low < high:
        raise ParameterError(f"need 0 ≤ low < high, got low = {low}, high = {high}")
    unknown = [k for k in free if k not in cell.params]
    if unknown:
        raise ParameterError(
            f"{unknown} are not parameters of this cell ({list(cell.param_names)})"
        )
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.empty(len(free), cell.n_comp, dtype=torch.float32).uniform_(low, high, generator=gen)
    return {
        k: (u[i] * torch.tensor(np.array(cell.params[k]), dtype=torch.float32)).double().numpy()
        for i, k in enumerate(free)
    }


def synthetic_data(
    model: NeuronModel,
    truth: Mapping[str, Sequence[float]],
    *,
    noise_sigma: float = 0.0,
    seed: int = 0,
    solver=None,
) -> Tensor:
    """Recorded voltages ``model.obs_shape`` at ``truth``, plus Gaussian noise of sd
    ``noise_sigma`` mV (seeded). ``solver`` overrides the model's (e.g. a finer reference
    solver, so the fit's own discretisation error is part of the test)."""
    if not (np.isfinite(noise_sigma) and noise_sigma >= 0):
        raise ParameterError(f"noise_sigma = {noise_sigma} must be finite and ≥ 0")
    missing = [k for k in model.free if k not in truth]
    if missing:
        raise ParameterError(
            f"truth lacks {missing}; give a value per compartment (per region where shared by "
            f"region) for every free parameter {list(model.free)}"
        )
    params = {}
    for k in model.free:
        try:
            params[k] = torch.as_tensor(np.array(truth[k], dtype=np.float64), dtype=model.dtype)
        except (TypeError, ValueError):
            raise ParameterError(f"truth[{k!r}] = {truth[k]!r} is not numeric") from None
    with torch.no_grad():
        v = simulate(
            model.cell,
            model.expand(params),
            model.stimulus,
            model.t_eval,
            solver or model.solver,
            dtype=model.dtype,
            device=model.device,
        ).v
    v = v.index_select(-2, torch.as_tensor(model.rec_index, device=v.device))
    if noise_sigma > 0:
        gen = torch.Generator().manual_seed(int(seed))
        v = v + noise_sigma * torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)
    return v
