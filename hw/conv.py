"""The accumulate stage of a convolution engine (:class:`ConvAccumulate`): each input spike adds its kernel into the window it reaches.

An input spike event ``(channel c, y, x)`` of step t reaches the output pixels ``(oy, ox)``
whose window covers ``(y, x)``: per axis a run of taps whose output coordinate falls by one
while the kernel offset rises by the stride (``LayerPlan.taps``). For every tap and every
block of ``L`` output channels the stage reads one membrane row and one weight row (the
kernel entries ``W[b*L .. b*L+L-1, c, ky, kx]``) and adds them lane by lane: one row per
cycle, ``B x taps`` cycles per event, adders only. The first tap's rows come from two small
tables indexed by ``y`` and ``x``, looked up in a stream register in front of the walk
(:class:`TapDecoder`); the walk steps them by constants in registers.
Memory layouts and timing: docs/core.md, "Convolution engine".
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, Value, signed
from amaranth.lib import data, wiring

from ..contract.network import signed_width, unsigned_width
from ..contract.plan import LayerPlan
from .accumulate import AccumulateStage, RowWalk
from .events import index_signal, pixel_event_layout
from .ilif import AccumulateOp
from .rows import lookup
from .streams import StreamRegister

__all__ = ["tap_event_layout", "TapDecoder", "ConvAccumulate"]


def _address_widths(plan: LayerPlan) -> tuple[int, int]:
    """Bits of the walk's membrane row offsets (signed: rows step down) and weight row offsets."""
    row_table, col_table = plan.taps(0), plan.taps(1)
    span_m = plan.rows + max(r[0] for r in row_table) + max(c[0] for c in col_table) + 1
    span_w = (plan.weight_row_count + max(r[1] for r in row_table) + max(c[1] for c in col_table)
              + plan.conv.in_shape[0])
    return signed_width(-span_m, span_m), unsigned_width(span_w)


def tap_event_layout(plan: LayerPlan) -> data.StructLayout:
    """An input event as the walk takes it, its look-ups done: the membrane and weight rows of its
    first tap (``first_m``, ``first_w``), its ``last_tap_y`` / ``last_tap_x`` (taps reached on each
    axis, less one), ``one_tap_y`` / ``one_tap_x`` (one tap on that axis) and ``one_tap`` (on both),
    ``reaches`` (any output pixel at all), and the event's ``spike`` and ``end``."""
    (kh, kw), (mw_addr, ww_addr) = plan.conv.kernel, _address_widths(plan)
    return data.StructLayout({"first_m": signed(mw_addr), "first_w": ww_addr, "last_tap_y": range(max(2, kh)),
                              "last_tap_x": range(max(2, kw)), "one_tap_y": 1, "one_tap_x": 1, "one_tap": 1, "reaches": 1,
                              "spike": 1, "end": 1})


class TapDecoder(StreamRegister):
    """A stream register that looks up each pixel event's first tap on its way in
    (:func:`tap_event_layout`): the tables and their sums end at its register, so the walk
    behind it adds one registered offset to one counter (the look-ups in front of the walk's
    adders were the slowest path of the iCE40's convolution). One beat per cycle, one cycle later."""

    def __init__(self, plan: LayerPlan):
        self.plan = plan
        super().__init__(pixel_event_layout(plan.conv.in_shape), tap_event_layout(plan))

    def decode(self, m: Module) -> Value:
        plan, event = self.plan, self.inlet.payload
        row_table, col_table = plan.taps(0), plan.taps(1)
        mw_addr, ww_addr = _address_widths(plan)
        decoded = Signal(self.outlet_layout)
        taps_y = lookup(m, "taps_y", event.y, [r[2] for r in row_table], unsigned_width(plan.conv.kernel[0]))
        taps_x = lookup(m, "taps_x", event.x, [c[2] for c in col_table], unsigned_width(plan.conv.kernel[1]))
        m.d.comb += [
            decoded.first_m.eq(lookup(m, "first_m_y", event.y, [r[0] for r in row_table], mw_addr)
                               + lookup(m, "first_m_x", event.x, [c[0] for c in col_table], mw_addr)),
            decoded.first_w.eq(lookup(m, "first_w_y", event.y, [r[1] for r in row_table], ww_addr)
                               + lookup(m, "first_w_x", event.x, [c[1] for c in col_table], ww_addr)
                               + event.channel),
            decoded.last_tap_y.eq(taps_y - 1), decoded.last_tap_x.eq(taps_x - 1),
            decoded.one_tap_y.eq(taps_y == 1), decoded.one_tap_x.eq(taps_x == 1),
            decoded.one_tap.eq((taps_y == 1) & (taps_x == 1)),
            decoded.reaches.eq((taps_y != 0) & (taps_x != 0)),
            decoded.spike.eq(event.spike), decoded.end.eq(event.end),
        ]
        return decoded


