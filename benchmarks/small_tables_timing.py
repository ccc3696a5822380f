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

HERE = Path(__file__).resolve().parent
HERE_SRC = HERE.parent / "src"

FIT = r"""
import json
from small_tables import time_default_fit
print(json.dumps(time_default_fit(1)))
"""
"""One `small_tables.time_default_fit` (warm-up fit, then one timed default fit on one
thread) with whichever library PYTHONPATH puts first."""


def one_fit(src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(HERE)])}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", FIT], env=env, capture_output=True, text=True, check=True
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
            seconds[name].append(one_fit(sources[name])["cpu_seconds"][0])
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
