"""The core's clock on a board: the oscillator directly, or a PLL for ``spikesmith build --clock``.

    config = ice40_pll(12e6, 24e6)      # -> ICE40PLLConfig(divr=0, divf=63, divq=5, ...)
    m.domains.sync = sync = ClockDomain()
    m.submodules.clocking = BoardClock(config, sync)

The solvers search the divider settings the devices allow and return the closest output
frequency; :class:`BoardClock` instantiates the PLL primitive (``SB_PLL40_PAD`` on the
iCE40, ``EHXPLLL`` on the ECP5), drives the parent's domain from its output and holds the
domain in reset until the PLL reports lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import AsyncFFSynchronizer, ResetSynchronizer

from ..errors import SpikesmithError

__all__ = ["ICE40PLLConfig", "ECP5PLLConfig", "ice40_pll", "ecp5_pll", "BoardClock", "ClockError"]


class ClockError(SpikesmithError):
    """No PLL setting reaches the requested clock."""


@dataclass(frozen=True)
class ICE40PLLConfig:
    """SB_PLL40 with simple feedback: f_out = f_in * (divf + 1) / ((divr + 1) * 2**divq)."""
    input_hz: float
    divr: int             # 0..15
    divf: int             # 0..127
    divq: int             # 1..6
    filter_range: int     # 1..6, from the phase detector's frequency

    @property
    def output_hz(self) -> float:
        return self.input_hz * (self.divf + 1) / ((self.divr + 1) * 2 ** self.divq)


@dataclass(frozen=True)
class ECP5PLLConfig:
    """EHXPLLL with CLKOP feedback: f_out = f_in * clkfb_div / clki_div, VCO = f_out * clkop_div."""
    input_hz: float
    clki_div: int         # 1..128
    clkfb_div: int        # 1..80
    clkop_div: int        # 1..128

    @property
    def output_hz(self) -> float:
        return self.input_hz * self.clkfb_div / self.clki_div


def _check_close(device: str, input_hz: float, output_hz: float, best) -> None:
    if best is None or abs(best.output_hz - output_hz) / output_hz > 0.01:
        near = f"; the nearest is {best.output_hz / 1e6:.3f} MHz" if best is not None else ""
        raise ClockError(f"the {device} PLL cannot make {output_hz / 1e6:g} MHz from {input_hz / 1e6:g} MHz "
                         f"within 1%{near}")


def ice40_pll(input_hz: float, output_hz: float) -> ICE40PLLConfig:
    """Divider settings within the iCE40 PLL's limits (PFD 10-133 MHz, VCO 533-1066 MHz, out 16-275 MHz)."""
    best, best_error = None, None
    for divr in range(16):
        pfd = input_hz / (divr + 1)
        if not 10e6 <= pfd <= 133e6:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533e6 <= vco <= 1066e6:
                continue
            for divq in range(1, 7):
                out = vco / 2 ** divq
                if not 16e6 <= out <= 275e6:
                    continue
                error = abs(out - output_hz)
                if best_error is None or error < best_error:
                    filter_range = next(i for i, top in enumerate((17e6, 26e6, 44e6, 66e6, 101e6, 1e12), 1)
                                        if pfd < top)
                    best, best_error = ICE40PLLConfig(input_hz, divr, divf, divq, filter_range), error
    _check_close("iCE40", input_hz, output_hz, best)
    return best


def ecp5_pll(input_hz: float, output_hz: float) -> ECP5PLLConfig:
    """Divider settings within the ECP5 PLL's limits (PFD 3.125-400 MHz, VCO 400-800 MHz)."""
    best, best_key = None, None
    for clki_div in range(1, 129):
        pfd = input_hz / clki_div
        if not 3.125e6 <= pfd <= 400e6:
            continue
        for clkfb_div in range(1, 81):
            out = pfd * clkfb_div
            for clkop_div in range(1, 129):
                vco = out * clkop_div
                if not 400e6 <= vco <= 800e6:
                    continue
                key = (abs(out - output_hz), abs(vco - 600e6))     # closest clock, then a mid-range VCO
                if best_key is None or key < best_key:
                    best, best_key = ECP5PLLConfig(input_hz, clki_div, clkfb_div, clkop_div), key
    _check_close("ECP5", input_hz, output_hz, best)
    return best


class BoardClock(Elaboratable):
    """Drives ``domain`` (defined by the parent) from the platform's oscillator through ``config``'s PLL.

    The domain's reset is held until the PLL locks and released synchronously; on the ECP5 it
    reaches the registers through a global clock buffer (``DCCA``).
    """

    def __init__(self, config: ICE40PLLConfig | ECP5PLLConfig, domain: ClockDomain):
        self.config, self.domain = config, domain

    def elaborate(self, platform):
        m = Module()
        sync = self.domain
        locked = Signal()
        config = self.config
        if isinstance(config, ICE40PLLConfig):
            pad = platform.request(platform.default_clk, dir="-")
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
                p_DIVR=config.divr, p_DIVF=config.divf, p_DIVQ=config.divq, p_FILTER_RANGE=config.filter_range,
                i_PACKAGEPIN=pad.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=sync.clk, o_LOCK=locked)
        else:
            m.submodules.oscillator = oscillator = io.Buffer("i", platform.request(platform.default_clk, dir="-"))
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
                p_CLKI_DIV=config.clki_div, p_CLKFB_DIV=config.clkfb_div,
                p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=config.clkop_div,
                p_CLKOP_CPHASE=config.clkop_div // 2, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
                i_RST=0, i_STDBY=0, i_CLKI=oscillator.i, i_CLKFB=sync.clk, i_PHASESEL0=0, i_PHASESEL1=0,
                i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=sync.clk, o_LOCK=locked)
        platform.add_clock_constraint(sync.clk, config.output_hz)
        if isinstance(config, ICE40PLLConfig):
            # nextpnr-ice40 puts a high fan-out reset on a global net by itself.
            m.submodules.reset = ResetSynchronizer(~locked, domain=sync.name)
        else:
            # nextpnr-ecp5 promotes only clocks: through fabric routing, the reset of every
            # register became the critical path of large cores (17 ns of routing on the 85F).
            # A clock buffer puts it on a global net.
            released = Signal()
            m.submodules.reset = AsyncFFSynchronizer(~locked, released, o_domain=sync.name)
            m.submodules.reset_buffer = Instance("DCCA", i_CLKI=released, i_CE=1, o_CLKO=sync.rst)
        return m
