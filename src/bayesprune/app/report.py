"""`report RUN`: one self-contained HTML page and a markdown twin for a run folder.

The page shows what the posterior says and what compression did: training curves
(negative ELBO, NLL, KL, validation metric), histograms of weight SNR, unit
(kernel) norms and PIPs, error vs. fraction pruned, surviving units per layer, a
reliability diagram and the selected features. Figures are PNGs written next to
the page (`report/*.png`, which the markdown references) and also embedded in
the HTML as base64, so the HTML alone can be mailed or archived.

The report renders only from the JSON the steps wrote (metrics.json,
evaluation.json, compressed/compression.json, features.json); a missing or stale
one is written first by its step, which reuses what is current.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__, plots
from .config import dump_config
from .folder import Run
from .steps import evaluate_run, select_features
from .steps.features import features_png
from .steps.restore import RESTORE_JSON


@dataclass
class Figure:
    name: str  # file name, e.g. "training_curves.png"
    title: str
    caption: str
    png: bytes


_POSTERIOR_FIGURES = (
    ("snr", "snr_histogram.png", "Weight signal-to-noise ratio", "weight SNR |μ|/σ", "SNR",
     "|μ|/σ of every weight; pruning by SNR removes the left tail first."),
    ("unit_norm", "unit_norm_histogram.png", "Unit / kernel norms", "‖μ‖ per unit / kernel",
     "norm", "Frobenius norm of each unit's (kernel's) posterior-mean incoming weights; a "
     "spike near zero is redundancy the network found by itself."),
    ("unit_pip", "unit_pip_histogram.png", "Posterior inclusion probabilities of units",
     "unit PIPs", "PIP", "γ per unit (or 1 − Π(1 − φ) over its edges); the "
     "median-probability model keeps PIP > 0.5."),
    ("input_pip", "input_pip_histogram.png", "Posterior inclusion probabilities of input "
     "features", "input PIPs", "PIP", "PIP of each input feature of the first layer."),
)  # fmt: skip


def _posterior_figures(summary: dict[str, Any]) -> list[Figure]:
    return [
        Figure(name, title, caption, plots.histogram_from_counts(summary[key], label, xlabel))
        for key, name, title, label, xlabel, caption in _POSTERIOR_FIGURES
        if key in summary
    ]


def _pruning_figure(curve: dict[str, Any]) -> Figure:
    curves = {k: [tuple(p) for p in v] for k, v in curve["curves"].items()}
    rows, of = curve.get("rows"), curve.get("of_rows")
    subset = ""
    if rows and of and rows < of:
        subset = f" On {rows:,} of the {of:,} test rows (evenly spaced)."
    return Figure(
        "error_vs_pruned.png",
        "Error vs. fraction of weights pruned",
        "Weights removed globally in ascending order of the score, no retraining." + subset,
        plots.pruning_curve(curves, curve["metric"]),
    )


def _ood_line(compression: dict[str, Any]) -> str:
    """The test OOD AUROC before → after, when `compress` was given OOD images."""
    ood = compression.get("extra", {}).get("metrics_ood")
    before, after = (compression.get("metrics", {}).get(k, {}) for k in ("before", "after"))
    shown = [
        f"{name.removeprefix('ood_auroc_')} {before[name]:.3f} → {after[name]:.3f}"
        for name in after
        if name.startswith("ood_auroc_") and name in before
    ]
    if not ood or not shown:
        return ""
    return f" OOD AUROC against {ood['name']} test images: {', '.join(shown)}."


def _units_figure(compression: dict[str, Any]) -> Figure | None:
    totals = compression.get("totals", {})
    before, after = totals.get("architecture_before"), totals.get("architecture_after")
    if not before or not after or len(before) != len(after):
        return None
    names = ["inputs", *layer_labels(compression.get("layers", []))]
    if len(names) != len(before):
        names = [f"width {i}" for i in range(len(before))]
    return Figure(
        "surviving_units.png",
        "Surviving units per layer",
        f"Widths before → after compression: {'-'.join(map(str, before))} → "
        f"{'-'.join(map(str, after))}.",
        plots.surviving_units(names, before, after),
    )


def layer_labels(layers: list[dict[str, Any]]) -> list[str]:
    """Readable names for the prunable layers: a chain's "0", "3", "7" become "conv 1",
    "conv 2", "dense 1", "output"; a model's own attribute paths are kept as they are."""
    if not all(str(r["name"]).isdigit() for r in layers):
        return [str(r["name"]) for r in layers]
    labels, counts = [], {"conv": 0, "dense": 0}
    for k, r in enumerate(layers):
        kind = "conv" if "conv" in str(r.get("kind", "")).lower() else "dense"
        counts[kind] += 1
        labels.append("output" if k == len(layers) - 1 else f"{kind} {counts[kind]}")
    return labels


