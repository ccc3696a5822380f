"""Where a Bayesian training step's time goes: forward, KL, backward, optimiser.

LeNet-300-100 at one batch size; the deterministic twin (torch.optim.Adam), bayesprune
with the shared weight draw and each prior (N(0, 1); the scale mixture with the
Monte-Carlo KL, the accuracy configuration) with `fit`'s optimiser, and, with
`--before REV`, the same at a git revision (imported as a second package, as in
peers.py). Steps of all contenders interleaved; per phase the median of the thread's
CPU time at one torch thread (other processes do not enter it).

    python benchmarks/step_profile.py --before a362f81
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from _common import add_results_dir_option, md_table, use_results_dir, write_results
from peers import MIXTURE, _fit_optimizer, load_revision, use_allocator
from torch import Tensor, nn

import bayesprune as bp

PHASES = ("forward", "kl", "backward", "optimizer", "step")


def contenders(before: str | None) -> dict[str, tuple[nn.Module, Any]]:
    """name → (network, library or None for the deterministic twin)."""
    libs = [("", bp)] + ([(f"@{before}", load_revision(before))] if before else [])
    out: dict[str, tuple[nn.Module, Any]] = {
        "deterministic": (bp.lenet_300_100(family="deterministic"), None)
    }
    for tag, lib in libs:
        out[f"bayesprune{tag} N(0,1) shared"] = (lib.lenet_300_100(estimator="shared"), lib)
        prior = {**MIXTURE, "kl": "mc"}
        out[f"bayesprune{tag} mixture shared kl=mc"] = (
            lib.lenet_300_100(estimator="shared", prior=prior),
            lib,
        )
    return out


def profile(batch_size: int, repeats: int, warmup: int, before: str | None) -> list[dict]:
    """Median ms per phase of each contender, steps interleaved."""
    g = torch.Generator().manual_seed(0)
    x: Tensor = torch.rand(batch_size, 1, 28, 28, generator=g)
    y: Tensor = torch.randint(0, 10, (batch_size,), generator=g)
    torch.manual_seed(0)
    nets = contenders(before)
    opts = {
        name: torch.optim.Adam(net.parameters(), lr=1e-3)
        if lib is None
        else _fit_optimizer(net, 1e-3)
        for name, (net, lib) in nets.items()
    }
    times: dict[str, list[list[float]]] = {name: [[] for _ in PHASES] for name in nets}
    clock = time.thread_time
    for i in range(warmup + repeats):
        for name, (net, lib) in nets.items():
            t0 = clock()
            opts[name].zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            t1 = clock()
            if lib is not None:
                loss = loss + lib.kl(net) / 60_000
            t2 = clock()
            loss.backward()
            t3 = clock()
            opts[name].step()
            t4 = clock()
            if i >= warmup:
                for k, v in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                    times[name][k].append(v)
    reference = statistics.median(times["deterministic"][-1])
    rows = []
    for name, phases in times.items():
        medians = [statistics.median(p) for p in phases]
        rows.append(
            {
                "contender": name,
                **{f"{phase}_ms": 1e3 * m for phase, m in zip(PHASES, medians, strict=True)},
                "ratio": medians[-1] / reference,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--before", metavar="REV", help="also profile bayesprune at git REV")
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    use_allocator("retain")
    torch.set_num_threads(1)
    rows = profile(args.batch_size, args.repeats, args.warmup, args.before)
    md = (
        f"Median ms per phase of an optimiser step, LeNet-300-100, batch {args.batch_size}, "
        f"{args.repeats} interleaved steps per contender; thread CPU time, 1 torch thread; "
        "ratio: the whole step over the deterministic twin's.\n\n" + md_table(rows)
    )
    print(md)
    write_results("step_profile", {"settings": vars(args), "results": rows}, md)


if __name__ == "__main__":
    main()
