"""`report RUN`: one self-contained HTML page and a markdown twin for a run folder.

The page shows what the posterior says and what compression did: training curves
(negative ELBO, NLL, KL, validation metric), histograms of weight SNR, unit
(kernel) norms and PIPs, error vs. fraction pruned, surviving units per layer, a
reliability diagram and the selected features. Figures are PNGs written next to
the page (`report/*.png`, which the markdown references) and also embedded in
the HTML as base64, so the HTML alone can be mailed or archived.
"""

from __future__ import annotations

import base64
import copy
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import metrics, plots
from .compress import apply_masks, global_sparsity_masks, unit_scores, weight_scores
from .config import dump_config
from .evaluation import scorer
from .io import atomic_write_bytes
from .nn import variational_layers
from .nn.base import Posterior
from .pipeline import evaluate_model, modes_for, select_features
from .predict import predict
from .runs import Run

PRUNE_GRID = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


@dataclass
class Figure:
    name: str  # file name, e.g. "training_curves.png"
    title: str
    caption: str
    png: bytes


def _posteriors(model: nn.Module) -> list[tuple[str, Posterior]]:
    return [(name, layer.posterior()) for name, layer in variational_layers(model)]


def _posterior_figures(model: nn.Module) -> list[Figure]:
    figs = []
    posts = _posteriors(model)
    if posts:
        snr = torch.cat(
            [(p.weight_mean.abs() / p.weight_std.clamp_min(1e-12)).flatten() for _, p in posts]
        )
        figs.append(
            Figure(
                "snr_histogram.png",
                "Weight signal-to-noise ratio",
                "|μ|/σ of every weight; pruning by SNR removes the left tail first.",
                plots.histogram(snr, "weight SNR |μ|/σ", "SNR", log10=True),
            )
        )
    per_unit = unit_scores(model, "norm", include_output=True)
    norms = torch.cat([s.flatten() for s in per_unit.values()])
    figs.append(
        Figure(
            "unit_norm_histogram.png",
            "Unit / kernel norms",
            "Frobenius norm of each unit's (kernel's) posterior-mean incoming weights; "
            "a spike near zero is redundancy the network found by itself.",
            plots.histogram(norms, "‖μ‖ per unit / kernel", "norm", log10=True),
        )
    )
    unit_pips = [p.unit_inclusion.flatten() for _, p in posts if p.unit_inclusion is not None]
    first = posts[:1]
    input_pips = [p.input_inclusion.flatten() for _, p in first if p.input_inclusion is not None]
    if unit_pips:
        figs.append(
            Figure(
                "unit_pip_histogram.png",
                "Posterior inclusion probabilities of units",
                "γ per unit (or 1 − Π(1 − φ) over its edges); the median-probability model keeps "
                "PIP > 0.5.",
                plots.histogram(torch.cat(unit_pips), "unit PIPs", "PIP", bins=20),
            )
        )
    if input_pips:
        figs.append(
            Figure(
                "input_pip_histogram.png",
                "Posterior inclusion probabilities of input features",
                "PIP of each input feature of the first layer.",
                plots.histogram(torch.cat(input_pips), "input PIPs", "PIP", bins=20),
            )
        )
    return figs


def _pruning_figure(model: nn.Module, run: Run) -> Figure:
    data = run.data()
    likelihood = run.likelihood()
    bayesian = any(True for _ in variational_layers(model))
    scores = ("snr", "abs_mean") if bayesian else ("magnitude",)
    key = "accuracy" if data.task == "classification" else "rmse"
    error_or_rmse = scorer(data.test, likelihood, metrics=(key,))
    curves = {}
    for score in scores:
        ranked = weight_scores(model, score)
        points = []
        for level in PRUNE_GRID:
            pruned = apply_masks(copy.deepcopy(model), global_sparsity_masks(ranked, level))
            value = error_or_rmse(pruned)[key]
            points.append((level, 1 - value if key == "accuracy" else value))
        curves[score] = points
    ylabel = "test error" if key == "accuracy" else "test RMSE (standardised)"
    return Figure(
        "error_vs_pruned.png",
        "Error vs. fraction of weights pruned",
        "Weights removed globally in ascending order of the score, no retraining.",
        plots.pruning_curve(curves, ylabel),
    )


def _units_figure(compression: dict[str, Any]) -> Figure | None:
    totals = compression.get("totals", {})
    before, after = totals.get("architecture_before"), totals.get("architecture_after")
    if not before or not after or len(before) != len(after):
        return None
    names = ["inputs", *(r["name"] for r in compression.get("layers", []))]
    if len(names) != len(before):
        names = [f"{i}" for i in range(len(before))]
    return Figure(
        "surviving_units.png",
        "Surviving units per layer",
        f"Widths before → after compression: {'-'.join(map(str, before))} → "
        f"{'-'.join(map(str, after))}.",
        plots.surviving_units(names, before, after),
    )


def _reliability_figure(model: nn.Module, run: Run) -> Figure:
    data = run.data()
    mode = modes_for(run.config, model)[0]
    x, y = data.test
    pred = predict(
        model,
        x,
        samples=run.config.evaluate.samples,
        mode=mode,
        likelihood=run.likelihood(),
        seed=run.config.train.seed,
    )
    bins = metrics.calibration_bins(pred.probs, y, run.config.evaluate.bins)
    ece = metrics.ece(pred.probs, y, run.config.evaluate.bins)
    return Figure(
        "reliability.png",
        "Reliability diagram",
        f"Test set, {mode} predictive ({run.config.evaluate.bins} bins).",
        plots.reliability(bins.confidence, bins.accuracy, bins.count, ece),
    )


