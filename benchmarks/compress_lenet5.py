"""Compression record: LeNet-5-Caffe (20-50-800-500) on MNIST with Sparse VD.

Per seed: a deterministic LeNet-5-Caffe is trained for a few epochs, a Sparse VD net
is trained from its weights (KL warm-up, cosine learning rate), and then

1. weight level: weights with log α > 3 (the paper's threshold) are pruned; a second
   point uses the lowest log α threshold (the most pruning) of a grid whose error on
   the validation split (carved from the MNIST training set) stays within
   `--val-budget`, or with `--val-margin` within that margin of the log α = 3 net's
   (none within: the threshold 3);
2. structure: the pruned net is shrunk (`compress.shrink`: channels / units with no
   incoming weights are removed); a unit-level step then removes the units whose
   importance (norm of masked incoming × outgoing posterior-mean weights) is below
   τ × the layer's largest, τ the largest of a grid whose validation error stays
   within `--unit-tolerance` of the weight-pruned net's;
3. with `--slim-fraction f` (optional): iterative self-compression of that net
   (`compress.self_compress`): each round removes the fraction f of every hidden
   layer's channels / units with the lowest `--slim-score` (posterior-mean kernel norm
   by default; `unit_log_alpha` reads the group prior's unit scales), shrinks and
   fine-tunes for `--slim-epochs` (default `--finetune-epochs`); the last round whose
   validation error stays within `--slim-tolerance` of the step-2 net's is reported.
   `--slim-greedy`: each round cuts one layer only, the one whose cut costs the least
   validation error.

With `--finetune-epochs F`, each `--ft-thresholds` pruning is fine-tuned (Sparse VD,
masks held, `bayesprune.finetune`) for F epochs and the lowest threshold whose
fine-tuned validation error stays within the same bound replaces the threshold of
step 1; the shrunk net of step 2 is fine-tuned for F epochs before its test read.
`--kl-weight β` trains Sparse VD with the KL term × β after warm-up (a tempered ELBO);
`--kl-weight-stages 4:10 1:20` instead anneals it: β = 4 for 10 epochs, then β = 1 for
20, in one `fit` call (one cosine schedule, one optimiser state): fit's own staged
`kl_weight=[(4.0, 10), (1.0, 20)]`.

`--uncertainty` (issue 18) also scores every stage on the MNIST test set with
Fashion-MNIST test images out (accuracy, NLL, ECE, OOD AUROC by entropy and, Monte
Carlo, by mutual information), for the MC predictive and the posterior mean: the dense
Sparse VD net, the chosen weight pruning, the shrunk net of record, each
`restore_uncertainty` method on it and the one `bayesprune restore`'s rule picks on the
validation split (OOD for validation: Fashion-MNIST *training* images), and the
deterministic net magnitude-pruned to the same sparsity. With `--load-svd` the
deterministic net is trained again from the same seed (`--det-cache` keeps it).

The structure is written as Bayesian Compression writes it: conv1 channels - conv2
channels - fc1 inputs in use - fc1 units (dense: 20-50-800-500). The test set is read
once per reported figure. Seeds run one after another; results are written after
each seed, so an interrupted run keeps the finished seeds.

    python benchmarks/compress_lenet5.py --det-epochs 2 --svd-epochs 8 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import add_results_dir_option, md_table, use_results_dir, write_results
from _uncertainty_pipelines import RESTORES, Data, Record, Settings, _restore, _scorers
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from uncertainty_after_pruning import chosen, summarise, targets

import bayesprune as bp
from bayesprune import compress
from bayesprune.compress.adapters import as_prunable, copy_model, prunable_layers
from bayesprune.data import load_fashion_mnist, load_mnist
from bayesprune.metrics import model_size

NAME = "compress_lenet5"
INPUT = (1, 28, 28)
DENSE = "20-50-800-500"
THRESHOLDS = (3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0)  # prune log α above this
TAUS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)


def kl_stage(text: str) -> tuple[float, int]:
    """One BETA:EPOCHS item of `--kl-weight-stages`."""
    beta, _, epochs = text.partition(":")
    try:
        value, count = float(beta), int(epochs)
    except ValueError:
        value, count = -1.0, 0
    if value < 0 or count < 1:
        raise argparse.ArgumentTypeError(
            f"expected BETA:EPOCHS with BETA >= 0 and EPOCHS >= 1, such as 4:10, got {text!r}"
        )
    return value, count


def log_epoch(seed: int) -> Callable[[dict[str, Any]], None]:
    """Callback: one flushed line per Sparse VD epoch, so a long run can be followed."""

    def show(record: dict[str, Any]) -> None:
        print(
            f"seed {seed} svd epoch {record['epoch']}: nll {record['nll']:.4f} "
            f"kl {record['kl']:.0f} kl_weight {record['kl_weight']:.3g} {record['seconds']:.0f}s",
            flush=True,
        )

    return show


def split(train: TensorDataset, n_val: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """Training / validation split of the MNIST training set (seeded permutation)."""
    x, y = train.tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(10_000 + seed))
    val, fit = order[:n_val], order[n_val:]
    return TensorDataset(x[fit], y[fit]), TensorDataset(x[val], y[val])


def error(model: nn.Module, data: TensorDataset | None) -> float | None:
    """Error (%) of the posterior-mean network (None without data: `--no-test`)."""
    if data is None:
        return None
    return bp.evaluate(model, data.tensors, metrics=["error_pct"], batch_size=1000)["error_pct"]


def masked(model: nn.Module, threshold: float) -> nn.Module:
    """A copy of the Sparse VD net with the weights of log α > `threshold` pruned."""
    out = copy_model(model)
    scores = compress.weight_scores(model, "log_alpha")  # −log α, higher = keep
    compress.apply_masks(out, compress.threshold_masks(scores, -threshold))
    return out


def mean_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, posterior-mean weight after masks) of each prunable layer, in order."""
    return [
        (name, as_prunable(layer).posterior().weight_mean.detach())
        for name, layer in prunable_layers(model)
    ]


