"""What `find_parts` holds for a model fx cannot trace whole: copies of block inputs.

The search for traceable parts records, in one run of the example, how each candidate
block (a submodule holding prunable layers) is called. Keeping a copy of every
candidate's first arguments (what the search did until session 25) holds all of a
detector's intermediate maps at once; keeping those of the chosen parts only costs a
second run. This script measures both on torchvision detectors with random weights at
a full-size image: the bytes of the copies, and the seconds of one recording run with
every copy against `find_parts` now (one thread).

    python benchmarks/parts_memory.py --models retinanet_resnet50_fpn fasterrcnn_resnet50_fpn

Results: benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import add_results_dir_option, md_table, use_results_dir, write_results
from torch import Tensor

from bayesprune.compress.adapters import prunable_layers
from bayesprune.compress.graph_parts import find_parts, record_calls
from bayesprune.compress.graph_trace import Tracer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _torchvision import import_torchvision_models  # a test helper


def _bytes(value: Any) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple | list):
        return sum(_bytes(v) for v in value)
    return 0


def measure(name: str, size: int) -> dict[str, Any]:
    """Copies and seconds for one detector (random weights, one `size`² image)."""
    model = getattr(import_torchvision_models().detection, name)(
        weights=None, weights_backbone=None
    ).eval()
    inputs = ([torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))],)
    leaf = Tracer(()).is_leaf_module
    layers = [n for n, _ in prunable_layers(model)]
    candidates = [
        n
        for n, m in model.named_modules()
        if n and not leaf(m, n) and any(layer.startswith(n + ".") for layer in layers)
    ]
    began = time.perf_counter()
    every = record_calls(model, inputs, candidates, keep_args=True)[0]
    every_seconds = time.perf_counter() - began
    began = time.perf_counter()
    found = find_parts(model, inputs)
    now_seconds = time.perf_counter() - began
    return {
        "model": name,
        "candidates": len(candidates),
        "parts": len(found.parts),
        "MiB, a copy per candidate": round(sum(_bytes(c.args) for c in every.values()) / 2**20),
        "MiB, the parts' copies": round(sum(_bytes(p.inputs) for p in found.parts) / 2**20),
        "s, one run copying all": round(every_seconds, 1),
        "s, find_parts now": round(now_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["retinanet_resnet50_fpn"])
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--name", default="parts_memory")
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(1)
    import_torchvision_models()  # before torchvision_coverage imports torchvision
    from torchvision_coverage import stand_in_nms

    stand_in_nms()
    rows = [measure(m, args.size) for m in args.models]
    markdown = (
        f"torchvision detectors, random weights, one {args.size}×{args.size} image, one "
        "thread: the copies `find_parts` kept of block inputs before session 25 (every "
        "candidate) and now (the chosen parts), and the seconds of one recording run with "
        "every copy against `find_parts` now (two runs and the traces).\n\n" + md_table(rows)
    )
    print(write_results(args.name, {"settings": vars(args), "rows": rows}, markdown))


if __name__ == "__main__":
    main()
