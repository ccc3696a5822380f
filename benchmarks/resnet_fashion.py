"""Residual CNN head-to-head: a compressed Bayesian ResNet against Torch-Pruning at equal FLOPs.

Per seed, on Fashion-MNIST (a training subset; the validation split is carved from it):

1. A ResNet-20-style net (`_resnet.ResNet`: stem + 3 stages × `--blocks` basic blocks
   with BatchNorm and residual adds, strided conv + 1×1 projection, global pool, linear
   head) trained deterministically, and its Bayesian twin (`bp.convert`, Gaussian;
   `--keep` stays deterministic, BatchNorm always does) trained with `bp.fit`.
2. The Bayesian net compressed by the library's channel scores: `activation_scores` →
   `keep_units` → `shrink_graph`, at the largest sparsity of `--grid` that keeps what a
   Bayesian net is for, on validation after fine-tuning (BatchNorm statistics
   re-estimated on training images): accuracy (posterior mean) within `--tolerance` of
   the dense Bayesian net's, and OOD AUROC (Monte-Carlo predictive, validation images
   in, MNIST *training* images out) by entropy and by MI within `--ood-tolerance` of
   its (`compress.tolerances`). If no grid level holds, the `--fallback-grid` levels,
   largest first; if none holds either, the least-pruned one, recorded as such. Then
   `--restore-epochs` more fine-tuning (`restore_uncertainty("finetune")`), kept only if
   both validation AUROCs rise (the baselines then get as many). `--allocation`: the
   units dropped per layer ("layer": the same fraction of each) or ranked across layers
   ("global", `keep_units(scope="global")`, at the "layer" net's FLOPs; "streams", a
   comparison: global with residual groups weighted by their layers); given several
   (default: layer and global), each level keeps the more accurate acceptable one.
3. Torch-Pruning (`MetaPruner`, magnitude and Taylor importance) prunes the
   deterministic twin to the same FLOPs (uniform ratio, bisected).
4. All three compressed nets are fine-tuned `--finetune-epochs` at `--finetune-lr`
   (the Bayesian ones at `--bayes-finetune-lr` if given, their posterior scales trained
   or, `--finetune-variances hold`, held: `bp.finetune(train_variances=False)`),
   then scored once on the test set (accuracy, ECE, NLL, OOD AUROC against MNIST test
   images by predictive entropy and, for the Bayesian nets' Monte-Carlo predictive, by
   mutual information), with channels per stage, FLOPs, and onnxruntime latency of
   the exported nets (1 thread, batch 1 and 256, sessions interleaved).

Every choice reads validation only; the test sets are read once per contender, at the end.
`--trace` reads no test set: it scores every stage (pruned, fine-tuned, temperature- or
variance-restored) on half of the validation split against MNIST training images.
`--merge` combines result files of separate processes (seeds); `--rerender` rewrites
the markdown from the JSON.

    python benchmarks/resnet_fashion.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_results_dir_option,
    md_table,
    mean_sd,
    short_metrics,
    use_results_dir,
    write_results,
)
from _resnet import (
    ALLOCATIONS,
    ResNet,
    add_temperature_scaled,
    bayes_compress,
    fashion_data,
    flops,
    level_tolerances,
    level_validator,
    onnx_checks,
    recalibrate_bn,
    score_on_test,
    stage_channels,
    tp_prune_to_flops,
)
from torch import Tensor, nn

import bayesprune as bp

NAME = "resnet_fashion"
CONTENDERS = (
    "deterministic (dense)",
    "bayesian (dense)",
    "bayesian compressed",
    "tp magnitude",
    "tp taylor",
)
REPORTED = ("accuracy", "ece", "nll", "ood_auroc_entropy", "ood_auroc_mi", "flops_ratio")


def make_data(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """`_resnet.fashion_data` with the settings' sizes; `--trace` reads no test set."""
    return fashion_data(
        seed, args.train_limit, args.val_size, args.test_limit, with_test=not args.trace
    )


