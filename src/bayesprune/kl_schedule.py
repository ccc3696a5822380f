"""The KL weight β of `fit`: one number, or stages that change it by epoch.

A tempered KL early and the full KL late is how Sparse VD reaches high compression in
few epochs: β = 4 separates the weights' log α quickly, and β back at 1 lets the
likelihood recover the accuracy (LeNet-5-Caffe, β 4 for a third of the epochs then 1:
1.6-1.8× the compression of β = 1 throughout at the same validation error;
benchmarks/README.md, issue 13). Doing that with two `fit` calls restarts the cosine
schedule and Adam's moments; stages inside one call keep both.

Stages are a pure function of the epoch, as the learning-rate schedules are, so a
resumed run trains exactly as an uninterrupted one, and a checkpoint stores them as
JSON (`KLStages.to_json`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .validation import check_finite_number

KLWeight = float | Sequence[tuple[float, int]]
"""A number (β for every epoch) or stages [(β, epochs), ...]; the last β holds after them."""

_EXAMPLE = "a number >= 0, or stages [(beta, epochs), ...] such as [(4.0, 10), (1.0, 20)]"


@dataclass(frozen=True)
class KLStages:
    """β by epoch: each stage's β for its number of epochs, the last one's after them."""

    stages: tuple[tuple[float, int], ...]

    def at(self, epoch: int) -> float:
        """β of the 0-based `epoch`."""
        end = 0
        for beta, count in self.stages:
            end += count
            if epoch < end:
                return beta
        return self.stages[-1][0]

    @property
    def final(self) -> float:
        """The β training ends with: the weight of the posterior that `fit` returns, and
        the one a later fine-tuning of it should keep."""
        return self.stages[-1][0]

    @property
    def constant(self) -> bool:
        return len(self.stages) == 1

    def to_json(self) -> float | list[list[float | int]]:
        """A number for a constant β, else the stages as [[β, epochs], ...]."""
        if self.constant:
            return self.stages[0][0]
        return [[beta, count] for beta, count in self.stages]


def kl_stages(value: Any, epochs: int | None = None) -> KLStages:
    """`value` (`KLWeight`, or its JSON form) checked and made `KLStages`.

    With `epochs`, stages that would never all run in that many epochs are refused: a
    last β that never starts is a schedule that silently does not happen.
    """
    if _is_number(value):
        return KLStages(((check_finite_number(value, "kl_weight", minimum=0.0), 1),))
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"kl_weight must be {_EXAMPLE}; got {value!r}")
    stages = tuple(_stage(item, i) for i, item in enumerate(value))
    starts_last = sum(count for _, count in stages[:-1])
    if epochs is not None and 0 < epochs <= starts_last:
        raise ValueError(
            f"kl_weight stages {value!r} start their last stage after epoch {starts_last}, "
            f"but training has {epochs} epochs; shorten the stages or raise epochs"
        )
    return KLStages(stages)


def _stage(item: Any, index: int) -> tuple[float, int]:
    where = f"kl_weight stage {index}"
    if isinstance(item, str | bytes) or not isinstance(item, Sequence) or len(item) != 2:
        raise ValueError(f"{where} must be a pair (beta, epochs), got {item!r}; {_EXAMPLE}")
    beta, count = item
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{where}: epochs must be an integer >= 1, got {count!r}")
    return check_finite_number(beta, f"{where}: beta", minimum=0.0), count


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


__all__ = ["KLStages", "KLWeight", "kl_stages"]
