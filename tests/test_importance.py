"""Adaptive importance sampling on an analytic target: where the first proposal fails its
check, the adapted proposal passes it and its weighted draws carry the target's mean."""

import math

import numpy as np
import torch

from bayesneuron.inference.diagnostics import importance_ess, khat_threshold
from bayesneuron.inference.importance import StudentTMixture, adapt_mixture

P, ALPHA = 6, 4.0
SCALES = torch.linspace(0.6, 1.6, P, dtype=torch.float64)
ROT = torch.linalg.qr(torch.randn(P, P, generator=torch.Generator().manual_seed(3)).double())[0]


def _log_skew_normal(z):
    """Independent skew-normal (shape ALPHA, scales SCALES) along the columns of ROT."""
    u = (z @ ROT) / SCALES
    return (-0.5 * u**2 + torch.special.log_ndtr(ALPHA * u) - torch.log(SCALES)).sum(-1)


def _exact_mean():
    delta = ALPHA / math.sqrt(1 + ALPHA**2)
    return (SCALES * delta * math.sqrt(2 / math.pi)) @ ROT.T


def test_adapted_draws_have_the_targets_mean_where_the_first_proposal_fails():
    # the first proposal: too narrow (sd 0.4) and off by one unit along every axis
    first = StudentTMixture(
        torch.full((1, P), -1.0, dtype=torch.float64),
        0.4 * torch.eye(P, dtype=torch.float64)[None],
        torch.zeros(1, dtype=torch.float64),
    )
    gen = torch.Generator().manual_seed(0)
    z, lw, ks = adapt_mixture(_log_skew_normal, first, 4000, gen, 0, 6, 4)
    assert ks[0] > khat_threshold(4000) >= ks[-1] and len(ks) >= 2
    w = np.exp(lw - np.logaddexp.reduce(lw))
    assert 1.0 / np.sum(w**2) >= 100
    mean = torch.as_tensor(w) @ z
    assert torch.allclose(mean, _exact_mean(), atol=0.1), (mean, _exact_mean())


def test_importance_ess_is_kish_on_unnormalised_log_weights():
    assert math.isclose(importance_ess(np.full(50, -3.0)), 50.0)  # equal weights: all count
    assert math.isclose(importance_ess(torch.tensor([0.0, -math.inf, -math.inf])), 1.0)
    w = np.array([0.5, 0.25, 0.25])  # 1 / (0.25 + 0.0625 + 0.0625)
    assert math.isclose(importance_ess(np.log(w) + 1234.5), 1 / 0.375)
