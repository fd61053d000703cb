"""The seed paper's scale: a CIFAR-10-shaped ResNet-8 and a small VGG with max pooling (3x32x32 inputs).

    python bench/cifar_shapes.py            # convert, golden, Verilator on a few images, ULX3S build or refusal
    python bench/cifar_shapes.py --images 2 --no-build
    python bench/cifar_shapes.py --images 100 --clock 50    # build the ULX3S at a 50 MHz PLL clock

CIFAR-10 is not shipped, so the networks are untrained (seeded initialisation, batch-norm
statistics drawn away from the identity) and calibrated and run on seeded synthetic images
(smooth random colour fields in [0, 1]); users bring their own data with ``--data PATH`` in
the formats ``spikesmith`` reads. What is measured is the generator, not accuracy: conversion,
the golden model, the emitted core bit-exact under the compiled Verilator harness, the cycle
model, memory per kind, and whether the ULX3S-85F takes the design (built, or refused with
the figures). Writes bench/results/cifar_shapes.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from boards import build_or_refusal
from common import log, save, scratch


def synthetic_images(count: int, seed: int) -> np.ndarray:
    """Smooth random colour fields: 4x4 random colours per image, upsampled to 32x32, plus a little noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (count, 3, 4, 4))
    fine = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    return np.clip(fine + rng.normal(0, 0.05, fine.shape), 0, 1).astype(np.float32)


def small_vgg():
    from torch import nn

    layers, channels = [], 3
    for width in (16, 16, "M", 32, 32, "M", 64, 64, "M"):
        if width == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 4 * 4, 10))


def resnet8():
    from spikesmith.models import small_resnet

    return small_resnet(3, (16, 32, 64), 10)


def seeded(model, seed: int):
    """Seeded initialisation; batch norm statistics and affine parameters drawn away from the identity."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.3)
    return model.eval()


def figures_of(key: str, model, images: int, work: Path, boards: list[str], options: list[str]) -> dict:
    import torch

    from spikesmith.gen.build import BOARDS, ecp5_usage, plan_for_board
    from spikesmith.gen.convert import ConversionOptions, convert_module
    from spikesmith.gen.netfile import save_network
    from spikesmith.sim import golden
    from spikesmith.sim.harness import build_harness, run_harness

    calib, test = synthetic_images(64, 1), synthetic_images(max(images, 32), 2)
    t = time.time()
    net = convert_module(model, calib, ConversionOptions(timesteps=8))
    convert_seconds = time.time() - t
    with torch.no_grad():
        ann = model(torch.from_numpy(test)).numpy().argmax(1)
    t = time.time()
    expected = golden.run_images(net, test)
    golden_seconds = time.time() - t
    plan = plan_for_board(net, BOARDS["ulx3s-85f"])
    log(f"{key}: {len(net.layers)} layers, {sum(layer.synapses for layer in net.layers):,} synapses; golden agrees "
        f"with the ANN's class on {np.mean(expected.predictions == ann):.0%} of {len(test)} images; lanes "
        f"{list(plan.lane_counts)}, taps a cycle {list(plan.chunk_counts)}; Verilator on {images} images")
    t = time.time()
    built = build_harness(plan, work / "harness")
    head = golden.run(net, expected.input_codes[:images])
    run = run_harness(built, plan, head.input_codes, head)
    harness_seconds = time.time() - t
    cycles = np.diff(run.result_cycles) if images > 1 else np.array([run.result_cycles[0]])
    figures = {
        "network": key, "layers": [{"name": layer.name, "kind": layer.kind, "out": layer.out_size,
                                    "max_pool": layer.pool is not None} for layer in net.layers],
        "synapses": sum(layer.synapses for layer in net.layers), "convert_seconds": convert_seconds,
        "golden_seconds_per_image": golden_seconds / len(test),
        "golden_agrees_with_ann": float(np.mean(expected.predictions == ann)), "images": images,
        "results": len(run.labels), "mismatches": run.mismatches + images - len(run.labels),
        "first_mismatch": run.first_mismatch, "harness_seconds": harness_seconds,
        "lanes": list(plan.lane_counts), "chunks": list(plan.chunk_counts),
        "initiation_interval_worst": plan.initiation_interval,
        "measured_cycles_per_image": float(cycles.mean()), "memory_bits": plan.memory_bits(),
        "memory_bits_by_kind": _bits_by_kind(plan), "dp16kd_estimate": ecp5_usage(plan), "boards": []}
    log(f"  {figures['mismatches']} mismatches; {figures['measured_cycles_per_image']:,.0f} cycles per image "
        f"(worst case {plan.initiation_interval:,}); {plan.memory_bits():,} bits of memory")
    net_path = save_network(net, work / f"{key}.net.npz")
    for board in boards:
        figures["boards"].append(build_or_refusal(net_path, board, options, work / board))
        log(f"  {board}: {figures['boards'][-1].get('refused') or 'built'}")
    return figures


def _bits_by_kind(plan) -> dict[str, int]:
    kinds: dict[str, int] = {"input banks": plan.input.memory_bits}
    for layer in plan.layers:
        for kind, bits in layer.memory_bits.items():
            kinds[kind] = kinds.get(kind, 0) + bits
    for stage in plan.stream:                     # the streaming convolutions and pools
        for kind, width, rows in stage.memories:
            kinds[kind] = kinds.get(kind, 0) + width * rows
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images under Verilator per network (default 4)")
    parser.add_argument("--no-build", action="store_true", help="skip the ULX3S build")
    parser.add_argument("--clock", type=float, help="build at this PLL clock, MHz (spikesmith build --clock)")
    args = parser.parse_args()
    options = ["--clock", f"{args.clock:g}"] if args.clock else []
    started = time.time()
    work = scratch("spikesmith-bench-")
    boards = [] if args.no_build else ["ulx3s-85f"]
    networks = {"CIFAR-shaped ResNet-8 (16-32-64, basic blocks, 1x1 shortcuts)": seeded(resnet8(), 0),
                "CIFAR-shaped VGG (16-16-M-32-32-M-64-64-M, 1024-10)": seeded(small_vgg(), 1)}
    results = {key: figures_of(key, model, args.images, work, boards, options) for key, model in networks.items()}
    save("cifar_shapes", {"networks": results}, started)


if __name__ == "__main__":
    main()
