"""A Vision Transformer's MLPs compressed: the Bayesian path against Torch-Pruning, equal FLOPs.

Per seed, on Fashion-MNIST (a training subset; the validation split is carved from it):

1. `_vit.ViT` (16 tokens of 7×7 patches, pre-norm blocks with nn.MultiheadAttention and a
   GELU MLP) trained deterministically, and its Gaussian twin (`bp.convert`, patch
   embedding and head kept deterministic; attention is not an nn.Linear child, so it
   stays deterministic too) trained with `bp.fit` from the same initial weights.
2. The Bayesian net's MLP hidden units compressed by the library: `activation_scores`
   over every token → `keep_units` (the same fraction of every block) → `shrink_graph`,
   at the largest sparsity of `--grid` whose validation metrics after a fine-tune stay
   within the tolerances of the dense Bayesian net's: accuracy (posterior mean) within
   `--tolerance`, OOD AUROC by entropy and by mutual information (Monte Carlo; validation
   images in, MNIST *training* images out) within `--ood-tolerance` (the residual CNN's
   rule, `resnet_fashion.py`, fixed in issue 13's session 8). The walk stops at the first
   level that fails; if none holds, the least-pruned level, recorded as such.
3. Torch-Pruning (`MetaPruner`, magnitude and Taylor importance) prunes the
   deterministic twin's MLP hidden units by the same fraction (every other layer is in
   `ignored_layers`), so FLOPs are equal by construction; fine-tuned as long.
4. Test (read once per contender): accuracy, ECE, NLL, OOD AUROC against MNIST test
   images by predictive entropy and, for the Bayesian nets' Monte-Carlo predictive, by
   mutual information; MLP widths, FLOPs, parameters; onnxruntime latency (1 thread,
   batch 1 and 256, sessions interleaved) of the dense and compressed nets.

`--prune-heads` also removes attention heads: the Bayesian twin is converted with
`split_attention=True` (attention Bayesian too, in heads), each level drops the same
fraction of every block's heads as of its MLP units (`activation_scores` scores both),
and Torch-Pruning, which cannot remove a head of the deterministic twin's attention,
removes MLP hidden units until its FLOPs are the closest to ours (a bisection of its
ratio; FLOPs count attention's projections and products).

`--prune-stream` also narrows the residual stream (split attention as with
`--prune-heads`; the stream's channels go through the class token, the position
embedding, every LayerNorm and the attention's projections): each level drops the same
fraction of the stream's channels, and Torch-Pruning again removes MLP hidden units to
the closest FLOPs.

`--dev-finetune-epochs E ...` reads no test set: it trains the Bayesian net once and walks
the levels after a fine-tune of each length given, on validation only (to choose the
fine-tune on development seeds). `--latency-widths W ...` measures only the deployed
network's onnxruntime latency at each MLP width (random weights: latency depends on the
shapes alone), interleaved, with nothing else running.

    python benchmarks/vit_fashion.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
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
    add_temperature_scaled,
    fashion_data,
    onnx_checks,
    onnx_latency,
    score_on_test,
    walk_levels,
)
from _resnet import tp_prune as _resnet_tp_prune
from _vit import (
    ViT,
    attention_units,
    head_counts,
    hidden_units,
    mlp_widths,
    stream_units,
    stream_width,
)
from torch import Tensor, nn

import bayesprune as bp
from bayesprune import compress
from bayesprune.metrics import count_flops

NAME = "vit_fashion"
REPORTED = ("accuracy", "ece", "nll", "ood_auroc_entropy", "ood_auroc_mi", "flops_ratio")


def make_data(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """`_resnet.fashion_data` with the settings' sizes; development runs read no test set."""
    return fashion_data(
        seed,
        args.train_limit,
        args.val_size,
        args.test_limit,
        with_test=not args.dev_finetune_epochs,
    )


def flops(model: nn.Module) -> int:
    return count_flops(model, SHAPE)


