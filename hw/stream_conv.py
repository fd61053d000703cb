"""The streaming convolution engine: a line buffer of codes, a window in registers, chunked accumulation
and a neuron-major fire unit (docs/core.md, "Streaming convolution engine"; the plan is
:class:`spikesmith.contract.streaming.StreamConvPlan`).

``codes_in``: code beats of the input (``input_lanes`` codes of one pixel, pixels in raster order,
``C_in / input_lanes`` beats a pixel). ``codes_out``: this layer's codes, ``L`` channels a beat, blocks
``0 .. B-1`` of each output pixel in raster order. Every code is the exact one of docs/semantics.md.

``StreamConv = LineBuffer --LinesPort--> WindowLoader --WindowPort--> ChunkSequencer --ops-->
ChunkDatapath --finished--> NeuronFire`` (the first two in hw/windows.py):

- :class:`ChunkSequencer`: takes a complete window when idle; per block of ``L`` channels, one operation a
  cycle: ``(g, chunk)`` for every live chunk (a nonzero weight in the block) whose bits in step group ``g``
  (``S`` steps) are not all zero (every live one with skipping off), then the bias;
- :class:`ChunkDatapath`: the chunk's bits and weights, a masked adder tree of ``K * S`` inputs per lane
  (registered every two levels), the group's shift, the membrane register; a finished block into a queue;
- :class:`NeuronFire`: a finished block's membranes clamped, then ``T`` compare-subtract steps
  (``V <- 2V; V >= theta: bit, V <- V - theta``), a few a cycle, make each lane's code, MSB first.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ..contract.streaming import ADDER_LEVELS_PER_STAGE, StreamConvPlan
from .events import WrappingCounter, lowest_set_lane
from .rows import lanes_view, mux_tree, row_table
from .windows import (LineBuffer, StoredWindowPort, StoreReadPort, WindowLoader, WindowPort, WindowWriter,
                      code_beat_layout, group_word)

__all__ = ["StreamConv", "ChunkSequencer", "ChunkDatapath", "NeuronFire", "finished_layout", "op_layout"]


def finished_layout(plan: StreamConvPlan) -> data.StructLayout:
    """A finished block: each lane's membrane after the bias (``membrane_width``-bit signed) and threshold."""
    return data.StructLayout({"membranes": data.ArrayLayout(signed(plan.membrane_width), plan.lanes),
                              "thresholds": data.ArrayLayout(unsigned(plan.threshold_width), plan.lanes)})


def op_layout(plan: StreamConvPlan) -> data.StructLayout:
    """One operation of the sequencer: add a chunk's weights for the steps of group ``G-1-word`` (code bits
    ``word*S .. word*S + S - 1``; or the bias) to block ``block``'s membranes, from zero when ``clear`` (the
    block's first operation); ``row`` is the chunk's weight row, ``block * chunks + chunk``."""
    return data.StructLayout({"valid": 1, "bias": 1, "clear": 1, "word": range(max(2, plan.groups)),
                              "chunk": range(max(2, plan.slots)), "block": range(max(2, plan.blocks)),
                              "row": range(max(2, plan.blocks * plan.chunks))})


def _tap_code(plan: StreamConvPlan, window, tap: int):
    """The code of tap ``(ky, kx, ci)`` (row-major index) of a window, or 0 past the kernel."""
    T = plan.timesteps
    return window[tap * T:(tap + 1) * T] if tap < plan.taps else Const(0, T)


