"""Development probe for `n_init`: does the best of several random starts select better?

For each design of `small_tables.py` given (`--designs`; default: the regression ones)
and each development seed (100, 101, ...; never the reported splits 0-4), the table with
its 20 noise columns is split 75/25 (`random_state` = seed, stratified for
classification) and the design's default estimator is fitted on the 75 % from each of
`--starts` random starts, one start per fit (`n_init=1`), the k-th start with the seed the
k-th start of `n_init=K, random_state=seed` draws: so "the best of
the first k starts" by the ELBO below is exactly what `n_init=k` keeps (the estimator's
rule without early stopping). Per start: its score (`init_scores_`: the ELBO per row over
the last 50 epochs), its training NLL over the same epochs, the columns kept and the
score (R² or accuracy) on the split's own 25 %. The summary compares, per design and k,
the start kept by the ELBO with the one the training NLL alone would keep (the first rule
tried) and, for a regressor, with the mean prediction of the k starts (all of them, or those
that keep the ELBO's columns; the selection unchanged).

    python benchmarks/small_tables_restarts.py --seeds 100 101 102 103 104 105 --starts 5 --jobs 2

`--timing DESIGN` instead measures what the starts cost: default regressor fits with
`n_init=1` and `n_init=3` alternating (`--repeats` each, one thread, CPU seconds, after a
short warm-up fit) on the design's development split `--seeds[0]`.

Results: benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from _common import add_results_dir_option, md_table, use_results_dir, write_results
from sklearn.model_selection import train_test_split
from small_tables import DESIGNS, with_noise

from bayesprune.estimator_defaults import RESTART_SCORE_EPOCHS
from bayesprune.sklearn import BayesianMLPClassifier, BayesianMLPRegressor

REGRESSION = [d for d, (task, _) in DESIGNS.items() if task == "regression"]
ESTIMATORS = {"regression": BayesianMLPRegressor, "classification": BayesianMLPClassifier}


def _start_state(seed: int, start: int) -> np.random.RandomState:
    """A RandomState whose next draw is the seed of start `start` of an `n_init` fit with
    `random_state=seed`."""
    state = np.random.RandomState(seed)
    for _ in range(start):
        state.randint(2**31 - 1)
    return state


def run_starts(design: str, seed: int, starts: int) -> list[dict[str, Any]]:
    """Every start of the design's default estimator on one development split, one row each."""
    torch.set_num_threads(1)
    task, X, y, truth, p = with_noise(design, seed)
    strat = y if task == "classification" else None  # as small_tables.py splits
    Xa, Xv, ya, yv = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=strat)
    rows = []
    for start in range(starts):
        est = ESTIMATORS[task](n_init=1, random_state=_start_state(seed, start))
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(Xa, ya)
        tail = est.history_[-RESTART_SCORE_EPOCHS:]
        kept = est.get_support()
        true = np.zeros(X.shape[1], dtype=bool)
        true[truth if truth is not None else []] = True
        rows.append({
            "design": design, "seed": seed, "start": start, "score": est.init_scores_[0],
            "nll": float(np.mean([r["nll"] for r in tail])),
            "kept": np.flatnonzero(kept).tolist(), "true_kept": int((kept & true).sum()),
            "false_kept": int((kept & ~true).sum()) if truth is not None else None,
            "noise_kept": int(kept[p:].sum()), "true": len(truth or []),
            "score_test": float(est.score(Xv, yv)),
            "pred_test": est.predict(Xv).tolist() if task == "regression" else None,
            "y_test": np.asarray(yv).tolist() if task == "regression" and start == 0 else None,
            "seconds": round(time.perf_counter() - began, 1),
        })  # fmt: skip
    return rows


RULES = {"ELBO": lambda r: r["score"], "training NLL": lambda r: -r["nll"]}
"""How a start is kept: the estimator's score (the ELBO per row), or the training NLL."""


def _mean(values: list[float], digits: int) -> float | str:
    return round(float(np.mean(values)), digits) if values else ""


