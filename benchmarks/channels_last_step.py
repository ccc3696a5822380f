"""Does channels-last make a LeNet-5-Caffe *training* step cheaper on CPU?

Interleaved steps (thread CPU clock, one torch thread) of four trainers: bayesprune's
Gaussian N(0,1) shared-estimator LeNet-5-Caffe and its deterministic twin, each in
torch's default layout and with its convolutions' outputs made channels-last (a forward
hook; MNIST's one-channel input cannot carry the layout itself, so the first
convolution's output is converted and later convolutions follow their input). Batches
are consecutive slices of a seeded permutation of MNIST's training images; the loss is
cross-entropy + KL / 60000, Adam as `fit` builds it. Writes JSON + markdown under
benchmarks/results/.

    python benchmarks/channels_last_step.py --batch-sizes 128 1024 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesprune as bp
from bayesprune.data import load_mnist
from bayesprune.nn.gaussian import channels_last_on_cpu
from bayesprune.optim import make_optimizer

RESULTS = Path(__file__).parent / "results"


def _to_channels_last(module: nn.Module, inputs: tuple, out: Tensor) -> Tensor:
    return channels_last_on_cpu(out)


def build(family: str, channels_last: bool) -> nn.Module:
    net = bp.lenet5_caffe(family=family)
    if channels_last:
        for m in net.modules():
            if "Conv2d" in type(m).__name__:
                m.register_forward_hook(_to_channels_last)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--name", default="channels_last_step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, labels = load_mnist("train").tensors
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    variants = [
        ("gaussian N(0,1) shared", "gaussian", False),
        ("gaussian N(0,1) shared, channels-last", "gaussian", True),
        ("deterministic", "deterministic", False),
        ("deterministic, channels-last", "deterministic", True),
    ]
    rows = []
    for batch_size in args.batch_sizes:
        torch.manual_seed(0)
        nets = [build(family, cl) for _, family, cl in variants]
        opts = [
            make_optimizer("adam", [{"params": list(n.parameters()), "lr": 1e-3}], 1e-3, 0.0)
            for n in nets
        ]
        times: list[list[float]] = [[] for _ in nets]
        for i in range(args.warmup + args.repeats):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x, y = images[idx], labels[idx]
            for t, net, opt in zip(times, nets, opts, strict=True):
                start = time.thread_time()
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(x), y) + bp.kl(net) / 60_000
                loss.backward()
                opt.step()
                if i >= args.warmup:
                    t.append(time.thread_time() - start)
        for (name, _, _), t in zip(variants, times, strict=True):
            base = times[0] if name.startswith("gaussian") else times[2]
            ratio = statistics.median(a / b for a, b in zip(t, base, strict=True))
            rows.append(
                {
                    "batch_size": batch_size,
                    "variant": name,
                    "ms": 1e3 * statistics.median(t),
                    "ratio_to_default_layout": ratio,
                    "ratio_to_deterministic": statistics.median(
                        a / b for a, b in zip(t, times[2], strict=True)
                    ),
                }
            )
            print(rows[-1], flush=True)
    payload = {
        "command": "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:]),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
        "clock": "thread CPU time, torch.set_num_threads(1), steps interleaved",
        "args": vars(args),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(payload, indent=2))
    lines = [
        f"# {args.name}",
        "",
        f"`{payload['command']}` — torch {torch.__version__}, load {payload['load_average']}",
        "",
        "| batch | variant | ms / step (median) | × default layout | × deterministic |",
        "|---|---|---|---|---|",
        *(
            f"| {r['batch_size']} | {r['variant']} | {r['ms']:.1f} | "
            f"{r['ratio_to_default_layout']:.3f} | {r['ratio_to_deterministic']:.3f} |"
            for r in rows
        ),
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
