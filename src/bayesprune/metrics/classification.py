"""Accuracy and proper scores of predictive class probabilities, and calibration.

All take probabilities (N, C), not logits: a Bayesian predictive is an average of
softmaxes, which has no logits of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ._inputs import EPS, probabilities, probs_and_labels


def accuracy(probs: Any, labels: Any) -> float:
    """Fraction of examples whose arg-max class is the label."""
    p, y = probs_and_labels(probs, labels)
    return float((p.argmax(-1) == y).double().mean())


def nll(probs: Any, labels: Any) -> float:
    """Mean −log p(label), with probabilities clamped at 1e-12 so a confident miss is finite."""
    return float(nll_per_row(probs, labels).mean())


def nll_per_row(probs: Any, labels: Any) -> torch.Tensor:
    """−log p(label) of each example (float64, clamped as `nll`): what a paired comparison
    of two models on the same rows needs (the difference's standard error)."""
    p, y = probs_and_labels(probs, labels)
    picked = p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return -picked.clamp_min(EPS).log()


def brier(probs: Any, labels: Any) -> float:
    """Multi-class Brier score: Σ_c (p_c − 1[y = c])² summed over classes, averaged over
    examples (Brier's 1950 convention; range 0 … 2, a uniform guess over C classes scores
    1 − 1/C). Divide by C for the per-class mean some libraries report."""
    p, y = probs_and_labels(probs, labels)
    onehot = F.one_hot(y, p.shape[-1]).double()
    return float(((p - onehot) ** 2).sum(-1).mean())


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin mean confidence, accuracy and count, for a reliability diagram.

    `edges` has n_bins + 1 entries; empty bins have confidence = accuracy = 0, count 0.
    """

    edges: list[float]
    confidence: list[float]
    accuracy: list[float]
    count: list[int]


def calibration_bins(probs: Any, labels: Any, n_bins: int = 15) -> CalibrationBins:
    """Bin examples by confidence (max probability) into `n_bins` equal-width bins.

    Bins are right-closed, (k/B, (k+1)/B], and the first also holds 0, as in
    Guo et al. 2017 — so confidence exactly 1 lands in the last bin.
    """
    p, y = probs_and_labels(probs, labels)
    conf, pred = p.max(-1)
    correct = (pred == y).double()
    edges = _bin_edges(n_bins)
    which = _bin_of(conf, edges)
    count = torch.bincount(which, minlength=n_bins)
    sum_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, which, conf)
    sum_acc = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, which, correct)
    safe = count.clamp_min(1).double()
    return CalibrationBins(
        edges.tolist(), (sum_conf / safe).tolist(), (sum_acc / safe).tolist(), count.tolist()
    )


def _bin_edges(n_bins: int) -> torch.Tensor:
    """The `n_bins` + 1 edges of `calibration_bins`' equal-width bins on [0, 1]."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)


def _bin_of(conf: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Each confidence's bin between `edges` (right-closed; 0 in the first)."""
    return torch.bucketize(conf, edges[1:-1], right=False)


def ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error Σ_b (n_b / N) |acc_b − conf_b| over equal-width bins
    (15 by default, the usual choice since Guo et al. 2017)."""
    bins = calibration_bins(probs, labels, n_bins)
    total = sum(bins.count)
    return float(
        sum(
            n / total * abs(a - c)
            for n, a, c in zip(bins.count, bins.accuracy, bins.confidence, strict=True)
        )
    )


@dataclass(frozen=True)
class EceFloor:
    """The ECE a perfectly calibrated predictor shows on a finite sample: its `mean` and
    its `upper` quantile over label draws, for `rows` examples and `n_bins` bins."""

    mean: float
    upper: float
    rows: int
    n_bins: int

    def resolves(self, value: float) -> bool:
        """Whether an ECE of `value` on these rows is more than the sampling noise."""
        return value > self.upper


def ece_floor(
    probs: Any, n_bins: int = 15, draws: int = 200, quantile: float = 0.95, seed: int = 0
) -> EceFloor:
    """The ECE of these predictions if they were perfectly calibrated: labels drawn from
    the predictive itself, `draws` times, and ECE measured on each draw.

    ECE is biased upwards on few rows: a LeNet-5 whose test ECE is 0.003 measures
    0.006-0.017 on its 1,000 validation images, where a perfectly calibrated net measures
    0.009-0.010 (benchmarks/README.md, "ECE and its noise floor"). An ECE at or below the
    floor's `quantile` says nothing about calibration, and a tolerance such as "1.5x" held
    on it holds noise. Proper scores (NLL, Brier) have no such floor.

    A drawn label equals the arg-max with probability the confidence, so each draw is a
    Bernoulli(confidence) per row in the bins `ece` uses; no label is materialised.
    """
    if draws < 1 or not 0 < quantile < 1:
        raise ValueError(f"ece_floor needs draws >= 1 and 0 < quantile < 1, got {draws}/{quantile}")
    p = probabilities(probs)
    conf = p.max(-1).values
    which = _bin_of(conf, _bin_edges(n_bins))
    sum_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, which, conf)
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, _DRAW_CELLS // len(conf))  # draws per block: bounded memory on big sets
    values = []
    for start in range(0, draws, chunk):
        k = min(chunk, draws - start)
        correct = torch.rand((k, len(conf)), generator=generator, dtype=torch.float64) < conf
        sum_acc = torch.zeros(k, n_bins, dtype=torch.float64).index_add_(1, which, correct.double())
        # Σ_b (n_b / N) |acc_b − conf_b| = Σ_b |Σ_acc_b − Σ_conf_b| / N
        values.append((sum_acc - sum_conf).abs().sum(1) / len(conf))
    value = torch.cat(values)
    return EceFloor(float(value.mean()), float(value.quantile(quantile)), len(p), n_bins)


_DRAW_CELLS = 4_000_000
"""`ece_floor` draws at most this many (row, draw) Bernoullis at once."""
