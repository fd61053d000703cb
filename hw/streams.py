"""Stream plumbing between the core's stages."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["StreamRegister", "SlowStreamRegister"]


class StreamRegister(wiring.Component):
    """A registered stage on a stream (a skid buffer): ``payload``/``valid`` out of registers and
    ``ready`` in from a register, so neither path crosses it; one beat per cycle, one cycle later.

    ``inlet`` takes a beat while the spare register is empty; ``outlet`` offers the oldest beat.
    When the outlet stalls, the beat already accepted waits in the spare register.
    ``outlet_layout`` (default ``layout``): what a subclass's :meth:`decode` makes of a beat on its way in.
    """

    def __init__(self, layout, outlet_layout=None):
        self.layout, self.outlet_layout = layout, layout if outlet_layout is None else outlet_layout
        super().__init__({"inlet": In(stream.Signature(layout)), "outlet": Out(stream.Signature(self.outlet_layout))})

    def decode(self, m: Module) -> Value:
        """The inlet's beat as the register takes it: the beat itself here; logic in a subclass."""
        return self.inlet.payload

    def elaborate(self, platform):
        m = Module()
        inlet, outlet, beat = self.inlet, self.outlet, self.decode(m)
        spare, spare_valid = Signal(self.outlet_layout), Signal()
        m.d.comb += inlet.ready.eq(~spare_valid)
        with m.If(~outlet.valid | outlet.ready):             # the output register moves on
            m.d.sync += [outlet.valid.eq(spare_valid | inlet.valid),
                         outlet.payload.eq(Mux(spare_valid, spare, beat)), spare_valid.eq(0)]
        with m.Elif(inlet.valid & inlet.ready):              # it holds: the new beat waits in the spare
            m.d.sync += [spare.eq(beat), spare_valid.eq(1)]
        return m


class SlowStreamRegister(StreamRegister):
    """A registered stage on a slow stream: one register, taking a beat only while it is empty.

    The same ports as :class:`StreamRegister`. ``outlet.ready`` only empties the register, and
    ``inlet.ready`` is its emptiness, so no path crosses it either way, at half the skid
    buffer's registers: at most one beat every two cycles, which is plenty for bytes from a
    UART (one per 10 bit times).
    """

    def elaborate(self, platform):
        m = Module()
        inlet, outlet, beat = self.inlet, self.outlet, self.decode(m)
        m.d.comb += inlet.ready.eq(~outlet.valid)
        with m.If(outlet.ready):
            m.d.sync += outlet.valid.eq(0)
        with m.If(inlet.valid & inlet.ready):
            m.d.sync += [outlet.valid.eq(1), outlet.payload.eq(beat)]
        return m