def _header_rows(trained: dict[str, Any], run: Run) -> list[list[Any]]:
    """What was run (data, model) and how: seed, version, when, how long."""
    rows = [[k, v] for k, v in trained.get("run", {}).items()]
    made = trained.get("provenance", {})
    rows.append(["seed", made.get("seed", run.config.train.seed)])
    if "training_seconds" in made:
        device = f" on {made['device']}" if "device" in made else ""
        rows.append(["training time", f"{made['training_seconds']:.1f} s{device}"])
    if "finished" in made:
        rows.append(["trained (UTC)", made["finished"]])
    rows.append(["trained with", f"bayesprune {made.get('bayesprune', 'unknown')}"])
    now = datetime.now(UTC).isoformat(timespec="seconds")
    rows.append(["report (UTC)", f"{now}, bayesprune {__version__}"])
    return rows


def _modes_note(run: Run) -> str:
    return (
        f"mode mc: the Monte-Carlo predictive ({run.config.evaluate.samples} forward passes "
        "with sampled weights, averaged); mode mean: one pass of the posterior-mean network. "
        "A deterministic predictive (eVI, or a plain network) has only mean."
    )


def _floor_note(rel: dict[str, Any]) -> str:
    """The ECE beside what a perfectly calibrated model measures on as many rows."""
    floor = rel.get("ece_floor")
    if floor is None:  # an evaluation.json written before the floor was recorded
        return ""
    where = "within" if rel["ece"] <= floor["upper_95"] else "above"
    return (
        f" ECE {rel['ece']:.4f}: a perfectly calibrated model with these confidences "
        f"measures {floor['mean']:.4f} on as many rows (95 % below {floor['upper_95']:.4f}), "
        f"so this ECE is {where} the sampling noise."
    )


def _reliability_figure(rel: dict[str, Any], bins: int) -> Figure:
    return Figure(
        "reliability.png",
        "Reliability diagram",
        f"Test set, {rel['mode']} predictive ({bins} bins).{_floor_note(rel)}",
        plots.reliability(rel["confidence"], rel["accuracy"], rel["count"], rel["ece"]),
    )


