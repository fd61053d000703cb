"""The output layer's second stage: read the logits out of a full bank and pick the class."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import Out

from ..contract.plan import LayerPlan
from .events import index_signal, result_layout
from .membranes import MembranePort
from .rows import lanes_view

__all__ = ["Readout"]


class Readout(wiring.Component):
    """Rows in order into a shift register of ``B*L`` logits, with a running argmax.

    ``membranes``: the drain port of the output layer's banks. ``results``: one beat per
    image, ``label`` (first index of the largest logit) and the ``classes`` integer logits
    (``membrane_width``-bit signed). Takes ``B + 3`` cycles per image (claim, reads, the
    two-cycle read latency, drain).
    """

    def __init__(self, plan: LayerPlan):
        assert not plan.fires
        self.plan = plan
        super().__init__({
            "membranes": Out(MembranePort(plan.rows, plan.lanes * plan.membrane_width)),
            "results": Out(stream.Signature(result_layout(plan.neurons, plan.output_addr_width, plan.membrane_width))),
        })

    def elaborate(self, platform):
        m = Module()
        plan, port = self.plan, self.membranes
        B, L, mw = plan.blocks, plan.lanes, plan.membrane_width
        logits = [Signal(signed(mw), name=f"logit{j}") for j in range(B * L)]
        best, best_label = Signal(signed(mw)), index_signal(B * L)
        row, base = index_signal(B), index_signal(B * L)
        valid = Signal()
        membrane = lanes_view(mw, L, port.read_data)
        # The row's largest valid lane, ties to the lower lane.
        row_best, row_lane = membrane[0], 0
        tail = plan.neurons - (B - 1) * L
        for lane in range(1, L):
            take = (membrane[lane] > row_best) & ((row != B - 1) | (lane < tail))
            row_best, row_lane = Mux(take, membrane[lane], row_best), Mux(take, lane, row_lane)
        # Row `issued` is read in CLAIM and READ; row `row` arrives two cycles after its read.
        issued, arriving = index_signal(B + 1), Signal(2)       # arriving[k]: a row read k + 1 cycles ago
        reading = Signal()
        m.d.comb += [port.read_addr.eq(issued), port.write_en.eq(0), self.results.valid.eq(valid)]
        m.d.sync += arriving.eq(Cat(reading, arriving[0]))
        with m.FSM(name="readout"):
            with m.State("CLAIM"):
                with m.If(port.ready & ~valid):
                    m.d.comb += [reading.eq(1), port.read_addr.eq(0)]
                    m.d.sync += [issued.eq(1), row.eq(0), base.eq(0)]
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += reading.eq(issued < B)
                m.d.sync += issued.eq(issued + reading)
                with m.If(arriving[1]):
                    m.d.sync += [logits[j].eq(logits[j + L]) for j in range(B * L - L)]
                    m.d.sync += [logits[B * L - L + lane].eq(membrane[lane]) for lane in range(L)]
                    with m.If((row == 0) | (row_best > best)):
                        m.d.sync += [best.eq(row_best), best_label.eq(base + row_lane)]
                    m.d.sync += [row.eq(row + 1), base.eq(base + L)]
                    with m.If(row == B - 1):
                        m.next = "DONE"
            with m.State("DONE"):
                m.d.sync += valid.eq(1)
                m.d.comb += port.done.eq(1)
                m.next = "CLAIM"
        with m.If(self.results.valid & self.results.ready):
            m.d.sync += valid.eq(0)
        m.d.comb += self.results.payload.label.eq(best_label)
        m.d.comb += [self.results.payload.logits[j].eq(logits[j]) for j in range(plan.neurons)]
        return m
