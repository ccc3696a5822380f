"""A ConvNeXt's residual streams and MLPs compressed: the Bayesian path against Torch-Pruning.

Per seed, on Fashion-MNIST (a training subset; the validation split is carved from it):

1. `SmallConvNeXt`: torchvision's ConvNeXt blocks (`CNBlock`: 7×7 depthwise conv,
   LayerNorm over the channels, a 4× GELU MLP, a per-channel layer scale, the residual
   sum) at Fashion-MNIST's size: a 2×2/2 stem and torchvision's `LayerNorm2d`, stages of
   `--depths` blocks of `--dims` channels with LayerNorm2d and a 2×2/2 convolution
   between them, mean pool, LayerNorm2d, a linear head. Trained deterministically, and
   its Gaussian twin (`bp.convert` from the same initial weights; `--keep` stays
   deterministic) trained with `bp.fit`.
2. The Bayesian net compressed by the library: `activation_scores` → `keep_units` (the
   same fraction of every scored layer: each stage's residual stream — stem or
   downsampling conv and every block's second MLP layer, one group — and every block's
   MLP hidden units) → `shrink_graph`, whose LayerNorms over the channels become
   `ZeroCountingLayerNorm`s (exact), at the largest sparsity of `--grid` whose
   validation metrics after a fine-tune hold the tolerances against the dense Bayesian
   net's (`_resnet.level_validator`: accuracy within `--tolerance`, OOD AUROC by entropy
   and MI within `--ood-tolerance`, MNIST *training* images out). The walk stops at the
   first level that fails; if none holds, the least-pruned one, recorded as such.
3. Torch-Pruning (`MetaPruner`, magnitude and Taylor importance; it slices LayerNorms and
   the layer scale with the channels) prunes the deterministic twin to the same FLOPs
   (ratio bisected; the head ignored), fine-tuned as long.
   `--reference finetuned` holds the levels against the dense Bayesian net fine-tuned
   as long as each level (`convnext_mi_dev.py`: the fine-tune alone moves its OOD AUROC
   by more than the tolerance), which is then a test contender too.
4. Test (read once per contender): accuracy, ECE, NLL, OOD AUROC against MNIST test images
   by predictive entropy and, for the Bayesian nets' Monte-Carlo predictive, by mutual
   information; stream and MLP widths, FLOPs; the ONNX export's difference and
   onnxruntime latency (1 thread, batch 1 and 256, sessions interleaved).

    python benchmarks/convnext_fashion.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
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
from _resnet import (
    SHAPE,
    fashion_data,
    onnx_checks,
    score_on_test,
    tp_prune_to_flops,
    walk_levels,
)
from graph_groups import torchvision_models
from torch import nn

import bayesprune as bp
from bayesprune import compress
from bayesprune.metrics import count_flops

NAME = "convnext_fashion"
REPORTED = ("accuracy", "ece", "nll", "ood_auroc_entropy", "ood_auroc_mi", "flops_ratio")


def small_convnext(dims: list[int], depths: list[int], layer_scale: float) -> nn.Module:
    """torchvision's ConvNeXt blocks at Fashion-MNIST's size (module docstring, step 1)."""
    torchvision_models()  # torchvision's import without its compiled ops
    from torchvision.models.convnext import CNBlock, LayerNorm2d

    layers: list[nn.Module] = [
        nn.Sequential(nn.Conv2d(SHAPE[0], dims[0], 2, 2), LayerNorm2d(dims[0]))
    ]
    for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
        if i:
            layers.append(
                nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2))
            )
        layers.append(nn.Sequential(*(CNBlock(dim, layer_scale, 0.0) for _ in range(depth))))
    return nn.Sequential(
        nn.Sequential(*layers),
        nn.AdaptiveAvgPool2d(1),
        nn.Sequential(LayerNorm2d(dims[-1]), nn.Flatten(1), nn.Linear(dims[-1], 10)),
    )


def _units(layer: nn.Module) -> int:
    return int(compress.as_prunable(layer).to_deterministic().weight.shape[0])


def widths(model: nn.Module) -> dict[str, list[int]]:
    """Each stage's stream width (its depthwise convs') and its blocks' MLP widths."""
    out: dict[str, list[int]] = {"streams": [], "mlp": []}
    for stage in model[0]:
        blocks = [b for b in stage if type(b).__name__ == "CNBlock"]
        if blocks:
            out["streams"].append(_units(blocks[0].block[0]))
            out["mlp"] += [_units(b.block[3]) for b in blocks]
    return out


