"""Structured compression of LeNet-5-Caffe (20-50-800-500) on MNIST with group priors.

Issue 13's second LeNet-5 target is a *structure* (conv1 channels - conv2 channels -
fc1 inputs in use - fc1 units) smaller than Bayesian Compression's 5-10-76-16 at
≤ 1.0 % test error. Sparse VD (`compress_lenet5.py`) prunes weights one by one, so
whole channels die only by accident. Here the prior is on groups: the spike-and-slab
node family puts one gate on every conv1 / conv2 channel and fc1 unit, and fc1 gets
one more gate per input (the 800 flattened conv2 outputs, as Bayesian Compression's
group prior on fc1's inputs). Per seed:

1. a deterministic LeNet-5-Caffe is trained for `--det-epochs` (the initial means);
2. the spike-and-slab net is trained from its weights (`--ss-epochs`, KL warm-up,
   cosine, gate learning rate × `--gate-lr-mult`); prior inclusion per layer the
   library's default 1 / (gates + 1) unless `--prior-inclusion` is given;
3. the median-probability model (every gate with PIP > 0.5) is shrunk
   (`compress.shrink`), and its posterior means start a Sparse VD net that is trained
   `--svd-epochs` (`--kl-weight-stages`, masks from nothing: weight-level sparsity on
   the surviving structure);
4. weights with log α above a threshold are pruned: the lowest threshold of a grid
   whose validation error stays within `--val-margin` of the log α > 3 net's; then
   the net is shrunk again and fine-tuned `--finetune-epochs` (Sparse VD, masks held).

Every choice is made on a validation split carved from the MNIST training set; the
test set is read once per seed for the reported net (`--no-test`: never). Results are
written after each seed.

    python benchmarks/structure_lenet5.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _common import add_results_dir_option, md_table, use_results_dir, write_results
from compress_lenet5 import (
    INPUT,
    THRESHOLDS,
    arch,
    error,
    kl_stage,
    log_epoch,
    masked,
    mean_weights,
    seeded_det,
    split,
    train_det,
)
from torch import nn
from torch.utils.data import TensorDataset

import bayesprune as bp
from bayesprune import compress
from bayesprune.data import load_mnist
from bayesprune.metrics import model_size
from bayesprune.nn.spike_slab import SpikeSlabLinear

NAME = "structure_lenet5"
BC_STRUCTURE = "5-10-76-16"  # Bayesian Compression (Louizos et al. 2017), ≤ 1.0 % error


def spike_slab_net(det: nn.Module, args: argparse.Namespace) -> nn.Module:
    """The node spike-and-slab twin of `det`, fc1 with one more gate per input."""
    options: dict[str, Any] = {
        "slab_scale": args.slab_scale,
        "gate_init": args.gate_init,
        "rho_init": args.ss_rho_init,
    }
    if args.prior_inclusion is not None:
        options["prior_inclusion"] = args.prior_inclusion
    model = bp.convert(det, "spike_slab", init_from_weights=True, **options)
    plain_fc1 = det[7]
    fc1 = SpikeSlabLinear(
        800,
        500,
        input_gates=True,
        input_prior_inclusion=args.input_prior_inclusion,
        **options,
    )
    fc1.load_means_from(plain_fc1)
    model[7] = fc1
    return model


def gate_pips(model: nn.Module) -> dict[str, list[int]]:
    """Gates open (PIP > 0.5) per gated layer: [open, total]."""
    out = {}
    for name, layer in model.named_modules():
        for attr in ("gamma", "input_gamma"):
            g = getattr(layer, attr, None) if hasattr(layer, "gate_logit") else None
            if g is not None:
                out[f"{name}.{attr}"] = [int((g > 0.5).sum()), g.numel()]
    return out


def structure(model: nn.Module) -> dict[str, int]:
    """Live channels / units as Bayesian Compression counts them, at any (shrunk) width.

    A unit is live with a non-zero incoming and outgoing weight; fc1's inputs in use are
    the flattened outputs of live conv2 channels with a non-zero weight into a live unit.
    """
    (_, w1), (_, w2), (_, w3), (_, w4) = mean_weights(model)
    alive1 = (w1.flatten(1) != 0).any(1)
    alive2 = (w2[:, alive1].flatten(1) != 0).any(1)
    positions = w3.shape[1] // w2.shape[0]  # 4 × 4 per conv2 channel, channel-major
    cols = alive2.repeat_interleave(positions)
    alive3 = (w3[:, cols] != 0).any(1) & (w4 != 0).any(0)
    used = (w3[alive3] != 0).any(0) & cols
    ch2 = used.view(w2.shape[0], positions).any(1)
    alive1 &= (w2[ch2] != 0).flatten(2).any(2).any(0)
    return {
        "conv1": int(alive1.sum()),
        "conv2": int(ch2.sum()),
        "fc1_inputs": int(used.sum()),
        "fc1": int(alive3.sum()),
    }


def nonzero(model: nn.Module) -> int:
    return model_size(model).nonzero_weights


def run_seed(args: argparse.Namespace, seed: int, test: TensorDataset | None) -> dict[str, Any]:
    """One seed: group stage, weight stage, the structure of record (the JSON row)."""
    train, val = split(load_mnist("train", limit=args.train_limit), args.val_size, seed)
    common = dict(batch_size=args.batch_size, seed=seed, progress=False)
    t0 = time.process_time()
    det = seeded_det(seed)
    total = model_size(det).weights
    train_det(det, train, args, seed)
    row: dict[str, Any] = {"seed": seed, "dense_weights": total}

    # 1. groups: spike-and-slab gates on channels, units and fc1's inputs
    ss = spike_slab_net(det, args)
    hist = bp.fit(
        ss,
        train,
        epochs=args.ss_epochs,
        lr=args.lr,
        lr_schedule="cosine",
        lr_multipliers={"gate_logit": args.gate_lr_mult, "input_gate_logit": args.gate_lr_mult},
        kl_weight=args.ss_kl_weight,
        kl_warmup_epochs=min(args.kl_warmup, args.ss_epochs),
        callbacks=[log_epoch(seed), lambda record: print(gate_pips(ss), flush=True)],
        **common,
    )
    median = bp.to_deterministic(ss)  # gates at 1[PIP > 0.5]: the median-probability model
    row["group_stage"] = {
        "cpu_s": round(time.process_time() - t0),
        "history": hist.epochs,
        "gates_open": gate_pips(ss),
        "structure": arch(structure(median)),
        "nonzero_weights": nonzero(median),
        "val_error_pct": error(ss, val),
    }
    print(
        f"seed {seed} group stage: {row['group_stage']['structure']} "
        f"val {row['group_stage']['val_error_pct']:.2f} %",
        flush=True,
    )
    small = compress.shrink(ss, INPUT).model
    plain_small = bp.to_deterministic(small)

    # 2. weights: Sparse VD on the surviving structure
    svd = bp.convert(plain_small, "sparse_vd", init_from_weights=True)
    bp.fit(
        svd,
        train,
        epochs=args.svd_epochs,
        lr=args.lr,
        lr_schedule="cosine",
        lr_multipliers={"weight_rho": args.rho_lr_mult},
        kl_weight=args.kl_weight_stages or 1.0,
        kl_warmup_epochs=min(args.kl_warmup, args.svd_epochs),
        callbacks=[log_epoch(seed)],
        **common,
    )
    grid = []
    for thr in THRESHOLDS:
        m = masked(svd, thr)
        grid.append({"threshold": thr, "nonzero": nonzero(m), "val_error_pct": error(m, val)})
    row["threshold_grid"] = grid
    bound = grid[0]["val_error_pct"] + args.val_margin
    chosen = min((g for g in grid if g["val_error_pct"] <= bound), key=lambda g: g["threshold"])
    final = compress.shrink(masked(svd, chosen["threshold"]), INPUT).model
    if args.finetune_epochs > 0:
        bp.finetune(
            final,
            train,
            epochs=args.finetune_epochs,
            lr=args.ft_lr,
            lr_schedule="cosine",
            **common,
        )
    row["record"] = {
        "threshold": chosen["threshold"],
        "structure": arch(structure(final)),
        "nonzero_weights": nonzero(final),
        "compression_x": total / nonzero(final),
        "flops_ratio": model_size(det, INPUT).flops / model_size(final, INPUT).flops,
        "val_error_pct": error(final, val),
        "test_error_pct": error(final, test),
        "cpu_s": round(time.process_time() - t0),
    }
    return row


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sd over seeds of the group stage and the record."""
    out = []
    for label, key in (("median-probability model", "group_stage"), ("record", "record")):
        pts = [r[key] for r in rows]
        test = [p["test_error_pct"] for p in pts if p.get("test_error_pct") is not None]
        out.append(
            {
                "point": label,
                "compression_x": mean_sd(
                    [
                        r["dense_weights"] / p["nonzero_weights"]
                        for r, p in zip(rows, pts, strict=True)
                    ]
                ),
                "val_error_pct": mean_sd([p["val_error_pct"] for p in pts]),
                "test_error_pct": mean_sd(test) if test else "–",
                "structures": ", ".join(p["structure"] for p in pts),
            }
        )
    return out


