"""Constant row tables (hw/rows.py, row_table): every row, TABLE_LATENCY cycles after its address."""

import random

import pytest
from amaranth import Elaboratable, Module
from amaranth.sim import Simulator

from spikesmith.contract.plan import TABLE_ROWS
from spikesmith.hw.rows import TABLE_LATENCY, row_table


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
