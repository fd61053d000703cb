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

from ..contract.network import unsigned_width

__all__ = ["spike_event_layout", "pixel_event_layout", "spike_row_layout", "result_layout", "image_beat_layout", "weight_load_layout",
           "index_signal", "lowest_set_lane", "BlockScanner", "ScanCoordinates"]


def index_signal(count: int, **kwargs) -> Signal:
    """An unsigned counter or address for ``0 .. count-1``, at least one bit wide.

    ``Signal(range(1))`` would be zero bits wide, which Verilog cannot declare (``[-1:0]``).
    """
    return Signal(range(max(2, count)), **kwargs)


def lowest_set_lane(m: Module, mask, lanes: int) -> Signal:
    """The index of the lowest set bit of ``mask`` (``lanes`` bits; 0 when none is set), in logic."""
    lowest = index_signal(lanes)
    for lane in reversed(range(lanes)):        # the last assignment wins: the lowest set lane
        with m.If(mask[lane]):
            m.d.comb += lowest.eq(lane)
    return lowest


def spike_event_layout(addr_width: int) -> data.StructLayout:
    """One spike event: ``addr`` of the neuron, its ``spike`` bit, or ``end`` of a step (addr ignored)."""
    return data.StructLayout({"addr": max(1, addr_width), "spike": 1, "end": 1})


def pixel_event_layout(shape: tuple[int, int, int]) -> data.StructLayout:
    """One spike event into a convolution: the neuron's ``channel``, ``y`` and ``x`` in a ``shape``
    = ``(C, H, W)`` feature map, its ``spike`` bit, or ``end`` of a step (coordinates ignored)."""
    c, h, w = shape
    return data.StructLayout({"channel": unsigned_width(c - 1), "y": unsigned_width(h - 1),
                              "x": unsigned_width(w - 1), "spike": 1, "end": 1})


def spike_row_layout(lanes: int, timesteps: int) -> data.StructLayout:
    """One row beat into a pooling stage: the ``spikes`` of a membrane row's ``lanes`` neurons at
    this step, each lane's ``history`` (its spike bits of the image's earlier steps, bit ``t`` for
    step ``t``, later bits zero), or ``end`` of a step. Rows come in the producer's row order."""
    return data.StructLayout({"spikes": lanes, "history": data.ArrayLayout(timesteps, lanes), "end": 1})


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
        self.lowest = index_signal(lanes)        # the lane of the event on offer

    def build(self, m: Module, events) -> None:
        """Add the scanner's logic to ``m``, driving the stream interface ``events``."""
        lanes, blocks = self.lanes, self.blocks
        loaded_all = Signal()                      # every row of this step is loaded
        pending = Signal(lanes)                    # lanes of the loaded row still to send
        fired = Signal(lanes)                      # spike bits of the loaded row
        base = index_signal(blocks * lanes)       # address of lane 0 of the loaded row
        row_base = index_signal(blocks * lanes + 1)

        lowest = self.lowest
        m.d.comb += lowest.eq(lowest_set_lane(m, pending, lanes))
        emitting = pending.any()
        m.d.comb += [
            events.valid.eq(emitting | (self.busy & loaded_all)),
            events.payload.spike.eq(fired.bit_select(lowest, 1)),
            events.payload.end.eq(~emitting),
        ]
        if "addr" in events.payload.shape().members:   # pixel events get their coordinates from ScanCoordinates
            m.d.comb += events.payload.addr.eq(base + lowest)
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


class ScanCoordinates:
    """Feature-map coordinates of the rows a :class:`BlockScanner` walks, kept by counters (no division).

    Rows are in ``(group, y, x)`` order: ``x`` advances by ``x_step`` per row up to ``width``,
    then ``y`` up to ``height``, then ``group`` (and ``group_base`` by ``group_stride``). For a
    convolution engine a row is one pixel of one block of channels (``x_step = 1``, group =
    block, ``group_base`` = its first channel); for the input encoder a row is a word of
    ``x_step`` pixels of one channel. ``group``/``y``/``x`` follow ``scanner.row``;
    ``next_group`` is the group of ``scanner.next_row`` (the prefetch); ``loaded_*`` hold the
    coordinates of the row whose events are on offer.
    """

    def __init__(self, *, groups: int, height: int, width: int, x_step: int = 1, group_stride: int = 1):
        self.groups, self.height, self.width, self.x_step = groups, height, width, x_step
        self.group_stride = group_stride
        self.group, self.y, self.x = index_signal(groups), index_signal(height), index_signal(width)
        self.group_base = index_signal(groups * group_stride)
        self.next_group = index_signal(groups)
        self.loaded_group_base = index_signal(groups * group_stride)
        self.loaded_y, self.loaded_x = index_signal(height), index_signal(width)

    def build(self, m: Module, scanner: BlockScanner) -> None:
        end_of_line = self.x == self.width - self.x_step
        end_of_map = end_of_line & (self.y == self.height - 1)
        last_row = scanner.row == scanner.blocks - 1
        m.d.comb += self.next_group.eq(Mux(scanner.start | last_row, 0, Mux(end_of_map, self.group + 1, self.group)))
        with m.If(scanner.start | (scanner.load & last_row)):
            m.d.sync += [self.group.eq(0), self.group_base.eq(0), self.y.eq(0), self.x.eq(0)]
        with m.Elif(scanner.load):
            m.d.sync += self.x.eq(Mux(end_of_line, 0, self.x + self.x_step))
            with m.If(end_of_line):
                m.d.sync += self.y.eq(Mux(end_of_map, 0, self.y + 1))
            with m.If(end_of_map):
                m.d.sync += [self.group.eq(self.group + 1), self.group_base.eq(self.group_base + self.group_stride)]
        with m.If(scanner.load):
            m.d.sync += [self.loaded_group_base.eq(self.group_base), self.loaded_y.eq(self.y),
                         self.loaded_x.eq(self.x)]
