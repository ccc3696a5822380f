"""How much smaller `shrink_graph` makes a network whose dead channels meet padded borders.

A channel that dies on its own (a closed gate, a weight mask that empties its
convolution) still emits BatchNorm's constant β − γμ/σ, which a zero-padded 3×3
convolution cannot take as a bias. Before `compress.graph_merge` every such channel
stayed; now one per set of readers stays and carries the others' constants. For each
torchvision model (random weights, BatchNorm statistics drawn as after training:
γ ∈ [0.5, 1.5], β ∈ [−0.2, 0.8], running mean ∈ [−0.3, 0.3], variance ∈ [0.5, 2]),
converted to a Gaussian network, `--dead` of the output channels of every convolution
but the first and the last are masked (the same seeded draw in every run), then
`shrink_graph` (check=True: the shrunk network equals the masked one on the example).

    python benchmarks/dead_channel_merge.py
    PYTHONPATH=<worktree of 51c598f>/src python benchmarks/dead_channel_merge.py \
        --name dead_channel_merge_before      # the code before the merge, for comparison

Recorded per model: parameters of the converted network and of the shrunk one, dead
units kept, units merged (0 with code that does not merge), seconds, and the largest
difference shrunk − masked.

`--trained` measures a trained network instead of drawn BatchNorm statistics: the
library's ResNet-20 (`bayesprune.resnet`, Gaussian, widths 16-32-64) trained
`--epochs` on `--train-limit` Fashion-MNIST images (`bayesprune fetch fashion-mnist`),
then the `--dead` lowest-scoring channels of every convolution by
`compress.activation_scores` masked (live channels: their BatchNorm statistics are a
trained channel's) and `shrink_graph` as above.

    python benchmarks/dead_channel_merge.py --trained --name dead_channel_merge_trained
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _common import add_results_dir_option, md_table, use_results_dir, write_results
from torch import nn

import bayesprune as bp
from bayesprune import compress

MODELS = ("resnet18", "vgg11_bn", "mobilenet_v3_small", "densenet121")


def _models() -> Any:
    from graph_groups import torchvision_models

    return torchvision_models()


def _trained_looking_norms(net: nn.Module, generator: torch.Generator) -> None:
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                for t, (lo, hi) in (
                    (module.weight, (0.5, 1.5)),
                    (module.bias, (-0.2, 0.8)),
                    (module.running_mean, (-0.3, 0.3)),
                    (module.running_var, (0.5, 2.0)),
                ):
                    t.copy_(torch.rand(t.shape, generator=generator) * (hi - lo) + lo)


def shrink_row(name: str, model: nn.Module, example: torch.Tensor, masked: int) -> dict[str, Any]:
    """`shrink_graph(model, example)` timed, and what it kept of `model`."""
    start = time.perf_counter()
    result = compress.shrink_graph(model, example)
    seconds = time.perf_counter() - start
    row = {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameters_after": sum(p.numel() for p in result.model.parameters()),
        "masked_units": masked,
        "dead_units_kept": sum(r.kept_dead_units for r in result.layers),
        "units_merged": sum(getattr(r, "merged_units", 0) for r in result.layers),
        "seconds": round(seconds, 1),
        "shrunk_minus_masked": result.max_abs_difference,
    }
    row["kept_fraction"] = round(row["parameters_after"] / row["parameters"], 3)
    return row


def probe(models: Any, name: str, dead: float, seed: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = models.get_model(name, weights=None, num_classes=10).eval()
    _trained_looking_norms(net, generator)
    model = bp.convert(net, "gaussian").eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, bp.nn.BayesConv2d)]
    keep = {}
    for layer in convs[1:-1]:
        units = model.get_submodule(layer).weight_mu.shape[0]
        mask = torch.ones(units)
        mask[torch.randperm(units, generator=generator)[: int(dead * units)]] = 0.0
        keep[layer] = mask
    compress.apply_masks(model, compress.unit_weight_masks(model, keep))
    x = torch.randn(2, 3, 64, 64, generator=generator)
    masked = int(sum(int((m == 0).sum()) for m in keep.values()))
    row = shrink_row(name, model, x, masked)
    print(row, flush=True)
    return row


def probe_trained(dead: float, seed: int, epochs: int, train_limit: int) -> dict[str, Any]:
    from bayesprune.data import load_fashion_mnist
    from bayesprune.resnet import resnet

    torch.manual_seed(seed)
    x, y = load_fashion_mnist("train", limit=train_limit, seed=seed).tensors
    model = resnet(1, 10)
    start = time.perf_counter()
    bp.fit(model, (x, y), epochs=epochs, batch_size=128, seed=seed, progress=False)
    trained_s = time.perf_counter() - start
    model.eval()
    scores = compress.activation_scores(model, (x[:1000], y[:1000]))
    convs = [n for n, m in model.named_modules() if isinstance(m, bp.nn.BayesConv2d)]
    keep = compress.keep_units({n: scores[n] for n in convs[1:] if n in scores}, sparsity=dead)
    compress.apply_masks(model, compress.unit_weight_masks(model, keep))
    name = f"resnet20 (trained {epochs} epochs on {len(y)} images)"
    masked = int(sum(int((~k).sum()) for k in keep.values()))
    row = {**shrink_row(name, model, x[:2], masked), "training_seconds": round(trained_s, 1)}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--dead", type=float, default=0.5, help="fraction masked per conv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trained", action="store_true", help="a trained ResNet-20 instead")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--name", default="dead_channel_merge")
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    if args.trained:
        rows = [probe_trained(args.dead, args.seed, args.epochs, args.train_limit)]
        settings = {"dead": args.dead, "seed": args.seed, "epochs": args.epochs,
                    "train_limit": args.train_limit, "trained": True}  # fmt: skip
    else:
        models = _models()
        rows = [probe(models, name, args.dead, args.seed) for name in args.models]
        settings = {"dead": args.dead, "seed": args.seed, "input": [2, 3, 64, 64]}
    markdown = (
        f"# {args.name}\n\nDead channels masked per convolution (all but the first; "
        f"{'by activation score' if args.trained else 'at random, and not the last'}): "
        f"{args.dead}; Gaussian networks; seed {args.seed}.\n\n{md_table(rows)}\n"
    )
    write_results(args.name, {"settings": settings, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