def build(seed: int, args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(seed)
    return ViT(args.width, args.depth, args.heads, args.hidden)


def tp_prune(
    model: nn.Module, kind: str, ratio: float, example: Tensor, grads: list[tuple[Tensor, Tensor]]
) -> nn.Module:
    """A copy of `model` with `ratio` of every block's MLP hidden units removed by
    Torch-Pruning (every other layer ignored, so only fc1's outputs / fc2's inputs go)."""

    def not_mlp(net: nn.Module) -> list[nn.Module]:
        mlp = set(hidden_units(net))
        return [
            m
            for name, m in net.named_modules()
            if isinstance(m, nn.Linear | nn.Conv2d) and name not in mlp
        ]

    return _resnet_tp_prune(model, kind, ratio, example, grads, ignored=not_mlp)


def build_bayes(seed: int, args: argparse.Namespace) -> nn.Module:
    """The Gaussian twin, from the deterministic net's initial weights."""
    return bp.convert(
        build(seed, args),
        "gaussian",
        init_from_weights=True,
        keep=args.keep,
        split_attention=args.prune_heads or args.prune_stream,
    )


def tp_prune_to_flops(
    model: nn.Module,
    kind: str,
    target: int,
    example: Tensor,
    grads: list[tuple[Tensor, Tensor]],
    steps: int = 10,
) -> tuple[nn.Module, dict[str, float]]:
    """`tp_prune` at the MLP ratio whose FLOPs come closest to `target` (bisection)."""
    lo, hi, best = 0.0, 0.99, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        net = tp_prune(model, kind, mid, example, grads)
        got = flops(net)
        gap = got / target - 1
        if best is None or abs(gap) < abs(best[2]["flops_gap"]):
            best = (mid, net, {"pruning_ratio": mid, "flops_gap": gap})
        lo, hi = (mid, hi) if got > target else (lo, mid)
    assert best is not None
    return best[1], best[2]


def compress_bayes(
    bayes: nn.Module,
    data: dict[str, Any],
    args: argparse.Namespace,
    seed: int,
    finetune: Any,
    every_level: bool = False,
) -> dict[str, Any]:
    """The level walk on validation (module docstring, step 2; `_resnet.walk_levels`) over
    the MLP hidden units (and heads); `every_level` walks on past a level that fails."""
    x_train = data["train"][0]
    bayes.eval()
    scores = compress.activation_scores(bayes, x_train[: 256 * args.score_batches].split(256))
    units = hidden_units(bayes) + (attention_units(bayes) if args.prune_heads else [])
    units += stream_units(bayes) if args.prune_stream else []
    scores = {name: scores[name] for name in units}

    def describe(net: nn.Module) -> dict[str, Any]:
        widths = {"mlp_widths": mlp_widths(net), "heads": head_counts(net)}
        return {**widths, "stream": stream_width(net), "flops": flops(net)}

    return walk_levels(bayes, scores, data, args, seed, finetune, describe, every_level)


def dev_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """`--dev-finetune-epochs`: one Bayesian net, the level walk after each fine-tune
    length, validation only."""
    data = make_data(seed, args)
    fit = {"batch_size": args.batch_size, "seed": seed, "progress": False}
    bayes = build_bayes(seed, args)
    bp.fit(bayes, data["train"], epochs=args.epochs, lr=args.lr, lr_schedule="cosine", **fit)
    walks = {}
    for epochs in args.dev_finetune_epochs:
        tune = {"epochs": epochs, "lr": args.finetune_lr, "lr_schedule": "cosine"}

        def finetune(net: nn.Module, tune: dict[str, Any] = tune) -> None:
            bp.finetune(net, data["train"], **tune, **fit)

        walk = compress_bayes(bayes, data, args, seed, finetune, every_level=True)
        walk.pop("model")
        walks[str(epochs)] = walk
        print(f"  fine-tune {epochs} epochs: level {walk['sparsity']} ({walk['rule']})", flush=True)
    return {"seed": seed, "walks": walks}


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train, compress, match, fine-tune and score every contender for one seed."""
    data = make_data(seed, args)
    train, (x_train, y_train) = data["train"], data["train"]
    fit = {"batch_size": args.batch_size, "seed": seed, "progress": False}
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    det = build(seed, args)
    bp.fit(det, train, epochs=args.epochs, lr=args.lr, lr_schedule="cosine", **fit)
    seconds["train_deterministic"] = time.perf_counter() - start
    start = time.perf_counter()
    bayes = build_bayes(seed, args)
    bp.fit(bayes, train, epochs=args.epochs, lr=args.lr, lr_schedule="cosine", **fit)
    seconds["train_bayesian"] = time.perf_counter() - start
    print(f"  trained ({seconds})", flush=True)

    tune = {"epochs": args.finetune_epochs, "lr": args.finetune_lr, "lr_schedule": "cosine"}

    def finetune(net: nn.Module) -> None:
        bp.finetune(net, train, **tune, **fit)

    start = time.perf_counter()
    ours = compress_bayes(bayes, data, args, seed, finetune)
    seconds["compress_bayesian"] = time.perf_counter() - start
    print(f"  level {ours['sparsity']} ({ours['rule']})", flush=True)
    nets: dict[str, nn.Module] = {"bayesian compressed": ours.pop("model")}
    grads = list(zip(x_train.split(128)[:4], y_train.split(128)[:4], strict=True))
    start = time.perf_counter()
    ours_flops = flops(nets["bayesian compressed"])
    for kind in ("magnitude", "taylor"):
        if args.prune_heads or args.prune_stream:  # MLP units only, to our FLOPs
            net, ours[f"tp_{kind}_match"] = tp_prune_to_flops(
                det, kind, ours_flops, x_train[:2], grads
            )
        else:
            net = tp_prune(det, kind, ours["sparsity"], x_train[:2], grads)
        finetune(net)
        nets[f"tp {kind}"] = net
    seconds["tp_prune_and_finetune"] = time.perf_counter() - start
    if args.temperature:
        add_temperature_scaled(nets, data["val"], args.mc_samples)

    # --- the test and OOD test sets, read once per contender
    start = time.perf_counter()
    x_test = data["test"][0]
    models = {"deterministic (dense)": det, "bayesian (dense)": bayes, **nets}
    dense_flops = flops(det)

    def describe(net: nn.Module) -> dict[str, Any]:
        return {
            "flops": flops(net),
            "flops_ratio": flops(net) / dense_flops,
            "parameters": sum(p.numel() for p in bp.to_deterministic(net).parameters()),
            "mlp_widths": mlp_widths(net),
            "heads": head_counts(net),
            "stream": stream_width(net),
        }

    scores = score_on_test(models, data, seed, args.mc_samples, describe)
    seconds["test"] = time.perf_counter() - start
    start = time.perf_counter()
    keys = ["bayesian (dense)", "bayesian compressed", "tp magnitude", "tp taylor"]
    deploy = onnx_checks(models, keys, x_test[:256], args.latency_repeats)
    seconds["onnx"] = time.perf_counter() - start
    return {
        "seed": seed,
        "contenders": scores,
        "bayesian_compression": ours,
        "onnx": deploy,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


# --- summaries ----------------------------------------------------------------------------


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key in [k for k in runs[0]["contenders"] if all(k in r["contenders"] for r in runs)]:
        row: dict[str, Any] = {"contender": key}
        for metric in REPORTED:
            values = [r["contenders"][key].get(metric) for r in runs]
            row[metric] = "–" if None in values else mean_sd([float(v) for v in values], 3)
        row["MLP widths"] = "; ".join(
            "-".join(map(str, r["contenders"][key]["mlp_widths"])) for r in runs
        )
        if all("heads" in r["contenders"][key] for r in runs):
            row["heads"] = "; ".join(
                "-".join(map(str, r["contenders"][key]["heads"])) for r in runs
            )
        if all("stream" in r["contenders"][key] for r in runs):
            row["stream"] = "; ".join(str(r["contenders"][key]["stream"]) for r in runs)
        rows.append(row)
    return rows


def per_seed_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        c, ours = r["contenders"], r["bayesian_compression"]
        dense = c["bayesian (dense)"]
        latency = r["onnx"]["latency_ms"]
        pruned = ("bayesian compressed", "tp magnitude", "tp taylor")
        rows.append(
            {
                "seed": r["seed"],
                "level (rule)": f"{ours['sparsity']} ({ours['rule']})",
                "acc ours / mag / Taylor": " / ".join(f"{c[k]['accuracy']:.4f}" for k in pruned),
                "ECE ours / mag / Taylor": " / ".join(f"{c[k]['ece']:.4f}" for k in pruned),
                "AUROC drop ent / MI": " / ".join(
                    f"{dense[m] - c['bayesian compressed'][m]:+.3f}"
                    for m in ("ood_auroc_entropy", "ood_auroc_mi")
                ),
                "ms batch 1 dense / ours / mag": " / ".join(
                    f"{latency['batch 1'][k]:.3f}"
                    for k in ("bayesian (dense)", "bayesian compressed", "tp magnitude")
                ),
                "ms batch 256 dense / ours / mag": " / ".join(
                    f"{latency['batch 256'][k]:.1f}"
                    for k in ("bayesian (dense)", "bayesian compressed", "tp magnitude")
                ),
            }
        )
    return rows


def render(runs: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    text = f"Settings: {settings}\n\n## Test (mean ± sd over seeds)\n\n"
    text += md_table(summary_rows(runs))
    text += "\n## Per seed\n\n" + md_table(per_seed_rows(runs))
    text += "\n## Levels tried (validation)\n\n"
    for r in runs:
        for level in r["bayesian_compression"]["levels"]:
            v = level["val_finetuned"]
            text += (
                f"- seed {r['seed']}, sparsity {level['sparsity']}: accuracy pruned "
                f"{level['val_accuracy_pruned']:.4f} → fine-tuned {v['accuracy']:.4f}, AUROC "
                f"{v['ood_auroc_entropy']:.3f} / {v['ood_auroc_mi']:.3f}, acceptable "
                f"{level['acceptable']}\n"
            )
        d = r["bayesian_compression"]["dense_val"]
        text += (
            f"- seed {r['seed']}, dense: accuracy {d['accuracy']:.4f}, AUROC "
            f"{d['ood_auroc_entropy']:.3f} / {d['ood_auroc_mi']:.3f}\n"
        )
    return text


def latency_by_width(args: argparse.Namespace) -> dict[str, Any]:
    """`--latency-widths`: the exported deterministic ViT at each MLP width, timed
    interleaved at batch 1 and 256 (median ms), with the ratio to the first width."""
    out: dict[str, Any] = {"flops": {}, "latency_ms": {}}
    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for width in args.latency_widths:
            torch.manual_seed(0)
            net = ViT(args.width, args.depth, args.heads, width).eval()
            out["flops"][str(width)] = flops(net)
            paths[str(width)] = compress.export_onnx(net, Path(folder) / f"{width}.onnx", SHAPE)
        for size, repeats in ((1, args.latency_repeats), (256, max(5, args.latency_repeats // 20))):
            times = onnx_latency(paths, size, repeats)
            out["latency_ms"][f"batch {size}"] = {k: 1e3 * v for k, v in times.items()}
    return out


def render_latency(result: dict[str, Any]) -> str:
    first = next(iter(result["flops"]))
    rows = []
    for width, count in result["flops"].items():
        row: dict[str, Any] = {"MLP width": width, "FLOPs ratio": count / result["flops"][first]}
        for batch, times in result["latency_ms"].items():
            row[f"ms {batch}"] = times[width]
            row[f"ratio {batch}"] = times[width] / times[first]
        rows.append(row)
    return md_table(rows)


def render_dev(runs: list[dict[str, Any]]) -> str:
    """Development runs: per seed and fine-tune length, each level's validation metrics."""
    rows = []
    for r in runs:
        for epochs, walk in r["walks"].items():
            d = walk["dense_val"]
            for level in walk["levels"]:
                v = level["val_finetuned"]
                rows.append(
                    {
                        "seed": r["seed"],
                        "fine-tune epochs": epochs,
                        "sparsity": level["sparsity"],
                        "accuracy (dense)": f"{v['accuracy']:.4f} ({d['accuracy']:.4f})",
                        "AUROC entropy (dense)": (
                            f"{v['ood_auroc_entropy']:.3f} ({d['ood_auroc_entropy']:.3f})"
                        ),
                        "AUROC MI (dense)": f"{v['ood_auroc_mi']:.3f} ({d['ood_auroc_mi']:.3f})",
                        "acceptable": level["acceptable"],
                    }
                )
    return "Validation only (no test set read).\n\n" + md_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256, help="MLP hidden units per block")
    parser.add_argument("--train-limit", type=int, default=12000, help="training rows (+val)")
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--test-limit", type=int, default=5000, help="test images, in and out")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--keep", nargs="*", default=["patch", "head"], help="stay deterministic")
    parser.add_argument("--grid", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--tolerance", type=float, default=0.01, help="validation accuracy")
    parser.add_argument("--ood-tolerance", type=float, default=0.02, help="validation AUROCs")
    parser.add_argument("--score-batches", type=int, default=8, help="of 256 training images")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="cosine to 0")
    parser.add_argument(
        "--dev-finetune-epochs",
        type=int,
        nargs="*",
        default=[],
        help="development: the level walk after each fine-tune length, no test set",
    )
    parser.add_argument(
        "--prune-heads", action="store_true", help="also remove attention heads (docstring)"
    )
    parser.add_argument(
        "--prune-stream", action="store_true", help="also narrow the residual stream"
    )
    parser.add_argument("--mc-samples", type=int, default=12)
    parser.add_argument(
        "--temperature",
        action="store_true",
        help="also score every compressed net after temperature scaling on validation",
    )
    parser.add_argument("--latency-repeats", type=int, default=200, help="batch 1; /20 at 256")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--latency-widths", type=int, nargs="*", default=[], help="only latency, per MLP width"
    )
    parser.add_argument("--name", default=NAME, help="result file name")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="combine seed runs")
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    if args.merge:
        loaded = [json.loads(Path(p).read_text()) for p in args.merge]
        runs = [r for run in loaded for r in run["runs"]]
        settings = {**loaded[0]["settings"], "seeds": [r["seed"] for r in runs]}
        text = render_dev(runs) if "walks" in runs[0] else render(runs, settings)
        write_results(args.name, {"settings": settings, "runs": runs}, text)
        return
    torch.set_num_threads(args.threads)
    settings = recorded_settings(args, "merge")
    if args.latency_widths:
        result = latency_by_width(args)
        write_results(args.name, {"settings": settings, **result}, render_latency(result))
        print(render_latency(result))
        return
    runs = []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        if args.dev_finetune_epochs:
            runs.append(dev_seed(seed, args))
            write_results(args.name, {"settings": settings, "runs": runs}, render_dev(runs))
            continue
        runs.append(run_seed(seed, args))
        write_results(args.name, {"settings": settings, "runs": runs}, render(runs, settings))
    if args.dev_finetune_epochs:
        print(render_dev(runs))
        return
    print(render(runs, settings))


if __name__ == "__main__":
    main()
