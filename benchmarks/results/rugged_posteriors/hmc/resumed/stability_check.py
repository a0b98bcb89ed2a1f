"""Stability check after the first pass (run from the repository root): 3 more rounds of 5 HMC
sweeps of the passing populations regardless of R-hat (session 19; settle.log, "extra round")."""
import sys, time, json, numpy as np, torch
sys.path.insert(0, "benchmarks")
import rugged_posteriors as rp
from bayesneuron.inference import smc
from bayesneuron.inference.diagnostics import chain_diagnostics
from bayesneuron.inference.whitened import WhitenedModel
from bayesneuron.studies.config import load_study
torch.set_num_threads(2)
label = "[0,-1]|[0]"
study = load_study(rp.STUDY)
model, v, truth, _, laps = rp._setup(study, label)
wm = WhitenedModel(model, v, laps[0])
a = np.load("benchmarks/results/rugged_posteriors/hmc/resumed/0_-1__0.npz")
kern = smc._Kernel("hmc", 8)
runs = []
for j in range(2):
    z = wm.whiten(wm.space.unconstrain({k: torch.as_tensor(a[k][j]) for k in model.free}))
    with torch.no_grad():
        lp, ll = wm.log_prior(z), smc._loglik(wm, z)
    runs.append(dict(z=z, lp=lp, ll=ll, scale=kern.initial_scale(z.shape[1])))
gen = torch.Generator().manual_seed(777)
target = (wm.log_prior, lambda z: smc._loglik(wm, z), 1.0)
t0 = time.perf_counter()
for r in range(3):
    for x in runs:
        chol = smc._proposal_chol(x["z"])
        for _ in range(5):
            x["z"], x["lp"], x["ll"], acc, x["scale"] = kern.sweep(target, x["z"], x["lp"], x["ll"], chol, x["scale"], gen)
    with torch.no_grad():
        s = {k: t.cpu().numpy() for k, t in wm.params(torch.stack([x["z"] for x in runs])).items()}
    d = chain_diagnostics(s)
    print(f"extra round {r+1}: R-hat {d['rhat_max']:.4f} ESS bulk {d['ess_bulk_min']:.0f} tail {d['ess_tail_min']:.0f} max|z| {rp._max_abs_z(s, truth):.2f} {time.perf_counter()-t0:.0f} s", flush=True)
