"""How the estimators' defaults were chosen: candidate settings on development splits only.

For each design of `small_tables.py` and each development seed (100, 101, ...: never the
splits 0-4 that `small_tables.py` reports), the table is split 75/25 as there and the
25 % test part is set aside; the 75 % is split again 75/25 (`random_state` = seed + 7)
and every candidate is fitted on the first part and scored on the second (with `--holdout
test`: fitted on the 75 % and scored on that development split's own 25 %, four times the
rows of the validation part; still never a reported split). Candidates are
keyword arguments of `BayesianMLPClassifier` / `BayesianMLPRegressor` (JSON), compared
with the baselines ("base:rf", "base:linear", "base:mlp") on the same rows. One JSON line
per fit (score, columns kept, TPR / FDR, the PIPs of the real columns, steps, seconds).

    python benchmarks/small_tables_tuning.py --configs '{"default": {}, "h32":
        {"hidden_layer_sizes": [32]}}' --designs wine diabetes --seeds 100 101 --out /tmp/t.jsonl

With `--variants` (a diagnosis: is a gap the selection or the predictor?) each split gets
one selection fit (`refit=False`) and then the `REFIT_VARIANTS` predictors refitted on it
(columns by PIP cut, every real column as an oracle, correlated proxies, several seeds,
other widths, steps or KL weights), each scored on the split's own 25 %.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from small_tables import DESIGNS, OURS, RF, _support, methods, with_noise
from torch import nn

from bayesprune import models
from bayesprune.likelihoods import Gaussian
from bayesprune.sklearn import BayesianMLPClassifier, BayesianMLPRegressor

BASELINES = {"base:rf": RF, "base:mlp": "MLP (sklearn)", "base:linear": None}


class ReluWithLinearUnits(nn.Module):
    """ReLU on every hidden unit but the last `linear`, which pass their input unchanged:
    a linear path from the input scales (or gates) to the output beside the ReLUs."""

    def __init__(self, linear: int) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = x.shape[-1] - self.linear
        return torch.cat([torch.relu(x[..., :split]), x[..., split:]], -1)


PROBE_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu_linear2": lambda: ReluWithLinearUnits(2),
    "relu_linear4": lambda: ReluWithLinearUnits(4),
    "identity": nn.Identity,
}
"""Activations a candidate may name (`{"activation": "relu_linear2"}`) that the library
does not offer: probes of a linear path (session 32; not adopted). Registered in the
library's table of activations by this script only."""
models._ACTIVATIONS.update(PROBE_ACTIVATIONS)


def run(
    name: str, kwargs: dict[str, Any], design: str, seed: int, holdout: str = "validation"
) -> dict[str, Any]:
    """One candidate on one development split, scored on validation rows (or, with
    `holdout="test"`, fitted on the split's training part and scored on its 25 %)."""
    torch.set_num_threads(1)
    task, X, y, truth, p = with_noise(design, seed)
    strat = y if task == "classification" else None
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.25, random_state=seed, stratify=strat
    )
    strat = y_tr if task == "classification" else None
    if holdout == "test":
        Xa, Xv, ya, yv = X_tr, X_te, y_tr, y_te
    else:
        Xa, Xv, ya, yv = train_test_split(
            X_tr, y_tr, test_size=0.25, random_state=seed + 7, stratify=strat
        )
    if name in BASELINES:
        candidates = methods(task, seed)
        key = BASELINES[name] or next(k for k in candidates if k.startswith(("L1", "Lasso")))
        est = candidates[key]
    else:
        key = OURS
        cls = BayesianMLPClassifier if task == "classification" else BayesianMLPRegressor
        est = cls(random_state=seed, **kwargs)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(Xa, ya)
    row: dict[str, Any] = {
        "cfg": name, "design": design, "seed": seed, "holdout": holdout,
        "score": float(est.score(Xv, yv)),
        "seconds": time.perf_counter() - start,
        "warned": any(issubclass(w.category, UserWarning) for w in caught),
    }  # fmt: skip
    support = _support(key, est)
    if support is not None:
        row["real"], row["noise"] = int(support[:p].sum()), int(support[p:].sum())
        if truth is not None:
            kept = set(np.flatnonzero(support).tolist())
            row["tpr"] = len(kept & set(truth)) / len(truth)
            row["fdr"] = len(kept - set(truth)) / max(len(kept), 1)
    if key == OURS:
        row["pip_real"] = [round(float(v), 2) for v in est.feature_importances_[:p]]
        row["pip_noise"] = [round(float(v), 2) for v in est.feature_importances_[p:]]
        if est.importance_kind_ == "scale":  # the input scales' log α, for a threshold
            log_alpha = np.log1p(-est.feature_importances_) - np.log(est.feature_importances_)
            row["log_alpha_real"] = [round(float(v), 2) for v in log_alpha[:p]]
            row["log_alpha_noise"] = [round(float(v), 2) for v in log_alpha[p:]]
            weights = est.model_[0].log_alpha().double().numpy()  # effective z w, (out, in)
            row["weights_kept"] = (weights < 3).sum(0).tolist()
            row["weight_log_alpha_min"] = [round(float(v), 2) for v in weights.min(0)]
        row["steps"] = est.n_steps_
    return row


