"""Constant row tables (hw/rows.py, row_table): every row, TABLE_LATENCY cycles after its address; memories
without read-write collisions in the board build."""

import random

import pytest
from amaranth import Elaboratable, Module, Signal
from amaranth.back import rtlil
from amaranth.lib import memory
from amaranth.sim import Simulator

from spikesmith.contract.plan import TABLE_ROWS
from spikesmith.hw.rows import NO_COLLISIONS, TABLE_LATENCY, YOSYS_NO_COLLISIONS, mux_tree, row_table

from conftest import ice40_cells


class _Table(Elaboratable):
    def __init__(self, rows, width):
        self.rows, self.width, self.table = rows, width, None

    def elaborate(self, platform):
        m = Module()
        self.table = row_table(m, "table", self.width, self.rows)
        return m


@pytest.mark.parametrize("depth", [1, 16, 40, TABLE_ROWS, TABLE_ROWS + 6])     # one group, several, a ROM
def test_row_table_gives_each_row_two_cycles_after_its_address(depth):
    rng = random.Random(depth)
    rows = tuple(rng.getrandbits(20) for _ in range(depth))
    dut = _Table(rows, 20)
    addresses = [rng.randrange(depth) for _ in range(3 * depth + 8)]
    seen = []

    async def bench(ctx):
        for address in addresses + [0] * TABLE_LATENCY:
            ctx.set(dut.table.addr, address)
            seen.append(ctx.get(dut.table.data))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen[TABLE_LATENCY:] == [rows[a] for a in addresses]


@pytest.mark.parametrize("count", [1, 3, 6, 8])
def test_mux_tree_picks_the_value_at_each_index(count):
    values = [Signal(8, name=f"v{k}") for k in range(count)]
    index = Signal(3)
    picked = mux_tree(values, index)
    m = Module()
    m.d.comb += Signal(8).eq(picked)        # (a module for the simulator to hold the expression)
    seen = {}

    async def bench(ctx):
        for k, value in enumerate(values):
            ctx.set(value, 10 + k)
        for position in range(count):
            ctx.set(index, position)
            seen[position] = ctx.get(picked)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {position: 10 + position for position in range(count)}


def _logic_around_a_ram(tmp_path, attrs) -> int:
    """Flip-flops and LUTs yosys puts around a 256 x 16 block RAM written and read at two addresses."""
    m = Module()
    m.submodules.ram = ram = memory.Memory(shape=16, depth=256, init=[], attrs=attrs)
    write, read = ram.write_port(), ram.read_port()
    ports = [Signal(8, name="write_addr"), Signal(8, name="read_addr"), Signal(16, name="write_data"),
             Signal(16, name="read_data")]
    m.d.comb += [write.addr.eq(ports[0]), read.addr.eq(ports[1]), write.data.eq(ports[2]), write.en.eq(1),
                 ports[3].eq(read.data)]
    top_il = rtlil.convert(m, ports=ports)
    assert ice40_cells(tmp_path, top_il, YOSYS_NO_COLLISIONS, "RAM40_4K") == 1, "one block RAM either way"
    return ice40_cells(tmp_path, top_il, YOSYS_NO_COLLISIONS, "DFF|LUT4")


def test_a_memory_without_collisions_gets_no_read_old_logic_in_the_board_build(tmp_path):
    """The iCE40's block RAM does not read old data: yosys builds it from registers unless told not to."""
    assert _logic_around_a_ram(tmp_path, None) >= 16 + 16, "a register and a multiplexer per bit"
    assert _logic_around_a_ram(tmp_path, NO_COLLISIONS) == 0
