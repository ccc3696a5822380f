"""Which timm models go through the whole graph path: convert → score → shrink.

timm (pytorch-image-models) builds its networks from its own layers: BatchNormAct2d (a
BatchNorm whose forward calls `F.batch_norm`, then an activation), its own Linear,
squeeze-excitation, DropPath, split and ghost convolutions. This runs a list of its
architectures (`--models`, default `DEFAULT`: one small model per family, random
weights, `num_classes=10`, eval mode) as `torchvision_coverage.py` runs torchvision's,
with every BatchNorm given random statistics and affine parameters (seeded), so that
the features are not vanishingly small at initialisation (torchvision's EfficientNet
gives 1e-12 there, and any comparison of outputs passes) and dead channels carry
constants that must be folded:

1. `bp.convert(model, family, example_inputs=(x,))` (the example lets it see weight reads
   in forwards that branch on shapes);
2. `compress.activation_scores` on one 64 × 64 image (the default size of the models
   that need one: transformers with a fixed patch grid, Inception, and any model that
   does not run at 64 × 64: window attention, attention biases of a fixed grid);
   the layers with a finite score (not pinned) are counted;
3. `keep_units(sparsity=0.25)` on those, `shrink_graph(check=True)`: the shrunk
   network's largest difference from the masked one (posterior means) and its
   parameters against the converted model's.

A model that fails is listed with the error's first line. `--pinned` adds, per model,
the three operations that pin the most channels holding units (what keeps layers from
being scored; the results committed up to session 27 also counted channels that hold no
unit, as a parameter's own node's).

    python benchmarks/timm_coverage.py
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import inspect
import re
import time
from collections.abc import Iterator
from typing import Any

import torch
from _common import (
    add_results_dir_option,
    md_table,
    recorded_settings,
    use_results_dir,
    write_results,
)
from graph_groups import randomise_norms, torchvision_models
from torchvision_coverage import failure, measure, table_row

import bayesprune as bp
from bayesprune.compress.graph_parts import find_parts
from bayesprune.compress.graph_trace import analyse
from bayesprune.compress.heads import attention_modules, head_layout, prove_heads

NAME = "timm_coverage"
DEFAULT = [
    "resnet18", "resnet50d", "seresnext26d_32x4d", "resnest14d", "res2net50_14w_8s",
    "efficientnet_b0", "tf_efficientnet_b0", "efficientnet_lite0", "tinynet_a",
    "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv4_conv_small", "mnasnet_100",
    "fbnetc_100", "lcnet_050", "hardcorenas_a", "ghostnet_100", "repghostnet_050",
    "mixnet_s", "rexnet_100", "regnetx_002", "regnety_002", "regnetz_b16", "repvgg_a0",
    "gernet_s", "cspresnet50", "cspdarknet53", "darknet53", "dla34", "dpn68",
    "densenet121", "hrnet_w18_small", "selecsls42b", "ese_vovnet19b_dw", "resnetv2_50",
    "nf_resnet26", "xception41", "inception_v3", "convnext_atto", "convnextv2_atto",
    "edgenext_xx_small", "poolformer_s12", "fastvit_t8", "efficientvit_b0",
    "mobilevit_xxs", "vit_tiny_patch16_224", "deit_tiny_patch16_224", "levit_128s",
    "swin_tiny_patch4_window7_224",
]  # fmt: skip
LARGE_INPUT = ("vit_", "deit_", "swin_", "levit_", "mobilevit_", "inception_")


def _timm() -> Any:
    torchvision_models()  # torchvision's import without its compiled ops (timm imports it)
    import timm

    return timm


def _size(name: str, net: torch.nn.Module) -> int:
    """64, or what the model needs: a transformer whose position embedding or patch
    embedding fixes the input size gets its default configuration's."""
    if name.startswith("mobilevit_"):
        return 256
    fixed = any(getattr(m, "strict_img_size", False) for m in net.modules())
    if fixed or isinstance(getattr(net, "pos_embed", None), torch.nn.Parameter):
        return int(net.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    return 224 if name.startswith(LARGE_INPUT) else 64


def example_image(name: str, net: torch.nn.Module) -> torch.Tensor:
    """One seeded image of the size the model takes (`_size`, else its default
    configuration's: a fixed grid of window attention or attention biases)."""
    size = _size(name, net)
    if not _runs(net, size):
        size = int(net.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _pins(model: torch.nn.Module, x: torch.Tensor | dict[str, torch.Tensor]) -> str:
    """The three operations that pin the most units, with their counts (pinned channels
    that hold no layer's unit, as a parameter's own node or the input's, are left out,
    and so are the rows of attention projections whose heads are units of their own).
    `x`: one input, or the forward's inputs by name."""
    with _by_position(model, x) as inputs:
        return _pinned_by(model, inputs)


@contextlib.contextmanager
def _by_position(model: torch.nn.Module, x: Any) -> Iterator[tuple[Any, ...]]:
    """The example as positional inputs (a library before keyword examples: a tensor)."""
    try:
        from bayesprune.example_inputs import by_position
    except ImportError:
        yield (x,)
        return
    with by_position(model, x) as (inputs, _):
        yield inputs


def _pinned_by(model: torch.nn.Module, inputs: tuple[Any, ...]) -> str:
    why: collections.Counter = collections.Counter()
    prove_heads(model, inputs)
    heads = {
        f"{name}.{p}" for name, module in attention_modules(model).items()
        for p in head_layout(module).projections
    }  # fmt: skip
    for part in find_parts(model, inputs).parts:  # the whole model, or its traceable parts
        bound = getattr(part, "bound", contextlib.nullcontext)  # absent before keyword parts
        with bound():
            cg = analyse(part.module, part.inputs)
        prefix = f"{part.name}." if part.name else ""
        units = {cg.find(i) for i, (layer, _) in cg.owner.items() if prefix + layer not in heads}
        why.update(
            re.sub(r" \(node [^)]*\)", "", v)
            for i, v in cg.pinned_at.items()
            if cg.find(i) in units
        )
    return "; ".join(f"{k} ({n})" for k, n in why.most_common(3))


def _runs(model: torch.nn.Module, size: int) -> bool:
    """Whether the model runs on one image of `size` (some need their default size)."""
    try:
        with torch.no_grad(), bp.nn.use_posterior_mean(model):
            model(torch.zeros(1, 3, size, size))
    except Exception:  # the model's own size checks: any error means "not this size"
        return False
    return True


def _convert_takes_inputs() -> bool:
    """Whether this library's `convert` takes `example_inputs` (session 28 on)."""
    return "example_inputs" in inspect.signature(bp.convert).parameters


def probe(timm: Any, name: str, family: str, pinned: bool) -> dict[str, Any]:
    start = time.perf_counter()
    row: dict[str, Any] = {"model": name}
    try:
        torch.manual_seed(0)
        net = timm.create_model(name, pretrained=False, num_classes=10).eval()
        randomise_norms(net)
        row["parameters"] = sum(p.numel() for p in net.parameters())
        x = example_image(name, net)
        row["input_size"] = x.shape[-1]
        given = {"example_inputs": (x,)} if _convert_takes_inputs() else {}  # older: none
        model = bp.convert(net, family, **given).eval()
        if pinned:
            row["pinned_by"] = _pins(model, x)
        row.update(measure(model, (x,)))
    except Exception as err:  # a user's view: the first line of what they would see
        row.update(failure(err))
    row["seconds"] = round(time.perf_counter() - start, 1)
    print(row, flush=True)
    return row


def render(
    rows: list[dict[str, Any]], settings: dict[str, Any], columns: dict[str, str] | None = None
) -> str:
    """The markdown report; `columns` adds {heading: row key} after the figures."""
    ok = [r for r in rows if r["status"] == "ok"]
    worst = max((r["shrunk_minus_masked"] for r in ok), default=0.0)
    scored = sum(r["scored_layers"] for r in ok)
    prunable = sum(r["prunable_layers"] for r in ok)
    table = [
        {
            **table_row(r),
            **{heading: r.get(key, "") for heading, key in (columns or {}).items()},
            **({"pinned by": r.get("pinned_by", "")} if settings.get("pinned") else {}),
            "error": r.get("error", ""),
        }
        for r in rows
    ]
    return "\n".join(
        [
            f"{len(ok)} of {len(rows)} models convert, score and shrink with check=True "
            f"(largest shrunk − masked difference {worst:.1e}); {scored} of their {prunable} "
            "prunable layers scored (not pinned).",
            "",
            md_table(table),
            "",
            f"Settings: {settings}",
        ]
    )


def coverage_args(
    doc: str, name: str, models: list[str] | None, models_help: str | None = None
) -> argparse.Namespace:
    """The options of a coverage script (this one, `hf_coverage.py`), parsed: the results
    go to `--results-dir` and torch uses `--threads`."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--family", default="gaussian")
    parser.add_argument("--models", nargs="*", default=models, help=models_help)
    parser.add_argument("--pinned", action="store_true", help="list what pins the channels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=name)
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    return args


def main() -> None:
    args = coverage_args(__doc__, NAME, DEFAULT)
    timm = _timm()
    settings = recorded_settings(args)
    settings["timm"] = timm.__version__
    rows: list[dict[str, Any]] = []
    for name in args.models:
        rows.append(probe(timm, name, args.family, args.pinned))
        write_results(args.name, {"settings": settings, "rows": rows}, render(rows, settings))


if __name__ == "__main__":
    main()
