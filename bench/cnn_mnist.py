"""A LeNet-5 with max pooling and a small ResNet on MNIST: ANN against SNN golden at T = 2, 4, 6, 8, then the core.

    python bench/cnn_mnist.py           # per network: train 1-3 min; Verilator on 2,000 images; two board builds
    python bench/cnn_mnist.py --nets mnist-resnet --no-build
    python bench/cnn_mnist.py --clock ulx3s-85f=60      # build that board at a 60 MHz PLL clock

Data: the shared MNIST t10k set (../shared/data/mnist): images 0-7999 train and calibrate,
8000-9999 test (not the standard 60k/10k split). The T=8 network's Verilog runs all 2,000
test images under the compiled Verilator harness against the golden model (every logit
compared); then ``spikesmith build`` for the ULX3S-85F and the iCEBreaker (a refusal is
recorded with its reason). Writes bench/results/cnn_mnist.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from boards import build_or_refusal
from common import command, log, save, scratch
from nets import train


# Published MNIST CNN accelerators, as their abstracts state them (the logic each used is in the papers' tables,
# which this bench could not read offline: None, and the section says so). Devices as named there.
PUBLISHED = [
    {"name": "Skydiver (Chen et al., TCAD 2022)", "device": "Xilinx XC7Z045", "images_per_second": 22600,
     "accuracy": 0.985, "luts": None, "source": "arXiv 2203.07516, abstract"},
    {"name": "DeepFire (Aung et al., FPL 2021)", "device": "Xilinx 7-series and UltraScale+ (375 / 500 MHz)",
     "images_per_second": 40100, "accuracy": 0.9914, "luts": None, "source": "DOI 10.1109/FPL53798.2021.00013, abstract"},
    {"name": "SyncNN (Panchapakesan et al., TRETS 2022), LeNet", "device": "Xilinx ARM-FPGA SoC boards",
     "images_per_second": 13086, "accuracy": 0.996, "luts": None, "source": "DOI 10.1145/3514253, abstract"},
]


def hardware(net, trained, work: Path, boards: list[str], clocks: dict[str, str]) -> dict:
    """The T=8 core under the compiled Verilator harness on every test image, and its board builds."""
    import numpy as np

    from spikesmith.gen.build import BOARDS, plan_for_board
    from spikesmith.gen.netfile import save_network
    from spikesmith.sim import golden
    from spikesmith.sim.harness import build_harness, run_harness

    plan = plan_for_board(net, BOARDS["ulx3s-85f"])
    codes = net.input.encode(trained.test.images, net.timesteps)
    expected = golden.run(net, codes)
    log(f"Verilator harness: {len(codes)} test images, lanes {list(plan.lane_counts)}, taps a cycle {list(plan.chunk_counts)}")
    t = time.time()
    built = build_harness(plan, work / "harness")
    run = run_harness(built, plan, codes, expected)
    mismatches = run.mismatches + len(codes) - len(run.labels)
    cycles = run.result_cycles
    figures = {"images": len(codes), "results": len(run.labels), "mismatches": mismatches,
               "first_mismatch": run.first_mismatch, "harness_seconds": time.time() - t,
               "lanes": list(plan.lane_counts), "chunks": list(plan.chunk_counts),
               "initiation_interval_worst": plan.initiation_interval,
               "measured_cycles_per_image": float((cycles[-1] - cycles[0]) / (len(cycles) - 1)),
               "hardware_accuracy": float(np.mean(run.labels == trained.test.labels)), "boards": []}
    log(f"  {mismatches} mismatches, {figures['measured_cycles_per_image']:.0f} cycles/image "
        f"(worst case {plan.initiation_interval})")
    net_path = save_network(net, work / "mnist-lenet.net.npz")
    for board in boards:
        log(f"building for {board}")
        options = ["--clock", clocks[board]] if board in clocks else []
        figures["boards"].append(build_or_refusal(net_path, board, options, work / board))
        log(f"  {figures['boards'][-1].get('refused') or 'built'}")
    return figures


def network_figures(key: str, boards: list[str], clocks: dict[str, str]) -> dict:
    """Train ``key``, convert it at T = 2, 4, 6, 8 (golden accuracy), then the T=8 core's figures."""
    from spikesmith.gen.convert import ConversionOptions, convert_float_network
    from spikesmith.sim.evaluate import evaluate

    log(f"training {key} on MNIST t10k images 0-7999")
    t = time.time()
    trained = train(key)
    train_seconds = time.time() - t
    log(f"ANN {100 * trained.ann_accuracy:.2f}% on images 8000-9999 ({train_seconds:.0f} s)")
    points = {}
    for timesteps in (2, 4, 6, 8):
        net = convert_float_network(trained.network, trained.train.images, ConversionOptions(timesteps=timesteps))
        result = evaluate(net, trained.test.images, trained.test.labels)
        points[timesteps] = {"golden": result.golden_accuracy, "snn_float": result.snn_float_accuracy,
                             "agreement_with_ann": result.golden_vs_ann_agreement}
        log(f"T={timesteps}: SNN golden {100 * result.golden_accuracy:.2f}%")
    figures = {"network": trained.title, "train": trained.train.name, "test": trained.test.name,
               "ann_accuracy": trained.ann_accuracy, "train_seconds": train_seconds,
               "layers": [{"name": layer.name, "kind": layer.kind, "out": layer.out_size,
                           "max_pool": layer.pool is not None,
                           "relays": int((layer.threshold == 1 << net.timesteps).sum()) if layer.fires else 0}
                          for layer in net.layers],
               "points": points}
    figures["hardware"] = hardware(net, trained, scratch("spikesmith-bench-"), boards, clocks)
    figures.update(command=command(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["mnist-lenet", "mnist-resnet"],
                        choices=["mnist-lenet", "mnist-resnet"], help="networks (default both)")
    parser.add_argument("--no-build", action="store_true", help="skip the board builds")
    parser.add_argument("--clock", action="append", default=[], metavar="BOARD=MHZ",
                        help="build BOARD at this PLL clock (spikesmith build --clock); repeatable")
    args = parser.parse_args()
    clocks = dict(item.split("=", 1) for item in args.clock)
    started = time.time()
    boards = [] if args.no_build else ["ulx3s-85f", "icebreaker"]
    networks = _earlier_networks()                       # a network not rerun keeps its last figures
    networks.update({key: network_figures(key, boards, clocks) for key in args.nets})
    save("cnn_mnist", {"networks": networks, "published": PUBLISHED}, started)


def _earlier_networks() -> dict:
    import json

    from common import RESULTS

    try:
        record = json.loads((RESULTS / "cnn_mnist.json").read_text())
    except (OSError, ValueError):
        return {}
    networks = record.get("figures", {}).get("networks", {})
    for entry in networks.values():                     # which run made each network's figures
        entry.setdefault("command", record.get("command"))
        entry.setdefault("date", record.get("date"))
    return networks


if __name__ == "__main__":
    main()
