"""Compression benchmark: how far can LeNet-300-100 on MNIST be pruned, and by which score?

Trains a deterministic LeNet-300-100, then (starting from its weights, to save epochs)
a Gaussian scale-mixture Bayesian net and a Sparse VD net. For each model and score
(SNR, |μ|, −log α; magnitude for the deterministic net) it prunes the globally
lowest-scoring weights and records the test error (posterior mean) against the
fraction removed. It then reports the largest compression within the error budgets,
with and without a short fine-tune (`bayesprune.finetune`), shrinks the pruned network
(dead units and unused input pixels are removed) and times the shrunk deterministic
network against the dense one on CPU at batch 1 and 1024.

    python benchmarks/compress_lenet300.py --det-epochs 10 --bayes-epochs 6 --svd-epochs 20

Partial results are written after each phase.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_results_dir_option,
    md_table,
    median_time,
    results_dir,
    use_results_dir,
    write_results,
)
from torch import nn

import bayesprune as bp
from bayesprune import compress
from bayesprune.compress.adapters import copy_model
from bayesprune.data import load_mnist
from bayesprune.metrics import count_flops, model_size
from bayesprune.nn import to_deterministic

NAME = "compress_lenet300"
INPUT = (1, 28, 28)
GRID = (0.0, 0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.9925, 0.995)
CURVES = {  # model -> scores to rank its weights by
    "deterministic": ("magnitude",),
    "gaussian_scale_mixture": ("snr", "abs_mean"),
    "sparse_vd": ("snr", "abs_mean", "log_alpha"),
}


def test_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test error (%) of the posterior-mean network."""
    return bp.evaluate(model, (x, y), metrics=["error_pct"])["error_pct"]


def curve(
    model: nn.Module, score: str, x: torch.Tensor, y: torch.Tensor, budget: float
) -> tuple[list[dict[str, float]], float]:
    """Error on the grid, then bisection for the largest sparsity with error <= budget."""
    scores = compress.weight_scores(model, score)
    evaluate = bp.scorer((x, y), metrics=["error_pct"])
    points = compress.pruning_curve(model, scores, evaluate, GRID, metric="error_pct")
    return compress.bisect_sparsity(
        model, scores, evaluate, points, lambda err: err <= budget, metric="error_pct", steps=5
    )


