"""Copies of a register whose value drives many lanes, so that no one net spans the device.

    shift_copies = fanout_copies(m, "shifting", reading, count=lanes // 8)

On the ECP5-85F the issue's op and shift, one register driving the addend multiplexers of 128
lanes, had 17 ns of routing. Each copy here drives a group of lanes. yosys would merge registers
with equal inputs again: the board build marks these (their names end in ``fanout_copyN``)
``keep`` with :data:`YOSYS_KEEP_COPIES`. In simulation and the emitted Verilog they are plain
registers, equal to each other.
"""

from __future__ import annotations

from amaranth import Module, Signal

__all__ = ["fanout_copies", "YOSYS_KEEP_COPIES", "FANOUT_LANES"]

#: Lanes driven by one copy.
FANOUT_LANES = 8

#: A yosys command (run after reading the design) that keeps the copies apart.
YOSYS_KEEP_COPIES = "setattr -set keep 1 w:*fanout_copy* %ci1:+$dff[Q] w:*fanout_copy* %d"


def fanout_copies(m: Module, name: str, value, shape, count: int) -> list:
    """``count`` registers of ``shape``, each ``value`` a cycle later. One (``count`` <= 1) is a plain
    register named ``name``, which yosys may optimise as usual (e.g. drop bits no one reads)."""
    names = [name] if count <= 1 else [f"{name}_fanout_copy{k}" for k in range(count)]
    copies = [Signal(shape, name=copy_name) for copy_name in names]
    m.d.sync += [copy.eq(value) for copy in copies]
    return copies
