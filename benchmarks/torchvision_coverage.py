"""Which torchvision models go through the whole graph path: convert → score → shrink.

For every model of `torchvision.models.list_models()` (random weights, no download: the
builders get `weights=None` and, where they take one, `weights_backbone=None`), one
example input of the size the model needs, and a Bayesian family:

1. `bp.convert(model, family)` (Swin's `qkv` and `proj`, whose weights its attention's
   forward reads itself, are kept deterministic by `convert`, which finds them; with
   `--split-attention`, torch's `nn.MultiheadAttention` split into heads first);
2. `compress.activation_scores` on the example; the layers with a finite score (not
   pinned) are counted;
3. `keep_units(sparsity=0.25)` on those, `shrink_graph(check=True)`: the shrunk
   network's largest difference from the masked one (posterior means) and its
   parameters against the converted model's.

A model that fails is listed with the error's first line: what a user would meet.
torchvision's detectors loop over their images and filter boxes in `forward`, which
torch.fx cannot trace: they go through in parts (`compress.graph_parts`: the backbone,
the heads' convolution stacks…, listed per row), and `model.backbone` alone is tried too
(the route before parts: the ResNet or MobileNet body and its feature pyramid). Where
torchvision's compiled ops do not load (its CUDA wheel beside CPU torch), `nms` gets a
plain-PyTorch body for the run (`stand_in_nms`, recorded in the settings); roi_align
has torchvision's own fallback. Models above `--max-params` (plain parameters) are
skipped and listed.

    python benchmarks/torchvision_coverage.py
"""

from __future__ import annotations

import argparse
import inspect
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_results_dir_option,
    md_table,
    recorded_settings,
    use_results_dir,
    write_results,
)
from torch import nn

import bayesprune as bp
from bayesprune import compress

NAME = "torchvision_coverage"
REPO = str(Path(__file__).resolve().parents[1]) + "/"


def _models() -> Any:
    from graph_groups import torchvision_models

    return torchvision_models()


def _greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Non-maximum suppression in plain PyTorch: the boxes kept, by decreasing score."""
    from torchvision.ops.boxes import box_iou

    order = scores.argsort(descending=True)
    iou = box_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def stand_in_nms() -> bool:
    """Where torchvision's compiled ops do not load (the CUDA wheel beside CPU torch),
    give `torchvision.ops.boxes.nms` (which `batched_nms` calls) a plain-PyTorch body, so
    the detectors run; roi_align has torchvision's own fallback. True if it was needed."""
    from torchvision import extension
    from torchvision.ops import boxes

    if extension._has_ops():
        return False
    boxes.nms = _greedy_nms
    return True


def example_shape(models: Any, name: str) -> tuple[int, ...]:
    """One input the model takes: video clips, 224-pixel images for the transformers and
    the Inception / S3D stems, 64 pixels for the rest."""
    video = set(models.list_models(module=models.video))
    if name.startswith(("mvit", "s3d", "swin3d")):
        return (1, 3, 16, 224, 224)
    if name in video:
        return (1, 3, 4, 64, 64)
    if name.startswith("swin_v2"):
        return (1, 3, 256, 256)
    if name.startswith(("vit", "swin", "maxvit")):
        return (1, 3, 224, 224)
    if "inception" in name:
        return (1, 3, 299, 299)
    if name.startswith("raft"):
        return (1, 3, 128, 128)
    if name.startswith("ssd"):  # SSD's extra layers shrink the map to 1 × 1 at its size
        return (1, 3, 300, 300) if name.startswith("ssd300") else (1, 3, 320, 320)
    return (1, 3, 64, 64)


def build(models: Any, name: str) -> nn.Module:
    builder = models.get_model_builder(name)
    options: dict[str, Any] = {"weights": None}
    taken = inspect.signature(builder).parameters
    if "weights_backbone" in taken:
        options["weights_backbone"] = None
    if name.startswith(("inception", "googlenet")):
        options.update(aux_logits=False, init_weights=False)
    return builder(**options).eval()


def _inputs(shape: tuple[int, ...], name: str) -> tuple[torch.Tensor, ...]:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return (x, x.clone()) if name.startswith("raft") else (x,)  # optical flow: two frames


def probe(
    models: Any,
    name: str,
    family: str,
    part: str = "",
    random_norms: bool = False,
    frozen_norms: bool = False,
    split_attention: bool = False,
) -> dict[str, Any]:
    start = time.perf_counter()
    row: dict[str, Any] = {"model": f"{name}.{part}" if part else name}
    try:
        net = build(models, name)
        net = net.get_submodule(part) if part else net
        if random_norms:
            from graph_groups import randomise_norms

            randomise_norms(net)
        if frozen_norms:  # after: it copies the statistics
            net = freeze_norms(net)
        row["parameters"] = sum(p.numel() for p in net.parameters())
        model = bp.convert(net, family, split_attention=split_attention)
        row.update(measure(model, _inputs(example_shape(models, name), name)))
    except Exception as err:  # a user's view: the first line of what they would see
        row.update(failure(err))
    row["seconds"] = round(time.perf_counter() - start, 1)
    print(row, flush=True)
    return row


