"""The stages of the core: input encoder, firing layer engine, output layer engine.

Every engine owns two banks (ping-pong) and a ``full`` flag per bank: the producing stage
fills an empty bank, the consuming stage empties a full one, so stage 1 works on image n+1
while stage 2 works on image n. A bank's ports belong to the consuming stage while it is
full and to the producing stage while it is empty. The integer semantics are those of
docs/semantics.md; the organisation is in docs/core.md.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..gen.network import unsigned_width
from ..gen.sizing import InputPlan, LayerPlan
from .events import (BlockScanner, ScanCoordinates, image_beat_layout, index_signal, pixel_event_layout,
                     result_layout, spike_event_layout, weight_load_layout)
from .accumulate import accumulate_fsm
from .conv import conv_accumulate_control
from .ilif import AccumulateOp, ILIFAccumulate, ILIFFire

__all__ = ["InputEncoder", "LayerEngine", "OutputEngine"]


def _lanes_view(width: int, lanes: int, value, sign: bool = True):
    """A packed row viewed as ``lanes`` integers of ``width`` bits (lane 0 in the LSBs)."""
    return data.ArrayLayout(signed(width) if sign else unsigned(width), lanes)(value)


def _rom(m: Module, name: str, width: int, rows: tuple[int, ...]):
    """An initialised read-only memory (block RAM), one synchronous read port."""
    # At least two rows: a one-row memory would have a zero-width address, which Verilog cannot declare.
    rom = memory.Memory(shape=unsigned(width), depth=max(2, len(rows)), init=rows)
    m.submodules[name] = rom
    return rom.read_port()


class InputEncoder(wiring.Component):
    """Buffers images (two banks) and emits each as ``T`` steps of input spike events.

    ``images``: ``words`` beats per image of ``lanes`` codes (``T`` bits, unsigned).
    ``events``: step ``t`` carries input ``i`` iff bit ``T-1-t`` of its code is set (MSB first).
    """

    def __init__(self, plan: InputPlan, skip_silent: bool = True):
        self.plan = plan
        self.skip_silent = skip_silent
        super().__init__({
            "images": In(stream.Signature(image_beat_layout(plan.lanes, plan.timesteps))),
            "events": Out(stream.Signature(pixel_event_layout(plan.pixels) if plan.pixels
                                           else spike_event_layout(plan.addr_width))),
        })

    def elaborate(self, platform):
        m = Module()
        plan, T = self.plan, self.plan.timesteps
        words = plan.words
        m.submodules.buffer = buffer = memory.Memory(shape=unsigned(plan.lanes * T), depth=2 * words, init=[])
        write, read = buffer.write_port(), buffer.read_port()
        full = Signal(2)

        # Load: one beat per cycle into the empty bank `load_bank`.
        load_bank, word = Signal(), index_signal(words)
        m.d.comb += [
            self.images.ready.eq(~full.bit_select(load_bank, 1)),
            write.addr.eq(Mux(load_bank, words + word, word)),
            write.data.eq(self.images.payload.as_value()),
            write.en.eq(self.images.valid & self.images.ready),
        ]
        with m.If(write.en):
            with m.If(word == words - 1):
                m.d.sync += [word.eq(0), full.bit_select(load_bank, 1).eq(1), load_bank.eq(~load_bank)]
            with m.Else():
                m.d.sync += word.eq(word + 1)

        # Scan: the full bank `scan_bank`, T times, MSB first.
        scan = BlockScanner(blocks=words, lanes=plan.lanes, neurons=plan.size, timesteps=T,
                            skip_silent=self.skip_silent)
        scan_bank = Signal()
        m.d.comb += scan.start.eq(~scan.busy & full.bit_select(scan_bank, 1))
        m.d.comb += [read.en.eq(scan.read_en), read.addr.eq(Mux(scan_bank, words + scan.next_row, scan.next_row))]
        codes = data.ArrayLayout(T, plan.lanes)(read.data)
        bit = index_signal(T)                     # step t carries bit T-1-t: MSB first
        m.d.comb += bit.eq(T - 1 - scan.step)
        m.d.comb += scan.spikes.eq(Cat(codes[lane].bit_select(bit, 1) for lane in range(plan.lanes)))
        scan.build(m, self.events)
        if plan.pixels:
            # A word is `lanes` neighbouring pixels of one image row (lanes divide the width).
            channels, height, width = plan.pixels
            where = ScanCoordinates(groups=channels, height=height, width=width, x_step=plan.lanes)
            where.build(m, scan)
            m.d.comb += [self.events.payload.channel.eq(where.loaded_group_base), self.events.payload.y.eq(where.loaded_y),
                         self.events.payload.x.eq(where.loaded_x + scan.lowest)]
        with m.If(scan.finished):
            m.d.sync += [full.bit_select(scan_bank, 1).eq(0), scan_bank.eq(~scan_bank)]
        return m


class _Banks:
    """Two membrane banks of ``rows`` rows x ``lanes`` membranes, with their ownership logic."""

    def __init__(self, m: Module, plan: LayerPlan):
        self.plan = plan
        width = plan.lanes * plan.membrane_width
        self.full = Signal(2)
        self.fill_bank = Signal()     # the bank the accumulate stage fills (or waits for)
        self.drain_bank = Signal()    # the bank the fire / readout stage drains (or waits for)
        # Per stage: read (addr, en) and write (addr, data, en) requests, routed to the owner's bank.
        self.fill_read_addr, self.fill_write_addr = index_signal(plan.rows), index_signal(plan.rows)
        self.fill_write_data, self.fill_write_en = Signal(width), Signal()
        self.drain_read_addr, self.drain_read_en = index_signal(plan.rows), Signal()
        self.drain_write_addr, self.drain_write_data = index_signal(plan.rows), Signal(width)
        self.drain_write_en = Signal()
        self.fill_read_data, self.drain_read_data = Signal(width), Signal(width)
        reads = []
        for k in range(2):
            bank = memory.Memory(shape=unsigned(width), depth=max(2, plan.rows), init=[])   # see _rom
            m.submodules[f"membranes{k}"] = bank
            write = bank.write_port()
            # Transparent: a row written this cycle is read back new (one-row layers update it every cycle).
            read = bank.read_port(transparent_for=(write,))
            drained = self.full[k]
            m.d.comb += [
                read.addr.eq(Mux(drained, self.drain_read_addr, self.fill_read_addr)),
                read.en.eq(Mux(drained, self.drain_read_en, 1)),
                write.addr.eq(Mux(drained, self.drain_write_addr, self.fill_write_addr)),
                write.data.eq(Mux(drained, self.drain_write_data, self.fill_write_data)),
                write.en.eq(Mux(drained, self.drain_write_en & (self.drain_bank == k),
                                self.fill_write_en & (self.fill_bank == k))),
            ]
            reads.append(read.data)
        m.d.comb += [self.fill_read_data.eq(Mux(self.fill_bank, reads[1], reads[0])),
                     self.drain_read_data.eq(Mux(self.drain_bank, reads[1], reads[0]))]

    def handover(self, m: Module) -> None:
        """The accumulate stage is done with its bank: it becomes full; fill the other one next."""
        m.d.sync += [self.full.bit_select(self.fill_bank, 1).eq(1), self.fill_bank.eq(~self.fill_bank)]

    def release(self, m: Module) -> None:
        """The drain stage is done with its bank: it becomes empty; drain the other one next."""
        m.d.sync += [self.full.bit_select(self.drain_bank, 1).eq(0), self.drain_bank.eq(~self.drain_bank)]


def _input_events(plan: LayerPlan) -> data.StructLayout:
    """A layer's incoming events: coordinates for a convolution, addresses for a dense layer."""
    if plan.conv is not None:
        return pixel_event_layout(plan.conv.in_shape)
    return spike_event_layout(plan.input_addr_width)