class _TapAddress:
    """One memory's row address along an event's walk (membrane or weights): the decoder's
    ``first`` in the event's first cycle, then ``here`` from a register; ``row_start`` and
    ``block_start`` hold where the current tap row and block began, which a wrap returns to.
    No adder sits in front of the address: each cycle adds its step on the way into the registers."""

    def __init__(self, name: str, first: Value, shape, steps: tuple[int, int, int]):
        self.first, self.steps = first, steps       # steps: to the next tap on x, tap row on y, block
        self.here, self.row_start, self.block_start = (Signal(shape, name=f"{name}_{part}")
                                                       for part in ("here", "row_start", "block_start"))

    def address(self, starting: Value) -> Value:
        return Mux(starting, self.first, self.here)

    def step(self, m: Module, starting: Value, wrap: str) -> None:
        """Next cycle at the next tap (``wrap`` "x"), the next tap row ("y") or the next block ("block")."""
        step_x, step_y, step_block = self.steps
        row_start, block_start = (Mux(starting, self.first, start) for start in (self.row_start, self.block_start))
        if wrap == "x":
            here = self.address(starting) + step_x
        elif wrap == "y":
            here = row_start = row_start + step_y
        else:
            here = row_start = block_start = block_start + step_block
        m.d.sync += [self.here.eq(here), self.row_start.eq(row_start), self.block_start.eq(block_start)]