def timing(dense: nn.Module, small: nn.Module, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for batch in (1, 1024):
        x = torch.rand(batch, *INPUT)
        reps = repeats if batch == 1 else max(5, repeats // 10)
        with torch.inference_mode():
            t_dense = median_time(lambda x=x: dense(x), reps)
            t_small = median_time(lambda x=x: small(x), reps)
        rows.append(
            {
                "batch": batch,
                "dense_ms": 1e3 * t_dense,
                "shrunk_ms": 1e3 * t_small,
                "speedup": t_dense / t_small,
                "flops_ratio": count_flops(dense, INPUT) / count_flops(small, INPUT),
                "repeats": reps,
            }
        )
    return rows


def save(payload: dict[str, Any], command: str | None = None) -> None:
    write_results(NAME, payload, render(payload), command)


def render(p: dict[str, Any]) -> str:
    out = [f"Settings: {json.dumps(p.get('settings', {}))}\n"]
    if "trained" in p:
        out += ["## Trained models (no pruning)\n", md_table(p["trained"]), ""]
    if "best" in p:
        out += ["## Largest pruning per model and score (test error, posterior mean)\n"]
        out += [md_table(p["best"]), ""]
    if "table" in p:
        out += ["## Test error (%) vs fraction of weights removed\n", md_table(p["table"]), ""]
    if "finetuned" in p:
        out += ["## After fine-tuning the pruned network\n", md_table(p["finetuned"]), ""]
    if "node" in p:
        out += ["## Node-level result (shrunk network)\n", md_table([p["node"]]), ""]
    if "timing" in p:
        out += ["## CPU inference, shrunk deterministic vs dense (median)\n"]
        out += [md_table(p["timing"]), ""]
    if "notes" in p:
        out += ["## Notes\n"] + [f"- {n}" for n in p["notes"]] + [""]
    if Path(results_dir() / f"{NAME}.png").exists():
        out += [f"![error vs sparsity]({NAME}.png)\n"]
    return "\n".join(out)


def plot(curves: dict[str, list[dict[str, float]]], budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in curves.items():
        pts = [p for p in pts if p["sparsity"] >= 0.5]
        xs, ys = [p["sparsity"] for p in pts], [p["error_pct"] for p in pts]
        ax.plot(xs, ys, marker=".", label=label)
    ax.axhline(budget, color="grey", ls="--", lw=0.8, label=f"{budget} % error")
    ax.set_xlabel("fraction of weights removed (global ranking)")
    ax.set_ylabel("MNIST test error (%)")
    ax.set_ylim(1.0, 6.0)
    ax.set_title("LeNet-300-100: pruning by posterior score")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results_dir() / f"{NAME}.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--det-epochs", type=int, default=10)
    parser.add_argument("--bayes-epochs", type=int, default=6)
    parser.add_argument("--svd-epochs", type=int, default=20)
    parser.add_argument("--kl-warmup", type=float, default=3.0)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument(
        "--finetune-lr", type=float, default=None, help="fine-tuning learning rate (default lr/3)"
    )
    parser.add_argument(
        "--finetune-compressions",
        type=float,
        nargs="*",
        default=[],
        help="extra compression ratios (e.g. 68 80) to prune to and fine-tune",
    )
    parser.add_argument("--finetune-schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument(
        "--save-svd", type=Path, default=None, help="save the trained Sparse VD net's state_dict"
    )
    parser.add_argument(
        "--load-svd",
        type=Path,
        default=None,
        help="skip Sparse VD training: load a state_dict saved by --save-svd (same settings)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-error", type=float, default=1.9)
    parser.add_argument("--node-error", type=float, default=1.8)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    started = time.time()

    train = load_mnist("train", limit=args.train_limit, seed=args.seed)
    x_test, y_test = load_mnist("test").tensors
    common = dict(batch_size=args.batch_size, seed=args.seed, progress=False)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload: dict[str, Any] = {"settings": settings, "notes": []}

    # 1. training: deterministic, then two Bayesian nets started from its weights
    torch.manual_seed(args.seed)
    models: dict[str, nn.Module] = {"deterministic": bp.lenet_300_100(family="deterministic")}
    hist = {
        "deterministic": bp.fit(
            models["deterministic"],
            train,
            epochs=args.det_epochs,
            lr=args.lr,
            lr_schedule="cosine",
            **common,
        )
    }
    prior = {"kind": "scale_mixture", "pi": 0.5, "scale1": 1.0, "scale2": math.exp(-6)}
    models["gaussian_scale_mixture"] = bp.convert(
        models["deterministic"], "gaussian", init_from_weights=True, prior=prior
    )
    hist["gaussian_scale_mixture"] = bp.fit(
        models["gaussian_scale_mixture"],
        train,
        epochs=args.bayes_epochs,
        lr=args.lr,
        lr_schedule="cosine",
        kl_warmup_epochs=min(args.kl_warmup, args.bayes_epochs),
        **common,
    )
    models["sparse_vd"] = bp.convert(models["deterministic"], "sparse_vd", init_from_weights=True)
    if args.load_svd is None:
        hist["sparse_vd"] = bp.fit(
            models["sparse_vd"],
            train,
            epochs=args.svd_epochs,
            lr=args.lr,
            lr_schedule="cosine",
            kl_warmup_epochs=args.kl_warmup,
            **common,
        )
    else:
        models["sparse_vd"].load_state_dict(torch.load(args.load_svd, weights_only=True))
        payload["notes"].append(
            f"Sparse VD net ({args.svd_epochs} epochs) loaded from {args.load_svd}, saved by an "
            "earlier run of this script with the same settings and --save-svd"
        )
    payload["trained"] = [
        {
            "model": k,
            "epochs": len(hist[k].epochs) if k in hist else args.svd_epochs,
            "train_seconds": round(sum(hist[k].column("seconds")), 1) if k in hist else None,
            "test_error_pct": test_error(m, x_test, y_test),
        }
        for k, m in models.items()
    ]
    payload["history"] = {k: h.epochs for k, h in hist.items()}
    if args.save_svd is not None:  # lets compress_nodes.py start from this net
        args.save_svd.parent.mkdir(parents=True, exist_ok=True)
        torch.save(models["sparse_vd"].state_dict(), args.save_svd)
    save(payload)

    # 2. error vs sparsity per model and score
    curves, best = {}, []
    for model_name, score_names in CURVES.items():
        for score in score_names:
            pts, s_max = curve(models[model_name], score, x_test, y_test, args.max_error)
            curves[f"{model_name}/{score}"] = pts
            best.append(
                {
                    "model": model_name,
                    "score": score,
                    "max_sparsity": s_max,
                    "compression_x": 1 / max(1 - s_max, 1e-12),
                    "error_pct": min(p["error_pct"] for p in pts if p["sparsity"] == s_max),
                }
            )
    svd = models["sparse_vd"]
    thr = compress.threshold_masks(compress.weight_scores(svd, "log_alpha"), -3.0)
    thr_model = copy_model(svd)
    compress.apply_masks(thr_model, thr)
    s_thr = compress.sparsity(thr)
    best.append(
        {
            "model": "sparse_vd",
            "score": "log_alpha < 3 (threshold)",
            "max_sparsity": s_thr,
            "compression_x": 1 / max(1 - s_thr, 1e-12),
            "error_pct": test_error(thr_model, x_test, y_test),
        }
    )
    payload["best"] = best
    payload["curves"] = curves
    payload["table"] = [
        {
            "sparsity": s,
            **{
                k: round(next(p["error_pct"] for p in v if p["sparsity"] == s), 2)
                for k, v in curves.items()
            },
        }
        for s in GRID
    ]
    plot(curves, args.max_error)
    save(payload)

    # 3. fine-tune: start from the best curve's point and push further
    top = max(best[:-1], key=lambda r: r["max_sparsity"])
    base = models[top["model"]]
    scores = compress.weight_scores(base, top["score"])
    s0 = top["max_sparsity"]
    fine: list[dict[str, Any]] = []
    kl_kw = {} if top["model"] == "deterministic" else {"kl_weight": 1.0}
    extra = (1 - 1 / c for c in args.finetune_compressions)
    ft_lr = args.finetune_lr or args.lr / 3
    for s in sorted({s0, *(1 - (1 - s0) * f for f in (0.7, 0.5, 0.4, 0.3)), *extra}):
        m = compress.pruned_copy(base, scores, s)
        before = test_error(m, x_test, y_test)
        bp.finetune(
            m,
            train,
            epochs=args.finetune_epochs,
            lr=ft_lr,
            lr_schedule=args.finetune_schedule,
            **kl_kw,
            **common,
        )
        fine.append(
            {
                "model": top["model"],
                "score": top["score"],
                "sparsity": s,
                "compression_x": 1 / (1 - s),
                "nonzero_weights": model_size(m).nonzero_weights,
                "error_before_pct": before,
                "error_after_pct": test_error(m, x_test, y_test),
                "_model": m,
            }
        )
    payload["finetuned"] = [{k: v for k, v in r.items() if k != "_model"} for r in fine]
    within = [r for r in fine if r["error_after_pct"] <= args.max_error]
    if within:
        r = max(within, key=lambda r: r["sparsity"])
        payload["notes"].append(
            f"largest compression at <= {args.max_error} % error after fine-tuning: "
            f"{r['compression_x']:.1f}x fewer non-zero weights ({r['nonzero_weights']} of "
            f"{model_size(base).nonzero_weights}), {r['error_after_pct']:.2f} % error"
        )
    save(payload)

    # 4. node level: shrink the sparsest fine-tuned net within the node budget
    ok = [r for r in fine if r["error_after_pct"] <= args.node_error]
    if not ok:  # the closest: lowest error, the sparsest among ties
        lowest = min(r["error_after_pct"] for r in fine)
        ok = [r for r in fine if r["error_after_pct"] == lowest]
    chosen = max(ok, key=lambda r: r["sparsity"])
    result = compress.shrink(chosen["_model"])
    small = to_deterministic(result.model).eval()
    dense = models["deterministic"].eval()
    payload["node"] = {
        "model": chosen["model"],
        "score": chosen["score"],
        "sparsity": chosen["sparsity"],
        "architecture": "-".join(map(str, result.architecture)),
        "dense_architecture": "784-300-100-10",
        "nonzero_weights": chosen["nonzero_weights"],
        "error_pct": test_error(small, x_test, y_test),
        "max_abs_difference": result.max_abs_difference,
    }
    if chosen["error_after_pct"] > args.node_error:
        payload["notes"].append(
            f"no fine-tuned point reached <= {args.node_error} % error; the closest is shown"
        )
    save(payload)

    # 5. CPU inference time, shrunk deterministic vs dense deterministic
    payload["timing"] = timing(dense, small, args.repeats)
    payload["total_seconds"] = round(time.time() - started, 1)
    save(payload)


if __name__ == "__main__":
    main()
