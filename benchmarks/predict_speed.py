"""CPU cost of Monte-Carlo prediction: one network per pass vs a weight draw per batch.

The same Gaussian LeNet-5-Caffe (or LeNet-300-100) with the shared estimator predicts
random 28×28 images four ways, interleaved in one process so that machine load hits
all alike, on the thread's CPU clock at one torch thread:

- `per pass, channels-last`: `predict(..., sampling="shared", channels_last=True)`, one
  weight draw per pass for every batch, convolution outputs channels-last on CPU (what
  `bayesprune evaluate` does: the builders flatten with `nn.Flatten`);
- `per pass`: the same in torch's default layout (`predict`'s default);
- `per batch, 256` / `per batch, 1024`: `sampling=None`, each layer's own shared
  estimator, which draws per batch and keeps torch's default layout (the code before
  `one_draw_per_pass`), at the current and at the former default batch size.

    python benchmarks/predict_speed.py                      # LeNet-5, 4,096 images, 10 passes
    python benchmarks/predict_speed.py --model lenet_300_100 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _common import add_results_dir_option, md_table, use_results_dir, write_results

import bayesprune as bp


def _cpu_seconds(fn: Any) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="lenet5_caffe", choices=["lenet5_caffe", "lenet_300_100"]
    )
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = bp.models.build(args.model, family="gaussian", estimator="shared")
    x = torch.rand(args.rows, 1, 28, 28)
    ways = {
        "per pass, channels-last": {"sampling": "shared", "channels_last": True},
        "per pass": {"sampling": "shared"},
        "per batch, 256 rows": {"sampling": None, "batch_size": 256},
        "per batch, 1024 rows": {"sampling": None, "batch_size": 1024},
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, kwargs in ways.items():
            seconds[name].append(
                _cpu_seconds(
                    lambda kw=kwargs: bp.predict(model, x, samples=args.samples, seed=0, **kw)
                )
            )
    medians = {name: statistics.median(values[1:]) for name, values in seconds.items()}
    base = medians["per batch, 256 rows"]
    rows = [
        {
            "way": name,
            "CPU s (median)": medians[name],
            "ratio to per batch, 256": medians[name] / base,
        }
        for name in ways
    ]
    settings = {k: v for k, v in vars(args).items() if k != "results_dir"}
    text = (
        f"{args.model}, Gaussian, shared estimator; {args.rows} random 28×28 images, "
        f"{args.samples} Monte-Carlo passes; thread CPU seconds at one torch thread, the "
        f"four ways interleaved, median of {args.repeats} rounds after one warm-up round.\n\n"
        + md_table(rows)
    )
    out = write_results(
        f"predict_speed_{args.model}",
        {"settings": settings, "seconds": seconds, "rows": rows},
        text,
    )
    print(out.read_text())


if __name__ == "__main__":
    main()
