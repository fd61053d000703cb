"""Board builds: utilisation, Fmax and images/s of the digits MLP on the iCEBreaker and the ULX3S.

    python bench/boards.py              # four bitstreams with yosys + nextpnr, ~15 min on 2 cores

Runs ``spikeforge build --json`` for each configuration (the oscillator's clock, and a PLL
clock) and keeps nextpnr's figures from each build's report. Writes
bench/results/boards.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import log, save
from nets import train

CONFIGS = [
    ("icebreaker", []),
    ("icebreaker", ["--clock", "16"]),
    ("ulx3s-85f", []),
    ("ulx3s-85f", ["--clock", "50"]),
]


def build(net_path: Path, board: str, options: list[str], out: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "spikeforge.cli", "build", str(net_path), "--board", board,
                           "-o", str(out), "--json", "-q", *options], capture_output=True, text=True)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise SystemExit(f"build for {board} {options} failed: {proc.stderr.strip()}")
    report = json.loads(proc.stdout)
    report["options"] = " ".join(options)
    report["build_seconds"] = time.perf_counter() - start
    return report


def save_network_of(key: str, folder: Path) -> tuple[Path, str]:
    from spikeforge.gen.convert import ConversionOptions, convert_float_network
    from spikeforge.gen.netfile import save_network

    trained = train(key)
    net = convert_float_network(trained.network, trained.train.images, ConversionOptions(timesteps=8))
    return save_network(net, folder / f"{key}.net.npz"), trained.title


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="builds at once (default 2)")
    args = parser.parse_args()
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="spikeforge-bench-"))
    net_path, title = save_network_of("digits-mlp", work)
    log(f"building {len(CONFIGS)} bitstreams of the {title}, {args.jobs} at a time")
    with ThreadPoolExecutor(args.jobs) as pool:
        reports = list(pool.map(lambda c: build(net_path, c[0], c[1], work / f"{c[0]}-{len(c[1])}"), CONFIGS))
    for report in reports:
        log(f"{report['board']} {report['options']}: Fmax {report['fmax_mhz']:.1f} MHz")
    save("boards", {"network": title + ", T=8", "builds": reports}, started)


if __name__ == "__main__":
    main()
