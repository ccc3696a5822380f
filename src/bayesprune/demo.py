"""`bayesprune demo`: the main job end to end on bundled data, in about a minute.

Three networks of the same shape (80 → 64 → 10) learn scikit-learn's bundled
digits (8×8 images, 10 classes) with 16 pure-noise columns appended, so that
feature selection has a known answer:

- a spike-and-slab BNN with a gate on every input feature and hidden unit,
  compressed by its posterior inclusion probabilities (median-probability model:
  keep PIP > 0.5), input features included;
- a mean-field Gaussian BNN, pruned by weight signal-to-noise ratio at the largest
  sparsity whose validation accuracy stays within 1 point of the unpruned model;
- the same deterministic MLP pruned by weight magnitude with the same search, the
  usual non-Bayesian baseline.

Each is a run folder (`out/<name>/`, see `bayesprune.app.folder`) that goes through
train → compress (mask + shrink) → select-features → report, so each has its own
HTML report; `out/demo.md` and `out/demo.json` hold the comparison table (size,
accuracy, ECE, selected features). The spike-and-slab and Gaussian KL terms are
tempered (`kl_weight` 0.3): with 1,347 training images the full KL switches
almost every hidden unit's gate off, and the median-probability network collapses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .app.config import RunConfig, parse_config
from .app.folder import Run
from .app.report import build_report
from .app.steps import compress_run, select_features, train_run
from .app.threads import limited_threads
from .io import atomic_write_bytes, atomic_write_json

NOISE_COLUMNS = 16
MODELS = {
    "spike_slab": {"family": "spike_slab", "input_gates": True, "layer": {"rho_init": -3.0}},
    "gaussian": {"family": "gaussian", "prior": {"scale": 1.0}, "layer": {"rho_init": -3.0}},
    "deterministic": {"family": "deterministic"},
}
LABELS = {
    "spike_slab": "spike-and-slab BNN (PIP > 0.5)",
    "gaussian": "Gaussian BNN (SNR, search)",
    "deterministic": "deterministic (|w|, search)",
}


def demo_config(name: str, epochs: int = 60, seed: int = 0) -> RunConfig:
    """The run config of one demo model (`name` in MODELS)."""
    if name not in MODELS:
        raise ValueError(f"unknown demo model {name!r}; valid: {sorted(MODELS)}")
    bayesian = name != "deterministic"
    return parse_config(
        {
            "data": {"name": "digits", "noise_columns": NOISE_COLUMNS, "val_fraction": 0.15,
                     "seed": seed},
            "model": {"builder": "mlp", "kwargs": {"hidden": [64]}, **MODELS[name]},
            "train": {"epochs": epochs, "batch_size": 64, "lr": 1e-2, "lr_schedule": "cosine",
                      "kl_weight": 0.3 if bayesian else 1.0, "seed": seed},
            "compress": {"delta": 0.01},
            "evaluate": {"samples": 20},
        }
    )  # fmt: skip


def _row(name: str, report: dict[str, Any], features: dict[str, Any]) -> dict[str, Any]:
    t, after = report["totals"], report["metrics"]["after"]
    selected = features["selected"]
    noise = [j for j in selected if j >= features["n_features"] - NOISE_COLUMNS]
    return {
        "model": LABELS[name],
        "architecture": "-".join(map(str, t["architecture_after"])),
        "nonzero_weights_before": t["nonzero_before"],
        "nonzero_weights": t["nonzero_after"],
        "bytes": min(t["dense_bytes_after"], t["csr_bytes_after"]),
        "accuracy": after["accuracy"],
        "ece": after["ece"],
        "accuracy_before": report["metrics"]["before"]["accuracy"],
        "inputs_after": t["architecture_after"][0],
        "features_selected": len(selected),
        "noise_features_selected": len(noise),
        "feature_score": features["score"],
    }


def run_demo(
    out: str | Path, epochs: int = 60, seed: int = 0, progress: bool = False, threads: int = 1
) -> dict:
    """Train, compress, select features and report three models; write demo.json / demo.md.

    `threads`: torch CPU threads while the demo runs (1 suits these small networks,
    above all on a shared machine); the previous setting is restored afterwards.
    """
    with limited_threads(threads):
        return _run_demo(Path(out), epochs, seed, progress)


def _run_demo(out: Path, epochs: int, seed: int, progress: bool) -> dict:
    rows, reports = [], []
    for name in MODELS:
        config = demo_config(name, epochs, seed)
        train_run(config, out / name, progress=progress)
        run = Run.open(out / name)
        report = compress_run(run, progress=progress)
        features = select_features(run)
        reports.append(str(build_report(run)["html"]))
        rows.append(_row(name, report, features))
    atomic_write_json(out / "demo.json", {"rows": rows, "epochs": epochs, "seed": seed,
                                          "reports": reports})  # fmt: skip
    atomic_write_bytes(out / "demo.md", markdown(rows).encode())
    return {"rows": rows, "out": str(out), "reports": reports}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"# bayesprune demo: digits + {NOISE_COLUMNS} noise columns, 80-64-10 MLP\n",
        "Test set, before → after compression; Monte-Carlo predictive for the Bayesian nets "
        "(posterior mean for the plain one). Two different input counts: *inputs read* is "
        "the first width of the compressed network (inputs whose every weight was pruned are "
        "gone); *features selected* is what `select-features` keeps by the trained model's "
        f"input scores (of 80), and *noise* how many of those are noise (of {NOISE_COLUMNS}).\n",
        "| model | architecture after | non-zero weights | bytes (dense or CSR) | accuracy | ECE "
        "| inputs read | features selected | noise selected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['architecture']} "
            f"| {r['nonzero_weights_before']} → {r['nonzero_weights']} | {r['bytes']} "
            f"| {r['accuracy_before']:.3f} → {r['accuracy']:.3f} | {r['ece']:.3f} "
            f"| {r['inputs_after']} | {r['features_selected']} ({r['feature_score']}) "
            f"| {r['noise_features_selected']} |"
        )
    return "\n".join(lines) + "\n"
