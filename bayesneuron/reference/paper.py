"""The Jones & Kording toy-model preset: cell, targets, currents, time grid, loss and designs.

Everything here reproduces the authors' published code exactly, quirks included:

* the 6-compartment chain with the paper's channels, ``V0 = −60`` mV;
* ground-truth conductances ``g = base · U(0.7, 1.3)`` from ``torch.manual_seed``;
* the "variablestep" currents with their exact random draws, so the paper's data are
  rebuilt bit for bit: the loss at the initial conductances is 34.256 (stim all) and 301.027
  (stim [0]), as the paper logged;
* the 48-point output grid ``linspace(0, 5, 50)[1:-1]`` that starts at 0.102 ms;
* the masked MSE divided by *all* entries and the 9 stim/rec designs.

Units: V mV, t ms, g mS/cm², current µA/cm².

Example:
    >>> from bayesneuron.reference import paper_currents, paper_ground_truth, paper_toy_cell
    >>> cell, gt = paper_toy_cell(), paper_ground_truth()
    >>> paper_currents(stim=[0]).values.shape
    torch.Size([100, 6, 48])
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from bayesneuron.cell import Cell
from bayesneuron.channels import paper_channels
from bayesneuron.errors import ParameterError, StimulusError
from bayesneuron.morphology.tree import paper_chain
from bayesneuron.protocol.stimulus import Stimulus

__all__ = [
    "PAPER_SEED",
    "PAPER_SEEDS",
    "PAPER_DT",
    "PAPER_N_BINS",
    "paper_toy_cell",
    "paper_time_grid",
    "paper_ground_truth",
    "paper_currents",
    "paper_loss",
    "paper_designs",
    "paper_design_grid",
    "paper_experiment",
    "PAPER_SITES",
]

PAPER_SEED = 20230619
"""The seed of every toy-model run (targets, currents and model)."""
PAPER_SEEDS = tuple(range(20230619, 20230629))
"""The authors' ``SEEDS`` list, 20230619 … 20230628."""
PAPER_DT = 0.1
"""Width of the current bins in ms."""
PAPER_N_BINS = 48
"""Current bins: ``int(T / dt) − 2`` with ``T = 5`` ms."""

PAPER_SITES = ([0], [0, 1], [0, -1], [0, 1, -1], None)  # the paper's stim/rec site lists

# Intel MKL's MCG31m1 generator: x ← a·x mod (2³¹ − 1).
_MCG31_A = 1132489760
_MCG31_M = 2**31 - 1


def paper_toy_cell() -> Cell:
    """The paper's toy cell: 6-compartment chain, paper channels, ``v0 = −60`` mV.

    Conductance defaults are the learner's initial values, ``g_na = 100`` and ``g_k = 45``
    mS/cm² in every compartment.
    """
    return Cell(paper_chain(), paper_channels(), v0=-60.0)


def paper_time_grid() -> np.ndarray:
    """The 48 output times ``linspace(0, 5, 50)[1:-1]`` in ms (float64).

    They are spaced 5/49 ≈ 0.10204 ms, not 0.1, and the simulation starts at the first one,
    0.10204 ms (a quirk of the original code).
    """
    return np.linspace(0.0, 5.0, 50)[1:-1]


