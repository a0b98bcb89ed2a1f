"""Several designs of one cell as one batch (problem ``q`` = start · D + design), and MAP
checkpoints: what both MAP protocols (:mod:`._paper_protocol`, :mod:`._lm`) simulate."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.inference.model import NeuronModel
from bayesneuron.protocol.stimulus import Stimulus
from bayesneuron.simulation.api import Reset, sensitivities, simulate

__all__ = ["Stack", "fingerprint", "save_checkpoint"]

CHECKPOINT_FORMAT = 3  # 2: the optimiser state of the paper's Adam; 3: LM in ParameterSpace's u


class Stack:
    """Several designs of one cell as one batch: problem ``q`` is (start, design)."""

    def __init__(self, models: Sequence[NeuronModel], data: Sequence):
        if not models:
            raise FitError("no models to fit")
        if len(models) != len(data):
            raise FitError(f"{len(models)} models but {len(data)} data sets")
        for m in models:
            if not isinstance(m, NeuronModel):
                raise FitError(
                    f"fit_map fits a bayesneuron.NeuronModel, got {type(m).__name__}; build one "
                    "with NeuronModel(cell, stimulus, t_eval, design) or paper_experiment(...)"
                )
        m0 = models[0]
        for m in models[1:]:
            same = (
                _same_cell(m.cell, m0.cell)
                and m.parametrisation.forms == m0.parametrisation.forms
                and np.array_equal(m.t_eval, m0.t_eval)
                and m.solver == m0.solver
                and m.dtype == m0.dtype
                and m.device == m0.device
                and m.stimulus.values.shape == m0.stimulus.values.shape
                and m.stimulus.sites == m0.stimulus.sites
                and (m.stimulus.dt, m.stimulus.t0) == (m0.stimulus.dt, m0.stimulus.t0)
            )
            if not same:
                raise FitError(
                    "models fitted together must share the cell, free parameters, times, "
                    "solver, dtype, device and stimulus shape and sites; fit them separately"
                )
        self.models, self.m0 = list(models), m0
        dt, dev = m0.dtype, m0.device
        n_trace, n_comp, n_time = m0.n_trace, m0.n_comp, m0.t_eval.size
        self.values = torch.stack([m.stimulus.values.to(dev, dt) for m in models])
        self.obs = torch.zeros(len(models), n_trace, n_comp, n_time, dtype=dt, device=dev)
        self.mask = torch.zeros(len(models), n_comp, dtype=dt, device=dev)
        for d, (m, v) in enumerate(zip(models, data)):
            rec = list(m.rec_index)
            self.obs[d, :, rec] = m.check_data(v)
            self.mask[d, rec] = 1.0
        self.n_obs = self.mask.sum(-1) * n_trace * n_time  # recorded entries per design

    def _inputs(self, didx: Tensor, horizon, n_times) -> tuple[Stimulus, Tensor, Reset | None]:
        """The stimulus of designs ``didx``, their data on the first ``n_times`` output times
        (all for None) and, with a ``horizon``, the reset to those data."""
        m = self.m0
        s = m.stimulus
        stim = Stimulus(self.values[didx], s.dt, s.t0, s.unit, s.sites)
        obs = self.obs[didx][..., :n_times]
        if horizon is None:
            return stim, obs, None
        data = torch.where(self.mask[didx][:, None, :, None] > 0, obs, math.nan)
        return stim, obs, Reset(data, int(horizon))

    def simulate(
        self, params: Mapping[str, Tensor], didx: Tensor, horizon=None, n_times=None
    ) -> Tensor:
        """``params[name]`` ``[..., Q, size]`` for designs ``didx`` ``[Q]`` →
        masked errors ``v̂ − v`` ``[..., Q, trace, comp, time]`` (0 where unrecorded).
        ``horizon``: restart recorded voltages from the data every ``horizon`` outputs;
        ``n_times``: simulate and compare the first ``n_times`` output times only (a time
        window, for continuation; None: all)."""
        m = self.m0
        stim, obs, reset = self._inputs(didx, horizon, n_times)
        v = simulate(
            m.cell,
            m.expand(params),
            stim,
            m.t_eval[:n_times],
            m.solver,
            dtype=m.dtype,
            device=m.device,
            reset=reset,
        ).v
        return (v - obs) * self.mask[didx][:, None, :, None]

    def jacobian(self, params: Mapping[str, Tensor], didx: Tensor, horizon=None, n_times=None):
        """Masked errors ``[Q, trace, comp, time]`` and their exact sensitivities to the free
        conductances ``[Q, trace, P, comp, time]`` (fused kernel; ``params`` ``[Q, size]``;
        parameters shared by region by the chain rule through the expansion; ``horizon``,
        ``n_times`` as in :meth:`simulate`)."""
        m = self.m0
        stim, obs, reset = self._inputs(didx, horizon, n_times)
        wrt = m.parametrisation.targets
        v, jac = sensitivities(
            m.cell, m.expand(params), stim, m.t_eval[:n_times], m.solver, wrt=wrt, reset=reset
        )
        if not m.parametrisation.per_compartment:
            jac = torch.einsum("qakct,qkp->qapct", jac, m.expansion_jacobian(params))
        mask = self.mask[didx][:, None, :, None]
        return (v - obs) * mask, jac * mask[:, :, None]


def _same_cell(a, b) -> bool:
    if a is b:
        return True
    ma, mb = a.morphology, b.morphology
    return (
        ma.names == mb.names
        and all(
            np.array_equal(getattr(ma, k), getattr(mb, k))
            for k in ("parents", "axial", "area", "cm", "loops", "loop_axial")
        )
        and a.channels == b.channels
        and a.v0 == b.v0
        and a.params.keys() == b.params.keys()
        and all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    )


def fingerprint(stack: Stack, protocol: str, settings: dict) -> str:
    """A hash of the data, designs and settings: a checkpoint resumes only its own fit."""
    m = stack.m0
    key = json.dumps(
        {
            "protocol": protocol,
            "designs": [x.design.label for x in stack.models],
            "free": m.free
            if m.parametrisation.per_compartment
            else [repr(f) for f in m.parametrisation.forms],
            "shape": list(stack.obs.shape),
            "settings": {k: v for k, v in settings.items() if k != "max_steps"},
            "checkpoint_format": CHECKPOINT_FORMAT,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(
        key.encode() + stack.obs.cpu().numpy().tobytes() + stack.values.cpu().numpy().tobytes()
    ).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` to a temporary file, then rename it over ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint
