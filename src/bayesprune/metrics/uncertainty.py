"""Uncertainty from Monte-Carlo class probabilities, and how well it flags OOD inputs.

For samples p_s(y | x), s = 1..S, the total uncertainty H[mean_s p_s] splits into an
aleatoric part, mean_s H[p_s], and an epistemic part, their difference: the mutual
information between the label and the weights (BALD, Houlsby et al. 2011). All in nats.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._inputs import EPS, as_tensor, mc_samples


def entropy(probs: Any) -> Tensor:
    """Entropy (nats) of each categorical distribution along the last axis (0 log 0 = 0)."""
    p = as_tensor(probs, torch.float64)
    return -(p * p.clamp_min(EPS).log()).sum(-1)


def predictive_entropy(samples: Any) -> Tensor:
    """Total uncertainty per example: entropy of the mean of (S, N, C) probability samples."""
    return entropy(mc_samples(samples).mean(0))


def expected_entropy(samples: Any) -> Tensor:
    """Aleatoric uncertainty per example: mean over samples of each sample's entropy."""
    return entropy(mc_samples(samples)).mean(0)


def mutual_information(samples: Any) -> Tensor:
    """Epistemic uncertainty per example: predictive − expected entropy (clamped at 0,
    which it is in exact arithmetic by Jensen's inequality)."""
    s = mc_samples(samples)
    return (predictive_entropy(s) - expected_entropy(s)).clamp_min(0.0)


def ood_auroc(scores_in: Any, scores_out: Any) -> float:
    """AUROC of telling out-of-distribution inputs (positives) from in-distribution ones
    by an uncertainty score, higher meaning 'more likely OOD' (e.g. predictive entropy or
    mutual information). 1 = perfect separation, 0.5 = chance."""
    s_in = as_tensor(scores_in, torch.float64).reshape(-1).numpy()
    s_out = as_tensor(scores_out, torch.float64).reshape(-1).numpy()
    if not len(s_in) or not len(s_out):
        raise ValueError(
            f"ood_auroc needs scores for both groups, got {len(s_in)} in-distribution "
            f"and {len(s_out)} out-of-distribution"
        )
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("ood_auroc: scores contain NaN or inf")
    from sklearn.metrics import roc_auc_score  # imported here: scikit-learn takes ~1 s to load

    labels = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    return float(roc_auc_score(labels, np.r_[s_in, s_out]))
