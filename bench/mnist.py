"""MNIST 784-128-10 at T=8 against published FPGA SNN generators (Spiker+, snn-fpga).

    python bench/mnist.py               # train, convert, Verilator, two bitstreams: ~15 min

Data: the shared MNIST t10k set (../shared/data/mnist): images 0-7999 train and calibrate,
8000-9999 test. This is NOT the standard MNIST split (60k train / 10k test): the network
sees fewer training images, so its accuracy is not directly comparable to papers that
train on 60k. The builds are real (yosys + nextpnr); latency and images/s come from the
core's cycles per image (worst case from the plan, measured under Verilator with spike
skipping) at the achieved clock (the one asked for, or nextpnr's Fmax if the build missed it). Writes bench/results/mnist.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from boards import build
from common import log, save, scratch
from nets import train

PUBLISHED = [
    {"name": "Spiker+ (Carpegna et al. 2024)", "fpga": "Artix-7", "accuracy": 0.9385, "luts": 7612,
     "logic_unit": "logic cells",
     "bram": 18, "us_per_image": 780.0, "clock_mhz": None},
    {"name": "snn-fpga (Fan and Levy 2025)", "fpga": "Artix-7", "accuracy": None, "luts": 6358,
     "logic_unit": "LUTs",
     "bram": 40.5, "us_per_image": 520.0, "clock_mhz": 100.0},
]

# The ULX3S sized for speed at the issue #18 target clock (100 MHz), the iCEBreaker at its oscillator with its
# first layer's weights in SPRAM (what `build` chooses for it).
BUILDS = [("ulx3s-85f", ["--clock", "100"]), ("icebreaker", [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="test images timed under Verilator (default 100)")
    args = parser.parse_args()
    started = time.time()
    from spikesmith.gen.build import BOARDS, plan_for_board
    from spikesmith.gen.convert import ConversionOptions, convert_float_network
    from spikesmith.gen.netfile import save_network
    from spikesmith.sim import golden
    from spikesmith.sim.evaluate import evaluate
    from spikesmith.sim.verilator import build_core, run_core

    log("training 784-128-10 on MNIST t10k images 0-7999")
    trained = train("mnist-mlp")
    net = convert_float_network(trained.network, trained.train.images, ConversionOptions(timesteps=8))
    result = evaluate(net, trained.test.images, trained.test.labels)
    log(f"ANN {100 * trained.ann_accuracy:.2f}%, SNN golden T=8 {100 * result.golden_accuracy:.2f}%")
    work = scratch("spikesmith-bench-")
    net_path = save_network(net, work / "mnist-mlp.net.npz")

    codes = net.input.encode(trained.test.images[:args.images], net.timesteps)
    expected = golden.run(net, codes)
    boards = []
    for board, options in BUILDS:
        plan = plan_for_board(net, BOARDS[board])
        log(f"{board}: lanes {[layer.lanes for layer in plan.layers]}, SPRAM layers "
            f"{[layer.index for layer in plan.loaded_layers]}: Verilator on {len(codes)} test images")
        run = run_core(build_core(plan, work / "verilator"), plan, codes, expected)
        assert run.passed and run.mismatches == 0, run.first_mismatch
        measured = float(np.diff(np.sort(run.result_cycles)).mean())
        log(f"  {measured:.0f} cycles/image measured (worst case {plan.initiation_interval}); building")
        try:
            report = build(net_path, board, options, work / board)
        except SystemExit as failed:          # e.g. nextpnr could not place it: recorded, not hidden
            boards.append({"board": board, "options": " ".join(options), "failed": str(failed)[-300:],
                           "lanes": [layer.lanes for layer in plan.layers], "measured_cycles_per_image": measured})
            continue
        # The achieved clock: the one asked for, or nextpnr's Fmax when the build missed it.
        clock = min(report["clock_hz"], 1e6 * report["fmax_mhz"])
        boards.append({**report, "measured_cycles_per_image": measured,
                       "latency_bound_cycles": plan.latency_bound, "achieved_clock_hz": clock,
                       "measured_images_per_second": clock / measured,
                       "measured_us_per_image": 1e6 * measured / clock,
                       "worst_us_per_image": 1e6 * plan.initiation_interval / clock})
    save("mnist", {"network": trained.title, "split": "train/calibrate t10k[0:8000], test t10k[8000:10000]",
                   "ann_accuracy": trained.ann_accuracy, "golden_accuracy": result.golden_accuracy,
                   "test_images": len(trained.test), "boards": boards, "published": PUBLISHED}, started)


if __name__ == "__main__":
    main()