def _load_port(plan: LayerPlan) -> dict:
    """``weights_load`` for an engine whose weights are written at run time; none otherwise."""
    if not plan.weights_loaded:
        return {}
    return {"weights_load": In(weight_load_layout(unsigned_width(plan.weight_row_count - 1), plan.weight_row_width))}


def _weight_store(m: Module, plan: LayerPlan, load):
    """The weight rows: a ROM, or (``plan.weights_loaded``) a RAM written through ``load``.

    A loaded store has one address for reading and writing, so yosys can map it to the
    iCE40UP5K's single-port SPRAM; ``load.en`` takes the address for the write cycle. Loads
    happen only while the core is idle (the board top refuses them with images in flight).
    """
    if not plan.weights_loaded:
        return _rom(m, "weights", plan.weight_row_width, plan.weight_rows)
    store = memory.Memory(shape=unsigned(plan.weight_row_width), depth=plan.weight_row_count, init=[],
                          attrs={"ram_style": "huge"})
    m.submodules.weights_spram = store          # gen/build.py strips this name's (zero) init for yosys
    write, read = store.write_port(), store.read_port()
    address = Signal.like(read.addr)
    rom_like = SimpleNamespace(addr=Signal.like(read.addr, name="weight_read_addr"), data=read.data)
    m.d.comb += [address.eq(Mux(load.en, load.addr, rom_like.addr)), read.addr.eq(address),
                 read.en.eq(~load.en), write.addr.eq(address), write.data.eq(load.data), write.en.eq(load.en)]
    return rom_like


