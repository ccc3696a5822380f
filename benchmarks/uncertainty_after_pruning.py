"""Uncertainty after pruning: does a pruned LeNet-300-100 keep its calibration and OOD detection?

Trains a Bayesian (scale-mixture prior, as `foundation_lenet300.py`) and a
deterministic LeNet-300-100 on MNIST, prunes them (SNR / magnitude) at the sparsity
`compress.search_sparsity` picks on a validation split carved from the training data,
once holding accuracy alone and once holding accuracy, NLL, ECE and OOD AUROC
(validation OOD: Fashion-MNIST *training* images), then applies each restoring method
of `bayesprune.restore_uncertainty`. Reports accuracy, NLL, ECE and OOD AUROC (MNIST
test in, Fashion-MNIST test out) before pruning, after pruning and after each method,
mean ± sd over seeds. The test and OOD test sets only score; nothing is chosen on them.

    python benchmarks/uncertainty_after_pruning.py --epochs 40 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch
from _common import add_results_dir_option, md_table, use_results_dir, write_results
from torch import nn

import bayesprune as bp
from bayesprune import compress
from bayesprune.data import load_fashion_mnist, load_mnist

PRIOR = {"kind": "scale_mixture", "pi": 0.5, "scale1": 1.0, "scale2": math.exp(-6)}
REPORTED = ("accuracy", "nll", "ece", "ood_auroc_entropy", "ood_auroc_mi")


def prune_and_restore(
    model: nn.Module,
    bayesian: bool,
    data: dict[str, Any],
    tolerances: dict[str, float],
    args: argparse.Namespace,
    seed: int,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Search the sparsity on validation, prune, restore by each method: test metrics per stage."""
    mode = "mc" if bayesian else "mean"
    val = bp.scorer(
        data["val"], mode=mode, samples=args.val_samples, ood=data["val_ood"], seed=seed
    )
    held = {k: v for k, v in tolerances.items() if bayesian or k != "ood_auroc_mi"}
    scores = compress.weight_scores(model, "snr" if bayesian else "magnitude")
    search = compress.search_sparsity(model, scores, val, tolerances=held)
    pruned = compress.pruned_copy(model, scores, search.sparsity)  # = search.masks
    stages = {"pruned": data["test_score"][mode](pruned)}
    methods = ["temperature", "variances", "finetune"] if bayesian else ["temperature", "finetune"]
    for method in methods:
        repaired = bp.restore_uncertainty(
            pruned,
            method,
            train=data["train"],
            val=data["val"],
            epochs=args.restore_epochs,
            mode=mode,
            samples=args.val_samples,
            seed=seed,
            batch_size=args.batch_size,
        )
        stages[method] = data["test_score"][mode](repaired)
    return stages, search.as_dict()


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Both networks trained, pruned under both tolerance sets and restored, for one seed."""
    train_all = load_mnist("train", limit=args.train_limit, seed=seed)
    x, y = train_all.tensors
    n_val = args.val_size
    x_test, y_test = load_mnist("test").tensors
    x_ood_test = load_fashion_mnist("test").tensors[0]
    x_ood_val = load_fashion_mnist("train", limit=n_val, seed=seed).tensors[0]
    test_score = {
        mode: bp.scorer(
            (x_test, y_test), mode=mode, samples=args.mc_samples, ood=x_ood_test, seed=seed
        )
        for mode in ("mc", "mean")
    }
    data = {
        "train": (x[:-n_val], y[:-n_val]),
        "val": (x[-n_val:], y[-n_val:]),
        "val_ood": x_ood_val,
        "test_score": test_score,
    }
    settings = dict(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule="cosine",
        seed=seed,
        progress=False,
    )
    variants = {
        "accuracy": {"accuracy": args.delta},
        "uncertainty": {
            "accuracy": args.delta,
            "nll": args.nll_tolerance,
            "ece": args.ece_tolerance,
            "ood_auroc_entropy": args.auroc_tolerance,
            "ood_auroc_mi": args.auroc_tolerance,
        },
    }
    out: dict[str, Any] = {"seed": seed, "stages": {}, "searches": {}}
    for name, bayesian in (("bayesian", True), ("deterministic", False)):
        torch.manual_seed(seed)
        model = (
            bp.lenet_300_100(prior=PRIOR) if bayesian else bp.lenet_300_100(family="deterministic")
        )
        bp.fit(model, data["train"], **settings)
        out["stages"][f"{name}/before"] = test_score["mc" if bayesian else "mean"](model)
        for variant, tolerances in variants.items():
            stages, search = prune_and_restore(model, bayesian, data, tolerances, args, seed)
            out["searches"][f"{name}/{variant}"] = search
            for stage, metrics in stages.items():
                out["stages"][f"{name}/{variant}/{stage}"] = metrics
        if bayesian:
            bayes_sparsity = out["searches"]["bayesian/accuracy"]["sparsity"]
        else:  # the deterministic net at the Bayesian net's sparsity, for the ECE target
            scores = compress.weight_scores(model, "magnitude")
            same = compress.pruned_copy(model, scores, bayes_sparsity)
            out["searches"]["deterministic/at-bayesian-sparsity"] = {"sparsity": bayes_sparsity}
            out["stages"]["deterministic/at-bayesian-sparsity/pruned"] = test_score["mean"](same)
        print(f"seed {seed}: {name} done", flush=True)
    return out


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sd over seeds of every stage's metrics, and of the searched sparsity."""
    rows = []
    for stage in runs[0]["stages"]:
        row: dict[str, Any] = {"model / stage": stage}
        search = stage.rsplit("/", 1)[0]
        sparsities = [r["searches"][search]["sparsity"] for r in runs if search in r["searches"]]
        row["sparsity"] = _mean_sd(sparsities) if sparsities else ("-" if "before" in stage else "")
        for metric in REPORTED:
            values = [r["stages"][stage].get(metric) for r in runs]
            row[metric] = _mean_sd(values) if None not in values else "-"
        rows.append(row)
    return rows


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 18's targets, per seed averaged: ECE ≤ 1.5× unpruned Bayesian and below the
    deterministic net at the same sparsity; OOD AUROC within 0.02 of the unpruned Bayesian."""

    def mean(stage: str, metric: str) -> float:
        return statistics.mean(r["stages"][stage][metric] for r in runs)

    base_ece = mean("bayesian/before", "ece")
    det_ece = mean("deterministic/at-bayesian-sparsity/pruned", "ece")
    out = {}
    for stage in runs[0]["stages"]:
        if not stage.startswith("bayesian/") or stage.endswith("before"):
            continue
        ece = mean(stage, "ece")
        out[stage] = {
            "ece_le_1.5x_unpruned": ece <= 1.5 * base_ece,
            "ece_ratio_to_unpruned": ece / base_ece,
            "ece_below_deterministic_same_sparsity": ece < det_ece,
            "auroc_entropy_drop": mean("bayesian/before", "ood_auroc_entropy")
            - mean(stage, "ood_auroc_entropy"),
            "auroc_mi_drop": mean("bayesian/before", "ood_auroc_mi") - mean(stage, "ood_auroc_mi"),
            "accuracy_drop": mean("bayesian/before", "accuracy") - mean(stage, "accuracy"),
        }
        out[stage]["auroc_within_0.02"] = (
            max(out[stage]["auroc_entropy_drop"], out[stage]["auroc_mi_drop"]) <= 0.02
        )
    return out


def verdict(payload: dict[str, Any]) -> str:
    """Which of issue 18's targets this run meets or misses, and by how much."""
    runs = payload["runs"]
    acc = statistics.mean(r["stages"]["bayesian/before"]["accuracy"] for r in runs)
    ece = statistics.mean(r["stages"]["bayesian/before"]["ece"] for r in runs)
    det = statistics.mean(r["stages"]["deterministic/before"]["ece"] for r in runs)
    lines = [
        f"- Accuracy: the unpruned Bayesian net reaches {100 * (1 - acc):.1f} % test error "
        f"here, against the foundation target of 2.0 %: the accuracy target is missed by "
        f"{100 * (1 - acc) - 2:.1f} points before any pruning, because this run is small. Its "
        f"ECE ({ece:.4f}) is that of an under-trained net and above the deterministic net's "
        f"({det:.4f}), so 'ECE ≤ 1.5× the unpruned Bayesian net' is a weak bar in this run.",
    ]
    for stage, t in payload["targets"].items():
        misses = []
        if not t["ece_le_1.5x_unpruned"]:
            misses.append(f"ECE {t['ece_ratio_to_unpruned']:.2f}× the unpruned (target ≤ 1.5×)")
        if not t["ece_below_deterministic_same_sparsity"]:
            misses.append("ECE not below the deterministic net's at the same sparsity")
        worst = max(t["auroc_entropy_drop"], t["auroc_mi_drop"])
        if worst > 0.02:
            misses.append(f"OOD AUROC down {worst:.3f} (target ≤ 0.02)")
        state = "misses " + "; ".join(misses) if misses else "meets the ECE and AUROC targets"
        lines.append(
            f"- {stage}: {state} (ECE {t['ece_ratio_to_unpruned']:.2f}× unpruned, AUROC drop "
            f"{worst:+.3f}, accuracy drop {t['accuracy_drop']:+.4f})."
        )
    lines.append(
        "- Not measured here: the 40-epoch foundation setting, the reverse OOD direction "
        "(Fashion-MNIST in, MNIST out), LeNet-5-Caffe, the eVI CNN and the spike-and-slab "
        "median model, all of which issue 18 asks for."
    )
    return "\n".join(lines) + "\n"