def _batches(x: Tensor, size: int, count: int) -> list[Tensor]:
    return list(x[: size * count].split(size))


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train, compress, match, fine-tune and score every contender for one seed."""
    data = make_data(seed, args)
    train, (x_train, y_train) = data["train"], data["train"]
    fit = {"batch_size": args.batch_size, "seed": seed, "progress": False}
    widths, seconds = tuple(args.widths), {}

    def build() -> nn.Module:
        torch.manual_seed(seed)
        return ResNet(widths, args.blocks)

    start = time.perf_counter()
    det = build()
    bp.fit(det, train, epochs=args.epochs, lr=args.lr, lr_schedule="cosine", **fit)
    seconds["train_deterministic"] = time.perf_counter() - start
    start = time.perf_counter()
    bayes = bp.convert(build(), "gaussian", init_from_weights=True, keep=tuple(args.keep))
    bp.fit(
        bayes,
        train,
        epochs=args.epochs,
        lr=args.lr,
        lr_schedule="cosine",
        kl_weight=args.kl_weight,
        **fit,
    )
    seconds["train_bayesian"] = time.perf_counter() - start
    print(f"  trained ({seconds})", flush=True)

    # --- compression, on validation only
    val_acc = bp.scorer(data["val"], mode="mean", metrics=["accuracy"])
    validate = level_validator(data, args, seed, val_acc)
    calibration = _batches(x_train, 256, args.calibration_batches)
    example = x_train[:16]
    tune = {"epochs": args.finetune_epochs, "lr": args.finetune_lr, "lr_schedule": "cosine"}
    bayes_tune = {**tune, **bayes_finetune_options(args)}

    traced: dict[str, dict[str, float]] = {}
    tracer = _tracer(data, args, seed, traced) if args.trace else None
    if tracer is not None:
        tracer("bayesian (dense)", bayes)
        tracer("deterministic (dense)", det)

    current = ["bayesian compressed"]  # what `finetune` is tuning, for --trace

    def finetune(net: nn.Module) -> None:
        if tracer is not None:
            tracer(f"{current[0]} ({flops(net)} FLOPs), pruned", net)
        options = bayes_tune if _label(net) == "bayesian" else tune
        bp.finetune(net, train, **options, **fit)
        if tracer is not None:
            tracer(f"{current[0]} ({flops(net)} FLOPs), fine-tuned", net)

    start = time.perf_counter()
    ours = bayes_compress(
        bayes,
        _batches(x_train, 256, args.score_batches),
        validate,
        finetune,
        example,
        args.grid,
        level_tolerances(args),
        calibration,
        args.allocation,
        args.fallback_grid,
        validate_pruned=val_acc,
    )
    print(f"  level {ours.sparsity} ({ours.rule}, acceptable: {ours.within_tolerance})", flush=True)
    restore = restore_step(ours.model, ours.dense_val, validate, args, train, fit)
    if restore["kept"]:
        ours.model = restore.pop("model")
    restore.pop("model", None)
    seconds["compress_bayesian"] = time.perf_counter() - start
    target = flops(ours.model)
    grads = list(zip(x_train.split(128)[:4], y_train.split(128)[:4], strict=True))
    start = time.perf_counter()
    nets: dict[str, nn.Module] = {"bayesian compressed": ours.model}
    matching: dict[str, Any] = {}
    before = {}
    for kind in ("magnitude", "taylor"):
        current[0] = f"tp {kind}"
        net, found = tp_prune_to_flops(det, kind, target, example, grads)
        recalibrate_bn(net, calibration)
        before[f"tp {kind}"] = val_acc(net)["accuracy"]
        finetune(net)
        if restore["kept"]:  # fine-tuned as long as ours
            bp.finetune(net, train, **{**tune, "epochs": args.restore_epochs}, **fit)
        nets[f"tp {kind}"] = net
        matching[kind] = {**found, "flops": flops(net), "target": target}
    seconds["tp_match_and_finetune"] = time.perf_counter() - start
    level = next(
        g
        for g in ours.grid
        if g["sparsity"] == ours.sparsity and g["allocation"] == ours.allocation
    )
    before = {"bayesian compressed": level["val_accuracy_pruned"], **before}
    after = {k: val_acc(m)["accuracy"] for k, m in nets.items()}
    print(f"  compressed: sparsity {ours.sparsity}, val {before} -> {after}", flush=True)
    if tracer is not None:
        _restores(nets, data, args, seed, tracer, fit)
        return {"seed": seed, "trace": traced, "sparsity": ours.sparsity, "matching": matching}

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
            "parameters_deployed": deployed_weights(net),
            "channels": stage_channels(net),
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
        "val_accuracy": {
            "dense_deterministic": val_acc(det)["accuracy"],
            "dense_bayesian": ours.dense_val_accuracy,
            "pruned_before_finetune": before,
            "after_finetune": after,
        },
        "validation": {
            "dense_bayesian": ours.dense_val,
            "compressed_bayesian": restore["after"] if restore["kept"] else level["val_finetuned"],
        },
        "bayesian_compression": {
            "sparsity": ours.sparsity,
            "allocation": ours.allocation,
            "within_tolerance": ours.within_tolerance,
            "rule": ours.rule,
            "tolerances": ours.tolerances,
            "restore": restore,
            "grid": ours.grid,
            "shrink_max_abs_difference": ours.shrink.get("max_abs_difference"),
            "shrink_notes": ours.shrink.get("notes", []),
        },
        "tp_matching": matching,
        "onnx": deploy,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def bayes_finetune_options(args: argparse.Namespace) -> dict[str, Any]:
    """The compressed Bayesian nets' fine-tune, beyond the shared epochs and schedule: its
    rate (`--bayes-finetune-lr`, default `--finetune-lr`) and whether the posterior
    scales train (`--finetune-variances train`) or stay as the dense training left them
    ("hold": `bp.finetune(..., train_variances=False)`, means and BatchNorm only)."""
    lr = args.finetune_lr if args.bayes_finetune_lr is None else args.bayes_finetune_lr
    return {"lr": lr, "train_variances": args.finetune_variances == "train"}


def restore_step(
    model: nn.Module,
    dense: dict[str, float],
    validate: Any,
    args: argparse.Namespace,
    train: Any,
    fit: dict[str, Any],
) -> dict[str, Any]:
    """`--restore-epochs` more of fine-tuning (`restore_uncertainty("finetune")`, at
    `--finetune-lr`, cosine) of the chosen compressed net, kept only if validation says it
    helps: OOD AUROC higher by entropy and by MI, accuracy still within `--tolerance` of
    the dense net's. Returns the record, with the restored "model"."""
    if args.restore_epochs <= 0:
        return {"tried": False, "kept": False}
    before = validate(model)
    restored = bp.restore_uncertainty(
        model,
        "finetune",
        train=train,
        epochs=args.restore_epochs,
        lr_schedule="cosine",
        **bayes_finetune_options(args),
        **fit,
    )
    after = validate(restored)
    helps = all(after[m] > before[m] for m in ("ood_auroc_entropy", "ood_auroc_mi"))
    kept = helps and after["accuracy"] >= dense["accuracy"] - args.tolerance
    print(f"  restore ({args.restore_epochs} epochs): {before} -> {after}, kept {kept}", flush=True)
    return {"tried": True, "kept": kept, "before": before, "after": after, "model": restored}


