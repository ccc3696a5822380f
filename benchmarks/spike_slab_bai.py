"""Spike-and-slab model selection on Bai et al.'s simulation and a correlated design.

Per replicate (a fresh data set and network per seed): train a node-level
spike-and-slab MLP with input gates, select by the median-probability model, shrink,
and compare on held-out data the full network (Monte-Carlo predictive, averaging over
gates and weights) with the pruned one, without refit and after each refit. Also:
TPR / FDR of the selected inputs against the 5 true features (median and Bayesian-FDR
rules), surviving nodes per layer, and a dense Gaussian network of the same shape as
a reference. Then the evidence screen (`bayesprune.screen`) tests every input the
median rule left out, and a fresh network on the screened inputs is scored the same
way ("screened": TPR / FDR / RMSE). RMSEs are in the units of y.

    python benchmarks/spike_slab_bai.py --replicates 10 --epochs 300
    python benchmarks/spike_slab_bai.py --design correlated --p 1000 --replicates 10 \
        --epochs 200 --no-dense --screen-rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from _common import md_table, write_results

import bayesprune as bp
from bayesprune import metrics
from bayesprune.data import bai2020, correlated
from bayesprune.models import mlp
from bayesprune.screen import screen_features
from bayesprune.selection import decide, heldout_scores, refit, select_model

DESIGNS = {"bai": bai2020, "correlated": correlated}


def replicate(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    data = DESIGNS[args.design](n=args.n, p=args.p, seed=seed)
    x_test, y_test = data.test
    fit_kwargs = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}
    torch.manual_seed(seed)
    model = mlp(
        args.p,
        args.hidden,
        1,
        family="spike_slab",
        input_gates=True,
        gate_estimator=args.gate_estimator,
    )
    started = time.perf_counter()
    report = select_model(
        model,
        data.train,
        data.test,
        likelihood="gaussian",
        fit_kwargs=fit_kwargs,
        input_shape=(args.p,),
        rule=args.rule,
        seed=seed,
    )
    seconds = time.perf_counter() - started
    ys = data.y_std
    row: dict[str, Any] = {
        "seed": seed,
        "rmse_full": report.scores["full"]["rmse"] * ys,
        "rmse_pruned": report.scores["pruned"]["rmse"] * ys,
    }
    refit_settings = {"epochs": args.refit_epochs, "lr": args.lr, "batch_size": args.batch_size}
    for how in ("bayes", "deterministic"):
        net, _ = refit(
            report.shrink.model,
            data.train,
            how,
            likelihood=report.likelihood,
            seed=seed,
            progress=False,
            **refit_settings,
        )
        scores = heldout_scores(net, x_test, y_test, report.likelihood, seed=seed)
        row[f"rmse_refit_{how}"] = scores["rmse"] * ys
    truth, p = data.true_features, data.n_features
    median_rule = decide(report.selection.pips, "median")
    median = metrics.selection_scores(median_rule.selected_features, truth, p)
    fdr_rule = decide(report.selection.pips, "fdr", alpha=args.alpha)
    fdr = metrics.selection_scores(fdr_rule.selected_features, truth, p)
    row.update(
        tpr=median.tpr,
        fdr=median.fdr,
        n_selected=median.n_selected,
        tpr_fdr_rule=fdr.tpr,
        fdr_fdr_rule=fdr.fdr,
        nodes=report.architecture[1:-1],
        true_pips=[round(float(v), 3) for v in report.selection.pips.inputs[truth]],
        seconds=seconds,
    )
    if args.screen:
        row.update(screened(args, data, median_rule.selected_features, seed))
    if args.dense:
        torch.manual_seed(seed)
        dense = bp.mlp(args.p, args.hidden, 1, family="gaussian")
        history = bp.fit(
            dense, data.train, likelihood="gaussian", seed=seed, progress=False, **fit_kwargs
        )
        dense_scores = heldout_scores(dense, x_test, y_test, history.likelihood, seed=seed)
        row["rmse_dense_gaussian"] = dense_scores["rmse"] * ys
    row["record"] = report.as_dict() | {"history": None}
    return row


def screened(args: argparse.Namespace, data: Any, selected: Any, seed: int) -> dict[str, Any]:
    """The evidence screen on the median selection, then a network on what it keeps.

    The features are the screen's decision; the new network has unit gates only (its
    hidden layers are still selected), since on 2,250 rows an input gate can drop x1
    again before the network learns its interaction (the failure the screen repairs).
    """
    started, cpu = time.perf_counter(), time.process_time()
    screen = screen_features(
        data.train,
        [int(i) for i in selected],
        epochs=args.screen_epochs,
        rounds=args.screen_rounds,
        seed=seed,
    )
    screen_cpu = time.process_time() - cpu  # the screen alone (the total below adds a fit)
    features = screen.features
    (x, y), (x_test, y_test) = data.train, data.test
    torch.manual_seed(seed)
    model = mlp(
        len(features), args.hidden, 1, family="spike_slab", gate_estimator=args.gate_estimator
    )
    fit_kwargs = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}
    report = select_model(
        model,
        (x[:, features], y),
        (x_test[:, features], y_test),
        likelihood="gaussian",
        fit_kwargs=fit_kwargs,
        input_shape=(len(features),),
        seed=seed,
    )
    scores = metrics.selection_scores(features, data.true_features, data.n_features)
    return {
        "screen_added": screen.added,
        "screen_rounds": screen.rounds,
        "screen_top_gain": round(float(np.nanmax(screen.gains)), 1),
        "screen_top_z": round(float(np.nanmax(screen.z)), 2),
        "rmse_screened_full": report.scores["full"]["rmse"] * data.y_std,
        "rmse_screened_pruned": report.scores["pruned"]["rmse"] * data.y_std,
        "tpr_screened": scores.tpr,
        "fdr_screened": scores.fdr,
        "nodes_screened": report.architecture[1:-1],
        "seconds_screen": time.perf_counter() - started,
        "cpu_seconds_screen_alone": screen_cpu,
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean_sd(key: str) -> str:
        values = [r[key] for r in rows if key in r]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    keys = [k for k in rows[0] if k.startswith("rmse")]
    out = {k: mean_sd(k) for k in keys}
    out.update(
        all_true_found=f"{sum(r['tpr'] == 1.0 for r in rows)}/{len(rows)}",
        mean_tpr=f"{statistics.mean(r['tpr'] for r in rows):.3f}",
        mean_fdr=f"{statistics.mean(r['fdr'] for r in rows):.3f}",
        mean_tpr_fdr_rule=f"{statistics.mean(r['tpr_fdr_rule'] for r in rows):.3f}",
        mean_fdr_fdr_rule=f"{statistics.mean(r['fdr_fdr_rule'] for r in rows):.3f}",
        pruned_le_full=f"{sum(r['rmse_pruned'] <= r['rmse_full'] for r in rows)}/{len(rows)}",
    )
    if "tpr_screened" in rows[0]:
        out.update(
            all_true_found_screened=f"{sum(r['tpr_screened'] == 1.0 for r in rows)}/{len(rows)}",
            mean_fdr_screened=f"{statistics.mean(r['fdr_screened'] for r in rows):.3f}",
            screened_le_full=(
                f"{sum(r['rmse_screened_pruned'] <= r['rmse_full'] for r in rows)}/{len(rows)}"
            ),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--design", choices=sorted(DESIGNS), default="bai")
    parser.add_argument("--replicates", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--refit-epochs", type=int, default=100)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--p", type=int, default=200)
    parser.add_argument("--hidden", type=int, nargs="+", default=[7, 7, 7])
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--gate-estimator", default="marginal", choices=["marginal", "straight_through", "relaxed"]
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="level of the FDR rule")
    parser.add_argument(
        "--rule", default="median", choices=["median", "expected_size"],
        help="decision rule of the pruned network (TPR / FDR: always the median and FDR rules)",
    )  # fmt: skip
    parser.add_argument("--no-dense", dest="dense", action="store_false")
    parser.add_argument(
        "--no-screen", dest="screen", action="store_false",
        help="skip the evidence screen of the excluded features (bayesprune.screen)",
    )  # fmt: skip
    parser.add_argument("--screen-epochs", type=int, default=150)
    parser.add_argument("--screen-rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="first replicate's seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=None, help="results file name")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for r in range(args.replicates):
        rows.append(replicate(args, args.seed + r))
        shown = {k: v for k, v in rows[-1].items() if k != "record"}
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in shown.items()}, flush=True)
    table = [
        {k: (str(v) if isinstance(v, list) else v) for k, v in row.items() if k != "record"}
        for row in rows
    ]
    overall = summary(rows)
    name = args.name or f"spike_slab_{args.design}"
    markdown = (
        f"Design `{args.design}`: n = {args.n}, p = {args.p}, network "
        f"{args.p}-{'-'.join(map(str, args.hidden))}-1, gate estimator "
        f"`{args.gate_estimator}`, full KL, rule `{args.rule}` for the pruned network, "
        f"{args.epochs} epochs "
        f"(lr {args.lr}, batch {args.batch_size}), refits {args.refit_epochs} epochs; "
        f"{args.replicates} replicates. RMSE in the units of y (noise sd 1)."
        + (
            f" Evidence screen on the median selection: {args.screen_epochs} epochs, up to "
            f"{args.screen_rounds} rounds; `screened` = a spike-and-slab net with unit gates "
            "on the screened features."
            if args.screen
            else ""
        )
        + "\n\n"
        "## Summary (mean ± sd over replicates)\n\n"
        + md_table([overall])
        + "\n## Replicates\n\n"
        + md_table(table)
    )
    payload = {"settings": vars(args), "summary": overall, "replicates": rows}
    print(write_results(name, payload, markdown))


if __name__ == "__main__":
    main()
