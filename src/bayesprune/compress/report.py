"""Compression report: what pruning and shrinking bought, and what it cost.

A report is a plain dict (JSON-able): per prunable layer, before → after, the units,
inputs, weights, non-zero weights, FLOPs (dense, and "sparse" = only non-zero
weights counted) and bytes (dense float32 and CSR); totals with ratios; and the
accuracy / NLL / ECE before and after, given as values or computed by an `evaluate`
callable (e.g. `bayesprune.evaluation.scorer`). `report_markdown` renders it;
`save_report` writes both atomically. Layers are paired in order (shrinking keeps
every layer, only narrower).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..io import atomic_write_bytes, atomic_write_json
from ..metrics.size import layer_sizes
from .export import sparse_storage

_FIELDS = (
    "units",
    "inputs",
    "weights",
    "nonzero",
    "flops",
    "sparse_flops",
    "dense_bytes",
    "csr_bytes",
)


def _layers(model: nn.Module, input_shape: Sequence[int]) -> list[dict[str, Any]]:
    sizes = layer_sizes(model, tuple(input_shape))
    storage = sparse_storage(model)
    if len(sizes) != len(storage):
        raise ValueError("the model has connection layers that compression cannot read")
    rows = []
    for size, store in zip(sizes, storage, strict=True):
        rows.append(
            {
                "name": size.name,
                "kind": size.kind,
                "weights": size.weights,
                "nonzero": size.nonzero_weights,
                "flops": size.flops,
                "sparse_flops": size.flops * size.nonzero_weights // max(size.weights, 1),
                "dense_bytes": store["dense_bytes"],
                "csr_bytes": store["csr_bytes"],
                "units": store["units"],
                "inputs": store["inputs"],
            }
        )
    return rows


def _ratio(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def compression_report(
    before: nn.Module,
    after: nn.Module,
    *,
    input_shape: Sequence[int],
    input_shape_after: Sequence[int] | None = None,
    metrics_before: Mapping[str, float] | None = None,
    metrics_after: Mapping[str, float] | None = None,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    title: str = "compression report",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare `before` (the trained model) with `after` (pruned and/or shrunk).

    `input_shape`: one example's shape (no batch dimension), for FLOPs; give
    `input_shape_after` if the compressed model takes fewer inputs. Metrics: pass
    dicts (any keys, e.g. accuracy / nll / ece), or `evaluate`, a callable model →
    {metric: value} such as `bayesprune.evaluation.scorer((x, y), likelihood)`, for
    the ones not given.
    """
    rows_b = _layers(before, input_shape)
    rows_a = _layers(after, input_shape_after or input_shape)
    if len(rows_b) != len(rows_a):
        raise ValueError(
            f"before has {len(rows_b)} prunable layers, after has {len(rows_a)}: the report "
            "pairs layers in order, so compare a model with its pruned / shrunk version"
        )
    layers = [
        {
            "name": b["name"],
            "kind": a["kind"],
            **{f"{k}_before": b[k] for k in _FIELDS},
            **{f"{k}_after": a[k] for k in _FIELDS},
        }
        for b, a in zip(rows_b, rows_a, strict=True)
    ]
    totals: dict[str, Any] = {}
    for k in ("weights", "nonzero", "flops", "sparse_flops", "dense_bytes", "csr_bytes"):
        totals[f"{k}_before"] = sum(r[k] for r in rows_b)
        totals[f"{k}_after"] = sum(r[k] for r in rows_a)
    totals["nonzero_ratio"] = _ratio(totals["nonzero_before"], totals["nonzero_after"])
    totals["flops_ratio"] = _ratio(totals["flops_before"], totals["flops_after"])
    totals["bytes_ratio"] = _ratio(totals["dense_bytes_before"], totals["csr_bytes_after"])
    totals["architecture_before"] = [rows_b[0]["inputs"], *(r["units"] for r in rows_b)]
    totals["architecture_after"] = [rows_a[0]["inputs"], *(r["units"] for r in rows_a)]
    if evaluate is not None:
        metrics_before = metrics_before or evaluate(before)
        metrics_after = metrics_after or evaluate(after)
    return {
        "title": title,
        "layers": layers,
        "totals": totals,
        "metrics": {"before": dict(metrics_before or {}), "after": dict(metrics_after or {})},
        "extra": dict(extra or {}),
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "-".join(str(x) for x in v)
    return str(v)


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as a markdown page (layers table, totals, metrics)."""
    lines = [f"# {report.get('title', 'compression report')}", ""]
    lines += [
        "| layer | kind | units | inputs | non-zero weights | FLOPs | dense bytes | CSR bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["layers"]:
        cells = [r["name"], r["kind"]] + [
            f"{r[f'{k}_before']} → {r[f'{k}_after']}"
            for k in ("units", "inputs", "nonzero", "flops", "dense_bytes", "csr_bytes")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    t = report["totals"]
    lines += [
        "",
        f"- architecture: {_fmt(t['architecture_before'])} → {_fmt(t['architecture_after'])}",
        f"- non-zero weights: {t['nonzero_before']} → {t['nonzero_after']} "
        f"({_fmt(t['nonzero_ratio'])}× fewer)",
        f"- FLOPs (dense): {t['flops_before']} → {t['flops_after']} "
        f"({_fmt(t['flops_ratio'])}× fewer)",
        f"- bytes: {t['dense_bytes_before']} dense → {t['csr_bytes_after']} CSR "
        f"({_fmt(t['bytes_ratio'])}× smaller)",
    ]
    m = report.get("metrics", {})
    keys = sorted(set(m.get("before", {})) | set(m.get("after", {})))
    if keys:
        lines += ["", "| metric | before | after |", "|---|---|---|"]
        for k in keys:
            lines.append(f"| {k} | {_fmt(m['before'].get(k))} | {_fmt(m['after'].get(k))} |")
    return "\n".join(lines) + "\n"


def save_report(
    report: Mapping[str, Any], folder: str | Path, stem: str = "compression"
) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` into `folder` (atomically); return both paths."""
    folder = Path(folder)
    json_path = atomic_write_json(folder / f"{stem}.json", dict(report))
    md_path = atomic_write_bytes(folder / f"{stem}.md", report_markdown(report).encode())
    return json_path, md_path
