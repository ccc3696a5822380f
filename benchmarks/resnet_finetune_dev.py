"""Development (validation only): which fine-tune keeps the residual CNN's OOD detection.

Issue 13, session 9. `resnet_fashion.py`'s level rule found no level >= 0.2 that held
the dense Bayesian net's validation OOD AUROC (session 8), and even at 0.05 the MI AUROC
fell after the 2-epoch fine-tune. This script trains the dense Bayesian net of one
development seed exactly as `resnet_fashion.py` does and scores, on the validation split
only (Fashion-MNIST validation images in, MNIST *training* images out; no test set is
loaded), each level of `--levels` (0: the dense net itself, through the same BatchNorm
re-estimation and fine-tune) after each fine-tune of `--variants`:

- "bn": BatchNorm statistics re-estimated, no fine-tune;
- "full": every parameter, `--finetune-lr` (session 8's fine-tune: the dense training's
  KL weight and σ learning-rate factor, a third of the rate);
- "means": σ (the ``rho`` parameters) held, `bp.finetune(..., train_variances=False)`;
- "full-low" / "means-low": the same at `--low-lr`.

    python benchmarks/resnet_finetune_dev.py --seed 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import md_table, write_results
from _resnet import ResNet, _candidate
from resnet_fashion import _batches, _validator, make_data
from torch import nn

import bayesprune as bp
from bayesprune import compress

VARIANTS = ("bn", "full", "means", "full-low", "means-low")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.2, 0.35])
    parser.add_argument("--allocations", nargs="+", default=["layer"])
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=["full", "means", "full-low"]
    )
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--low-lr", type=float, default=1e-4)
    parser.add_argument("--cache", default="/tmp/s9r", help="dense Bayesian net cache")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="resnet_finetune_dev_s9")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # resnet_fashion's settings; trace=True: make_data loads no test set
    settings = argparse.Namespace(
        widths=[8, 16, 32], blocks=3, train_limit=10000, val_size=2000, test_limit=5000,
        epochs=8, lr=3e-3,
        batch_size=128, kl_weight=1.0, keep=["stem.0", "fc"], mc_samples=12,
        score_batches=8, calibration_batches=8, trace=True,
    )  # fmt: skip
    seed = args.seed
    data = make_data(seed, settings)
    train, (x_train, _) = data["train"], data["train"]
    fit = {"batch_size": settings.batch_size, "seed": seed, "progress": False}
    torch.manual_seed(seed)
    bayes = bp.convert(
        ResNet(settings.widths, settings.blocks),
        "gaussian",
        init_from_weights=True,
        keep=tuple(settings.keep),
    )
    cache = Path(args.cache) / f"resnet_bayes_seed{seed}.pt"
    if cache.exists():
        bayes.load_state_dict(torch.load(cache))
    else:
        start = time.perf_counter()
        bp.fit(
            bayes, train, epochs=settings.epochs, lr=settings.lr, lr_schedule="cosine",
            kl_weight=settings.kl_weight, **fit,
        )  # fmt: skip
        print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(bayes.state_dict(), cache)
    bayes.eval()
    val_acc = bp.scorer(data["val"], mode="mean", metrics=["accuracy"])
    validate = _validator(data, settings, seed, val_acc)
    dense = validate(bayes)
    print(f"dense {dense}", flush=True)
    scores = compress.activation_scores(bayes, _batches(x_train, 256, settings.score_batches))
    calibration = _batches(x_train, 256, settings.calibration_batches)

    def tune(variant: str) -> Any:
        def step(net: nn.Module) -> None:
            if variant == "bn":
                return
            lr = args.low_lr if variant.endswith("-low") else args.finetune_lr
            bp.finetune(
                net, train, epochs=args.finetune_epochs, lr=lr, lr_schedule="cosine",
                train_variances=not variant.startswith("means"), **fit,
            )  # fmt: skip

        return step

    rows = []
    for level in args.levels:
        for allocation in args.allocations if level > 0 else ["layer"]:
            for variant in args.variants:
                start = time.perf_counter()
                c = _candidate(
                    bayes, scores, level, allocation, x_train[:16], calibration,
                    tune(variant), (validate, validate),
                )  # fmt: skip
                row = {
                    "level": level,
                    "allocation": allocation,
                    "variant": variant,
                    "flops": c.record["flops"],
                    **{f"pruned {k}": v for k, v in c.record["val_pruned"].items()},
                    **{f"tuned {k}": v for k, v in c.values.items()},
                    **{f"drop {k}": dense[k] - c.values[k] for k in dense},
                    "seconds": round(time.perf_counter() - start),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                payload = {"settings": {**vars(args), **vars(settings)}, "dense": dense}
                payload["rows"] = rows
                write_results(args.name, payload, f"dense validation: {dense}\n\n" + md_table(rows))


if __name__ == "__main__":
    main()
