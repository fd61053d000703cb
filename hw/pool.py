"""The max-pooling stage (:class:`PoolStage`): a convolution engine's row beats in, the pooled spike events out.

On MSB-first spike trains a window's maximum is a race (docs/semantics.md, "Max pooling"):
an input is still racing at step ``t`` exactly when its spike bits of steps ``0..t-1`` equal
the window's output bits of those steps, and the output spikes at ``t`` when a racing input
does. The producer's fire stage sends every membrane row once per step with its lanes' spike
bits and their history (:func:`~.events.spike_row_layout`); this stage visits each window the
row's pixel lies in, one window per cycle, compares the history with the window's prefix (a
``T``-bit prefix per pooled output, ``L`` per memory row) and emits an output the first time a
racing input spikes in the step. Comparators and one adder for the address, no arithmetic on
codes. Stale bits never need clearing: every window is visited every step, and its first
visit in a step (its first real tap in row order, a constant) ignores the prefix's bits from
this step on (docs/core.md, "Max pooling").
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..contract.network import unsigned_width
from ..contract.plan import PoolPlan
from .events import index_signal, lowest_set_lane, pixel_event_layout, spike_event_layout, spike_row_layout
from .rows import lanes_view, lookup

__all__ = ["PoolStage", "pooled_event_layout"]


def pooled_event_layout(plan: PoolPlan):
    """The stage's events: pixels of the pooled map for a convolution, addresses for a dense layer."""
    return pixel_event_layout(plan.geometry.out_shape) if plan.emits_pixels else spike_event_layout(plan.output_addr_width)