def summary(rows: list[dict[str, Any]], starts: int) -> list[dict[str, Any]]:
    """Per design and k: the start kept by the ELBO (`n_init=k`) and by the training NLL,
    averaged over the seeds (TPR where the support is known, columns kept that are not
    true, noise columns kept, held-out R² or accuracy)."""
    by_split = collections.defaultdict(list)
    for r in rows:
        by_split[(r["design"], r["seed"])].append(r)
    out = []
    for design in dict.fromkeys(r["design"] for r in rows):
        splits = [v for (d, _), v in by_split.items() if d == design]
        splits = [sorted(v, key=lambda r: r["start"]) for v in splits]
        for k in sorted({1, min(3, starts), starts}):
            for rule, pick in RULES.items():
                if k == 1 and rule != "ELBO":
                    continue
                chosen = [max(s[:k], key=pick) for s in splits]
                known = [c for c in chosen if c["true"]]
                out.append({
                    "design": design, "starts": k, "kept by": rule if k > 1 else "(one start)",
                    "predicts": "the kept start",
                    "splits": len(chosen),
                    "TPR": _mean([c["true_kept"] / c["true"] for c in known], 3),
                    "false kept": _mean([c["false_kept"] for c in known], 2),
                    "noise kept": _mean([c["noise_kept"] for c in chosen], 2),
                    "held-out score": _mean([c["score_test"] for c in chosen], 4),
                })  # fmt: skip
        out.extend(_averaged(design, splits, starts))
    return out


def _averaged(design: str, splits: list[list[dict[str, Any]]], starts: int) -> list[dict]:
    """Regression: the held-out R² of the mean prediction of the first k starts (all of
    them, or those whose kept columns equal the ELBO's choice), selection unchanged."""
    if splits[0][0]["pred_test"] is None:
        return []
    out = []
    for k in sorted({min(3, starts), starts} - {1}):
        for agree in (False, True):
            r2 = []
            for split in splits:
                kept = max(split[:k], key=RULES["ELBO"])
                members = [s for s in split[:k] if not agree or s["kept"] == kept["kept"]]
                mean = np.mean([s["pred_test"] for s in members], axis=0)
                y = np.asarray(split[0]["y_test"])
                r2.append(1 - np.sum((y - mean) ** 2) / np.sum((y - y.mean()) ** 2))
            out.append({
                "design": design, "starts": k, "kept by": "ELBO",
                "predicts": "mean of starts with its columns" if agree else "mean of all starts",
                "splits": len(splits), "TPR": "", "false kept": "", "noise kept": "",
                "held-out score": _mean(r2, 4),
            })  # fmt: skip
    return out


def time_starts(design: str, seed: int, repeats: int) -> dict[str, Any]:
    """CPU seconds of default regressor fits with one and with three starts, alternating."""
    torch.set_num_threads(1)
    _, X, y, _, _ = with_noise(design, seed)
    Xa, _, ya, _ = train_test_split(X, y, test_size=0.25, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        BayesianMLPRegressor(min_steps=20, max_steps=20, random_state=0).fit(Xa, ya)
        seconds: dict[int, list[float]] = {1: [], 3: []}
        for _ in range(repeats):
            for n_init in seconds:
                began = time.process_time()
                BayesianMLPRegressor(n_init=n_init, random_state=seed).fit(Xa, ya)
                seconds[n_init].append(round(time.process_time() - began, 2))
    ratio = float(np.median(seconds[3]) / np.median(seconds[1]))
    return {"design": design, "seed": seed, "cpu_seconds": seconds, "ratio": round(ratio, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--designs", nargs="+", choices=list(DESIGNS), default=REGRESSION)
    parser.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102, 103, 104, 105])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timing", choices=REGRESSION, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="small_tables_restarts")
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    if any(s < 100 for s in args.seeds):
        parser.error("development seeds start at 100 (0-99 are the reported splits' range)")
    if args.timing:
        timing = time_starts(args.timing, args.seeds[0], args.repeats)
        markdown = (
            f"{args.timing}, development split {timing['seed']}, one thread, fits alternating: "
            f"CPU seconds with n_init=1 {timing['cpu_seconds'][1]}, with n_init=3 "
            f"{timing['cpu_seconds'][3]}; ratio of medians {timing['ratio']}.\n"
        )
        print(write_results(args.name, {"settings": vars(args), "timing": timing}, markdown))
        return
    tasks = [(d, s, args.starts) for s in args.seeds for d in args.designs]
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        rows = [r for part in pool.map(run_starts, *zip(*tasks, strict=True)) for r in part]
    table = summary(rows, args.starts)
    markdown = (
        f"Development splits {args.seeds}, each design's default estimator from {args.starts} "
        "random starts each (one thread per fit); per design and number of starts k, the "
        "start kept by the ELBO (what `n_init=k` keeps) or by the training NLL, averaged over "
        "the splits. TPR and columns kept that are not true: simulations only. Held-out "
        "score: R² (regression) or accuracy (classification) on the split's 25 %.\n\n"
        + md_table(table)
    )
    rows = [{k: v for k, v in r.items() if k not in ("pred_test", "y_test")} for r in rows]
    print(write_results(args.name, {"settings": vars(args), "summary": table, "rows": rows},
                        markdown))  # fmt: skip


if __name__ == "__main__":
    main()
