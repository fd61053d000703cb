"""End to end through the UART board top under Verilator (``spikesmith infer --sim``) at 115200 and 3,000,000 baud.

    python bench/endtoend.py            # ~20 min on 2 cores (add --slow for the MNIST weight load at 115200: +25 min)

For the digits MLP (scikit-learn digits, its own train/test split) and the MNIST MLP 784-128-10
(trained and calibrated on the shared MNIST t10k images 0-7999, tested on 8000-9999: not the
standard split), each at T=8: ``spikesmith infer NET --sim --baud B --json --compare-golden``
gives images/s end to end in *simulated* time (images x clock / simulated cycles from the first
request byte to the last reply byte) beside the core's own rate (the worst case from the
identity, and the interval measured with ``spikesmith simulate`` on the same images) and the
line's bound (bits per image frame / baud). The MNIST MLP at 3 Mbaud also runs with a window of
1 and 2 frames, to show what the window buys. Then the weight load (LOAD rows/s, protocol
version 4) on iCEBreaker plans with run-time weights (``--spram 0``, the lanes ``build --board
icebreaker`` picks), which also give those plans' end-to-end rate. Every run checks every logit
against the golden model. Writes bench/results/endtoend.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import MNIST, log, save, scratch

BAUDS = (115_200, 3_000_000)
MNIST_TEST = ["--data", str(MNIST), "--range", "8000:10000"]
DIGITS_TEST = ["--data", "digits"]


def cli(*args: str) -> dict:
    """``spikesmith ARGS --json -q`` as a user runs it; its JSON."""
    proc = subprocess.run([sys.executable, "-m", "spikesmith.cli", *args, "--json", "-q"], capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"spikesmith {' '.join(args)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def networks(work: Path) -> list[dict]:
    """The digits MLP and the MNIST MLP, trained here (bench/nets.py), converted at T=8."""
    from nets import train

    from spikesmith.gen.convert import ConversionOptions, convert_float_network
    from spikesmith.gen.netfile import save_network

    out = []
    for key, data, split in (("digits-mlp", DIGITS_TEST, "scikit-learn digits: 1347 train / 450 test images"),
                             ("mnist-mlp", MNIST_TEST, "MNIST t10k images 0-7999 train and calibrate, 8000-9999 "
                                                       "test (not the standard split)")):
        log(f"training {key}")
        trained = train(key)
        net = convert_float_network(trained.network, trained.train.images, ConversionOptions(timesteps=8))
        out.append({"key": key, "title": trained.title, "split": split, "data": data, "net": net,
                    "path": save_network(net, work / f"{key}.net.npz")})
    return out


def icebreaker_plan(net) -> list[str]:
    """The sizing options of the plan ``build --board icebreaker --spram 0`` makes (first layer in SPRAM)."""
    from spikesmith.gen.build import BOARDS, plan_for_board

    plan = plan_for_board(net, BOARDS["icebreaker"], spram=[0])
    return ["--lanes", *(str(layer.lanes) for layer in plan.layers), "--input-lanes", str(plan.input.lanes),
            "--spram", "0"]


def run(network: dict, cache: Path, baud: int, images: int, options: list[str] = ()) -> dict:
    """One ``infer --sim`` run; its board figures, accuracy and agreement with the golden model."""
    started = time.time()
    report = cli("infer", str(network["path"]), "--sim", "--baud", str(baud), *network["data"], "-n", str(images),
                 "--compare-golden", "--build-dir", str(cache), *options)
    assert report["golden"]["mismatches"] == 0, report["golden"]
    b = report["board"]
    log(f"  {network['key']} {' '.join(options)} at {baud:,} baud: {b['images_per_second_end_to_end']:,.1f} images/s "
        f"end to end (line <= {b['line_images_per_second']:,.1f}, core >= {b['core_images_per_second_worst']:,.0f})"
        + (f"; weight load {b['weight_load']['rows_per_second']:,.0f} rows/s" if b["weight_load"]["rows"] else "")
        + f" [{time.time() - started:.0f} s]")
    return {"network": network["key"], "baud": baud, "options": " ".join(options), "images": report["images"],
            "accuracy": report["accuracy"], "mismatches": report["golden"]["mismatches"], "resent": report["resent"],
            "wall_seconds": round(time.time() - started, 1), **b}


def core_rate(network: dict, cache: Path, images: int, options: list[str] = ()) -> dict:
    """The core alone under the compiled harness (``spikesmith simulate``): its measured interval."""
    report = cli("simulate", str(network["path"]), *network["data"], "-n", str(images), "--build-dir", str(cache),
                 *options)
    assert report["mismatches"] == 0, report["first_mismatch"]
    steady = report["steady_state_cycles_per_image"] or report["cycles_per_image"]
    return {"network": network["key"], "options": " ".join(options), "images": images,
            "cycles_per_image": steady, "worst_case_cycles": report["initiation_interval_worst"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="also load the MNIST weights at 115200 baud (~25 min)")
    args = parser.parse_args()
    started = time.time()
    work = scratch("spikesmith-endtoend-")
    cache = work / "verilator"
    digits, mnist = networks(work)
    runs, cores = [], []
    for network, counts in ((digits, {115_200: 100, 3_000_000: 100}), (mnist, {115_200: 20, 3_000_000: 100})):
        for baud in BAUDS:
            runs.append(run(network, cache, baud, counts[baud]))
        cores.append(core_rate(network, cache, 100))
    for window in (1, 2):
        runs.append(run(mnist, cache, 3_000_000, 30, ["--window", str(window)]))
    for network, bauds in ((digits, BAUDS), (mnist, BAUDS if args.slow else (3_000_000,))):
        options = icebreaker_plan(network["net"])
        for baud in bauds:
            runs.append(run(network, cache, baud, 20, options))
        cores.append(core_rate(network, cache, 100, options))
    save("endtoend", {"networks": {n["key"]: {"title": n["title"], "split": n["split"]} for n in (digits, mnist)},
                      "runs": runs, "cores": cores}, started)


if __name__ == "__main__":
    main()
