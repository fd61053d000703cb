"""A design-space sweep on Ray: the digits MLP over T, weight width, lanes and board, every point built.

    python bench/sweep.py               # 16 points (2 T x 2 weight widths x 2 lane budgets x 2 boards), ~30 min

Trains the digits MLP (``spikesmith demo --models mlp``), then runs ``spikesmith sweep`` on a local Ray
instance with every point built by yosys and nextpnr (each at its board's oscillator clock), and
runs the same command again into the same folder, which must build nothing new. Keeps each
point's figures, the Pareto front, the estimator's error against nextpnr, both runs' times and
the plot (bench/plots/sweep.png). Writes bench/results/sweep.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import PLOTS, log, save, scratch

AXES = ["-T", "4", "8", "--weight-bits", "4", "8", "--lane-budget", "speed", "8", "--board", "icebreaker", "ulx3s-85f"]


def sweep(model: Path, out: Path, jobs: int) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "spikesmith.cli", "sweep", str(model), "--calib", "digits", *AXES,
                           "--jobs", str(jobs), "-o", str(out), "--json", "-q"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the sweep failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="builds at once (default 2)")
    args = parser.parse_args()
    started = time.time()
    work = scratch("spikesmith-bench-")
    subprocess.run([sys.executable, "-m", "spikesmith.cli", "demo", "--models", "mlp", "--sweep", "8", "-o", str(work),
                    "-q"], check=True, capture_output=True)
    log(f"sweeping the digits MLP: {' '.join(AXES)}, {args.jobs} builds at a time")
    first, first_seconds = sweep(work / "digits-mlp.pt2", work / "sweep", args.jobs)
    log(f"first run: {first['builds_run']} builds in {first_seconds:.0f} s; running it again")
    again, again_seconds = sweep(work / "digits-mlp.pt2", work / "sweep", args.jobs)
    log(f"second run: {again['builds_run']} builds, {again['builds_cached']} from the cache, in {again_seconds:.0f} s")
    PLOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "sweep" / "sweep.png", PLOTS / "sweep.png")
    save("sweep", {"command": "spikesmith sweep digits-mlp.pt2 --calib digits " + " ".join(AXES),
                   "points": first["points"], "estimator_error": first["estimator_error"],
                   "first_run": {"builds": first["builds_run"], "seconds": round(first_seconds, 1)},
                   "second_run": {"builds": again["builds_run"], "cached": again["builds_cached"],
                                  "seconds": round(again_seconds, 1)}}, started)


if __name__ == "__main__":
    main()
