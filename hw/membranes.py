"""The two membrane banks of a layer engine and the port each stage reaches them through.

Every engine owns two banks (ping-pong) and a ``full`` flag per bank: the accumulate stage
fills an empty bank, the fire (or readout) stage drains a full one, so stage 1 works on
image n+1 while stage 2 works on image n. A bank's ports belong to the draining stage while
it is full and to the filling stage while it is empty (docs/core.md, "One layer engine").
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MembranePort", "MembraneBanks"]


class MembranePort(wiring.Signature):
    """A stage's access to its bank, from the stage's side.

    ``ready``: the bank is there to work on (fill: an empty bank; drain: a full one).
    ``done``: one cycle, the stage is finished with it (fill: hand it to the fire stage;
    drain: free it for the next image). Rows are ``width`` bits (``lanes`` membranes);
    reads are synchronous (data the cycle after ``read_addr``/``read_en``).
    """

    def __init__(self, rows: int, width: int):
        address = range(max(2, rows))
        super().__init__({
            "ready": In(1),
            "done": Out(1),
            "read_addr": Out(address),
            "read_en": Out(1),
            "read_data": In(width),
            "write_addr": Out(address),
            "write_data": Out(width),
            "write_en": Out(1),
        })


class MembraneBanks(wiring.Component):
    """Two banks of ``rows`` rows x ``width`` bits, with their ownership flags.

    ``fill``: the accumulate stage's port; ``drain``: the fire or readout stage's port.
    """

    def __init__(self, rows: int, width: int):
        self.rows, self.width = rows, width
        super().__init__({"fill": In(MembranePort(rows, width)), "drain": In(MembranePort(rows, width))})

    def elaborate(self, platform):
        m = Module()
        fill, drain = self.fill, self.drain
        full = Signal(2)
        fill_bank = Signal()      # the bank the accumulate stage fills (or waits for)
        drain_bank = Signal()     # the bank the fire / readout stage drains (or waits for)
        reads = []
        for k in range(2):
            # At least two rows: a one-row memory would have a zero-width address, which Verilog cannot declare.
            bank = memory.Memory(shape=unsigned(self.width), depth=max(2, self.rows), init=[])
            m.submodules[f"membranes{k}"] = bank
            write = bank.write_port()
            # Transparent: a row written this cycle is read back new (one-row layers update it every cycle).
            read = bank.read_port(transparent_for=(write,))
            drained = full[k]
            m.d.comb += [
                read.addr.eq(Mux(drained, drain.read_addr, fill.read_addr)),
                read.en.eq(Mux(drained, drain.read_en, fill.read_en)),
                write.addr.eq(Mux(drained, drain.write_addr, fill.write_addr)),
                write.data.eq(Mux(drained, drain.write_data, fill.write_data)),
                write.en.eq(Mux(drained, drain.write_en & (drain_bank == k), fill.write_en & (fill_bank == k))),
            ]
            reads.append(read.data)
        m.d.comb += [fill.read_data.eq(Mux(fill_bank, reads[1], reads[0])),
                     drain.read_data.eq(Mux(drain_bank, reads[1], reads[0])),
                     fill.ready.eq(~full.bit_select(fill_bank, 1)),
                     drain.ready.eq(full.bit_select(drain_bank, 1))]
        with m.If(fill.done):         # the filled bank becomes full; fill the other one next
            m.d.sync += [full.bit_select(fill_bank, 1).eq(1), fill_bank.eq(~fill_bank)]
        with m.If(drain.done):        # the drained bank becomes empty; drain the other one next
            m.d.sync += [full.bit_select(drain_bank, 1).eq(0), drain_bank.eq(~drain_bank)]
        return m
