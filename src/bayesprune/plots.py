"""Report figures as PNG bytes (matplotlib's Agg canvas; no pyplot, so no global state).

Each function takes plain numbers (lists, dicts, tensors) and returns the PNG
file's bytes, so the report can both embed them (base64) and write them to disk.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def training_curves(history: Sequence[Mapping[str, Any]]) -> bytes:
    """Negative ELBO per example, NLL, KL and the validation metric against the epoch."""
    fig = Figure(figsize=(9, 6))
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(history)]
    panels = [
        ("loss", "negative ELBO / N (training loss)"),
        ("nll", "NLL per example (train)"),
        ("kl", "KL(q ‖ p), summed"),
        (None, "validation"),
    ]
    for k, (key, title) in enumerate(panels):
        ax = fig.add_subplot(2, 2, k + 1)
        if key is not None:
            ax.plot(epochs, [r.get(key, math.nan) for r in history], marker=".")
        else:
            found = False
            for name in ("val_accuracy", "val_rmse", "val_nll"):
                values = [r.get(name) for r in history]
                if any(v is not None for v in values):
                    ax.plot(
                        epochs,
                        [math.nan if v is None else v for v in values],
                        marker=".",
                        label=name.removeprefix("val_"),
                    )
                    found = True
            if found:
                ax.legend()
            else:
                ax.text(
                    0.5,
                    0.5,
                    "no validation split\n(data.val_fraction: 0)",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _png(fig)


def histogram_counts(values: Any, *, log10: bool = False, bins: int = 50) -> dict[str, Any]:
    """{"edges", "counts", "log10"}: a histogram small enough to keep in a JSON record."""
    arr = _finite(values)
    if log10:
        arr = np.log10(arr[arr > 0])
    if not arr.size:
        return {"edges": [], "counts": [], "log10": log10}
    counts, edges = np.histogram(arr, bins=bins)
    return {"edges": edges.tolist(), "counts": counts.tolist(), "log10": log10}


def histogram(
    values: Any, title: str, xlabel: str, *, log10: bool = False, bins: int = 50
) -> bytes:
    """A histogram; `log10` plots log10 of the (positive) values."""
    return histogram_from_counts(histogram_counts(values, log10=log10, bins=bins), title, xlabel)


def histogram_from_counts(hist: Mapping[str, Any], title: str, xlabel: str) -> bytes:
    """Plot a histogram recorded by `histogram_counts`."""
    if hist.get("log10"):
        xlabel = f"log10 {xlabel}"
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"])
    if counts.size:
        ax.stairs(counts, edges, fill=True, color="#4c72b0")
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 1.5 ticks
    return _png(fig)


def pruning_curve(curves: Mapping[str, Sequence[tuple[float, float]]], ylabel: str) -> bytes:
    """Error (or RMSE) against the fraction of weights pruned, one line per score."""
    fig = Figure(figsize=(6, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for label, points in curves.items():
        xs, ys = zip(*points, strict=True) if points else ((), ())
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("fraction of weights pruned")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} vs. fraction pruned (posterior-mean network)", fontsize=10)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    return _png(fig)


def surviving_units(names: Sequence[str], before: Sequence[int], after: Sequence[int]) -> bytes:
    """Units (and input features) per layer before and after compression."""
    fig = Figure(figsize=(6, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    ax.bar(x - 0.2, before, 0.4, label="before", color="#bbbbbb")
    ax.bar(x + 0.2, after, 0.4, label="after", color="#4c72b0")
    for xi, b, a in zip(x, before, after, strict=True):
        ax.text(xi + 0.2, a, f"{a}/{b}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, list(names), rotation=20, fontsize=8)
    widths = [w for w in (*before, *after) if w > 0]
    if widths and max(widths) > 50 * min(widths):  # e.g. 784 inputs beside 10 outputs
        ax.set_yscale("log")
    ax.set_ylabel("units")
    ax.set_title("surviving units per layer", fontsize=10)
    ax.legend()
    return _png(fig)


def reliability(
    confidence: Sequence[float], accuracy: Sequence[float], count: Sequence[int], ece: float
) -> bytes:
    """Reliability diagram: accuracy against confidence per bin, with the diagonal."""
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    n_bins = len(count)
    centers = (np.arange(n_bins) + 0.5) / n_bins
    used = np.asarray(count) > 0
    ax.bar(
        centers[used],
        np.asarray(accuracy)[used],
        width=1 / n_bins,
        edgecolor="black",
        color="#4c72b0",
        alpha=0.8,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.scatter(
        np.asarray(confidence)[used],
        np.asarray(accuracy)[used],
        color="black",
        s=8,
        label="mean confidence",
        zorder=3,
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram (ECE {ece:.3f})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def feature_scores(
    scores: Sequence[float],
    selected: Sequence[int],
    names: Sequence[str],
    score_name: str,
    *,
    image_shape: Sequence[int] | None = None,
    true_features: Sequence[int] | None = None,
) -> bytes:
    """Per-feature scores: a bar chart (selected in colour), or a heat map for image pixels."""
    values = np.asarray(scores, dtype=np.float64)
    if image_shape is not None and math.prod(image_shape[-2:]) == values.size:
        fig = Figure(figsize=(8, 3.8))
        h, w = image_shape[-2], image_shape[-1]
        ax = fig.add_subplot(1, 2, 1)
        scale = {"vmin": 0.0, "vmax": 1.0} if score_name == "pip" else {}  # probabilities
        im = ax.imshow(values.reshape(h, w), cmap="viridis", **scale)
        fig.colorbar(im, ax=ax)
        ax.set_title(f"input {score_name}", fontsize=10)
        mask = np.zeros(values.size)
        mask[list(selected)] = 1
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.imshow(mask.reshape(h, w), cmap="gray", vmin=0, vmax=1)
        ax2.set_title(f"selected pixels ({len(selected)} of {values.size})", fontsize=10)
        for a in (ax, ax2):
            a.set_xticks([])
            a.set_yticks([])
        return _png(fig)
    fig = Figure(figsize=(max(6, 0.18 * values.size), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    chosen = set(selected)
    colors = ["#4c72b0" if i in chosen else "#cccccc" for i in range(values.size)]
    ax.bar(np.arange(values.size), values, color=colors)
    truth = set(true_features or ())
    if truth:  # above the bars, so a marker never hides behind a tick label
        top = float(np.nanmax(values)) if values.size else 1.0
        marks = sorted(truth & set(range(values.size)))
        ax.plot(marks, [top * 1.06] * len(marks), "^", color="#c44e52", markersize=7)
        ax.set_ylim(top=top * 1.15)
    ax.set_xticks(np.arange(values.size), list(names), rotation=90, fontsize=6)
    ax.set_ylabel(score_name)
    title = f"input {score_name}: {len(selected)} of {values.size} selected (blue)"
    ax.set_title(title + ("; red ▲ = true feature" if truth else ""), fontsize=10)
    return _png(fig)