def _label(net: nn.Module) -> str:
    return "bayesian" if any(True for _ in bp.nn.variational_layers(net)) else "deterministic"


def _tracer(
    data: dict[str, Any], args: argparse.Namespace, seed: int, out: dict[str, dict[str, float]]
) -> Any:
    """`--trace`: score a stage on the second half of the validation split against MNIST
    training images (Monte Carlo for a Bayesian net), and record it under a name."""
    x, y = data["val"]
    half = len(y) // 2
    pick = ((x[half:], y[half:]), data["val_ood"][half:])
    mc = bp.scorer(pick[0], mode="mc", samples=args.mc_samples, ood=pick[1], seed=seed)
    mean = bp.scorer(pick[0], mode="mean", ood=pick[1], seed=seed)

    def trace(name: str, model: nn.Module) -> None:
        scorer = mc if _label(_unwrapped(model)) == "bayesian" else mean
        row = {k: v for k, v in scorer(model).items() if not k.startswith("mean_")}
        out[name] = row
        print(f"    trace {name}: {short_metrics(row)}", flush=True)

    return trace


def _unwrapped(model: nn.Module) -> nn.Module:
    return getattr(model, "model", model)


def _restores(
    nets: dict[str, nn.Module],
    data: dict[str, Any],
    args: argparse.Namespace,
    seed: int,
    tracer: Any,
    fit: dict[str, Any],
) -> None:
    """`--trace`: the fine-tuned nets after temperature scaling (fitted on the first half
    of the validation split), and the Bayesian one after its variances are re-estimated."""
    x, y = data["val"]
    half = len(y) // 2
    for key, net in nets.items():
        mode = "mc" if key.startswith("bayesian") else "mean"
        scaled = bp.restore_uncertainty(
            net, "temperature", val=(x[:half], y[:half]), mode=mode, samples=args.mc_samples
        )
        tracer(f"{key} + temperature", scaled)
    ours = nets["bayesian compressed"]
    options = {"batch_size": fit["batch_size"], "seed": seed}
    variances = bp.restore_uncertainty(ours, "variances", train=data["train"], epochs=1, **options)
    tracer("bayesian compressed + variances (1 epoch)", variances)


