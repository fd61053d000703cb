"""The two membrane banks of a layer engine and the port each stage reaches them through.

Every engine owns two banks (ping-pong) and a ``full`` flag per bank: the accumulate stage
fills an empty bank, the fire (or readout) stage drains a full one, so stage 1 works on
image n+1 while stage 2 works on image n. A bank's ports belong to the draining stage while
it is full and to the filling stage while it is empty (docs/core.md, "One layer engine").

Reads take two cycles (:data:`READ_LATENCY`): the block RAM's output is registered, so no
carry chain follows a RAM output in the same cycle. The RAM reads old data (a row written in
the cycle it is read comes back as it was: neither the iCE40's nor the ECP5's block RAM reads
its own write, and yosys built the difference from logic for each bank, a register and a
multiplexer per bit); the fill port forwards the write of the read's own cycle and of the
cycle after it (:func:`forwarded_read`), so the accumulate stage may update one row every
cycle. The drain port forwards the write of the read's own cycle only where its stage may read
a row in the cycle it writes it back (``drain_rereads``: a fire stage of few rows).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .fanout import fanout_copies
from .rows import NO_COLLISIONS

__all__ = ["READ_LATENCY", "MembranePort", "MembraneBanks", "forwarded_read"]

#: Cycles from a row's address to its data at a :class:`MembranePort`.
READ_LATENCY = 2


class MembranePort(wiring.Signature):
    """A stage's access to its bank, from the stage's side.

    ``ready``: the bank is there to work on (fill: an empty bank; drain: a full one).
    ``done``: one cycle, the stage is finished with it (fill: hand it to the fire stage;
    drain: free it for the next image); it issues no read in that cycle. Rows are ``width``
    bits (``lanes`` membranes). ``read_data`` in cycle ``c + 2`` is row ``read_addr`` of cycle
    ``c`` with every write of the cycles up to ``c`` in it (:data:`READ_LATENCY`; on a drain port
    without ``drain_rereads``, up to ``c - 1``: its stage never reads a row in a cycle it writes it); on the fill
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
                   chunks: list[tuple[int, int]] | None = None, after: bool = True, own_cycle: bool = True) -> Signal:
    """The data of a two-cycle read that a stage's own writes keep exact.

    ``raw``: a synchronous read-old of the row ``read_addr`` gave in the cycle before (it has the
    writes before that read's cycle; with ``own_cycle`` False a write-first read, which has that
    cycle's write too). Returns a register that, two cycles after ``read_addr``, holds
    ``raw``, or (``own_cycle``) the write of the read's own cycle if it was to the same row, or (``after``) the write
    of the cycle in between if it was to the same row (the later wins), or 0 if ``zero`` was high in
    that cycle in between (a synchronous reset of the register). The choice is made on the way into
    the register, so the stage reads a register with no multiplexer after it: the choice's select
    drives a multiplexer per bit of the row (1,280 of them for 64 lanes), and as a register feeding
    the stage's adders that net's routing had set the MNIST MLP's clock.

    With ``chunks`` (``(low, high)`` bit ranges, :func:`_chunks`), each chunk compares the write's row
    with its own copy of the read's row (hw/fanout.py), so no one select drives the whole row.
    """
    chunks = chunks or _chunks(len(raw), None)
    # the write of the read's own cycle (its data, and whether it was the read's row: a copy per chunk)
    if own_cycle:
        written = Signal(len(raw), name=f"{name}_written")
        m.d.sync += written.eq(write_data)
        same = fanout_copies(m, f"{name}_same", write_en & (write_addr == read_addr), 1, len(chunks))
    # the row whose data is in `raw`, a copy per chunk
    addressed = fanout_copies(m, f"{name}_addressed", read_addr, len(read_addr), len(chunks)) if after else []
    out = Signal(len(raw), name=f"{name}_data")
    for k, (low, high) in enumerate(chunks):
        data = Mux(same[k], written[low:high], raw[low:high]) if own_cycle else raw[low:high]
        if after:
            data = Mux(write_en & (write_addr == addressed[k]), write_data[low:high], data)
        m.d.sync += out[low:high].eq(Mux(zero, 0, data))
    return out


def _chunks(width: int, chunk_bits: int | None) -> list[tuple[int, int]]:
    """``(low, high)`` bit ranges of ``chunk_bits`` (the last one shorter) covering ``width`` bits."""
    step = chunk_bits or width
    return [(low, min(low + step, width)) for low in range(0, width, step)]


class MembraneBanks(wiring.Component):
    """Two banks of ``rows`` rows x ``width`` bits, with their ownership flags.

    ``fill``: the accumulate stage's port; ``drain``: the fire or readout stage's port.
    """

    def __init__(self, rows: int, width: int, chunk_bits: int | None = None, drain_rereads: bool = True,
                 write_first: bool | None = None):
        """``chunk_bits``: each port's read chooses its bank (and forwards writes) by a select for each
        chunk of that many bits (:func:`forwarded_read`); None: one for the row. ``drain_rereads``: the
        drain port's stage may read a row in the cycle it writes it (its read then gets the write).
        ``write_first``: the banks read write-first and the ports forward only the fill port's write of
        the cycle after a read (what yosys maps best on the ECP5); None: so on an ECP5 platform only."""
        self.rows, self.width, self.chunk_bits, self.drain_rereads = rows, width, chunk_bits, drain_rereads
        self.write_first = write_first
        super().__init__({"fill": In(MembranePort(rows, width)), "drain": In(MembranePort(rows, width))})

    def elaborate(self, platform):
        m = Module()
        fill, drain = self.fill, self.drain
        full = Signal(2)
        fill_bank = Signal()      # the bank the accumulate stage fills (or waits for)
        drain_bank = Signal()     # the bank the fire / readout stage drains (or waits for)
        reads, write_first = [], self.write_first
        if write_first is None:               # (the ECP5 gets write-first reads from yosys for less logic)
            write_first = str(getattr(platform, "device", "")).startswith("LFE5")
        for k in range(2):
            # At least two rows: a one-row memory would have a zero-width address, which Verilog cannot declare.
            bank = memory.Memory(shape=unsigned(self.width), depth=max(2, self.rows), init=[],
                                 attrs=None if write_first else NO_COLLISIONS)
            m.submodules[f"membranes{k}"] = bank
            write = bank.write_port()
            # read-old, the ports forwarding their own writes; or write-first
            read = bank.read_port(transparent_for=(write,) if write_first else ())
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
                                                     chunks, own_cycle=not write_first))
        if self.drain_rereads and not write_first:
            drained = forwarded_read(m, raw["drain"], drain.read_addr, drain.write_addr, drain.write_data,
                                     drain.write_en, 0, "drain", chunks, after=False)
        else:
            drained = Signal(self.width, name="drain_registered")
            m.d.sync += drained.eq(raw["drain"])
        m.d.comb += drain.read_data.eq(drained)
        m.d.comb += [fill.ready.eq(~full.bit_select(fill_bank, 1)), drain.ready.eq(full.bit_select(drain_bank, 1))]
        with m.If(fill.done):         # the filled bank becomes full; fill the other one next
            m.d.sync += [full.bit_select(fill_bank, 1).eq(1), fill_bank.eq(~fill_bank)]
        with m.If(drain.done):        # the drained bank becomes empty; drain the other one next
            m.d.sync += [full.bit_select(drain_bank, 1).eq(0), drain_bank.eq(~drain_bank)]
        return m
