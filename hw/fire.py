"""Stage 2 of a hidden layer: ``T`` firing steps over a full membrane bank, as spike events.

Before the first step each membrane is clamped to ``[0, theta]``; every step doubles it and,
if ``V >= theta``, spikes and subtracts ``theta`` (:class:`~.ilif.ILIFFire`, one per lane;
docs/semantics.md, "One layer"). The block scanner reads one row per cycle and sends the
step's events, then an end marker (docs/core.md, "Spike events").
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import Out

from ..contract.plan import LayerPlan
from .events import BlockScanner, ScanCoordinates, pixel_event_layout, spike_event_layout, spike_row_layout
from .ilif import ILIFFire
from .membranes import MembranePort
from .rows import lanes_view, rom

__all__ = ["FireStage", "fire_output_layout"]


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
        super().__init__({
            "membranes": Out(MembranePort(plan.rows, plan.lanes * plan.membrane_width)),
            "spikes": Out(stream.Signature(fire_output_layout(plan))),
        })

    def elaborate(self, platform):
        m = Module()
        plan, port, L, mw = self.plan, self.membranes, self.plan.lanes, self.plan.membrane_width
        thresholds = rom(m, "thresholds", L * plan.threshold_width, plan.threshold_rows)
        if plan.emits_rows:   # one event per row: a one-lane scanner that never skips
            scan = BlockScanner(blocks=plan.rows, lanes=1, neurons=plan.rows, timesteps=plan.timesteps,
                                skip_silent=False)
            events = stream.Signature(spike_event_layout(1)).create()
        else:
            scan = BlockScanner(blocks=plan.rows, lanes=L, neurons=plan.rows * L if plan.conv else plan.neurons,
                                timesteps=plan.timesteps, skip_silent=self.skip_silent)
            events = self.spikes
        m.d.comb += [
            scan.start.eq(~scan.busy & port.ready),
            port.read_en.eq(scan.read_en), port.read_addr.eq(scan.next_row),
            thresholds.en.eq(scan.read_en), thresholds.addr.eq(scan.next_row),
            port.write_addr.eq(scan.row), port.write_en.eq(scan.load),
        ]
        if plan.conv is not None:
            # Rows are (block, y, x): the thresholds are the block's; events may carry the pixel.
            _, height, width = plan.conv.out_shape
            where = ScanCoordinates(groups=plan.blocks, height=height, width=width, group_stride=L)
            where.build(m, scan)
            m.d.comb += thresholds.addr.eq(where.next_group)
            if plan.emits_pixels:
                m.d.comb += [self.spikes.payload.channel.eq(where.loaded_group_base + scan.lowest),
                             self.spikes.payload.y.eq(where.loaded_y),
                             self.spikes.payload.x.eq(where.loaded_x)]
        membrane = lanes_view(mw, L, port.read_data)
        threshold = lanes_view(plan.threshold_width, L, thresholds.data, sign=False)
        updated = lanes_view(mw, L, port.write_data)
        spikes = Signal(L)
        for lane in range(L):
            unit = ILIFFire(mw, plan.threshold_width)
            m.submodules[f"fire{lane}"] = unit
            m.d.comb += [unit.first.eq(scan.step == 0), unit.membrane.eq(membrane[lane]),
                         unit.threshold.eq(threshold[lane]), spikes[lane].eq(unit.spike), updated[lane].eq(unit.updated)]
        if plan.emits_rows:
            self._row_beats(m, scan, events, spikes)
        else:
            m.d.comb += scan.spikes.eq(spikes)
        scan.build(m, events)
        m.d.comb += port.done.eq(scan.finished)
        return m

    def _row_beats(self, m: Module, scan: BlockScanner, events, spikes: Signal) -> None:
        """Row beats from the one-lane scanner's events: the loaded row's spikes and history.

        The history memory is read with the membranes (the scanner's prefetch) and written in
        the load cycle: bits of earlier steps kept, bit ``step`` = the spike, later bits zero
        (they are the previous image's)."""
        plan, L, T = self.plan, self.plan.lanes, self.plan.timesteps
        store = memory.Memory(shape=unsigned(L * T), depth=max(2, plan.rows), init=[])
        m.submodules.spike_history = store
        write = store.write_port()
        read = store.read_port(transparent_for=(write,))
        earlier = Signal(T)                   # bits of the steps before this one
        m.d.comb += [earlier.eq((1 << scan.step) - 1), read.en.eq(scan.read_en), read.addr.eq(scan.next_row),
                     write.addr.eq(scan.row), write.en.eq(scan.load)]
        history = lanes_view(T, L, read.data, sign=False)
        kept = [history[lane] & earlier for lane in range(L)]
        m.d.comb += [scan.spikes.eq(1),
                     write.data.eq(Cat((kept[lane] | (spikes[lane] << scan.step))[:T] for lane in range(L)))]
        row_spikes, row_history = Signal(L), Signal(L * T)
        with m.If(scan.load):
            m.d.sync += [row_spikes.eq(spikes), row_history.eq(Cat(kept))]
        m.d.comb += [self.spikes.valid.eq(events.valid), events.ready.eq(self.spikes.ready),
                     self.spikes.payload.end.eq(events.payload.end), self.spikes.payload.spikes.eq(row_spikes),
                     self.spikes.payload.history.eq(row_history)]