def structure(model: nn.Module, keep: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Live channels / units per layer as Bayesian Compression counts them.

    A unit is live when it has an incoming and an outgoing non-zero weight (and is kept
    by `keep`); fc1's inputs in use are the flattened conv2 outputs of live channels
    with a non-zero weight into a live fc1 unit.
    """
    (n1, w1), (n2, w2), (n3, w3), (_, w4) = mean_weights(model)
    keep = keep or {}
    c1, c2, u3 = w1.shape[0], w2.shape[0], w3.shape[0]  # 20-50-500 dense, fewer once shrunk
    positions = w3.shape[1] // c2  # 4 × 4
    alive1 = (w1.flatten(1) != 0).any(1) & keep.get(n1, torch.ones(c1, dtype=torch.bool))
    alive2 = (w2[:, alive1].flatten(1) != 0).any(1) & keep.get(n2, torch.ones(c2, dtype=torch.bool))
    cols = alive2.repeat_interleave(positions)  # channel-major flatten
    alive3 = (w3[:, cols] != 0).any(1) & keep.get(n3, torch.ones(u3, dtype=torch.bool))
    alive3 &= (w4 != 0).any(0)
    used = (w3[alive3] != 0).any(0) & cols
    ch2 = used.view(c2, positions).any(1)
    alive1 &= (w2[ch2] != 0).flatten(2).any(2).any(0)
    return {
        "conv1": int(alive1.sum()),
        "conv2": int(ch2.sum()),
        "fc1_inputs": int(used.sum()),
        "fc1": int(alive3.sum()),
    }


def arch(s: dict[str, Any]) -> str:
    return f"{s['conv1']}-{s['conv2']}-{s['fc1_inputs']}-{s['fc1']}"


def unit_keep(model: nn.Module, tau: float) -> dict[str, torch.Tensor]:
    """Hidden units to keep: importance >= tau × the layer's largest importance.

    Importance = ‖masked incoming weights‖ × ‖masked outgoing weights‖ (posterior means);
    a unit with either norm zero is dead already.
    """
    layers = mean_weights(model)
    keep = {}
    for k, (name, w) in enumerate(layers[:-1]):
        w_next = layers[k + 1][1]
        incoming = w.flatten(1).norm(dim=1)
        if w_next.dim() == 2 and w_next.shape[1] != w.shape[0]:  # conv → flatten → linear
            outgoing = w_next.view(w_next.shape[0], w.shape[0], -1).transpose(0, 1)
        else:
            outgoing = w_next.transpose(0, 1)
        importance = incoming * outgoing.flatten(1).norm(dim=1)
        keep[name] = importance >= max(tau * float(importance.max()), 1e-12)
    return keep


def layer_table(model: nn.Module) -> list[dict[str, Any]]:
    rows = []
    for name, w in mean_weights(model):
        nz = int((w != 0).sum())
        rows.append(
            {"layer": name, "weights": w.numel(), "nonzero": nz, "kept_pct": 100 * nz / w.numel()}
        )
    return rows


def nonzero(model: nn.Module) -> int:
    return sum(int((w != 0).sum()) for _, w in mean_weights(model))


def point(
    m: nn.Module, thr: float, val: TensorDataset, test: TensorDataset | None, total: int
) -> dict[str, Any]:
    """A reported weight-level point: size, validation and test error, structure."""
    return {
        "threshold": thr,
        "nonzero_weights": nonzero(m),
        "compression_x": total / nonzero(m),
        "val_error_pct": error(m, val),
        "test_error_pct": error(m, test),
        "structure": arch(structure(m)),
        "layers": layer_table(m),
    }


def finetune_survivors(
    model: nn.Module,
    train: TensorDataset,
    args: argparse.Namespace,
    seed: int,
    epochs: int | None = None,
) -> None:
    """Sparse VD training of the unpruned weights only (masks held), cosine from `--ft-lr`."""
    bp.finetune(
        model,
        train,
        epochs=args.finetune_epochs if epochs is None else epochs,
        lr=args.ft_lr,
        lr_schedule="cosine",
        kl_weight=args.ft_kl_weight,
        batch_size=args.batch_size,
        seed=seed,
        progress=False,
    )


@dataclass
class RecordNets:
    """What one seed's compression of record leaves, for the uncertainty read."""

    train: TensorDataset
    val: TensorDataset
    det: nn.Module | None  # None after --load-svd (the deterministic init is not saved)
    det_init: nn.Module  # the seeded initial weights the deterministic net trains from
    svd: nn.Module  # dense Sparse VD
    pruned: nn.Module  # the chosen weight pruning (fine-tuned where chosen), masked
    final: nn.Module  # the unit step, shrunk and fine-tuned: the net of record
    total: int  # dense weights


def train_det(det: nn.Module, train: TensorDataset, args: argparse.Namespace, seed: int) -> None:
    """The deterministic LeNet-5-Caffe of `--det-epochs` (the Sparse VD init)."""
    common = dict(batch_size=args.batch_size, seed=seed, progress=False)
    bp.fit(det, train, epochs=args.det_epochs, lr=args.lr, lr_schedule="cosine", **common)


def seeded_det(seed: int) -> nn.Module:
    """The deterministic LeNet-5-Caffe at its seeded initial weights."""
    torch.manual_seed(seed)
    return bp.lenet5_caffe(family="deterministic")


SCALE_LAYOUTS: dict[str, Any] = {
    "out": "out",
    "in": "in",
    "bc": {"conv": "out", "linear": "in"},  # Bayesian Compression's layout
}


def family_options(args: argparse.Namespace) -> dict[str, Any]:
    """The group family's `scale_on` (where its scales sit); none for plain Sparse VD."""
    if args.family != "sparse_vd_group":
        return {}
    return {"scale_on": SCALE_LAYOUTS[args.scale_on]}


def run_seed(args: argparse.Namespace, seed: int, test: TensorDataset | None) -> dict[str, Any]:
    """One seed's record (the JSON row)."""
    return compress_seed(args, seed, test)[0]


def compress_seed(
    args: argparse.Namespace, seed: int, test: TensorDataset | None
) -> tuple[dict[str, Any], RecordNets]:
    """One seed's record and the nets it went through."""
    train, val = split(load_mnist("train", limit=args.train_limit), args.val_size, seed)
    common = dict(batch_size=args.batch_size, seed=seed, progress=False)
    t0 = time.process_time()
    det = seeded_det(seed)
    det_init = copy_model(det)
    hist = None
    if args.load_svd is not None:  # a saved Sparse VD net: only the choices run again
        svd = bp.convert(det, args.family, rho_init=args.rho_init, **family_options(args))
        svd.load_state_dict(load_file(args.load_svd / f"svd_seed{seed}.safetensors"))
        t_det = t_svd = 0.0
    else:
        train_det(det, train, args, seed)
        t_det = time.process_time() - t0
        svd = bp.convert(
            det, args.family, init_from_weights=True, rho_init=args.rho_init, **family_options(args)
        )
        names = {name.rsplit(".", 1)[-1] for name, _ in svd.named_parameters()}
        hist = bp.fit(
            svd,
            train,
            epochs=args.svd_epochs,
            lr=args.svd_lr,
            lr_schedule="cosine",
            lr_multipliers={
                name: args.rho_lr_mult for name in ("weight_rho", "unit_rho") if name in names
            },
            kl_weight=args.kl_weight_stages or args.kl_weight,
            kl_warmup_epochs=min(args.kl_warmup, args.svd_epochs),
            callbacks=[log_epoch(seed)],
            **common,
        )
        t_svd = time.process_time() - t0 - t_det
    if args.save_svd is not None:  # lets later choice rules run without retraining
        args.save_svd.mkdir(parents=True, exist_ok=True)
        save_file(svd.state_dict(), args.save_svd / f"svd_seed{seed}.safetensors")
    total = model_size(det).weights
    row: dict[str, Any] = {
        "seed": seed,
        "det_cpu_s": round(t_det),
        "svd_cpu_s": round(t_svd),
        "det_test_error_pct": None if hist is None else error(det, test),
        "svd_history": None if hist is None else hist.epochs,
    }

    # 1. weight level: the paper's threshold, and the validation-chosen one
    grid = []
    for thr in THRESHOLDS:
        m = masked(svd, thr)
        grid.append(
            {"threshold": thr, "compression_x": total / nonzero(m), "val_error_pct": error(m, val)}
        )
    row["threshold_grid"] = grid
    bound = args.val_budget
    if args.val_margin is not None:  # relative: the validation split may be harder than test
        bound = grid[0]["val_error_pct"] + args.val_margin
    ok = [g for g in grid if g["val_error_pct"] <= bound] or grid[:1]
    chosen_thr = min(ok, key=lambda g: g["threshold"])["threshold"]
    points = {
        label: point(masked(svd, thr), thr, val, test, total)
        for label, thr in (("log_alpha_3", 3.0), ("val_chosen", chosen_thr))
    }
    row["weight_points"] = points
    m = masked(svd, chosen_thr)

    # 1b. optional: prune at each candidate threshold, fine-tune the survivors, keep the
    # most compressed candidate whose validation error stays within the same bound
    if args.finetune_epochs > 0:
        tuned = []
        for thr in [t for t in args.ft_thresholds if t < chosen_thr]:  # only more pruning
            cand = masked(svd, thr)
            before = error(cand, val)
            finetune_survivors(cand, train, args, seed)
            tuned.append((thr, cand, before, error(cand, val)))
        row["finetune_grid"] = [
            {
                "threshold": thr,
                "compression_x": total / nonzero(c),
                "val_error_before_pct": b,
                "val_error_pct": a,
            }
            for thr, c, b, a in tuned
        ]
        ok_ft = [t for t in tuned if t[3] <= bound]
        if ok_ft:
            chosen_thr, m, _, _ = min(ok_ft, key=lambda t: t[0])
            points["finetuned"] = point(m, chosen_thr, val, test, total)

    # 2. structure: shrink, then the unit-level step chosen on validation
    base_val = error(m, val)
    units = []
    for tau in TAUS:
        keep = unit_keep(m, tau)
        small = compress.shrink(m, INPUT, prune_units=keep).model
        units.append(
            {"tau": tau, "structure": arch(structure(m, keep)), "val_error_pct": error(small, val)}
        )
    row["unit_grid"] = units
    ok = [u for u in units if u["val_error_pct"] <= base_val + args.unit_tolerance]
    tau = max(ok, key=lambda u: u["tau"])["tau"]
    keep = unit_keep(m, tau)
    result = compress.shrink(m, INPUT, prune_units=keep)
    small = result.model
    if args.finetune_epochs > 0:  # the shrunk survivors take over the removed units' work
        finetune_survivors(small, train, args, seed)
    row["structured"] = {
        "threshold": chosen_thr,
        "tau": tau,
        "structure": arch(structure(m, keep)),
        "shrunk_architecture": "-".join(map(str, result.architecture)),
        "nonzero_weights": model_size(small).nonzero_weights,
        "compression_x": total / model_size(small).nonzero_weights,
        "flops_ratio": model_size(det, INPUT).flops / model_size(small, INPUT).flops,
        "val_error_pct": error(small, val),
        "test_error_pct": error(small, test),
    }
    if args.slim_fraction is not None:
        row["slimmed"] = slim(small, train, val, test, args, seed, total, det)
    trained = det if hist is not None else None
    return row, RecordNets(train, val, trained, det_init, svd, m, small, total)


def slim(
    record: nn.Module,
    train: TensorDataset,
    val: TensorDataset,
    test: TensorDataset | None,
    args: argparse.Namespace,
    seed: int,
    total: int,
    det: nn.Module,
) -> dict[str, Any]:
    """3. Structure: iterative self-compression of the net of record, stopped on validation.

    Each round removes `--slim-fraction` of every hidden layer's channels / units (the
    lowest `--slim-score`), shrinks and fine-tunes the survivors; the last
    round whose validation error stays within `--slim-tolerance` of the record's is kept.
    """

    def val_accuracy(m: nn.Module) -> dict[str, float]:
        return {"accuracy": 1.0 - error(m, val) / 100.0}

    epochs = args.finetune_epochs if args.slim_epochs is None else args.slim_epochs

    def tune(m: nn.Module) -> None:
        finetune_survivors(m, train, args, seed, epochs)

    result = compress.self_compress(
        record,
        val_accuracy,
        tune if epochs > 0 else None,
        input_shape=INPUT,
        score=args.slim_score,
        fraction=args.slim_fraction,
        tolerance=args.slim_tolerance / 100.0,
        max_rounds=args.slim_rounds,
        greedy=args.slim_greedy,
    )
    net = result.model
    size = model_size(net, INPUT)
    return {
        "rounds": len(result.history) - 1,
        "accepted_round": result.accepted.round,
        "stopped": result.stopped,
        "history": [
            {
                "round": r.round,
                "units": "-".join(str(n) for n in r.units.values()),
                "val_error_pruned_pct": None
                if r.accuracy_pruned is None
                else round(100 * (1 - r.accuracy_pruned), 3),
                "val_error_pct": round(100 * (1 - r.accuracy), 3),
                "accepted": r.accepted,
            }
            for r in result.history
        ],
        "threshold": None,
        "structure": arch(structure(net)),
        "shrunk_architecture": "-".join(str(n) for n in result.accepted.units.values()),
        "nonzero_weights": size.nonzero_weights,
        "compression_x": total / size.nonzero_weights,
        "flops_ratio": model_size(det, INPUT).flops / size.flops,
        "val_error_pct": error(net, val),
        "test_error_pct": error(net, test),
    }


# --- issue 18: the uncertainty of the record -----------------------------------------------

DENSE_STAGE = "bayesian/before"  # dense Sparse VD (the names `uncertainty_after_pruning` reads)
PRUNED_STAGE = "bayesian/weight-pruned"  # the chosen log α pruning, before the unit step
RECORD = "bayesian/record"  # the shrunk net of record; restoring methods apply to it
DET_DENSE = "deterministic/before"
DET_SAME = "deterministic/same-sparsity"
DET_LAYERS = "deterministic/same-layers"
MODES = ("mc", "mean")
MODE_TITLES = {
    "mc": "Monte-Carlo predictive",
    "mean": "posterior-mean net (what the record reports)",
}
CHOSEN = f"{RECORD}/chosen-on-validation"


def uncertainty_data(
    nets: RecordNets,
    val_ood: Tensor,
    test: tuple[Tensor, Tensor],
    test_ood: Tensor,
    args: argparse.Namespace,
    seed: int,
) -> Data:
    """The record's own training / validation split as `uncertainty_after_pruning` splits
    it: temperature on the first validation half, the restoring method chosen on the
    second (OOD for validation: `val_ood`, the other set's *training* images); test and
    OOD test read only by the test scorers."""
    x, y = nets.val.tensors
    half = len(y) // 2
    cache: dict[str, Callable[[nn.Module], dict[str, float]]] = {}

    def test_scorer(mode: str, likelihood: Any) -> Callable[[nn.Module], dict[str, float]]:
        if mode not in cache:
            cache[mode] = bp.scorer(
                test, likelihood, mode=mode, samples=args.mc_samples, ood=test_ood, seed=seed
            )
        return cache[mode]

    return Data(
        train=nets.train.tensors,
        val=(x, y),
        val_fit=(x[:half], y[:half]),
        val_pick=(x[half:], y[half:]),
        val_ood=val_ood,
        val_pick_ood=val_ood[half:],
        test=test_scorer,
    )


def load_uncertainty_sets(
    args: argparse.Namespace, seed: int, n_val: int
) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
    """(validation OOD: Fashion-MNIST training images, MNIST test, Fashion-MNIST test)."""
    val_ood = load_fashion_mnist("train", limit=n_val, seed=seed).tensors[0]
    test = load_mnist("test", limit=args.test_limit).tensors
    test_ood = load_fashion_mnist("test", limit=args.test_limit).tensors[0]
    return val_ood, (test[0], test[1]), test_ood


def restore_settings(args: argparse.Namespace, seed: int) -> Settings:
    """`_uncertainty_pipelines` settings: MC samples, restore epochs, batch, seed."""
    return Settings(
        epochs=args.det_epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        mc_samples=args.mc_samples,
        val_samples=args.val_samples,
        restore_epochs=args.restore_epochs,
        delta=args.accuracy_tolerance,
        uncertainty_tolerances={},
        seed=seed,
    )


def trained_restores(
    final: nn.Module, data: Data, s: Settings, args: argparse.Namespace
) -> dict[str, nn.Module]:
    """The restoring methods that train, once for both predictives: the scales
    re-estimated, and a fine-tune of the survivors as the record fine-tunes them
    (`--ft-lr`, cosine, `--ft-kl-weight`)."""
    tuned = {"lr": args.ft_lr, "lr_schedule": "cosine", "kl_weight": args.ft_kl_weight}
    return {
        "variances": _restore(final, "variances", data, s, "mc", "categorical"),
        "finetune": _restore(final, "finetune", data, s, "mc", "categorical", **tuned),
    }


def deterministic_twin(nets: RecordNets, args: argparse.Namespace, seed: int) -> nn.Module:
    """The record's deterministic LeNet-5-Caffe: kept when this process trained it, else
    trained again from the same seeded init, data order and epochs."""
    if nets.det is not None:
        return nets.det
    return cached_det(nets.det_init, nets.train, args, seed)


def cached_det(
    det_init: nn.Module, train: TensorDataset, args: argparse.Namespace, seed: int
) -> nn.Module:
    """The deterministic net trained from `det_init`, read from `--det-cache` when an
    earlier run saved it there (the same seed, split and epochs give the same weights),
    else trained (and saved there)."""
    det = copy_model(det_init)
    path = None if args.det_cache is None else args.det_cache / det_file(args, seed)
    if path is not None and path.is_file():
        det.load_state_dict(load_file(path))
        return det
    train_det(det, train, args, seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(det.state_dict(), path)
    return det


def det_file(args: argparse.Namespace, seed: int) -> str:
    """A cached deterministic net's file: named by everything its weights depend on."""
    rows = "all" if args.train_limit is None else args.train_limit
    trained = f"ep{args.det_epochs}_lr{args.lr}_b{args.batch_size}_n{rows}_v{args.val_size}"
    return f"det_seed{seed}_{trained}.safetensors"


def score_deterministic(
    det: nn.Module, final: nn.Module, data: Data, s: Settings, args: argparse.Namespace
) -> Record:
    """The deterministic net, one pass (mode "mean"): dense; magnitude-pruned to the
    record's sparsity by one global ranking (the issue's twin), with a temperature; and
    pruned layer by layer to the record's non-zero weights per layer (a global ranking
    can starve a layer), as it is, fine-tuned as the record's survivors are
    (`--restore-epochs` at the deterministic rate, masks held), and tempered."""
    record = Record()
    test, pick = _scorers(data, "mean", s)
    record.score(DET_DENSE, det, test, pick, 0.0)
    kept = [int((w != 0).sum()) for _, w in mean_weights(final)]
    sparsity = 1 - sum(kept) / model_size(det).weights
    same = compress.pruned_copy(det, compress.weight_scores(det, "magnitude"), sparsity)
    layers = compress.apply_masks(copy_model(det), per_layer_masks(det, kept))
    tuned = {"lr": args.lr, "lr_schedule": "cosine"}
    for prefix, pruned in ((DET_SAME, same), (DET_LAYERS, layers)):
        record.score(f"{prefix}/pruned", pruned, test, pick, sparsity)
        tempered = _restore(pruned, "temperature", data, s, "mean", "categorical")
        record.score(f"{prefix}/pruned+temperature", tempered, test, pick, sparsity)
    finetuned = _restore(layers, "finetune", data, s, "mean", "categorical", **tuned)
    record.score(f"{DET_LAYERS}/pruned+finetune", finetuned, test, pick, sparsity)
    tempered = _restore(finetuned, "temperature", data, s, "mean", "categorical")
    record.score(f"{DET_LAYERS}/pruned+finetune+temperature", tempered, test, pick, sparsity)
    return record


def per_layer_masks(model: nn.Module, kept: list[int]) -> dict[str, Tensor]:
    """Masks keeping the `kept[i]` largest-magnitude weights of the i-th prunable layer."""
    scores = compress.weight_scores(model, "magnitude")
    if len(scores) != len(kept):
        raise ValueError(f"{len(kept)} per-layer counts for {len(scores)} prunable layers")
    return {
        name: compress.global_sparsity_masks({name: score}, 1 - k / score.numel())[name]
        for (name, score), k in zip(scores.items(), kept, strict=True)
    }


def measure_uncertainty(
    nets: RecordNets, det: nn.Module, data: Data, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """Every stage of the record scored in both predictives (test: reported; validation
    pick half: only to choose a restoring method), the deterministic twin beside them."""
    s = restore_settings(args, seed)
    sparsity_pruned = 1 - nonzero(nets.pruned) / nets.total
    sparsity = 1 - model_size(nets.final).nonzero_weights / nets.total
    # scored shrunk: the same function as the masked net, without its dead units' cost
    pruned = compress.shrink(nets.pruned, INPUT).model
    det_record = score_deterministic(det, nets.final, data, s, args)
    start = time.perf_counter()
    trained = trained_restores(nets.final, data, s, args)
    out: dict[str, Any] = {
        "sparsity_weight_pruned": sparsity_pruned,
        "sparsity": sparsity,
        "restore_training_s": round(time.perf_counter() - start, 1),
    }
    for mode in MODES:
        print(f"seed {seed} uncertainty, {mode} predictive", flush=True)
        record = Record()
        test, pick = _scorers(data, mode, s)
        record.score(DENSE_STAGE, nets.svd, test, pick, 0.0)
        record.score(PRUNED_STAGE, pruned, test, pick, sparsity_pruned)
        record.score(f"{RECORD}/pruned", nets.final, test, pick, sparsity)
        with record.timed("restore temperature"):
            repaired = {
                "temperature": _restore(nets.final, "temperature", data, s, mode, "categorical"),
                **trained,
                "finetune+temperature": _restore(
                    trained["finetune"], "temperature", data, s, mode, "categorical"
                ),
            }
        for method in RESTORES:
            record.score(f"{RECORD}/pruned+{method}", repaired[method], test, pick, sparsity)
        record.stages |= det_record.stages
        record.pick |= det_record.pick
        record.seconds |= {f"deterministic {k}": v for k, v in det_record.seconds.items()}
        out[mode] = record.as_dict()
    return out


def with_record_choice(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run with the stage "bayesian/record/chosen-on-validation": the restoring method
    `bayesprune restore`'s rule keeps on the validation pick half (`chosen`, as in
    `uncertainty_after_pruning`), with its test metrics."""
    out = []
    for run in runs:
        pick = chosen(run, RECORD)
        stages = dict(run["stages"])
        if pick is not None:
            stages[CHOSEN] = {**stages[pick], "chosen": pick}
        out.append({**run, "stages": stages})
    return out


def uncertainty_runs(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """The seeds' runs of one predictive, with the validation choice added."""
    runs = [{"seed": r["seed"], **r["uncertainty"][mode]} for r in rows if r.get("uncertainty")]
    return with_record_choice(runs)


def render_uncertainty(rows: list[dict[str, Any]], delta: float) -> list[str]:
    """Issue 18's tables: every stage (mean ± sd over seeds), the targets on seed means."""
    out = []
    for mode in MODES:
        runs = uncertainty_runs(rows, mode)
        if not runs:
            continue
        seeds = [r["seed"] for r in runs]
        out += [
            f"## Uncertainty, {MODE_TITLES[mode]} (MNIST in, Fashion-MNIST out; seeds {seeds})\n"
        ]
        out += [md_table(summarise(runs)), "Issue 18 targets (seed means):\n"]
        out += [md_table(targets(runs, delta)), ""]
    return out


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def ms(values: list[float]) -> str:
        if None in values:
            return "not read"
        if len(values) == 1:
            return f"{values[0]:.4g}"
        return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"

    out = []
    for label, get in (
        ("log α > 3 pruned", lambda r: r["weight_points"]["log_alpha_3"]),
        ("log α threshold chosen on val", lambda r: r["weight_points"]["val_chosen"]),
        ("fine-tuned survivors, threshold on val", lambda r: r["weight_points"].get("finetuned")),
        ("+ unit step chosen on val, shrunk", lambda r: r["structured"]),
        ("+ self-compression rounds on val (slimmed)", lambda r: r.get("slimmed")),
    ):
        pts = [get(r) for r in rows]
        if None in pts:
            continue
        out.append(
            {
                "point": label,
                "seeds": len(rows),
                "compression_x": ms([p["compression_x"] for p in pts]),
                "test_error_pct": ms([p["test_error_pct"] for p in pts]),
                "structures": ", ".join(p["structure"] for p in pts),
            }
        )
    return out


def render(p: dict[str, Any]) -> str:
    out = [f"Settings: {json.dumps(p['settings'])}\n"]
    out += ["Dense LeNet-5-Caffe: 430,500 weights, structure " + DENSE + ".\n"]
    if p["seeds"]:
        out += ["## Summary (mean ± sd over seeds; test error of the posterior mean)\n"]
        out += [md_table(summary(p["seeds"])), ""]
        rows = []
        for r in p["seeds"]:
            stages = [("structured", r["structured"]), ("slimmed", r.get("slimmed"))]
            for label, pt in (*r["weight_points"].items(), *[s for s in stages if s[1]]):
                rows.append(
                    {
                        "seed": r["seed"],
                        "point": label,
                        "threshold": pt["threshold"],
                        "nonzero_weights": pt["nonzero_weights"],
                        "compression_x": pt["compression_x"],
                        "val_error_pct": pt["val_error_pct"],
                        "test_error_pct": pt["test_error_pct"],
                        "structure": pt["structure"],
                    }
                )
        out += ["## Per seed\n", md_table(rows), ""]
        for r in p["seeds"]:
            out += [f"## Seed {r['seed']}: per-layer kept weights (log α > 3 pruned)\n"]
            out += [md_table(r["weight_points"]["log_alpha_3"]["layers"]), ""]
            out += [f"Validation grids (seed {r['seed']}):\n", md_table(r["threshold_grid"])]
            if r.get("finetune_grid"):
                out += ["Fine-tuned candidates:\n", md_table(r["finetune_grid"])]
            out += [md_table(r["unit_grid"]), ""]
            if r.get("slimmed"):
                out += ["Self-compression rounds (units per layer):\n"]
                out += [md_table(r["slimmed"]["history"]), ""]
    if any(r.get("uncertainty") for r in p["seeds"]):
        out += render_uncertainty(p["seeds"], p["settings"]["accuracy_tolerance"])
    if p.get("notes"):
        out += ["## Notes\n"] + [f"- {n}" for n in p["notes"]] + [""]
    return "\n".join(out)


def check_stages(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`--kl-weight-stages` sets the Sparse VD length and replaces `--kl-weight`."""
    if not args.kl_weight_stages:
        args.svd_epochs = 8 if args.svd_epochs is None else args.svd_epochs
        return
    total = sum(count for _, count in args.kl_weight_stages)
    if args.svd_epochs not in (None, total):
        parser.error(
            f"--svd-epochs {args.svd_epochs} differs from the {total} epochs of "
            "--kl-weight-stages; drop --svd-epochs (the stages set the length)"
        )
    if args.kl_weight != 1.0:
        parser.error("give either --kl-weight or --kl-weight-stages, not both")
    args.svd_epochs = total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--det-epochs", type=int, default=2)
    parser.add_argument("--svd-epochs", type=int, default=None, help="default 8")
    parser.add_argument("--kl-warmup", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--svd-lr", type=float, default=1e-3)
    parser.add_argument(
        "--rho-lr-mult", type=float, default=5.0, help="learning-rate factor of the σ parameters"
    )
    parser.add_argument(
        "--kl-weight", type=float, default=1.0, help="β: KL weight of Sparse VD after warm-up"
    )
    parser.add_argument(
        "--kl-weight-stages",
        type=kl_stage,
        nargs="+",
        default=None,
        metavar="BETA:EPOCHS",
        help="anneal β instead of --kl-weight: 4:10 1:20 = β 4 for 10 epochs, then 1 for 20",
    )
    parser.add_argument(
        "--rho-init", type=float, default=-5.0, help="initial ρ (σ = softplus(ρ)) of Sparse VD"
    )
    parser.add_argument(
        "--family",
        choices=["sparse_vd", "sparse_vd_group"],
        default="sparse_vd",
        help="sparse_vd_group: one more log-uniform scale per channel / unit (group prior)",
    )
    parser.add_argument(
        "--scale-on",
        choices=sorted(SCALE_LAYOUTS),
        default="out",
        help="sparse_vd_group: scales on each layer's outputs, inputs, or 'bc' (Bayesian "
        "Compression's layout: convs per output channel, linears per input unit)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--val-budget", type=float, default=0.9, help="val error (%%) bound")
    parser.add_argument(
        "--val-margin",
        type=float,
        default=None,
        help="instead of --val-budget: val error (%%) within this of the log α = 3 net's",
    )
    parser.add_argument(
        "--save-svd", type=Path, default=None, help="folder for each seed's Sparse VD state_dict"
    )
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="fine-tune the survivors of each --ft-thresholds pruning and of the unit step",
    )
    parser.add_argument("--ft-thresholds", type=float, nargs="+", default=[1.0, 0.5, 0.0, -0.5])
    parser.add_argument("--ft-lr", type=float, default=3e-4)
    parser.add_argument("--ft-kl-weight", type=float, default=1.0)
    parser.add_argument(
        "--load-svd",
        type=Path,
        default=None,
        help="folder of --save-svd weights: skip training, run the choices again",
    )
    parser.add_argument(
        "--no-test", action="store_true", help="development runs: never read the test set"
    )
    parser.add_argument("--unit-tolerance", type=float, default=0.1, help="val error (%%) margin")
    parser.add_argument(
        "--slim-fraction",
        type=float,
        default=None,
        help="3. after the record: self-compression rounds removing this fraction of each "
        "hidden layer's channels / units per round (off by default)",
    )
    parser.add_argument("--slim-rounds", type=int, default=12, help="self-compression rounds")
    parser.add_argument(
        "--slim-epochs", type=int, default=None, help="epochs per round (--finetune-epochs)"
    )
    parser.add_argument(
        "--slim-score",
        default="norm",
        choices=sorted(compress.SELF_COMPRESS_SCORES),
        help="what ranks the units a self-compression round removes",
    )
    parser.add_argument(
        "--slim-greedy",
        action="store_true",
        help="each self-compression round cuts the one layer whose cut costs the least",
    )
    parser.add_argument(
        "--slim-tolerance",
        type=float,
        default=0.1,
        help="val error (%%) a self-compression round may add to the record's",
    )
    parser.add_argument(
        "--uncertainty",
        action="store_true",
        help="issue 18: also score accuracy, NLL, ECE and OOD AUROC (Fashion-MNIST test images "
        "out) of every stage, MC and posterior mean, the restoring methods on the net of "
        "record (chosen on validation) and the deterministic twin at the same sparsity",
    )
    parser.add_argument("--mc-samples", type=int, default=30, help="--uncertainty: test MC passes")
    parser.add_argument(
        "--val-samples", type=int, default=10, help="--uncertainty: validation MC passes"
    )
    parser.add_argument(
        "--restore-epochs", type=int, default=2, help="--uncertainty: variances / finetune epochs"
    )
    parser.add_argument(
        "--test-limit", type=int, default=None, help="--uncertainty: test images per set"
    )
    parser.add_argument(
        "--accuracy-tolerance",
        type=float,
        default=0.005,
        help="--uncertainty: accuracy drop the targets table allows",
    )
    parser.add_argument(
        "--det-cache",
        type=Path,
        default=None,
        help="--uncertainty after --load-svd: folder where the deterministic twin (trained "
        "again, same seed and split) is saved, and read by later runs",
    )
    parser.add_argument(
        "--det-only",
        action="store_true",
        help="only train each seed's deterministic net into --det-cache (before --load-svd)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="only combine the seeds of runs with the same settings (separate processes) "
        "into --name",
    )
    parser.add_argument("--train-limit", type=int, default=None, help="smoke runs only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=NAME, help="results file stem")
    add_results_dir_option(parser)
    args = parser.parse_args()
    check_stages(parser, args)
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    name = args.name
    del args.name
    if args.merge:
        merge(args.merge, name)
        return
    del args.merge
    if args.uncertainty and args.no_test:
        parser.error("--uncertainty reads the test sets; drop --no-test")
    if args.det_only:
        if args.det_cache is None:
            parser.error("--det-only trains into --det-cache DIR; give it")
        for seed in args.seeds:
            train, _ = split(load_mnist("train", limit=args.train_limit), args.val_size, seed)
            cached_det(seeded_det(seed), train, args, seed)
        return
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    test = None if args.no_test else load_mnist("test")
    payload: dict[str, Any] = {"settings": settings, "seeds": [], "notes": []}
    for seed in args.seeds:
        row, nets = compress_seed(args, seed, test)
        if args.uncertainty:
            row["uncertainty"] = uncertainty_of_record(nets, args, seed, test)
        payload["seeds"].append(row)
        payload["summary"] = summary(payload["seeds"])
        write_results(name, payload, render(payload))


def uncertainty_of_record(
    nets: RecordNets, args: argparse.Namespace, seed: int, test: TensorDataset | None
) -> dict[str, Any]:
    """`--uncertainty` for one seed: the deterministic twin, the data, every stage scored."""
    start = time.perf_counter()
    det = deterministic_twin(nets, args, seed)
    det_s = time.perf_counter() - start
    val_ood, test_xy, test_ood = load_uncertainty_sets(args, seed, len(nets.val))
    data = uncertainty_data(nets, val_ood, test_xy, test_ood, args, seed)
    result = measure_uncertainty(nets, det, data, args, seed)
    result["det_test_error_pct"] = error(det, test)
    result["det_trained_here"] = nets.det is None
    result["det_train_s"] = round(det_s, 1)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


MAY_DIFFER = ("seeds", "ft_thresholds")  # settings a merge keeps per seed


def merge(paths: list[Path], name: str) -> None:
    """One result of runs that differ only in their seeds (one process per seed) and in
    `--ft-thresholds` (a replay may fine-tune only the candidate its record chose; each
    candidate's fine-tune is seeded on its own, so the chosen net is the same); what
    differs is kept per seed."""
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    per_seed = {}
    for path, part in zip(paths, parts, strict=True):
        differ = sorted(
            k
            for k in set(part["settings"]) | set(first["settings"])
            if k not in MAY_DIFFER and part["settings"].get(k) != first["settings"].get(k)
        )
        if differ:
            raise SystemExit(f"{path} differs from {paths[0]} in settings {differ}; not merged")
        for seed in part["settings"]["seeds"]:
            per_seed[str(seed)] = {k: part["settings"].get(k) for k in MAY_DIFFER}
    by_seed = {r["seed"]: r for part in parts for r in part["seeds"]}  # a later file wins
    rows = [by_seed[k] for k in sorted(by_seed)]
    settings = {**first["settings"], "seeds": sorted(by_seed), "per_seed": per_seed}
    payload = {"settings": settings, "seeds": rows, "summary": summary(rows), "notes": []}
    payload["merged_from"] = [str(p) for p in paths]
    command = " ; ".join(dict.fromkeys(p["command"] for p in parts))
    write_results(name, payload, render(payload), command, first["machine"])


if __name__ == "__main__":
    main()
