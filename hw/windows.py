"""Windows over a stream of codes: the line buffer and the window loader that a streaming convolution and a
streaming max pool share (docs/core.md, "Streaming convolution engine"; the geometry is
:class:`spikesmith.contract.streaming.StreamWindow`).

Code beats carry whole ``T``-bit codes of one pixel (pixels in raster order). :class:`LineBuffer` keeps the
last ``2 * span + sh`` input rows in a ring (one entry a pixel of ``C`` codes); :class:`WindowLoader` builds
each output pixel's window in registers, ``kh`` entries a column, and offers it until it is taken.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..contract.streaming import StreamWindow
from .events import WrappingCounter, index_signal
from .rows import NO_COLLISIONS

__all__ = ["code_beat_layout", "LinesPort", "WindowPort", "StoredWindowPort", "StoreReadPort", "LineBuffer",
           "WindowLoader", "WindowWriter", "group_word"]


def code_beat_layout(lanes: int, timesteps: int) -> data.ArrayLayout:
    """A code beat: ``lanes`` codes of ``T`` bits, the first channel in the LSBs."""
    return data.ArrayLayout(unsigned(timesteps), lanes)


class LinesPort(wiring.Signature):
    """The loader's side of the line buffer: a read (``addr`` now, ``data`` a cycle later), ``release`` of
    the oldest row, and ``held``, the complete rows not released."""

    def __init__(self, window: StreamWindow):
        super().__init__({"addr": Out(range(max(2, window.depth))), "data": In(window.entry_bits),
                          "release": Out(1), "held": In(range(window.line_rows + 1))})


class StoredWindowPort(wiring.Signature):
    """A complete window in the store offered until ``take``: its ``buffer`` (the store address's top bit) and
    its operation mask (bit ``g * slots + c``: chunk ``c`` has a set bit in step group ``g``)."""

    def __init__(self, plan):
        super().__init__({"mask": Out(plan.groups * plan.slots), "buffer": Out(1), "ready": Out(1), "take": In(1)})


class StoreReadPort(wiring.Signature):
    """The datapath's read of the window store: ``addr`` now, ``data`` (a row) a cycle later."""

    def __init__(self, plan):
        super().__init__({"addr": Out(range(2 * plan.store_rows)), "data": In(plan.store_width)})


class WindowPort(wiring.Signature):
    """A complete window (``kh * kw`` entries of ``C`` codes, entry ``ky * kw + kx``) offered until ``take``."""

    def __init__(self, window: StreamWindow):
        kh, kw = window.kernel
        super().__init__({"window": Out(kh * kw * window.entry_bits), "ready": Out(1), "take": In(1)})


def _wrap_add(value, step: int, modulus: int):
    """``(value + step) % modulus`` for ``0 <= value < modulus`` and ``0 <= step <= modulus``, no divider."""
    return Mux(value >= modulus - step, value + step - modulus, value + step)


class LineBuffer(wiring.Component):
    """The ring of input rows: one entry a pixel (``C`` codes of ``T`` bits), written a beat of
    ``input_lanes`` codes at a time, rows in the order they arrive; a beat is taken while its row's slot is free."""

    def __init__(self, window: StreamWindow):
        self.geometry = window
        super().__init__({"codes_in": In(stream.Signature(code_beat_layout(window.input_lanes, window.timesteps))),
                          "lines": In(LinesPort(window))})

    def elaborate(self, platform):
        m = Module()
        w = self.geometry
        depth, width = w.depth, w.in_shape[2]
        # (The loader reads only rows it holds and the writer writes only free ones: no read meets a write.)
        m.submodules.store = store = memory.Memory(shape=unsigned(w.entry_bits), depth=max(2, depth), init=[],
                                                   attrs=NO_COLLISIONS)
        write, read = store.write_port(granularity=w.input_lanes * w.timesteps), store.read_port()
        group, column = WrappingCounter(w.input_groups, "in_group"), WrappingCounter(width, "in_x")
        address = index_signal(depth, name="write_addr")
        held = self.lines.held
        taken = self.codes_in.valid & self.codes_in.ready
        m.d.comb += [
            self.codes_in.ready.eq(held < w.line_rows),
            write.addr.eq(address),
            write.data.eq(Cat(*[self.codes_in.payload.as_value()] * w.input_groups)),
            write.en.eq(Mux(taken, 1 << group.value, 0) if w.input_groups > 1 else taken),
            read.addr.eq(self.lines.addr), self.lines.data.eq(read.data),
        ]
        with m.If(taken):
            group.advance(m)
            with m.If(group.last):
                column.advance(m)
                m.d.sync += address.eq(_wrap_add(address, 1, depth))
        m.d.sync += held.eq(held + (taken & group.last & column.last) - self.lines.release)
        return m


class WindowLoader(wiring.Component):
    """Builds each output pixel's window in raster order: reads ``kh`` entries a column (zeros outside the
    input), shifts each complete column in on the right, offers the window until it is taken.

    Registers: ``row_start`` (``oy * sh - ph``) and ``start_addr``, the ring address of that row (of a
    virtual row above the image in the top padding); ``x``/``y`` and ``row_addr`` of the read; the ring's
    head (its oldest row and that row's address)."""

    def __init__(self, window: StreamWindow):
        self.geometry = window
        super().__init__({"lines": Out(LinesPort(window)), "next": Out(WindowPort(window))})

    def elaborate(self, platform):
        m = Module()
        w = self.geometry
        _, height, width = w.in_shape
        (kh, kw), (sh, sw), (ph, pw) = w.kernel, w.stride, w.padding
        depth, coordinate = w.depth, max(height, width, ph, pw, sh, sw, *w.span).bit_length() + 2
        self.row_start = Signal(signed(coordinate), init=-ph)
        self.start_addr = index_signal(depth, name="start_addr", init=(-ph * width) % depth)
        self.x0 = Signal(signed(coordinate), init=-pw)                   # ox * sw - pw
        self.x, self.y = Signal(signed(coordinate)), Signal(signed(coordinate))
        self.ky = WrappingCounter(kh, "load_ky")
        self.row_addr = index_signal(depth, name="row_addr")              # entry of row y, column 0
        self.head_row = Signal(range(height + 1))                         # image row in the ring's oldest slot
        self.head_addr = index_signal(depth, name="head_addr")
        self.columns_left = Signal(range(kw + 1))
        self.issue, self.loaded = Signal(), Signal()                      # a read now; the window's reads all issued
        sum_addr = Signal(range(depth + width))
        m.d.comb += [sum_addr.eq(self.row_addr + self.x[:max(1, (width - 1).bit_length())]),
                     self.lines.addr.eq(Mux(sum_addr >= depth, sum_addr - depth, sum_addr))]
        self._take_entries(m)
        self._walk(m)
        with m.If(self.next.take):
            m.d.sync += [self.next.ready.eq(0), self.loaded.eq(0)]
        return m

    def _may_issue(self):
        """A read may issue unless it completes a column while the window before has not been taken."""
        return ~(self.loaded & self.ky.last)

    def _take_entries(self, m: Module) -> None:
        """Each read's entry lands a cycle later in the column register; a complete column shifts the window left."""
        w = self.geometry
        (kh, kw), (_, height, width), bits = w.kernel, w.in_shape, w.entry_bits
        column = Array(Signal(bits, name=f"column{ky}") for ky in range(kh))
        arrived, inside, arrived_ky, arrived_last, last_of_pixel = (Signal(), Signal(), Signal.like(self.ky.value),
                                                                   Signal(), Signal())
        m.d.sync += [arrived.eq(self.issue), arrived_ky.eq(self.ky.value), arrived_last.eq(self.ky.last),
                     inside.eq((self.x >= 0) & (self.x < width) & (self.y >= 0) & (self.y < height)),
                     last_of_pixel.eq(self.issue & self.ky.last & (self.columns_left == 1))]
        entry = Mux(inside, self.lines.data, 0)
        window = self.next.window
        with m.If(arrived):
            m.d.sync += column[arrived_ky].eq(entry)
            with m.If(arrived_last):
                shifted = [window[(r * kw + c + 1) * bits:(r * kw + c + 2) * bits] if c < kw - 1
                           else (entry if r == kh - 1 else column[r]) for r in range(kh) for c in range(kw)]
                m.d.sync += window.eq(Cat(*shifted))
                with m.If(last_of_pixel):
                    m.d.sync += self.next.ready.eq(1)

    def _advance_head(self, m: Module) -> None:
        w = self.geometry
        m.d.comb += self.lines.release.eq(1)
        m.d.sync += [self.head_row.eq(self.head_row + 1), self.head_addr.eq(_wrap_add(self.head_addr, w.in_shape[2],
                                                                                        w.depth))]

    def _start_pixel(self, m: Module, first_of_row: bool, x0) -> None:
        """The next pixel (its window's left edge ``x0``): all ``kw`` columns at a row's start (and with column
        dilation), else the ``min(kw, sw)`` new ones on the right."""
        w = self.geometry
        skip = 0 if first_of_row or not w.reuses_columns else w.kernel[1] - w.pixel_columns(False)
        m.d.sync += [self.columns_left.eq(w.pixel_columns(first_of_row)), self.x0.eq(x0), self.x.eq(x0 + skip),
                     self.y.eq(self.row_start), self.row_addr.eq(self.start_addr)]
        self.ky.restart(m)

    def _read(self, m: Module) -> None:
        """One read: the next row of the column (``dh`` rows down), or the next column (``dw`` to the right).
        The next window's reads start at once; only a read that completes a column (and so shifts the window)
        waits until the previous window has been taken."""
        w = self.geometry
        (dh, dw), width, depth = w.dilation, w.in_shape[2], w.depth
        m.d.comb += self.issue.eq(self._may_issue())
        with m.If(self.issue):
            self.ky.advance(m)
            m.d.sync += [self.y.eq(self.y + dh), self.row_addr.eq(_wrap_add(self.row_addr, (dh * width) % depth, depth))]
            with m.If(self.ky.last):
                m.d.sync += [self.columns_left.eq(self.columns_left - 1), self.x.eq(self.x + dw),
                             self.y.eq(self.row_start), self.row_addr.eq(self.start_addr)]

    def _walk(self, m: Module) -> None:
        w = self.geometry
        _, height, width = w.in_shape
        (sh, sw), (ph, pw), depth = w.stride, w.padding, w.depth
        out_row, out_col = WrappingCounter(w.out_rows, "out_y"), WrappingCounter(w.out_columns, "out_x")
        row_start, head_row, held = self.row_start, self.head_row, self.lines.held
        low = Mux(row_start < 0, 0, row_start)
        high = Mux(row_start + w.span[0] - 1 > height - 1, height - 1, row_start + w.span[0] - 1)
        with m.FSM(name="loader"):
            with m.State("RELEASE"):            # drop the rows above this output row's, wait for its last
                with m.If(head_row < low):
                    with m.If(held > 0):
                        self._advance_head(m)
                with m.Elif(held > high - head_row):
                    self._start_pixel(m, True, -pw)
                    m.next = "LOAD"
            with m.State("LOAD"):               # one read a cycle (a column's last once the previous window is taken)
                self._read(m)
                with m.If(self.issue & self.ky.last & (self.columns_left == 1)):   # the window's last read
                    m.d.sync += self.loaded.eq(1)
                    out_col.advance(m)
                    with m.If(~out_col.last):
                        self._start_pixel(m, False, self.x0 + sw)
                    with m.Else():
                        out_row.advance(m)
                        m.d.sync += [row_start.eq(Mux(out_row.last, -ph, row_start + sh)),
                                     self.start_addr.eq(_wrap_add(self.start_addr, (sh * width) % depth, depth))]
                        m.next = "RELEASE"
                        with m.If(out_row.last):
                            m.next = "IMAGE_END"
            with m.State("IMAGE_END"):          # release the image's remaining rows, then the next image
                with m.If(head_row == height):
                    m.d.sync += [head_row.eq(0), self.start_addr.eq(_wrap_add(self.head_addr, (-ph * width) % depth,
                                                                             depth))]
                    m.next = "RELEASE"
                with m.Elif(held > 0):
                    self._advance_head(m)


class WindowWriter(WindowLoader):
    """The window of a streaming convolution in a memory (``StreamConvPlan.window_in_ram``): the loader's walk,
    every pixel's ``kw`` columns read (no column reuse), each entry written a cycle after its read into the
    store's buffer for the next window, at entry ``kx * kh + ky`` (the order of the reads, and of the plan's taps
    ``(kx, ky, ci)``), and its chunks' bits of the operation mask set. Reads wait until the window before has
    been taken (its buffer then holds the window the sequencer has finished). The store has two buffers of
    ``store_rows`` rows: a row is an entry of ``C_in / K`` chunks, or a chunk of ``K / C_in`` entries."""

    def __init__(self, plan):
        self.plan, self.geometry = plan, plan.window
        wiring.Component.__init__(self, {"lines": Out(LinesPort(plan.window)), "next": Out(StoredWindowPort(plan)),
                                         "store": In(StoreReadPort(plan))})

    def _may_issue(self):
        return ~self.loaded

    def _take_entries(self, m: Module) -> None:
        p = self.plan
        (kh, kw), (_, height, width) = p.geometry.kernel, p.window.in_shape
        entry_bits, per_row = p.window.entry_bits, p.entries_per_row
        m.submodules.store = store = memory.Memory(shape=unsigned(p.store_width), depth=2 * p.store_rows, init=[],
                                                   attrs=NO_COLLISIONS)
        write, read = store.write_port(granularity=entry_bits), store.read_port()
        m.d.comb += [read.addr.eq(self.store.addr), self.store.data.eq(read.data)]
        arrived, inside, arrived_last = Signal(), Signal(), Signal()
        m.d.sync += [arrived.eq(self.issue), arrived_last.eq(self.issue & self.ky.last & (self.columns_left == 1)),
                     inside.eq((self.x >= 0) & (self.x < width) & (self.y >= 0) & (self.y < height))]
        entry = Mux(inside, self.lines.data, 0)
        slot = WrappingCounter(per_row, "store_slot")                   # the entry's place in its row
        row = Signal(range(max(2, p.store_rows)), name="store_row")
        buffer = self.next.buffer
        m.d.comb += [write.addr.eq(Cat(row, buffer) if p.store_rows > 1 else buffer),
                     write.data.eq(Cat(*[entry] * per_row)),
                     write.en.eq(Mux(arrived, 1 << slot.value, 0) if per_row > 1 else arrived)]
        with m.If(arrived):
            self._set_mask(m, entry, row, slot)
            slot.advance(m)
            with m.If(slot.last):
                m.d.sync += row.eq(row + 1)
            with m.If(arrived_last):
                m.d.sync += [self.next.ready.eq(1), row.eq(0)]
                slot.restart(m)
        with m.If(self.next.take):
            m.d.sync += buffer.eq(~buffer)

    def _set_mask(self, m: Module, entry, row, slot) -> None:
        """The arriving entry's bits of the operation mask: each of its chunks' (an entry of ``C_in / K``), or
        its chunk's, OR-ed over the chunk's entries (the first assigns)."""
        p, G, K, T = self.plan, self.plan.groups, self.plan.chunk, self.plan.timesteps
        mask, per_row, per_entry = self.next.mask, p.entries_per_row, p.chunks_per_row
        codes = [entry[ci * T:(ci + 1) * T] for ci in range(p.window.in_shape[0])]
        bits = [[Signal(name=f"entry_mask_{j}_{g}") for g in range(G)] for j in range(per_entry)]
        for j in range(per_entry):
            taps = codes[j * K:(j + 1) * K] if per_row == 1 else codes
            m.d.comb += [bits[j][g].eq(Cat(group_word(p, code, G - 1 - g) for code in taps).any()) for g in range(G)]
        for r in range(p.store_rows):
            chunks = [(j, r * per_entry + j) for j in range(per_entry) if r * per_entry + j < p.chunks]
            if not chunks:
                continue
            with m.If(row == r):
                for j, c in chunks:
                    for g in range(G):
                        index = g * p.slots + c
                        kept = mask[index] & (slot.value != 0) if per_row > 1 else 0
                        m.d.sync += mask[index].eq(bits[j][g] | kept)


def group_word(plan, code, word):
    """Bits ``word*S .. word*S + S - 1`` of a code (zeros above bit ``T-1``): the steps of group ``G-1-word``."""
    padded = Cat(code, Const(0, plan.pad)) if plan.pad else code
    return padded.word_select(word, plan.op_steps)
