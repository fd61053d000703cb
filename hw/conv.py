"""The accumulate stage of a convolution engine (:class:`ConvAccumulate`): each input spike adds its kernel into the window it reaches.

An input spike event ``(channel c, y, x)`` of step t reaches the output pixels ``(oy, ox)``
whose window covers ``(y, x)``: per axis a run of taps whose output coordinate falls by one
while the kernel offset rises by the stride (``LayerPlan.taps``). For every tap and every
block of ``L`` output channels the stage reads one membrane row and one weight row (the
kernel entries ``W[b*L .. b*L+L-1, c, ky, kx]``) and adds them lane by lane: one row per
cycle, ``B x taps`` cycles per event, adders only. Addresses come from two small tables
indexed by ``y`` and ``x`` (the first tap of each) plus counters stepping by constants.
Memory layouts and timing: docs/core.md, "Convolution engine".
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, Value, signed

from ..contract.network import signed_width, unsigned_width
from ..contract.plan import LayerPlan
from .accumulate import AccumulateStage, RowWalk
from .events import index_signal
from .ilif import AccumulateOp
from .rows import lookup

__all__ = ["ConvAccumulate"]


class _ConvWalk:
    """Passes walk the ``rows`` (block, y, x) and add the bias of each row's block; an event
    walks (block, tap on y, tap on x), innermost last, its offsets stepping by constants."""

    def __init__(self, m: Module, plan: LayerPlan, events, port, issue, in_pass: Signal, weights, biases):
        g = plan.conv
        self.plan, self.events, self.issue = plan, events, issue
        B, R, P = plan.blocks, plan.rows, g.pixels
        c_in, (kh, kw) = g.in_shape[0], g.kernel

        # Pass counters over the membrane rows, with the block of the row (for the bias).
        self.row, self.pass_block, self.pass_pixel = index_signal(R), index_signal(B), index_signal(P)

        row_table, col_table = plan.taps(0), plan.taps(1)
        span_m = R + max(r[0] for r in row_table) + max(c[0] for c in col_table) + 1
        span_w = plan.weight_row_count + max(r[1] for r in row_table) + max(c[1] for c in col_table) + c_in
        mw_addr, ww_addr = signed_width(-span_m, span_m), unsigned_width(span_w)
        y, x = events.payload.y, events.payload.x
        first_m_y = lookup(m, "first_m_y", y, [r[0] for r in row_table], mw_addr)
        first_w_y = lookup(m, "first_w_y", y, [r[1] for r in row_table], ww_addr)
        self.taps_y = lookup(m, "taps_y", y, [r[2] for r in row_table], unsigned_width(kh))
        first_m_x = lookup(m, "first_m_x", x, [c[0] for c in col_table], mw_addr)
        first_w_x = lookup(m, "first_w_x", x, [c[1] for c in col_table], ww_addr)
        self.taps_x = lookup(m, "taps_x", x, [c[2] for c in col_table], unsigned_width(kw))

        # Event expansion counters, and the offsets of the walk so far as sums kept in registers (one
        # operand each in the address adders, not three): membrane rows b*P - u*W_out - v, weight rows
        # the block's, tap row's and tap's; `block_*` and `tap_row_*` hold the partial sums a wrap returns to.
        self.block, self.tap_y, self.tap_x = index_signal(B), Signal(range(kh + 1)), Signal(range(kw + 1))
        self.block_m, self.tap_row_m, self.walk_m = Signal(mw_addr), Signal(mw_addr), Signal(mw_addr)
        self.block_w, self.tap_row_w, self.walk_w = Signal(ww_addr), Signal(ww_addr), Signal(ww_addr)
        event_m, event_w = Signal(signed(mw_addr)), Signal(ww_addr)
        m.d.comb += [
            event_m.eq(first_m_y + first_m_x + self.walk_m),
            event_w.eq(first_w_y + first_w_x + events.payload.channel + self.walk_w),
        ]
        issue_row = index_signal(R)
        m.d.comb += [
            issue_row.eq(Mux(in_pass, self.row, event_m[:len(issue_row)])),
            issue.row.eq(issue_row),
            weights.addr.eq(event_w[:len(weights.addr)]),
            biases.addr.eq(self.pass_block),
        ]

    def start_pass(self, m: Module) -> None:
        m.d.sync += [self.row.eq(0), self.pass_block.eq(0), self.pass_pixel.eq(0)]

    def advance_pass(self, m: Module) -> Value:
        last, P = self.row == self.plan.rows - 1, self.plan.conv.pixels
        m.d.sync += [self.row.eq(Mux(last, 0, self.row + 1)),
                     self.pass_pixel.eq(Mux(last | (self.pass_pixel == P - 1), 0, self.pass_pixel + 1))]
        with m.If(last):
            m.d.sync += self.pass_block.eq(0)
        with m.Elif(self.pass_pixel == P - 1):
            m.d.sync += self.pass_block.eq(self.pass_block + 1)
        return last

    def on_event(self, m: Module) -> None:
        g, events = self.plan.conv, self.events
        (m_step_y, w_step_y), (m_step_x, w_step_x) = self.plan.tap_steps(0), self.plan.tap_steps(1)
        with m.If((self.taps_y == 0) | (self.taps_x == 0)):
            m.d.comb += events.ready.eq(1)           # an input no output pixel reads: one idle cycle
        with m.Else():
            m.d.comb += [self.issue.valid.eq(1), self.issue.op.eq(AccumulateOp.ADD),
                         self.issue.spike.eq(events.payload.spike)]
            with m.If(self.tap_x != self.taps_x - 1):
                m.d.sync += [self.tap_x.eq(self.tap_x + 1), self.walk_m.eq(self.walk_m - m_step_x),
                             self.walk_w.eq(self.walk_w + w_step_x)]
            with m.Else():
                m.d.sync += self.tap_x.eq(0)
                with m.If(self.tap_y != self.taps_y - 1):
                    row_m, row_w = self.tap_row_m - m_step_y, self.tap_row_w + w_step_y
                    m.d.sync += [self.tap_y.eq(self.tap_y + 1), self.tap_row_m.eq(row_m), self.walk_m.eq(row_m),
                                 self.tap_row_w.eq(row_w), self.walk_w.eq(row_w)]
                with m.Else():
                    m.d.sync += self.tap_y.eq(0)
                    with m.If(self.block != self.plan.blocks - 1):
                        block_m = self.block_m + g.pixels
                        block_w = self.block_w + g.kernel[0] * g.kernel[1] * g.in_shape[0]
                        m.d.sync += [self.block.eq(self.block + 1),
                                     *(reg.eq(block_m) for reg in (self.block_m, self.tap_row_m, self.walk_m)),
                                     *(reg.eq(block_w) for reg in (self.block_w, self.tap_row_w, self.walk_w))]
                    with m.Else():
                        m.d.sync += [self.block.eq(0),
                                     *(reg.eq(0) for reg in (self.block_m, self.tap_row_m, self.walk_m,
                                                             self.block_w, self.tap_row_w, self.walk_w))]
                        m.d.comb += events.ready.eq(1)


class ConvAccumulate(AccumulateStage):
    """Accumulate stage of a convolution: an event costs ``B x taps`` cycles (its window's rows)."""

    def __init__(self, plan: LayerPlan):
        assert plan.conv is not None
        super().__init__(plan)

    def walk(self, m, issue, in_pass, weights, biases) -> RowWalk:
        return _ConvWalk(m, self.plan, self.events, self.membranes, issue, in_pass, weights, biases)