class ChunkSequencer(wiring.Component):
    """Takes a window when idle and issues its operations, one a cycle: per block, every ``(g, chunk)`` of a live
    chunk whose bits are not all zero (every live one with skipping off), the lowest step group first and in it the
    lowest chunk (a row of ``chunks`` bits per group: a ``G``-way choice of the group, then of the chunk in its
    row, with one carry chain of ``chunks`` bits to clear it; no padding to a power of two), then the block's bias, which waits for room in the queue of finished blocks (``credit``, returned by
    ``credit_back``). ``window`` holds the taken window while its operations read it (with the window in a
    memory, ``buffer`` says which of the store's two it is in, and the mask comes with it)."""

    def __init__(self, plan: StreamConvPlan):
        self.plan = plan
        kh, kw = plan.geometry.kernel
        if plan.window_in_ram:
            window = {"next": In(StoredWindowPort(plan)), "buffer": Out(1)}
        else:
            window = {"next": In(WindowPort(plan.window)), "window": Out(kh * kw * plan.window.entry_bits)}
        super().__init__({**window, "ops": Out(op_layout(plan)), "credit_back": In(1)})

    def _mask(self):
        """Bit ``g * slots + c``: chunk ``c`` of the offered window has a set bit in step group ``g`` (always,
        for a chunk, with skipping off)."""
        p, G, K = self.plan, self.plan.groups, self.plan.chunk
        if p.window_in_ram and p.skip_silent:
            return self.next.mask
        bits = []
        for g in range(G):
            for c in range(p.slots):
                if c >= p.chunks or not p.skip_silent:
                    bits.append(Const(int(c < p.chunks), 1))
                else:
                    window = self.next.window
                    bits.append(Cat(group_word(p, _tap_code(p, window, c * K + k), G - 1 - g)
                                    for k in range(K)).any())
        return Cat(*bits)

    def elaborate(self, platform):
        m = Module()
        p, G, n = self.plan, self.plan.groups, self.plan.chunks
        busy, first = Signal(), Signal(init=1)
        # per step group, the taken window's chunks with a set bit and those not yet issued in this block
        mask = [Signal(n, name=f"mask_g{g}") for g in range(G)]
        remaining = [Signal(n, name=f"remaining_g{g}") for g in range(G)]
        block = WrappingCounter(p.blocks, "block")
        block_row = Signal(range(max(2, p.blocks * p.chunks)))     # the block's first weight row: block * chunks
        credit = Signal(range(p.finished_queue + 1), init=p.finished_queue)
        m.d.comb += self.next.take.eq(self.next.ready & ~busy)
        live = self._live_table(block)
        with m.If(self.next.take):
            taken_mask = self._mask()
            taken = self.buffer.eq(self.next.buffer) if p.window_in_ram else self.window.eq(self.next.window)
            m.d.sync += [taken, busy.eq(1), first.eq(1), block_row.eq(0)]
            for g in range(G):
                row = taken_mask[g * p.slots:g * p.slots + n]
                m.d.sync += [mask[g].eq(row), remaining[g].eq(row & live(0))]
            block.restart(m)
        pending = Cat(row.any() for row in remaining)
        group = lowest_set_lane(m, pending, G)
        row = Signal(n, name="group_row")
        m.d.comb += row.eq(mux_tree(remaining, group) if G > 1 else remaining[0])
        chunk = lowest_set_lane(m, row, n)
        add = busy & pending.any()
        bias = busy & ~pending.any() & (credit > 0)
        ops = self.ops
        m.d.sync += [ops.valid.eq(add | bias), ops.bias.eq(bias), ops.clear.eq(first), ops.block.eq(block.value),
                     ops.word.eq((G - 1) - group if G > 1 else 0), ops.chunk.eq(chunk if n > 1 else 0),
                     ops.row.eq(block_row + (chunk if n > 1 else 0)),
                     credit.eq(credit - bias + self.credit_back)]
        with m.If(add):
            m.d.sync += first.eq(0)
            cleared = row & (row - 1)                                   # the issued chunk's bit cleared
            for g in range(G):
                with m.If(group == g):
                    m.d.sync += remaining[g].eq(cleared)
        with m.If(bias):
            m.d.sync += first.eq(1)
            block.advance(m)
            m.d.sync += block_row.eq(block_row + p.chunks)
            with m.If(block.last):
                m.d.sync += busy.eq(0)
            with m.Else():
                m.d.sync += [remaining[g].eq(mask[g] & live(block.value + 1)) for g in range(G)]
        return m

    def _live_table(self, block):
        """``live(index)``: block ``index``'s live chunks (:attr:`StreamConvPlan.live_masks`), ``chunks`` bits;
        all ones when no block has a chunk of zero weights."""
        p, n = self.plan, self.plan.chunks
        if not p.dead_chunks:
            return lambda index: Const((1 << n) - 1, n)
        table = Array(Const(mask, n) for mask in list(p.live_masks) + [0])
        return lambda index: Const(p.live_masks[0], n) if isinstance(index, int) else table[index]


