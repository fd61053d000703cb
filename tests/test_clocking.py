"""The board clock: the PLL drives ``sync`` and holds its reset until lock."""

import re

from amaranth import ClockDomain, Elaboratable, Module, Signal
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from spikesmith.hw.clocking import BoardClock, ecp5_pll, ice40_pll


class _CountingTop(Elaboratable):
    """BoardClock and one register, so the domain has a reset to drive."""

    def __init__(self, config):
        self.config = config

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync = ClockDomain()
        m.submodules.clocking = BoardClock(self.config, sync)
        count = Signal(8)
        m.d.sync += count.eq(count + 1)
        return m


def _clocking_rtlil(platform, config) -> str:
    text = platform.prepare(_CountingTop(config), name="top").files["top.il"]
    return re.search(r"^module \\top\.clocking$.*?^end$", text, re.M | re.S).group(0)


def test_the_ecp5_reset_reaches_the_registers_through_a_global_buffer():
    clocking = _clocking_rtlil(ULX3S_85F_Platform(), ecp5_pll(25e6, 100e6))
    buffer = re.search(r"cell \\DCCA .*?^\s*end$", clocking, re.M | re.S)
    assert buffer is not None, "a DCCA puts the reset on a global net (nextpnr-ecp5 promotes only clocks)"
    assert re.search(r"connect \\CLKO \\rst\b", buffer.group(0)), "the buffer drives the sync domain's reset"


def test_the_ice40_reset_is_left_to_nextpnr_s_own_global_promotion():
    clocking = _clocking_rtlil(ICEBreakerPlatform(), ice40_pll(12e6, 48e6))
    assert "SB_PLL40_PAD" in clocking and "DCCA" not in clocking