def _dense_accumulate_control(m: Module, plan: LayerPlan, banks: _Banks, events, weights, biases):
    """Issue side of stage 1 of a dense layer; returns ``(issue, op, row, spike)`` of this cycle.

    Passes walk the B rows; an input spike event adds its weight column, one block per cycle.
    """
    B = plan.blocks
    issue, op, row, in_pass = Signal(), Signal(2), index_signal(B), Signal()
    spike = Signal()
    weight_row = index_signal(B * plan.inputs)
    weight_row_next = Signal.like(weight_row)       # row of the same event in the next block
    m.d.comb += [banks.fill_read_addr.eq(row), weights.addr.eq(weight_row), biases.addr.eq(row)]

    def start_pass():
        m.d.sync += row.eq(0)

    def advance_pass():
        m.d.sync += row.eq(Mux(row == B - 1, 0, row + 1))
        return row == B - 1

    def on_event():
        # Rows are block-major: row b*inputs + i holds input i's weights for block b.
        m.d.comb += [issue.eq(1), op.eq(AccumulateOp.ADD), spike.eq(events.payload.spike),
                     weight_row.eq(Mux(row == 0, events.payload.addr, weight_row_next))]
        m.d.sync += weight_row_next.eq(weight_row + plan.inputs)
        with m.If(advance_pass()):
            m.d.comb += events.ready.eq(1)

    accumulate_fsm(m, banks, events, plan.timesteps, issue=issue, op=op, in_pass=in_pass,
                   start_pass=start_pass, advance_pass=advance_pass, on_event=on_event)
    return issue, op, row, spike


