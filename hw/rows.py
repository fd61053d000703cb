"""Packed memory rows: lane views, initialised ROMs and the weight store of an accumulate stage.

A row holds ``lanes`` integers side by side, lane 0 in the LSBs (``spikesmith.contract.plan.pack_row``).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Array, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, memory

from ..contract.packing import TABLE_LATENCY
from ..contract.plan import TABLE_ROWS, LayerPlan, rom_in_logic

__all__ = ["lanes_view", "rom", "row_table", "weight_store", "lookup", "mux_tree", "TABLE_LATENCY", "NO_COLLISIONS",
           "YOSYS_NO_COLLISIONS"]

#: Attributes of a memory (one read port, one write port) none of whose reads uses the data of a row
#: written in the read's own cycle (the design never reads such a row, or forwards the write itself).
#: Simulation reads old data; the board build (:data:`YOSYS_NO_COLLISIONS`) tells yosys that the read
#: may return anything then, so it builds no read-old logic around the block RAM (neither the iCE40's
#: nor the ECP5's reads old data: a register and a multiplexer per bit, ~500 cells for the encoder's
#: buffer of 8 lanes of 8 steps, more for the membrane banks).
NO_COLLISIONS = {"no_rw_check": 1}
#: yosys commands (after reading the design): a read of a :data:`NO_COLLISIONS` memory does not care what
#: it returns when its row is written in the same cycle. (yosys honours ``no_rw_check`` itself only for
#: read ports it builds from flip-flops; Amaranth's ports are synchronous already.)
YOSYS_NO_COLLISIONS = "proc\nmemory_collect\nsetparam -set RD_COLLISION_X_MASK 1'1 t:$mem_v2 a:no_rw_check %i"



def lanes_view(width: int, lanes: int, value, sign: bool = True):
    """A packed row viewed as ``lanes`` integers of ``width`` bits (lane 0 in the LSBs)."""
    return data.ArrayLayout(signed(width) if sign else unsigned(width), lanes)(value)


def lookup(m: Module, name: str, index, values: list[int], width: int) -> Signal:
    """``values[index]`` as a combinational look-up (a case statement over constants, in logic)."""
    out = Signal(width, name=name)
    with m.Switch(index):
        for k, value in enumerate(values):
            with m.Case(k):
                m.d.comb += out.eq(value)
    return out


def mux_tree(values: list, index) -> Value:
    """``values[index]``, as a balanced tree of 2:1 multiplexers on ``index``'s bits, low bit first:
    at most ``len(index)`` deep. An index past the list picks one of the values, which is not specified.
    (yosys builds an ``Array`` look-up as a chain of compares: 6 LUTs deep for 20 words on the iCE40.)"""
    level = [Value.cast(value) for value in values]
    for bit in Value.cast(index):
        if len(level) == 1:
            break
        level = [Mux(bit, level[k + 1] if k + 1 < len(level) else level[k], level[k])
                 for k in range(0, len(level), 2)]
    return level[0]


def rom(m: Module, name: str, width: int, rows: tuple[int, ...]):
    """An initialised read-only memory (block RAM), one synchronous read port."""
    # At least two rows: a one-row memory would have a zero-width address, which Verilog cannot declare.
    store = memory.Memory(shape=unsigned(width), depth=max(2, len(rows)), init=rows)
    m.submodules[name] = store
    return store.read_port()


def row_table(m: Module, name: str, width: int, rows: tuple[int, ...], logic: bool | None = None):
    """A constant table of rows (biases, thresholds, weights), ``TABLE_LATENCY`` = 2 cycles from address to data.

    Up to ``TABLE_ROWS`` rows (spikesmith/contract/plan.py), or when ``logic`` says so, it is logic in two registered steps: each group of 16 rows
    picks its row by the address's low 4 bits (one 4-input LUT a bit on the iCE40, its flip-flop
    beside it), then the address's high bits pick the group. A synchronous ROM read from logic
    and then registered was 6-7 LUTs deep (yosys builds such small ROMs from logic anyway).
    Deeper tables are a ROM (:func:`rom`) with its data registered once more.
    Returns an object with ``addr`` (in) and ``data``.
    """
    if not (len(rows) <= TABLE_ROWS if logic is None else logic):
        store = rom(m, name, width, rows)
        data = Signal(width, name=f"{name}_data")
        m.d.sync += data.eq(store.data)
        return SimpleNamespace(addr=store.addr, data=data)
    depth = max(2, len(rows))
    addr, data = Signal(range(depth), name=f"{name}_addr"), Signal(width, name=f"{name}_data")
    low = min(4, len(addr))
    groups = [rows[start:start + 16] for start in range(0, len(rows), 16)] or [(0,)]
    picked = [Signal(width, name=f"{name}_group{g}") for g in range(len(groups))]
    # Every index of each look-up is in range (groups padded with zeros, the group list with its last): an
    # unpadded 5-group table once made yosys fail an internal assertion in its ABC pass on the ECP5.
    for group, row in zip(groups, picked):
        padded = [*group, *[0] * ((1 << low) - len(group))]
        m.d.sync += row.eq(Array(Const(value, width) for value in padded)[addr[:low]])
    if len(picked) == 1:
        m.d.sync += data.eq(picked[0])
    else:
        group_of = Signal(len(addr) - low, name=f"{name}_group_of")
        choices = [*picked, *[picked[-1]] * ((1 << len(group_of)) - len(picked))]
        m.d.sync += [group_of.eq(addr[low:]), data.eq(mux_tree(choices, group_of))]
    return SimpleNamespace(addr=addr, data=data)


def weight_store(m: Module, plan: LayerPlan, load):
    """The weight rows: a table (:func:`row_table`; in logic in two registered steps where yosys would
    build the ROM from logic anyway: read from logic in one, layer 0 of the digits CNN was the
    iCE40's slowest path), or (``plan.weights_loaded``) a RAM written through ``load``.

    A loaded store has one address for reading and writing, so yosys can map it to the
    iCE40UP5K's single-port SPRAM; ``load.en`` takes the address for the write cycle. Loads
    happen only while the core is idle (the board top refuses them with images in flight).
    Returns an object with ``addr`` (read address, in) and ``data`` (the row, ``TABLE_LATENCY``
    cycles later).
    """
    if not plan.weights_loaded:
        return row_table(m, "weights", plan.weight_row_width, plan.weight_rows,
                         logic=rom_in_logic(plan.weight_row_width, plan.weight_row_count))
    store = memory.Memory(shape=unsigned(plan.weight_row_width), depth=plan.weight_row_count, init=[],
                          attrs={"ram_style": "huge"})
    m.submodules.weights_spram = store          # gen/build.py strips this name's (zero) init for yosys
    write, read = store.write_port(), store.read_port()
    address = Signal.like(read.addr)
    table_like = SimpleNamespace(addr=Signal.like(read.addr, name="weight_read_addr"),
                                 data=Signal.like(read.data, name="weights_data"))
    m.d.comb += [address.eq(Mux(load.en, load.addr, table_like.addr)), read.addr.eq(address),
                 read.en.eq(~load.en), write.addr.eq(address), write.data.eq(load.data), write.en.eq(load.en)]
    m.d.sync += table_like.data.eq(read.data)
    return table_like
