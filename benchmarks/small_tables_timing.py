"""The default classifier's fit on 500 rows x 50 columns: this checkout against another.

The issue-17 timing (`small_tables.py --timing-only`) is one number in seconds, and on a
shared 2-core machine the same code reads 7.6 s in one run and 9.6 s ten minutes later.
A change's effect is therefore measured as a ratio in one run: fits of this checkout's
library and of a baseline library (another commit's `src`, e.g. from
`git worktree add /tmp/base <commit>`) alternate, each in a fresh process on one thread,
and the CPU seconds of the fit alone (imports and a short warm-up fit excluded) are
compared by their medians.

    git worktree add /tmp/base a18c80b
    python benchmarks/small_tables_timing.py --baseline-src /tmp/base/src --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import add_results_dir_option, md_table, use_results_dir, write_results

HERE_SRC = Path(__file__).resolve().parents[1] / "src"

FIT = r"""
import json, sys, time, warnings
import numpy as np, torch
from sklearn.datasets import make_classification
from bayesprune.sklearn import BayesianMLPClassifier
torch.set_num_threads(1)
X, y = make_classification(n_samples=500, n_features=30, n_informative=5, n_redundant=0,
                           random_state=0)
X = np.hstack([X, np.random.default_rng(0).standard_normal((500, 20))])
warnings.simplefilter("ignore")
BayesianMLPClassifier(random_state=0, min_steps=20, max_steps=20, refit_steps=20).fit(X, y)
start = time.process_time()
est = BayesianMLPClassifier(random_state=int(sys.argv[1])).fit(X, y)
print(json.dumps({"cpu_seconds": time.process_time() - start, "steps": est.n_steps_}))
"""
"""One default fit of seed argv[1] (the small-tables timing's data), after a warm-up fit
that pays the one-off imports."""


def one_fit(src: Path, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", FIT, str(seed)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-src", type=Path, required=True, help="the other library's src")
    parser.add_argument("--rounds", type=int, default=5, help="fits of each, alternating")
    parser.add_argument("--name", default="small_tables_timing")
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    sources = {"this checkout": HERE_SRC, "baseline": args.baseline_src.resolve()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    seconds: dict[str, list[float]] = {name: [] for name in sources}
    for r in range(args.rounds):
        order = list(sources) if r % 2 == 0 else list(reversed(sources))
        for name in order:
            seconds[name].append(round(one_fit(sources[name], r)["cpu_seconds"], 2))
        print({k: v[-1] for k, v in seconds.items()}, flush=True)
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    rows = [
        {"library": name, "src": str(src), "CPU s per fit": seconds[name],
         "median": round(medians[name], 2)}
        for name, src in sources.items()
    ]  # fmt: skip
    ratio = medians["this checkout"] / medians["baseline"]
    markdown = (
        f"Default `BayesianMLPClassifier` fit, 500 rows x 50 columns (30 real, 20 noise), one "
        f"thread, {args.rounds} fits of each alternating (load average at the start {load}):"
        f"\n\n{md_table(rows)}\n\nthis checkout / baseline: **{ratio:.2f}**; target < 10 s.\n"
    )
    payload = {"settings": {k: str(v) for k, v in vars(args).items()}, "seconds": seconds,
               "medians": medians, "ratio": ratio, "load_average": load}  # fmt: skip
    print(write_results(args.name, payload, markdown))


if __name__ == "__main__":
    main()
