"""The torchdiffeq backend: the membrane as an ODE right-hand side for ``odeint``."""

from __future__ import annotations

import numpy as np
import torch

from bayesneuron.errors import SolverError
from bayesneuron.simulation.grid import broadcast_shapes, step_grid
from bayesneuron.simulation.hines import reduced_edges
from bayesneuron.simulation.kinetics import kinetics, lay_out
from bayesneuron.simulation.solvers import Torchdiffeq

__all__ = ["run_torchdiffeq"]


def run_torchdiffeq(cell, p, cur, stimulus, t_eval, solver: Torchdiffeq):
    """Integrate with torchdiffeq; ``cur``: the :class:`~bayesneuron.simulation.grid.Currents`.
    Returns ``v [batch…, comp, time]``."""
    import torchdiffeq

    morph = cell.morphology
    vals, sites = cur.values, cur.sites
    dtype, device = vals.dtype, vals.device
    if "ra" in p:
        raise SolverError("a varying ra needs a fixed-step solver (CrankNicolson, BackwardEuler)")
    kin = kinetics(cell.channels)
    local = kin.lay_out(p, None)
    src, dst, cf = (torch.as_tensor(a, device=device) for a in reduced_edges(morph))
    cf = cf.to(dtype)
    cm = lay_out(p["cm"], None, None) if "cm" in p else torch.tensor(morph.cm, dtype=dtype)
    cm = cm.to(device)
    edges = torch.as_tensor(stimulus.edges(), dtype=dtype, device=device)

    def rhs(t, y):
        v, x = y[0], list(y[1:])
        col = torch.searchsorted(edges, t.reshape(1).to(dtype), right=True)
        at = vals.index_select(0, col.clamp(max=vals.shape[0] - 1))[0]  # [batch…, site]
        i_inj = at.new_zeros(at.shape[:-1] + (morph.n_comp,)).index_copy(-1, sites, at)
        g, ge = kin.conductance(x, local)
        i_ax = torch.zeros_like(v).index_add_(-1, src, cf * (v[..., dst] - v[..., src]))
        dv = (i_inj - g * v + ge + i_ax) / cm
        dx = [(inf - xi) / tau for (inf, tau), xi in zip(kin.gates(v, local), x)]
        return (dv, *dx)

    leaves = [x for q in local for x in q.values()] + [cm]
    batch = broadcast_shapes(*(x.shape[:-1] for x in leaves), vals.shape[1:-1])
    v0 = torch.full(batch + (morph.n_comp,), float(cell.v0), dtype=dtype, device=device)
    y0 = (v0, *kin.init(v0, local))
    t = torch.as_tensor(t_eval, dtype=dtype, device=device)
    inner = edges[(edges > t[0]) & (edges < t[-1])]
    options = dict(solver.options)
    if solver.adaptive:
        if len(inner):
            options.setdefault("jump_t", inner)
    else:
        dts, t_mid, _ = step_grid(stimulus, t_eval, solver.step_size)
        grid = torch.as_tensor(
            np.concatenate([t_mid - dts / 2, [t_eval[-1]]]), dtype=dtype, device=device
        )
        options.setdefault("grid_constructor", lambda f, y0, t: grid)
        options.setdefault("perturb", True)
    kw = dict(rtol=solver.rtol, atol=solver.atol, method=solver.method, options=options)
    if solver.adjoint:
        leaves = tuple(x for x in leaves if x.requires_grad)
        ys = torchdiffeq.odeint_adjoint(_Func(rhs), y0, t, adjoint_params=leaves, **kw)
    else:
        ys = torchdiffeq.odeint(rhs, y0, t, **kw)
    return ys[0].movedim(0, -1)


class _Func(torch.nn.Module):
    """``odeint_adjoint`` wants a module; this one holds no parameters of its own."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, t, y):
        return self.f(t, y)
