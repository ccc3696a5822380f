"""The default scikit-learn estimators on small tables, against scikit-learn's own.

Designs: scikit-learn's breast_cancer, wine, iris, diabetes; `make_classification`
(informative columns first, no redundant ones), `make_friedman1`, and the library's
`bai2020` simulation; each with 20 N(0, 1) noise columns appended. Per split (75/25,
`random_state` = split): the default `BayesianMLPClassifier` / `BayesianMLPRegressor`
(no argument but `random_state`), `MLPClassifier` / `MLPRegressor` (early stopping on
its own validation part), L1-logistic / Lasso with CV, RandomForest + `SelectFromModel`.
Every tuning step sees only the training rows; the test rows are scored once.
Recorded: held-out accuracy or R², noise columns kept, TPR / FDR where the support is
known (simulations), seconds per fit.

    python benchmarks/small_tables.py --splits 3 --threads 1
"""

from __future__ import annotations

import argparse
import ast
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import add_results_dir_option, md_table, use_results_dir, write_results
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_iris,
    load_wine,
    make_classification,
    make_friedman1,
)
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectFromModel
from sklearn.linear_model import LassoCV, LogisticRegressionCV
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bayesprune.data import bai2020
from bayesprune.sklearn import BayesianMLPClassifier, BayesianMLPRegressor

NOISE = 20


def _bundled(loader: Callable) -> Callable[[int], tuple]:
    def make(seed: int) -> tuple:
        bunch = loader()
        return bunch.data, bunch.target, None

    return make


def _classification(n: int, p: int) -> Callable[[int], tuple]:
    def make(seed: int) -> tuple:
        X, y = make_classification(
            n_samples=n, n_features=p, n_informative=5, n_redundant=0, shuffle=False,
            random_state=seed,
        )  # fmt: skip
        return X, y, list(range(5))

    return make


def _friedman(n: int, p: int) -> Callable[[int], tuple]:
    def make(seed: int) -> tuple:
        X, y = make_friedman1(n_samples=n, n_features=p, noise=1.0, random_state=seed)
        return X, y, list(range(5))

    return make


def _bai(n: int, p: int) -> Callable[[int], tuple]:
    def make(seed: int) -> tuple:
        data = bai2020(n=n, p=p, seed=seed, test_size=0.25, standardize=False)
        X = np.vstack([data.X_train.numpy(), data.X_test.numpy()])
        y = np.concatenate([data.y_train.numpy(), data.y_test.numpy()])
        return X, y, list(range(5))

    return make


DESIGNS: dict[str, tuple[str, Callable[[int], tuple]]] = {
    "iris": ("classification", _bundled(load_iris)),
    "wine": ("classification", _bundled(load_wine)),
    "breast_cancer": ("classification", _bundled(load_breast_cancer)),
    "diabetes": ("regression", _bundled(load_diabetes)),
    "classification n=300 p=10": ("classification", _classification(300, 10)),
    "classification n=2000 p=100": ("classification", _classification(2000, 100)),
    "friedman1 n=200 p=5": ("regression", _friedman(200, 5)),
    "friedman1 n=1000 p=10": ("regression", _friedman(1000, 10)),
    "bai2020 n=500 p=20": ("regression", _bai(500, 20)),
}


def _methods(task: str, seed: int) -> dict[str, Any]:
    clf = task == "classification"
    scaled = lambda est: make_pipeline(StandardScaler(), est)  # noqa: E731
    forest = (RandomForestClassifier if clf else RandomForestRegressor)(
        n_estimators=200, random_state=seed, n_jobs=1
    )
    linear = (
        LogisticRegressionCV(Cs=10, cv=5, penalty="l1", solver="saga", max_iter=3000,
                             random_state=seed)
        if clf
        else LassoCV(cv=5, random_state=seed, max_iter=20000)
    )  # fmt: skip
    mlp = (MLPClassifier if clf else MLPRegressor)(
        early_stopping=True, max_iter=2000, random_state=seed
    )
    return {
        "bayesprune (default)": (BayesianMLPClassifier if clf else BayesianMLPRegressor)(
            random_state=seed
        ),
        "MLP (sklearn)": scaled(mlp),
        "L1-logistic CV" if clf else "Lasso CV": scaled(linear),
        "RF + SelectFromModel": make_pipeline(
            SelectFromModel(clone_forest(forest)), clone_forest(forest)
        ),
    }


