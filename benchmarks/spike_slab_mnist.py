"""Spike-and-slab MLP 784-400-400-10 on MNIST: which nodes and pixels does the posterior keep?

A node-level spike-and-slab network with input gates (one gate per pixel and per
hidden unit) is trained with the KL weighted by --kl-weight (1: the full KL, < 1: a
tempered posterior). The median-probability model (keep every
gate with PIP > 0.5, the posterior-mean network of the layers) is then shrunk
physically (`compress.shrink`) and evaluated: test error, nodes kept per layer, input
pixels kept, the dense multiply-add ratio; optionally refit for a few epochs with
the selection fixed (`--refit-how bayes`: the shrunk spike-and-slab net with its
gates frozen on, KL on; `deterministic`: its posterior means as a plain network).
Target (issue 5): <= 2 % error with >= 80 % of the hidden nodes pruned.

    python benchmarks/spike_slab_mnist.py --epochs 20 --kl-warmup 3 --rho-init -3 \
        --gate-lr 10 --input-gate-lr 10 --kl-weight 0.1 --refit-epochs 10 --refit-lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import add_results_dir_option, md_table, results_dir, use_results_dir, write_results
from torch import Tensor, nn

import bayesprune as bp
from bayesprune import compress
from bayesprune.data import load_mnist
from bayesprune.metrics import dense_weight_count
from bayesprune.models import mlp
from bayesprune.nn import GatedLayer, gated_layers
from bayesprune.selection import pip_summary, refit

NAME = "spike_slab_mnist"


def error(model: nn.Module, x: Tensor, y: Tensor, mode: str, samples: int = 10) -> float:
    scores = bp.evaluate(model, (x, y), mode=mode, samples=samples, metrics=["error_pct"])
    return scores["error_pct"]


def gated(model: nn.Module) -> list[GatedLayer]:
    return [layer for _, layer in gated_layers(model)]


def freeze_gates(model: nn.Module) -> None:
    """Pin every remaining gate on and stop its training: the refit keeps the selected
    architecture and trains only the slabs."""
    for layer in gated(model):
        layer.pin_gates()


def render(p: dict[str, Any], name: str) -> str:
    out = [f"Settings: {json.dumps(p.get('settings', {}))}\n"]
    for key, title in (
        ("training", "Training"),
        ("pips", "Posterior inclusion probabilities after training"),
        ("result", "Median-probability model, shrunk"),
        ("refit", "Refit of the shrunk model"),
    ):
        if key in p:
            rows = p[key] if isinstance(p[key], list) else [p[key]]
            out += [f"## {title}\n", md_table(rows), ""]
    if "notes" in p:
        out += ["## Notes\n"] + [f"- {n}" for n in p["notes"]] + [""]
    if Path(results_dir() / f"{name}.png").exists():
        out += [f"![kept pixels]({name}.png)\n"]
    return "\n".join(out)


def plot_pixels(model: nn.Module, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pip = gated(model)[0].input_gamma.detach().view(28, 28)
    fig, axes = plt.subplots(1, 2, figsize=(6.5, 3.2))
    axes[0].imshow(pip, cmap="viridis", vmin=0, vmax=1)
    axes[0].set_title("input PIP")
    axes[1].imshow(pip > 0.5, cmap="gray")
    axes[1].set_title(f"kept pixels ({int((pip > 0.5).sum())} of 784)")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(results_dir() / f"{name}.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[400, 400])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--kl-warmup", type=float, default=0.0)
    parser.add_argument("--gate-lr", type=float, default=None, help="lr multiplier, unit gates")
    parser.add_argument("--input-gate-lr", type=float, default=None, help="lr multiplier, pixels")
    parser.add_argument("--rho-init", type=float, default=None)
    parser.add_argument("--slab-scale", type=float, default=None)
    parser.add_argument("--gate-init", type=float, default=None)
    parser.add_argument(
        "--gate-estimator", default="marginal", choices=["marginal", "straight_through", "relaxed"]
    )
    parser.add_argument("--prior-inclusion", type=float, default=None, help="unit gates' λ")
    parser.add_argument("--input-prior-inclusion", type=float, default=None, help="pixels' λ")
    parser.add_argument("--refit-epochs", type=int, default=3)
    parser.add_argument("--refit-lr", type=float, default=3e-4)
    parser.add_argument(
        "--refit-how", default="bayes", choices=["bayes", "deterministic"],
        help="bayes: the shrunk net with its gates frozen on, KL on; deterministic: its "
        "posterior means as a plain net, maximum likelihood",
    )  # fmt: skip
    parser.add_argument("--samples", type=int, default=10, help="MC samples, full network")
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=NAME, help="results file name")
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    started = time.time()

    train = load_mnist("train", limit=args.train_limit, seed=args.seed)
    x_test, y_test = load_mnist("test").tensors
    payload: dict[str, Any] = {"settings": vars(args), "notes": []}

    def save() -> None:
        write_results(args.name, payload, render(payload, args.name))

    layer_kwargs = {
        k: v
        for k, v in (
            ("rho_init", args.rho_init),
            ("slab_scale", args.slab_scale),
            ("gate_init", args.gate_init),
            ("prior_inclusion", args.prior_inclusion),
            ("input_prior_inclusion", args.input_prior_inclusion),
            ("gate_estimator", args.gate_estimator),
        )
        if v is not None
    }
    multipliers = {
        k: v
        for k, v in (("input_gate_logit", args.input_gate_lr), ("gate_logit", args.gate_lr))
        if v is not None
    }
    torch.manual_seed(args.seed)
    model = nn.Sequential(
        nn.Flatten(),
        mlp(784, args.hidden, 10, family="spike_slab", input_gates=True, **layer_kwargs),
    )
    hist = bp.fit(
        model,
        train,
        epochs=args.epochs,
        lr=args.lr,
        lr_schedule="cosine",
        lr_multipliers=multipliers or None,
        kl_weight=args.kl_weight,
        kl_warmup_epochs=args.kl_warmup,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=False,
    )
    payload["training"] = {
        "epochs": args.epochs,
        "train_seconds": round(sum(hist.column("seconds")), 1),
        "final_loss": hist.last().get("loss"),
        "full_mc_error_pct": error(model, x_test, y_test, "mc", args.samples),
        "median_model_error_pct": error(model, x_test, y_test, "mean"),
    }
    payload["history"] = hist.epochs
    payload["pips"] = pip_summary(model)
    plot_pixels(model, args.name)
    save()

    result = compress.shrink(model, input_shape=(1, 28, 28), inclusion_threshold=0.5)
    small = result.model
    arch = result.architecture
    dense = [784, *args.hidden, 10]
    hidden_kept = sum(arch[1:-1])
    payload["result"] = {
        "architecture": "-".join(map(str, arch)),
        "dense_architecture": "-".join(map(str, dense)),
        "input_pixels_kept": arch[0],
        "hidden_nodes_kept": hidden_kept,
        "hidden_nodes_pruned_pct": 100.0 * (1 - hidden_kept / sum(args.hidden)),
        "flops_ratio": dense_weight_count(dense) / max(dense_weight_count(arch), 1),
        "error_pct": error(small, x_test, y_test, "mean"),
        "mc_error_pct": error(small, x_test, y_test, "mc", args.samples),
        "max_abs_difference": result.max_abs_difference,
    }
    save()

    if args.refit_epochs > 0:
        settings = {
            "epochs": args.refit_epochs,
            "lr": args.refit_lr,
            "lr_schedule": "cosine",
            "batch_size": args.batch_size,
            "seed": args.seed + 1,
            "progress": False,
        }
        t0 = time.time()
        if args.refit_how == "deterministic":
            small, _ = refit(small, train, "deterministic", **settings)
        else:
            freeze_gates(small)
            bp.finetune(small, train, kl_weight=args.kl_weight, **settings)
        payload["refit"] = {
            "how": args.refit_how,
            "epochs": args.refit_epochs,
            "seconds": round(time.time() - t0, 1),
            "error_pct": error(small, x_test, y_test, "mean"),
            "mc_error_pct": error(small, x_test, y_test, "mc", args.samples),
        }
    errs = [payload["result"]["error_pct"], payload.get("refit", {}).get("error_pct", 100.0)]
    met = min(errs) <= 2.0 and payload["result"]["hidden_nodes_pruned_pct"] >= 80.0
    payload["notes"].append(
        f"target <= 2 % error with >= 80 % hidden nodes pruned: {'met' if met else 'missed'} "
        f"(error {min(errs):.2f} %, {payload['result']['hidden_nodes_pruned_pct']:.1f} % pruned)"
    )
    payload["total_seconds"] = round(time.time() - started, 1)
    save()


if __name__ == "__main__":
    main()
