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
    """Rows in order into a shift register of ``B*L`` logits, then an argmax over them, two cycles a logit.

    ``membranes``: the drain port of the output layer's banks. ``results``: one beat per
    image, ``label`` (first index of the largest logit) and the ``classes`` integer logits
    (``membrane_width``-bit signed). Takes ``B + 3 + 2*B*L`` cycles per image (claim, reads,
    the two-cycle read latency, the argmax, drain): the comparison of a logit with the best
    so far goes into a register and the best takes it a cycle later, so one carry chain lies
    between registers (a compare feeding the best's enable in one cycle set the iCE40's clock).
    """

    def __init__(self, plan: LayerPlan):
        assert not plan.fires
        self.plan = plan
        self.rereads = False                   # it writes no row
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
                    with m.If(row == B - 1):
                        m.d.sync += scanned.eq(0)
                        m.next = "COMPARE"
            # Two cycles a logit: the head is compared with the best (one comparator: ties keep the first
            # index) into `greater`, then taken if greater and the register rotates; after B*L logits
            # the logits are back in order.
            # `greater` is the sign of one subtraction (one carry chain, nothing after it); whether the
            # logit is the first or a padding lane is registered beside it.
            head = logits[0]
            greater, first, real = Signal(name="greater"), Signal(name="first"), Signal(name="real")
            difference = Signal(signed(mw + 1), name="difference")
            m.d.comb += difference.eq(best - head)
            with m.State("COMPARE"):
                m.d.sync += [greater.eq(difference[-1]), first.eq(scanned == 0), real.eq(scanned < plan.neurons)]
                m.next = "TAKE"
            with m.State("TAKE"):
                with m.If(first | (real & greater)):
                    m.d.sync += [best.eq(head), best_label.eq(scanned)]
                m.d.sync += [logits[j].eq(logits[(j + 1) % (B * L)]) for j in range(B * L)]
                m.d.sync += scanned.eq(scanned + 1)
                m.next = "COMPARE"
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
