"""A 1-d residual CNN on sequences compressed: the Bayesian path against Torch-Pruning.

The data: MNIST digits read as sequences, 28 time steps (the rows) of 28 features (a
row's pixels), so a `nn.Conv1d` runs along the rows; Fashion-MNIST read the same way is
the out-of-distribution set. Per seed (a training subset; the validation split carved
from it):

1. `SeqResNet` (a Conv1d + BatchNorm stem, a residual block, a strided block with a 1×1
   projection shortcut, a global mean over time, a linear head) trained
   deterministically, and its Gaussian twin (`bp.convert`, the head kept deterministic)
   trained with `bp.fit` from the same initial weights.
2. The library's path on the Bayesian net: `activation_scores` → `keep_units_for_flops`
   (one fraction of every layer's channels, at a FLOPs share of `--grid`) →
   `shrink_graph` → a fine-tune; the smallest share of the grid, walked from the
   largest, whose validation metrics stay within the tolerances of the dense Bayesian
   net's: accuracy (posterior mean) within `--tolerance`, OOD AUROC by entropy and by
   mutual information (Monte Carlo; validation rows in, Fashion-MNIST *training* rows
   out) within `--ood-tolerance`. The walk stops at the first share that fails.
3. Torch-Pruning (`MetaPruner`, magnitude and Taylor importance) on the deterministic
   twin, its pruning ratio bisected to the FLOPs of ours, fine-tuned as long.
4. Test, read once per contender: accuracy, ECE, NLL, OOD AUROC against Fashion-MNIST
   test rows (entropy; mutual information for the Bayesian nets' Monte-Carlo
   predictive), channels, FLOPs, parameters, and onnxruntime latency (1 thread, batch 1
   and 256, sessions interleaved) of the dense and compressed nets. `--temperature`
   adds each compressed net after temperature scaling fitted on the validation split.

    python benchmarks/sequence_cnn.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    add_results_dir_option,
    md_table,
    mean_sd,
    recorded_settings,
    use_results_dir,
    write_results,
)
from _resnet import (
    add_temperature_scaled,
    level_tolerances,
    level_validator,
    onnx_checks,
    score_on_test,
    tp_prune_to_flops,
)
from torch import Tensor, nn

import bayesprune as bp
from bayesprune import compress
from bayesprune.compress.tolerances import all_hold, as_tolerances
from bayesprune.data import load_fashion_mnist, load_mnist
from bayesprune.metrics import count_flops

NAME = "sequence_cnn"
SHAPE = (28, 28)  # one sequence: 28 features (channels) × 28 time steps
CONVS = ("stem.0", "block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2", "block2.short.0")


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (or its strided 1×1 projection), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.short = nn.Identity()
        if stride != 1 or cin != cout:
            projection = nn.Conv1d(cin, cout, 1, stride, bias=False)
            self.short = nn.Sequential(projection, nn.BatchNorm1d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.short(x))


class SeqResNet(nn.Module):
    def __init__(self, features: int = 28, widths: tuple[int, int] = (32, 64), classes: int = 10):
        super().__init__()
        w1, w2 = widths
        self.stem = nn.Sequential(
            nn.Conv1d(features, w1, 3, 1, 1, bias=False), nn.BatchNorm1d(w1), nn.ReLU()
        )
        self.block1 = Block(w1, w1)
        self.block2 = Block(w1, w2, stride=2)
        self.fc = nn.Linear(w2, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.block2(self.block1(self.stem(x))).mean(2))


def as_sequences(images: Tensor) -> Tensor:
    """(N, 1, 28, 28) images → (N, 28 features, 28 time steps): time runs down the rows."""
    return images[:, 0].transpose(1, 2).contiguous()


def make_data(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    x, y = load_mnist("train", limit=args.train_limit, seed=seed).tensors
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y, n = as_sequences(x[perm]), y[perm], args.val_size
    return {
        "train": (x[:-n], y[:-n]),
        "val": (x[-n:], y[-n:]),
        "val_ood": as_sequences(load_fashion_mnist("train", limit=n, seed=seed).tensors[0]),
        "test": (as_sequences(load_mnist("test").tensors[0]), load_mnist("test").tensors[1]),
        "ood": as_sequences(load_fashion_mnist("test").tensors[0]),
    }


def flops(model: nn.Module) -> int:
    return count_flops(model, SHAPE)


def channels(model: nn.Module) -> dict[str, int]:
    net = bp.to_deterministic(model)
    return {name: int(net.get_submodule(name).out_channels) for name in CONVS}


def compress_bayes(
    bayes: nn.Module, data: dict[str, Any], args: argparse.Namespace, seed: int, finetune: Any
) -> dict[str, Any]:
    """Step 2 of the module docstring: the FLOPs walk on validation."""
    accuracy = bp.scorer(data["val"], mode="mean", metrics=["accuracy"])
    validate = level_validator(data, args, seed, accuracy, recorded=("ece",))  # not held
    held = as_tolerances(level_tolerances(args))
    bayes.eval()
    x_train = data["train"][0]
    scores = compress.activation_scores(bayes, x_train[: 256 * args.score_batches].split(256))
    scores = {name: s for name, s in scores.items() if name in CONVS}  # not the class logits
    dense = validate(bayes)
    example = x_train[:8]
    levels: list[dict[str, Any]] = []
    nets: list[nn.Module] = []
    for share in sorted(args.grid, reverse=True):
        budget = compress.keep_units_for_flops(bayes, scores, example, flops=share)
        result = compress.shrink_graph(bayes, example, prune_units=budget.masks)
        small = result.model
        finetune(small)
        values = validate(small)
        holds = all_hold(held, values, dense)
        levels.append(
            {
                "flops_share": share,
                "sparsity": budget.sparsity,
                "val_finetuned": values,
                "acceptable": holds,
                "channels": channels(small),
                "flops": flops(small),
                "shrunk_minus_masked": result.max_abs_difference,
            }
        )
        nets.append(small)
        print(f"    level {levels[-1]}", flush=True)
        if not holds:
            break
    held_run = sum(level["acceptable"] for level in levels)  # the walk stops at a failure
    rule = "grid" if held_run else "none held"  # none: the largest share, recorded so
    pick = max(held_run - 1, 0)
    chosen = (levels[pick]["flops_share"], nets[pick])
    return {
        "flops_share": chosen[0],
        "model": chosen[1],
        "rule": rule,
        "dense_val": dense,
        "levels": levels,
        "tolerances": [t.as_dict() for t in held],
    }


def bayes_finetune(train: Any, args: argparse.Namespace, seed: int) -> Any:
    """The compressed Bayesian nets' fine-tune: the shared epochs and rate, the posterior
    scales trained or held (`--finetune-variances`), the KL at `--finetune-kl-weight`."""
    options = {
        "epochs": args.finetune_epochs,
        "lr": args.finetune_lr,
        "lr_schedule": "cosine",
        "train_variances": args.finetune_variances == "train",
        "kl_weight": args.finetune_kl_weight,
    }

    def finetune(net: nn.Module) -> None:
        bp.finetune(net, train, batch_size=args.batch_size, seed=seed, progress=False, **options)

    return finetune


def dev_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """`--dev`: the Bayesian net trained and walked as `run_seed` does, validation only
    (the walk's levels carry their validation ECE); no test set is read."""
    data = make_data(seed, args)
    data.pop("test"), data.pop("ood")
    torch.manual_seed(seed)
    bayes = bp.convert(SeqResNet(), "gaussian", keep=("fc",))
    fit = {"batch_size": args.batch_size, "seed": seed, "progress": False}
    bp.fit(bayes, data["train"], epochs=args.epochs, lr=args.lr, lr_schedule="cosine", **fit)
    ours = compress_bayes(bayes, data, args, seed, bayes_finetune(data["train"], args, seed))
    ours.pop("model")
    return {"seed": seed, "bayesian_compression": ours}


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train, compress, match, fine-tune and score every contender for one seed."""
    data = make_data(seed, args)
    train, (x_train, y_train) = data["train"], data["train"]
    fit = {"batch_size": args.batch_size, "seed": seed, "progress": False}
    schedule = {"lr": args.lr, "lr_schedule": "cosine"}
    seconds: dict[str, float] = {}

    torch.manual_seed(seed)
    det = SeqResNet()
    bayes = bp.convert(det, "gaussian", init_from_weights=True, keep=("fc",))
    start = time.perf_counter()
    bp.fit(det, train, epochs=args.epochs, **schedule, **fit)
    seconds["train_deterministic"] = time.perf_counter() - start
    start = time.perf_counter()
    bp.fit(bayes, train, epochs=args.epochs, **schedule, **fit)
    seconds["train_bayesian"] = time.perf_counter() - start
    print(f"  trained ({seconds})", flush=True)

    tune = {"epochs": args.finetune_epochs, "lr": args.finetune_lr, "lr_schedule": "cosine"}

    def finetune(net: nn.Module) -> None:
        bp.finetune(net, train, **tune, **fit)

    start = time.perf_counter()
    ours = compress_bayes(bayes, data, args, seed, bayes_finetune(train, args, seed))
    seconds["compress_bayesian"] = time.perf_counter() - start
    print(f"  FLOPs share {ours['flops_share']} ({ours['rule']})", flush=True)
    nets: dict[str, nn.Module] = {"bayesian compressed": ours.pop("model")}
    grads = list(zip(x_train.split(128)[:4], y_train.split(128)[:4], strict=True))
    target = flops(nets["bayesian compressed"])
    start = time.perf_counter()
    for kind in ("magnitude", "taylor"):
        net, ours[f"tp_{kind}_match"] = tp_prune_to_flops(
            det, kind, target, x_train[:2], grads, count=flops
        )
        finetune(net)
        nets[f"tp {kind}"] = net
    seconds["tp_prune_and_finetune"] = time.perf_counter() - start
    if args.temperature:
        add_temperature_scaled(nets, data["val"], args.mc_samples)

    start = time.perf_counter()
    models = {"deterministic (dense)": det, "bayesian (dense)": bayes, **nets}
    dense_flops = flops(det)

    def describe(net: nn.Module) -> dict[str, Any]:
        return {
            "flops": flops(net),
            "flops_ratio": flops(net) / dense_flops,
            "parameters": sum(p.numel() for p in bp.to_deterministic(net).parameters()),
            "channels": channels(net),
        }

    scores = score_on_test(models, data, seed, args.mc_samples, describe)
    seconds["test"] = time.perf_counter() - start
    start = time.perf_counter()
    keys = ["bayesian (dense)", "bayesian compressed", "tp magnitude", "tp taylor"]
    deploy = onnx_checks(models, keys, data["test"][0][:256], args.latency_repeats)
    seconds["onnx"] = time.perf_counter() - start
    return {
        "seed": seed,
        "contenders": scores,
        "bayesian_compression": ours,
        "onnx": deploy,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


REPORTED = ("accuracy", "ece", "nll", "ood_auroc_entropy", "ood_auroc_mi", "flops_ratio")


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key in runs[0]["contenders"]:
        row: dict[str, Any] = {"contender": key}
        for metric in REPORTED:
            values = [r["contenders"][key].get(metric) for r in runs]
            row[metric] = mean_sd(values, 4) if None not in values else ""
        row["parameters"] = mean_sd([r["contenders"][key]["parameters"] for r in runs], 0)
        rows.append(row)
    return rows


def per_seed_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        ours = r["bayesian_compression"]
        for key, c in r["contenders"].items():
            latency = r["onnx"]["latency_ms"]
            rows.append(
                {
                    "seed": r["seed"],
                    "contender": key,
                    "accuracy": round(c["accuracy"], 4),
                    "ece": round(c["ece"], 4),
                    "OOD AUROC (entropy / MI)": f"{c['ood_auroc_entropy']:.3f} / "
                    + (f"{c['ood_auroc_mi']:.3f}" if "ood_auroc_mi" in c else "–"),
                    "FLOPs": f"{c['flops_ratio']:.3f}",
                    "channels": "-".join(str(v) for v in c["channels"].values()),
                    "ms, batch 1 / 256": (
                        f"{latency['batch 1'][key]:.3f} / {latency['batch 256'][key]:.2f}"
                        if key in latency["batch 1"]
                        else ""
                    ),
                    "share chosen": ours["flops_share"] if key.startswith("bayesian c") else "",
                }
            )
    return rows


def render(runs: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    return "\n".join(
        [
            "Mean ± sd over seeds (test, read once per contender):",
            "",
            md_table(summary_rows(runs)),
            "",
            "Per seed (channels: stem, block1.conv1, block1.conv2, block2.conv1, "
            "block2.conv2, block2.short; onnxruntime, one thread, median ms):",
            "",
            md_table(per_seed_rows(runs)),
            "",
            f"Settings: {settings}",
        ]
    )


def render_dev(runs: list[dict[str, Any]]) -> str:
    rows = [
        {
            "seed": r["seed"],
            "FLOPs share": level["flops_share"],
            "held": level["acceptable"],
            **{k: round(v, 4) for k, v in level["val_finetuned"].items()},
        }
        for r in runs
        for level in r["bayesian_compression"]["levels"]
    ]
    dense = [{"seed": r["seed"], **r["bayesian_compression"]["dense_val"]} for r in runs]
    return (
        "Validation only.\n\nDense Bayesian nets:\n\n"
        + md_table(dense)
        + ("\n\nLevels after the fine-tune:\n\n" + md_table(rows))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--grid", type=float, nargs="+", default=[0.7, 0.5, 0.35, 0.25])
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--ood-tolerance", type=float, default=0.02)
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--score-batches", type=int, default=4)
    parser.add_argument("--latency-repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--temperature",
        action="store_true",
        help="also score each compressed net after temperature scaling on the validation split",
    )
    parser.add_argument("--finetune-variances", choices=("train", "hold"), default="train")
    parser.add_argument("--finetune-kl-weight", type=float, default=1.0)
    parser.add_argument(
        "--dev", action="store_true", help="validation only: the walk of the Bayesian net"
    )
    parser.add_argument("--name", default=NAME)
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    settings = recorded_settings(args)
    runs = []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        runs.append(dev_seed(seed, args) if args.dev else run_seed(seed, args))
        payload = {"settings": settings, "runs": runs}
        text = render_dev(runs) if args.dev else render(runs, settings)
        write_results(args.name, payload, text)


if __name__ == "__main__":
    main()