def flops(model: nn.Module) -> int:
    return count_flops(model, SHAPE)


def build(seed: int, args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(seed)
    return small_convnext(args.dims, args.depths, args.layer_scale)


def compress_bayes(
    bayes: nn.Module,
    data: dict[str, Any],
    args: argparse.Namespace,
    seed: int,
    finetune: Any,
    reference: nn.Module | None = None,
) -> dict[str, Any]:
    """The level walk on validation (module docstring, step 2; `_resnet.walk_levels`) over
    every scored layer (the head, the model's output, is pinned), held against `bayes` or
    `reference`."""
    x_train = data["train"][0]
    bayes.eval()
    scores = compress.activation_scores(bayes, x_train[: 256 * args.score_batches].split(256))
    scores = {k: v for k, v in scores.items() if torch.isfinite(v).all()}

    def describe(net: nn.Module) -> dict[str, Any]:
        return {"widths": widths(net), "flops": flops(net)}

    return walk_levels(bayes, scores, data, args, seed, finetune, describe, reference=reference)


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train, compress, match, fine-tune and score every contender for one seed."""
    data = fashion_data(seed, args.train_limit, args.val_size, args.test_limit)
    train, (x_train, y_train) = data["train"], data["train"]
    fit = {"batch_size": args.batch_size, "seed": seed, "progress": False}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    det = build(seed, args)
    bp.fit(det, train, epochs=args.epochs, lr=args.lr, lr_schedule="cosine", **fit)
    seconds["train_deterministic"] = time.perf_counter() - start
    start = time.perf_counter()
    bayes = bp.convert(build(seed, args), "gaussian", init_from_weights=True, keep=args.keep)
    bp.fit(bayes, train, epochs=args.epochs, lr=args.lr, lr_schedule="cosine", **fit)
    seconds["train_bayesian"] = time.perf_counter() - start
    print(f"  trained ({seconds})", flush=True)
    tune = {"epochs": args.finetune_epochs, "lr": args.finetune_lr, "lr_schedule": "cosine"}

    def finetune(net: nn.Module) -> None:
        bp.finetune(net, train, **tune, **fit)

    start = time.perf_counter()
    reference = None
    if args.reference == "finetuned":  # the dense net trained as long as each level
        reference = copy.deepcopy(bayes)
        finetune(reference)
    ours = compress_bayes(bayes, data, args, seed, finetune, reference)
    seconds["compress_bayesian"] = time.perf_counter() - start
    print(f"  level {ours['sparsity']} ({ours['rule']})", flush=True)
    nets: dict[str, nn.Module] = {"bayesian compressed": ours.pop("model")}
    if reference is not None:
        nets["bayesian (dense, fine-tuned)"] = reference
    grads = list(zip(x_train.split(128)[:4], y_train.split(128)[:4], strict=True))
    target = flops(nets["bayesian compressed"])
    start = time.perf_counter()
    for kind in ("magnitude", "taylor"):
        net, ours[f"tp_{kind}_match"] = tp_prune_to_flops(
            det, kind, target, x_train[:2], grads, count=flops, ignored=lambda n: [n[2][2]]
        )
        finetune(net)
        nets[f"tp {kind}"] = net
    seconds["tp_prune_and_finetune"] = time.perf_counter() - start

    start = time.perf_counter()  # the test and OOD test sets, read once per contender
    models = {"deterministic (dense)": det, "bayesian (dense)": bayes, **nets}
    dense_flops = flops(det)

    def describe(net: nn.Module) -> dict[str, Any]:
        return {"flops": flops(net), "flops_ratio": flops(net) / dense_flops, **widths(net)}

    scores = score_on_test(models, data, seed, args.mc_samples, describe)
    seconds["test"] = time.perf_counter() - start
    keys = ["bayesian (dense)", "bayesian compressed", "tp magnitude", "tp taylor"]
    deploy = onnx_checks(models, keys, data["test"][0][:256], args.latency_repeats)
    return {
        "seed": seed,
        "contenders": scores,
        "bayesian_compression": ours,
        "onnx": deploy,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def _shape(values: list[int]) -> str:
    return "-".join(map(str, values))


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key in [k for k in runs[0]["contenders"] if all(k in r["contenders"] for r in runs)]:
        row: dict[str, Any] = {"contender": key}
        for metric in REPORTED:
            values = [r["contenders"][key].get(metric) for r in runs]
            row[metric] = "–" if None in values else mean_sd([float(v) for v in values], 3)
        row["streams"] = "; ".join(_shape(r["contenders"][key]["streams"]) for r in runs)
        row["MLP widths"] = "; ".join(_shape(r["contenders"][key]["mlp"]) for r in runs)
        rows.append(row)
    return rows


def render(runs: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    text = f"Settings: {settings}\n\n## Test (mean ± sd over seeds)\n\n"
    text += md_table(summary_rows(runs))
    text += "\n## Deployed (ONNX, onnxruntime, 1 thread; median ms)\n\n"
    rows = []
    for r in runs:
        for key, diff in r["onnx"]["difference"].items():
            row: dict[str, Any] = {"seed": r["seed"], "net": key, "export difference": diff}
            for batch, times in r["onnx"]["latency_ms"].items():
                row[f"ms {batch}"] = times[key]
            rows.append(row)
    text += md_table(rows)
    text += "\n## Levels tried (validation)\n\n"
    reference = "dense, fine-tuned alike" if settings.get("reference") == "finetuned" else "dense"
    for r in runs:
        walk = r["bayesian_compression"]
        d = walk["dense_val"]
        text += (
            f"- seed {r['seed']}, {reference}: accuracy {d['accuracy']:.4f}, AUROC "
            f"{d['ood_auroc_entropy']:.3f} / {d['ood_auroc_mi']:.3f}\n"
        )
        for level in walk["levels"]:
            v = level["val_finetuned"]
            text += (
                f"- seed {r['seed']}, sparsity {level['sparsity']}: accuracy pruned "
                f"{level['val_accuracy_pruned']:.4f} → fine-tuned {v['accuracy']:.4f}, AUROC "
                f"{v['ood_auroc_entropy']:.3f} / {v['ood_auroc_mi']:.3f}, streams "
                f"{_shape(level['widths']['streams'])}, shrunk − masked "
                f"{level['shrunk_minus_masked']:.1e}, acceptable {level['acceptable']}\n"
            )
    return text


def add_net_options(parser: argparse.ArgumentParser) -> None:
    """The options that make, train, fine-tune and score the net, shared with
    `convnext_mi_dev.py`, which studies the same net on other seeds."""
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 2])
    parser.add_argument("--layer-scale", type=float, default=0.1, help="its initial value")
    parser.add_argument("--train-limit", type=int, default=12000, help="training rows (+val)")
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--keep", nargs="*", default=["0.0.0", "2.2"], help="stay deterministic")
    parser.add_argument("--score-batches", type=int, default=8, help="of 256 training images")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="cosine to 0")
    parser.add_argument("--mc-samples", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_net_options(parser)
    parser.add_argument("--test-limit", type=int, default=5000, help="test images, in and out")
    parser.add_argument("--grid", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--tolerance", type=float, default=0.01, help="validation accuracy")
    parser.add_argument("--ood-tolerance", type=float, default=0.02, help="validation AUROCs")
    parser.add_argument(
        "--reference",
        choices=["dense", "finetuned"],
        default="dense",
        help="what the levels are held against: the dense Bayesian net, or it fine-tuned "
        "as long as each level (then also a test contender)",
    )
    parser.add_argument("--latency-repeats", type=int, default=200, help="batch 1; /20 at 256")
    parser.add_argument("--name", default=NAME, help="result file name")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="combine seed runs")
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    if args.merge:
        loaded = [json.loads(Path(p).read_text()) for p in args.merge]
        runs = [r for run in loaded for r in run["runs"]]
        settings = {**loaded[0]["settings"], "seeds": [r["seed"] for r in runs]}
        write_results(args.name, {"settings": settings, "runs": runs}, render(runs, settings))
        return
    torch.set_num_threads(args.threads)
    settings = recorded_settings(args, "merge")
    runs = []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        runs.append(run_seed(seed, args))
        write_results(args.name, {"settings": settings, "runs": runs}, render(runs, settings))
    print(render(runs, settings))


if __name__ == "__main__":
    main()
