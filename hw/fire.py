"""Stage 2 of a hidden layer: ``T`` firing steps over a full membrane bank, as spike events.

Before the first step each membrane is clamped to ``[0, theta]``; every step doubles it and,
if ``V >= theta``, spikes and subtracts ``theta`` (:class:`~.ilif.ILIFFire`, one per lane;
docs/semantics.md, "One layer"). The block scanner reads one row per cycle and sends the
step's events, then an end marker (docs/core.md, "Spike events").
"""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import Out

from ..contract.plan import LayerPlan
from .events import BlockScanner, ScanCoordinates, pixel_event_layout, spike_event_layout
from .ilif import ILIFFire
from .membranes import MembranePort
from .rows import lanes_view, rom

__all__ = ["FireStage"]


class FireStage(wiring.Component):
    """The firing steps of one layer.

    ``membranes``: the drain port of the layer's banks. ``spikes``: this layer's events, step
    by step: addresses (``output_addr_width`` bits), or ``(channel, y, x)`` when the next
    layer is a convolution; with ``skip_silent`` only neurons that spiked send one.
    """

    def __init__(self, plan: LayerPlan, skip_silent: bool = True):
        assert plan.fires
        assert plan.conv is not None or not plan.emits_pixels, "only a convolution's events carry coordinates"
        self.plan, self.skip_silent = plan, skip_silent
        super().__init__({
            "membranes": Out(MembranePort(plan.rows, plan.lanes * plan.membrane_width)),
            "spikes": Out(stream.Signature(pixel_event_layout(plan.conv.out_shape) if plan.emits_pixels
                                           else spike_event_layout(plan.output_addr_width))),
        })

    def elaborate(self, platform):
        m = Module()
        plan, port, L, mw = self.plan, self.membranes, self.plan.lanes, self.plan.membrane_width
        thresholds = rom(m, "thresholds", L * plan.threshold_width, plan.threshold_rows)
        scan = BlockScanner(blocks=plan.rows, lanes=L, neurons=plan.rows * L if plan.conv else plan.neurons,
                            timesteps=plan.timesteps, skip_silent=self.skip_silent)
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
        for lane in range(L):
            unit = ILIFFire(mw, plan.threshold_width)
            m.submodules[f"fire{lane}"] = unit
            m.d.comb += [unit.first.eq(scan.step == 0), unit.membrane.eq(membrane[lane]),
                         unit.threshold.eq(threshold[lane]),
                         scan.spikes[lane].eq(unit.spike), updated[lane].eq(unit.updated)]
        scan.build(m, self.spikes)
        m.d.comb += port.done.eq(scan.finished)
        return m
