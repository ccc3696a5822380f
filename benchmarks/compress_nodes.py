"""Node-level compression of LeNet-300-100 on MNIST: how narrow can it get at <= 1.8 % error?

Weight-level pruning by SNR rarely empties a unit (the Sparse VD net of
compress_lenet300.py shrinks only to 490-88-85-10), so this prunes units directly,
iteratively: a Sparse VD net (trained here, or loaded with --init-svd) goes through
rounds of

1. score every input pixel and hidden unit (default "act": the standard deviation of
   its output over training images times the norm of its outgoing posterior-mean
   weights, i.e. how much the next layer's input moves when the unit is replaced by
   its mean: `compress.width_scores(net, "activation", x)`, whose graph form for any
   model is `compress.activation_scores`; "norm" / "mean_snr" use `compress.unit_scores`
   / `input_scores`);
2. keep the top units of each layer to a geometric width schedule
   (`compress.width_schedule`, `compress.prune_to_widths`); a removed unit's mean
   output is folded into the next layer's bias, so only its variation is lost;
3. drop the weights Sparse VD calls noise (log α > 3), `compress.shrink` the net
   (removed and dead units leave physically) and fine-tune it for a few epochs with
   the full KL (--alpha-threshold 10 keeps every weight of the kept units).

After the schedule reaches --final, further rounds scale every width by
--extra-factor. Every snapshot from --snapshot-from on is then fine-tuned longer
(--final-epochs; with --final-deterministic as a plain net, no KL) and the test error of
the posterior-mean network recorded: architecture (input pixels - hidden1 - hidden2 -
classes) vs error. Reference: Bayesian Compression (Louizos et al. 2017) reports
311-86-14 at 1.8 %. The committed run (the net from compress_lenet300.py --save-svd):

    python benchmarks/compress_nodes.py --init-svd /tmp/node/svd100.pt --alpha-threshold 10 \
        --rounds 14 --round-epochs 3 --final 300 80 13 --extra-rounds 1 --extra-factor 0.95 \
        --snapshot-from 13 --final-deterministic --final-epochs 30 --final-lr 1e-3
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
from torch.utils.data import TensorDataset

import bayesprune as bp
from bayesprune import compress
from bayesprune.compress.adapters import copy_model
from bayesprune.data import load_mnist
from bayesprune.metrics import dense_weight_count, layer_widths, model_size
from bayesprune.nn import to_deterministic
from bayesprune.nn.sparse_vd import SparseVDLinear

NAME = "compress_nodes"
REFERENCE = (311, 86, 14)  # Bayesian Compression (group horseshoe), 1.8 % error
DENSE = (784, 300, 100)
SCORES = {"act": "activation", "norm": "norm", "mean_snr": "mean_snr"}  # --score: library name


def body(model: nn.Sequential) -> nn.Sequential:
    """LeNet-300-100 without its Flatten: the chain works on flattened, selected pixels."""
    return nn.Sequential(*[m for m in model if not isinstance(m, nn.Flatten)])


def test_error(net: nn.Module, x: Tensor, y: Tensor) -> float:
    """Test error (%) of the posterior-mean network."""
    return bp.evaluate(net, (x, y), metrics=["error_pct"])["error_pct"]


def noise_masks(net: nn.Module, alpha_threshold: float) -> dict[str, Tensor]:
    """Keep the weights Sparse VD does not call noise: log α <= `alpha_threshold`."""
    return {
        name: (m.log_alpha() <= alpha_threshold).float()
        for name, m in net.named_modules()
        if isinstance(m, SparseVDLinear)
    }


def prune_round(
    net: nn.Sequential, x: Tensor, target: tuple[int, ...], kind: str, alpha_threshold: float
) -> tuple[nn.Sequential, Tensor]:
    """`compress.prune_to_widths` (weights Sparse VD calls noise leave too). Returns the
    smaller net and the kept input columns (indices into the current inputs)."""
    score = SCORES[kind]
    keep = noise_masks(net, alpha_threshold)
    result = compress.prune_to_widths(net, x, target, score, keep_weights=keep)
    return result.model, torch.as_tensor(result.input_features, dtype=torch.long)


def initial_net(args: argparse.Namespace, train: TensorDataset) -> tuple[nn.Sequential, str]:
    if args.init_svd is not None:
        model = bp.lenet_300_100(family="sparse_vd")
        model.load_state_dict(torch.load(args.init_svd, weights_only=True))
        return body(model), f"loaded from {args.init_svd}"
    torch.manual_seed(args.seed)
    common = dict(batch_size=args.batch_size, seed=args.seed, progress=False)
    det = bp.lenet_300_100(family="deterministic")
    bp.fit(det, train, epochs=args.det_epochs, lr=1e-3, lr_schedule="cosine", **common)
    svd = bp.convert(det, "sparse_vd", init_from_weights=True)
    bp.fit(
        svd,
        train,
        epochs=args.svd_epochs,
        lr=1e-3,
        lr_schedule="cosine",
        kl_warmup_epochs=args.kl_warmup,
        **common,
    )
    return body(svd), f"deterministic {args.det_epochs} epochs, then Sparse VD {args.svd_epochs}"


def finetune(
    net: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, seed: int, kl_weight: float
) -> None:
    bp.finetune(
        net,
        TensorDataset(x, y),
        epochs=epochs,
        lr=lr,
        lr_schedule="cosine",
        kl_weight=kl_weight,
        batch_size=128,
        seed=seed,
        progress=False,
    )


def arch(w: tuple[int, ...]) -> str:
    return "-".join(str(n) for n in w)


def smaller_than_reference(w: tuple[int, ...]) -> bool:
    """Every layer at most as wide as 311-86-14 and one narrower."""
    hidden = tuple(w[:3])
    return all(a <= b for a, b in zip(hidden, REFERENCE, strict=True)) and hidden != REFERENCE


def render(p: dict[str, Any]) -> str:
    out = [f"Settings: {json.dumps(p.get('settings', {}))}\n"]
    out += [f"Start: {p.get('start', '')}\n"]
    if "rounds" in p:
        out += ["## Pruning rounds (short fine-tune after each)\n", md_table(p["rounds"]), ""]
    if "final" in p:
        out += ["## Longer fine-tune of the late snapshots\n", md_table(p["final"]), ""]
    if "notes" in p:
        out += ["## Notes\n"] + [f"- {n}" for n in p["notes"]] + [""]
    if Path(results_dir() / f"{NAME}.png").exists():
        out += [f"![architecture vs error]({NAME}.png)\n"]
    return "\n".join(out)


def plot(p: dict[str, Any], budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("rounds", "after each round"), ("final", "longer fine-tune")):
        rows = p.get(key, [])
        xs = [r["dense_weights"] for r in rows]
        ax.plot(xs, [r["error_pct"] for r in rows], marker="o", label=label)
        for r in rows if key == "final" else []:
            ax.annotate(r["architecture"], (r["dense_weights"], r["error_pct"]), fontsize=7)
    ref = dense_weight_count((*REFERENCE, 10))
    ax.scatter([ref], [1.8], marker="*", s=120, color="k", label="Bayesian Compression 311-86-14")
    ax.axhline(budget, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("dense weights of the shrunk network")
    ax.set_ylabel("MNIST test error (%)")
    ax.set_ylim(1.0, 3.5)
    ax.set_title("LeNet-300-100: iterative node pruning of a Sparse VD net")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results_dir() / f"{NAME}.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--init-svd", type=Path, default=None, help="Sparse VD state_dict")
    parser.add_argument("--det-epochs", type=int, default=10)
    parser.add_argument("--svd-epochs", type=int, default=30)
    parser.add_argument("--kl-warmup", type=float, default=5.0)
    parser.add_argument("--score", choices=("act", "norm", "mean_snr"), default="act")
    parser.add_argument("--final", type=int, nargs=3, default=[280, 75, 13])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--extra-rounds", type=int, default=4)
    parser.add_argument("--extra-factor", type=float, default=0.9)
    parser.add_argument(
        "--snapshot-from", type=int, default=None, help="first round fine-tuned longer (--rounds)"
    )
    parser.add_argument("--round-epochs", type=int, default=2)
    parser.add_argument("--final-epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--final-lr", type=float, default=None, help="default: --lr")
    parser.add_argument(
        "--alpha-threshold",
        type=float,
        default=3.0,
        help="drop weights with log alpha above this each round (10 = keep all: log alpha <= 10)",
    )
    parser.add_argument("--kl-weight", type=float, default=1.0, help="KL weight when fine-tuning")
    parser.add_argument(
        "--final-deterministic",
        action="store_true",
        help="fine-tune the snapshots' posterior-mean networks as plain nets (no KL)",
    )
    parser.add_argument("--score-samples", type=int, default=10000)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-error", type=float, default=1.8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    started = time.time()

    train = load_mnist("train", limit=args.train_limit, seed=args.seed)
    x_all, y_train = train.tensors
    x_all = x_all.flatten(1)
    x_test_all, y_test = load_mnist("test").tensors
    x_test_all = x_test_all.flatten(1)
    score_x = x_all[torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))]
    score_x = score_x[: args.score_samples]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload: dict[str, Any] = {"settings": settings, "notes": []}

    net, start = initial_net(args, train)
    inputs = torch.arange(784)
    error = test_error(net, x_test_all, y_test)
    payload["start"] = (
        f"{start}: {arch(layer_widths(net))}, test error {error:.2f} %, "
        f"{model_size(net).nonzero_weights} non-zero weights"
    )

    def save() -> None:
        write_results(NAME, payload, render(payload))

    targets = compress.width_schedule(
        DENSE,
        tuple(args.final),
        args.rounds,
        extra_rounds=args.extra_rounds,
        extra_factor=args.extra_factor,
    )
    rounds, snapshots = [], []
    for r, target in enumerate(targets, 1):
        t0 = time.time()
        current = layer_widths(net)[:3]
        target = tuple(min(t, c) for t, c in zip(target, current, strict=True))
        net, kept = prune_round(net, score_x[:, inputs], target, args.score, args.alpha_threshold)
        inputs = inputs[kept]
        before = test_error(net, x_test_all[:, inputs], y_test)
        finetune(
            net,
            x_all[:, inputs],
            y_train,
            args.round_epochs,
            args.lr,
            args.seed + r,
            args.kl_weight,
        )
        w = layer_widths(net)
        rounds.append(
            {
                "round": r,
                "target": arch(target),
                "architecture": arch(w),
                "dense_weights": dense_weight_count(w),
                "nonzero_weights": model_size(net).nonzero_weights,
                "error_before_ft_pct": before,
                "error_pct": test_error(net, x_test_all[:, inputs], y_test),
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(rounds[-1], flush=True)
        if r >= (args.snapshot_from or args.rounds):
            snapshots.append((copy_model(net), inputs.clone(), r))
        payload["rounds"] = rounds
        save()

    final = []
    for snap, cols, r in snapshots:
        t0 = time.time()
        if args.final_deterministic:  # only the architecture counts here: train it plainly
            snap = to_deterministic(snap)
        kl = 0.0 if args.final_deterministic else args.kl_weight
        lr = args.final_lr or args.lr
        finetune(snap, x_all[:, cols], y_train, args.final_epochs, lr, args.seed + 100 + r, kl)
        w = layer_widths(snap)
        final.append(
            {
                "round": r,
                "architecture": arch(w),
                "dense_weights": dense_weight_count(w),
                "flops_ratio": dense_weight_count((*DENSE, 10)) / dense_weight_count(w),
                "nonzero_weights": model_size(snap).nonzero_weights,
                "error_pct": test_error(snap, x_test_all[:, cols], y_test),
                "smaller_than_311_86_14": smaller_than_reference(w),
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(final[-1], flush=True)
        payload["final"] = final
        save()

    ok = [f for f in final if f["error_pct"] <= args.max_error]
    if ok:
        best = min(ok, key=lambda f: f["dense_weights"])
        payload["notes"].append(
            f"smallest at <= {args.max_error} % error: {best['architecture']} at "
            f"{best['error_pct']:.2f} % ({best['dense_weights']} dense weights, "
            f"{best['nonzero_weights']} non-zero; 311-86-14-10 has "
            f"{dense_weight_count((*REFERENCE, 10))})"
        )
    else:
        best = min(final, key=lambda f: f["error_pct"])
        payload["notes"].append(
            f"no snapshot reached <= {args.max_error} % error; closest {best['architecture']} at "
            f"{best['error_pct']:.2f} %"
        )
    payload["notes"].append(
        "architectures are chosen by a fixed width schedule, not by test error; the test set "
        "only reports each snapshot's error"
    )
    payload["total_seconds"] = round(time.time() - started, 1)
    plot(payload, args.max_error)
    save()


if __name__ == "__main__":
    main()