class _Visits:
    """The window visits of the beat on offer and of the held beat.

    The beat on offer is at ``(block, y, x)``, counted (the producer sends every row of every
    step in order). Its windows are ``oy0 + j * dy`` by ``ox0 + k * dx``; the held beat walks
    them with ``jy``/``jx``, keeping the current window's pooled coordinates and memory row.
    """

    def __init__(self, m: Module, plan: PoolPlan):
        g = plan.geometry
        channels, height, width = g.in_shape
        _, out_h, out_w = g.out_shape
        self.plan, self.out_w = plan, out_w
        self.dy, self.dx = plan.window_step(0), plan.window_step(1)
        table_y, table_x = plan.visits(0), plan.visits(1)
        count_y, count_x = max(r[1] for r in table_y), max(c[1] for c in table_x)

        # The beat on offer.
        self.y, self.x = index_signal(height), index_signal(width)
        self.block_row, self.block_channel = index_signal(plan.rows), index_signal(channels)
        self.oy0 = lookup(m, "first_window_y", self.y, [r[0] for r in table_y], unsigned_width(out_h))
        self.ny = lookup(m, "windows_y", self.y, [r[1] for r in table_y], unsigned_width(count_y))
        self.fy = lookup(m, "first_taps_y", self.y, [r[2] for r in table_y], max(1, count_y))
        self.oy0_row = lookup(m, "first_window_row", self.y, [r[0] * out_w for r in table_y], unsigned_width(plan.pixels))
        self.ox0 = lookup(m, "first_window_x", self.x, [c[0] for c in table_x], unsigned_width(out_w))
        self.nx = lookup(m, "windows_x", self.x, [c[1] for c in table_x], unsigned_width(count_x))
        self.fx = lookup(m, "first_taps_x", self.x, [c[2] for c in table_x], max(1, count_x))

        # The held beat and its current window.
        self.held_ny, self.held_nx = Signal.like(self.ny), Signal.like(self.nx)
        self.held_fy, self.held_fx = Signal.like(self.fy), Signal.like(self.fx)
        self.held_ox0 = Signal.like(self.ox0)
        self.held_block_row, self.held_block_channel = Signal.like(self.block_row), Signal.like(self.block_channel)
        self.jy, self.jx = Signal(range(count_y + 1)), Signal(range(count_x + 1))
        self.oy, self.ox = Signal.like(self.oy0), Signal.like(self.ox0)
        self.oy_row = Signal.like(self.oy0_row)
        self.row = index_signal(plan.rows)                            # memory row of the current window
        m.d.comb += self.row.eq(self.held_block_row + self.oy_row + self.ox)
        self.first = Signal()                                         # the window's first visit this step
        m.d.comb += self.first.eq(self.held_fy.bit_select(self.jy, 1) & self.held_fx.bit_select(self.jx, 1))
        self.last = Signal()                                          # the held beat's last window
        m.d.comb += self.last.eq((self.jx == self.held_nx - 1) & (self.jy == self.held_ny - 1))
        self.offered_row = index_signal(plan.rows)                    # memory row of the offered beat's first window
        self.next_row = index_signal(plan.rows)                       # memory row of the held beat's next window
        last_x = self.jx == self.held_nx - 1
        m.d.comb += [
            self.offered_row.eq(self.block_row + self.oy0_row + self.ox0),
            self.next_row.eq(Mux(last_x, self.held_block_row + self.oy_row + self.dy * out_w + self.held_ox0,
                                 self.held_block_row + self.oy_row + self.ox + self.dx)),
        ]

    def has_windows(self):
        return (self.ny != 0) & (self.nx != 0)

    def take(self, m: Module) -> None:
        """Hold the offered beat (its first window current) and count on to the next row."""
        plan, channels, height, width = self.plan, *self.plan.geometry.in_shape
        m.d.sync += [self.held_ny.eq(self.ny), self.held_nx.eq(self.nx), self.held_fy.eq(self.fy),
                     self.held_fx.eq(self.fx), self.held_ox0.eq(self.ox0), self.held_block_row.eq(self.block_row),
                     self.held_block_channel.eq(self.block_channel), self.jy.eq(0), self.jx.eq(0),
                     self.oy.eq(self.oy0), self.ox.eq(self.ox0), self.oy_row.eq(self.oy0_row)]
        end_of_line, end_of_map = self.x == width - 1, (self.x == width - 1) & (self.y == height - 1)
        m.d.sync += self.x.eq(Mux(end_of_line, 0, self.x + 1))
        with m.If(end_of_line):
            m.d.sync += self.y.eq(Mux(end_of_map, 0, self.y + 1))
        with m.If(end_of_map):
            last_block = self.block_channel == channels - plan.lanes
            m.d.sync += [self.block_row.eq(Mux(last_block, 0, self.block_row + plan.pixels)),
                         self.block_channel.eq(Mux(last_block, 0, self.block_channel + plan.lanes))]

    def advance(self, m: Module) -> None:
        """Make the held beat's next window current (``next_row``'s)."""
        with m.If(self.jx == self.held_nx - 1):
            m.d.sync += [self.jx.eq(0), self.ox.eq(self.held_ox0), self.jy.eq(self.jy + 1),
                         self.oy.eq(self.oy + self.dy), self.oy_row.eq(self.oy_row + self.dy * self.out_w)]
        with m.Else():
            m.d.sync += [self.jx.eq(self.jx + 1), self.ox.eq(self.ox + self.dx)]


