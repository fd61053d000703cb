"""Constant row tables (hw/rows.py, row_table): every row, TABLE_LATENCY cycles after its address."""

import random

import pytest
from amaranth import Elaboratable, Module, Signal
from amaranth.sim import Simulator

from spikesmith.contract.plan import TABLE_ROWS
from spikesmith.hw.rows import TABLE_LATENCY, mux_tree, row_table


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
