"""How low can a LeNet-5 of Bayesian Compression's structure go? (issue 13, validation only)

Issue 13 asks for a compressed LeNet-5-Caffe smaller than Bayesian Compression's
5-10-76-16 (conv1 channels - conv2 channels - fc1 inputs in use - fc1 units) at ≤ 1.0 %
test error. This script measures what a *plain* network of that structure reaches when
it is trained for it directly, with no compression in the way: a LeNet-5 of widths
`--widths C1 C2 H` trained from scratch (Adam, one-cycle schedule, `--epochs`), then
fc1's input columns cut to `--fc1-inputs` by column norm (each conv2 channel has 4×4
positions, so fc1 reads C2 · 16 columns) and the survivors fine-tuned (`--finetune-epochs`,
the cut columns held at zero). Per seed, on the benchmark's split of the MNIST training
set (`compress_lenet5.split`: 55,000 training / 5,000 validation images), validation
error only: the test set is not loaded.

`--cut-epoch E` cuts fc1's inputs after E of the `--epochs` instead of after all of them:
the small structure then trains the remaining epochs (a new one-cycle schedule) with the
cut columns held at zero, before the fine-tune. `--device cuda` runs it on a GPU.

`--teacher-epochs N` first trains a full LeNet-5-Caffe (20-50-800-500) for N epochs and
trains and fine-tunes the small network against it (knowledge distillation: a weight
`--distill-alpha` on the KL from the teacher's softmax at `--distill-temperature`, × T²,
the rest on the labels), to see whether a teacher lowers the floor.

    python benchmarks/lenet5_structure_floor.py --seeds 5 6 7
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F
from _common import add_results_dir_option, md_table, mean_sd, use_results_dir, write_results
from compress_lenet5 import split
from torch import Tensor, nn

from bayesprune.data.loaders import load_mnist

NAME = "lenet5_structure_floor"


def lenet5(c1: int, c2: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, c1, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10),
    )  # fmt: skip


def error_pct(net: nn.Module, x: Tensor, y: Tensor) -> float:
    net.eval()
    with torch.no_grad():
        return 100 * float((net(x).argmax(1) != y).double().mean())


def train(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    lr: float,
    seed: int,
    keep: Tensor | None,
    teacher: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> None:
    """Adam with a one-cycle rate over `epochs`; fc1's columns outside `keep` stay 0.
    With `teacher` (its logits on `x`), the loss is distillation's (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr)
    per_epoch = len(y) // 128
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * per_epoch)
    fc1 = net[7]
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        net.train()
        for i in range(per_epoch):
            idx = order[i * 128 : (i + 1) * 128]
            logits = net(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            if teacher is not None:
                soft = F.kl_div(
                    F.log_softmax(logits / temperature, 1),
                    F.log_softmax(teacher[idx] / temperature, 1),
                    log_target=True,
                    reduction="batchmean",
                )
                loss = alpha * temperature**2 * soft + (1 - alpha) * loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            if keep is not None:
                with torch.no_grad():
                    fc1.weight[:, ~keep] = 0.0


def _cut(net: nn.Sequential, inputs: int) -> Tensor:
    """Keep fc1's `inputs` input columns of largest norm (the others zeroed): the mask."""
    norms = net[7].weight.detach().norm(dim=0)
    keep = torch.zeros_like(norms, dtype=torch.bool)
    keep[norms.argsort(descending=True)[:inputs]] = True
    with torch.no_grad():
        net[7].weight[:, ~keep] = 0.0
    return keep


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    fit, val = split(load_mnist("train"), 5000, seed)
    device = torch.device(args.device)
    x, y = (t.to(device) for t in fit.tensors)
    xv, yv = (t.to(device) for t in val.tensors)
    start = time.perf_counter()
    teacher, teacher_error = None, None
    if args.teacher_epochs:
        torch.manual_seed(seed + 100)
        big = lenet5(20, 50, 500).to(device)
        train(big, x, y, args.teacher_epochs, args.lr, seed + 100, None)
        teacher_error = error_pct(big, xv, yv)
        with torch.no_grad():
            teacher = torch.cat([big(part) for part in x.split(4096)])
        print(f"seed {seed}: teacher 20-50-800-500 {teacher_error:.2f} %", flush=True)
    distill = {
        "teacher": teacher,
        "temperature": args.distill_temperature,
        "alpha": args.distill_alpha,
    }
    torch.manual_seed(seed)
    c1, c2, hidden = args.widths
    net = lenet5(c1, c2, hidden).to(device)
    first = args.cut_epoch or args.epochs
    train(net, x, y, first, args.lr, seed, None, **distill)
    dense = error_pct(net, xv, yv)
    keep = _cut(net, args.fc1_inputs)
    cut = error_pct(net, xv, yv)
    if first < args.epochs:  # the cut structure trains the rest of the epochs
        train(net, x, y, args.epochs - first, args.lr, seed + 2, keep, **distill)
    train(net, x, y, args.finetune_epochs, args.finetune_lr, seed + 1, keep, **distill)
    tuned = error_pct(net, xv, yv)
    structure = f"{c1}-{c2}-{int(keep.sum())}-{hidden}"
    print(f"seed {seed}: {c1}-{c2}-{c2 * 16}-{hidden} {dense:.2f} %, {structure} cut "
          f"{cut:.2f} %, fine-tuned {tuned:.2f} %", flush=True)  # fmt: skip
    return {
        "seed": seed,
        "val_error_pct_dense": dense,
        "val_error_pct_cut": cut,
        "val_error_pct_finetuned": tuned,
        "structure": structure,
        "val_error_pct_teacher": teacher_error,
        "seconds": round(time.perf_counter() - start, 1),
    }


def render(runs: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    c1, c2, hidden = settings["widths"]
    cut_at = settings.get("cut_epoch")
    rest = f"{settings['epochs'] - cut_at} epochs with the cut held, " if cut_at else ""
    rows = [
        {
            "network": f"{c1}-{c2}-{c2 * 16}-{hidden}, trained "
            f"{settings.get('cut_epoch') or settings['epochs']} epochs",
            "validation error %": mean_sd([r["val_error_pct_dense"] for r in runs], 2),
        },
        {
            "network": f"{runs[0]['structure']}, fc1 inputs cut by column norm",
            "validation error %": mean_sd([r["val_error_pct_cut"] for r in runs], 2),
        },
        {
            "network": f"  + {rest}{settings['finetune_epochs']} fine-tune epochs",
            "validation error %": mean_sd([r["val_error_pct_finetuned"] for r in runs], 2),
        },
    ]
    if settings.get("teacher_epochs"):
        teacher = f"teacher 20-50-800-500, {settings['teacher_epochs']} epochs"
        error = mean_sd([r["val_error_pct_teacher"] for r in runs], 2)
        rows.insert(0, {"network": teacher, "validation error %": error})
        for row in rows[1:]:
            row["network"] += f" (distilled, T = {settings['distill_temperature']})"
    keys = ("seed", "val_error_pct_teacher", "val_error_pct_dense", "val_error_pct_finetuned")
    per_seed = [{**{k: r.get(k) for k in keys}, "seconds": r["seconds"]} for r in runs]
    return (
        f"Settings: {settings}\n\nValidation only (no test set read).\n\n"
        + md_table(rows)
        + "\n"
        + md_table(per_seed)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7])
    parser.add_argument("--widths", type=int, nargs=3, default=[5, 10, 16], help="C1 C2 H")
    parser.add_argument("--fc1-inputs", type=int, default=76)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--teacher-epochs", type=int, default=0)
    parser.add_argument("--distill-temperature", type=float, default=4.0)
    parser.add_argument("--distill-alpha", type=float, default=0.9)
    parser.add_argument("--cut-epoch", type=int, default=None, help="cut fc1 after E epochs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=NAME)
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    settings = {k: v for k, v in vars(args).items() if k != "name"}
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args))
        write_results(args.name, {"settings": settings, "runs": runs}, render(runs, settings))
    print(render(runs, settings))


if __name__ == "__main__":
    main()