def _features_figure(features: dict[str, Any]) -> Figure:
    return Figure(
        "features.png",
        "Selected input features",
        f"{len(features['selected'])} of {features['n_features']} features kept by "
        f"{features['score']} + rule {features['rule']}.",
        features_png(features),
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


def _restore_section(run: Run) -> tuple[str, str]:
    """What `restore` chose and the metrics before → after (HTML, markdown); empty if none.

    A restore.json written for another compressed model is shown as stale, not as current.
    """
    record = run.read_json(RESTORE_JSON)
    if not record:
        return "", ""
    if record.get("compressed_sha256") != run.model_digest("compressed"):
        note = "restored/ belongs to an earlier compressed model: run `bayesprune restore RUN`."
        return f"<h2>Restored uncertainty</h2><p><em>{html.escape(note)}</em></p>", (
            f"## Restored uncertainty\n\n*{note}*\n"
        )
    temperature = record.get("temperature")
    chosen = f"Chosen: {record['method']}" + (
        f" (temperature {temperature:.3g})" if isinstance(temperature, float) else ""
    )
    splits = ", ".join(f"{s['name']}: {s['rows']} rows" for s in record["splits"].values())
    text = f"{chosen}. Rule: {record['rule']}. Splits: {splits}."
    tested = record["before"]["test"]
    keys = [k for k in ("accuracy", "nll", "ece") if k in tested]
    keys += [k for k in tested if k.startswith("ood_auroc")]
    cand_rows = [
        [name, "yes" if c["eligible"] else f"no: {c.get('why_not')}",
         *(c["validation"].get(k, "–") for k in keys)]
        for name, c in record["candidates"].items()
    ]  # fmt: skip
    split_rows = [
        [split, when, *(record[when][split].get(k, "–") for k in keys)]
        for split in ("validation", "test")
        for when in ("before", "after")
    ]
    cand_html, cand_md = _table(cand_rows, ["candidate", "eligible", *keys])
    split_html, split_md = _table(split_rows, ["split", "", *keys])
    body = (
        f"<h2>Restored uncertainty</h2><p>{html.escape(text)}</p>"
        f"<h3>Candidates (validation, second half)</h3>{cand_html}"
        f"<h3>Before → after</h3>{split_html}"
    )
    md = (
        f"## Restored uncertainty\n\n{text}\n\n### Candidates (validation, second half)\n\n"
        f"{cand_md}\n### Before → after\n\n{split_md}"
    )
    return body, md


def _metric_rows(evaluation: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    keys: list[str] = []
    rows = []
    for name, entry in evaluation.items():
        for mode, values in entry["modes"].items():
            keys += [k for k in values if k not in keys]
            rows.append((name, mode, entry["size"]["nonzero_weights"], values))
    header = ["model", "mode", "non-zero weights", *keys]
    return [[n, m, nz, *(v.get(k, "–") for k in keys)] for n, m, nz, v in rows], header


def build_report(run: Run, *, progress: bool = False) -> dict[str, Path]:
    """Write report/report.html, report/report.md and the PNGs; return their paths."""
    with run.locked():
        return _build_report(run, progress)


def _build_report(run: Run, progress: bool) -> dict[str, Path]:
    trained = run.read_json("metrics.json")
    if trained is None:
        raise FileNotFoundError(
            f"{run.path('metrics.json')} is missing; run `bayesprune train CONFIG --out RUN` first"
        )
    evaluation = evaluate_run(run, progress=progress)
    features = run.read_json("features.json") or select_features(run)
    compression = run.read_json("compressed/compression.json")
    folder = run.path("report")
    history = trained.get("history", [])
    figures = [
        Figure(
            "training_curves.png",
            "Training curves",
            "Per epoch: the loss (negative ELBO per training example, KL scaled by 1/N), "
            "its NLL and KL parts, and the validation metric.",
            plots.training_curves(history),
        ),
    ]
    figures += _posterior_figures(trained.get("posterior", {}))
    if "pruning_curve" in evaluation.get("trained", {}):
        figures.append(_pruning_figure(evaluation["trained"]["pruning_curve"]))
    notes = []
    if compression:
        units = _units_figure(compression)
        if units:
            figures.append(units)
    else:
        notes.append("No compression yet: run `bayesprune compress RUN` for surviving units.")
    reliability = evaluation.get("trained", {}).get("reliability")
    if reliability:
        figures.append(_reliability_figure(reliability, run.config.evaluate.bins))
    figures.append(_features_figure(features))

    rows, header = _metric_rows(evaluation)
    metric_html, metric_md = _table(rows, header)
    info_html, info_md = _table(_header_rows(trained, run), ["", "value"])
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
            f"{'-'.join(map(str, t['architecture_after']))}." + _ood_line(compression)
        )
        comp_html = f"<p>{html.escape(comp_md)}</p>"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        info_html,
        "<h2>Metrics (test set)</h2>",
        metric_html,
        f"<p><small>{html.escape(_modes_note(run))}</small></p>",
        comp_html,
        f"<p>{html.escape(sel_line)}</p>",
    ]
    body += [f"<p><em>{html.escape(n)}</em></p>" for n in notes]
    restore_html, restore_md = _restore_section(run) if compression else ("", "")
    body.append(restore_html)
    md = (
        [
            f"# {title}",
            "",
            info_md,
            "## Metrics (test set)",
            "",
            metric_md,
            _modes_note(run),
            "",
            comp_md,
            "",
            sel_line,
            "",
        ]
        + [f"*{n}*\n" for n in notes]
        + [restore_md]
    )
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
    with run.publish("report") as tx:
        for fig in figures:
            tx.write_bytes(f"report/{fig.name}", fig.png)
        tx.write_bytes("report/report.html", page.encode())
        tx.write_bytes("report/report.md", "\n".join(md).encode())
    html_path, md_path = folder / "report.html", folder / "report.md"
    run.log(f"report: {html_path}")
    return {"html": html_path, "markdown": md_path, **{f.name: folder / f.name for f in figures}}
