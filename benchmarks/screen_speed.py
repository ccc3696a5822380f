"""Evidence screen speed at p = 1000: seconds per replicate and TPR / FDR, old vs new.

Per replicate (a fresh data set per seed) the screen starts from the inputs the gates
keep on that design (benchmarks/README.md, spike_slab_bai rows: x2…x5 on Bai's
simulation, x1, x2, x5 on the correlated one) and must add the rest (x1; x3 and x4)
and no noise input. Timed: `screen_features` alone, wall and process CPU seconds,
on `--threads` threads, with the 1-minute load average before and after (the
machine may be shared). `--impls old` runs the screen as committed at a362f81 (vmap
over `functional_call` of stacked modules), loaded from git into a temporary module;
`new` is the current `bayesprune.screen` (stage 1 narrowed at p = 1000), `exact` the
same without the narrowing (`narrowing=None`: the decisions it must keep).

    python benchmarks/screen_speed.py --design bai --replicates 3 --impls new old
    python benchmarks/screen_speed.py --design correlated --replicates 3 --impls new old
    python benchmarks/screen_speed.py --design correlated --step-cost
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import md_table, write_results

from bayesprune import metrics
from bayesprune.data import bai2020, correlated

DESIGNS = {"bai": bai2020, "correlated": correlated}
# what the gates keep (10/10 replicates in the committed spike_slab_bai runs)
GATES_KEEP = {"bai": [1, 2, 3, 4], "correlated": [0, 1, 4]}
OLD_COMMIT = "a362f81"
REPO = Path(__file__).resolve().parent.parent


def old_module() -> Any:
    """bayesprune/screen.py as committed at OLD_COMMIT, imported as bayesprune._screen_old."""
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:src/bayesprune/screen.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="screen_old_"))
    path = folder / "screen_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("bayesprune._screen_old", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def old_screen() -> Any:
    return old_module().screen_features


def new_screen(args: argparse.Namespace) -> Any:
    """The current screen, its narrowing's settings changed where the arguments say."""
    import dataclasses

    from bayesprune.screen import screen_features
    from bayesprune.screen_batched import Narrowing

    changes = {
        field: value
        for field, value in (
            ("first_round", args.narrow_from_round), ("at", args.narrow_at),
            ("keep", args.narrow_keep), ("null", args.narrow_null),
        )
        if value is not None
    }  # fmt: skip
    if not changes:
        return screen_features
    narrowing = dataclasses.replace(Narrowing(), **changes)
    return lambda *a, **kwargs: screen_features(*a, narrowing=narrowing, **kwargs)


def exact_screen() -> Any:
    """The current screen without stage 1's narrowing: every candidate trains to the end."""
    from bayesprune.screen import screen_features

    return lambda *args, **kwargs: screen_features(*args, narrowing=None, **kwargs)


def step_cost(args: argparse.Namespace, repeats: int = 5) -> dict[str, Any]:
    """CPU ms per training step of stage 1's paired run, old vs new, interleaved.

    One run of all candidates trained 1 and 4 epochs (one Monte-Carlo sample in the
    evaluation): the difference over the 3 extra epochs' steps is the step cost without
    the setup and evaluation. Median over `repeats`, after one warm-up run of each.
    """
    from bayesprune.likelihoods import make_likelihood
    from bayesprune.screen_batched import Training, paired_gains

    old = old_module()
    data = DESIGNS[args.design](n=args.n, p=args.p, seed=args.seed)
    x, y = data.train
    x = x.float()
    selected = GATES_KEEP[args.design]
    candidates = [i for i in range(args.p) if i not in selected]
    steps = 3 * math.ceil(len(x) / 128)
    runs: dict[str, Any] = {
        "old": lambda kw: old._paired_gains(x, y, selected, candidates, old._Training(**kw), 0),
        "new": lambda kw: paired_gains(x, y, selected, candidates, Training(**kw), [0]),
    }

    def settings(epochs: int) -> dict[str, Any]:
        return dict(
            likelihood=make_likelihood("gaussian"), out_features=1, hidden=(7, 7, 7),
            activation="relu", epochs=epochs, min_steps=0, lr=1e-2, batch_size=128,
            mc_samples=1,
        )  # fmt: skip

    for run in runs.values():  # warm-up: one-time costs stay out of the differences
        run(settings(1))
    cost: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(repeats):
        for impl, run in runs.items():
            seconds = []
            for epochs in (1, 4):
                started = time.process_time()
                run(settings(epochs))
                seconds.append(time.process_time() - started)
            cost[impl].append(1e3 * (seconds[1] - seconds[0]) / steps)
    median = {impl: statistics.median(v) for impl, v in cost.items()}
    return {
        "candidates": len(candidates),
        "cpu_ms_per_step": {k: [round(v, 1) for v in vs] for k, vs in cost.items()},
        "median_cpu_ms_per_step": {k: round(v, 1) for k, v in median.items()},
        "old_over_new": round(median["old"] / median["new"], 2),
        "load_1min": round(os.getloadavg()[0], 2),
    }