def render(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    target_rows = [{"stage": k, **v} for k, v in payload["targets"].items()]
    return (
        f"Small configuration: {s['epochs']} epochs on {s['train_limit']} MNIST training images "
        f"({s['val_size']} of them held out for validation), seeds {s['seeds']}; NOT the "
        "40-epoch foundation setting. Test: MNIST test (10,000) in-distribution, "
        "Fashion-MNIST test (10,000) out. Bayesian: Monte-Carlo predictive "
        f"({s['mc_samples']} samples); deterministic: one pass. Searches on validation "
        f"({s['val_samples']} samples, validation OOD = {s['val_size']} Fashion-MNIST "
        f"training images): 'accuracy' holds accuracy within {s['delta']}; 'uncertainty' also "
        f"NLL within {s['nll_tolerance']}, ECE within {s['ece_tolerance']} and OOD AUROC "
        f"within {s['auroc_tolerance']}. Restoring: temperature on validation; variances / "
        f"finetune {s['restore_epochs']} epoch(s).\n\nMean ± sd over seeds:\n\n"
        + md_table(payload["summary"])
        + "\nIssue 18 targets (Bayesian stages, seed means):\n\n"
        + md_table(target_rows)
        + "\nMet and missed in this small run (seed means; the sd over seeds is in the "
        "first table):\n\n" + verdict(payload)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--mc-samples", type=int, default=30, help="test predictive")
    parser.add_argument("--val-samples", type=int, default=10, help="validation predictive")
    parser.add_argument("--delta", type=float, default=0.005, help="accuracy tolerance")
    parser.add_argument("--nll-tolerance", type=float, default=0.02)
    parser.add_argument("--ece-tolerance", type=float, default=0.005)
    parser.add_argument("--auroc-tolerance", type=float, default=0.01)
    parser.add_argument("--restore-epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rerender", metavar="JSON", help="only rewrite results from a JSON")
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    if args.rerender:
        rerender(args.rerender)
        return
    torch.set_num_threads(args.threads)
    del args.rerender
    settings = {**vars(args), "prior": PRIOR}
    runs = [run_seed(seed, args) for seed in args.seeds]
    payload = {"settings": settings, "runs": runs, "summary": summarise(runs)}
    payload["targets"] = targets(runs)
    md = render(payload)
    print(md)
    write_results("uncertainty_after_pruning", payload, md)


def rerender(path: str) -> None:
    """Rewrite the summary, targets and markdown from a saved JSON, keeping its command
    and machine, without retraining."""
    payload = json.loads(Path(path).read_text())
    command, machine_info = payload.pop("command"), payload.pop("machine")
    payload.pop("benchmark", None)
    payload["summary"] = summarise(payload["runs"])
    payload["targets"] = targets(payload["runs"])
    write_results("uncertainty_after_pruning", payload, render(payload), command, machine_info)


if __name__ == "__main__":
    main()
