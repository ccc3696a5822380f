"""Decision rules that turn posterior inclusion probabilities (PIPs) into keep-masks.

Each rule is a pure function of a 1-D tensor of PIPs (one per node or input
feature, e.g. `Posterior.unit_inclusion`) and returns a boolean mask, True = keep.

- "median": the median-probability model, keep PIP > 0.5 (Barbieri & Berger 2004:
  the predictively optimal single model under orthogonality), the default.
- "target_size": keep the k units with the highest PIPs (a fixed budget).
- "expected_size": keep the round(Σ PIP) units with the highest PIPs, the posterior
  expected model size. Unlike "median" it does not drop a layer of redundant units
  whose PIPs are each below ½ although together they carry the fit (each unit is
  dispensable given the others, not all at once; measured in docs/spike_slab.md).
- "fdr": Bayesian false-discovery-rate control (Newton et al. 2004; Müller et al.
  2006): keep the largest top-PIP set whose expected FDR, the mean of (1 − PIP) over
  the set, is at most `alpha`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..options import Choice


class PipRule(Choice):
    """How a layer's PIPs become a keep-mask (see the module docstring)."""

    MEDIAN = "median"
    TARGET_SIZE = "target_size"
    EXPECTED_SIZE = "expected_size"
    FDR = "fdr"


PIP_RULES = PipRule.values()


def _check_pips(pip: Tensor) -> Tensor:
    pip = torch.as_tensor(pip)
    if pip.ndim != 1:
        raise ValueError(f"PIPs must be a 1-D tensor (one per unit), got shape {tuple(pip.shape)}")
    if not pip.dtype.is_floating_point:
        pip = pip.double()
    if not torch.isfinite(pip).all() or (pip < 0).any() or (pip > 1).any():
        raise ValueError("PIPs must be finite probabilities in [0, 1]")
    return pip


def _top(pip: Tensor, k: int) -> Tensor:
    """Mask of the k largest PIPs; ties go to the lower index (stable, reproducible)."""
    keep = torch.zeros(pip.shape, dtype=torch.bool, device=pip.device)
    keep[torch.argsort(-pip, stable=True)[:k]] = True
    return keep


def median_probability_model(pip: Tensor, threshold: float = 0.5) -> Tensor:
    """Keep the units with PIP > `threshold` (0.5: the median-probability model)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    return _check_pips(pip) > threshold


def target_size(pip: Tensor, k: int) -> Tensor:
    """Keep exactly the `k` units with the highest PIPs."""
    pip = _check_pips(pip)
    if not 0 <= k <= pip.numel():
        raise ValueError(f"target size k must be in [0, {pip.numel()}], got {k}")
    return _top(pip, int(k))


def expected_size(pip: Tensor) -> Tensor:
    """Keep the round(Σ PIP) units with the highest PIPs (posterior expected size)."""
    pip = _check_pips(pip)
    return _top(pip, int(torch.floor(pip.double().sum() + 0.5)))


def expected_fdr(pip: Tensor, keep: Tensor) -> float:
    """Posterior expected false-discovery rate of a selection: mean (1 − PIP) over it."""
    pip = _check_pips(pip)
    if not keep.any():
        return 0.0
    return float((1 - pip[keep]).mean())


def bayesian_fdr(pip: Tensor, alpha: float = 0.05) -> Tensor:
    """Keep the largest set of top-PIP units whose expected FDR is at most `alpha`.

    Sorted by decreasing PIP, the running mean of (1 − PIP) never decreases, so the
    admissible sets are exactly the first k for k up to a cut-off; this returns that k.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    pip = _check_pips(pip)
    if pip.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=pip.device)
    order = torch.argsort(-pip, stable=True)
    miss = 1 - pip[order].double()
    ranks = torch.arange(1, pip.numel() + 1, dtype=torch.float64, device=pip.device)
    running = torch.cumsum(miss, 0) / ranks
    over = (running > alpha + 1e-12).nonzero()
    k = int(over[0, 0]) if len(over) else pip.numel()
    keep = torch.zeros(pip.shape, dtype=torch.bool, device=pip.device)
    keep[order[:k]] = True
    return keep


def select_by_pip(
    pip: Tensor,
    rule: PipRule | str = "median",
    *,
    threshold: float = 0.5,
    k: int | None = None,
    alpha: float = 0.05,
) -> Tensor:
    """Apply a named rule ("median", "target_size" with `k`, "expected_size", "fdr" with
    `alpha`)."""
    rule = PipRule(rule)
    if rule == "median":
        return median_probability_model(pip, threshold)
    if rule == "target_size":
        if k is None:
            raise ValueError("rule='target_size' needs k, the number of units to keep")
        return target_size(pip, k)
    if rule == "expected_size":
        return expected_size(pip)
    if rule == "fdr":
        return bayesian_fdr(pip, alpha)
    raise AssertionError(f"unhandled PIP rule {rule!r}")  # pragma: no cover
