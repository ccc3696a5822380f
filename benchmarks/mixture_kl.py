"""Scale-mixture KL: the closed-form bound against the one-sample Monte-Carlo estimate.

LeNet-300-100 on MNIST in the accuracy configuration of record (the scale mixture
½ N(0, 1) + ½ N(0, e⁻¹²), Adam 1e-3, batch 128, cosine schedule; see
foundation_lenet300.py), trained once per KL estimator (`--kls`; "mc+shared": with the
layers' "shared" gradient estimator instead of the local reparameterisation) and seed with
identical settings, and a deterministic twin per seed for the ECE target. Reports
final-epoch test error, NLL and ECE of the posterior mean and of the 30-sample
Monte-Carlo predictive, mean ± sd over seeds, and the interleaved step ratio of each
estimator. Each (estimator, seed) run is saved as it finishes, so several processes
can share the seeds and `--render-only` joins what they wrote.

    python benchmarks/mixture_kl.py --epochs 40 --seeds 0 1 2
    python benchmarks/mixture_kl.py --epochs 40 --seeds 0 & python ... --seeds 1 & ...
    python benchmarks/mixture_kl.py --epochs 40 --seeds 0 1 2 --render-only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import torch
from _common import add_results_dir_option, md_table, results_dir, use_results_dir, write_results
from foundation_lenet300 import METRICS, step_ratio

import bayesprune as bp
from bayesprune.data import load_mnist

PRIOR = {"kind": "scale_mixture", "pi": 0.5, "scale1": 1.0, "scale2": math.exp(-6)}


def layer_options(variant: str) -> dict:
    """ "mc", "bound", or either with "+estimator" (e.g. "mc+shared"): the layers' options."""
    kl, _, estimator = variant.partition("+")
    return {"prior": {**PRIOR, "kl": kl}, "estimator": estimator or "lrt"}


def run_one(variant: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one network (`variant`: see `layer_options`, or "deterministic"); test metrics."""
    train = load_mnist("train", limit=args.train_limit, seed=seed)
    x_test, y_test = load_mnist("test").tensors
    torch.manual_seed(seed)
    if variant == "deterministic":
        model = bp.lenet_300_100(family="deterministic")
    else:
        model = bp.lenet_300_100(**layer_options(variant))

    def report(record: dict) -> None:
        print(
            f"{variant} seed {seed}: epoch {record['epoch']} {record['seconds']:.1f} s", flush=True
        )

    history = bp.fit(
        model,
        train,
        epochs=args.epochs,
        batch_size=128,
        lr=1e-3,
        lr_schedule="cosine",
        seed=seed,
        progress=False,
        callbacks=[report],
    )
    test = (x_test, y_test)
    out = {"variant": variant, "seed": seed, "mean": bp.evaluate(model, test, metrics=METRICS)}
    if variant != "deterministic":
        out["mc"] = bp.evaluate(
            model, test, mode="mc", samples=args.mc_samples, seed=seed, metrics=METRICS
        )
    out["epoch_seconds"] = statistics.median(history.column("seconds"))
    return out


def summarise(runs: list[dict], kls: list[str]) -> list[dict]:
    """Mean ± sd over seeds of each variant's metrics; ECE below the deterministic net's?"""
    det = {r["seed"]: r for r in runs if r["variant"] == "deterministic"}
    rows = []
    for variant in ["deterministic", *kls]:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        row: dict = {"variant": variant, "seeds": len(mine)}
        for mode in ("mean", "mc"):
            if mode not in mine[0]:
                continue
            for metric in ("error_pct", "nll", "ece"):
                values = [r[mode][metric] for r in mine]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                row[f"{mode} {metric}"] = f"{statistics.mean(values):.4g} ± {sd:.2g}"
        if "mc" in mine[0]:
            paired = [r for r in mine if r["seed"] in det]
            row["mc ECE < det ECE"] = (
                f"{sum(r['mc']['ece'] < det[r['seed']]['mean']['ece'] for r in paired)}"
                f"/{len(paired)}"
            )
            row["error <= 2 %"] = f"{sum(r['mean']['error_pct'] <= 2.0 for r in mine)}/{len(mine)}"
        row["epoch s"] = statistics.median(r["epoch_seconds"] for r in mine)
        rows.append(row)
    columns = {key: None for row in rows for key in row}  # every column, first-seen order
    return [{key: row.get(key, "-") for key in columns} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--kls",
        nargs="+",
        default=list(bp.nn.MixtureKL.values()),
        help='KL estimators, each optionally with "+estimator" (e.g. mc+shared; default lrt)',
    )
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--mc-samples", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--step-repeats", type=int, default=200)
    parser.add_argument("--name", default="mixture_kl")
    parser.add_argument("--render-only", action="store_true", help="join the saved runs")
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    folder = results_dir() / f"{args.name}_runs"
    folder.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        for seed in args.seeds:
            for variant in [*args.kls, "deterministic"]:
                path = folder / f"{variant}_seed{seed}_epochs{args.epochs}.json"
                if not path.exists():
                    path.write_text(json.dumps(run_one(variant, seed, args), indent=2) + "\n")
    runs = [
        json.loads((folder / f"{v}_seed{s}_epochs{args.epochs}.json").read_text())
        for s in args.seeds
        for v in ["deterministic", *args.kls]
        if (folder / f"{v}_seed{s}_epochs{args.epochs}.json").exists()
    ]
    steps = {
        kl: [step_ratio(b, args.step_repeats, layer_options(kl)) for b in (128, 1024)]
        for kl in args.kls
    }
    rows = summarise(runs, args.kls)
    step_rows = [{"kl": kl, **s} for kl, by_batch in steps.items() for s in by_batch]
    md = (
        f"LeNet-300-100, MNIST, scale mixture, cosine, {args.epochs} epochs, "
        f"seeds {args.seeds}; final-epoch test metrics, mean ± sd over seeds:\n\n"
        + md_table(rows)
        + "\nStep time, Bayesian / deterministic (interleaved, median of "
        f"{args.step_repeats}; torch.optim.Adam for both):\n\n" + md_table(step_rows)
    )
    print(md)
    payload = {"settings": vars(args) | {"prior": PRIOR}, "summary": rows, "steps": steps}
    write_results(args.name, payload | {"runs": runs}, md)


if __name__ == "__main__":
    main()
