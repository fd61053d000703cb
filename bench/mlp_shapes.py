"""The iCEBreaker at 48 MHz (PLL) for digits-sized MLPs of other shapes: one to three hidden layers, odd widths.

    python bench/mlp_shapes.py          # six bitstreams with yosys + nextpnr, ~10 min

Issue #18 asks that such MLPs close timing at 48 MHz on the iCE40UP5K. Each network is
trained on the digits set (seeded), converted at T=8 and built with ``spikesmith build
--board icebreaker --clock 48`` (lanes sized for speed), as bench/boards.py does. Writes
bench/results/mlp_shapes.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from boards import build, save_network_of
from common import log, save, scratch

SHAPES = ["64-16-10", "64-37-10", "64-64-10", "64-23-41-10", "64-64-32-10", "64-50-33-17-10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="builds at once (default 2)")
    parser.add_argument("--clock", type=float, default=48, help="PLL clock in MHz (default 48)")
    args = parser.parse_args()
    started = time.time()
    work = scratch("spikesmith-bench-")
    networks = {shape: save_network_of(f"digits-mlp-{shape}", work) for shape in SHAPES}
    log(f"building {len(SHAPES)} bitstreams for the iCEBreaker at {args.clock:g} MHz, {args.jobs} at a time")

    def run(shape):
        path, title = networks[shape]
        options = ["--clock", f"{args.clock:g}"]
        try:
            report = build(path, "icebreaker", options, work / shape)
        except SystemExit as failed:           # e.g. nextpnr could not place it: recorded, not hidden
            report = {"board": "icebreaker", "options": " ".join(options), "failed": str(failed).split("error: ")[-1]}
        return {**report, "network": title + ", T=8"}

    with ThreadPoolExecutor(args.jobs) as pool:
        reports = list(pool.map(run, SHAPES))
    for report in reports:
        outcome = (f"failed: {report['failed']}" if "failed" in report else
                   f"Fmax {report['fmax_mhz']:.1f} MHz ({'met' if report['timing_met'] else 'missed'})")
        log(f"{report['network']}: {outcome}")
    save("mlp_shapes", {"networks": [r["network"] for r in reports], "clock_mhz": args.clock, "builds": reports},
         started)


if __name__ == "__main__":
    main()
