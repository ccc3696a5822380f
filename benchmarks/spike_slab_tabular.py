"""Feature selection on scikit-learn's tabular sets with pure-noise columns appended.

Every method sees the same data and splits: breast cancer, wine (classification) and
diabetes (regression), each with `--noise-columns` N(0, 1) columns appended after the
real ones (`bayesprune.data.load_tabular`), standardised with training statistics.
Scored per method: real and noise columns selected, and the held-out score (error %
or RMSE in the units of y) of the method's own model.

Methods (one hidden layer of `--hidden` units for the networks, full KL):
- spike-and-slab: gates on the inputs and hidden units, one training; inputs and
  units kept by the median model (PIP > 0.5) or by the expected size (the round(Σ PIP)
  highest PIPs per layer); held-out score of the full network (Monte-Carlo), of the
  pruned one (no refit) and, for the expected size, after a deterministic refit;
  the median selection plus the features the evidence screen adds
  (`bayesprune.screen`), scored by a Gaussian BNN trained on them ("refit" column);
- the same network with Gaussian weights (no gates): inputs ranked by the norm of
  their outgoing posterior means ("norm") or by their mean weight SNR |μ|/σ ("snr");
- Lasso (regression, `LassoCV`) / L1-logistic (`LogisticRegressionCV`, saga): 5-fold
  CV of alpha / C; a feature is selected when any coefficient is nonzero;
- random forest (300 trees): impurity importance, and permutation importance on a
  25 % validation part of the training rows (10 repeats).
A score-ranked method has no threshold of its own; "> mean score" is used for every
one of them (scikit-learn's `SelectFromModel` default); the permutation rule keeps a
feature whose mean importance exceeds twice its standard deviation over repeats.

    python benchmarks/spike_slab_tabular.py --replicates 3 --epochs 300
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import numpy as np
import torch
from _common import md_table, write_results
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LassoCV, LogisticRegressionCV
from sklearn.model_selection import train_test_split

import bayesprune as bp
from bayesprune.compress import input_scores
from bayesprune.data import load_tabular
from bayesprune.models import mlp
from bayesprune.screen import screen_features
from bayesprune.selection import decide, heldout_scores, prune, refit, select_model

SETS = ("breast_cancer", "wine", "diabetes")


def _score(task: str, pred: np.ndarray, y: np.ndarray, y_std: float) -> float:
    """Error % (classification) or RMSE in the units of y (regression)."""
    if task == "classification":
        return float(100 * (pred != y).mean())
    return float(np.sqrt(((pred - y) ** 2).mean()) * y_std)


def _row(method: str, selected: np.ndarray, data: Any, score: float, **extra: Any) -> dict:
    p_real = len(data.true_features)
    sel = set(np.flatnonzero(selected).tolist())
    return {
        "method": method,
        "real_kept": len(sel & set(data.true_features)),
        "noise_kept": len(sel - set(data.true_features)),
        "score": score,
        "p_real": p_real,
        **extra,
    }


def _networks(data: Any, args: argparse.Namespace, seed: int) -> list[dict]:
    task, p = data.task, data.n_features
    out = data.n_classes if task == "classification" else 1
    likelihood = "categorical" if task == "classification" else "gaussian"
    metric = "error_pct" if task == "classification" else "rmse"
    unit = 1.0 if task == "classification" else data.y_std
    fit_kwargs = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}
    torch.manual_seed(seed)
    model = mlp(p, [args.hidden], out, family="spike_slab", input_gates=True)
    report = select_model(
        model, data.train, data.test, likelihood=likelihood, fit_kwargs=fit_kwargs, seed=seed
    )
    pips = report.selection.pips
    unit_pips = torch.cat(list(pips.units.values()))
    full = report.scores["full"][metric] * unit
    rows = [
        _row(
            "spike-and-slab, median (PIP > 0.5)",
            report.selection.keep["inputs"].numpy(),
            data,
            full,
            score_pruned=report.scores["pruned"][metric] * unit,
            architecture="-".join(map(str, report.architecture)),
            unit_pip_sum=float(unit_pips.sum()),
            unit_pip_max=float(unit_pips.max()),
        )
    ]
    chosen = decide(pips, "expected_size")
    result = prune(report.model, chosen)
    pruned = heldout_scores(result.model, *data.test, report.likelihood, seed=seed)[metric]
    net, _ = refit(
        result.model, data.train, "deterministic", likelihood=report.likelihood, seed=seed,
        progress=False, epochs=args.refit_epochs, lr=args.lr, batch_size=args.batch_size,
    )  # fmt: skip
    refitted = heldout_scores(net, *data.test, report.likelihood, seed=seed)[metric]
    rows.append(
        _row(
            "spike-and-slab, expected size (top round(Σ PIP))",
            chosen.keep["inputs"].numpy(),
            data,
            full,
            score_pruned=pruned * unit,
            score_refit=refitted * unit,
            architecture="-".join(map(str, result.architecture)),
        )
    )
    rows.append(_screened(data, args, report, full, likelihood, metric, unit, seed))
    torch.manual_seed(seed)
    gauss = bp.mlp(p, [args.hidden], out, family="gaussian")
    history = bp.fit(
        gauss, data.train, likelihood=likelihood, seed=seed, progress=False, **fit_kwargs
    )
    score = heldout_scores(gauss, *data.test, history.likelihood, seed=seed)[metric] * unit
    norm = next(iter(input_scores(gauss, "norm").values())).numpy()
    post = gauss[0].posterior()
    snr = (post.weight_mean.abs() / post.weight_std.clamp_min(1e-12)).mean(0).numpy()
    for name, s in (("norm", norm), ("snr", snr)):
        rows.append(_row(f"Gaussian BNN, input {name} > mean", s > s.mean(), data, score))
    return rows


def _screened(
    data: Any, args: argparse.Namespace, report: Any, full: float, likelihood: str,
    metric: str, unit: float, seed: int,
) -> dict:  # fmt: skip
    """The median selection plus what the evidence screen adds; a Gaussian BNN on it."""
    selected = report.selection.selected_features or []
    if len(selected) == data.n_features:
        features, added = selected, []
    else:
        screen = screen_features(
            data.train, selected, likelihood=likelihood, hidden=(args.hidden,), seed=seed
        )
        features, added = screen.features, screen.added
    (x, y), (x_test, y_test) = data.train, data.test
    out = data.n_classes if data.task == "classification" else 1
    torch.manual_seed(seed)
    net = bp.mlp(len(features), [args.hidden], out, family="gaussian")
    fit_kwargs = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}
    history = bp.fit(
        net, (x[:, features], y), likelihood=likelihood, seed=seed, progress=False, **fit_kwargs
    )
    scores = heldout_scores(net, x_test[:, features], y_test, history.likelihood, seed=seed)
    mask = np.zeros(data.n_features, dtype=bool)
    mask[features] = True
    return _row(
        "spike-and-slab, median + evidence screen",
        mask,
        data,
        full,
        score_refit=scores[metric] * unit,
        screen_added=added,
    )


def _sklearn(data: Any, seed: int) -> list[dict]:
    x_tr, y_tr = data.X_train.numpy(), data.y_train.numpy()
    x_te, y_te = data.X_test.numpy(), data.y_test.numpy()
    clf = data.task == "classification"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)  # sklearn 1.8 renames `penalty`
        if clf:
            lin = LogisticRegressionCV(
                Cs=10, cv=5, penalty="l1", solver="saga", max_iter=5000, random_state=seed
            )
        else:
            lin = LassoCV(cv=5, random_state=seed, max_iter=20000)
        lin.fit(x_tr, y_tr)
    coef = np.atleast_2d(lin.coef_)
    rows = [
        _row(
            "L1-logistic (CV C)" if clf else "Lasso (CV alpha)",
            (np.abs(coef) > 0).any(0),
            data,
            _score(data.task, lin.predict(x_te), y_te, data.y_std),
        )
    ]
    forest_cls = RandomForestClassifier if clf else RandomForestRegressor
    forest = forest_cls(n_estimators=300, random_state=seed, n_jobs=1).fit(x_tr, y_tr)
    score = _score(data.task, forest.predict(x_te), y_te, data.y_std)
    imp = forest.feature_importances_
    rows.append(_row("random forest, impurity > mean", imp > imp.mean(), data, score))
    strat = y_tr if clf else None
    a_tr, a_val, b_tr, b_val = train_test_split(
        x_tr, y_tr, test_size=0.25, random_state=seed, stratify=strat
    )
    part = forest_cls(n_estimators=300, random_state=seed, n_jobs=1).fit(a_tr, b_tr)
    perm = permutation_importance(part, a_val, b_val, n_repeats=10, random_state=seed, n_jobs=1)
    keep = perm.importances_mean > 2 * perm.importances_std
    rows.append(_row("random forest, permutation > 2 sd", keep, data, score))
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Means over splits per (data set, method), in the order the rows came."""
    out = []
    for key in dict.fromkeys((r["data"], r["method"]) for r in rows):
        group = [r for r in rows if (r["data"], r["method"]) == key]

        def mean(k: str, group: list[dict] = group) -> float:
            return statistics.mean(r[k] for r in group)

        row = {
            "data": key[0],
            "method": key[1],
            "real kept": f"{mean('real_kept'):.1f} / {group[0]['p_real']}",
            "noise kept": f"{mean('noise_kept'):.1f} / {group[0]['noise']}",
            "score (full)": f"{mean('score'):.3f}",
            "score (pruned)": "",
            "score (refit)": "",
            "architecture": "",
        }
        if "score_pruned" in group[0]:
            row["score (pruned)"] = f"{mean('score_pruned'):.3f}"
            row["architecture"] = ", ".join(r["architecture"] for r in group)
        if "score_refit" in group[0]:
            row["score (refit)"] = f"{mean('score_refit'):.3f}"
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--noise-columns", type=int, default=20)
    parser.add_argument("--replicates", type=int, default=3, help="splits (seeds) per set")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--refit-epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows: list[dict] = []
    for name in args.sets:
        for seed in range(args.replicates):
            data = load_tabular(name, noise_columns=args.noise_columns, seed=seed)
            started = time.perf_counter()
            found = _networks(data, args, seed) + _sklearn(data, seed)
            for row in found:
                row.update(data=name, seed=seed, noise=args.noise_columns)
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
            rows += found
            print(f"{name} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    table = summarise(rows)
    markdown = (
        f"Sets {', '.join(args.sets)} with {args.noise_columns} N(0, 1) noise columns each; "
        f"{args.replicates} random 75/25 splits (seeds 0..{args.replicates - 1}). Networks: "
        f"p-{args.hidden}-out, full KL, {args.epochs} epochs (lr {args.lr}, batch "
        f"{args.batch_size}). Score: test error % (classification) or RMSE in the units of y "
        "(diabetes). Means over splits; `real kept` counts real columns, which are not all "
        "informative, so the noise columns are the known part of the truth.\n\n" + md_table(table)
    )
    payload = {"settings": vars(args), "summary": table, "rows": rows}
    print(write_results("spike_slab_tabular", payload, markdown))


if __name__ == "__main__":
    main()