def paper_ground_truth(seed: int = PAPER_SEED, n_comp: int = 6) -> dict[str, Tensor]:
    """Target conductances ``{"g_na", "g_k"}``, each ``[n_comp]`` float64, in mS/cm².

    ``torch.manual_seed(seed)``, then one float32 ``[2, n_comp]`` ``uniform_(0.7, 1.3)`` fill:
    row 0 × 100 is g_Na, row 1 × 45 is g_K, computed in float32 as the code does. The
    global torch RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u = torch.empty(2, n_comp, dtype=torch.float32).uniform_(0.7, 1.3)
    return {"g_na": (u[0] * 100.0).double(), "g_k": (u[1] * 45.0).double()}


def _torch_raw32(seed: int, n: int) -> np.ndarray:
    # The first n 32-bit outputs of torch's CPU generator after torch.manual_seed(seed): the
    # same MT19937 stream as numpy's legacy RandomState(seed), read without touching torch.
    return np.random.RandomState(seed).randint(0, 2**32, size=n, dtype=np.uint32)


def _mkl_multinomial(seeds: np.ndarray, n_bins: int, k: int) -> np.ndarray:
    """Sorted draws of ``torch.multinomial(arange(n_bins).float(), k, replacement=False)``.

    As computed by torch 2.1–2.4 on x86: one 32-bit draw seeds an MKL MCG31 stream, whose
    exponentials ``e_j = −ln(x_j / m)`` give the top-``k`` indices of ``w_j / e_j``. Returns
    ``[len(seeds), k]``.
    """
    x = seeds.astype(np.int64) % _MCG31_M
    x[x == 0] = 1
    xs = np.empty((len(x), n_bins), dtype=np.int64)
    for j in range(n_bins):
        xs[:, j] = x
        x = (_MCG31_A * x) % _MCG31_M
    e = (-np.log(xs / _MCG31_M)).astype(np.float32)
    q = np.arange(n_bins, dtype=np.float32) / e
    return np.sort(np.argsort(-q, axis=1, kind="stable")[:, :k], axis=1)


def _native_multinomial(seed: int, n_calls: int, n_bins: int, k: int) -> np.ndarray:
    w = torch.arange(n_bins, dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draws = [torch.multinomial(w, k, replacement=False) for _ in range(n_calls)]
    return np.sort(torch.stack(draws).numpy(), axis=1)


def _sites(sites: Sequence[int] | None, n_comp: int, what: str) -> np.ndarray:
    """Boolean mask ``[n_comp]`` of a paper site list (None = all; negative = from the end)."""
    mask = np.zeros(n_comp, dtype=bool)
    if sites is None:
        mask[:] = True
        return mask
    for i in sites:
        if not (isinstance(i, (int, np.integer)) and -n_comp <= i < n_comp):
            raise StimulusError(
                f"{what} compartment {i!r} does not exist: the cell has {n_comp} "
                f"(0–{n_comp - 1}, or −{n_comp}–−1 from the end)"
            )
        mask[i] = True
    return mask


def _check_current_args(n_change, i_max, seed, n_traces, n_comp, hazard_rate) -> None:
    n_bins = PAPER_N_BINS
    if not 1 <= n_change <= n_bins - 1:
        raise StimulusError(
            f"hazard_rate = {hazard_rate} gives {n_change} change points; need 1–{n_bins - 1} "
            f"(the paper's 0.05 gives 2)"
        )
    if i_max < 1:
        raise StimulusError(f"i_max = {i_max} must be ≥ 1 (levels are drawn from 0 … i_max−1)")
    if not 0 <= seed < 2**32:
        raise StimulusError(f"seed = {seed} must be in [0, 2³²)")
    for name, val in (("n_traces", n_traces), ("n_comp", n_comp)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise StimulusError(f"{name} = {val!r} must be an int ≥ 1")


def paper_currents(
    seed: int = PAPER_SEED,
    n_traces: int = 100,
    n_comp: int = 6,
    i_max: int = 20,
    stim: Sequence[int] | None = None,
    hazard_rate: float = 0.05,
    multinomial: str = "mkl",
) -> Stimulus:
    """The paper's "variablestep" currents, bit for bit.

    Per trace and compartment: 3 integer levels from ``{0 … i_max−1}`` and 2 sorted change
    points drawn with weights equal to their index (quirk 7: 0 is never drawn, late points are
    favoured); columns 0 and 47 are zero; then compartments outside ``stim`` are zeroed. Because
    every call re-seeds, a compartment gets the same current under every ``stim`` condition.

    The random draws follow the code: after seeding torch and Python's ``random``,
    (1) one unused ``torch.multinomial`` draw; (2) the levels, one ``random.choices(range(i_max),
    k=n_comp)`` per (trace, level), trace-major, filling ``levels[trace, :, level]``; (3) the
    change points, one ``torch.multinomial`` per (trace, compartment), trace-major. No global
    RNG state is touched.

    Args:
        seed: ``set_seed`` value (torch, numpy and Python ``random``).
        n_traces: samples (the paper's batch of 100).
        n_comp: compartments (6 for the toy, 184 for the test model).
        i_max: exclusive upper level (20 toy, 10 test model), µA/cm².
        stim: stimulated compartments, ``None`` for all; negative indices count from the end.
        hazard_rate: change points per bin; ``int(48 · hazard_rate)`` of them (2).
        multinomial: ``"mkl"`` reproduces the paper's draws (torch 2.1–2.4 on x86 computed
            ``torch.multinomial`` from one 32-bit draw through Intel MKL); ``"native"`` calls the
            installed torch's ``multinomial`` instead, whose draws depend on the torch version
            (torch ≥ 2.5 gives different currents and L0 = 36.2 rather than 34.256).

    Returns:
        A :class:`Stimulus` with values ``[n_traces, n_comp, 48]`` in µA/cm² (float64),
        ``dt = 0.1`` ms, ``t0 = 0``.

    Raises:
        StimulusError: for a ``stim`` site that does not exist, ``i_max < 1``, ``n_traces`` or
            ``n_comp`` < 1, a hazard rate giving no or more than 47 change points, or an
            unknown ``multinomial``.
    """
    n_bins = PAPER_N_BINS
    n_change = int(n_bins * hazard_rate)
    _check_current_args(n_change, i_max, seed, n_traces, n_comp, hazard_rate)
    mask = _sites(stim, n_comp, "stimulated")

    rng = random.Random(seed)  # == random.seed(seed) on the module's generator
    levels = np.zeros((n_traces, n_comp, n_change + 1))
    for s in range(n_traces):
        for c in range(n_change + 1):
            levels[s, :, c] = rng.choices(range(i_max), k=n_comp)

    n_calls = 1 + n_traces * n_comp  # the first multinomial draw is unused
    if multinomial == "mkl":
        cps = _mkl_multinomial(_torch_raw32(seed, n_calls), n_bins, n_change)
    elif multinomial == "native":
        cps = _native_multinomial(seed, n_calls, n_bins, n_change)
    else:
        raise StimulusError(f"multinomial = {multinomial!r}; use 'mkl' (the paper) or 'native'")
    cps = cps[1:].reshape(n_traces, n_comp, n_change)

    # Level j holds on [cp_j, cp_{j+1}): the segment of bin b is the number of cps ≤ b.
    seg = (np.arange(n_bins)[None, None, :, None] >= cps[:, :, None, :]).sum(-1)
    values = np.take_along_axis(levels, seg, axis=-1)
    values[..., 0] = 0.0
    values[..., -1] = 0.0
    values[:, ~mask, :] = 0.0
    return Stimulus(torch.from_numpy(values), dt=PAPER_DT, t0=0.0, unit="uA/cm2")


def paper_loss(v_hat: Tensor, v_obs: Tensor, rec: Sequence[int] | None = None) -> Tensor:
    """The paper's loss: squared error on recorded compartments over ALL entries.

    ``L = Σ_{trace, i ∈ rec, time} (v̂ − v)² / (n_trace · n_comp · n_time)`` in mV²: the
    denominator counts every compartment, so the loss shrinks with fewer recording sites
    (quirk 8). This is ``nn.MSELoss()(v̂ · r, v · r)`` with the 0/1 recording mask ``r``.

    Args:
        v_hat: simulated voltages ``[sample…, trace, comp, time]`` in mV.
        v_obs: observed voltages, broadcastable to ``v_hat``.
        rec: recorded compartments, ``None`` for all; negative indices count from the end.

    Returns:
        The loss per leading sample index, shape ``[sample…]`` (a scalar without them).
    """
    if v_hat.ndim < 3:
        raise ParameterError(
            f"v_hat has shape {tuple(v_hat.shape)}; expected [..., trace, comp, time]"
        )
    sq = (v_hat - v_obs) ** 2
    if rec is not None:
        keep = torch.as_tensor(_sites(rec, sq.shape[-2], "recorded"), device=sq.device)
        sq = sq * keep[:, None].to(sq.dtype)
    return sq.mean(dim=(-3, -2, -1))


def paper_designs() -> list[tuple[list[int] | None, list[int] | None]]:
    """The 9 toy conditions ``(stim, rec)`` in the paper's run order.

    Rec all with stim [0], [0,1], [0,−1], [0,1,−1]; then stim all with rec [0], [0,1], [0,−1],
    [0,1,−1], all. ``None`` means all compartments.
    """
    return [(s, r) for s, r in paper_design_grid() if s is None or r is None]


def paper_design_grid() -> list[tuple[list[int] | None, list[int] | None]]:
    """The full 5 × 5 ``(stim, rec)`` grid, stim-major, over [0], [0,1], [0,−1], [0,1,−1], all."""

    def fresh(x):
        return None if x is None else list(x)

    return [(fresh(s), fresh(r)) for s in PAPER_SITES for r in PAPER_SITES]


def preset_priors(priors):
    """A preset's ``priors`` argument as :class:`NeuronModel` takes it: ``"paper"`` is the
    paper's target distribution ``base · U(0.7, 1.3)``; anything else passes through."""
    from bayesneuron.inference.priors import ScaledUniformPrior

    return ScaledUniformPrior(0.7, 1.3) if isinstance(priors, str) and priors == "paper" else priors


