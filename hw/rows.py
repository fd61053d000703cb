"""Packed memory rows: lane views, initialised ROMs and the weight store of an accumulate stage.

A row holds ``lanes`` integers side by side, lane 0 in the LSBs (``spikesmith.contract.plan.pack_row``).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory

from ..contract.plan import LayerPlan

__all__ = ["lanes_view", "rom", "weight_store", "lookup"]


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


def rom(m: Module, name: str, width: int, rows: tuple[int, ...]):
    """An initialised read-only memory (block RAM), one synchronous read port."""
    # At least two rows: a one-row memory would have a zero-width address, which Verilog cannot declare.
    store = memory.Memory(shape=unsigned(width), depth=max(2, len(rows)), init=rows)
    m.submodules[name] = store
    return store.read_port()


def weight_store(m: Module, plan: LayerPlan, load):
    """The weight rows: a ROM, or (``plan.weights_loaded``) a RAM written through ``load``.

    A loaded store has one address for reading and writing, so yosys can map it to the
    iCE40UP5K's single-port SPRAM; ``load.en`` takes the address for the write cycle. Loads
    happen only while the core is idle (the board top refuses them with images in flight).
    Returns an object with ``addr`` (read address, in) and ``data`` (the row, a cycle later).
    """
    if not plan.weights_loaded:
        return rom(m, "weights", plan.weight_row_width, plan.weight_rows)
    store = memory.Memory(shape=unsigned(plan.weight_row_width), depth=plan.weight_row_count, init=[],
                          attrs={"ram_style": "huge"})
    m.submodules.weights_spram = store          # gen/build.py strips this name's (zero) init for yosys
    write, read = store.write_port(), store.read_port()
    address = Signal.like(read.addr)
    rom_like = SimpleNamespace(addr=Signal.like(read.addr, name="weight_read_addr"), data=read.data)
    m.d.comb += [address.eq(Mux(load.en, load.addr, rom_like.addr)), read.addr.eq(address),
                 read.en.eq(~load.en), write.addr.eq(address), write.data.eq(load.data), write.en.eq(load.en)]
    return rom_like
