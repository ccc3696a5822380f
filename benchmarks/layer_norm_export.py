"""What a ZeroCountingLayerNorm costs once deployed: onnxruntime, against the LayerNorm it
replaces and against the plain LayerNorm of a network built narrow.

`shrink_graph` turns a LayerNorm over channels some of which were removed into a
`compress.ZeroCountingLayerNorm`, whose statistics still count the removed zeros (exact).
It computes torch's LayerNorm over the kept channels padded with the zeros, so it exports
as a Pad, one fused LayerNormalization and a Slice. Timed here, on a channels-last map
(`--shape`, the kept channels last), exported with `compress.export_onnx`'s opset, one
intra-op thread, the sessions' runs interleaved, median over `--repeats`:

- "layernorm (kept)": nn.LayerNorm over the kept channels (what Torch-Pruning leaves:
  fast, but not the network that was trained);
- "layernorm (total)": nn.LayerNorm over all of them, before removal;
- "zero-counting": the module `shrink_graph` builds;
- "statistics written out": the same numbers as mean, variance and scale in elementary
  ops (the first form of the module, replaced by the padded one).

    python benchmarks/layer_norm_export.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import add_results_dir_option, md_table, use_results_dir, write_results
from torch import Tensor, nn

from bayesprune.compress import ZeroCountingLayerNorm, export_onnx

NAME = "layer_norm_export"


class WrittenOut(nn.Module):
    """The zero-counting statistics in elementary ops: μ = Σx / C,
    σ² = (Σ(x − μ)² + k μ²) / C."""

    def __init__(self, norm: ZeroCountingLayerNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm
        mean = x.sum(-1, keepdim=True) / n.total
        centred = x - mean
        zeros = n.total - n.kept
        var = ((centred * centred).sum(-1, keepdim=True) + zeros * mean * mean) / n.total
        return centred * torch.rsqrt(var + n.eps) * n.weight + n.bias


def modules(kept: int, total: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    full = nn.LayerNorm(total)
    with torch.no_grad():
        full.weight.uniform_(0.5, 1.5)
        full.bias.normal_()
    counted = ZeroCountingLayerNorm.of(full, torch.arange(kept), -1)
    return {
        "layernorm (kept)": nn.LayerNorm(kept),
        "layernorm (total)": full,
        "zero-counting": counted,
        "statistics written out": WrittenOut(counted),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort

    shape = (*args.shape, args.kept)
    nets = modules(args.kept, args.total)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
    counted = nets["zero-counting"](x)
    padded = torch.nn.functional.pad(x, (0, args.total - args.kept))
    exact = float((counted - nets["layernorm (total)"](padded)[..., : args.kept]).abs().max())
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    times: dict[str, list[float]] = {k: [] for k in nets}
    with tempfile.TemporaryDirectory() as folder:
        sessions = {}
        for i, (key, net) in enumerate(nets.items()):
            width = args.total if key == "layernorm (total)" else args.kept
            path = export_onnx(net.eval(), Path(folder) / f"{i}.onnx", (*args.shape, width))
            sessions[key] = ort.InferenceSession(str(path), options)
        inputs = {
            k: torch.randn(args.batch, *args.shape, args.total if k == "layernorm (total)"
                           else args.kept).numpy()
            for k in sessions
        }  # fmt: skip
        for i in range(args.warmup + args.repeats):
            for key, session in sessions.items():
                start = time.perf_counter()
                session.run(None, {session.get_inputs()[0].name: inputs[key]})
                if i >= args.warmup:
                    times[key].append(time.perf_counter() - start)
    median = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return {"median_ms": median, "zero_counting_vs_padded_torch": exact}


def render(result: dict[str, Any], settings: dict[str, Any]) -> str:
    base = result["median_ms"]["layernorm (kept)"]
    rows = [
        {"module": k, "median ms": v, "vs layernorm (kept)": v / base}
        for k, v in result["median_ms"].items()
    ]
    return (
        f"Settings: {settings}\n\n{md_table(rows)}\n"
        f"zero-counting − LayerNorm over the zero-padded input: "
        f"{result['zero_counting_vs_padded_torch']:.1e}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kept", type=int, default=24)
    parser.add_argument("--total", type=int, default=32)
    parser.add_argument("--shape", type=int, nargs="+", default=[14, 14], help="before channels")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--name", default=NAME)
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(1)
    settings = {k: v for k, v in vars(args).items() if k != "name"}
    result = measure(args)
    text = render(result, settings)
    write_results(args.name, {"settings": settings, **result}, text)
    print(text)


if __name__ == "__main__":
    main()
