"""Soak: random networks and the MNIST MLP through the compiled Verilator harness, every result checked.

    python bench/soak.py                # 56 + 24 pooled networks x 1,000 images, then MNIST 10,000 images: ~8 min

Random networks (spikesmith.sim.random_networks, seeded): two in three dense, one in three
convolutional, then networks with random max pools (make_pooled_network: any kernel, stride,
padding, dilation, ceil_mode); T 1-16, weight bits 2-8, random lanes per layer and input lanes, spike skipping
on or off, random input gaps and result backpressure. Each one's emitted Verilog is compiled
with the C++ harness and streams 1,000 images (random codes, with silent and saturating ones);
every label and logit is compared with the golden model. A test of the test: one golden
logit perturbed must come back as exactly one mismatch naming that image and logit.

Then ``spikesmith simulate`` (the CLI, a fresh build folder, build included in the time) of
the MNIST MLP 784-128-10 at T=8 on all 10,000 images of ../shared/data/mnist (trained and
calibrated on images 0-7999; its accuracy on 8000-9999 reported apart). Writes
bench/results/soak.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import MNIST, log, save, scratch
from nets import train

IMAGES_PER_NETWORK = 1000


def random_case(index: int):
    """(network, lanes, input lanes, skip, valid probability, ready probability) of soak case ``index``."""
    from spikesmith.contract.network import ConvGeometry
    from spikesmith.sim.random_networks import make_conv_network, make_network

    rng = np.random.default_rng(7000 + index)
    timesteps, bits = int(rng.integers(1, 17)), int(rng.integers(2, 9))
    if index < 3:                   # both ends of T and of the weight width, whatever the draws
        timesteps, bits = (1, 16, 1)[index], (2, 8, 8)[index]
    if index % 3 == 2:
        shape = (int(rng.integers(1, 4)), int(rng.integers(4, 10)), int(rng.integers(4, 10)))
        convs, current = [], shape
        for _ in range(int(rng.integers(1, 3))):
            kernel = (int(rng.integers(1, min(3, current[1]) + 1)), int(rng.integers(1, min(3, current[2]) + 1)))
            stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
            padding = (int(rng.integers(0, kernel[0])), int(rng.integers(0, kernel[1])))
            geometry = ConvGeometry(current, int(rng.integers(1, 5)), kernel, stride, padding)
            convs.append((geometry.out_channels, kernel, stride, padding))
            current = geometry.out_shape
        net = make_conv_network(rng, shape, convs, int(rng.integers(2, 7)), timesteps, bits,
                                threshold_scale=float(rng.choice([0.05, 0.3, 1.0])))
    else:
        sizes = [int(rng.integers(2, 49))] + [int(rng.integers(2, 33)) for _ in range(int(rng.integers(1, 4)))]
        sizes.append(int(rng.integers(2, 11)))
        net = make_network(rng, sizes, timesteps, bits, float(rng.choice([0.0, 0.5, 0.9])),
                           float(rng.choice([0.01, 0.3, 1.0, 3.0])))
    lanes = [int(rng.choice([d for d in range(1, layer.conv.geometry.out_channels + 1)
                             if layer.conv.geometry.out_channels % d == 0]))   # a convolution: divisors of C_out
             if layer.conv else int(rng.integers(1, min(16, layer.out_size) + 1)) for layer in net.layers]
    if net.layers[0].conv:        # a convolution takes whole rows: the input lanes divide the image width
        width = net.input.shape[-1]
        input_lanes = int(rng.choice([d for d in range(1, min(16, width) + 1) if width % d == 0]))
    else:
        input_lanes = int(rng.integers(1, min(16, net.input.size) + 1))
    valid, ready = (float(rng.choice([1.0, rng.uniform(0.3, 1.0)])) for _ in range(2))
    skip = bool(rng.integers(0, 2))
    return (net, lanes, input_lanes, skip, valid, ready, *_engine(rng, net, input_lanes))


def _engine(rng, net, input_lanes: int) -> tuple[bool, int, list[str] | None]:
    """(streaming, input lanes, chunks): a convolutional network streams one time in two, its input lanes then
    a divisor of the channels and each streaming convolution a random chunk at 1, 2, 4, .. steps a cycle."""
    from spikesmith.gen.streaming import streamed_layers

    count = streamed_layers(net)
    if not count or not rng.integers(0, 2):
        return False, input_lanes, None
    channels = net.input.shape[0]
    input_lanes = int(rng.choice([d for d in range(1, channels + 1) if channels % d == 0]))
    chunks = []
    for layer in net.layers[:count]:
        taps = layer.conv.geometry.window_size
        steps = int(rng.choice([s for s in (1, 2, 4, 8, 16) if s < 2 * net.timesteps]))
        chunks.append(f"{int(rng.integers(1, taps + 1))}x{steps}")
    return True, input_lanes, chunks


def pooled_case(index: int):
    """Soak case ``index`` of the pooled networks: one or two convolutions with random max pools (any
    geometry torch allows), same draws of T, lanes, skipping, gaps and backpressure as :func:`random_case`."""
    from spikesmith.sim.random_networks import make_pooled_network

    rng = np.random.default_rng(9000 + index)
    net, lanes = make_pooled_network(rng, int(rng.integers(1, 17)), int(rng.integers(2, 9)))
    lanes[-1] = int(rng.integers(1, min(16, net.layers[-1].out_size) + 1))
    width = net.input.shape[-1]
    input_lanes = int(rng.choice([d for d in range(1, min(16, width) + 1) if width % d == 0]))
    valid, ready = (float(rng.choice([1.0, rng.uniform(0.3, 1.0)])) for _ in range(2))
    skip = bool(rng.integers(0, 2))
    return (net, lanes, input_lanes, skip, valid, ready, *_engine(rng, net, input_lanes))


def soak_networks(count: int, pooled: int, cache: Path) -> tuple[list[dict], dict]:
    from spikesmith.gen.sizing import plan_core
    from spikesmith.sim import golden
    from spikesmith.sim.harness import build_harness, run_harness
    from spikesmith.sim.random_networks import random_codes

    rows, perturbed = [], {}
    cases = [random_case(index) for index in range(count)] + [pooled_case(index) for index in range(pooled)]
    for index, (net, lanes, _, skip, valid, ready, streaming, input_lanes, chunks) in enumerate(cases):
        plan = plan_core(net, lanes=lanes, input_lanes=input_lanes, skip_silent=skip, streaming=streaming,
                         chunks=chunks)
        codes = random_codes(net, IMAGES_PER_NETWORK, seed=index)
        expected = golden.run(net, codes)
        t = time.perf_counter()
        build = build_harness(plan, cache)
        build_seconds = time.perf_counter() - t
        t = time.perf_counter()
        run = run_harness(build, plan, codes, expected, seed=index, valid_probability=valid, ready_probability=ready)
        seconds = time.perf_counter() - t
        complete = run.images.tolist() == list(range(len(codes)))
        kind = "pooled" if any(layer.pool for layer in net.layers) else "conv" if net.layers[0].conv else "dense"
        rows.append({"index": index, "network": net.describe(), "kind": kind,
                     "timesteps": net.timesteps, "weight_bits": max(layer.weight_bits for layer in net.layers),
                     "lanes": lanes, "input_lanes": input_lanes, "skip": skip, "valid": valid, "ready": ready,
                     "engine": "streaming" if streaming else "event-driven", "chunks": chunks,
                     "images": len(codes), "cycles": run.cycles, "mismatches": run.mismatches + (not complete),
                     "first_mismatch": run.first_mismatch, "build_seconds": build_seconds, "seconds": seconds})
        log(f"{index:3d} {net.describe()} T={net.timesteps}: {run.mismatches} mismatches, {run.cycles:,} cycles, "
            f"{run.cycles / seconds:,.0f} cycles/s (build {build_seconds:.0f} s)")
        if index == 0:                        # the test of the test
            expected.logits[37, -1] += 1
            broken = run_harness(build, plan, codes, expected, seed=index, valid_probability=valid,
                                 ready_probability=ready)
            perturbed = {"mismatches": broken.mismatches, "report": broken.first_mismatch,
                         "caught": broken.mismatches == 1 and broken.first_mismatch.startswith(
                             f"image 37: output layer logit {net.classes - 1} is ")}
            log(f"perturbed golden value: {perturbed}")
    return rows, perturbed


def soak_mnist(cache: Path) -> dict:
    from spikesmith.gen.convert import ConversionOptions, convert_float_network
    from spikesmith.gen.netfile import save_network

    log("training MNIST 784-128-10 on images 0-7999 of ../shared/data/mnist")
    trained = train("mnist-mlp")
    net = convert_float_network(trained.network, trained.train.images, ConversionOptions(timesteps=8))
    net_path = save_network(net, cache / "mnist-mlp.net.npz")
    t = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "spikesmith"), "simulate", str(net_path), "--data", str(MNIST),
                           "--build-dir", str(cache / "mnist"), "--json", "-q"], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"simulate failed: {proc.stderr.strip()}")
    report = json.loads(proc.stdout)
    held_out = slice(8000, 10000)
    test = net.input.encode(trained.test.images, net.timesteps)
    from spikesmith.sim import golden

    golden_test = float(np.mean(golden.run(net, test).predictions == trained.test.labels))
    log(f"MNIST: {report['images']} images, {report['mismatches']} mismatches, {seconds:.0f} s")
    return {"network": "MNIST MLP 784-128-10, T=8", "images": report["images"], "cycles": report["cycles"],
            "mismatches": report["mismatches"], "seconds": seconds,
            "cycles_per_second": report["simulated_cycles_per_second"], "build_seconds": report["build_seconds"],
            "accuracy_all": report["accuracy"],
            "held_out": f"{held_out.start}-{held_out.stop - 1}", "golden_accuracy_held_out": golden_test,
            "ann_accuracy_held_out": trained.ann_accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=56, help="random networks (default 56)")
    parser.add_argument("--pooled", type=int, default=24, help="random networks with max pools (default 24)")
    parser.add_argument("--skip-mnist", action="store_true", help="only the random networks")
    args = parser.parse_args()
    started = time.time()
    cache = scratch("spikesmith-soak-")
    rows, perturbed = soak_networks(args.networks, args.pooled, cache / "random")
    figures = {"networks": rows, "perturbed": perturbed,
               "totals": {"networks": len(rows), "images": sum(r["images"] for r in rows),
                          "cycles": sum(r["cycles"] for r in rows), "mismatches": sum(r["mismatches"] for r in rows),
                          "build_seconds": sum(r["build_seconds"] for r in rows),
                          "run_seconds": sum(r["seconds"] for r in rows)}}
    if not args.skip_mnist:
        figures["mnist"] = soak_mnist(cache)
    save("soak", figures, started)


if __name__ == "__main__":
    main()