def deployed_weights(model: nn.Module) -> int:
    """Weights of the deployed (posterior-mean) network's conv and linear layers."""
    return bp.metrics.model_size(model).weights


# --- summaries ----------------------------------------------------------------------------------


def _channels(ch: dict[str, Any]) -> str:
    """stem / stage streams, and each stage's inner widths, e.g. 8 / 8 (8,8,8) / ..."""
    parts = [str(ch["stem"])]
    for stage in ("layer1", "layer2", "layer3"):
        inner = ",".join(str(i) for i in ch[stage]["inner"])
        parts.append(f"{ch[stage]['stream']} ({inner})")
    return " / ".join(parts)


def contenders(runs: list[dict[str, Any]]) -> list[str]:
    """CONTENDERS, and their temperature-scaled twins where every run has them."""
    tempered = [f"{k} + T" for k in CONTENDERS if all(f"{k} + T" in r["contenders"] for r in runs)]
    return [*CONTENDERS, *tempered]


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key in contenders(runs):
        row: dict[str, Any] = {"contender": key}
        for metric in REPORTED:
            values = [r["contenders"][key].get(metric) for r in runs]
            row[metric] = "-" if None in values else mean_sd(values, 3 if "flops" in metric else 4)
        for size in ("batch 1", "batch 256"):
            values = [r["onnx"]["latency_ms"][size].get(key.removesuffix(" + T")) for r in runs]
            if key == "deterministic (dense)":
                values = [r["onnx"]["latency_ms"][size]["bayesian (dense)"] for r in runs]
            row[f"ms, {size}"] = mean_sd(values, 3)
        rows.append(row)
    return rows