def _features_figure(features: dict[str, Any], run: Run) -> Figure:
    data = run.data()
    shape = data.image_shape if features["n_features"] == data.n_features else None
    return Figure(
        "features.png",
        "Selected input features",
        f"{len(features['selected'])} of {features['n_features']} features kept by "
        f"{features['score']} + rule {features['rule']}.",
        plots.feature_scores(
            features["scores"],
            features["selected"],
            features["names"],
            features["score"],
            image_shape=shape,
            true_features=features.get("true_features"),
        ),
    )


def _table(rows: list[list[Any]], header: list[str]) -> tuple[str, str]:
    """The same table as HTML and as markdown."""

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    h = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>"
    for row in rows:
        h += "<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
    md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    md += "".join("| " + " | ".join(fmt(v) for v in row) + " |\n" for row in rows)
    return h + "</table>", md


_CSS = """body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:right}th{background:#f3f3f3}img{max-width:100%}
figure{margin:1.5em 0}figcaption{font-size:13px;color:#555}pre{background:#f7f7f7;padding:8px}"""


def _metric_rows(evaluation: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    keys: list[str] = []
    rows = []
    for name, entry in evaluation.items():
        for mode, values in entry["modes"].items():
            keys += [k for k in values if k not in keys]
            rows.append((name, mode, entry["size"]["nonzero_weights"], values))
    header = ["model", "mode", "non-zero weights", *keys]
    return [[n, m, nz, *(v.get(k, "–") for k in keys)] for n, m, nz, v in rows], header


def build_report(run: Run) -> dict[str, Path]:
    """Write report/report.html, report/report.md and the PNGs; return their paths."""
    model = run.load_model("trained")
    folder = run.path("report")
    evaluation = {
        name: {
            "size": metrics.model_size(m).as_dict(),
            "modes": {mode: evaluate_model(m, run, mode) for mode in modes_for(run.config, m)},
        }
        for name, m in [("trained", model)]
        + ([("compressed", run.load_model("compressed"))] if run.has_model("compressed") else [])
    }
    history = (run.read_json("metrics.json") or {}).get("history", [])
    figures = [
        Figure(
            "training_curves.png",
            "Training curves",
            "Per epoch: the loss (negative ELBO per training example, KL scaled by 1/N), "
            "its NLL and KL parts, and the validation metric.",
            plots.training_curves(history),
        ),
    ]
    figures += _posterior_figures(model)
    figures.append(_pruning_figure(model, run))
    compression = run.read_json("compressed/compression.json")
    notes = []
    if compression:
        units = _units_figure(compression)
        if units:
            figures.append(units)
    else:
        notes.append("No compression yet: run `bayesprune compress RUN` for surviving units.")
    if run.data().task == "classification":
        figures.append(_reliability_figure(model, run))
    features = run.read_json("features.json") or select_features(run, write=False)
    figures.append(_features_figure(features, run))

    for fig in figures:
        atomic_write_bytes(folder / fig.name, fig.png)
    rows, header = _metric_rows(evaluation)
    metric_html, metric_md = _table(rows, header)
    desc = run.describe()
    info_html, info_md = _table([[k, v] for k, v in desc.items()], ["", "value"])
    title = f"bayesprune report: {run.folder.name}"
    names = features["selected_names"]
    more = "" if len(names) <= 60 else f" … (+{len(names) - 60})"
    selected = ", ".join(names[:60])
    sel_line = f"Selected features ({features['score']}, rule {features['rule']}): {selected}{more}"
    if "selection" in features:
        s = features["selection"]
        sel_line += f" — against the known truth: TPR {s['tpr']:.2f}, FDR {s['fdr']:.2f}"
    comp_md = comp_html = ""
    if compression:
        t = compression["totals"]
        comp_md = (
            f"Compression ({compression.get('extra', {}).get('score')} + "
            f"{compression.get('extra', {}).get('rule')}): non-zero weights "
            f"{t['nonzero_before']} → {t['nonzero_after']}, architecture "
            f"{'-'.join(map(str, t['architecture_before']))} → "
            f"{'-'.join(map(str, t['architecture_after']))}."
        )
        comp_html = f"<p>{html.escape(comp_md)}</p>"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        info_html,
        "<h2>Metrics (test set)</h2>",
        metric_html,
        comp_html,
        f"<p>{html.escape(sel_line)}</p>",
    ]
    body += [f"<p><em>{html.escape(n)}</em></p>" for n in notes]
    md = [
        f"# {title}",
        "",
        info_md,
        "## Metrics (test set)",
        "",
        metric_md,
        comp_md,
        "",
        sel_line,
        "",
    ] + [f"*{n}*\n" for n in notes]
    for fig in figures:
        data = base64.b64encode(fig.png).decode()
        body.append(
            f'<figure><h2>{html.escape(fig.title)}</h2><img alt="{fig.name}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(fig.caption)} '
            f'(<a href="{fig.name}">{fig.name}</a>)</figcaption></figure>'
        )
        md += [f"## {fig.title}", "", f"![{fig.title}]({fig.name})", "", fig.caption, ""]
    config_text = html.escape(dump_config(run.config))
    body.append(f"<details><summary>config.yaml</summary><pre>{config_text}</pre></details>")
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )
    html_path = atomic_write_bytes(folder / "report.html", page.encode())
    md_path = atomic_write_bytes(folder / "report.md", "\n".join(md).encode())
    run.log(f"report: {html_path}")
    return {"html": html_path, "markdown": md_path, **{f.name: folder / f.name for f in figures}}
