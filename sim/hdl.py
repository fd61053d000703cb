"""Run the Amaranth core (or one of its engines) in Amaranth's own simulator, amaranth.sim.

:class:`StreamSource` and :class:`StreamSink` drive and take ``amaranth.lib.stream``
interfaces with optional random pauses (a pause generator per side, as in cocotbext-axi), so
tests exercise backpressure, gaps and back-to-back transfers. :func:`simulate_core` streams
images through a whole core and returns every result with the cycle it arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from amaranth.sim import Simulator

from ..contract.plan import CorePlan
from ..hw.core import SpikingCore

__all__ = ["CoreRun", "CoreStalled", "StreamSource", "StreamSink", "simulate_core"]


class CoreStalled(RuntimeError):
    """The design sent nothing for far longer than its cycle model allows."""


def _pauses(rng: np.random.Generator, probability: float):
    """An endless iterator of booleans: pause this cycle? (``probability`` = chance to go on)."""
    while True:
        for pause in rng.random(4096) >= probability:
            yield bool(pause)


class StreamSource:
    """Sends integer payloads on a stream, pausing ``valid`` at random between transfers."""

    def __init__(self, stream, payloads, *, probability: float = 1.0, rng=None):
        self.stream, self.payloads = stream, list(payloads)
        self.pauses = _pauses(rng or np.random.default_rng(0), probability)
        self.sent_at: list[int] = []      # index of the clock edge that took each payload

    async def run(self, ctx, clock: "Clock") -> None:
        payload = self.stream.payload.as_value()
        for item in self.payloads:
            while next(self.pauses):
                await ctx.tick()
            ctx.set(payload, item)
            ctx.set(self.stream.valid, 1)
            await ctx.tick().until(self.stream.ready)
            ctx.set(self.stream.valid, 0)
            self.sent_at.append(clock.cycles)


class StreamSink:
    """Takes payloads from a stream, dropping ``ready`` at random; stops after ``count`` plus a drain."""

    def __init__(self, stream, count: int, *, probability: float = 1.0, rng=None, drain: int = 0,
                 limit: int = 10**7):
        self.stream, self.count, self.drain, self.limit = stream, count, drain, limit
        self.pauses = _pauses(rng or np.random.default_rng(1), probability)
        self.received: list[int] = []
        self.received_at: list[int] = []
        self.extra: list[int] = []        # anything offered after the expected count and the drain

    async def run(self, ctx, clock: "Clock") -> None:
        payload = self.stream.payload.as_value()
        drained = 0
        while len(self.received) < self.count or drained < self.drain:
            expecting = len(self.received) < self.count
            ready = not next(self.pauses) if expecting else True
            ctx.set(self.stream.ready, ready)
            _, _, valid, value = await ctx.tick().sample(self.stream.valid, payload)
            clock.cycles += 1
            if not expecting:
                drained += 1
            if valid and ready:
                (self.received if expecting else self.extra).append(value)
                if expecting:
                    self.received_at.append(clock.cycles)
            if clock.cycles > self.limit:
                raise CoreStalled(f"only {len(self.received)} of {self.count} transfers after {clock.cycles} cycles")


@dataclass
class Clock:
    """Cycles counted by the sink (one per clock edge)."""
    cycles: int = 0


def run_streams(dut, source: StreamSource, sink: StreamSink, vcd: str | None = None, setup=None) -> int:
    """Simulate ``dut`` with one source and one sink until the sink is done; return the cycles.

    ``setup``: an async function of the context, awaited before the source starts.
    """
    clock = Clock()
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def send(ctx):
        if setup is not None:
            await setup(ctx)
        await source.run(ctx, clock)

    async def take(ctx):
        await sink.run(ctx, clock)

    sim.add_testbench(send)
    sim.add_testbench(take)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return clock.cycles


@dataclass
class CoreRun:
    labels: np.ndarray         # (N,) int64, in arrival order
    logits: np.ndarray         # (N, classes) int64
    result_cycles: np.ndarray  # (N,) clock edge at which each result was taken
    accept_cycles: np.ndarray  # (N,) clock edge at which each image's last beat was taken
    cycles: int                # cycles simulated
    extra_results: list = field(default_factory=list)   # results beyond one per image (must be empty)


def simulate_core(plan: CorePlan, input_codes: np.ndarray, *, seed: int = 0, valid_probability: float = 1.0,
                  ready_probability: float = 1.0, drain: int = 0, vcd: str | None = None) -> CoreRun:
    """Stream ``(N, inputs)`` codes through a fresh core; return every result it sends.

    After the last expected result the sink keeps ``ready`` high for ``drain`` more cycles
    and records anything else the core sends (a duplicate would show up there).
    """
    core = SpikingCore(plan)
    codes = np.asarray(input_codes)
    rng = np.random.default_rng(seed)
    beats = [beat for row in codes for beat in plan.input.beats(row)]
    source = StreamSource(core.images, beats, probability=valid_probability, rng=rng)
    limit = 64 + 4 * (len(codes) + 2) * plan.latency_bound / min(valid_probability, ready_probability)
    sink = StreamSink(core.results, len(codes), probability=ready_probability, rng=rng, drain=drain,
                      limit=int(limit))

    async def load_weights(ctx):              # run-time weights (SPRAM) first, one row per cycle
        for layer, address, row in plan.weight_loads():
            ctx.set(core.weights_load, {"en": 1, "layer": layer, "addr": address, "data": row})
            await ctx.tick()
        if plan.loaded_layers:
            ctx.set(core.weights_load.en, 0)

    cycles = run_streams(core, source, sink, vcd, setup=load_weights)
    results = [plan.unpack_result(value) for value in sink.received]
    words = plan.input.words
    return CoreRun(
        labels=np.array([label for label, _ in results], dtype=np.int64),
        logits=np.array([logits for _, logits in results], dtype=np.int64).reshape(len(codes), plan.classes),
        result_cycles=np.array(sink.received_at, dtype=np.int64),
        accept_cycles=np.array(source.sent_at[words - 1::words], dtype=np.int64),
        cycles=cycles, extra_results=[plan.unpack_result(value) for value in sink.extra])
