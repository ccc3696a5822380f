"""Where a compressed ConvNeXt loses its OOD AUROC by mutual information (validation only).

Session 26 found the small ConvNeXt's compressed Bayesian net 0.05 below the dense one's
MI AUROC on test (`convnext_fashion.py`), with no level holding the validation rule. This
asks which step costs it, on development seeds (never the reported 0-2) and validation
rows only (the test sets are not loaded). Per seed, `convnext_fashion.py`'s Bayesian net
is trained as there, then scored (validation accuracy, NLL, ECE and OOD AUROC by entropy
and MI of the Monte-Carlo predictive, MNIST training images out) as:

- dense; dense after the same fine-tune as the compressed nets (a control: does the
  fine-tune itself move the MI AUROC?);
- cut (`activation_scores` → `keep_units(sparsity)` → `shrink_graph`), not trained;
- cut + fine-tune (the benchmark's: `--finetune-epochs` at `--finetune-lr`, cosine);
- cut + fine-tune with the posterior scales held (`train_variances=False`);
- cut + the scales re-estimated alone (`reestimate_variances`, the library's default);
- cut + fine-tune + the scales re-estimated.

    python benchmarks/convnext_mi_dev.py --seeds 5 6
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from _common import (
    add_results_dir_option,
    md_table,
    mean_sd,
    recorded_settings,
    use_results_dir,
    write_results,
)
from _resnet import fashion_data
from convnext_fashion import add_net_options, build
from torch import nn

import bayesprune as bp
from bayesprune import compress

NAME = "convnext_mi_dev"
METRICS = ["accuracy", "nll", "ece", "ood_auroc_entropy", "ood_auroc_mi"]


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    data = fashion_data(seed, args.train_limit, args.val_size, 0, with_test=False)
    train = data["train"]
    fit = {"batch_size": args.batch_size, "seed": seed, "progress": False}
    started = time.perf_counter()
    bayes = bp.convert(build(seed, args), "gaussian", init_from_weights=True, keep=args.keep)
    bp.fit(bayes, train, epochs=args.epochs, lr=args.lr, lr_schedule="cosine", **fit)
    trained_s = time.perf_counter() - started
    judge = bp.scorer(
        data["val"], mode="mc", samples=args.mc_samples, ood=data["val_ood"], metrics=METRICS,
        seed=seed,
    )  # fmt: skip
    tune = {"epochs": args.finetune_epochs, "lr": args.finetune_lr, "lr_schedule": "cosine"}

    def tuned(net: nn.Module, **options: Any) -> nn.Module:
        net = copy.deepcopy(net)
        bp.finetune(net, train, **tune, **options, **fit)
        return net

    def variances(net: nn.Module) -> nn.Module:
        net = copy.deepcopy(net)
        bp.finetuning.reestimate_variances(net, train, **fit)
        return net

    bayes.eval()
    x = train[0]
    scores = compress.activation_scores(bayes, x[: 256 * args.score_batches].split(256))
    scores = {k: v for k, v in scores.items() if torch.isfinite(v).all()}
    cut = compress.shrink_graph(
        bayes, (x[:2],), prune_units=compress.keep_units(scores, sparsity=args.sparsity)
    ).model
    nets = {
        "dense": lambda: bayes,
        "dense + fine-tune": lambda: tuned(bayes),
        "cut": lambda: cut,
        "cut + fine-tune": lambda: tuned(cut),
        "cut + fine-tune, scales held": lambda: tuned(cut, train_variances=False),
        "cut + scales re-estimated": lambda: variances(cut),
        "cut + fine-tune + scales re-estimated": lambda: variances(tuned(cut)),
    }
    rows = {}
    for name, make in nets.items():
        started = time.perf_counter()
        net = make()
        rows[name] = {**judge(net), "seconds": round(time.perf_counter() - started, 1)}
        print(seed, name, rows[name], flush=True)
    return {"seed": seed, "trained_s": round(trained_s, 1), "validation": rows}


def render(runs: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    names = list(runs[0]["validation"])
    table = []
    for name in names:
        row: dict[str, Any] = {"net (validation)": name}
        for metric in METRICS:
            row[metric] = mean_sd([r["validation"][name][metric] for r in runs], 4)
        dense = [r["validation"]["dense"]["ood_auroc_mi"] for r in runs]
        own = [r["validation"][name]["ood_auroc_mi"] for r in runs]
        row["MI AUROC − dense, per seed"] = ", ".join(
            f"{o - d:+.3f}" for o, d in zip(own, dense, strict=True)
        )
        table.append(row)
    return f"Settings: {settings}\n\n{md_table(table)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 6])
    add_net_options(parser)
    parser.add_argument("--sparsity", type=float, default=0.125)
    parser.add_argument("--name", default=NAME)
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    settings = recorded_settings(args)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args))
        write_results(args.name, {"settings": settings, "runs": runs}, render(runs, settings))


if __name__ == "__main__":
    main()