def paper_experiment(
    design=None,
    *,
    n_traces: int = 100,
    seed: int = PAPER_SEED,
    noise_sigma: float = 0.0,
    sigma: float = 1.0,
    priors="paper",
    solver=None,
    data_solver=None,
    dtype: torch.dtype = torch.float64,
    device=None,
):
    """The paper's toy experiment under ``design``: ``(model, v_obs, truth)``.

    The cell, currents (stimulated sites only), 48-point grid and targets are the paper's
    (seed 20230619). ``priors="paper"`` puts the paper's target distribution
    ``base · U(0.7, 1.3)`` on g_Na and g_K; any other value goes to :class:`NeuronModel`.
    The data are simulated by ``data_solver`` (default: the model's solver) plus noise of sd
    ``noise_sigma`` mV; ``sigma`` is the model's assumed noise sd.
    """
    from bayesneuron.inference.model import NeuronModel
    from bayesneuron.inference.synthetic import synthetic_data
    from bayesneuron.protocol.design import Design

    design = Design() if design is None else design
    cell = paper_toy_cell()
    stim = paper_currents(seed, n_traces=n_traces)
    model = NeuronModel(
        cell,
        stim,
        paper_time_grid(),
        design,
        priors=preset_priors(priors),
        sigma=sigma,
        solver=solver,
        dtype=dtype,
        device=device,
    )
    truth = {k: v.numpy() for k, v in paper_ground_truth(seed).items()}
    v_obs = synthetic_data(model, truth, noise_sigma=noise_sigma, seed=seed + 1, solver=data_solver)
    return model, v_obs, truth
