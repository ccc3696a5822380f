"""Which layers `bp.convert` keeps deterministic because the model's own code reads them.

A layer whose weight the model reads outside the layer (`F.linear(x, self.qkv.weight)`,
`x.to(self.proj.weight.dtype)`) or shares with another module (a tied output layer) is
kept plain by `convert` (`bp.nn.layers_read_outside`). This lists, for every model of
three zoos, the layers so kept and why: timm (its coverage list plus the architectures
that read weights: BEiT, EVA, XCiT, ConViT), torchvision's classification models, and
the Hugging Face builders of `hf_coverage.py` (with `transformers` importable). Random
weights, each model's coverage example; nothing is trained or shrunk.

    python benchmarks/weight_reads.py
    python benchmarks/weight_reads.py --zoos timm --name weight_reads_timm
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from _common import (
    add_results_dir_option,
    md_table,
    recorded_settings,
    use_results_dir,
    write_results,
)
from graph_groups import torchvision_models
from timm_coverage import DEFAULT as TIMM_DEFAULT
from timm_coverage import example_image

from bayesprune.nn import layers_read_outside

NAME = "weight_reads"
TIMM_READERS = [
    "beit_base_patch16_224", "eva02_tiny_patch14_224", "xcit_nano_12_p16_224",
    "convit_tiny", "swinv2_tiny_window8_256", "vit_small_patch16_224",
]  # fmt: skip
Example = tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
Models = Iterator[tuple[str, Callable[[], torch.nn.Module], Callable[[Any], Example]]]


def _timm_models() -> Models:
    torchvision_models()
    import timm

    for name in TIMM_DEFAULT + TIMM_READERS:
        yield (
            f"timm/{name}",
            lambda n=name: timm.create_model(n, pretrained=False, num_classes=10).eval(),
            lambda net, n=name: (example_image(n, net),),
        )


def _torchvision_models() -> Models:
    from torchvision_coverage import _inputs, build, example_shape

    models = torchvision_models()
    for name in models.list_models(module=models):  # classification
        yield (
            f"torchvision/{name}",
            lambda n=name: build(models, n),
            lambda net, n=name: _inputs(example_shape(models, n), n),
        )


def _hf_models() -> Models:
    torchvision_models()
    import transformers
    from hf_coverage import _builders, _example

    for name, (builder, kind) in _builders(transformers).items():
        yield f"hf/{name}", builder, lambda net, k=kind: _example(k)


ZOOS = {"timm": _timm_models, "torchvision": _torchvision_models, "hf": _hf_models}


def probe(
    name: str, build: Callable[[], torch.nn.Module], example: Callable[[Any], Example]
) -> dict[str, Any]:
    start = time.perf_counter()
    row: dict[str, Any] = {"model": name}
    try:
        torch.manual_seed(0)
        net = build().eval()
        reads = layers_read_outside(net, example(net))
        shared = {q: why for q, why in reads.items() if "shared with" in why}
        row.update(
            status="ok",
            read=len(reads) - len(shared),
            tied=len(shared),
            why="; ".join(f"{q}: {why}" for q, why in list(reads.items())[:2]),
        )
    except Exception as err:  # a model this zoo's example does not fit
        row.update(status="failed", error=f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")
    row["seconds"] = round(time.perf_counter() - start, 1)
    print(row, flush=True)
    return row


def render(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    kept = [r for r in ok if r["read"] or r["tied"]]
    read, tied = sum(r["read"] for r in ok), sum(r["tied"] for r in ok)
    shown = [
        {"model": r["model"], "read": r["read"], "tied": r["tied"], "first reasons": r["why"]}
        for r in kept
    ]
    failed = [{"model": r["model"], "error": r["error"]} for r in rows if r["status"] != "ok"]
    lines = [
        "# Layers `convert` keeps deterministic because the model reads or ties them",
        "",
        f"Settings: `{settings}`",
        "",
        f"{len(ok)} of {len(rows)} models traced; {len(kept)} keep a layer plain: "
        f"{read} modules read outside their layer, {tied} holding a tied weight.",
        "",
        md_table(shown),
        "",
    ]
    if failed:
        lines += ["Failed:", "", md_table(failed)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoos", nargs="*", default=list(ZOOS), choices=list(ZOOS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=NAME)
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    settings = recorded_settings(args)
    rows: list[dict[str, Any]] = []
    for zoo in args.zoos:
        for name, build, example in ZOOS[zoo]():
            rows.append(probe(name, build, example))
            write_results(args.name, {"settings": settings, "rows": rows}, render(rows, settings))


if __name__ == "__main__":
    main()
