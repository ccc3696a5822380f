"""Coupled channel groups: bayesprune's torch.fx analysis against Torch-Pruning's DependencyGraph.

For torchvision models (random weights, one image), both tools build the groups of
channels that must be pruned together. Recorded per model: the median time to build
them (ours: `graph_trace.analyse`, i.e. trace + one recorded forward + channel ids;
Torch-Pruning: `DependencyGraph.build_dependency` + `get_all_groups`), and whether the
groups agree. A group is compared as the set of layers whose output channels it
couples (depthwise convolutions, which both tools make follow their producer, left
out) with its number of channels; the model's output layer is excluded from both.
The same is done on the Gaussian conversion of each model: Torch-Pruning without
custom pruners for bayesprune's layers.

    python benchmarks/graph_groups.py --models resnet18 mobilenet_v3_small densenet121
"""

from __future__ import annotations

import argparse
import importlib
from collections import Counter
from typing import Any

import torch
import torch.library
import torch_pruning as tp
from _common import add_results_dir_option, md_table, median_time, use_results_dir, write_results
from torch import nn

import bayesprune as bp
from bayesprune.compress.graph_trace import analyse
from bayesprune.nn.base import VariationalLayer


def torchvision_models() -> Any:
    """torchvision.models, skipping fake-kernel registrations of its missing C++ ops
    (the CUDA wheel beside CPU torch; see tests/_torchvision.py)."""
    original = torch.library.register_fake

    def register_if_op_exists(op: Any, *args: Any, **kwargs: Any) -> Any:
        name = op if isinstance(op, str) else str(op)
        if name.startswith("torchvision::") and not hasattr(
            torch.ops.torchvision, name.split("::", 1)[1]
        ):
            return lambda fn: fn
        return original(op, *args, **kwargs)

    torch.library.register_fake = register_if_op_exists
    try:
        return importlib.import_module("torchvision.models")
    finally:
        torch.library.register_fake = original


def randomise_norms(net: torch.nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters of every BatchNorm drawn at random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) * 0.6 - 0.1)


def _depthwise(m: nn.Module) -> bool:
    groups = getattr(m, "groups", 1)
    return groups > 1 and groups == m.in_channels == m.out_channels


def _last_layer(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | VariationalLayer)]
    return names[-1]


def ours(model: nn.Module, x: torch.Tensor) -> Counter:
    """(coupled producer layers) → channels, from our channel graph."""
    cg = analyse(model, (x,))
    pinned, last = cg.pinned_groups(), _last_layer(model)
    found: Counter = Counter()
    for group, owners in cg.members().items():
        layers = frozenset(name for name, _ in owners)
        if group not in pinned and last not in layers:
            found[layers] += 1
    return found


def torch_pruning(model: nn.Module, x: torch.Tensor) -> Counter:
    """(coupled producer layers) → channels, from Torch-Pruning's groups."""
    names = {m: n for n, m in model.named_modules()}
    last = model.get_submodule(_last_layer(model))
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
    found: Counter = Counter()
    for group in dg.get_all_groups(ignored_layers=[last]):
        layers, channels = set(), 0
        for dep, idxs in group:
            module = dep.target.module
            producer = isinstance(module, nn.Conv2d | nn.Linear | VariationalLayer)
            out = producer and dep.handler.__name__ == "prune_out_channels"
            if out and not _depthwise(module):
                layers.add(names[module])
                channels = len(idxs)
        if layers:
            found[frozenset(layers)] += channels
    return found


def compare(name: str, model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    model.eval()
    mine = ours(model, x)
    row: dict[str, Any] = {"model": name}
    row["fx_groups"] = len(mine)
    row["fx_channels"] = sum(mine.values())
    row["fx_ms"] = 1000 * median_time(lambda: analyse(model, (x,)), repeats, warmup=1)
    try:
        theirs = torch_pruning(model, x)

        def build() -> None:
            tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)

        row["tp_groups"], row["tp_channels"] = len(theirs), sum(theirs.values())
        row["tp_ms"] = 1000 * median_time(build, repeats, warmup=1)
        row["same_groups"] = mine == theirs
        row["only_fx"] = len(set(mine) - set(theirs))
        row["only_tp"] = len(set(theirs) - set(mine))
    except Exception as err:  # recorded: what Torch-Pruning does with our layers
        row.update(tp_groups=None, tp_channels=None, tp_ms=None, same_groups=False)
        row["tp_error"] = f"{type(err).__name__}: {str(err)[:120]}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18"])
    parser.add_argument("--size", type=int, default=64, help="input height = width")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    models = torchvision_models()
    rows, differences = [], {}
    for name in args.models:
        torch.manual_seed(0)
        plain = getattr(models, name)(num_classes=10)
        x = torch.randn(1, 3, args.size, args.size)
        for variant, model in (("plain", plain), ("gaussian", bp.convert(plain, "gaussian"))):
            measured = compare(name, model, x, args.repeats)
            row = {"model": name, "layers": variant}
            row.update({k: v for k, v in measured.items() if k != "model"})
            rows.append(row)
            print(row, flush=True)
            if variant == "plain" and not row["same_groups"] and row.get("tp_groups") is not None:
                mine, theirs = ours(model, x), torch_pruning(model, x)
                differences[name] = {
                    "only_fx": [sorted(k) for k in set(mine) - set(theirs)][:5],
                    "only_tp": [sorted(k) for k in set(theirs) - set(mine)][:5],
                    "channel_counts_differ": [
                        [sorted(k), mine[k], theirs[k]]
                        for k in set(mine) & set(theirs)
                        if mine[k] != theirs[k]
                    ][:5],
                }
    payload = {"settings": vars(args), "torch_pruning": tp.__version__, "rows": rows}
    payload["differences"] = differences
    text = (
        "Coupled channel groups (sets of layers whose output channels go together, and "
        "their channel counts), built by our torch.fx analysis (`fx_*`) and Torch-Pruning's "
        "DependencyGraph (`tp_*`); median milliseconds to build them. `layers = gaussian`: "
        "the model after `bp.convert(model, 'gaussian')`, Torch-Pruning without custom "
        "pruners.\n\n" + md_table(rows)
    )
    if differences:
        text += "\nDifferences on the plain models:\n\n```\n" + str(differences) + "\n```\n"
    write_results("graph_groups", payload, text)


if __name__ == "__main__":
    main()