def _accumulate_stage(m: Module, plan: LayerPlan, banks: _Banks, events, load=None) -> None:
    """Stage 1 of a layer: ``T`` steps of ``V <- 2V + sum W*s``, then ``V <- V + B``.

    Two-deep pipeline: *issue* (the dense or convolution control) picks an operation and a
    row and starts the reads; *execute* writes the row back the next cycle, lane by lane.
    """
    L, mw = plan.lanes, plan.membrane_width
    weights = _weight_store(m, plan, load)
    biases = _rom(m, "biases", L * plan.bias_width, plan.bias_rows)
    control = conv_accumulate_control if plan.conv is not None else _dense_accumulate_control
    issue, op, row, spike = control(m, plan, banks, events, weights, biases)

    # Execute: the read data of the row issued last cycle.
    ex_valid, ex_op, ex_row, ex_spike = Signal(), Signal(2), Signal.like(row), Signal()
    m.d.sync += [ex_valid.eq(issue), ex_op.eq(op), ex_row.eq(row), ex_spike.eq(spike)]
    membrane = _lanes_view(mw, L, banks.fill_read_data)
    weight = _lanes_view(plan.weight_width, L, weights.data)
    bias = _lanes_view(plan.bias_width, L, biases.data)
    updated = _lanes_view(mw, L, banks.fill_write_data)
    for lane in range(L):
        unit = ILIFAccumulate(mw, plan.weight_width, plan.bias_width)
        m.submodules[f"accumulate{lane}"] = unit
        m.d.comb += [unit.op.eq(ex_op), unit.spike.eq(ex_spike), unit.membrane.eq(membrane[lane]),
                     unit.weight.eq(weight[lane]), unit.bias.eq(bias[lane]), updated[lane].eq(unit.updated)]
    m.d.comb += [banks.fill_write_addr.eq(ex_row), banks.fill_write_en.eq(ex_valid)]


class LayerEngine(wiring.Component):
    """Accumulate-then-fire engine for one hidden layer (iLIF, k=2, soft reset), two banks.

    ``spikes_in``: events of the previous layer, step by step. ``spikes_out``: this layer's
    firing steps as events. Membranes are ``membrane_width``-bit signed, ``lanes`` per row.
    """

    def __init__(self, plan: LayerPlan, skip_silent: bool = True):
        assert plan.fires
        self.plan = plan
        self.skip_silent = skip_silent
        assert plan.conv is not None or not plan.emits_pixels, "only a convolution's events carry coordinates"
        super().__init__({
            "spikes_in": In(stream.Signature(_input_events(plan))),
            "spikes_out": Out(stream.Signature(pixel_event_layout(plan.conv.out_shape) if plan.emits_pixels
                                               else spike_event_layout(plan.output_addr_width))),
            **_load_port(plan),
        })

    def elaborate(self, platform):
        m = Module()
        plan, L, mw = self.plan, self.plan.lanes, self.plan.membrane_width
        banks = _Banks(m, plan)
        _accumulate_stage(m, plan, banks, self.spikes_in, getattr(self, "weights_load", None))

        # Fire: clamp to [0, theta] before the first step, then V <- 2V; spike and subtract if V >= theta.
        thresholds = _rom(m, "thresholds", L * plan.threshold_width, plan.threshold_rows)
        scan = BlockScanner(blocks=plan.rows, lanes=L, neurons=plan.rows * L if plan.conv else plan.neurons,
                            timesteps=plan.timesteps, skip_silent=self.skip_silent)
        m.d.comb += [
            scan.start.eq(~scan.busy & banks.full.bit_select(banks.drain_bank, 1)),
            banks.drain_read_en.eq(scan.read_en), banks.drain_read_addr.eq(scan.next_row),
            thresholds.en.eq(scan.read_en), thresholds.addr.eq(scan.next_row),
            banks.drain_write_addr.eq(scan.row), banks.drain_write_en.eq(scan.load),
        ]
        if plan.conv is not None:
            # Rows are (block, y, x): the thresholds are the block's; events may carry the pixel.
            _, height, width = plan.conv.out_shape
            where = ScanCoordinates(groups=plan.blocks, height=height, width=width, group_stride=L)
            where.build(m, scan)
            m.d.comb += thresholds.addr.eq(where.next_group)
            if plan.emits_pixels:
                m.d.comb += [self.spikes_out.payload.channel.eq(where.loaded_group_base + scan.lowest),
                             self.spikes_out.payload.y.eq(where.loaded_y),
                             self.spikes_out.payload.x.eq(where.loaded_x)]
        membrane = _lanes_view(mw, L, banks.drain_read_data)
        threshold = _lanes_view(plan.threshold_width, L, thresholds.data, sign=False)
        updated = _lanes_view(mw, L, banks.drain_write_data)
        for lane in range(L):
            unit = ILIFFire(mw, plan.threshold_width)
            m.submodules[f"fire{lane}"] = unit
            m.d.comb += [unit.first.eq(scan.step == 0), unit.membrane.eq(membrane[lane]),
                         unit.threshold.eq(threshold[lane]),
                         scan.spikes[lane].eq(unit.spike), updated[lane].eq(unit.updated)]
        scan.build(m, self.spikes_out)
        with m.If(scan.finished):
            banks.release(m)
        return m