def _delayed(m: Module, value, cycles: int, name: str):
    for k in range(cycles):
        stage = Signal.like(value, name=f"{name}_d{k + 1}")
        m.d.sync += stage.eq(value)
        value = stage
    return value


class ChunkDatapath(wiring.Component):
    """Executes operations: the chunk's codes and their group's ``S`` bits (two cycles, beside the tables'
    two), a masked adder tree per lane over ``K * S`` weights, each shifted by its step's place in the group (a
    register every ``ADDER_LEVELS_PER_STAGE`` levels), the group's shift ``S * word``, then
    ``V <- (0 if clear else V) + addend``. A block's bias operation sends its membranes and thresholds on."""

    def __init__(self, plan: StreamConvPlan):
        self.plan = plan
        kh, kw = plan.geometry.kernel
        if plan.window_in_ram:
            window = {"store": Out(StoreReadPort(plan)), "buffer": In(1)}
        else:
            window = {"window": In(kh * kw * plan.window.entry_bits)}
        super().__init__({"ops": In(op_layout(plan)), **window,
                          "finished": Out(stream.Signature(finished_layout(plan)))})

    def _chosen(self, m: Module) -> list:
        """The operation's chunk, ``K`` codes, a cycle after the operation: a register fed by a multiplexer over the
        window's chunks, or the store's row (an entry of ``C_in / K`` chunks, the chunk's low bits choose)."""
        p, K, T, ops = self.plan, self.plan.chunk, self.plan.timesteps, self.ops
        if not p.window_in_ram:
            chosen = [Signal(T, name=f"chosen{k}") for k in range(K)]
            m.d.sync += [chosen[k].eq(mux_tree([_tap_code(p, self.window, c * K + k) for c in range(p.chunks)],
                                               ops.chunk)) for k in range(K)]
            return chosen
        low = (p.chunks_per_row - 1).bit_length()                       # chunks_per_row is a power of two
        row = ops.chunk[low:] if low else ops.chunk
        rows = (p.store_rows - 1).bit_length()
        m.d.comb += self.store.addr.eq(Cat(row[:rows], self.buffer) if rows else self.buffer)
        codes = self.store.data
        if low:
            codes = codes.word_select(_delayed(m, ops.chunk[:low], 1, "store_chunk"), K * T)
        return [codes[k * T:(k + 1) * T] for k in range(K)]

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
        p, K, L, S, ops = self.plan, self.plan.chunk, self.plan.lanes, self.plan.op_steps, self.ops
        chosen = self._chosen(m)                                                 # the chunk's codes (cycle 1)
        bits = Signal(K * S)                                                     # their group's bits (cycle 2)
        word = _delayed(m, ops.word, 1, "word")
        m.d.sync += bits.eq(Cat(group_word(p, chosen[k], word) for k in range(K)))
        weights = row_table(m, "weights", p.weight_row_bits, p.weight_rows, logic=p.weights_in_logic)
        biases = row_table(m, "biases", L * p.bias_width, p.bias_rows)
        thresholds = row_table(m, "thresholds", L * p.threshold_width, p.threshold_rows)
        m.d.comb += [weights.addr.eq(ops.row), biases.addr.eq(ops.block), thresholds.addr.eq(ops.block)]
        weight = lanes_view(p.weight_width, L * K, weights.data)
        sums = [self._tree(m, [Mux(bits[k * S + j], weight[lane * K + k] << j, 0) for k in range(K) for j in range(S)],
                           lane) for lane in range(L)]
        at_tree = _delayed(m, ops.as_value(), 2 + p.adder_stages, "op")
        op = op_layout(p)(at_tree)
        bias = lanes_view(p.bias_width, L, _delayed(m, biases.data, p.adder_stages, "bias_row"))
        addends = [Signal(signed(p.membrane_width), name=f"addend{lane}") for lane in range(L)]
        shift = op.word << (S.bit_length() - 1)                                  # S * word, S a power of two
        m.d.sync += [addends[lane].eq(Mux(op.bias, bias[lane], sums[lane] << shift)) for lane in range(L)]
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
    ``V <- 2V; if V >= theta: bit 1, V <- V - theta`` give its code, MSB first: ``F = fire_steps`` chained
    compare-subtracts a lane a cycle for ``ceil(T / F)`` cycles (in the first, the ``ceil(T / F) * F - T`` steps
    before step 0 pass the value through).
    With skipping on, a block whose every lane is clamped (code 0 or ``2^T - 1``) takes no steps."""

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
        step, out, block = WrappingCounter(p.fire_groups, "fire_step"), self.codes_out, self.finished.payload
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
                    value, bits = self._steps(m, level[lane], theta[lane], code[lane], step)
                    fired.append(bits)
                    m.d.sync += [level[lane].eq(value), code[lane].eq(bits)]
                with m.If(step.last):
                    m.next = "HOLD"
                    with m.If(out_free):
                        send(fired)
            with m.State("HOLD"):
                with m.If(out_free):
                    send(code)
        return m

    def _steps(self, m: Module, level, theta, code, step):
        """One cycle's ``F`` compare-subtract steps of one lane: the new value and code (bits shifted in at
        the LSB); in the first cycle the steps before step 0 change nothing."""
        p, T = self.plan, self.plan.timesteps
        names, pad = (level.name, code.name), p.fire_groups * p.fire_steps - T
        for j in range(p.fire_steps):
            difference = (level << 1) - theta
            spike = ~difference[-1]
            stepped = (Mux(spike, difference, level << 1), Cat(spike, code[:T - 1]) if T > 1 else spike)
            if j < pad:
                stepped = tuple(Mux(step.value == 0, kept, new) for kept, new in zip((level, code), stepped))
            # Each step's value a signal: the next step reads it twice, an expression would double per step.
            level, code = Signal.like(level, name=f"{names[0]}_s{j}"), Signal.like(code, name=f"{names[1]}_s{j}")
            m.d.comb += [level.eq(stepped[0]), code.eq(stepped[1])]
        return level, code


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
        m.submodules.lines = lines = LineBuffer(p.window)
        m.submodules.loader = loader = WindowWriter(p) if p.window_in_ram else WindowLoader(p.window)
        m.submodules.sequencer = sequencer = ChunkSequencer(p)
        m.submodules.datapath = datapath = ChunkDatapath(p)
        m.submodules.finished = finished = fifo.SyncFIFO(width=finished_layout(p).size, depth=p.finished_queue)
        m.submodules.fire = fire = NeuronFire(p)
        wiring.connect(m, wiring.flipped(self.codes_in), lines.codes_in)
        wiring.connect(m, loader.lines, lines.lines)
        wiring.connect(m, loader.next, sequencer.next)
        m.d.comb += datapath.ops.eq(sequencer.ops)
        if p.window_in_ram:
            wiring.connect(m, datapath.store, loader.store)
            m.d.comb += datapath.buffer.eq(sequencer.buffer)
        else:
            m.d.comb += datapath.window.eq(sequencer.window)
        m.d.comb += [finished.w_data.eq(datapath.finished.payload), finished.w_en.eq(datapath.finished.valid),
                     datapath.finished.ready.eq(finished.w_rdy)]
        m.d.comb += [fire.finished.payload.eq(finished.r_data), fire.finished.valid.eq(finished.r_rdy),
                     finished.r_en.eq(fire.finished.ready), sequencer.credit_back.eq(finished.r_en & finished.r_rdy)]
        wiring.connect(m, fire.codes_out, wiring.flipped(self.codes_out))
        return m
