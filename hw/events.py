"""Stream payloads of the core and the block scanner that turns spike masks into events.

Spikes move between layers as **address events**, one per cycle (docs/core.md): for each
firing step the producer sends the address of every neuron that spiked (with skipping off:
of every neuron, with its spike bit), then one end-of-step marker. The consumer needs one
weight column per event, so one event per cycle is the rate it can take anyway, and a
silent neuron costs the consumer nothing.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import data

__all__ = ["spike_event_layout", "result_layout", "image_beat_layout", "weight_load_layout", "index_signal",
           "BlockScanner"]


def index_signal(count: int, **kwargs) -> Signal:
    """An unsigned counter or address for ``0 .. count-1``, at least one bit wide.

    ``Signal(range(1))`` would be zero bits wide, which Verilog cannot declare (``[-1:0]``).
    """
    return Signal(range(max(2, count)), **kwargs)


def spike_event_layout(addr_width: int) -> data.StructLayout:
    """One spike event: ``addr`` of the neuron, its ``spike`` bit, or ``end`` of a step (addr ignored)."""
    return data.StructLayout({"addr": max(1, addr_width), "spike": 1, "end": 1})


def image_beat_layout(lanes: int, timesteps: int) -> data.ArrayLayout:
    """One beat of the image stream: ``lanes`` unsigned ``timesteps``-bit input codes, code 0 in the LSBs."""
    return data.ArrayLayout(timesteps, lanes)


def result_layout(classes: int, label_width: int, logit_width: int) -> data.StructLayout:
    """One result: the predicted ``label`` (first index of the largest logit) and every integer logit."""
    return data.StructLayout({"label": label_width,
                              "logits": data.ArrayLayout(data.signed(logit_width), classes)})


def weight_load_layout(addr_width: int, data_width: int, layer_width: int = 0) -> data.StructLayout:
    """One weight-row write: ``en`` for one cycle writes ``data`` (a packed row) at row ``addr``.

    At the core's port ``layer`` picks the layer engine; engines take the layout without it.
    """
    fields = {"en": 1, "addr": addr_width, "data": data_width}
    if layer_width:
        fields["layer"] = layer_width
    return data.StructLayout(fields)


class BlockScanner:
    """Walks ``blocks`` rows of a bank ``timesteps`` times, emitting each row's spikes as events.

    Not a component of its own: the engine that owns the bank calls :meth:`build` inside its
    ``elaborate`` and wires the returned signals to its memory ports. Per step it *loads* one
    row per cycle while the previous row's events drain (a row with ``k`` events takes
    ``max(1, k)`` cycles), then sends the end-of-step marker.

    The caller reads row ``next_row`` when ``read_en`` is high (the read is one cycle ahead:
    a prefetch), and during a cycle with ``load`` high computes that row's ``spikes`` (a
    ``lanes``-bit mask, comb) from the read data, at ``step``. ``start`` (comb, only while
    ``~busy``) begins an image; ``finished`` (comb) marks the cycle its last marker is sent.
    """

    def __init__(self, *, blocks: int, lanes: int, neurons: int, timesteps: int, skip_silent: bool):
        self.blocks, self.lanes, self.neurons = blocks, lanes, neurons
        self.timesteps, self.skip_silent = timesteps, skip_silent
        self.start = Signal()
        self.spikes = Signal(lanes)
        self.busy = Signal()
        self.step = index_signal(timesteps)
        self.row = index_signal(blocks)          # the row the next load takes
        self.load = Signal()
        self.read_en = Signal()
        self.next_row = index_signal(blocks)
        self.finished = Signal()

    def build(self, m: Module, events) -> None:
        """Add the scanner's logic to ``m``, driving the stream interface ``events``."""
        lanes, blocks = self.lanes, self.blocks
        loaded_all = Signal()                      # every row of this step is loaded
        pending = Signal(lanes)                    # lanes of the loaded row still to send
        fired = Signal(lanes)                      # spike bits of the loaded row
        base = index_signal(blocks * lanes)       # address of lane 0 of the loaded row
        row_base = index_signal(blocks * lanes + 1)

        lowest = index_signal(lanes)
        for lane in reversed(range(lanes)):        # the last assignment wins: the lowest set lane
            with m.If(pending[lane]):
                m.d.comb += lowest.eq(lane)
        emitting = pending.any()
        m.d.comb += [
            events.valid.eq(emitting | (self.busy & loaded_all)),
            events.payload.addr.eq(base + lowest),
            events.payload.spike.eq(fired.bit_select(lowest, 1)),
            events.payload.end.eq(~emitting),
        ]
        sent = events.valid & events.ready
        remaining = Mux(sent & emitting, pending & (pending - 1), pending)   # x & (x-1) clears the lowest bit
        m.d.comb += self.load.eq(self.busy & ~loaded_all & (remaining == 0))
        m.d.sync += pending.eq(remaining)

        # Lanes of the last row beyond the layer's neurons carry nothing.
        tail = self.neurons - (blocks - 1) * lanes
        valid_lanes = Mux(self.row == blocks - 1, (1 << tail) - 1, (1 << lanes) - 1)
        emit = valid_lanes if not self.skip_silent else self.spikes & valid_lanes
        last_row = self.row == blocks - 1
        with m.If(self.load):
            m.d.sync += [pending.eq(emit), fired.eq(self.spikes), base.eq(row_base),
                         row_base.eq(row_base + lanes), self.row.eq(Mux(last_row, 0, self.row + 1))]
            with m.If(last_row):
                m.d.sync += loaded_all.eq(1)

        m.d.comb += [
            self.read_en.eq(self.start | self.load),
            self.next_row.eq(Mux(self.start | last_row, 0, self.row + 1)),
        ]
        with m.If(sent & ~emitting):               # the end-of-step marker went out
            m.d.sync += [loaded_all.eq(0), row_base.eq(0)]
            with m.If(self.step == self.timesteps - 1):
                m.d.sync += self.busy.eq(0)
                m.d.comb += self.finished.eq(1)
            with m.Else():
                m.d.sync += self.step.eq(self.step + 1)
        with m.If(self.start):
            m.d.sync += [self.busy.eq(1), self.step.eq(0), self.row.eq(0), loaded_all.eq(0), row_base.eq(0)]