class OutputEngine(wiring.Component):
    """The output layer: accumulate like any layer, then read the logits out and pick the class.

    ``results``: one beat per image, ``label`` (first index of the largest logit) and the
    ``classes`` integer logits (``logit_width``-bit signed).
    """

    def __init__(self, plan: LayerPlan):
        assert not plan.fires
        self.plan = plan
        super().__init__({
            "spikes_in": In(stream.Signature(_input_events(plan))),
            "results": Out(stream.Signature(result_layout(
                plan.neurons, plan.output_addr_width, plan.membrane_width))),
            **_load_port(plan),
        })

    def elaborate(self, platform):
        m = Module()
        plan, B, L, mw = self.plan, self.plan.blocks, self.plan.lanes, self.plan.membrane_width
        banks = _Banks(m, plan)
        _accumulate_stage(m, plan, banks, self.spikes_in, getattr(self, "weights_load", None))

        # Readout: rows in order into a shift register of B*L logits, with a running argmax.
        logits = [Signal(signed(mw), name=f"logit{j}") for j in range(B * L)]
        best, best_label = Signal(signed(mw)), index_signal(B * L)
        row, base = index_signal(B), index_signal(B * L)
        valid = Signal()
        membrane = _lanes_view(mw, L, banks.drain_read_data)
        # The row's largest valid lane, ties to the lower lane.
        row_best, row_lane = membrane[0], 0
        tail = plan.neurons - (B - 1) * L
        for lane in range(1, L):
            take = (membrane[lane] > row_best) & ((row != B - 1) | (lane < tail))
            row_best, row_lane = Mux(take, membrane[lane], row_best), Mux(take, lane, row_lane)
        m.d.comb += [banks.drain_read_addr.eq(row), banks.drain_write_en.eq(0),
                     self.results.valid.eq(valid)]
        with m.FSM(name="readout"):
            with m.State("CLAIM"):
                with m.If(banks.full.bit_select(banks.drain_bank, 1) & ~valid):
                    m.d.comb += [banks.drain_read_en.eq(1), banks.drain_read_addr.eq(0)]
                    m.d.sync += [row.eq(0), base.eq(0)]
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += [banks.drain_read_en.eq(1), banks.drain_read_addr.eq(row + 1)]
                m.d.sync += [logits[j].eq(logits[j + L]) for j in range(B * L - L)]
                m.d.sync += [logits[B * L - L + lane].eq(membrane[lane]) for lane in range(L)]
                with m.If((row == 0) | (row_best > best)):
                    m.d.sync += [best.eq(row_best), best_label.eq(base + row_lane)]
                m.d.sync += [row.eq(row + 1), base.eq(base + L)]
                with m.If(row == B - 1):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.sync += valid.eq(1)
                banks.release(m)
                m.next = "CLAIM"
        with m.If(self.results.valid & self.results.ready):
            m.d.sync += valid.eq(0)
        m.d.comb += self.results.payload.label.eq(best_label)
        m.d.comb += [self.results.payload.logits[j].eq(logits[j]) for j in range(plan.neurons)]
        return m