def measure(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """Steps 2-3 of the module docstring on a converted model: the row's figures."""
    prunable = [n for n, m in model.named_modules() if compress.is_prunable(m)]
    scores = compress.activation_scores(model.eval(), inputs, inputs=len(inputs))
    finite = {n: s for n, s in scores.items() if torch.isfinite(s).any()}
    keep = compress.keep_units(finite, sparsity=0.25)
    result = compress.shrink_graph(model, inputs, prune_units=keep)
    after = sum(p.numel() for p in result.model.parameters())
    return {
        "status": "ok",
        "prunable_layers": len(prunable),
        "scored_layers": len(finite),
        "parameters_kept": after / sum(p.numel() for p in model.parameters()),
        "shrunk_minus_masked": result.max_abs_difference,
        "parts": getattr(result, "parts", []),  # [] from a library before parts
    }


def failure(err: Exception) -> dict[str, Any]:
    """A failed row: the error's first line (no machine paths) and where it was raised."""
    where = traceback.extract_tb(err.__traceback__)[-1]
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    first = first.replace(REPO, "")
    return {
        "status": "fails",
        "error": f"{type(err).__name__}: {first[:160]}",
        "raised_at": f"{where.filename.rsplit('/', 1)[-1]}:{where.lineno}",
    }


def freeze_norms(net: nn.Module) -> nn.Module:
    """Every BatchNorm2d replaced by torchvision's FrozenBatchNorm2d with its statistics
    and affine parameters, as a builder does for pretrained weights (which need a
    download): what a user's pretrained detector is normalised with."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, module in list(net.named_modules()):
        if type(module) is nn.BatchNorm2d:
            frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(module, key).detach())
            parent, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, attr, frozen)
    return net


def _status(row: dict[str, Any]) -> str:
    parts = len(row.get("parts") or [])
    return f"ok, in {parts} part{'s' * (parts > 1)}" if parts else row["status"]


def table_row(r: dict[str, Any]) -> dict[str, str]:
    """A row's figures as the markdown table shows them (blank where it failed)."""
    ok = r["status"] == "ok"
    return {
        "model": r["model"],
        "status": _status(r),
        "layers scored / prunable": f"{r['scored_layers']} / {r['prunable_layers']}" if ok else "",
        "parameters kept": f"{r['parameters_kept']:.2f}" if ok else "",
        "shrunk − masked": f"{r['shrunk_minus_masked']:.1e}" if ok else "",
    }


def render(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    worst = max((r["shrunk_minus_masked"] for r in ok), default=0.0)
    table = [{**table_row(r), "error": r.get("error", r.get("reason", ""))} for r in rows]
    return "\n".join(
        [
            f"{len(ok)} of {len(rows)} models convert, score and shrink with check=True "
            f"(largest shrunk − masked difference {worst:.1e}).",
            "",
            md_table(table),
            "",
            f"Settings: {settings}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="gaussian")
    parser.add_argument("--models", nargs="*", help="names (default: every torchvision model)")
    parser.add_argument("--max-params", type=float, default=2e8)
    parser.add_argument(
        "--frozen-norms",
        action="store_true",
        help="BatchNorm2d → FrozenBatchNorm2d, as in a detector built on pretrained weights",
    )
    parser.add_argument(
        "--random-norms",
        action="store_true",
        help="random BatchNorm statistics (initialised EfficientNets give 1e-12 features)",
    )
    parser.add_argument(
        "--split-attention",
        action="store_true",
        help="convert with split_attention=True (nn.MultiheadAttention in heads: ViT)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=NAME)
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    models = _models()
    settings = recorded_settings(args)
    settings["nms"] = "plain-PyTorch stand-in" if stand_in_nms() else "torchvision's"
    detection = set(models.list_models(module=models.detection))
    rows = []
    for name in args.models or models.list_models():
        size = next(iter(models.get_model_weights(name))).meta["num_params"]
        if size > args.max_params:
            rows.append({"model": name, "status": "skipped", "reason": f"{size:.2e} parameters"})
        else:
            norms = {
                "random_norms": args.random_norms,
                "frozen_norms": args.frozen_norms,
                "split_attention": args.split_attention,
            }
            rows.append(probe(models, name, args.family, **norms))
            if name in detection:  # the route the docs gave before models shrank in parts
                rows.append(probe(models, name, args.family, "backbone", **norms))
        write_results(args.name, {"settings": settings, "rows": rows}, render(rows, settings))


if __name__ == "__main__":
    main()