class PoolStage(wiring.Component):
    """Max pooling of a convolution engine's spikes, step by step, exact (docs/semantics.md).

    ``rows``: the producer's row beats, every row of every step in its row order ``(block, y,
    x)``, each step closed by an end marker. ``spikes``: the pooled outputs that spike, one
    event each per step (``(channel, y, x)`` of the pooled map, or the address ``lane * rows +
    row`` for a dense reader), each step closed by an end marker. A window visit takes one
    cycle, an emitted event one more (``PoolPlan.step_cycles``).
    """

    def __init__(self, plan: PoolPlan):
        self.plan = plan
        super().__init__({
            "rows": In(stream.Signature(spike_row_layout(plan.lanes, plan.timesteps))),
            "spikes": Out(stream.Signature(pooled_event_layout(plan))),
        })

    def elaborate(self, platform):
        m = Module()
        plan, L, T = self.plan, self.plan.lanes, self.plan.timesteps
        store = memory.Memory(shape=unsigned(L * T), depth=max(2, plan.rows), init=[])
        m.submodules.prefixes = store
        write = store.write_port()
        read = store.read_port(transparent_for=(write,))   # a window visited again next cycle reads its new prefix
        visits = _Visits(m, plan)
        step = index_signal(T)
        held = Signal()                     # a beat is held; its current window's prefix is on read.data
        held_spikes, held_history = Signal(L), Signal(L * T)
        pending = Signal(L)                 # lanes of the last executed window still to emit
        rows = self.rows

        execute = Signal()
        m.d.comb += execute.eq(held & ~pending.any())
        take = Signal()
        m.d.comb += take.eq(rows.valid & ~rows.payload.end & (~held | (execute & visits.last)))
        m.d.comb += [
            read.addr.eq(Mux(take, visits.offered_row, visits.next_row)),
            read.en.eq(take | (execute & ~visits.last)),
        ]
        with m.If(take):
            visits.take(m)
            m.d.sync += [held.eq(visits.has_windows()), held_spikes.eq(rows.payload.spikes),
                         held_history.eq(rows.payload.history.as_value())]
        with m.Elif(execute & visits.last):
            m.d.sync += held.eq(0)
        with m.If(execute & ~visits.last):
            visits.advance(m)

        fired = self._race(m, read.data, write, visits, step, execute, held_spikes, held_history)
        self._emit(m, visits, fired, pending, held, execute, step, take)
        return m

    def _race(self, m, prefixes, write, visits: _Visits, step, execute, held_spikes, held_history) -> Signal:
        """The current window's race, lane by lane: which outputs spike now (first time this step)."""
        L, T = self.plan.lanes, self.plan.timesteps
        earlier, through = Signal(T), Signal(T)         # bits of the steps before this one; and this one
        m.d.comb += [earlier.eq((1 << step) - 1), through.eq((earlier << 1) | 1)]
        prefix = lanes_view(T, L, prefixes, sign=False)
        history = lanes_view(T, L, held_history, sign=False)
        fired, updated = Signal(L), []
        for lane in range(L):
            old = Signal(T, name=f"prefix{lane}")
            m.d.comb += old.eq(prefix[lane] & Mux(visits.first, earlier, through))
            racing = history[lane] == (old & earlier)
            m.d.comb += fired[lane].eq(held_spikes[lane] & racing & ~old.bit_select(step, 1))
            updated.append((old | (fired[lane] << step))[:T])
        m.d.comb += [write.addr.eq(visits.row), write.data.eq(Cat(updated)), write.en.eq(execute)]
        return fired

    def _emit(self, m, visits: _Visits, fired, pending, held, execute, step, take) -> None:
        """One event per pending lane, lowest first; the end marker once the step's beats are all done."""
        plan, L, T = self.plan, self.plan.lanes, self.plan.timesteps
        rows, events = self.rows, self.spikes
        where_row, where_channel = Signal.like(visits.row), Signal.like(visits.held_block_channel)
        where_y, where_x = Signal.like(visits.oy), Signal.like(visits.ox)
        with m.If(execute):
            m.d.sync += [pending.eq(fired), where_row.eq(visits.row), where_channel.eq(visits.held_block_channel),
                         where_y.eq(visits.oy), where_x.eq(visits.ox)]
        lowest = lowest_set_lane(m, pending, L)
        emitting = pending.any()
        closing = rows.valid & rows.payload.end & ~held & ~emitting
        m.d.comb += [events.valid.eq(emitting | closing), events.payload.end.eq(~emitting),
                     events.payload.spike.eq(emitting)]
        if plan.emits_pixels:
            m.d.comb += [events.payload.channel.eq(where_channel + lowest), events.payload.y.eq(where_y),
                         events.payload.x.eq(where_x)]
        else:
            offset = lookup(m, "lane_offset", lowest, [lane * plan.rows for lane in range(L)], plan.output_addr_width)
            m.d.comb += events.payload.addr.eq(offset + where_row)
        with m.If(events.valid & events.ready & emitting):
            m.d.sync += pending.eq(pending & (pending - 1))          # x & (x-1) clears the lowest bit
        with m.If(closing & events.ready):
            m.d.comb += rows.ready.eq(1)
            m.d.sync += step.eq(Mux(step == T - 1, 0, step + 1))
        with m.Elif(take):
            m.d.comb += rows.ready.eq(1)