def trajectory(args: argparse.Namespace, seed: int, fractions: list[float]) -> dict[str, Any]:
    """Stage 1 of round one, exact, with every candidate's ELBO gain measured at
    `fractions` of the optimiser steps: where the true features rank then (what
    `Narrowing.keep` must cover), and their final robust z under the null of all
    candidates vs of random samples of `Narrowing.null` (what narrowing changes)."""
    from bayesprune.likelihoods import make_likelihood
    from bayesprune.screen_batched import Narrowing, Training, _batched_run

    data = DESIGNS[args.design](n=args.n, p=args.p, seed=seed)
    x, y = data.train
    selected = sorted(GATES_KEEP[args.design] + args.also_selected)
    candidates = [i for i in range(args.p) if i not in selected]
    true = [c for c in data.true_features if c in candidates]
    how = Training(
        likelihood=make_likelihood("gaussian"), out_features=1, hidden=(7, 7, 7),
        activation="relu", epochs=150, min_steps=1500, lr=1e-2, batch_size=128, mc_samples=8,
    )  # fmt: skip
    steps = 150 * math.ceil(len(x) / 128)
    record: dict[int, torch.Tensor] = {round(f * steps): torch.empty(0) for f in fractions}
    with torch.random.fork_rng(devices=[]):
        final = _batched_run(x.float(), y, selected, candidates, how, [seed], [None], None, record)
    final = final[0]

    def rank(gains: torch.Tensor, c: int) -> int:
        return int((gains > gains[candidates.index(c)]).sum()) + 1

    def z(gains: torch.Tensor, null: torch.Tensor, c: int) -> float:
        median = null.median()
        scale = 1.4826 * (null - median).abs().median()
        return round(float((gains[candidates.index(c)] - median) / scale), 2)

    nulls = [Narrowing().null_sample(len(candidates), s) for s in range(20)]
    return {
        "seed": seed,
        "selected": selected,
        "true_candidates": true,
        "rank_at": {
            f"{f:.2f}": [rank(record[round(f * steps)], c) for c in true] for f in fractions
        },
        "final_rank": [rank(final, c) for c in true],
        "final_gain": [round(float(final[candidates.index(c)]), 1) for c in true],
        "final_z_all": [z(final, final, c) for c in true],
        "final_z_null_samples": [[z(final, final[i], c) for i in nulls] for c in true],
        "top_other_z_all": z(final, final, candidates[int(torch.argmax(
            torch.where(torch.isin(torch.tensor(candidates), torch.tensor(true)), -math.inf, final)
        ))]),
    }  # fmt: skip


def timed_runs(log: list[dict[str, Any]]) -> Any:
    """`bayesprune.screen.paired_gains`, each call's process-CPU seconds appended to `log`
    (stage 1 or the confirmation folds, the candidates and whether it was narrowed)."""
    from bayesprune.screen_batched import paired_gains

    def timed(*args: Any, **kwargs: Any) -> torch.Tensor:
        started = time.process_time()
        out = paired_gains(*args, **kwargs)
        log.append(
            {
                "stage": "confirm" if len(args) > 6 and args[6] is not None else "stage 1",
                "candidates": len(args[3]),
                "narrowed": kwargs.get("narrowing") is not None,
                "cpu_s": round(time.process_time() - started, 1),
            }
        )
        return out

    return timed


