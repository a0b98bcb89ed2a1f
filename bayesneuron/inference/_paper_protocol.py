"""The paper's MAP protocol: Adam (lr 0.5, betas 0.9/0.999, eps 1e-8), full batch, from the
cell's base values, on the raw conductances (no constraint, no prior, no σ), minimising the
paper's loss ``Σ_rec (v̂ − v)² / (trace · n_comp · time)`` — the squared error over the
recorded entries divided by the number of *all* entries, as the paper computes it."""

from __future__ import annotations

import torch
from torch import Tensor

from bayesneuron.errors import FitError
from bayesneuron.inference._runtime import progress_bar
from bayesneuron.inference._stack import save_checkpoint

__all__ = ["Adam", "paper_fit"]


class Adam:
    """``torch.optim.Adam``'s update with its defaults (betas 0.9, 0.999; eps 1e-8), written
    out: the same iterates, bit for bit (tested), without the ``torch._dynamo`` import that
    ``torch.optim`` makes (slow at import and at interpreter exit)."""

    def __init__(self, params: list[Tensor], lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.step_count = 0
        self.m = [torch.zeros_like(p) for p in params]  # first moment
        self.v = [torch.zeros_like(p) for p in params]  # second moment

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        lr = self.lr / (1 - b1**self.step_count)
        bc2_sqrt = (1 - b2**self.step_count) ** 0.5
        for p, m, v in zip(self.params, self.m, self.v):
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / bc2_sqrt).add_(self.eps), value=-lr)

    def state_dict(self) -> dict:
        return {
            "step": self.step_count,
            "m": [x.clone() for x in self.m],
            "v": [x.clone() for x in self.v],
        }

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step"]
        for mine, saved in zip(self.m + self.v, state["m"] + state["v"]):
            mine.copy_(saved)


def paper_fit(stack, n_starts, max_steps, settings, state, ck, every, fp, progress, init):
    """Adam on every (start, design) problem of ``stack`` at once; returns the history."""
    m0, D = stack.m0, len(stack.models)
    Q = n_starts * D
    didx = torch.arange(D, device=m0.device).repeat(n_starts)  # q = start · D + design
    start = init or {k: m0.base[k].expand(n_starts, -1) for k in m0.free}
    g = {k: start[k].repeat_interleave(D, dim=0).clone().requires_grad_() for k in m0.free}
    opt = Adam(list(g.values()), lr=settings["lr"])
    hist = {"objective": [], "mse": [], **{k: [g[k].detach().clone()] for k in m0.free}}
    step0 = 0
    if state is not None:
        with torch.no_grad():
            for k in m0.free:
                g[k].copy_(state["params"][k])
        opt.load_state_dict(state["optimizer"])
        hist, step0 = state["history"], state["step"]
    denom = m0.n_trace * m0.n_comp * m0.t_eval.size
    n_sim = 0
    bar = progress_bar(max_steps, progress, "paper protocol", initial=step0)
    for step in range(step0, max_steps + 1):
        last = step == max_steps
        with torch.set_grad_enabled(not last):
            err = stack.simulate(g, didx)
            sq = err.pow(2).sum((-3, -2, -1))  # [Q]
        n_sim += Q
        loss = sq / denom
        if not bool(torch.isfinite(loss).all()):
            raise FitError(
                f"the simulation diverged at Adam step {step} (non-finite loss); the paper's "
                "protocol has no safeguards: use protocol='bayesneuron'"
            )
        hist["objective"].append(loss.detach().clone())
        hist["mse"].append((sq / stack.n_obs[didx]).detach().clone())
        if last:
            break
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        for k in m0.free:
            hist[k].append(g[k].detach().clone())
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach().min()):.4g}")
        if ck is not None and (step + 1) % every == 0:
            save_checkpoint(
                ck,
                {
                    "fingerprint": fp,
                    "params": {k: v.detach() for k, v in g.items()},
                    "optimizer": opt.state_dict(),
                    "history": hist,
                    "step": step + 1,
                },
            )
    bar.close()
    return dict(
        hist=hist,
        steps=max_steps,
        converged=torch.zeros(Q, dtype=torch.bool),
        n_sim=n_sim,
        n_starts=n_starts,
    )