class _ConvWalk:
    """Passes walk the ``rows`` (block, y, x) and add the bias of each row's block; an event
    walks (block, tap on y, tap on x), innermost last, from its first tap's rows
    (:class:`TapDecoder`) by constant steps (:class:`_TapAddress`)."""

    def __init__(self, m: Module, plan: LayerPlan, events, issue, in_pass: Signal, weights, biases):
        g = plan.conv
        self.plan, self.events, self.issue = plan, events, issue
        B, R, P = plan.blocks, plan.rows, g.pixels
        kh, kw = g.kernel
        mw_addr, ww_addr = _address_widths(plan)

        # Pass counters over the membrane rows, with the block of the row (for the bias).
        self.row, self.pass_block, self.pass_pixel = index_signal(R), index_signal(B), index_signal(P)

        # Event expansion counters (each 0 while `starting`); `starting`: the event on offer has issued none of its rows yet.
        self.block, self.tap_y, self.tap_x = index_signal(B), Signal(range(kh + 1)), Signal(range(kw + 1))
        self.starting = Signal(init=1)
        # Whether the next cycle is the last tap on x, on y, the last block, the event's last (all three).
        self.x_last, self.y_last, self.block_last, self.ending = Signal(), Signal(), Signal(), Signal()
        (m_step_y, w_step_y), (m_step_x, w_step_x) = plan.tap_steps(0), plan.tap_steps(1)
        # Membrane rows b*P - u*W_out - v from the first tap's, weight rows the block's, tap row's and tap's.
        self.rows_m = _TapAddress("walk_m", events.payload.first_m, signed(mw_addr), (-m_step_x, -m_step_y, P))
        self.rows_w = _TapAddress("walk_w", events.payload.first_w, ww_addr, (w_step_x, w_step_y, kh * kw * g.in_shape[0]))
        self._step_every_cycle(m)
        issue_row = index_signal(R)
        m.d.comb += [
            issue_row.eq(Mux(in_pass, self.row, self.rows_m.address(self.starting)[:len(issue_row)])),
            issue.row.eq(issue_row),
            weights.addr.eq(self.rows_w.address(self.starting)[:len(weights.addr)]),
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

    def _step_every_cycle(self, m: Module) -> None:
        """The walk's counters, flags and rows, stepped in every cycle without an enable (the step
        state's decode and the event's valid were in front of their enables, the iCE40's slowest path):
        outside an event ``starting`` is set and none of them is read (an event's first cycle reads
        the decoder's values and counters from 0), and an event on offer is walked in every cycle until
        it is taken. This cycle's last tap on x, on y, last block and last of the event come from the
        decoder in an event's first cycle, later from registers set a cycle ahead."""
        event, starting, B = self.events.payload, self.starting, self.plan.blocks
        x_now, y_now, block_now, self.last_now = (
            Mux(starting, first, reg) for first, reg in
            ((event.one_tap_x, self.x_last), (event.one_tap_y, self.y_last), (B == 1, self.block_last),
             (event.one_tap & (B == 1), self.ending)))
        tap_x, tap_y, block = (Mux(starting, 0, counter) for counter in (self.tap_x, self.tap_y, self.block))
        m.d.sync += [self.tap_x.eq(0), self.tap_y.eq(tap_y), self.block.eq(block), self.x_last.eq(event.one_tap_x),
                     self.y_last.eq(y_now), self.block_last.eq(block_now)]
        with m.If(~x_now):
            x_last = tap_x + 1 == event.last_tap_x
            m.d.sync += [self.tap_x.eq(tap_x + 1), self.x_last.eq(x_last), self.ending.eq(x_last & y_now & block_now)]
        with m.Elif(~y_now):
            y_last = tap_y + 1 == event.last_tap_y
            m.d.sync += [self.tap_y.eq(tap_y + 1), self.y_last.eq(y_last),
                         self.ending.eq(event.one_tap_x & y_last & block_now)]
        with m.Else():
            block_last = block + 1 == B - 1
            m.d.sync += [self.tap_y.eq(0), self.y_last.eq(event.one_tap_y), self.block.eq(block + 1),
                         self.block_last.eq(block_last), self.ending.eq(event.one_tap & block_last)]
        for rows in (self.rows_m, self.rows_w):
            with m.If(~x_now):
                rows.step(m, starting, "x")
            with m.Elif(~y_now):
                rows.step(m, starting, "y")
            with m.Else():
                rows.step(m, starting, "block")

    def on_event(self, m: Module) -> None:
        events, event = self.events, self.events.payload
        with m.If(~event.reaches):
            m.d.comb += events.ready.eq(1)           # an input no output pixel reads: one idle cycle
        with m.Else():
            m.d.comb += [self.issue.valid.eq(1), self.issue.op.eq(AccumulateOp.ADD),
                         self.issue.spike.eq(event.spike)]
            m.d.sync += self.starting.eq(self.last_now)
            with m.If(self.last_now):
                m.d.comb += events.ready.eq(1)


class ConvAccumulate(AccumulateStage):
    """Accumulate stage of a convolution: an event costs ``B x taps`` cycles (its window's rows),
    after a cycle in its :class:`TapDecoder`."""

    def __init__(self, plan: LayerPlan):
        assert plan.conv is not None
        super().__init__(plan)

    def taken_events(self, m: Module):
        m.submodules.taps = decoder = TapDecoder(self.plan)
        wiring.connect(m, wiring.flipped(self.events), decoder.inlet)
        return decoder.outlet

    def walk(self, m, events, issue, in_pass, weights, biases) -> RowWalk:
        return _ConvWalk(m, self.plan, events, issue, in_pass, weights, biases)