def replicate(args: argparse.Namespace, impl: str, screen: Any, seed: int) -> dict[str, Any]:
    import bayesprune.screen

    data = DESIGNS[args.design](n=args.n, p=args.p, seed=seed)
    selected = GATES_KEEP[args.design]
    load_before = os.getloadavg()[0]
    runs: list[dict[str, Any]] = []
    original = bayesprune.screen.paired_gains
    bayesprune.screen.paired_gains = timed_runs(runs)  # the timing of each paired run
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        result = screen(data.train, selected, rounds=args.rounds, seed=seed)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        bayesprune.screen.paired_gains = original
    scores = metrics.selection_scores(result.features, data.true_features, data.n_features)
    return {
        "impl": impl,
        "seed": seed,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
        "tpr": scores.tpr,
        "fdr": scores.fdr,
        "added": result.added,
        "rounds": result.rounds,
        "shortlist": result.shortlist,
        "stopped_early": int(np.isnan(result.gains).sum()),
        "runs_cpu_s": [
            f"{r['stage']}{' narrowed' if r['narrowed'] else ''} ({r['candidates']}): {r['cpu_s']}"
            for r in runs
        ],
        "top_gain": round(float(np.nanmax(result.gains)), 1),
        "top_z": round(float(np.nanmax(result.z)), 2),
    }


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for impl in dict.fromkeys(r["impl"] for r in rows):
        mine = [r for r in rows if r["impl"] == impl]

        def mean_sd(key: str, mine: list[dict[str, Any]] = mine) -> str:
            values = [r[key] for r in mine]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.1f} ± {sd:.1f}"

        out.append(
            {
                "impl": impl,
                "replicates": len(mine),
                "wall_s": mean_sd("wall_s"),
                "cpu_s": mean_sd("cpu_s"),
                "max_wall_s": max(r["wall_s"] for r in mine),
                "all_true_found": f"{sum(r['tpr'] == 1.0 for r in mine)}/{len(mine)}",
                "fdr_0": f"{sum(r['fdr'] == 0.0 for r in mine)}/{len(mine)}",
                "load_1min": f"{min(r['load_1min_before'] for r in mine):.2f}–"
                f"{max(r['load_1min_after'] for r in mine):.2f}",
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--design", choices=sorted(DESIGNS), default="bai")
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="first replicate's seed")
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--p", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--impls", nargs="+", choices=["new", "exact", "old"], default=["new", "old"]
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--narrow-from-round", type=int, default=None,
        help="new: stage 1 narrowed from this round on (default: the library's, round 2)",
    )  # fmt: skip
    parser.add_argument("--narrow-at", type=float, default=None, help="Narrowing.at")
    parser.add_argument("--narrow-keep", type=int, default=None, help="Narrowing.keep")
    parser.add_argument("--narrow-null", type=int, default=None, help="Narrowing.null")
    parser.add_argument("--name", default=None, help="results file name")
    parser.add_argument(
        "--trajectory",
        type=float,
        nargs="*",
        default=None,
        help="only stage 1 of round one, exact, with every gain measured at these fractions "
        "of the steps (the narrowing's development record)",
    )
    parser.add_argument(
        "--also-selected", type=int, nargs="*", default=[],
        help="with --trajectory: start from the gates' selection plus these (a later round)",
    )  # fmt: skip
    parser.add_argument(
        "--step-cost", action="store_true",
        help="only the CPU cost of one training step, old vs new (interleaved, 5 repeats)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.step_cost:
        cost = step_cost(args)
        print(json.dumps(cost))
        name = args.name or f"screen_step_cost_{args.design}"
        markdown = (
            f"Design `{args.design}`, p = {args.p}, seed {args.seed}: CPU ms per training step "
            f"of stage 1's paired run ({cost['candidates']} candidates + the baseline, batch "
            f"128, 7-7-7), old ({OLD_COMMIT}) vs new, interleaved, {args.threads} thread(s)."
            "\n\n" + md_table([{k: str(v) for k, v in cost.items()}])
        )
        print(write_results(name, {"settings": vars(args), "step_cost": cost}, markdown))
        return
    if args.trajectory is not None:
        runs = []
        for r in range(args.replicates):
            runs.append(trajectory(args, args.seed + r, args.trajectory))
            print(json.dumps(runs[-1]), flush=True)
        name = args.name or f"screen_trajectory_{args.design}"
        table = [{k: v for k, v in run.items() if k != "final_z_null_samples"} for run in runs]
        markdown = (
            f"Design `{args.design}`, p = {args.p}: stage 1 of round one, exact, from the "
            "selection below; each true candidate's rank among all candidates by ELBO gain "
            "at fractions of the optimiser steps, and its final robust z under the null of "
            "all candidates (the JSON has it under 20 random null samples of 200).\n\n"
            + md_table([{k: str(v) for k, v in row.items()} for row in table])
        )
        print(write_results(name, {"settings": vars(args), "runs": runs}, markdown))
        return
    screens = {
        "new": lambda: new_screen(args),
        "exact": exact_screen,
        "old": old_screen,
    }
    loaded = {impl: screens[impl]() for impl in args.impls}

    rows = []
    for r in range(args.replicates):
        for impl in args.impls:  # interleaved: both see the same machine load
            rows.append(replicate(args, impl, loaded[impl], args.seed + r))
            print(rows[-1], flush=True)
    table = [{k: (str(v) if isinstance(v, list) else v) for k, v in r.items()} for r in rows]
    overall = summary(rows)
    name = args.name or f"screen_speed_{args.design}"
    markdown = (
        f"Design `{args.design}`: n = {args.n} (75 % training rows), p = {args.p}; the "
        f"screen starts from the gates' selection {GATES_KEEP[args.design]} (0-based) and "
        f"must add the other true features; defaults of `screen_features`, up to "
        f"{args.rounds} rounds; {args.threads} torch thread(s). `old` = the screen at "
        f"{OLD_COMMIT}; `exact` = the current screen with `narrowing=None`. Seconds: "
        "`screen_features` alone; load = 1-minute load average.\n\n"
        "## Summary (mean ± sd over replicates)\n\n"
        + md_table(overall)
        + "\n## Replicates\n\n"
        + md_table(table)
    )
    payload = {"settings": vars(args), "summary": overall, "replicates": rows}
    print(write_results(name, payload, markdown))


if __name__ == "__main__":
    main()