REFIT_VARIANTS: dict[str, dict[str, Any]] = {
    "pip>0.5": {"cut": 0.5},
    "pip>0.2": {"cut": 0.2},
    "pip>0.05": {"cut": 0.05},
    "all real (oracle)": {"cut": "real"},
    "pip>0.5, 3 seeds": {"cut": 0.5, "members": 3},
    "pip>0.5, hidden 16": {"cut": 0.5, "hidden_layer_sizes": (16,)},
    "pip>0.5, 1000 steps": {"cut": 0.5, "refit_steps": 1000},
    "pip>0.5, 250 steps": {"cut": 0.5, "refit_steps": 250},
    "pip>0.5, KL 1.0": {"cut": 0.5, "kl": 1.0},
    "pip>0.5, linear": {"cut": 0.5, "hidden_layer_sizes": ()},
    "pip>0.5, hidden 8": {"cut": 0.5, "hidden_layer_sizes": (8,)},
    "pip>0.5 + proxies |r|>0.7": {"cut": 0.5, "proxies": 0.7},
    "pip>0.5 + proxies |r|>0.5": {"cut": 0.5, "proxies": 0.5},
    "pip>0.5 + proxies |r|>0.4": {"cut": 0.5, "proxies": 0.4},
    "pip>0.5 + proxies |r|>0.3": {"cut": 0.5, "proxies": 0.3},
    "pip>0.5 + proxies |r|>0.5, linear": {
        "cut": 0.5,
        "proxies": 0.5,
        "hidden_layer_sizes": (),
    },
    "pip>0.5, gaussian refit": {"cut": 0.5, "family": "gaussian"},
    "pip>0.5 + proxies |r|>0.4, gaussian refit": {"cut": 0.5, "proxies": 0.4, "family": "gaussian"},
}
"""Diagnosis (`--variants`): predictors refitted on one selection fit's PIPs (`cut`: the
PIP above which a column is read; "real": every real column, an oracle), with `members`
refits of different seeds averaged, or other refit settings (`family`: the refit network's
family instead of the selection's)."""


def _score_members(
    est: Any, members: list, columns: np.ndarray, Xv: Any, yv: Any, mode: str = "mc"
) -> float:
    """Held-out score of the average predictive of the refitted `members` (`mode`: the
    estimator's predict_mode for the score)."""
    preds = []
    saved = est.predict_mode
    est.predict_mode = mode
    for trained in members:
        est.refit_model_, est.refit_likelihood_ = trained.model, trained.likelihood
        est.support_ = est.refit_columns_ = columns
        preds.append(est.predict_proba(Xv) if hasattr(est, "classes_") else est.predict(Xv))
    est.predict_mode = saved
    avg = np.mean(preds, axis=0)
    if hasattr(est, "classes_"):
        return float(np.mean(est.classes_[avg.argmax(1)] == yv))
    return float(1 - np.sum((yv - avg) ** 2) / np.sum((yv - np.mean(yv)) ** 2))


