"""Does the expected ranking of the 25 paper_toy designs agree with a Fisher computation at the
truth? Bayesian D-optimality in expectation (stimulus draws × conductances from the prior, the
study's ``[expected]`` step) against log-det Fisher information at the preset's ground truth
with the paper's own stimulus traces; Spearman correlation of the two rankings.

    python benchmarks/design_ranking.py [--n-traces 100] [--draws 10] [--theta 10]
                                        [--threads 2] [--json FILE] [--quick]

Prints one row per design (expected mean ± sd, mean rank, p_best; log det F at the truth and
its rank) and the Spearman correlations, with wall times. The truth is used only by the
comparison, never by the expected ranking. ``--quick``: 8 traces, 2 × 2 draws (seconds).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _truth_logdets(designs, n_traces: int, sigma: float) -> dict[str, np.ndarray]:
    """Per design, at the ground truth with the paper's currents (seed 20230619): log det F
    (``laplace.fisher_information``) and the Bayesian D-optimality."""
    import torch

    from bayesneuron.inference.criteria import bayesian_d_optimality
    from bayesneuron.inference.laplace import fisher_information
    from bayesneuron.inference.space import ParameterSpace
    from bayesneuron.reference.paper import paper_experiment

    logdet, dopt = [], []
    for d in designs:
        model, _, truth = paper_experiment(d, n_traces=n_traces, sigma=sigma)
        F = fisher_information(model, truth)
        sign, ld = torch.linalg.slogdet(F)
        logdet.append(float(ld) if float(sign) > 0 else -np.inf)
        dopt.append(float(bayesian_d_optimality(F, ParameterSpace(model).prior_variance())))
    return {"logdet_fisher": np.array(logdet), "bayes_d_opt": np.array(dopt)}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Rank 1 = largest."""
    order = np.argsort(-x, kind="stable")
    r = np.empty(len(x), dtype=int)
    r[order] = np.arange(1, len(x) + 1)
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-traces", type=int, default=100)
    ap.add_argument("--draws", type=int, default=10, help="stimulus draws")
    ap.add_argument("--theta", type=int, default=10, help="prior draws per stimulus draw")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_traces, args.draws, args.theta = 8, 2, 2

    import torch
    from scipy.stats import spearmanr

    from bayesneuron.reference.paper import PAPER_SEED
    from bayesneuron.studies.config import Study
    from bayesneuron.studies.expected import expected_values, parse_expected, rank_summary

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = parse_expected(
        {"n_stimulus_draws": args.draws, "n_theta": args.theta, "n_traces": args.n_traces},
        "paper_toy",
    )
    study = Study(folder=Path("."), name="design_ranking", question="", seed=PAPER_SEED)
    study.expected = cfg
    t0 = time.perf_counter()
    values = expected_values(study, cfg, progress=sys.stderr.isatty())
    t_expected = time.perf_counter() - t0
    rows = rank_summary(cfg.designs, values)
    t0 = time.perf_counter()
    truth = _truth_logdets(cfg.designs, args.n_traces, study.sigma)
    t_truth = time.perf_counter() - t0

    by = {(r["criterion"], f"{r['stim']}|{r['rec']}"): r for r in rows}
    labels = [d.label for d in cfg.designs]
    mean = {c: np.array([by[(c, lab)]["mean"] for lab in labels]) for c in cfg.criteria}
    rho = {
        f"{c}_vs_{t}": float(spearmanr(mean[c], truth[t]).statistic)
        for c in cfg.criteria
        for t in truth
    }
    out = {
        "settings": vars(args) | {"json": str(args.json) if args.json else None},
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "wall_s": {"expected": t_expected, "truth_fisher": t_truth},
        "spearman": rho,
        "rows": _table(labels, by, truth),
    }
    _print(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
    return 0


def _table(labels, by, truth) -> list[dict]:
    rank_ld = _ranks(truth["logdet_fisher"])
    return [
        {
            "design": lab,
            "bayes_d_opt_mean": by[("bayes_d_opt", lab)]["mean"],
            "bayes_d_opt_sd": by[("bayes_d_opt", lab)]["sd"],
            "rank_mean": by[("bayes_d_opt", lab)]["rank_mean"],
            "p_best": by[("bayes_d_opt", lab)]["p_best"],
            "logdet_fisher_truth": float(truth["logdet_fisher"][i]),
            "rank_truth": int(rank_ld[i]),
            "bayes_d_opt_truth": float(truth["bayes_d_opt"][i]),
        }
        for i, lab in enumerate(labels)
    ]


def _print(out: dict) -> None:
    s = out["settings"]
    print(
        f"paper_toy, {s['n_traces']} traces: Bayesian D-optimality over {s['draws']} stimulus "
        f"draws × {s['theta']} prior draws vs log det F at the truth (paper currents)"
    )
    print(
        f"{'design':<18}{'E[D-opt]':>10}{'sd':>7}{'rank':>7}{'p_best':>8}"
        f"{'logdetF*':>10}{'rank*':>7}"
    )
    for r in sorted(out["rows"], key=lambda r: r["rank_mean"]):
        print(
            f"{r['design']:<18}{r['bayes_d_opt_mean']:>10.2f}{r['bayes_d_opt_sd']:>7.2f}"
            f"{r['rank_mean']:>7.2f}{r['p_best']:>8.2f}{r['logdet_fisher_truth']:>10.2f}"
            f"{r['rank_truth']:>7d}"
        )
    for k, v in out["spearman"].items():
        print(f"Spearman {k}: {v:.3f}")
    w = out["wall_s"]
    print(f"wall: expected {w['expected']:.1f} s, truth Fisher {w['truth_fisher']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
