"""Small arithmetic shared by the plans: ceiling division, packing integers into a memory row, and which
constant tables are logic rather than memory."""

from __future__ import annotations

__all__ = ["ceil_div", "pack_row", "rom_in_logic", "TABLE_ROWS", "TABLE_LATENCY"]

#: Cycles from a constant row table's address to its row (hw/rows.py, ``row_table``).
TABLE_LATENCY = 2

#: The deepest table of biases or thresholds built from logic (hw/rows.py, ``row_table``); deeper ones are ROMs.
TABLE_ROWS = 64


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pack_row(values, width: int) -> int:
    """Pack integers (two's complement, ``width`` bits each) into one row, element 0 in the LSBs."""
    mask = (1 << width) - 1
    row = 0
    for k, v in enumerate(values):
        row |= (int(v) & mask) << (k * width)
    return row


def rom_in_logic(width: int, rows: int) -> bool:
    """Whether a constant table of ``rows`` x ``width`` bits is built from logic (hw/rows.py) rather
    than as a memory: at most 16 rows or 1 Kbit, where yosys builds a ROM from logic anyway (and
    gen/build.py's block RAM estimate counts none)."""
    return rows <= 16 or width * rows <= 1024
