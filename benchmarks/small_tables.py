"""The default scikit-learn estimators on small tables, against scikit-learn's own.

Designs: scikit-learn's wine, breast_cancer and diabetes; `make_classification`
(informative columns first, no redundant ones), `make_friedman1`, and the library's
`bai2020` simulation; n from 100 to 5,000 rows, 5 to 100 real columns, each with 20
N(0, 1) noise columns appended. Per split (75/25, `random_state` = split): the default
`BayesianMLPClassifier` / `BayesianMLPRegressor` (no argument but `random_state`:
spike-and-slab input gates for the classifier, a log-uniform scale per input column for
the regressor), the same estimators with the other family (`OTHER`), `MLPClassifier` /
`MLPRegressor` (early stopping on its own validation part), L1-logistic /
Lasso with CV, RandomForest + `SelectFromModel`. Every tuning step (CV, early stopping)
sees only the training rows; the test rows are scored once.
Recorded: held-out accuracy or R², columns kept (real, noise), TPR / FDR where the
support is known (simulations), seconds per fit, the estimator's warnings; then the
issue's targets per design for each of our estimators, and a separate timing of one
default fit on 500 rows x 50 columns on one thread.

    python benchmarks/small_tables.py --splits 5 --jobs 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from _common import add_results_dir_option, md_table, use_results_dir, write_results
from sklearn.base import clone
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
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
from threadpoolctl import threadpool_limits

from bayesprune.data import bai2020
from bayesprune.sklearn import BayesianMLPClassifier, BayesianMLPRegressor

NOISE = 20
OURS = "bayesprune (default)"
OURS_MEAN = 'bayesprune, predict_mode="mean"'
"""The default fit scored again by its posterior-mean network (gates = PIPs), no refit."""
OTHER_FAMILY = "bayesprune, the other family"
"""The estimator with the family its task does not default to: for a classifier group
Sparse VD (`family="sparse_vd_group"`, a log-uniform scale per input column), for a
regressor the spike-and-slab gates (`family="spike_slab"`, the default before session 21)."""
OTHER = {"classification": "sparse_vd_group", "regression": "spike_slab"}
OUR_ESTIMATORS = (OURS, OTHER_FAMILY)
""""Ours" in the target tables; every other method but `OURS_MEAN` is a baseline."""
MLP = "MLP (sklearn)"
RF = "RF + SelectFromModel"


def _bundled(loader: Callable) -> Callable[[int], tuple]:
    def make(seed: int) -> tuple:
        bunch = loader()
        return bunch.data, bunch.target, None

    return make


def _classification(n: int, p: int) -> Callable[[int], tuple]:
    def make(seed: int) -> tuple:
        X, y = make_classification(
            n_samples=n, n_features=p, n_informative=min(5, p), n_redundant=0, shuffle=False,
            random_state=seed,
        )  # fmt: skip
        return X, y, list(range(min(5, p)))

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
    "wine": ("classification", _bundled(load_wine)),
    "breast_cancer": ("classification", _bundled(load_breast_cancer)),
    "diabetes": ("regression", _bundled(load_diabetes)),
    "classification n=100 p=5": ("classification", _classification(100, 5)),
    "classification n=300 p=10": ("classification", _classification(300, 10)),
    "classification n=2000 p=100": ("classification", _classification(2000, 100)),
    "friedman1 n=200 p=5": ("regression", _friedman(200, 5)),
    "friedman1 n=1000 p=10": ("regression", _friedman(1000, 10)),
    "friedman1 n=5000 p=20": ("regression", _friedman(5000, 20)),
    "bai2020 n=500 p=20": ("regression", _bai(500, 20)),
}
"""name → (task, seed → (X, y, true support or None)); simulations draw new rows per seed."""


def with_noise(design: str, seed: int) -> tuple[str, np.ndarray, np.ndarray, list | None, int]:
    """The design's table with `NOISE` N(0, 1) columns appended (drawn from `seed`)."""
    task, make = DESIGNS[design]
    X, y, truth = make(seed)
    rng = np.random.default_rng(seed + 1)
    return task, np.hstack([X, rng.standard_normal((len(X), NOISE))]), y, truth, X.shape[1]


