"""Pieces of `resnet_fashion.py`: the ResNet-20-style network, the two pruning paths, latency.

- `ResNet`: stem conv + BN, three stages of `blocks` basic blocks (BN, residual add; the
  first block of stages 2 and 3 downsamples with a strided 3×3 conv and a 1×1 + BN
  projection), global average pool, linear head. Plain torch, fx-traceable, so
  `bp.convert` and `compress.shrink_graph` take it as a user's model.
- `bayes_compress`: the library's path: activation scores → `keep_units` (one fraction
  of every layer, and/or ranked across layers at the same FLOPs, the better kept on
  validation) → `shrink_graph`, at the largest fraction of a grid whose validation
  metrics after fine-tuning (accuracy, OOD AUROC, ...) all stay within their
  tolerances of the dense net's, with fallback levels below the grid.
- `tp_prune_to_flops`: Torch-Pruning's `MetaPruner` (magnitude or Taylor importance)
  on the deterministic twin, its uniform `pruning_ratio` bisected until the pruned
  net's FLOPs (counted as ours are, `metrics.count_flops`) meet a target.
- `onnx_latency`: two onnxruntime sessions (1 intra-op thread) timed interleaved.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import short_metrics
from torch import Tensor, nn

import bayesprune as bp
from bayesprune import compress
from bayesprune.compress.chain import deployed_weight
from bayesprune.compress.graph_scores import _keep_global
from bayesprune.compress.tolerances import ToleranceSpec, all_hold, as_tolerances
from bayesprune.data import load_fashion_mnist, load_mnist
from bayesprune.metrics import count_flops

SHAPE = (1, 28, 28)


class Block(nn.Module):
    """A basic block: two 3×3 convs with BN; a 1×1 + BN projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-20 layout (He et al. 2016, CIFAR variant) for 1×28×28 inputs."""

    def __init__(self, widths: Sequence[int] = (8, 16, 32), blocks: int = 3, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers = [Block(cin, width, stride)]
            layers += [Block(width, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def stage_channels(model: nn.Module) -> dict[str, Any]:
    """Channels per stage: the residual stream (the stage's last conv2 outputs) and the
    inner widths of its blocks (each conv1's outputs), read off the modules."""
    out: dict[str, Any] = {"stem": _out_channels(model.get_submodule("stem.0"))}
    for stage in ("layer1", "layer2", "layer3"):
        blocks = list(model.get_submodule(stage))
        out[stage] = {
            "stream": _out_channels(blocks[-1].conv2),
            "inner": [_out_channels(b.conv1) for b in blocks],
        }
    return out


def _out_channels(layer: nn.Module) -> int:
    return int(deployed_weight(layer).shape[0])


def flops(model: nn.Module) -> int:
    return count_flops(model, SHAPE)


# --- the library's path ---------------------------------------------------------------------


def following_bn(name: str) -> str:
    """The BatchNorm that reads producer `name` in `ResNet` (stem.0 → stem.1, conv1 → bn1,
    conv2 → bn2, shortcut.0 → shortcut.1)."""
    head, _, last = name.rpartition(".")
    bn = {"0": "1", "conv1": "bn1", "conv2": "bn2"}[last]
    return f"{head}.{bn}" if head else bn


def silence(model: nn.Module, keep: dict[str, Tensor]) -> nn.Module:
    """A copy whose dropped channels emit 0 after their BatchNorm (γ = β = 0), as deleting
    them does in Torch-Pruning. Masking a channel's conv alone leaves the BN's constant
    β − γμ/σ, which meets the next padded conv and cannot be removed (see the report)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in keep.items():
            if name == "fc" or bool(mask.all()):
                continue
            bn = out.get_submodule(following_bn(name))
            bn.weight[~mask] = 0.0
            bn.bias[~mask] = 0.0
    return out


def recalibrate_bn(model: nn.Module, batches: Sequence[Tensor]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on `batches` (cumulative average,
    no gradient step): what a pruned net's statistics are before fine-tuning."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    was = model.training
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    model.train(was)
    for bn, momentum in zip(bns, saved, strict=True):
        bn.momentum = momentum
    return model


@dataclass
class BayesCompression:
    """The chosen level and what was seen at every level tried (validation only).

    `within_tolerance`: the chosen level holds every tolerance; `rule`: how it was
    found ("grid", "fallback": a `fallback_grid` level after none of the grid held, or
    "none held": no level did, the least-pruned one kept)."""

    model: nn.Module
    sparsity: float
    within_tolerance: bool
    dense_val: dict[str, float]
    grid: list[dict[str, Any]] = field(default_factory=list)
    shrink: dict[str, Any] = field(default_factory=dict)
    allocation: str = "layer"
    rule: str = "grid"
    tolerances: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dense_val_accuracy(self) -> float:
        return self.dense_val["accuracy"]


ALLOCATIONS = ("layer", "global", "streams")


def allocate(scores: dict[str, Tensor], sparsity: float, allocation: str) -> dict[str, Tensor]:
    """Keep-masks: "layer" and "global" are `keep_units(scope=...)`; "streams" is the
    global ranking with each residual group's scores times its number of layers (streams
    kept wide, the shape Torch-Pruning's global ranking chose), a comparison only."""
    if allocation == "streams":
        return _keep_global(
            {k: v.detach().cpu() for k, v in scores.items()}, sparsity, by_members=True
        )
    return compress.keep_units(scores, sparsity, scope=allocation)


def global_keep_at_flops(
    model: nn.Module,
    scores: dict[str, Tensor],
    example: Tensor,
    target: int,
    steps: int = 12,
    allocation: str = "global",
) -> tuple[float, dict[str, Tensor]]:
    """The sparsity of a cross-layer `allocation` whose shrunk net has the most FLOPs not
    above `target` (bisected; FLOPs fall as the sparsity grows), and its masks: so that
    the allocations are compared at equal cost."""
    lo, hi = 0.0, 0.95
    best = (0.0, allocate(scores, 0.0, allocation))
    for _ in range(steps):
        mid = (lo + hi) / 2
        keep = allocate(scores, mid, allocation)
        got = flops(compress.shrink_graph(model, example, prune_units=keep).model)
        if got <= target:
            best, hi = (mid, keep), mid
        else:
            lo = mid
    return best


@dataclass
class _Candidate:
    """One compressed net tried at one level and allocation, with its validation metrics
    (`record`: what the results keep of it)."""

    sparsity: float
    allocation: str
    model: nn.Module
    shrunk: dict[str, Any]
    values: dict[str, float]
    record: dict[str, Any]
    holds: bool = False


def bayes_compress(
    model: nn.Module,
    score_batches: Any,
    validate: Callable[[nn.Module], dict[str, float]],
    finetune: Callable[[nn.Module], None],
    example: Tensor,
    grid: Sequence[float],
    tolerances: ToleranceSpec,
    calibration: Sequence[Tensor],
    allocations: Sequence[str] = ("layer",),
    fallback_grid: Sequence[float] = (),
    validate_pruned: Callable[[nn.Module], dict[str, float]] | None = None,
) -> BayesCompression:
    """Per sparsity of `grid`, lowest first, and per allocation of `allocations`:
    activation scores → keep_units → `silence` → shrink_graph (checked against the
    silenced, masked net) → BatchNorm statistics re-estimated on `calibration` →
    `finetune` → `validate` (model → {metric: value} on validation data).

    A net is acceptable when every metric of `tolerances` (e.g. ``{"accuracy": 0.01,
    "ood_auroc_entropy": 0.02, "ood_auroc_mi": 0.02}``, `compress.tolerances`) stays
    within its tolerance of the dense net's; the first tolerance's metric ranks nets.
    "layer" drops the level's fraction of every layer; "global" ranks units across
    layers (`scope="global"`) at the sparsity whose FLOPs come closest below the
    "layer" net's, so both are compared at equal cost; a level keeps its best
    acceptable allocation (else its best). The largest level that is acceptable is
    kept; the walk stops at the first that is not. If no grid level is, the levels of
    `fallback_grid` are walked largest first and the first acceptable one is kept; if
    none is either, the least-pruned level tried (`rule` "none held").
    `validate_pruned` (default `validate`; it must give "accuracy") scores the pruned
    net before its fine-tune, for the record only."""
    unknown = set(allocations) - set(ALLOCATIONS)
    if unknown or not allocations:
        raise ValueError(f"allocations are some of {ALLOCATIONS}, got {list(allocations)}")
    held = as_tolerances(tolerances)
    model.eval()
    scores = compress.activation_scores(model, score_batches)
    dense = validate(model)
    seen: list[dict[str, Any]] = []
    checks = (validate_pruned or validate, validate)

    def level(sparsity: float) -> _Candidate:
        candidates = [
            _candidate(model, scores, sparsity, a, example, calibration, finetune, checks)
            for a in allocations
        ]
        for c in candidates:
            c.holds = c.record["acceptable"] = all_hold(held, c.values, dense)
            seen.append(c.record)
            print(f"    {seen[-1]}", flush=True)
        rank = held[0].metric
        return max(candidates, key=lambda c: (c.holds, c.values[rank]))  # first on a tie

    chosen: _Candidate | None = None
    tried: list[_Candidate] = []
    for sparsity in sorted(grid):
        tried.append(level(sparsity))
        if not tried[-1].holds:
            break
        chosen = tried[-1]
    rule = "grid"
    if chosen is None:
        rule = "fallback"
        for sparsity in sorted((s for s in fallback_grid if s < min(grid)), reverse=True):
            tried.append(level(sparsity))
            if tried[-1].holds:
                chosen = tried[-1]
                break
    if chosen is None:
        rule, chosen = "none held", min(tried, key=lambda c: c.sparsity)
    return BayesCompression(
        chosen.model,
        chosen.sparsity,
        chosen.holds,
        dense,
        seen,
        chosen.shrunk,
        chosen.allocation,
        rule,
        [t.as_dict() for t in held],
    )


def _candidate(
    model: nn.Module,
    scores: dict[str, Tensor],
    sparsity: float,
    allocation: str,
    example: Tensor,
    calibration: Sequence[Tensor],
    finetune: Callable[[nn.Module], None],
    checks: tuple[Callable[[nn.Module], dict[str, float]], ...],
) -> _Candidate:
    """The net of one level and allocation: shrunk, BN re-estimated, scored by `checks[0]`,
    fine-tuned, validated by `checks[1]`."""
    keep = compress.keep_units(scores, sparsity)
    effective = sparsity
    if allocation != "layer":
        target = flops(compress.shrink_graph(model, example, prune_units=keep).model)
        effective, keep = global_keep_at_flops(
            model, scores, example, target, allocation=allocation
        )
    result = compress.shrink_graph(silence(model, keep), example, prune_units=keep)
    small = recalibrate_bn(result.model, calibration)
    before = checks[0](small)
    finetune(small)
    values = checks[1](small)
    record = {
        "sparsity": sparsity,
        "allocation": allocation,
        "keep_units_sparsity": effective,
        "val_accuracy_pruned": before["accuracy"],
        "val_accuracy_finetuned": values["accuracy"],
        "val_pruned": before,
        "val_finetuned": values,
        "flops": flops(small),
        "channels": stage_channels(small),
        "kept_dead_units": sum(r.kept_dead_units for r in result.layers),
        "shrunk_minus_masked": result.max_abs_difference,
    }
    return _Candidate(sparsity, allocation, small, result.as_dict(), values, record)


# --- data ----------------------------------------------------------------------------------


def fashion_data(
    seed: int, train_limit: int, val_size: int, test_limit: int, with_test: bool = True
) -> dict[str, Any]:
    """Seeded Fashion-MNIST training rows with the validation split carved off, a
    validation OOD set (MNIST *training* images: the MNIST test set is the test's), and,
    `with_test`, the Fashion-MNIST test set and the MNIST test images as its OOD set."""
    x, y = load_fashion_mnist("train", limit=train_limit, seed=seed).tensors
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n = val_size
    if n >= len(y):
        raise SystemExit(f"--val-size {n} leaves no training rows of {len(y)}")
    out = {"train": (x[:-n], y[:-n]), "val": (x[-n:], y[-n:])}
    out["val_ood"] = load_mnist("train", limit=n, seed=seed).tensors[0]
    if with_test:
        out["test"] = load_fashion_mnist("test", limit=test_limit, seed=0).tensors
        out["ood"] = load_mnist("test", limit=test_limit, seed=0).tensors[0]
    return out


# --- Torch-Pruning at equal FLOPs ----------------------------------------------------------


def tp_prune(
    model: nn.Module,
    kind: str,
    ratio: float,
    example: Tensor,
    grad_batches: Sequence[tuple[Tensor, Tensor]],
    global_pruning: bool = False,
    ignored: Callable[[nn.Module], list[nn.Module]] = lambda net: [net.fc],
) -> nn.Module:
    """A pruned copy of `model`: `ratio` of each group's channels (uniform), or of all
    channels ranked together (`global_pruning`, at most 90 % of a layer), by Torch-Pruning
    (magnitude or Taylor importance); `ignored(copy)` names the layers whose outputs stay."""
    import torch_pruning as tp

    net = copy.deepcopy(model).eval()
    importance = {
        "magnitude": lambda: tp.importance.MagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.TaylorImportance(),
    }[kind]()
    pruner = tp.pruner.MetaPruner(
        net,
        example,
        importance=importance,
        pruning_ratio=ratio,
        ignored_layers=ignored(net),
        global_pruning=global_pruning,
        max_pruning_ratio=0.9,
    )
    if kind == "taylor":
        net.zero_grad()
        for x, y in grad_batches:  # eval mode: BN statistics stay, gradients accumulate
            F.cross_entropy(net(x), y).backward()
    pruner.step()
    net.zero_grad(set_to_none=True)
    return net


def tp_prune_to_flops(
    model: nn.Module,
    kind: str,
    target_flops: int,
    example: Tensor,
    grad_batches: Sequence[tuple[Tensor, Tensor]],
    steps: int = 14,
    max_gap: float = 0.02,
    count: Callable[[nn.Module], int] | None = None,
    ignored: Callable[[nn.Module], list[nn.Module]] = lambda net: [net.fc],
) -> tuple[nn.Module, dict[str, Any]]:
    """Bisect Torch-Pruning's `pruning_ratio` so that FLOPs come closest to `target_flops`
    (FLOPs fall as the ratio grows): uniform per layer first; if that cannot come within
    `max_gap` (a narrow layer loses channels in whole steps), also global ranking, and
    the closer of the two. Returns the net and {mode, pruning_ratio, flops_gap}.
    `count` counts a net's FLOPs (default: on one Fashion-MNIST image)."""
    count = count or flops
    best: tuple[float, nn.Module, dict[str, Any]] | None = None
    for global_pruning in (False, True):
        lo, hi = 0.0, 0.95
        for _ in range(steps):
            mid = (lo + hi) / 2
            net = tp_prune(model, kind, mid, example, grad_batches, global_pruning, ignored)
            got = count(net)
            gap = got / target_flops - 1
            if best is None or abs(gap) < abs(best[0]):
                mode = "global" if global_pruning else "uniform"
                best = (gap, net, {"mode": mode, "pruning_ratio": mid, "flops_gap": gap})
            lo, hi = (mid, hi) if got > target_flops else (lo, mid)
        assert best is not None
        if abs(best[0]) <= max_gap:
            break
    assert best is not None
    return best[1], best[2]


# --- the validation rule of a compression level, alike for every benchmark ---------------------


def level_tolerances(args: argparse.Namespace) -> dict[str, float]:
    """What a compression level must hold on validation against the dense Bayesian net:
    accuracy within `--tolerance`, OOD AUROC by entropy and by MI within
    `--ood-tolerance` (absolute; `compress.tolerances`)."""
    ood = dict.fromkeys(("ood_auroc_entropy", "ood_auroc_mi"), args.ood_tolerance)
    return {"accuracy": args.tolerance, **ood}


def level_validator(
    data: dict[str, Any],
    args: argparse.Namespace,
    seed: int,
    accuracy: Any,
    recorded: Sequence[str] = (),
) -> Callable[[nn.Module], dict[str, float]]:
    """model → validation accuracy (posterior mean, as the level search always compared)
    and OOD AUROC by entropy and MI of the Monte-Carlo predictive, validation images in,
    `val_ood` out (and the Monte-Carlo `recorded` metrics, kept but not held)."""
    ood = bp.scorer(
        data["val"],
        mode="mc",
        samples=args.mc_samples,
        ood=data["val_ood"],
        metrics=["ood_auroc_entropy", "ood_auroc_mi", *recorded],
        seed=seed,
    )
    return lambda model: {**accuracy(model), **ood(model)}


def walk_levels(
    model: nn.Module,
    scores: dict[str, Tensor],
    data: dict[str, Any],
    args: argparse.Namespace,
    seed: int,
    finetune: Callable[[nn.Module], None],
    describe: Callable[[nn.Module], dict[str, Any]],
    every_level: bool = False,
    reference: nn.Module | None = None,
) -> dict[str, Any]:
    """The level walk on validation of the ViT and ConvNeXt benchmarks: per sparsity of
    `args.grid`, lowest first, `keep_units(scores)` → `shrink_graph` → `finetune` →
    `level_validator`, held against the dense net (or `reference`: the dense net
    fine-tuned as long, so that the fine-tune's own drift is not charged to the cut) by
    `level_tolerances`; the walk stops at the first level that fails (`every_level`:
    walks on, to see them all). The last level of the run that holds is chosen, else the
    least-pruned one ("none held"). `describe(net)` adds sizes to each level's record."""
    accuracy = bp.scorer(data["val"], mode="mean", metrics=["accuracy"])
    validate = level_validator(data, args, seed, accuracy)
    held = as_tolerances(level_tolerances(args))
    dense = validate(model if reference is None else reference)
    example = data["train"][0][:8]
    levels: list[dict[str, Any]] = []
    nets: list[nn.Module] = []
    for sparsity in sorted(args.grid):
        result = compress.shrink_graph(
            model, example, prune_units=compress.keep_units(scores, sparsity)
        )
        small = result.model
        pruned = accuracy(small)["accuracy"]
        finetune(small)
        values = validate(small)
        holds = all_hold(held, values, dense)
        levels.append(
            {
                "sparsity": sparsity,
                "val_accuracy_pruned": pruned,
                "val_finetuned": values,
                "acceptable": holds,
                **describe(small),
                "shrunk_minus_masked": result.max_abs_difference,
            }
        )
        print(f"    level {levels[-1]}", flush=True)
        nets.append(small)
        if not holds and not every_level:
            break
    run = 0  # the levels that hold before the first that does not
    while run < len(levels) and levels[run]["acceptable"]:
        run += 1
    rule, index = ("grid", run - 1) if run else ("none held", 0)
    return {
        "sparsity": levels[index]["sparsity"],
        "model": nets[index],
        "rule": rule,
        "dense_val": dense,
        "levels": levels,
        "tolerances": [t.as_dict() for t in held],
    }


# --- the test read, alike for every contender -------------------------------------------------


def add_temperature_scaled(nets: dict[str, nn.Module], val: Any, samples: int) -> None:
    """Every compressed net alike: "<key> + T" with T fitted on the validation split (the
    Monte-Carlo predictive for the "bayesian…" keys, the posterior mean otherwise)."""
    for key in list(nets):
        mode = "mc" if key.startswith("bayesian") else "mean"
        nets[f"{key} + T"] = bp.restore_uncertainty(
            nets[key], "temperature", val=val, mode=mode, samples=samples
        )


def score_on_test(
    models: dict[str, nn.Module],
    data: dict[str, Any],
    seed: int,
    samples: int,
    describe: Callable[[nn.Module], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Each contender's metrics on `data["test"]` with `data["ood"]` out, read once: the
    Monte-Carlo predictive for "bayesian…" keys, the posterior mean otherwise; then
    `describe(net)` (sizes; a temperature-scaled net is described by its network) and
    the fitted temperature."""
    test, ood = data["test"], data["ood"]
    mean = bp.scorer(test, mode="mean", ood=ood, seed=seed)
    mc = bp.scorer(test, mode="mc", samples=samples, ood=ood, seed=seed)
    scores = {}
    for key, model in models.items():
        scorer = mc if key.startswith("bayesian") else mean
        row = {k: v for k, v in scorer(model).items() if not k.startswith("mean_")}
        net = getattr(model, "model", model)  # a temperature-scaled net's network
        row.update(describe(net))
        if net is not model:
            row["temperature"] = float(model.temperature)
        scores[key] = row
        print(f"  {key}: {short_metrics(row)}", flush=True)
    return scores


# --- latency ---------------------------------------------------------------------------------


def onnx_latency(
    paths: dict[str, Path],
    batch: int,
    repeats: int,
    warmup: int = 5,
    shape: Sequence[int] = SHAPE,
) -> dict[str, float]:
    """Median seconds per run of each ONNX file at `batch`, one intra-op thread; the
    sessions' runs interleaved so that load changes hit every file alike."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = {
        k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        for k, p in paths.items()
    }
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).numpy()
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for i in range(warmup + repeats):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"input": x})
            if i >= warmup:
                times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def onnx_checks(
    models: dict[str, nn.Module], keys: Sequence[str], batch: Tensor, repeats: int
) -> dict[str, Any]:
    """Export each of `keys` (a Bayesian net as its posterior mean), the exported file's
    largest difference from the model on `batch`, and their latency (median ms) at
    batch 1 (`repeats` runs) and 256 (`repeats` / 20), sessions interleaved."""
    out: dict[str, Any] = {"difference": {}, "latency_ms": {}}
    shape = tuple(batch.shape[1:])  # one input, as the models take it
    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for i, key in enumerate(keys):
            paths[key] = compress.export_onnx(models[key], Path(folder) / f"{i}.onnx", shape)
            out["difference"][key] = compress.onnx_difference(paths[key], models[key], batch)
        for size, runs in ((1, repeats), (256, max(5, repeats // 20))):
            times = onnx_latency(paths, size, runs, shape=shape)
            out["latency_ms"][f"batch {size}"] = {k: 1e3 * v for k, v in times.items()}
    return out
