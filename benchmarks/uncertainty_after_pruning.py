"""Uncertainty after compression: do compressed Bayesian nets keep calibration and OOD detection?

Per model (`--models`: LeNet-300-100, LeNet-5-Caffe, the eVI CNN, the spike-and-slab
MLP), per direction (`--directions`: "mnist" = MNIST in / Fashion-MNIST out, "fashion"
= the reverse) and per seed, a Bayesian network and its deterministic twin are trained,
the Bayesian one is compressed the way that model is compressed (SNR search; eVI
self-compression; the spike-and-slab median-probability network, refit or not), every
restoring method of `bayesprune.restore_uncertainty` is applied, and each stage is
scored on the test set (accuracy, NLL, ECE, OOD AUROC against the other data set's
test images). The pipelines are in `_uncertainty_pipelines.py`.

Every choice is made on a validation split carved (seeded) from the training rows:
sparsities and self-compression rounds on the whole split (OOD: the other data set's
*training* images), temperatures on its first half, the restoring method on its second
half (lowest NLL). The test and OOD test sets are only scored.

Each model writes results/uncertainty_after_pruning_<model>.{json,md} (after every
seed, so a run cut short keeps what it finished); `--summary` writes the overview of
targets over every model's file. Sizes per model: `--epochs lenet300=5 lenet5=3 ...`,
`--train-limit lenet300=10000 ...`.

    python benchmarks/uncertainty_after_pruning.py --models lenet300 --epochs lenet300=40
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_results_dir_option,
    md_table,
    results_dir,
    use_results_dir,
    write_results,
)
from _uncertainty_pipelines import DEFAULTS, MODELS, Data, Settings, evi_scorer, run_model

import bayesprune as bp
from bayesprune.compress.tolerances import all_hold, as_tolerances, parse_tolerance
from bayesprune.data import load_fashion_mnist, load_mnist
from bayesprune.restore_choice import (
    auroc_floor,
    choose_by_gaps,
    ece_ceiling,
    lowest_nll,
    refusal,
)

NAME = "uncertainty_after_pruning"
LOADERS = {"mnist": load_mnist, "fashion": load_fashion_mnist}
OTHER = {"mnist": "fashion", "fashion": "mnist"}
REPORTED = (
    "accuracy",
    "nll",
    "ece",
    "ood_auroc_entropy",
    "ood_auroc_mi",
    "ood_auroc_variance",
)
TITLES = {"mnist": "MNIST in, Fashion-MNIST out", "fashion": "Fashion-MNIST in, MNIST out"}
SUMMARY_EXTRA = {  # shown in the overview beside the compression of record
    "lenet300": ("bayesian/held/pruned",),
    "lenet5": ("bayesian/held/pruned",),
    "evi": ("bayesian/held/pruned",),
    "spike_slab": ("bayesian/median/pruned+finetune",),
}
AUROCS = ("ood_auroc_entropy", "ood_auroc_mi", "ood_auroc_variance")
OLD_RULE = "chosen, AUROC vs pruned"  # the restore rule before session 6, for comparison
ECE_RULE = "chosen, ECE up to 1.5x unpruned"  # restore.ece_factor 1.5 (session 7)
TIE_RULE = "chosen, NLL ties to lower ECE"  # restore.tie_se 1, the default (session 12)


def make_data(model: str, direction: str, seed: int, args: argparse.Namespace) -> Data:
    """Training rows (shuffled, seeded) with the validation split carved off; test scorers."""
    load_in, load_out = LOADERS[direction], LOADERS[OTHER[direction]]
    x, y = load_in("train", limit=args.train_limit[model], seed=seed).tensors
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_val, half = args.val_size, args.val_size // 2
    if n_val >= len(y):
        raise SystemExit(f"--val-size {n_val} leaves no training rows of {len(y)}")
    x_ood = load_out("train", limit=n_val, seed=seed).tensors[0]
    val = (x[-n_val:], y[-n_val:])
    x_test, y_test = load_in("test", limit=args.test_limit[model], seed=0).tensors
    x_ood_test = load_out("test", limit=args.test_limit[model], seed=0).tensors[0]
    cache: dict[Any, Any] = {}

    def test(mode: str, likelihood: Any) -> Any:
        if mode not in cache:
            cache[mode] = (
                evi_scorer((x_test, y_test), x_ood_test)
                if mode == "evi"
                else bp.scorer(
                    (x_test, y_test),
                    likelihood,
                    mode=mode,
                    samples=args.mc_samples[model],
                    ood=x_ood_test,
                    seed=seed,
                )
            )
        return cache[mode]

    return Data(
        train=(x[:-n_val], y[:-n_val]),
        val=val,
        val_fit=(val[0][:half], val[1][:half]),
        val_pick=(val[0][half:], val[1][half:]),
        val_ood=x_ood,
        val_pick_ood=x_ood[half:],
        test=test,
    )


def settings_for(model: str, seed: int, args: argparse.Namespace) -> Settings:
    return Settings(
        epochs=args.epochs[model],
        lr=args.lr[model],
        batch_size=args.batch_size,
        mc_samples=args.mc_samples[model],
        val_samples=args.val_samples[model],
        restore_epochs=args.restore_epochs,
        delta=args.delta,
        uncertainty_tolerances={
            "accuracy": args.delta,
            "nll": args.nll_tolerance,
            "ece": args.ece_tolerance,
            "ood_auroc_entropy": args.auroc_tolerance,
            "ood_auroc_mi": args.auroc_tolerance,
        },
        seed=seed,
        evi_kernels=args.evi_kernels,
        evi_fraction=args.evi_fraction,
        evi_rounds=args.evi_rounds,
        evi_finetune_epochs=args.evi_finetune_epochs,
        ss_hidden=tuple(args.ss_hidden),
        ss_refit_epochs=args.ss_refit_epochs,
        ss_kl_weight=args.ss_kl_weight,
        ss_held=args.ss_held,
        gradual=args.gradual,
    )


# --- summaries and targets ------------------------------------------------------------------


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def chosen(
    run: dict[str, Any],
    group: str,
    tolerance: float = 0.02,
    floor: str = "lower",
    ece_factor: float | None = None,
    tie_se: float = 0.0,
) -> str | None:
    """The stage of `group` (e.g. "bayesian/accuracy") that `bayesprune restore` would keep:
    the lowest validation-pick NLL among the stages whose pick ECE is no worse than the
    pruned model's and whose pick OOD AUROCs fall by at most `tolerance` below the lower
    of the pruned and the unpruned model's (`floor="pruned"`: the pruned model's, the
    rule before session 6). `ece_factor`: the pick ECE may also reach that multiple of the
    unpruned model's (`restore.ece_factor`). `tie_se` > 0 (`restore.tie_se`): the eligible
    stages within that many paired standard errors of the lowest pick NLL are tied and
    the lowest pick ECE of them is kept (needs the run's "pick_gaps"; None without)."""
    base = run["pick"].get(f"{group}/pruned")
    full = run["pick"].get("bayesian/before") or None
    names = [s for s in run["pick"] if s.startswith(group + "/") or s.startswith(group + "+")]
    if base is None or not names:
        return None
    # the library's own rule pieces (bayesprune.restore_choice), on the recorded metrics
    reference = auroc_floor(base, full if floor == "lower" else None)
    ceiling = ece_ceiling(base, full, ece_factor)
    candidates = {
        stage: {
            "validation": run["pick"][stage],
            "eligible": refusal(run["pick"][stage], base, tolerance, reference, ceiling) is None,
        }
        for stage in names
    }
    if tie_se <= 0:
        return lowest_nll(candidates)
    if "pick_gaps" not in run:
        return None  # a run recorded before per-row losses: the tie rule cannot be replayed
    gaps = run["pick_gaps"]
    return choose_by_gaps(candidates, lambda a, b: tuple(gaps[a][b]), tie_se)


def groups(model: str) -> list[str]:
    """Where the restoring method is chosen: the compression of record's stages."""
    if model == "spike_slab":
        return ["bayesian/median", "bayesian/median-all-inputs", "bayesian/held"]
    return ["bayesian/accuracy", "bayesian/gradual"]  # the second only in --gradual runs


def with_chosen(runs: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """Each run with synthetic stages "<group>/chosen-on-validation" (the current rule) and
    "<group>/chosen, AUROC vs pruned" (the earlier rule), their test metrics."""
    out = []
    for run in runs:
        stages = dict(run["stages"])
        for group in groups(model):
            rules = (
                ("chosen-on-validation", "lower", None, 0.0),
                (OLD_RULE, "pruned", None, 0.0),
                (ECE_RULE, "lower", 1.5, 0.0),
                (TIE_RULE, "lower", None, 1.0),
            )
            for name, floor, factor, tie_se in rules:
                pick = chosen(run, group, floor=floor, ece_factor=factor, tie_se=tie_se)
                if pick is not None:
                    stages[f"{group}/{name}"] = {**stages[pick], "chosen": pick}
        out.append({**run, "stages": stages})
    return out


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sd over seeds of every stage's metrics."""
    rows = []
    for stage in runs[0]["stages"]:
        row: dict[str, Any] = {"stage": stage}
        row["sparsity"] = _mean_sd([r["stages"][stage]["sparsity"] for r in runs])
        for metric in REPORTED:
            values = [r["stages"][stage].get(metric) for r in runs]
            row[metric] = _mean_sd(values) if None not in values else "-"
        if "chosen" in runs[0]["stages"][stage]:
            picks = [r["stages"][stage]["chosen"].removeprefix("bayesian/") for r in runs]
            row["stage"] += " (" + ", ".join(f"{picks.count(p)}× {p}" for p in sorted(set(picks)))
            row["stage"] += ")"
        rows.append(row)
    return rows


def targets(runs: list[dict[str, Any]], delta: float) -> list[dict[str, Any]]:
    """Issue 18's targets on seed means, for every compressed Bayesian stage."""

    def mean(stage: str, metric: str) -> float | None:
        values = [r["stages"][stage].get(metric) for r in runs]
        return None if None in values else statistics.mean(values)

    base = "bayesian/before"
    det = "deterministic/same-sparsity/pruned"
    det_t = "deterministic/same-sparsity/pruned+temperature"
    rows = []
    for stage in runs[0]["stages"]:
        if not stage.startswith("bayesian/") or stage == base:
            continue
        ece = mean(stage, "ece")
        drops = {
            m: mean(base, m) - mean(stage, m)
            for m in AUROCS
            if mean(stage, m) is not None and mean(base, m) is not None
        }
        worst = max(drops.values())
        acc_drop = mean(base, "accuracy") - mean(stage, "accuracy")
        rows.append(
            {
                "stage": stage,
                "sparsity": mean(stage, "sparsity"),
                "ece": ece,
                "ece / unpruned": ece / mean(base, "ece"),
                "≤ 1.5×": ece <= 1.5 * mean(base, "ece"),
                "deterministic ece": mean(det, "ece"),
                "< deterministic": ece < mean(det, "ece"),
                "deterministic + T ece": mean(det_t, "ece"),
                "worst AUROC drop": worst,
                "≤ 0.02": worst <= 0.02,
                "accuracy drop": acc_drop,
                f"≤ {delta}": acc_drop <= delta,
            }
        )
    return rows


def per_seed_targets(runs: list[dict[str, Any]], model: str, delta: float) -> list[dict[str, Any]]:
    """`targets` seed by seed for the stage `bayesprune restore` keeps by default
    (`TIE_RULE`) in each group that has one: a mean can pass where a seed does not."""
    rows = []
    for run in runs:
        judged = {row["stage"]: row for row in targets([run], delta)}
        for group in groups(model):
            row = judged.get(f"{group}/{TIE_RULE}")
            if row is None:
                continue
            chosen = run["stages"][row["stage"]]["chosen"]
            rows.append(
                {
                    "seed": run["seed"],
                    "group": group,
                    "chosen": chosen.removeprefix(group + "/"),
                    "sparsity": round(row["sparsity"], 4),
                    "ece / unpruned": round(row["ece / unpruned"], 3),
                    "≤ 1.5×": row["≤ 1.5×"],
                    "< deterministic": row["< deterministic"],
                    "worst AUROC drop": round(row["worst AUROC drop"], 4),
                    "≤ 0.02": row["≤ 0.02"],
                    "accuracy drop": round(row["accuracy drop"], 4),
                    f"≤ {delta}": row[f"≤ {delta}"],
                }
            )
    return rows


def render(payload: dict[str, Any]) -> str:
    s, model = payload["settings"], payload["model"]
    parts = [
        f"Model: **{model}**; {s['epochs'][model]} epochs, lr {s['lr'][model]}, training rows "
        f"{s['train_limit'][model] or 'all'} ({s['val_size']} held out for validation: searches "
        "on all of it, temperature on its first half, the restoring method chosen on its "
        "second half: lowest NLL among the stages that keep its ECE and whose OOD AUROC "
        "falls at most 0.02 below the lower of the pruned and unpruned net's, as "
        "`bayesprune restore --tie-se 0` does; 'chosen, NLL ties to lower ECE': its "
        "default since session 12, the stages within one paired standard error of the "
        "lowest pick NLL tied and the lowest pick ECE of them kept (runs recorded before "
        "then have no per-row gaps and no such row); "
        "'chosen, AUROC vs pruned': the earlier rule, held "
        "against the pruned net's AUROC; 'chosen, ECE up to 1.5x unpruned': the current rule "
        "with `restore.ece_factor` 1.5, the ECE also allowed up to 1.5x the unpruned net's). "
        f"Test: {s['test_limit'][model] or 'all'} test images in, "
        f"as many of the other data set's test images out. MC predictive {s['mc_samples'][model]} "
        f"samples (test), {s['val_samples'][model]} (validation). Accuracy tolerance "
        f"{s['delta']}; the 'held' variant also holds NLL {s['nll_tolerance']}, ECE "
        f"{s['ece_tolerance']}, AUROC {s['auroc_tolerance']}. Restoring: temperature; "
        f"variances / finetune {s['restore_epochs']} epoch(s); finetune+temperature (T fitted "
        f"on the fine-tuned net, where run). Seconds per direction: "
        f"{payload.get('seconds')}.\n"
    ]
    phases = _phase_seconds(payload)
    if phases:
        parts.append(f"\nWall seconds per phase, summed over directions and seeds: {phases}.\n")
    for direction, runs in payload["directions"].items():
        if not runs:
            continue
        runs = with_chosen(runs, model)
        title = TITLES[direction]
        parts.append(
            f"\n## {title} (seeds {[r['seed'] for r in runs]}, mean ± sd)\n\n"
            + md_table(summarise(runs))
            + "\nIssue 18 targets (seed means):\n\n"
            + md_table(targets(runs, s["delta"]))
        )
        seeds = per_seed_targets(runs, model, s["delta"])
        if seeds:
            parts.append(
                f"\nPer seed, the stage kept by '{TIE_RULE}' (the CLI's default):\n\n"
                + md_table(seeds)
            )
    return "".join(parts)


def result_name(payload: dict[str, Any]) -> str:
    """uncertainty_after_pruning_<model>[_<suffix>]: a suffix keeps runs of other sizes apart."""
    suffix = payload["settings"].get("suffix")
    return f"{NAME}_{payload['model']}" + (f"_{suffix}" if suffix else "")


def _phase_seconds(payload: dict[str, Any]) -> dict[str, float]:
    """Where the time went (runs that recorded it): training, searches, scoring, restores."""
    total: dict[str, float] = {}
    for runs in payload["directions"].values():
        for run in runs:
            for phase, seconds in run.get("seconds", {}).items():
                total[phase] = round(total.get(phase, 0.0) + seconds, 1)
    return total


def save(payload: dict[str, Any]) -> None:
    write_results(result_name(payload), payload, render(payload))


def result_files() -> list[Path]:
    """Every model's result files, the committed small runs first, then suffixed ones
    (e.g. `_full`, the foundation setting)."""
    files = []
    for model in MODELS:
        files.append(results_dir() / f"{NAME}_{model}.json")
        files += sorted(results_dir().glob(f"{NAME}_{model}_*.json"))
    return [f for f in files if f.is_file()]


def summary(args: argparse.Namespace) -> None:
    """The overview: per model and direction, the compression of record with and without
    the restoring method chosen on validation, against the targets."""
    rows = []
    for path in result_files():
        payload = json.loads(path.read_text())
        model = payload["model"]
        size = payload["settings"].get("suffix") or "small"
        for direction, runs in payload["directions"].items():
            if not runs:
                continue
            runs = with_chosen(runs, model)
            table = {row["stage"]: row for row in targets(runs, payload["settings"]["delta"])}
            for i, group in enumerate(groups(model)):
                for stage in (
                    f"{group}/pruned",
                    *(SUMMARY_EXTRA[model] if i == 0 else ()),
                    f"{group}/{OLD_RULE}",
                    f"{group}/chosen-on-validation",
                    f"{group}/{ECE_RULE}",
                    f"{group}/{TIE_RULE}",
                ):
                    if stage in table:
                        picks = [r["stages"][stage].get("chosen", "") for r in runs]
                        picks = [p.removeprefix("bayesian/") for p in picks if p]
                        counts = ", ".join(f"{picks.count(p)}× {p}" for p in sorted(set(picks)))
                        shown = f" ({counts})" if picks else ""
                        rows.append(
                            {
                                "model": model,
                                "run": size,
                                "in": direction,
                                "seeds": len(runs),
                                "stage": stage + shown,
                                **{k: v for k, v in table[stage].items() if k != "stage"},
                            }
                        )
    md = (
        "Per model, run and direction: the compression of record, as pruned and with the "
        "restoring method chosen on validation (in brackets), against issue 18's targets "
        "(seed means; the per-model files hold every stage and the sd). Run 'small': the "
        "committed small configurations (uncertainty_after_pruning_<model>); other runs by the "
        "suffix of their file: 'full' the foundation setting, 's7' session 7's rerun of the "
        "small configurations with every restoring method, 's7mid' larger ones.\n\n"
        + md_table(rows)
    )
    print(md)
    write_results(NAME + "_summary", {"rows": rows}, md)


def ece_tolerance(text: str) -> float | str:
    """A number (absolute) or 'Fx' / 'P%' (relative), checked as the library parses it."""
    try:
        value: float | str = float(text)
    except ValueError:
        value = text
    try:
        parse_tolerance("ece", value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def replay_held(ece: float | str) -> None:
    """The sparsity each recorded "held" search would have kept with the ECE tolerance
    `ece` instead of its own: the largest point of its validation curve at which every
    tolerance holds (validation only; the bisection points are the recorded ones)."""
    rows = []
    for path in result_files():
        payload = json.loads(path.read_text())
        for direction, runs in payload["directions"].items():
            for run in runs:
                held = run["compression"].get("bayesian/held", {})
                if "curve" not in held:
                    continue
                tolerances = {t["metric"]: t["tolerance"] for t in held["tolerances"]}
                recorded = as_tolerances({**tolerances, "ece": ece})
                passing = [
                    point["sparsity"]
                    for point in held["curve"]
                    if all_hold(recorded, point, held["baselines"])
                ]
                rows.append(
                    {
                        "file": path.stem.removeprefix(NAME + "_"),
                        "in": direction,
                        "seed": run["seed"],
                        "unpruned validation ECE": held["baselines"]["ece"],
                        "held (recorded)": held["sparsity"],
                        f"held, ECE {ece}": max(passing, default=0.0),
                        "accuracy search": run["compression"]
                        .get("bayesian/accuracy", {})
                        .get("sparsity"),
                    }
                )
    print(md_table(rows))


def per_model(values: list[str], kind: type, key: str, default: Any = None) -> dict[str, Any]:
    """`MODEL=VALUE` pairs (a bare VALUE: every model) over the defaults of `key`."""
    out = {m: DEFAULTS[m].get(key, default) for m in MODELS}
    for item in values:
        model, _, value = item.rpartition("=")
        if (model and model not in out) or not value:
            raise SystemExit(f"--{key.replace('_', '-')} takes [MODEL=]VALUE, MODEL in {MODELS}")
        parsed = None if value.lower() == "all" else kind(value)
        out.update({model: parsed} if model else dict.fromkeys(out, parsed))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--directions", nargs="+", choices=list(LOADERS), default=list(LOADERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", nargs="*", default=[], help="MODEL=N (defaults per model)")
    parser.add_argument("--train-limit", nargs="*", default=[], help="MODEL=ROWS or MODEL=all")
    parser.add_argument("--lr", nargs="*", default=[], help="MODEL=LR")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--test-limit", nargs="*", default=[], help="[MODEL=]test images per set")
    parser.add_argument("--mc-samples", nargs="*", default=[], help="[MODEL=]N, test (30)")
    parser.add_argument("--val-samples", nargs="*", default=[], help="[MODEL=]N, validation (10)")
    parser.add_argument("--delta", type=float, default=0.005, help="accuracy tolerance")
    parser.add_argument("--nll-tolerance", type=float, default=0.02)
    parser.add_argument(
        "--ece-tolerance",
        type=ece_tolerance,
        default="1.5x",
        help="absolute (0.005) or relative to the unpruned net's validation ECE ('1.5x', '50%%')",
    )
    parser.add_argument("--auroc-tolerance", type=float, default=0.01)
    parser.add_argument("--restore-epochs", type=int, default=2)
    parser.add_argument("--evi-kernels", type=int, default=32)
    parser.add_argument("--evi-fraction", type=float, default=0.25, help="kernels per round")
    parser.add_argument("--evi-rounds", type=int, default=3)
    parser.add_argument("--evi-finetune-epochs", type=int, default=1)
    parser.add_argument("--ss-hidden", type=int, nargs="+", default=[400, 400])
    parser.add_argument("--ss-refit-epochs", type=int, default=3)
    parser.add_argument(
        "--ss-kl-weight", type=float, default=None, help="default: 0.1 x training rows / 60,000"
    )
    parser.add_argument(
        "--ss-held",
        action="store_true",
        help="spike-and-slab: also the median rule on hidden units with every input kept "
        "('bayesian/median-all-inputs') and the search of the share of units to drop by PIP "
        "holding the uncertainty tolerances ('bayesian/held')",
    )
    parser.add_argument(
        "--gradual",
        action="store_true",
        help="LeNets: also a Bayesian net pruned inside training (compress.GradualPruning) to "
        "the accuracy search's sparsity, cubic schedule from epoch E/4 to 3E/4 "
        "('bayesian/gradual'), with every restoring method",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--suffix", default="", help="result files uncertainty_after_pruning_<model>_<suffix>"
    )
    parser.add_argument("--summary", action="store_true", help="only write the overview")
    parser.add_argument(
        "--replay-held",
        type=ece_tolerance,
        metavar="ECE_TOLERANCE",
        help="only print the sparsity every recorded held search keeps with this ECE "
        "tolerance (e.g. 1.5x), from its validation curve",
    )
    parser.add_argument("--rerender", metavar="JSON", help="only rewrite one model's results")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="combine one model's runs of other directions / seeds (separate processes)",
    )
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    if args.summary:
        summary(args)
        return
    if args.replay_held is not None:
        replay_held(args.replay_held)
        return
    if args.rerender:
        rerender(args.rerender)
        return
    if args.merge:
        merge(args.merge, args.suffix)
        return
    del args.summary, args.rerender, args.merge, args.replay_held
    args.epochs = per_model(args.epochs, int, "epochs")
    args.train_limit = per_model(args.train_limit, int, "train_limit")
    args.lr = per_model(args.lr, float, "lr")
    args.test_limit = per_model(args.test_limit, int, "test_limit")
    args.mc_samples = per_model(args.mc_samples, int, "mc_samples", 30)
    args.val_samples = per_model(args.val_samples, int, "val_samples", 10)
    torch.set_num_threads(args.threads)
    for model in args.models:
        payload: dict[str, Any] = {
            "model": model,
            "settings": vars(args),
            "directions": {d: [] for d in args.directions},
            "seconds": {},
        }
        for direction in args.directions:
            start = time.perf_counter()
            for seed in args.seeds:
                print(f"{model} / {direction} / seed {seed}", flush=True)
                data = make_data(model, direction, seed, args)
                run = run_model(model, data, settings_for(model, seed, args))
                payload["directions"][direction].append({"seed": seed, **run})
                payload["seconds"][direction] = round(time.perf_counter() - start)
                save(payload)


def merge(paths: list[str], suffix: str = "") -> None:
    """One model's result from runs of different directions or seeds with the same settings
    (run as separate processes): every seed of every direction, the summed seconds, every
    command, the first run's machine. `suffix` names the merged file (default: the first
    run's; the parts' own suffixes may differ)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    for part in parts[1:]:
        shared = (set(part["settings"]) & set(first["settings"])) - {
            "directions", "seeds", "suffix", "results_dir",
        }  # fmt: skip
        differ = [k for k in shared if part["settings"][k] != first["settings"][k]]
        if part["model"] != first["model"] or differ:
            raise SystemExit(f"{paths[0]} and the others differ in model or settings {differ}")
    payload = {k: v for k, v in first.items() if k not in ("benchmark", "command", "machine")}
    by_seed: dict[str, dict[int, Any]] = {}
    payload["seconds"] = {}
    for part in parts:
        for direction, runs in part["directions"].items():
            for run in runs:  # a seed run twice: the first file's run is kept
                by_seed.setdefault(direction, {}).setdefault(run["seed"], run)
            seconds = part["seconds"].get(direction)
            if seconds is not None:
                payload["seconds"][direction] = payload["seconds"].get(direction, 0) + seconds
    payload["directions"] = {d: [runs[k] for k in sorted(runs)] for d, runs in by_seed.items()}
    seeds = sorted({r["seed"] for runs in payload["directions"].values() for r in runs})
    payload["settings"] = {
        **first["settings"],
        "directions": list(payload["directions"]),
        "seeds": seeds,
        "suffix": suffix or first["settings"].get("suffix", ""),
    }
    command = " ; ".join(dict.fromkeys(p["command"] for p in parts))
    write_results(result_name(payload), payload, render(payload), command, first["machine"])


def rerender(path: str) -> None:
    """Rewrite one model's markdown from its JSON, keeping its command and machine."""
    payload = json.loads(Path(path).read_text())
    command, machine_info = payload.pop("command"), payload.pop("machine")
    payload.pop("benchmark", None)
    write_results(result_name(payload), payload, render(payload), command, machine_info)


if __name__ == "__main__":
    main()
