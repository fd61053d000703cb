"""Stage 2 of a hidden layer: ``T`` firing steps over a full membrane bank, as spike events.

Before the first step each membrane is clamped to ``[0, theta]``; every step doubles it and,
if ``V >= theta``, spikes and subtracts ``theta`` (:class:`~.ilif.ILIFFire`, one per lane;
docs/semantics.md, "One layer"). A row reader fires one row per cycle (read, registered,
fired and written back) into a short queue, running ahead of the block scanner, which sends
each row's events and, per step, an end marker (docs/core.md, "Spike events").
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import Out

from ..contract.plan import LayerPlan
from .events import (BlockScanner, RowReader, ScanCoordinates, pixel_event_layout, scanned_row_layout,
                     spike_event_layout, spike_row_layout)
from .ilif import ILIFFire
from .membranes import READ_LATENCY, MembranePort
from .rows import lanes_view, row_table

__all__ = ["FireStage", "fire_output_layout", "FIRE_LATENCY"]

#: Cycles from a row's read to its fired result: the membrane read, then the lanes' datapath.
FIRE_LATENCY = READ_LATENCY + 1


def fire_output_layout(plan: LayerPlan):
    """What a layer sends on: row beats into a pooling stage, pixel events into a convolution
    engine, or neuron addresses."""
    if plan.emits_rows:
        return spike_row_layout(plan.lanes, plan.timesteps)
    if plan.emits_pixels:
        return pixel_event_layout(plan.conv.out_shape)
    return spike_event_layout(plan.output_addr_width)


class FireStage(wiring.Component):
    """The firing steps of one layer.

    ``membranes``: the drain port of the layer's banks. ``spikes``: this layer's events, step
    by step: addresses (``output_addr_width`` bits), or ``(channel, y, x)`` when the next
    layer is a convolution; with ``skip_silent`` only neurons that spiked send one. When the
    next layer reads a max pool (``plan.emits_rows``), one row beat per membrane row instead,
    with the lanes' spike bits and their history (a ``T``-bit spike history memory, one row
    per membrane row), whatever ``skip_silent`` says.
    """

    def __init__(self, plan: LayerPlan, skip_silent: bool = True):
        assert plan.fires
        assert plan.conv is not None or not (plan.emits_pixels or plan.emits_rows), \
            "only a convolution's events carry coordinates"
        self.plan, self.skip_silent = plan, skip_silent
        #: It may read a row in the cycle it writes the row back: a pass of no more rows than its latency.
        self.rereads = plan.rows <= FIRE_LATENCY
        super().__init__({
            "membranes": Out(MembranePort(plan.rows, plan.lanes * plan.membrane_width)),
            "spikes": Out(stream.Signature(fire_output_layout(plan))),
        })

    def elaborate(self, platform):
        m = Module()
        plan, port, L, T = self.plan, self.membranes, self.plan.lanes, self.plan.timesteps
        if plan.emits_rows:   # one event per row: a one-lane scanner that never skips; the queue keeps the row
            entry = scanned_row_layout(1, lane_spikes=L, history=L * T)
            scan = BlockScanner(blocks=plan.rows, lanes=1, neurons=plan.rows, timesteps=T, skip_silent=False,
                                row_layout=entry)
            events = stream.Signature(spike_event_layout(1)).create()
        else:
            entry = scanned_row_layout(L)
            scan = BlockScanner(blocks=plan.rows, lanes=L, neurons=plan.rows * L if plan.conv else plan.neurons,
                                timesteps=T, skip_silent=self.skip_silent)
            events = self.spikes
        reader = RowReader(rows=plan.rows, timesteps=T, latency=FIRE_LATENCY, entry=entry, rewrites=True)
        reader.build(m, scan)
        m.d.comb += [reader.ready.eq(port.ready), port.done.eq(reader.done), port.read_addr.eq(reader.row),
                     port.write_addr.eq(reader.arrived.row), port.write_en.eq(reader.arrived.valid)]
        spikes = self._fire(m, reader)
        if plan.emits_rows:
            self._row_beats(m, reader, scan, events, spikes)
        else:
            m.d.comb += reader.entry.spikes.eq(spikes)
        scan.build(m, reader.rows_out, events)
        if plan.emits_pixels:
            _, height, width = plan.conv.out_shape
            where = ScanCoordinates(groups=plan.blocks, height=height, width=width, group_stride=L)
            where.build(m, scan.load, scan.row == plan.rows - 1)
            m.d.comb += [self.spikes.payload.channel.eq(where.loaded_group_base + scan.lowest),
                         self.spikes.payload.y.eq(where.loaded_y), self.spikes.payload.x.eq(where.loaded_x)]
        return m

    def _fire(self, m: Module, reader: RowReader) -> Signal:
        """The firing step of each arriving row, lane by lane, written back; returns its spike mask.

        The thresholds are read with the membranes (the row's block) and registered like them; the
        lanes' datapath takes the row the cycle its data is there and gives its result a cycle
        later (:class:`~.ilif.ILIFFire`), when the read arrives."""
        plan, port, L, mw = self.plan, self.membranes, self.plan.lanes, self.plan.membrane_width
        thresholds = row_table(m, "thresholds", L * plan.threshold_width, plan.threshold_rows)
        if plan.conv is not None:       # rows are (block, y, x): a block's rows share its thresholds
            _, height, width = plan.conv.out_shape
            blocks = ScanCoordinates(groups=plan.blocks, height=height, width=width)
            blocks.build(m, reader.issue, reader.row == plan.rows - 1)
            m.d.comb += thresholds.addr.eq(blocks.group)
        else:
            m.d.comb += thresholds.addr.eq(reader.row)
        threshold_row = thresholds.data          # TABLE_LATENCY: with the membranes' READ_LATENCY
        membrane = lanes_view(mw, L, port.read_data)
        threshold = lanes_view(plan.threshold_width, L, threshold_row, sign=False)
        updated = lanes_view(mw, L, port.write_data)
        spikes = Signal(L)
        for lane in range(L):
            unit = ILIFFire(mw, plan.threshold_width)
            m.submodules[f"fire{lane}"] = unit
            m.d.comb += [unit.first.eq(reader.tags[-2].step == 0), unit.membrane.eq(membrane[lane]),
                         unit.threshold.eq(threshold[lane]), spikes[lane].eq(unit.spike), updated[lane].eq(unit.updated)]
        return spikes

    def _row_beats(self, m: Module, reader: RowReader, scan: BlockScanner, events, spikes: Signal) -> None:
        """Row beats: each arriving row's spikes and history into the queue, one event per row out.

        The history memory is read with the membranes and written when the row arrives: bits of
        earlier steps kept, bit ``step`` = the spike, later bits zero (they are the previous image's)."""
        plan, L, T = self.plan, self.plan.lanes, self.plan.timesteps
        store = memory.Memory(shape=unsigned(L * T), depth=max(2, plan.rows), init=[])
        m.submodules.spike_history = store
        write = store.write_port()
        read = store.read_port(transparent_for=(write,))      # write-first, like the membranes
        step = reader.arrived.step
        earlier = Signal(T)                   # bits of the steps before this one
        # Read a cycle after the membranes: the registered history comes with the fired row.
        m.d.comb += [earlier.eq((1 << step) - 1), read.addr.eq(reader.tags[0].row),
                     write.addr.eq(reader.arrived.row), write.en.eq(reader.arrived.valid)]
        registered = Signal.like(read.data)
        m.d.sync += registered.eq(read.data)
        history = lanes_view(T, L, registered, sign=False)
        kept = [history[lane] & earlier for lane in range(L)]
        m.d.comb += [write.data.eq(Cat((kept[lane] | (spikes[lane] << step))[:T] for lane in range(L))),
                     reader.entry.spikes.eq(1), reader.entry.lane_spikes.eq(spikes),
                     reader.entry.history.eq(Cat(kept))]
        m.d.comb += [self.spikes.valid.eq(events.valid), events.ready.eq(self.spikes.ready),
                     self.spikes.payload.end.eq(events.payload.end),
                     self.spikes.payload.spikes.eq(scan.loaded.lane_spikes),
                     self.spikes.payload.history.eq(scan.loaded.history)]