def methods(task: str, seed: int) -> dict[str, Any]:
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
    ours = BayesianMLPClassifier if clf else BayesianMLPRegressor
    return {
        OURS: ours(random_state=seed),
        OTHER_FAMILY: ours(family=OTHER[task], random_state=seed),
        MLP: scaled(mlp),
        "L1-logistic CV" if clf else "Lasso CV": scaled(linear),
        RF: make_pipeline(SelectFromModel(clone(forest)), clone(forest)),
    }


def _support(name: str, fitted: Any) -> np.ndarray | None:
    """Columns a selector kept (None for the plain MLP, which keeps all)."""
    if name in OUR_ESTIMATORS:
        return fitted.get_support()
    if name == RF:
        return fitted[0].get_support()
    if name.startswith(("L1", "Lasso")):
        return (np.abs(np.atleast_2d(fitted[-1].coef_)) > 0).any(0)
    return None


def run_design(design: str, seed: int, threads: int) -> list[dict]:
    """Every method on one split of one design: a row per method."""
    torch.set_num_threads(threads)
    task, X, y, truth, p = with_noise(design, seed)
    strat = y if task == "classification" else None
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.25, random_state=seed, stratify=strat
    )
    rows = []
    for method, est in methods(task, seed).items():
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(threads):
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", FutureWarning)
            est.fit(X_tr, y_tr)
        seconds = time.perf_counter() - start
        score = float(est.score(X_te, y_te))
        support = _support(method, est)
        row = {
            "design": design, "split": seed, "method": method, "task": task,
            "n_train": len(X_tr), "p_real": p, "score": score, "seconds": seconds,
            "warnings": sorted({str(w.message)[:80] for w in caught
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
        if method == OURS:  # the same fit, scored by the posterior-mean network
            start = time.perf_counter()
            mean_score = float(est.set_params(predict_mode="mean").score(X_te, y_te))
            est.set_params(predict_mode="mc")
            rows.append({**row, "method": OURS_MEAN, "score": mean_score,
                         "seconds": time.perf_counter() - start, "warnings": []})  # fmt: skip
    line = ", ".join(f"{r['method']} {r['score']:.3f} ({r['seconds']:.1f} s)" for r in rows)
    print(f"{design} split {seed}: {line}", flush=True)
    return rows


def _run_before(deadline: float | None, design: str, seed: int, threads: int) -> list[dict]:
    """`run_design`, unless the time limit has passed (then no rows)."""
    if deadline is not None and time.perf_counter() > deadline:
        return []
    return run_design(design, seed, threads)


def time_default_fit(repeats: int, seed: int = 0) -> dict[str, Any]:
    """Seconds of a default classifier fit on 500 rows x 50 columns (30 real + 20 noise),
    one thread, median of `repeats` (run alone, before the design runs), after a short
    warm-up fit."""
    torch.set_num_threads(1)
    X, y = make_classification(
        n_samples=500, n_features=30, n_informative=5, n_redundant=0, random_state=seed
    )
    X = np.hstack([X, np.random.default_rng(seed).standard_normal((500, NOISE))])
    times, cpu, steps = [], [], []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with warnings.catch_warnings():  # torch's one-off imports (about 3 s) are not the fit's
        warnings.simplefilter("ignore", UserWarning)
        BayesianMLPClassifier(random_state=0, min_steps=20, max_steps=20, refit_steps=20).fit(X, y)
    for r in range(repeats):
        est = BayesianMLPClassifier(random_state=r)
        start, start_cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            est.fit(X, y)
        times.append(round(time.perf_counter() - start, 2))
        cpu.append(round(time.process_time() - start_cpu, 2))
        steps.append(est.n_steps_)
    return {"rows": 500, "columns": 50, "threads": 1, "seconds": times, "cpu_seconds": cpu,
            "steps": steps, "median_seconds": statistics.median(times),
            "median_cpu_seconds": statistics.median(cpu), "load_average": load}  # fmt: skip


def _timing_markdown(timing: dict[str, Any], when: str) -> str:
    return (
        f"Default fit on 500 rows x 50 columns, one thread, {when}: median "
        f"{timing['median_seconds']:.1f} s wall of {timing['seconds']!r}, "
        f"{timing['median_cpu_seconds']:.1f} s CPU of {timing['cpu_seconds']!r} "
        f"(optimiser steps {timing['steps']}; the machine's load average at the start "
        f"{timing['load_average']}); target < 10 s.\n"
    )


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return statistics.mean(vals) if vals else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def summarise(rows: list[dict]) -> list[dict]:
    """Per design and method: means over splits (sd of the score)."""
    out = []
    for key in dict.fromkeys((r["design"], r["method"]) for r in rows):
        group = [r for r in rows if (r["design"], r["method"]) == key]
        scores = [r["score"] for r in group]
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        out.append({
            "design": key[0], "n train": group[0]["n_train"],
            "p real + noise": f"{group[0]['p_real']} + {NOISE}", "method": key[1],
            "splits": len(group), "score": f"{statistics.mean(scores):.3f} ± {sd:.3f}",
            "real kept": _fmt(_mean(group, "real_kept"), 1),
            "noise kept": _fmt(_mean(group, "noise_kept"), 2),
            "TPR": _fmt(_mean(group, "tpr"), 2), "FDR": _fmt(_mean(group, "fdr"), 2),
            "s / fit": _fmt(_mean(group, "seconds"), 1),
            "warned": sum(bool(r["warnings"]) for r in group)
            if key[1] in OUR_ESTIMATORS
            else "",
        })  # fmt: skip
    return out


def targets(rows: list[dict], ours_name: str = OURS) -> tuple[list[dict], dict[str, Any]]:
    """Issue 17's targets per design for one of our estimators, and overall."""
    per_design, gaps_mlp = [], []
    for design in dict.fromkeys(r["design"] for r in rows):
        mine = [r for r in rows if r["design"] == design]
        by = {
            m: [r for r in mine if r["method"] == m]
            for m in dict.fromkeys(r["method"] for r in mine)
        }
        if ours_name not in by:
            continue
        mean_score = {m: statistics.mean(r["score"] for r in g) for m, g in by.items()}
        baselines = {m: s for m, s in mean_score.items() if m not in (*OUR_ESTIMATORS, OURS_MEAN)}
        best = max(baselines, key=baselines.get) if baselines else None
        ours, score = by[ours_name], mean_score[ours_name]
        mean_network = mean_score.get(OURS_MEAN) if ours_name == OURS else None
        row = {
            "design": design,
            "ours": round(score, 3),
            "ours, mean network": "" if mean_network is None else round(mean_network, 3),
            "best baseline": f"{best} {baselines[best]:.3f}" if best else "",
            "gap to best (points)": round(100 * (score - baselines[best]), 1) if best else None,
            "within 1 point": bool(best) and score >= baselines[best] - 0.01,
            "noise kept": round(_mean(ours, "noise_kept"), 2),
            "noise kept by RF": round(_mean(by[RF], "noise_kept"), 2) if RF in by else None,
            "TPR": _fmt(_mean(ours, "tpr"), 2),
            "FDR": _fmt(_mean(ours, "fdr"), 2),
            "warned (of splits)": f"{sum(bool(r['warnings']) for r in ours)} / {len(ours)}",
        }
        per_design.append(row)
        if MLP in mean_score:
            gaps_mlp.append(score - mean_score[MLP])
    simulated = [r for r in rows if r["method"] == ours_name and "tpr" in r]
    overall = {
        "designs": len(per_design),
        "within 1 point of the best baseline": sum(r["within 1 point"] for r in per_design),
        "mean score minus MLP (points)": round(100 * statistics.mean(gaps_mlp), 1)
        if gaps_mlp
        else None,
        "max mean noise kept": max((r["noise kept"] for r in per_design), default=None),
        "mean TPR (simulations)": _fmt(_mean(simulated, "tpr"), 3),
        "mean FDR (simulations)": _fmt(_mean(simulated, "fdr"), 3),
    }
    return per_design, overall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--designs", nargs="+", choices=list(DESIGNS), default=list(DESIGNS))
    parser.add_argument("--splits", type=int, default=5, help="random 75/25 splits per design")
    parser.add_argument("--threads", type=int, default=1, help="torch / BLAS threads per fit")
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="(design, split) runs in parallel processes; seconds per fit then share the CPU",
    )  # fmt: skip
    parser.add_argument(
        "--timing-repeats", type=int, default=3,
        help="default fits on 500 x 50 timed alone on one thread before the runs (0: skip)",
    )  # fmt: skip
    parser.add_argument(
        "--timing-only", action="store_true",
        help="only the 500 x 50 timing (--timing-repeats fits), on a quiet machine",
    )  # fmt: skip
    parser.add_argument(
        "--time-limit-min", type=float, default=None,
        help="start no (design, split) run after this many minutes; the results say which ran",
    )  # fmt: skip
    parser.add_argument(
        "--name", default="small_tables",
        help="results/<name>.json and .md (a new name keeps earlier runs' results)",
    )  # fmt: skip
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    timing = time_default_fit(args.timing_repeats) if args.timing_repeats else None
    if timing:
        print(f"500 x 50 default fit: {timing['seconds']} s", flush=True)
    if args.timing_only:
        if not timing:
            parser.error("--timing-only needs --timing-repeats >= 1")
        print(write_results(args.name, {"settings": vars(args), "timing_500x50": timing},
                            _timing_markdown(timing, "alone")))  # fmt: skip
        return
    started = time.perf_counter()
    deadline = None if args.time_limit_min is None else started + 60 * args.time_limit_min
    # split by split, so that a time limit leaves every design with the same splits run
    tasks = [(d, s) for s in range(args.splits) for d in args.designs]
    rows: list[dict] = []
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(_run_before, deadline, d, s, args.threads) for d, s in tasks]
        for future in futures:
            rows += future.result()
    skipped = [f"{d} split {s}" for (d, s) in tasks if not any(
        r["design"] == d and r["split"] == s for r in rows)]  # fmt: skip
    table = summarise(rows)
    scored = {name: targets(rows, name) for name in OUR_ESTIMATORS}
    per_design = scored[OURS][0]
    wall = time.perf_counter() - started
    markdown = (
        f"{len(per_design)} designs, {NOISE} N(0, 1) noise columns each, {args.splits} random "
        "75/25 splits (`random_state` = split); score: test accuracy (classification) or R² "
        "(regression), mean ± sd over splits. Real / noise kept: columns each selector keeps "
        "(the plain MLP keeps all). TPR / FDR: simulations (true support: the first 5 "
        f'columns). "{OTHER_FAMILY}": the classifier with family="{OTHER["classification"]}", '
        f'the regressor with family="{OTHER["regression"]}". Seconds per fit: one thread '
        f"each, {args.jobs} run(s) in parallel on a machine shared with other work;"
        f" all runs took {wall / 60:.0f} min.\n\n"
        + (f"Not run (time limit): {', '.join(skipped)}.\n\n" if skipped else "")
        + md_table(table)
        + "".join(
            f"\n## Targets (issue 17) for {name}\n\n"
            + md_table(design_rows)
            + "\n"
            + "\n".join(f"- {k}: {v}" for k, v in overall.items())
            + "\n"
            for name, (design_rows, overall) in scored.items()
        )
    )
    if timing:
        markdown += "\n" + _timing_markdown(timing, "before the runs")
    payload = {
        "settings": vars(args), "wall_seconds": wall, "skipped": skipped,
        "timing_500x50": timing,
        "targets": {
            name: {"per_design": design_rows, "overall": overall}
            for name, (design_rows, overall) in scored.items()
        },
        "summary": table, "rows": rows,
    }  # fmt: skip
    print(write_results(args.name, payload, markdown))


if __name__ == "__main__":
    main()