def render(p: dict[str, Any]) -> str:
    out = [f"Settings: {p['settings']}\n", f"Bayesian Compression's structure: {BC_STRUCTURE}.\n"]
    out += ["## Summary (mean ± sd over seeds; posterior-mean nets)\n", md_table(p["summary"]), ""]
    for r in p["seeds"]:
        out += [f"## Seed {r['seed']}\n", f"Gates open: {r['group_stage']['gates_open']}\n"]
        out += ["Validation grid of the weight stage:\n", md_table(r["threshold_grid"]), ""]
        out += [md_table([r["record"]]), ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--det-epochs", type=int, default=3)
    parser.add_argument("--ss-epochs", type=int, default=10)
    parser.add_argument("--svd-epochs", type=int, default=None, help="default: the stages")
    parser.add_argument("--kl-warmup", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--gate-lr-mult", type=float, default=10.0)
    parser.add_argument("--slab-scale", type=float, default=1.0)
    parser.add_argument("--gate-init", type=float, default=0.99)
    parser.add_argument("--ss-rho-init", type=float, default=-3.0, help="slabs' initial ρ")
    parser.add_argument("--ss-kl-weight", type=float, default=0.1, help="β of the gate stage")
    parser.add_argument("--prior-inclusion", type=float, default=None, help="default 1/(m+1)")
    parser.add_argument("--input-prior-inclusion", type=float, default=None)
    parser.add_argument("--rho-lr-mult", type=float, default=5.0)
    parser.add_argument(
        "--kl-weight-stages",
        type=kl_stage,
        nargs="+",
        default=[(4.0, 4), (1.0, 8)],
        metavar="BETA:EPOCHS",
    )
    parser.add_argument("--val-margin", type=float, default=0.1)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--ft-lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--no-test", action="store_true", help="development: never read test")
    parser.add_argument("--train-limit", type=int, default=None, help="smoke runs only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=NAME)
    add_results_dir_option(parser)
    args = parser.parse_args()
    args.svd_epochs = sum(n for _, n in args.kl_weight_stages)
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    name = args.name
    del args.name
    test = None if args.no_test else load_mnist("test")
    settings = vars(args) | {"kl_weight_stages": [list(s) for s in args.kl_weight_stages]}
    payload: dict[str, Any] = {"settings": settings, "seeds": []}
    for seed in args.seeds:
        payload["seeds"].append(run_seed(args, seed, test))
        payload["summary"] = summary(payload["seeds"])
        write_results(name, payload, render(payload))


if __name__ == "__main__":
    main()
