"""The two membrane banks of a layer engine and the port each stage reaches them through.

Every engine owns two banks (ping-pong) and a ``full`` flag per bank: the accumulate stage
fills an empty bank, the fire (or readout) stage drains a full one, so stage 1 works on
image n+1 while stage 2 works on image n. A bank's ports belong to the draining stage while
it is full and to the filling stage while it is empty (docs/core.md, "One layer engine").

Reads take two cycles (:data:`READ_LATENCY`): the block RAM's output is registered, so no
carry chain follows a RAM output in the same cycle. The RAM reads write-first (a row written
in the cycle it is read comes back new); the fill port also forwards its last write
(:func:`forwarded_read`), so the accumulate stage may update one row every cycle. The drain
port does not: a fire stage reads a row again no sooner than the cycle it writes it back.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .fanout import fanout_copies

__all__ = ["READ_LATENCY", "MembranePort", "MembraneBanks", "forwarded_read"]

#: Cycles from a row's address to its data at a :class:`MembranePort`.
READ_LATENCY = 2


class MembranePort(wiring.Signature):
    """A stage's access to its bank, from the stage's side.

    ``ready``: the bank is there to work on (fill: an empty bank; drain: a full one).
    ``done``: one cycle, the stage is finished with it (fill: hand it to the fire stage;
    drain: free it for the next image); it issues no read in that cycle. Rows are ``width``
    bits (``lanes`` membranes). ``read_data`` in cycle ``c + 2`` is row ``read_addr`` of cycle
    ``c`` with every write of the cycles up to ``c`` in it (:data:`READ_LATENCY`); on the fill
    port, also the write of cycle ``c + 1`` (:class:`MembraneBanks`), and ``zero_read`` in
    cycle ``c + 1`` makes it 0 instead (the accumulate stage's CLEAR: the row is zeroed on its
    way into the read register, so the stage's adders have no clear multiplexer of their own).
    """

    def __init__(self, rows: int, width: int):
        address = range(max(2, rows))
        super().__init__({
            "ready": In(1),
            "done": Out(1),
            "read_addr": Out(address),
            "read_data": In(width),
            "write_addr": Out(address),
            "write_data": Out(width),
            "write_en": Out(1),
            "zero_read": Out(1),
        })


def forwarded_read(m: Module, raw, read_addr, write_addr, write_data, write_en, zero, name: str,
                   chunks: list[tuple[int, int]] | None = None) -> Signal:
    """The data of a two-cycle read that a stage's own last write keeps exact.

    ``raw``: a synchronous write-first read of the row ``read_addr`` gave in the cycle before
    (it has the writes up to that read's cycle, and misses the write of this one). Returns a
    register that, two cycles after ``read_addr``, holds ``raw``, or the write of the cycle in
    between if it was to the same row, or 0 if ``zero`` was high in that cycle in between (a
    synchronous reset of the register). The choice is made on the way into the register, so
    the stage reads a register with no multiplexer after it: the choice's select drives a
    multiplexer per bit of the row (1,280 of them for 64 lanes), and as a register feeding the
    stage's adders that net's routing had set the MNIST MLP's clock.

    With ``chunks`` (``(low, high)`` bit ranges, :func:`_chunks`), each chunk compares the write's row
    with its own copy of the read's row (hw/fanout.py), so no one select drives the whole row.
    """
    chunks = chunks or _chunks(len(raw), None)
    # the row whose data is in `raw`, a copy per chunk
    addressed = fanout_copies(m, f"{name}_addressed", read_addr, len(read_addr), len(chunks))
    out = Signal(len(raw), name=f"{name}_data")
    for (low, high), row in zip(chunks, addressed):
        forward = write_en & (write_addr == row)
        m.d.sync += out[low:high].eq(Mux(zero, 0, Mux(forward, write_data[low:high], raw[low:high])))
    return out


def _chunks(width: int, chunk_bits: int | None) -> list[tuple[int, int]]:
    """``(low, high)`` bit ranges of ``chunk_bits`` (the last one shorter) covering ``width`` bits."""
    step = chunk_bits or width
    return [(low, min(low + step, width)) for low in range(0, width, step)]


class MembraneBanks(wiring.Component):
    """Two banks of ``rows`` rows x ``width`` bits, with their ownership flags.

    ``fill``: the accumulate stage's port; ``drain``: the fire or readout stage's port.
    """

    def __init__(self, rows: int, width: int, chunk_bits: int | None = None):
        """``chunk_bits``: each port's read chooses its bank (and the fill port's forwards its last write)
        by a select for each chunk of that many bits (:func:`forwarded_read`); None: one for the row."""
        self.rows, self.width, self.chunk_bits = rows, width, chunk_bits
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
            read = bank.read_port(transparent_for=(write,))
            drained = full[k]
            m.d.comb += [
                read.addr.eq(Mux(drained, drain.read_addr, fill.read_addr)),
                write.addr.eq(Mux(drained, drain.write_addr, fill.write_addr)),
                write.data.eq(Mux(drained, drain.write_data, fill.write_data)),
                write.en.eq(Mux(drained, drain.write_en & (drain_bank == k), fill.write_en & (fill_bank == k))),
            ]
            reads.append(read.data)
        raw, chunks = {}, _chunks(self.width, self.chunk_bits)
        for bank, name in ((fill_bank, "fill"), (drain_bank, "drain")):
            # The bank the read in the RAM's output came from, a copy per chunk.
            read_bank = fanout_copies(m, f"{name}_read_bank", bank, 1, len(chunks))
            raw[name] = Cat(Mux(copy, reads[1][low:high], reads[0][low:high])
                            for (low, high), copy in zip(chunks, read_bank))
        m.d.comb += fill.read_data.eq(forwarded_read(m, raw["fill"], fill.read_addr, fill.write_addr,
                                                     fill.write_data, fill.write_en, fill.zero_read, "fill",
                                                     chunks))
        drained = Signal(self.width, name="drain_registered")
        m.d.sync += drained.eq(raw["drain"])
        m.d.comb += drain.read_data.eq(drained)
        m.d.comb += [fill.ready.eq(~full.bit_select(fill_bank, 1)), drain.ready.eq(full.bit_select(drain_bank, 1))]
        with m.If(fill.done):         # the filled bank becomes full; fill the other one next
            m.d.sync += [full.bit_select(fill_bank, 1).eq(1), fill_bank.eq(~fill_bank)]
        with m.If(drain.done):        # the drained bank becomes empty; drain the other one next
            m.d.sync += [full.bit_select(drain_bank, 1).eq(0), drain_bank.eq(~drain_bank)]
        return m