def goal(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goal on seed means: compressed Bayesian at least as accurate as both
    baselines, lower ECE, OOD AUROC within 0.02 of the dense Bayesian net's."""

    def mean(key: str, metric: str) -> float:
        return statistics.mean(r["contenders"][key][metric] for r in runs)

    ours = "bayesian compressed"
    rows = []
    for suffix in ["", " + T"] if f"{ours} + T" in contenders(runs) else [""]:
        for base in ("tp magnitude", "tp taylor"):
            us, them = ours + suffix, base + suffix
            rows.append(
                {
                    "against": them,
                    "accuracy ours - theirs": mean(us, "accuracy") - mean(them, "accuracy"),
                    "as accurate": mean(us, "accuracy") >= mean(them, "accuracy"),
                    "ece ours / theirs": mean(us, "ece") / mean(them, "ece"),
                    "better ece": mean(us, "ece") < mean(them, "ece"),
                }
            )
    drops = {
        m: mean("bayesian (dense)", m) - mean(ours, m)
        for m in ("ood_auroc_entropy", "ood_auroc_mi")
    }
    rows.append(
        {
            "against": "bayesian (dense), OOD AUROC drop",
            "accuracy ours - theirs": mean(ours, "accuracy") - mean("bayesian (dense)", "accuracy"),
            "as accurate": f"entropy {drops['ood_auroc_entropy']:+.4f}",
            "ece ours / theirs": f"MI {drops['ood_auroc_mi']:+.4f}",
            "better ece": f"within 0.02: {max(drops.values()) <= 0.02}",
        }
    )
    return rows


def per_seed_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        for key in contenders(runs):
            c = run["contenders"][key]
            rows.append(
                {
                    "seed": run["seed"],
                    "contender": key,
                    **{m: c.get(m, "-") for m in REPORTED},
                    "channels: stem / stage stream (block inner)": _channels(c["channels"]),
                }
            )
    return rows


def _allocation(run: dict[str, Any]) -> str:
    """The chosen allocation and, at the chosen level, each allocation's fine-tuned
    validation accuracy and FLOPs."""
    comp = run["bayesian_compression"]
    level = [g for g in comp["grid"] if g["sparsity"] == comp["sparsity"]]
    seen = " / ".join(
        f"{g['val_accuracy_finetuned']:.3f} ({g['flops'] / 1e6:.2f} MFLOPs)" for g in level
    )
    return f"{comp.get('allocation', 'layer')}: {seen}"


def _level_walk(run: dict[str, Any]) -> str:
    """Each level tried, in order: sparsity, allocation, fine-tuned validation accuracy /
    OOD AUROC by entropy / by MI, and whether it held the tolerances."""
    comp = run["bayesian_compression"]
    parts = []
    for g in comp["grid"]:
        v = g.get("val_finetuned", {"accuracy": g["val_accuracy_finetuned"]})
        ood = "/".join(f"{v[m]:.3f}" for m in ("ood_auroc_entropy", "ood_auroc_mi") if m in v)
        mark = "ok" if g.get("acceptable") else "no"
        parts.append(f"{g['sparsity']} {g['allocation']}: {v['accuracy']:.3f} {ood} {mark}")
    return "; ".join(parts)


def uncertainty_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per seed, the level rule on validation: the dense Bayesian net's validation metrics,
    every level tried, the rule that chose, and the restore step."""
    rows = []
    for r in runs:
        comp, val = r["bayesian_compression"], r.get("validation", {})
        dense = val.get("dense_bayesian", {})
        ours = val.get("compressed_bayesian", {})
        restore = comp.get("restore", {})
        row = {
            "seed": r["seed"],
            "dense val acc / AUROC ent / MI": _triple(dense),
            "levels tried (acc ent/MI, acceptable)": _level_walk(r),
            "rule": comp.get("rule", "grid"),
            "chosen val acc / AUROC ent / MI": _triple(ours),
            "restore: after (kept)": "-"
            if not restore.get("tried")
            else f"{_triple(restore['after'])} ({restore['kept']})",
        }
        rows.append(row)
    return rows


def _triple(values: dict[str, float]) -> str:
    keys = ("accuracy", "ood_auroc_entropy", "ood_auroc_mi")
    return " / ".join(f"{values[k]:.3f}" for k in keys if k in values) or "-"


def render(payload: dict[str, Any]) -> str:
    s, runs = payload["settings"], payload["runs"]
    matching = [
        {
            "seed": r["seed"],
            "our sparsity": r["bayesian_compression"]["sparsity"],
            "allocation kept: validation of each tried": _allocation(r),
            "within tolerance": r["bayesian_compression"]["within_tolerance"],
            "target FLOPs": r["tp_matching"]["magnitude"]["target"],
            **{
                f"{k}: mode, ratio, FLOPs gap": f"{v.get('mode', 'uniform')} "
                f"{v['pruning_ratio']:.3f}, {v['flops_gap']:+.2%}"
                for k, v in r["tp_matching"].items()
            },
            "shrunk - masked": r["bayesian_compression"]["shrink_max_abs_difference"],
            "onnx - torch (ours)": r["onnx"]["difference"]["bayesian compressed"],
            "val acc before / after fine-tune (ours, mag, taylor)": " / ".join(
                ", ".join(f"{r['val_accuracy'][w][k]:.3f}" for k in r["val_accuracy"][w])
                for w in ("pruned_before_finetune", "after_finetune")
            ),
        }
        for r in runs
    ]
    return (
        f"ResNet ({'-'.join(map(str, s['widths']))}, {s['blocks']} blocks per stage) on "
        f"Fashion-MNIST: {s['train_limit']} training rows ({s['val_size']} of them held out "
        f"for validation), {s['epochs']} epochs at lr {s['lr']} (cosine), batch "
        f"{s['batch_size']}; Bayesian: Gaussian, `keep={s['keep']}`, KL weight "
        f"{s['kl_weight']}. Compression: activation scores, sparsity grid {s['grid']}, "
        f"allocation {s.get('allocation', ['layer'])} (cross-layer ones at the layer net's "
        "FLOPs, the more accurate on validation kept), "
        f"validation accuracy tolerance {s['tolerance']}"
        + _ood_rule_text(s)
        + f"; every compressed net fine-tuned "
        f"{s['finetune_epochs']} epoch(s) at lr {s['finetune_lr']}"
        + _bayes_finetune_text(s)
        + f". Test: {s['test_limit']} "
        f"Fashion-MNIST test images in, as many MNIST test images out; Monte-Carlo predictive "
        f"{s['mc_samples']} samples for the Bayesian nets, one pass for the deterministic ones. "
        f"Latency: onnxruntime, 1 intra-op thread, sessions interleaved, medians "
        f"(the dense deterministic net shares the dense Bayesian net's exported graph). "
        f"Seconds per seed: {[round(sum(r['seconds'].values())) for r in runs]}.\n\n"
        f"## Mean ± sd over seeds {[r['seed'] for r in runs]}\n\n"
        + md_table(summary_rows(runs))
        + "\n## The issue's goal (seed means)\n\n"
        + md_table(goal(runs))
        + "\n## Compression level and FLOPs matching (validation only)\n\n"
        + md_table(matching)
        + "\n## The level rule on validation (Fashion-MNIST validation in, MNIST training out)\n\n"
        + md_table(uncertainty_rows(runs))
        + "\n## Per seed\n\n"
        + md_table(per_seed_rows(runs))
    )


def _bayes_finetune_text(s: dict[str, Any]) -> str:
    """The Bayesian nets' own fine-tune settings, where they differ from the shared one."""
    lr = s.get("bayes_finetune_lr")
    held = s.get("finetune_variances", "train") == "hold"
    if lr is None and not held:
        return ""
    rate = f"at lr {lr}" if lr is not None else "at the same rate"
    scales = ", posterior scales held (means and BatchNorm only)" if held else ""
    return f" (the Bayesian ones {rate}{scales})"


def _ood_rule_text(s: dict[str, Any]) -> str:
    """The uncertainty part of the level rule, as recorded in the settings."""
    if "ood_tolerance" not in s:
        return ""
    return (
        f", and validation OOD AUROC (Monte-Carlo predictive, {s['val_size']} MNIST training "
        f"images out) by entropy and by MI within {s['ood_tolerance']} of the dense Bayesian "
        f"net's; if no level holds, fallback levels {s['fallback_grid']} (largest first), "
        f"else the least-pruned; then {s['restore_epochs']} more fine-tuning epoch(s) of the "
        "chosen net, kept only if both validation AUROCs rise (the Torch-Pruning nets then "
        "get as many)"
    )


def save(payload: dict[str, Any], name: str, command: str | None = None, machine=None) -> None:
    write_results(name, payload, render(payload), command, machine)


def merge(paths: list[str], name: str) -> None:
    """One result from runs of different seeds with the same settings (separate processes)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    for part in parts[1:]:
        differ = [
            k
            for k in first["settings"]
            if k != "seeds" and part["settings"][k] != first["settings"][k]
        ]
        if differ:
            raise SystemExit(f"{paths[0]} and the others differ in settings {differ}")
    runs = {r["seed"]: r for part in reversed(parts) for r in part["runs"]}
    payload = {
        "settings": {**first["settings"], "seeds": sorted(runs)},
        "runs": [runs[k] for k in sorted(runs)],
        "load_average": [p.get("load_average") for p in parts],
    }
    command = " ; ".join(dict.fromkeys(p["command"] for p in parts))
    save(payload, name, command, first["machine"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--widths", type=int, nargs=3, default=[8, 16, 32])
    parser.add_argument("--blocks", type=int, default=3, help="basic blocks per stage")
    parser.add_argument("--train-limit", type=int, default=10000, help="training rows (+val)")
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--test-limit", type=int, default=5000, help="test images, in and out")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--keep", nargs="*", default=["stem.0", "fc"], help="stay deterministic")
    parser.add_argument(
        "--grid", type=float, nargs="+", default=[0.2, 0.35, 0.5, 0.65], help="sparsities tried"
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.01, help="validation accuracy after fine-tuning"
    )
    parser.add_argument(
        "--ood-tolerance",
        type=float,
        default=0.02,
        help="validation OOD AUROC (entropy and MI, MNIST training images out) drop allowed "
        "against the dense Bayesian net; inf: accuracy alone",
    )
    parser.add_argument(
        "--fallback-grid",
        type=float,
        nargs="*",
        default=[0.05, 0.1],
        help="smaller sparsities tried, largest first, when no --grid level is acceptable",
    )
    parser.add_argument(
        "--restore-epochs",
        type=int,
        default=2,
        help="more fine-tuning of the chosen net, kept if validation OOD AUROC rises (0: none)",
    )
    parser.add_argument(
        "--allocation",
        nargs="+",
        choices=list(ALLOCATIONS),
        default=["layer", "global"],
        help="keep_units scope(s) tried per level; the better on validation is kept",
    )
    parser.add_argument("--score-batches", type=int, default=8, help="of 256 training images")
    parser.add_argument("--calibration-batches", type=int, default=8, help="BN statistics")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="cosine to 0")
    parser.add_argument(
        "--bayes-finetune-lr",
        type=float,
        default=None,
        help="the compressed Bayesian nets' fine-tune rate (default --finetune-lr)",
    )
    parser.add_argument(
        "--finetune-variances",
        choices=["train", "hold"],
        default="train",
        help="the Bayesian fine-tune trains the posterior scales, or holds them (means only)",
    )
    parser.add_argument(
        "--temperature",
        action="store_true",
        help="also score every compressed net after temperature scaling on validation",
    )
    parser.add_argument("--mc-samples", type=int, default=12)
    parser.add_argument("--latency-repeats", type=int, default=200, help="batch 1; /20 at 256")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=NAME, help="result file name")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="diagnosis on validation only (no test set): every stage's validation metrics",
    )
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="combine seed runs")
    parser.add_argument("--rerender", metavar="JSON", help="rewrite the markdown from a JSON")
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    name = args.name
    if args.merge:
        merge(args.merge, name)
        return
    if args.rerender:
        payload = json.loads(Path(args.rerender).read_text())
        command, machine = payload.pop("command"), payload.pop("machine")
        payload.pop("benchmark", None)
        save(payload, name, command, machine)
        return
    del args.merge, args.rerender, args.name
    torch.set_num_threads(args.threads)
    payload: dict[str, Any] = {"settings": vars(args), "runs": []}
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        payload["runs"].append(run_seed(seed, args))
        payload["load_average"] = list(os.getloadavg())
        if args.trace:
            write_results(name, payload, render_trace(payload))
        else:
            save(payload, name)


def render_trace(payload: dict[str, Any]) -> str:
    """`--trace`: each stage's validation metrics, per seed."""
    rows = [
        {"seed": run["seed"], "stage": stage, "ood_auroc_mi": "-", **values}
        for run in payload["runs"]
        for stage, values in run["trace"].items()
    ]
    return (
        "Diagnosis on validation only (second half of the validation split; OOD: MNIST "
        "training images; temperature fitted on the first half). Settings: "
        f"{payload['settings']}\n\n" + md_table(rows)
    )


if __name__ == "__main__":
    main()
