"""Register copies for high fan-out (hw/fanout.py): yosys keeps them apart in the board build."""

from pathlib import Path

from amaranth import Elaboratable, Module, Signal
from amaranth.back import rtlil

from spikesmith.hw.fanout import YOSYS_KEEP_COPIES, fanout_copies

from conftest import ice40_cells


class _FourCopies(Elaboratable):
    def __init__(self):
        self.value, self.out = Signal(4), Signal(16)

    def elaborate(self, platform):
        m = Module()
        for k, copy in enumerate(fanout_copies(m, "control", self.value, 4, 4)):
            m.d.sync += self.out[4 * k:4 * k + 4].eq(copy + k)      # each copy drives its own group
        return m


def _flip_flops(tmp_path: Path, script_after_read: str) -> int:
    top = _FourCopies()
    return ice40_cells(tmp_path, rtlil.convert(top, ports=[top.value, top.out]), script_after_read, "DFF")


def test_yosys_keeps_the_four_copies_apart_only_when_told(tmp_path):
    kept, merged = _flip_flops(tmp_path, YOSYS_KEEP_COPIES), _flip_flops(tmp_path, "")
    assert kept == 4 * 4 + 16, "four copies of 4 bits, and the 16 output bits"
    assert merged <= 4 + 16, "without the command, yosys merges the copies into one"
