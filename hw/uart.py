"""A small 8N1 UART (amaranth-stdio is not on PyPI).

``divisor`` is clock cycles per bit (clock / baud, at least 4). Bit timers count down past zero: a
timer has run out when its sign bit is set (a compare with zero and the decrement in one cycle set
the iCE40's clock once the core got faster). The receiver cannot be held
off (a serial line has no flow control here): a byte that finds its stream not ready is
dropped and counted in ``overflows``; a byte whose stop bit is low is dropped too.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UARTReceiver", "UARTTransmitter"]


class UARTReceiver(wiring.Component):
    """Serial ``rx`` (idle high) -> a stream of bytes."""

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError(f"UART divisor {divisor} is below 4 clock cycles per bit")
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "data": Out(stream.Signature(8)), "overflows": Out(16)})

    def elaborate(self, platform):
        m = Module()
        rx = Signal(3, init=0b111)                       # two flops against metastability, one for the edge
        m.d.sync += rx.eq(Cat(self.rx, rx[:2]))
        line = rx[1]
        timer = Signal(signed((self.divisor * 3 // 2).bit_length() + 1))       # out when negative
        bits = Signal(8)
        count = Signal(range(9))
        with m.If(self.data.ready):
            m.d.sync += self.data.valid.eq(0)
        with m.FSM(name="uart_rx"):
            with m.State("IDLE"):
                with m.If(rx[2] & ~line):                # falling edge: a start bit
                    m.d.sync += [timer.eq(self.divisor * 3 // 2 - 3), count.eq(0)]   # to the middle of bit 0
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer[-1]):
                    m.d.sync += [bits.eq(Cat(bits[1:], line)), count.eq(count + 1), timer.eq(self.divisor - 2)]
                    with m.If(count == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                with m.If(timer[-1]):
                    with m.If(line):                     # a good stop bit: deliver
                        with m.If(self.data.valid & ~self.data.ready):
                            m.d.sync += self.overflows.eq(self.overflows + 1)
                        with m.Else():
                            m.d.sync += [self.data.payload.eq(bits), self.data.valid.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
        return m


class UARTTransmitter(wiring.Component):
    """A stream of bytes -> serial ``tx`` (idle high), 8N1."""

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError(f"UART divisor {divisor} is below 4 clock cycles per bit")
        self.divisor = divisor
        super().__init__({"data": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        shift = Signal(10, init=0x3FF)                   # stop, 8 data bits LSB first, start
        left = Signal(range(11))
        timer = Signal(signed(self.divisor.bit_length() + 1))        # out when negative
        m.d.comb += [self.tx.eq(shift[0]), self.data.ready.eq(left == 0)]
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [shift.eq(Cat(Const(0, 1), self.data.payload, Const(1, 1))), left.eq(10),
                         timer.eq(self.divisor - 2)]
        with m.Elif(left != 0):
            with m.If(timer[-1]):
                m.d.sync += [shift.eq(Cat(shift[1:], Const(1, 1))), left.eq(left - 1), timer.eq(self.divisor - 2)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m
