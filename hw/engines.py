"""The engines of the core: the input encoder, and one engine per layer built from its stages.

A hidden layer's engine is accumulate stage -> membrane banks -> fire stage; the output
layer's is accumulate stage -> membrane banks -> readout. The banks are ping-pong, so stage 1
works on image n+1 while stage 2 works on image n (:mod:`.membranes`). The integer semantics
are those of docs/semantics.md; the organisation is in docs/core.md.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..contract.plan import InputPlan, LayerPlan
from .accumulate import AccumulateStage, DenseAccumulate, input_event_layout, weight_load_port
from .conv import ConvAccumulate
from .events import (BlockScanner, RowReader, ScanCoordinates, image_beat_layout, index_signal, pixel_event_layout,
                     result_layout, scanned_row_layout, spike_event_layout)
from .fire import FireStage, fire_output_layout
from .fanout import FANOUT_LANES
from .membranes import READ_LATENCY, MembraneBanks
from .rows import NO_COLLISIONS
from .readout import Readout

__all__ = ["InputEncoder", "LayerEngine", "OutputEngine"]


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
        # (A bank is written only while empty and read only while full: no read meets a write of its row.)
        m.submodules.buffer = buffer = memory.Memory(shape=unsigned(plan.lanes * T), depth=2 * words, init=[],
                                                     attrs=NO_COLLISIONS)
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

        # Scan: the full bank `scan_bank`, T times, MSB first, its words read into a queue of spike masks.
        scan = BlockScanner(blocks=words, lanes=plan.lanes, neurons=plan.size, timesteps=T,
                            skip_silent=self.skip_silent)
        reader = RowReader(rows=words, timesteps=T, latency=READ_LATENCY, entry=scanned_row_layout(plan.lanes))
        reader.build(m, scan)
        scan_bank = Signal()
        m.d.comb += [reader.ready.eq(full.bit_select(scan_bank, 1)),
                     read.addr.eq(Mux(scan_bank, words + reader.row, reader.row))]
        word_row = Signal.like(read.data)             # registered, as the membranes are
        m.d.sync += word_row.eq(read.data)
        codes = data.ArrayLayout(T, plan.lanes)(word_row)
        bit = index_signal(T)                     # step t carries bit T-1-t: MSB first
        m.d.comb += bit.eq(T - 1 - reader.arrived.step)
        spikes = Cat(codes[lane].bit_select(bit, 1) for lane in range(plan.lanes))
        m.d.comb += reader.entry.spikes.eq(spikes)
        scan.build(m, reader.rows_out, self.events)
        if plan.pixels:
            # A word is `lanes` neighbouring pixels of one image row (lanes divide the width).
            channels, height, width = plan.pixels
            where = ScanCoordinates(groups=channels, height=height, width=width, x_step=plan.lanes)
            where.build(m, scan.load, scan.row == words - 1)
            m.d.comb += [self.events.payload.channel.eq(where.loaded_group_base), self.events.payload.y.eq(where.loaded_y),
                         self.events.payload.x.eq(where.loaded_x + scan.lowest)]
        with m.If(reader.done):
            m.d.sync += [full.bit_select(scan_bank, 1).eq(0), scan_bank.eq(~scan_bank)]
        return m


def _accumulate_stage(plan: LayerPlan) -> AccumulateStage:
    return ConvAccumulate(plan) if plan.conv is not None else DenseAccumulate(plan)


def _banked(m: Module, engine, second_stage) -> None:
    """``engine``'s accumulate stage -> membrane banks -> ``second_stage``, joined with ``wiring.connect``."""
    plan = engine.plan
    m.submodules.accumulate = accumulate = _accumulate_stage(plan)
    m.submodules.banks = banks = MembraneBanks(plan.rows, plan.lanes * plan.membrane_width,
                                               chunk_bits=FANOUT_LANES * plan.membrane_width,
                                               drain_rereads=second_stage.rereads)
    m.submodules[second_stage.__class__.__name__.lower()] = second_stage
    wiring.connect(m, wiring.flipped(engine.spikes_in), accumulate.events)
    wiring.connect(m, accumulate.membranes, banks.fill)
    wiring.connect(m, second_stage.membranes, banks.drain)
    if plan.weights_loaded:
        m.d.comb += accumulate.weights_load.eq(engine.weights_load)


class LayerEngine(wiring.Component):
    """Accumulate-then-fire engine for one hidden layer (iLIF, k=2, soft reset), two banks.

    ``spikes_in``: events of the previous layer, step by step. ``spikes_out``: this layer's
    firing steps as events (row beats when the next layer reads their max pool). Membranes are ``membrane_width``-bit signed, ``lanes`` per row.
    """

    def __init__(self, plan: LayerPlan, skip_silent: bool = True):
        assert plan.fires
        self.plan, self.skip_silent = plan, skip_silent
        super().__init__({
            "spikes_in": In(stream.Signature(input_event_layout(plan))),
            "spikes_out": Out(stream.Signature(fire_output_layout(plan))),
            **weight_load_port(plan),
        })

    def elaborate(self, platform):
        m = Module()
        fire = FireStage(self.plan, self.skip_silent)
        _banked(m, self, fire)
        wiring.connect(m, fire.spikes, wiring.flipped(self.spikes_out))
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
            "spikes_in": In(stream.Signature(input_event_layout(plan))),
            "results": Out(stream.Signature(result_layout(plan.neurons, plan.output_addr_width, plan.membrane_width))),
            **weight_load_port(plan),
        })

    def elaborate(self, platform):
        m = Module()
        readout = Readout(self.plan)
        _banked(m, self, readout)
        wiring.connect(m, readout.results, wiring.flipped(self.results))
        return m
