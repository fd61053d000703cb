"""cocotb testbench of ``spikesmith_core``: streams images, takes results, scores them against the golden model.

Runs inside the simulator process, started by :func:`spikesmith.sim.verilator.run_core`,
which passes a job file (``SPIKESMITH_JOB``: JSON with the image beats, the golden results and
the stress settings) and reads back ``SPIKESMITH_RESULT``. One coroutine drives both streams:
each cycle it sets its inputs after the falling edge, then reads the settled handshake in the
read-only phase, so it knows exactly which transfers the next rising edge makes.

With no backpressure and no reset (``valid_probability = ready_probability = 1``) the bench
sleeps through the cycles in which nothing can move (a beat on offer that the core does not
take, no result) until ``images__ready`` or ``results__valid`` rises: the same transfers on
the same cycles, with the cycle read off the simulation time, many times faster.
"""

from __future__ import annotations

import json
import os
import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

from ..contract.protocol import unpack_result
from .scoreboard import describe_mismatch

RESET_CYCLES = 3
CLOCK_NS = 10


class Scoreboard:
    """Checks each result against the golden model's label and logits, in image order."""

    def __init__(self, job: dict):
        self.labels, self.logits = job["expected_labels"], job["expected_logits"]
        self.label_width, self.logit_width = job["label_width"], job["logit_width"]
        self.classes = job["classes"]
        self.first_mismatch: str | None = None
        self.mismatches = 0

    def unpack(self, payload: int) -> tuple[int, list[int]]:
        return unpack_result(payload, self.label_width, self.logit_width, self.classes)

    def check(self, image: int, label: int, logits: list[int]) -> None:
        mismatch = describe_mismatch(image, label, logits, self.labels[image], self.logits[image])
        if mismatch is None:
            return
        self.mismatches += 1
        if self.first_mismatch is None:
            self.first_mismatch = mismatch


async def _reset_and_load_weights(dut, weight_loads: list[str]) -> None:
    """Reset, then write the run-time weights (SPRAM) one row per cycle (hex ``weights_load`` words)."""
    dut.rst.value = 1
    dut.images__valid.value = 0
    dut.results__ready.value = 0
    for _ in range(RESET_CYCLES):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    for word in weight_loads:
        dut.weights_load.value = int(word, 16)
        await FallingEdge(dut.clk)
    if weight_loads:
        dut.weights_load.value = 0


@cocotb.test()
async def stream_images(dut):
    with open(os.environ["SPIKESMITH_JOB"]) as f:
        job = json.load(f)
    beats = [[int(b, 16) for b in image] for image in job["beats"]]
    words = job["words"]
    rng = random.Random(job["seed"])
    p_valid, p_ready = job["valid_probability"], job["ready_probability"]
    reset_at = job.get("reset_at")
    scoreboard = Scoreboard(job)

    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    free_running = p_valid == 1 and p_ready == 1 and reset_at is None
    await _reset_and_load_weights(dut, job["weight_loads"])

    image, beat = 0, 0              # next beat to send
    offering = False                # valid is up and must stay up until taken
    outstanding = deque()           # images fully sent, results not yet taken
    results, lost, extra = [], [], []
    cycle, idle, drain = 0, 0, job["drain_cycles"]
    timeout = job["timeout_cycles"]
    start = get_sim_time(unit="ns") // CLOCK_NS
    stalled = False                 # last cycle: a beat on offer not taken and no result
    while image < len(beats) or outstanding or idle < drain:
        if free_running and stalled:
            # Nothing moves until the core raises ready or valid (or the timeout passes).
            await First(RisingEdge(dut.images__ready), RisingEdge(dut.results__valid),
                        Timer(max(1, timeout - cycle) * CLOCK_NS, unit="ns"))
        await FallingEdge(dut.clk)
        cycle = int(get_sim_time(unit="ns") // CLOCK_NS - start)
        if reset_at is not None and cycle == reset_at:
            # Reset in the middle of the stream: whatever is in flight is lost, by design.
            dut.rst.value, dut.images__valid.value, dut.results__ready.value = 1, 0, 0
            for _ in range(RESET_CYCLES):
                await FallingEdge(dut.clk)
                cycle += 1
            dut.rst.value = 0
            lost += list(outstanding) + ([image] if beat else [])
            outstanding.clear()
            image, beat, offering = image + (1 if beat else 0), 0, False
        if not offering and image < len(beats) and rng.random() < p_valid:
            dut.images__payload.value = beats[image][beat]
            offering = True
        dut.images__valid.value = int(offering)
        ready = rng.random() < p_ready if (outstanding or image < len(beats)) else True
        dut.results__ready.value = int(ready)
        await ReadOnly()
        if offering and dut.images__ready.value:
            offering = False
            beat += 1
            if beat == words:
                outstanding.append(image)
                image, beat = image + 1, 0
        if ready and dut.results__valid.value:
            label, logits = scoreboard.unpack(int(dut.results__payload.value))
            if not outstanding:
                extra.append([label, logits])
                idle = 0
            else:
                n = outstanding.popleft()
                scoreboard.check(n, label, logits)
                results.append({"image": n, "label": label, "logits": logits, "cycle": cycle})
        stalled = (offering or image == len(beats)) and bool(outstanding or offering) \
            and not dut.images__ready.value and not dut.results__valid.value
        if image == len(beats) and not outstanding:
            idle += 1
        if cycle > timeout:
            break

    report = {"results": results, "lost": lost, "extra": extra, "cycles": cycle,
              "timed_out": cycle > timeout, "mismatches": scoreboard.mismatches,
              "first_mismatch": scoreboard.first_mismatch}
    with open(os.environ["SPIKESMITH_RESULT"], "w") as f:
        json.dump(report, f)
    assert not report["timed_out"], f"the core stalled: {len(results)} results after {cycle} cycles"
    assert not extra, f"{len(extra)} results with no image (duplicates)"
    assert scoreboard.first_mismatch is None, f"{scoreboard.mismatches} mismatches; first: {scoreboard.first_mismatch}"