def clone_forest(forest: Any) -> Any:
    from sklearn.base import clone

    return clone(forest)


def _support(name: str, fitted: Any, p: int) -> np.ndarray | None:
    """Columns a selector kept (None for the plain MLP, which keeps all)."""
    if name.startswith("bayesprune"):
        return fitted.get_support()
    if name.startswith("RF"):
        return fitted[0].get_support()
    if name.startswith(("L1", "Lasso")):
        return (np.abs(np.atleast_2d(fitted[-1].coef_)) > 0).any(0)
    return None


def run_design(name: str, seed: int) -> list[dict]:
    task, make = DESIGNS[name]
    X, y, truth = make(seed)
    rng = np.random.default_rng(seed + 1)
    p = X.shape[1]
    X = np.hstack([X, rng.standard_normal((len(X), NOISE))])
    strat = y if task == "classification" else None
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.25, random_state=seed, stratify=strat
    )
    rows = []
    for method, est in _methods(task, seed).items():
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est.fit(X_tr, y_tr)
        seconds = time.perf_counter() - start
        score = float(est.score(X_te, y_te))
        support = _support(method, est, p + NOISE)
        row = {
            "design": name, "split": seed, "method": method, "n_train": len(X_tr), "p_real": p,
            "score": score, "seconds": seconds,
            "warnings": sorted({str(w.message)[:60] for w in caught
                                if issubclass(w.category, UserWarning)}),
        }  # fmt: skip
        if support is not None:
            row["real_kept"] = int(support[:p].sum())
            row["noise_kept"] = int(support[p:].sum())
            if truth is not None:
                kept = set(np.flatnonzero(support).tolist())
                row["tpr"] = len(kept & set(truth)) / len(truth)
                row["fdr"] = len(kept - set(truth)) / max(len(kept), 1)
        rows.append(row)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return rows


def _rows_from_logs(paths: list[str]) -> list[dict]:
    """The rows `run_design` printed (one dict a line), in the order of the logs."""
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.startswith("{'design'"):
                rows.append(ast.literal_eval(line))
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for key in dict.fromkeys((r["design"], r["method"]) for r in rows):
        group = [r for r in rows if (r["design"], r["method"]) == key]

        def mean(k: str, group: list[dict] = group) -> str:
            vals = [r[k] for r in group if k in r]
            return f"{statistics.mean(vals):.3f}" if vals else ""

        out.append({
            "design": key[0], "n train": group[0]["n_train"],
            "p real + noise": f"{group[0]['p_real']} + {NOISE}", "method": key[1],
            "score": mean("score"), "noise kept": mean("noise_kept"),
            "real kept": mean("real_kept"), "TPR": mean("tpr"), "FDR": mean("fdr"),
            "s / fit": mean("seconds"),
        })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--designs", nargs="+", choices=list(DESIGNS), default=list(DESIGNS))
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--from-logs", nargs="+", default=None,
        help="render the results from the per-fit rows printed by earlier runs (their logs)",
    )  # fmt: skip
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    rows: list[dict] = []
    if args.from_logs:
        rows = _rows_from_logs(args.from_logs)
    for name in [] if args.from_logs else args.designs:
        for seed in range(args.splits):
            rows += run_design(name, seed)
    table = summarise(rows)
    markdown = (
        f"{len(dict.fromkeys(r['design'] for r in rows))} designs, {NOISE} N(0, 1) noise "
        f"columns each, up to {args.splits} random 75/25 splits; score: test accuracy "
        "(classification) or R² (regression); "
        "means over splits. Noise kept: of the 20 noise columns. TPR / FDR: simulations "
        "(true support = first 5 columns). Seconds per fit on one thread of a shared "
        "machine.\n\n" + md_table(table)
    )
    payload = {"settings": vars(args), "summary": table, "rows": rows}
    print(write_results("small_tables", payload, markdown))


if __name__ == "__main__":
    main()