def run_variants(design: str, seed: int, names: list[str] | None = None) -> list[dict[str, Any]]:
    """One selection fit (refit=False) on a development split's 75 %, then every
    `REFIT_VARIANTS` predictor refitted on it, each scored on the split's own 25 %."""
    torch.set_num_threads(1)
    task, X, y, _, p = with_noise(design, seed)
    strat = y if task == "classification" else None
    Xa, Xv, ya, yv = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=strat)
    clf = task == "classification"
    est = (BayesianMLPClassifier if clf else BayesianMLPRegressor)(random_state=seed, refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(Xa, ya)
    x = est._inputs(Xa, reset=False)
    if clf:
        targets = torch.as_tensor(np.searchsorted(est.classes_, ya), dtype=torch.long)
        n_out, lik = len(est.classes_), "categorical"
    else:
        targets = torch.as_tensor((ya - est.y_mean_) / est.y_scale_, dtype=torch.float32)
        n_out, lik = 1, Gaussian()
    pips, base = est.feature_importances_, est.get_params()
    rows = []
    for name, v in REFIT_VARIANTS.items():
        if names is not None and name not in names:
            continue
        cols = np.arange(len(pips)) < p if v["cut"] == "real" else pips > v["cut"]
        if not cols.any():
            cols = est.support_.copy()
        if "proxies" in v:  # columns correlated with a kept one (training rows)
            r = np.abs(np.corrcoef(x.numpy(), rowvar=False))
            cols = cols | (np.nan_to_num(r[cols]) > v["proxies"]).any(0)
        start = time.perf_counter()
        members = []
        for m in range(v.get("members", 1)):
            est.set_params(**{k: v[k] for k in ("hidden_layer_sizes", "refit_steps") if k in v})
            est.seed_ = est.seed_ + m
            kl, family = est.kl_weight_, est.family_
            est.kl_weight_, est.family_ = v.get("kl", kl), v.get("family", family)
            members.append(est._refit(x, targets, n_out, lik, cols))
            est.kl_weight_, est.seed_, est.family_ = kl, est.seed_ - m, family
            est.set_params(**base)
        score = _score_members(est, members, cols, Xv, yv)
        rows.append({
            "cfg": name, "design": design, "seed": seed, "holdout": "test", "score": score,
            "score_mean": _score_members(est, members, cols, Xv, yv, mode="mean"),
            "seconds": time.perf_counter() - start, "real": int(cols[:p].sum()),
            "noise": int(cols[p:].sum()), "neg_elbo": _neg_elbo(members[0].history, len(x)),
        })  # fmt: skip
    by = {r["cfg"]: r for r in rows if r["cfg"] in ("pip>0.5", "pip>0.5, linear")}
    if len(by) == 2:
        best = min(by.values(), key=lambda r: r["neg_elbo"])
        rows.append({**best, "cfg": "pip>0.5, MLP or linear by ELBO", "chose": best["cfg"]})
    return rows


def _neg_elbo(history: list[dict], n_rows: int, last: int = 50) -> float:
    """The negative ELBO per training row (full KL) over the last `last` epochs' records."""
    tail = history[-last:]
    return float(np.mean([r["nll"] + r["kl"] / n_rows for r in tail]))


def summary(rows: list[dict]) -> str:
    """Mean validation score, noise kept and TPR per candidate (rows) and design (columns)."""
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["cfg"], r["design"])].append(r)
    designs = list(dict.fromkeys(r["design"] for r in rows))
    lines = ["| candidate | " + " | ".join(designs) + " |", "|---" * (len(designs) + 1) + "|"]
    for cfg in dict.fromkeys(r["cfg"] for r in rows):
        cells = []
        for d in designs:
            g = groups.get((cfg, d), [])
            cell = f"{statistics.mean(r['score'] for r in g):.3f}" if g else ""
            if g and "noise" in g[0]:
                cell += f" n{statistics.mean(r['noise'] for r in g):.1f}"
            if g and "tpr" in g[0]:
                cell += f" t{statistics.mean(r['tpr'] for r in g):.2f}"
            cells.append(cell)
        lines.append(f"| {cfg} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="{}", help="JSON {name: estimator kwargs}")
    parser.add_argument("--designs", nargs="+", choices=list(DESIGNS), default=list(DESIGNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[100, 101])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument(
        "--holdout", choices=["validation", "test"], default="validation",
        help="score on validation rows carved from the training part, or on the development "
        "split's own 25 %% (more rows; still never a reported split)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="JSON-lines file (appended)")
    parser.add_argument(
        "--variant-names", nargs="+", default=None,
        help="with --variants: only these REFIT_VARIANTS (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--variants", action="store_true",
        help="diagnosis: one selection fit per split, then the REFIT_VARIANTS predictors on "
        "it (held-out 25 %%; --configs ignored)",
    )  # fmt: skip
    args = parser.parse_args()
    if any(s < 100 for s in args.seeds):
        parser.error("development seeds start at 100 (0-99 are the reported splits' range)")
    if args.variants:
        _main_variants(args)
        return
    configs = json.loads(args.configs)
    jobs = [
        (n, kw, d, s, args.holdout)
        for n, kw in configs.items()
        for d in args.designs
        for s in args.seeds
    ]
    rows = []
    with ProcessPoolExecutor(args.jobs) as pool, open(args.out, "a") as out:
        for row in pool.map(run, *zip(*jobs, strict=True)):
            out.write(json.dumps(row) + "\n")
            out.flush()
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(summary(rows))


def _main_variants(args: argparse.Namespace) -> None:
    rows = []
    jobs = [(d, s, args.variant_names) for d in args.designs for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool, open(args.out, "a") as out:
        for group in pool.map(run_variants, *zip(*jobs, strict=True)):
            for row in group:
                out.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
            out.flush()
            rows += group
    print(summary(rows))


if __name__ == "__main__":
    main()
