"""Board builds: utilisation, Fmax and images/s of the digits MLP and CNN on the iCEBreaker and the ULX3S.

    python bench/boards.py              # six bitstreams with yosys + nextpnr, ~20 min on 2 cores

Runs ``spikesmith build --json`` for each configuration (the MLP at the oscillator's clock
and at a PLL clock; the CNN, on its convolution engines, at the oscillator's clock) and
keeps nextpnr's figures from each build's report. Writes bench/results/boards.json and
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import log, save, scratch
from nets import train

# The issue #18 targets: the iCEBreaker at a 48 MHz PLL (MLP) and 40 MHz (CNN), the ULX3S at 120 MHz (MLP)
# and 100 MHz (CNN); lanes sized for speed unless given. A build that misses its clock is recorded, not dropped.
CONFIGS = [
    ("digits-mlp", "icebreaker", []),
    ("digits-mlp", "icebreaker", ["--clock", "48"]),
    ("digits-mlp", "ulx3s-85f", ["--lanes", "10", "5", "1", "--clock", "120"]),
    ("digits-mlp", "ulx3s-85f", ["--clock", "120"]),
    ("digits-cnn", "icebreaker", ["--clock", "40"]),
    ("digits-cnn", "ulx3s-85f", ["--clock", "100"]),
]


def build(net_path: Path, board: str, options: list[str], out: Path) -> dict:
    start = time.perf_counter()
    # nextpnr keeps going past a missed clock, so the report says by how much (Amaranth reads AMARANTH_nextpnr_opts).
    env = {**os.environ, "AMARANTH_nextpnr_opts": "--timing-allow-fail"}
    proc = subprocess.run([sys.executable, "-m", "spikesmith.cli", "build", str(net_path), "--board", board,
                           "-o", str(out), "--json", "-q", *options], capture_output=True, text=True, env=env)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise SystemExit(f"build for {board} {options} failed: {proc.stderr.strip()}")
    report = json.loads(proc.stdout)
    report["options"] = " ".join(options)
    report["build_seconds"] = time.perf_counter() - start
    return report


def build_or_refusal(net_path: Path, board: str, options: list[str], out: Path) -> dict:
    """:func:`build`'s report, or ``{"board", "refused"}`` with the reason when ``spikesmith build`` refused
    the network in one line (it does not fit: what it needs and what the board has)."""
    try:
        return build(net_path, board, options, out)
    except SystemExit as failed:
        if "spikesmith: error: " not in str(failed):
            raise
        return {"board": board, "refused": str(failed).split("spikesmith: error: ")[-1]}


def save_network_of(key: str, folder: Path) -> tuple[Path, str]:
    from spikesmith.gen.convert import ConversionOptions, convert_float_network
    from spikesmith.gen.netfile import save_network

    trained = train(key)
    net = convert_float_network(trained.network, trained.train.images, ConversionOptions(timesteps=8))
    return save_network(net, folder / f"{key}.net.npz"), trained.title


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="builds at once (default 2)")
    args = parser.parse_args()
    started = time.time()
    work = scratch("spikesmith-bench-")
    networks = {key: save_network_of(key, work) for key in dict.fromkeys(key for key, _, _ in CONFIGS)}
    log(f"building {len(CONFIGS)} bitstreams, {args.jobs} at a time")

    def run(config):
        key, board, options = config
        try:
            report = build(networks[key][0], board, options, work / f"{key}-{board}-{len(options)}")
        except SystemExit as failed:           # e.g. nextpnr could not place it: recorded, not hidden
            report = {"board": board, "options": " ".join(options), "failed": str(failed).split("error: ")[-1]}
        return {**report, "network": networks[key][1] + ", T=8"}

    with ThreadPoolExecutor(args.jobs) as pool:
        reports = list(pool.map(run, CONFIGS))
    for report in reports:
        outcome = f"failed: {report['failed']}" if "failed" in report else f"Fmax {report['fmax_mhz']:.1f} MHz"
        log(f"{report['network']} on the {report['board']} {report['options']}: {outcome}")
    save("boards", {"networks": sorted({r["network"] for r in reports}), "builds": reports}, started)


if __name__ == "__main__":
    main()
