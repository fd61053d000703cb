"""The streaming convolution engine: a line buffer of codes, a window in registers, chunked accumulation
and a neuron-major fire unit (docs/core.md, "Streaming convolution engine"; the plan is
:class:`spikesmith.contract.streaming.StreamConvPlan`).

``codes_in``: code beats of the input (``input_lanes`` codes of one pixel, pixels in raster order,
``C_in / input_lanes`` beats a pixel). ``codes_out``: this layer's codes, ``L`` channels a beat, blocks
``0 .. B-1`` of each output pixel in raster order. Every code is the exact one of docs/semantics.md.

``StreamConv = LineBuffer --LinesPort--> WindowLoader --WindowPort--> ChunkSequencer --ops-->
ChunkDatapath --finished--> NeuronFire``:

- :class:`LineBuffer`: each input beat into a ring of ``2*kh + sh`` rows of ``W`` pixels (one entry a
  pixel of ``C_in`` codes); a row is taken only while its slot is free;
- :class:`WindowLoader`: for each output pixel, the new columns of its window, ``kh`` entries a column,
  shifted into the *next* window; it releases the rows no later output row reads;
- :class:`ChunkSequencer`: takes a complete window when idle; per block of ``L`` channels, one operation a
  cycle: ``(t, chunk)`` for every chunk whose bits at step ``t`` are not all zero (every one with skipping
  off), then the bias;
- :class:`ChunkDatapath`: the chunk's bits and weights, a masked adder tree per lane (registered every
  two levels), the shift by ``T-1-t``, the membrane register; a finished block into a queue;
- :class:`NeuronFire`: a finished block's membranes clamped, then ``T`` compare-subtract steps
  (``V <- 2V; V >= theta: bit, V <- V - theta``) make each lane's code, MSB first.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..contract.plan import rom_in_logic
from ..contract.streaming import ADDER_LEVELS_PER_STAGE, StreamConvPlan
from .events import WrappingCounter, index_signal, lowest_set_lane
from .rows import NO_COLLISIONS, lanes_view, mux_tree, row_table

__all__ = ["StreamConv", "LineBuffer", "WindowLoader", "ChunkSequencer", "ChunkDatapath", "NeuronFire",
           "code_beat_layout", "finished_layout", "LinesPort", "WindowPort", "op_layout"]


def code_beat_layout(lanes: int, timesteps: int) -> data.ArrayLayout:
    """A code beat: ``lanes`` codes of ``T`` bits, the first channel in the LSBs."""
    return data.ArrayLayout(unsigned(timesteps), lanes)


def finished_layout(plan: StreamConvPlan) -> data.StructLayout:
    """A finished block: each lane's membrane after the bias (``membrane_width``-bit signed) and threshold."""
    return data.StructLayout({"membranes": data.ArrayLayout(signed(plan.membrane_width), plan.lanes),
                              "thresholds": data.ArrayLayout(unsigned(plan.threshold_width), plan.lanes)})


def op_layout(plan: StreamConvPlan) -> data.StructLayout:
    """One operation of the sequencer: add a chunk's weights at step ``T-1-shift`` (or the bias) to block
    ``block``'s membranes, from zero when ``clear`` (the block's first operation)."""
    return data.StructLayout({"valid": 1, "bias": 1, "clear": 1, "shift": range(max(2, plan.timesteps)),
                              "chunk": range(max(2, plan.slots)), "block": range(max(2, plan.blocks))})


def _entry_bits(plan: StreamConvPlan) -> int:
    return plan.geometry.in_shape[0] * plan.timesteps


def _depth(plan: StreamConvPlan) -> int:
    return plan.line_rows * plan.geometry.in_shape[2]


class LinesPort(wiring.Signature):
    """The loader's side of the line buffer: a read (``addr`` now, ``data`` a cycle later), ``release`` of
    the oldest row, and ``held``, the complete rows not released."""

    def __init__(self, plan: StreamConvPlan):
        super().__init__({"addr": Out(range(max(2, _depth(plan)))), "data": In(_entry_bits(plan)),
                          "release": Out(1), "held": In(range(plan.line_rows + 1))})


