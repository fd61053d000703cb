"""The output layer's second stage: read the logits out of a full bank and pick the class."""

from __future__ import annotations

from amaranth import Cat, Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import Out

from ..contract.plan import LayerPlan
from .events import index_signal, result_layout
from .membranes import MembranePort
from .rows import lanes_view

__all__ = ["Readout"]


class Readout(wiring.Component):
    """Rows in order into a shift register of ``B*L`` logits, then an argmax over them, one a cycle.

    ``membranes``: the drain port of the output layer's banks. ``results``: one beat per
    image, ``label`` (first index of the largest logit) and the ``classes`` integer logits
    (``membrane_width``-bit signed). Takes ``B + 3 + B*L`` cycles per image (claim, reads,
    the two-cycle read latency, one logit a cycle for the argmax, drain): no comparator
    chain across the lanes. With one lane the argmax runs as the rows arrive (``B + 3``).
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
        row, scanned = index_signal(B), index_signal(B * L)
        valid = Signal()
        membrane = lanes_view(mw, L, port.read_data)
        # Row `issued` is read in CLAIM and READ; row `row` arrives two cycles after its read.
        issued, arriving = index_signal(B + 1), Signal(2)       # arriving[k]: a row read k + 1 cycles ago
        reading = Signal()
        m.d.comb += [port.read_addr.eq(issued), port.write_en.eq(0), self.results.valid.eq(valid)]
        m.d.sync += arriving.eq(Cat(reading, arriving[0]))
        with m.FSM(name="readout"):
            with m.State("CLAIM"):
                with m.If(port.ready & ~valid):
                    m.d.comb += [reading.eq(1), port.read_addr.eq(0)]
                    m.d.sync += [issued.eq(1), row.eq(0)]
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += reading.eq(issued < B)
                m.d.sync += issued.eq(issued + reading)
                with m.If(arriving[1]):
                    m.d.sync += [logits[j].eq(logits[j + L]) for j in range(B * L - L)]
                    m.d.sync += [logits[B * L - L + lane].eq(membrane[lane]) for lane in range(L)]
                    m.d.sync += row.eq(row + 1)
                    if L == 1:      # one logit a row: the running argmax needs no pass of its own
                        with m.If((row == 0) | (membrane[0] > best)):
                            m.d.sync += [best.eq(membrane[0]), best_label.eq(row)]
                    with m.If(row == B - 1):
                        m.d.sync += scanned.eq(0)
                        m.next = "ARGMAX" if L > 1 else "DONE"
            with m.State("ARGMAX"):
                # One logit a cycle: the register rotates, the first compares (one comparator: ties keep the
                # first index); after B*L cycles the logits are back in order.
                head = logits[0]
                m.d.sync += [logits[j].eq(logits[(j + 1) % (B * L)]) for j in range(B * L)]
                with m.If((scanned == 0) | ((scanned < plan.neurons) & (head > best))):
                    m.d.sync += [best.eq(head), best_label.eq(scanned)]
                m.d.sync += scanned.eq(scanned + 1)
                with m.If(scanned == B * L - 1):
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
