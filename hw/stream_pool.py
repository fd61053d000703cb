"""The streaming max pool: each pooled pixel's window built like a convolution's (hw/windows.py), then each
channel's largest code, ``L`` channels a beat (docs/core.md, "Streaming convolution engine"; the contract's
max pool is the largest code of each window, docs/semantics.md "Max pooling")."""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..contract.streaming import StreamPoolPlan
from .events import WrappingCounter
from .rows import mux_tree
from .windows import LineBuffer, WindowLoader, WindowPort, code_beat_layout

__all__ = ["StreamMaxPool", "PoolEmitter"]


def _largest(codes: list):
    """The largest of ``codes`` (unsigned), a balanced tree of compares."""
    while len(codes) > 1:
        codes = [Mux(codes[k] >= codes[k + 1], codes[k], codes[k + 1]) if k + 1 < len(codes) else codes[k]
                 for k in range(0, len(codes), 2)]
    return codes[0]


class PoolEmitter(wiring.Component):
    """Takes a window when idle and sends its ``B`` beats, one a cycle: lane ``l`` of beat ``b`` is the largest
    code of channel ``b*L + l`` over the window's ``kh * kw`` taps."""

    def __init__(self, plan: StreamPoolPlan):
        self.plan = plan
        super().__init__({"next": In(WindowPort(plan.window)),
                          "codes_out": Out(stream.Signature(code_beat_layout(plan.lanes, plan.timesteps)))})

    def elaborate(self, platform):
        m = Module()
        p, T, L = self.plan, self.plan.timesteps, self.plan.lanes
        kh, kw = p.geometry.kernel
        bits = p.window.entry_bits
        window, busy, block = Signal.like(self.next.window), Signal(), WrappingCounter(p.blocks, "pool_block")
        out = self.codes_out
        m.d.comb += self.next.take.eq(self.next.ready & ~busy)
        with m.If(self.next.take):
            m.d.sync += [window.eq(self.next.window), busy.eq(1)]
            block.restart(m)

        def code(tap: int, channel: int):
            return window[tap * bits + channel * T:tap * bits + (channel + 1) * T]

        with m.If(out.valid & out.ready):
            m.d.sync += out.valid.eq(0)
        with m.If(busy & (~out.valid | out.ready)):
            for lane in range(L):
                largest = [_largest([code(tap, b * L + lane) for tap in range(kh * kw)]) for b in range(p.blocks)]
                m.d.sync += out.payload[lane].eq(mux_tree(largest, block.value))
            m.d.sync += out.valid.eq(1)
            block.advance(m)
            with m.If(block.last):
                m.d.sync += busy.eq(0)
        return m


class StreamMaxPool(wiring.Component):
    """A max pool that streams codes in (``input_lanes`` a beat) and codes out (``L`` a beat), pixels in raster order."""

    def __init__(self, plan: StreamPoolPlan):
        self.plan = plan
        T = plan.timesteps
        super().__init__({"codes_in": In(stream.Signature(code_beat_layout(plan.input_lanes, T))),
                          "codes_out": Out(stream.Signature(code_beat_layout(plan.lanes, T)))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.lines = lines = LineBuffer(self.plan.window)
        m.submodules.loader = loader = WindowLoader(self.plan.window)
        m.submodules.emitter = emitter = PoolEmitter(self.plan)
        wiring.connect(m, wiring.flipped(self.codes_in), lines.codes_in)
        wiring.connect(m, loader.lines, lines.lines)
        wiring.connect(m, loader.next, emitter.next)
        wiring.connect(m, emitter.codes_out, wiring.flipped(self.codes_out))
        return m
