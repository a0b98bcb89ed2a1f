"""Ranking designs by how much their posteriors say: the criteria and the ranks."""

from __future__ import annotations

import numpy as np

from bayesneuron.protocol.design import row_label

__all__ = ["CRITERIA", "rank_designs"]

CRITERIA = (  # column, better, what it measures
    ("logdet_fisher", "max", "log-det Fisher information (volume of information)"),
    ("max_rel_sd", "min", "worst-case relative posterior sd (the least determined parameter)"),
    ("mean_contraction", "max", "mean posterior contraction"),
)


POSTERIOR_CRITERIA = ("max_rel_sd", "mean_contraction")
"""Criteria read off the posterior draws: a design whose posterior failed its checks ranks
last under them (its numbers are not results)."""


def _ok(row: dict) -> bool:
    x = row.get("posterior_ok", True)
    return x.strip().lower() in ("true", "1") if isinstance(x, str) else bool(x)


def rank_designs(rows: list[dict]) -> list[dict]:
    """Per design its rank (1 = most informative) under each criterion of :data:`CRITERIA`;
    designs whose posterior is not ok rank last under :data:`POSTERIOR_CRITERIA`."""
    out = [{"design": row_label(r), "run": r.get("run", ""), "posterior_ok": _ok(r)} for r in rows]
    for col, better, _ in CRITERIA:
        vals = np.array(
            [float(r[col]) if _ok(r) or col not in POSTERIOR_CRITERIA else np.nan for r in rows]
        )
        vals = np.where(np.isfinite(vals), vals, -np.inf if better == "max" else np.inf)
        order = np.argsort(-vals if better == "max" else vals, kind="stable")
        ranks = np.empty(len(rows), dtype=int)
        ranks[order] = np.arange(1, len(rows) + 1)
        for o, r, k in zip(out, rows, ranks):
            o[col] = r[col]
            o[f"rank_{col}"] = int(k)
    return out
