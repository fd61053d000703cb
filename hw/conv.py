"""The accumulate stage of a convolution engine: each input spike adds its kernel into the window it reaches.

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

from amaranth import Module, Mux, Signal, signed

from ..gen.network import signed_width, unsigned_width
from ..gen.sizing import LayerPlan
from .accumulate import accumulate_fsm
from .events import index_signal
from .ilif import AccumulateOp

__all__ = ["conv_accumulate_control"]


def _table(m: Module, name: str, index, values: list[int], width: int) -> Signal:
    """``values[index]`` as a combinational look-up (a case statement over constants)."""
    out = Signal(width, name=name)
    with m.Switch(index):
        for k, value in enumerate(values):
            with m.Case(k):
                m.d.comb += out.eq(value)
    return out


def conv_accumulate_control(m: Module, plan: LayerPlan, banks, events, weights, biases):
    """Issue side of stage 1 of a convolution layer: ``T`` steps of ``V <- 2V + sum W*s``, then ``V <- V + B``.

    Drives the membrane, weight and bias read addresses and returns ``(issue, op, row, spike)``
    of the operation issued this cycle, for the shared execute datapath (hw/engines.py).
    Passes over the ``rows`` double (the first clears) and add the bias of each row's block.
    """
    g = plan.conv
    B, T, R, P = plan.blocks, plan.timesteps, plan.rows, g.pixels
    c_in, (kh, kw) = g.in_shape[0], g.kernel

    # Pass counters over the membrane rows, with the block of the row (for the bias).
    row, pass_block, pass_pixel = index_signal(R), index_signal(B), index_signal(P)

    # Event expansion: (block, tap on y, tap on x), innermost last; offsets step by constants.
    row_table, col_table = plan.taps(0), plan.taps(1)
    (m_step_y, w_step_y), (m_step_x, w_step_x) = plan.tap_steps(0), plan.tap_steps(1)
    span_m = R + max(r[0] for r in row_table) + max(c[0] for c in col_table) + 1
    span_w = plan.weight_row_count + max(r[1] for r in row_table) + max(c[1] for c in col_table) + c_in
    mw_addr, ww_addr = signed_width(-span_m, span_m), unsigned_width(span_w)
    y, x = events.payload.y, events.payload.x
    first_m_y = _table(m, "first_m_y", y, [r[0] for r in row_table], mw_addr)
    first_w_y = _table(m, "first_w_y", y, [r[1] for r in row_table], ww_addr)
    taps_y = _table(m, "taps_y", y, [r[2] for r in row_table], unsigned_width(kh))
    first_m_x = _table(m, "first_m_x", x, [c[0] for c in col_table], mw_addr)
    first_w_x = _table(m, "first_w_x", x, [c[1] for c in col_table], ww_addr)
    taps_x = _table(m, "taps_x", x, [c[2] for c in col_table], unsigned_width(kw))

    block, tap_y, tap_x = index_signal(B), Signal(range(kh + 1)), Signal(range(kw + 1))
    block_m, tap_y_m, tap_x_m = Signal(mw_addr), Signal(mw_addr), Signal(mw_addr)   # b*P, u*W_out, v
    block_w, tap_y_w, tap_x_w = Signal(ww_addr), Signal(ww_addr), Signal(ww_addr)
    event_m, event_w = Signal(signed(mw_addr)), Signal(ww_addr)
    m.d.comb += [
        event_m.eq(first_m_y + first_m_x + block_m - tap_y_m - tap_x_m),
        event_w.eq(first_w_y + first_w_x + events.payload.channel + block_w + tap_y_w + tap_x_w),
    ]
    reaches = (taps_y != 0) & (taps_x != 0)
    last_x, last_y, last_block = tap_x == taps_x - 1, tap_y == taps_y - 1, block == B - 1

    issue, op, spike = Signal(), Signal(2), Signal()
    issue_row = index_signal(R)
    in_pass = Signal()
    m.d.comb += [
        issue_row.eq(Mux(in_pass, row, event_m[:len(issue_row)])),
        banks.fill_read_addr.eq(issue_row),
        weights.addr.eq(event_w[:len(weights.addr)]),
        biases.addr.eq(pass_block),
    ]

    def start_pass():
        m.d.sync += [row.eq(0), pass_block.eq(0), pass_pixel.eq(0)]

    def advance_pass():
        last = row == R - 1
        m.d.sync += [row.eq(Mux(last, 0, row + 1)),
                     pass_pixel.eq(Mux(last | (pass_pixel == P - 1), 0, pass_pixel + 1))]
        with m.If(last):
            m.d.sync += pass_block.eq(0)
        with m.Elif(pass_pixel == P - 1):
            m.d.sync += pass_block.eq(pass_block + 1)
        return last

    def on_event():
        with m.If(~reaches):
            m.d.comb += events.ready.eq(1)           # an input no output pixel reads: one idle cycle
        with m.Else():
            m.d.comb += [issue.eq(1), op.eq(AccumulateOp.ADD), spike.eq(events.payload.spike)]
            with m.If(~last_x):
                m.d.sync += [tap_x.eq(tap_x + 1), tap_x_m.eq(tap_x_m + m_step_x), tap_x_w.eq(tap_x_w + w_step_x)]
            with m.Else():
                m.d.sync += [tap_x.eq(0), tap_x_m.eq(0), tap_x_w.eq(0)]
                with m.If(~last_y):
                    m.d.sync += [tap_y.eq(tap_y + 1), tap_y_m.eq(tap_y_m + m_step_y), tap_y_w.eq(tap_y_w + w_step_y)]
                with m.Else():
                    m.d.sync += [tap_y.eq(0), tap_y_m.eq(0), tap_y_w.eq(0)]
                    with m.If(~last_block):
                        m.d.sync += [block.eq(block + 1), block_m.eq(block_m + P),
                                     block_w.eq(block_w + kh * kw * c_in)]
                    with m.Else():
                        m.d.sync += [block.eq(0), block_m.eq(0), block_w.eq(0)]
                        m.d.comb += events.ready.eq(1)

    accumulate_fsm(m, banks, events, T, issue=issue, op=op, in_pass=in_pass,
                   start_pass=start_pass, advance_pass=advance_pass, on_event=on_event)
    return issue, op, issue_row, spike
