"""Run the Amaranth core in Amaranth's own simulator (amaranth.sim), with stream stimulus.

The source drives the image stream, the sink takes results; both can pause at random
(``valid_probability`` / ``ready_probability``), so tests exercise backpressure, gaps and
back-to-back images. Results come back in arrival order with the cycle each arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from ..gen.sizing import CorePlan
from ..hw.core import SpikingCore

__all__ = ["CoreRun", "simulate_core", "CoreStalled"]


class CoreStalled(RuntimeError):
    """The core produced no result for far longer than its cycle model allows."""


@dataclass
class CoreRun:
    labels: np.ndarray         # (N,) int64, in arrival order
    logits: np.ndarray         # (N, classes) int64
    result_cycles: np.ndarray  # (N,) cycle at which each result was taken
    accept_cycles: np.ndarray  # (N,) cycle at which each image's last beat was taken
    cycles: int                # cycles simulated


def simulate_core(plan: CorePlan, input_codes: np.ndarray, *, seed: int = 0, valid_probability: float = 1.0,
                  ready_probability: float = 1.0, vcd: str | None = None) -> CoreRun:
    """Stream ``(N, inputs)`` codes through a fresh core; return every result it sends."""
    core = SpikingCore(plan)
    images = [plan.input.beats(row) for row in np.asarray(input_codes)]
    count = len(images)
    rng = np.random.default_rng(seed)
    pause_in = rng.random(count * plan.input.words * 64) >= valid_probability
    pause_out = rng.random(1 << 16) >= ready_probability
    limit = 64 + 4 * (count + 2) * plan.latency_bound / min(valid_probability, ready_probability)
    payload_in, payload_out = core.images.payload.as_value(), core.results.payload.as_value()
    labels, logits, result_cycles, accept_cycles = [], [], [], []
    clock = {"cycles": 0}

    async def source(ctx):
        k = 0
        for beats in images:
            for beat in beats:
                while pause_in[k % len(pause_in)]:
                    k += 1
                    await ctx.tick()
                k += 1
                ctx.set(payload_in, beat)
                ctx.set(core.images.valid, 1)
                await ctx.tick().until(core.images.ready)
                ctx.set(core.images.valid, 0)
            accept_cycles.append(clock["cycles"])

    async def sink(ctx):
        k = 0
        while len(labels) < count:
            ready = not pause_out[k % len(pause_out)]
            k += 1
            ctx.set(core.results.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(core.results.valid, payload_out)
            clock["cycles"] += 1
            if valid and ready:
                label, values = plan.unpack_result(payload)
                labels.append(label)
                logits.append(values)
                result_cycles.append(clock["cycles"])
            if clock["cycles"] > limit:
                raise CoreStalled(f"no result for image {len(labels)} after {clock['cycles']} cycles")

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return CoreRun(np.array(labels, dtype=np.int64), np.array(logits, dtype=np.int64).reshape(count, plan.classes),
                   np.array(result_cycles, dtype=np.int64), np.array(accept_cycles, dtype=np.int64), clock["cycles"])
