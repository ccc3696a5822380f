"""Pruning inside training: the posterior sharpens while the weights go.

Pruning a converged posterior after training removes weights the rest of the network
had relied on, and a short fine-tune repairs the accuracy but not always the
predictive spread (issue 18). `GradualPruning` is a `bayesprune.fit` callback that
removes weights *during* training instead: after each epoch between `start_epoch` and
`end_epoch` it masks the lowest-scoring weights (one global ranking, by default the
posterior's signal-to-noise ratio |μ|/σ), so that the pruned share follows the cubic
schedule of Zhu & Gupta (2017),

    s(t) = s_f · (1 − (1 − (t − t₀ + 1) / (t₁ − t₀ + 1))³),   t₀ ≤ t ≤ t₁,

steep at first while many weights are redundant and flat near the end, and the
remaining epochs train the survivors (means and scales) with the masks held. Masks
only grow: a weight pruned at one epoch stays pruned (its score is −∞ at the next
ranking). The target of each epoch is a function of the epoch alone, so a run resumed
from a checkpoint reaches the same targets (the step of the epoch it was interrupted
in is made up at the next one).

Variational layers hold their masks as buffers (a masked weight gets no gradient and
no KL); a plain layer's masked weights are zeroed at each epoch end and may move
within an epoch, so prune deterministic networks with `hold_pruned` around training
or let `GradualPruning` act on the variational layers only.

    pruning = GradualPruning(model, sparsity=0.95, start_epoch=2, end_epoch=30)
    bp.fit(model, train, epochs=40, callbacks=[pruning])
    pruning.history            # [(epoch, target sparsity, weights pruned), ...]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .masks import apply_masks, weight_masks
from .rules import global_sparsity_masks
from .scores import weight_scores


def cubic_sparsity(epoch: int, final: float, start_epoch: int, end_epoch: int) -> float:
    """The pruned share after `epoch` (1-based) under the cubic schedule: 0 before
    `start_epoch`, the first step after it, `final` from `end_epoch` on."""
    if epoch < start_epoch:
        return 0.0
    if epoch >= end_epoch:
        return final
    progress = (epoch - start_epoch + 1) / (end_epoch - start_epoch + 1)
    return final * (1.0 - (1.0 - progress) ** 3)


def default_epochs(epochs: int) -> tuple[int, int]:
    """(start_epoch, end_epoch) for a run of `epochs`: after a quarter of them (the
    posterior has found its modes) until three quarters (the last quarter trains the
    survivors)."""
    start = max(1, round(epochs / 4))
    return start, max(start, round(3 * epochs / 4))


class GradualPruning:
    """A `fit` callback that prunes `model` to `sparsity` on a cubic schedule (module doc).

    `score`: a weight score of `compress.weight_scores` ("snr", "abs_mean", "log_alpha",
    "magnitude"); `start_epoch` (1-based: the first pruning happens after that epoch) and
    `end_epoch` (the final sparsity is reached after it) with 1 ≤ start ≤ end; start = end
    prunes once, inside training.
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float,
        *,
        start_epoch: int = 1,
        end_epoch: int,
        score: str = "snr",
    ) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1) (the share pruned), got {sparsity}")
        if not 1 <= start_epoch <= end_epoch:
            raise ValueError(
                f"need 1 <= start_epoch <= end_epoch (epochs after which pruning starts / "
                f"reaches {sparsity}), got start_epoch={start_epoch}, end_epoch={end_epoch}"
            )
        weight_scores(model, score)  # a bad score name or a model with nothing to prune fails here
        self.model = model
        self.sparsity = float(sparsity)
        self.start_epoch = int(start_epoch)
        self.end_epoch = int(end_epoch)
        self.score = score
        self.history: list[tuple[int, float, float]] = []

    def target(self, epoch: int) -> float:
        """The pruned share the schedule asks for after `epoch`."""
        return cubic_sparsity(epoch, self.sparsity, self.start_epoch, self.end_epoch)

    def __call__(self, record: Mapping[str, Any]) -> None:
        epoch = int(record["epoch"])
        target = self.target(epoch)
        if target > 0.0:
            apply_masks(self.model, self._masks(target))
        self.history.append((epoch, target, self.pruned_share()))

    def pruned_share(self) -> float:
        """The share of prunable weights masked now."""
        masks = weight_masks(self.model)
        total = sum(m.numel() for m in masks.values())
        return 1.0 - sum(float(m.sum()) for m in masks.values()) / max(total, 1)

    def _masks(self, target: float) -> dict[str, Tensor]:
        held = weight_masks(self.model)
        scores = {
            name: torch.where(held[name].bool(), s.float(), torch.full_like(s.float(), -math.inf))
            for name, s in weight_scores(self.model, self.score).items()
        }
        masks = global_sparsity_masks(scores, target)
        return {name: masks[name] * held[name] for name in masks}  # never bring one back


__all__ = ["GradualPruning", "cubic_sparsity", "default_epochs"]