class WindowPort(wiring.Signature):
    """A complete window (``kh * kw`` entries of ``C_in`` codes, entry ``ky * kw + kx``) offered until ``take``."""

    def __init__(self, plan: StreamConvPlan):
        kh, kw = plan.geometry.kernel
        super().__init__({"window": Out(kh * kw * _entry_bits(plan)), "ready": Out(1), "take": In(1)})


def _wrap_add(value, step: int, modulus: int):
    """``(value + step) % modulus`` for ``0 <= value < modulus`` and ``0 <= step <= modulus``, no divider."""
    return Mux(value >= modulus - step, value + step - modulus, value + step)


class LineBuffer(wiring.Component):
    """The ring of input rows: one entry a pixel (``C_in`` codes of ``T`` bits), written a beat of
    ``input_lanes`` codes at a time, rows in the order they arrive."""

    def __init__(self, plan: StreamConvPlan):
        self.plan = plan
        super().__init__({"codes_in": In(stream.Signature(code_beat_layout(plan.input_lanes, plan.timesteps))),
                          "lines": In(LinesPort(plan))})

    def elaborate(self, platform):
        m = Module()
        p, depth, width = self.plan, _depth(self.plan), self.plan.geometry.in_shape[2]
        # (The loader reads only rows it holds and the writer writes only free ones: no read meets a write.)
        m.submodules.store = store = memory.Memory(shape=unsigned(_entry_bits(p)), depth=max(2, depth), init=[],
                                                   attrs=NO_COLLISIONS)
        write, read = store.write_port(granularity=p.input_lanes * p.timesteps), store.read_port()
        group, column = WrappingCounter(p.input_groups, "in_group"), WrappingCounter(width, "in_x")
        address = index_signal(depth, name="write_addr")
        held = self.lines.held
        taken = self.codes_in.valid & self.codes_in.ready
        m.d.comb += [
            self.codes_in.ready.eq(held < p.line_rows),
            write.addr.eq(address),
            write.data.eq(Cat(*[self.codes_in.payload.as_value()] * p.input_groups)),
            write.en.eq(Mux(taken, 1 << group.value, 0) if p.input_groups > 1 else taken),
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
    input), shifts each complete column in on the right, offers the window until it is taken."""

    def __init__(self, plan: StreamConvPlan):
        self.plan = plan
        super().__init__({"lines": Out(LinesPort(plan)), "next": Out(WindowPort(plan))})

    def elaborate(self, platform):
        m = Module()
        p, g = self.plan, self.plan.geometry
        _, height, width = g.in_shape
        (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
        depth = _depth(p)
        self.row_start = Signal(signed(max(height, ph, sh).bit_length() + 2), init=-ph)   # oy * sh - ph
        self.x = Signal(signed(max(width, pw, sw, kw).bit_length() + 2), init=-pw)         # column being read
        self.y = Signal.like(self.row_start)                                               # row being read
        self.ky = WrappingCounter(kh, "load_ky")
        self.row_addr = index_signal(depth, name="row_addr")          # entry of row y, column 0
        self.head_row = Signal(range(height + 1))                     # image row in the ring's oldest slot
        self.head_addr = index_signal(depth, name="head_addr")
        self.columns_left = Signal(range(kw + 1))
        self.issue, self.loaded = Signal(), Signal()                  # a read now; the window's reads all issued
        sum_addr = Signal(range(depth + width))
        m.d.comb += [sum_addr.eq(self.row_addr + self.x[:max(1, (width - 1).bit_length())]),
                     self.lines.addr.eq(Mux(sum_addr >= depth, sum_addr - depth, sum_addr))]
        self._shift_columns(m)
        self._walk(m)
        with m.If(self.next.take):
            m.d.sync += [self.next.ready.eq(0), self.loaded.eq(0)]
        return m

    def _shift_columns(self, m: Module) -> None:
        """Each read's entry lands a cycle later in the column register; a complete column shifts the window left."""
        p, (kh, kw) = self.plan, self.plan.geometry.kernel
        _, height, width = p.geometry.in_shape
        bits = _entry_bits(p)
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
        width = self.plan.geometry.in_shape[2]
        m.d.comb += self.lines.release.eq(1)
        m.d.sync += [self.head_row.eq(self.head_row + 1), self.head_addr.eq(_wrap_add(self.head_addr, width,
                                                                                        _depth(self.plan)))]

    def _start_pixel(self, m: Module, first_of_row: bool, x) -> None:
        """The next pixel's columns: all ``kw`` at a row's start, else the ``min(kw, sw)`` new ones."""
        m.d.sync += [self.columns_left.eq(self.plan.pixel_columns(first_of_row)), self.x.eq(x),
                     self.y.eq(self.row_start), self.row_addr.eq(self.head_addr)]
        self.ky.restart(m)

    def _walk(self, m: Module) -> None:
        p, g = self.plan, self.plan.geometry
        _, height, width = g.in_shape
        (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
        out_row, out_col = WrappingCounter(g.out_shape[1], "out_y"), WrappingCounter(g.out_shape[2], "out_x")
        row_start, head_row, held = self.row_start, self.head_row, self.lines.held
        low = Mux(row_start < 0, 0, row_start)
        high = Mux(row_start + kh - 1 > height - 1, height - 1, row_start + kh - 1)
        with m.FSM(name="loader"):
            with m.State("RELEASE"):            # drop the rows above this output row's, wait for its last
                with m.If(head_row < low):
                    with m.If(held > 0):
                        self._advance_head(m)
                with m.Elif(held > high - head_row):
                    self._start_pixel(m, True, -pw)
                    m.next = "LOAD"
            with m.State("LOAD"):               # one read a cycle once the previous window is taken
                m.d.comb += self.issue.eq(~self.loaded)
                with m.If(self.issue):
                    self.ky.advance(m)
                    m.d.sync += self.y.eq(self.y + 1)
                    with m.If((self.y >= 0) & (self.y < height)):
                        m.d.sync += self.row_addr.eq(_wrap_add(self.row_addr, width, _depth(p)))
                    with m.If(self.ky.last):
                        m.d.sync += [self.columns_left.eq(self.columns_left - 1), self.x.eq(self.x + 1),
                                     self.y.eq(row_start), self.row_addr.eq(self.head_addr)]
                        with m.If(self.columns_left == 1):       # the window's last read: on to the next pixel
                            m.d.sync += self.loaded.eq(1)
                            out_col.advance(m)
                            with m.If(~out_col.last):
                                self._start_pixel(m, False, self.x + 1 + (sw - min(kw, sw)))
                            with m.Else():
                                out_row.advance(m)
                                m.d.sync += row_start.eq(Mux(out_row.last, -ph, row_start + sh))
                                m.next = "RELEASE"
                                with m.If(out_row.last):
                                    m.next = "IMAGE_END"
            with m.State("IMAGE_END"):          # release the image's remaining rows, then the next image
                with m.If(head_row == height):
                    m.d.sync += head_row.eq(0)
                    m.next = "RELEASE"
                with m.Elif(held > 0):
                    self._advance_head(m)


def _tap_code(plan: StreamConvPlan, window, tap: int):
    """The code of tap ``(ky, kx, ci)`` (row-major index) of a window, or 0 past the kernel."""
    T = plan.timesteps
    return window[tap * T:(tap + 1) * T] if tap < plan.taps else Const(0, T)


class ChunkSequencer(wiring.Component):
    """Takes a window when idle and issues its operations, one a cycle: per block, every ``(t, chunk)``
    whose bits are not all zero (every one with skipping off), lowest ``t * slots + chunk`` first, then the
    block's bias, which waits for room in the queue of finished blocks (``credit``, returned by
    ``credit_back``). ``window`` holds the taken window while its operations read it."""

    def __init__(self, plan: StreamConvPlan):
        self.plan = plan
        kh, kw = plan.geometry.kernel
        super().__init__({"next": In(WindowPort(plan)), "window": Out(kh * kw * _entry_bits(plan)),
                          "ops": Out(op_layout(plan)), "credit_back": In(1)})

    def _mask(self, window):
        """Bit ``t * slots + c``: chunk ``c`` has a set bit at step ``t`` (always, for a chunk, with skipping off)."""
        p, T, K = self.plan, self.plan.timesteps, self.plan.chunk
        bits = []
        for t in range(T):
            for c in range(p.slots):
                if c >= p.chunks or not p.skip_silent:
                    bits.append(Const(int(c < p.chunks), 1))
                else:
                    bits.append(Cat(_tap_code(p, window, c * K + k)[T - 1 - t] for k in range(K)).any())
        return Cat(*bits)

    def elaborate(self, platform):
        m = Module()
        p, T = self.plan, self.plan.timesteps
        slot_bits = max(0, (p.slots - 1).bit_length())
        busy, first = Signal(), Signal(init=1)
        mask, remaining = Signal(T * p.slots), Signal(T * p.slots)
        block = WrappingCounter(p.blocks, "block")
        credit = Signal(range(p.finished_queue + 1), init=p.finished_queue)
        m.d.comb += self.next.take.eq(self.next.ready & ~busy)
        with m.If(self.next.take):
            taken_mask = self._mask(self.next.window)
            m.d.sync += [self.window.eq(self.next.window), busy.eq(1), mask.eq(taken_mask),
                         remaining.eq(taken_mask), first.eq(1)]
            block.restart(m)
        lowest = lowest_set_lane(m, remaining, T * p.slots)
        add = busy & remaining.any()
        bias = busy & ~remaining.any() & (credit > 0)
        ops = self.ops
        m.d.sync += [ops.valid.eq(add | bias), ops.bias.eq(bias), ops.clear.eq(first), ops.block.eq(block.value),
                     ops.shift.eq((T - 1) - (lowest[slot_bits:] if slot_bits < len(lowest) else 0)),
                     ops.chunk.eq(lowest[:slot_bits] if slot_bits else 0),
                     credit.eq(credit - bias + self.credit_back)]
        with m.If(add):
            m.d.sync += [remaining.eq(remaining & (remaining - 1)), first.eq(0)]
        with m.If(bias):
            m.d.sync += first.eq(1)
            block.advance(m)
            with m.If(block.last):
                m.d.sync += busy.eq(0)
            with m.Else():
                m.d.sync += remaining.eq(mask)
        return m


def _delayed(m: Module, value, cycles: int, name: str):
    for k in range(cycles):
        stage = Signal.like(value, name=f"{name}_d{k + 1}")
        m.d.sync += stage.eq(value)
        value = stage
    return value


class ChunkDatapath(wiring.Component):
    """Executes operations: the chunk's codes and its bit ``T-1-t`` (two cycles, beside the tables' two), a
    masked adder tree per lane (a register every ``ADDER_LEVELS_PER_STAGE`` levels), the shift, then
    ``V <- (0 if clear else V) + addend``. A block's bias operation sends its membranes and thresholds on."""

    def __init__(self, plan: StreamConvPlan):
        self.plan = plan
        kh, kw = plan.geometry.kernel
        super().__init__({"ops": In(op_layout(plan)), "window": In(kh * kw * _entry_bits(plan)),
                          "finished": Out(stream.Signature(finished_layout(plan)))})

    def _tree(self, m: Module, terms: list, lane: int):
        """Sum of ``terms`` as a balanced tree of ``sum_width``-bit adders, registered every two levels."""
        level, depth = terms, 0
        while len(level) > 1:
            level = [level[k] + level[k + 1] if k + 1 < len(level) else level[k] for k in range(0, len(level), 2)]
            depth += 1
            if depth % ADDER_LEVELS_PER_STAGE == 0 or len(level) == 1:
                registered = [Signal(signed(self.plan.sum_width), name=f"sum{lane}_l{depth}_{k}")
                              for k in range(len(level))]
                m.d.sync += [r.eq(v) for r, v in zip(registered, level)]
                level = registered
        return level[0]

    def elaborate(self, platform):
        m = Module()
        p, K, L, ops = self.plan, self.plan.chunk, self.plan.lanes, self.ops
        chosen = [Signal(p.timesteps, name=f"chosen{k}") for k in range(K)]    # the chunk's codes (cycle 1)
        m.d.sync += [chosen[k].eq(mux_tree([_tap_code(p, self.window, c * K + k) for c in range(p.chunks)],
                                           ops.chunk)) for k in range(K)]
        bits = Signal(K)                                                         # their bit T-1-t (cycle 2)
        m.d.sync += bits.eq(Cat(chosen[k].bit_select(_delayed(m, ops.shift, 1, "shift"), 1) for k in range(K)))
        weights = row_table(m, "weights", L * K * p.weight_width, p.weight_rows,
                            logic=rom_in_logic(L * K * p.weight_width, len(p.weight_rows)))
        biases = row_table(m, "biases", L * p.bias_width, p.bias_rows)
        thresholds = row_table(m, "thresholds", L * p.threshold_width, p.threshold_rows)
        slot_bits = max(0, (p.slots - 1).bit_length())
        m.d.comb += [weights.addr.eq(Cat(ops.chunk[:slot_bits], ops.block) if slot_bits else ops.block),
                     biases.addr.eq(ops.block), thresholds.addr.eq(ops.block)]
        weight = lanes_view(p.weight_width, L * K, weights.data)
        sums = [self._tree(m, [Mux(bits[k], weight[lane * K + k], 0) for k in range(K)], lane) for lane in range(L)]
        at_tree = _delayed(m, ops.as_value(), 2 + p.adder_stages, "op")
        op = op_layout(p)(at_tree)
        bias = lanes_view(p.bias_width, L, _delayed(m, biases.data, p.adder_stages, "bias_row"))
        addends = [Signal(signed(p.membrane_width), name=f"addend{lane}") for lane in range(L)]
        m.d.sync += [addends[lane].eq(Mux(op.bias, bias[lane], sums[lane] << op.shift)) for lane in range(L)]
        last = op_layout(p)(_delayed(m, at_tree, 1, "op_add"))
        membranes = [Signal(signed(p.membrane_width), name=f"membrane{lane}") for lane in range(L)]
        updated = [Mux(last.clear, 0, membranes[lane]) + addends[lane] for lane in range(L)]
        with m.If(last.valid):
            m.d.sync += [membranes[lane].eq(updated[lane]) for lane in range(L)]
        m.d.comb += [self.finished.valid.eq(last.valid & last.bias),
                     self.finished.payload.thresholds.eq(_delayed(m, thresholds.data, p.adder_stages + 1, "theta"))]
        m.d.comb += [self.finished.payload.membranes[lane].eq(updated[lane]) for lane in range(L)]
        return m


class NeuronFire(wiring.Component):
    """Fires a finished block: each lane's membrane clamped to ``[0, theta]``, then ``T`` steps of
    ``V <- 2V; if V >= theta: bit 1, V <- V - theta`` (one compare-subtract a lane a cycle) give its code,
    MSB first. With skipping on, a block whose every lane is clamped (code 0 or ``2^T - 1``) takes no steps."""

    def __init__(self, plan: StreamConvPlan):
        self.plan = plan
        super().__init__({"finished": In(stream.Signature(finished_layout(plan))),
                          "codes_out": Out(stream.Signature(code_beat_layout(plan.lanes, plan.timesteps)))})

    def elaborate(self, platform):
        m = Module()
        p, T, L, tw = self.plan, self.plan.timesteps, self.plan.lanes, self.plan.threshold_width
        level = [Signal(tw + 1, name=f"fire_v{lane}") for lane in range(L)]
        theta = [Signal(tw, name=f"fire_theta{lane}") for lane in range(L)]
        code = [Signal(T, name=f"fire_code{lane}") for lane in range(L)]
        step, out, block = WrappingCounter(T, "fire_step"), self.codes_out, self.finished.payload
        out_free = ~out.valid | out.ready
        with m.If(out.valid & out.ready):
            m.d.sync += out.valid.eq(0)

        def send(codes):
            m.d.sync += [out.valid.eq(1)] + [out.payload[lane].eq(codes[lane]) for lane in range(L)]
            m.next = "IDLE"

        with m.FSM(name="fire"):
            with m.State("IDLE"):
                m.d.comb += self.finished.ready.eq(1)
                with m.If(self.finished.valid):
                    negative = [block.membranes[lane] < 0 for lane in range(L)]
                    saturated = [block.membranes[lane] >= block.thresholds[lane] for lane in range(L)]
                    for lane in range(L):
                        m.d.sync += [theta[lane].eq(block.thresholds[lane]),
                                     level[lane].eq(Mux(negative[lane], 0, Mux(saturated[lane], block.thresholds[lane],
                                                                                block.membranes[lane]))),
                                     code[lane].eq(Mux(saturated[lane], (1 << T) - 1, 0))]
                    step.restart(m)
                    clamped = Cat(n | s for n, s in zip(negative, saturated)).all()
                    m.next = "FIRE"
                    if p.skip_silent:
                        with m.If(clamped):
                            m.next = "HOLD"
            with m.State("FIRE"):
                step.advance(m)
                fired = []
                for lane in range(L):
                    difference = (level[lane] << 1) - theta[lane]
                    spike = ~difference[-1]
                    fired.append(Cat(spike, code[lane][:T - 1]) if T > 1 else spike)
                    m.d.sync += [level[lane].eq(Mux(spike, difference, level[lane] << 1)), code[lane].eq(fired[-1])]
                with m.If(step.last):
                    m.next = "HOLD"
                    with m.If(out_free):
                        send(fired)
            with m.State("HOLD"):
                with m.If(out_free):
                    send(code)
        return m


class StreamConv(wiring.Component):
    """One convolution layer that streams codes in and codes out (iLIF, k = 2, soft reset, temporal
    separation per neuron: all ``T`` input steps of a window are added before its neurons fire)."""

    def __init__(self, plan: StreamConvPlan):
        self.plan = plan
        T = plan.timesteps
        super().__init__({
            "codes_in": In(stream.Signature(code_beat_layout(plan.input_lanes, T))),
            "codes_out": Out(stream.Signature(code_beat_layout(plan.lanes, T))),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.plan
        m.submodules.lines = lines = LineBuffer(p)
        m.submodules.loader = loader = WindowLoader(p)
        m.submodules.sequencer = sequencer = ChunkSequencer(p)
        m.submodules.datapath = datapath = ChunkDatapath(p)
        m.submodules.finished = finished = fifo.SyncFIFO(width=finished_layout(p).size, depth=p.finished_queue)
        m.submodules.fire = fire = NeuronFire(p)
        wiring.connect(m, wiring.flipped(self.codes_in), lines.codes_in)
        wiring.connect(m, loader.lines, lines.lines)
        wiring.connect(m, loader.next, sequencer.next)
        m.d.comb += [datapath.ops.eq(sequencer.ops), datapath.window.eq(sequencer.window)]
        m.d.comb += [finished.w_data.eq(datapath.finished.payload), finished.w_en.eq(datapath.finished.valid),
                     datapath.finished.ready.eq(finished.w_rdy)]
        m.d.comb += [fire.finished.payload.eq(finished.r_data), fire.finished.valid.eq(finished.r_rdy),
                     finished.r_en.eq(fire.finished.ready), sequencer.credit_back.eq(finished.r_en & finished.r_rdy)]
        wiring.connect(m, fire.codes_out, wiring.flipped(self.codes_out))
        return m
